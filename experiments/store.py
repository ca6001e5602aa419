"""Reading finished runs back from MLflow: the only input a figure or table may have."""

import io
import tempfile

import numpy as np


class MissingRuns(LookupError):
    """The store holds no finished sweep for a figure."""


def _latest(client, experiment: str, preset: str, role: str):
    """(experiment id, the latest FINISHED run with tags nnx.role=role and nnx.experiment=preset)."""
    found = client.get_experiment_by_name(experiment)
    runs = [] if found is None else client.search_runs(
        [found.experiment_id],
        f"tags.`nnx.role` = '{role}' and tags.`nnx.experiment` = '{preset}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        what = "sweep" if role == "sweep" else "run"
        raise MissingRuns(
            f"no finished {preset} {what} in MLflow experiment {experiment!r} at {client.tracking_uri}. "
            f"Run `nnx-reproduce {experiment}` without --plot-only first."
        )
    return found.experiment_id, runs[0]


def sweep_runs(client, experiment: str, preset: str) -> list:
    """The child runs of the latest FINISHED sweep of `preset` (e.g. ch5_depth) in `experiment`."""
    experiment_id, parent = _latest(client, experiment, preset, "sweep")
    return client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'", max_results=50_000)


def latest_run(client, experiment: str, preset: str):
    """The latest FINISHED analysis run (a computation, not a sweep) tagged nnx.experiment=preset."""
    return _latest(client, experiment, preset, "analysis")[1]


def history(client, run, key: str) -> np.ndarray:
    """A metric's values ordered by step."""
    points = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
    return np.array([m.value for m in points])


def artifact_npz(client, run, path: str) -> dict:
    """A .npz artifact of a run, read without leaving files behind."""
    with tempfile.TemporaryDirectory() as folder:
        local = client.download_artifacts(run.info.run_id, path, folder)
        with open(local, "rb") as f:
            return dict(np.load(io.BytesIO(f.read())))


def param(run, key: str, cast=str):
    return cast(run.data.params[key])


def group(runs, key: str, cast=str) -> dict:
    """{param value: [runs]} sorted by value; e.g. group(runs, "model.depth", int)."""
    out = {}
    for run in runs:
        out.setdefault(param(run, key, cast), []).append(run)
    return dict(sorted(out.items()))

