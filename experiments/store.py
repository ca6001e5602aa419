"""Reading finished runs back from MLflow: the only input a figure or table may have.

Every read goes through nnx.edges.tracking's verbs; metric and file names come from nnx.records.
"""

import functools
import io
import re

import numpy as np

from experiments.report import BOOK, combine
from nnx import records
from nnx.edges import tracking


class MissingRuns(LookupError):
    """The store holds no finished sweep for a figure."""


def _latest(client, experiment: str, preset: str, role: str):
    """(experiment id, the latest FINISHED run with tags nnx.role=role and nnx.experiment=preset)."""
    experiment_id = tracking.experiment_id(client, experiment)
    runs = [] if experiment_id is None else tracking.find_runs(
        client, [experiment_id], tags={records.TAG_ROLE: role, records.TAG_EXPERIMENT: preset}, status="FINISHED",
        newest_first=True, max_results=1)
    if not runs:
        what = "sweep" if role == records.ROLE_SWEEP else "run"
        raise MissingRuns(
            f"no finished {preset} {what} in MLflow experiment {experiment!r} at {client.tracking_uri}. "
            f"Run `nnx-reproduce {experiment}` without --plot-only first."
        )
    return experiment_id, runs[0]


def latest_sweep(client, experiment: str, preset: str):
    """The parent run of the latest FINISHED sweep of `preset` (its tags hold a search's summary)."""
    return _latest(client, experiment, preset, records.ROLE_SWEEP)[1]


def sweep_runs(client, experiment: str, preset: str) -> list:
    """The child runs of the latest FINISHED sweep of `preset` (e.g. ch5_depth) in `experiment`."""
    experiment_id, parent = _latest(client, experiment, preset, records.ROLE_SWEEP)
    return tracking.find_runs(client, [experiment_id], tags={"mlflow.parentRunId": parent.info.run_id})


# Overrides that change how a run is kept, not what it measures: a sweep with no other override
# than these ran its preset as written (the book's protocol, where the preset holds it).
BOOKKEEPING = ("experiment", "seed", "seeds", "device", "resume", "train.checkpoint_every", "model.conv_impl",
               "train.matmul_precision", "tracking.*", "hydra.*", "hydra/*")


def _values(override: str) -> tuple[str, frozenset[str]]:
    """(key as Hydra reads it, the values an override gives it); a range or interval counts as its text."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_override(override)
    if parsed.is_discrete_sweep():
        return parsed.get_key_element(), frozenset(parsed.sweep_string_iterator())
    if parsed.is_sweep_override():
        return parsed.get_key_element(), frozenset([override.partition("=")[2]])
    return parsed.get_key_element(), frozenset([parsed.get_value_element_as_str()])


@functools.cache
def own_sweep(preset: str) -> dict:
    """{key: its values} that the preset's own sweep runs (its hydra.sweeper.params; {} for none)."""
    from omegaconf import OmegaConf

    from nnx.edges import configs

    try:
        sweeper = configs.compose([f"experiment={preset}"], hydra=True).hydra.sweeper
        return dict(_values(f"{k}={v}") for k, v in (OmegaConf.to_container(sweeper, resolve=False).get("params") or {}).items())
    except Exception:  # HydraException, OmegaConfBaseException: a preset this checkout no longer has
        return {}


def departures(overrides: str, own: dict | None = None) -> list[str]:
    """The overrides of a sweep (its nnx.overrides tag: the command line's, space-joined) that change
    its preset's protocol: all but BOOKKEEPING and those that pick some of the values of the preset's
    own sweep (`own`: own_sweep's {key: values}, e.g. model.conv_maps=[] of ch6_basic's three nets), in
    the order given, a key given twice once (its last)."""
    changed = {}
    for override in re.split(r" (?=[+~]*[\w./@-]+=)", overrides.strip()) if overrides.strip() else []:
        key = override.partition("=")[0].lstrip("+~")
        changed.pop(key, None)
        if any(key == k or (k.endswith("*") and key.startswith(k[:-1])) for k in BOOKKEEPING):
            continue
        try:
            name, values = _values(override)
        except Exception:  # HydraException: not an override Hydra reads; it changed something
            name, values = key, None
        if values is None or not values <= (own or {}).get(name, frozenset()):
            changed[key] = override
    return list(changed.values())


def protocol(parent) -> str:
    """BOOK where the sweep ran its preset as written (or some of its own sweep's values), else
    "scaled: <the overrides that changed it>"."""
    tags = parent.data.tags
    changed = departures(tags.get(records.TAG_OVERRIDES, ""), own_sweep(tags.get(records.TAG_EXPERIMENT, "")))
    return "scaled: " + " ".join(changed) if changed else BOOK


def sweep_protocol(client, experiment: str, *presets: str) -> str:
    """The protocol of the latest finished sweep of each preset, combined (report.combine)."""
    return combine(*(protocol(latest_sweep(client, experiment, preset)) for preset in presets))


def runs_by_protocol(client, experiment: str, preset: str) -> list[tuple[str, list]]:
    """[(protocol, child runs)] of the latest FINISHED sweep of `preset`, and, where that one was
    scaled, of the newest FINISHED sweep at the book's protocol too if the store holds one (the report
    shows the two side by side)."""
    experiment_id, latest = _latest(client, experiment, preset, records.ROLE_SWEEP)
    shown = [(protocol(latest), latest)]
    if shown[0][0] != BOOK:
        sweeps = tracking.find_runs(client, [experiment_id], tags={records.TAG_ROLE: records.ROLE_SWEEP, records.TAG_EXPERIMENT: preset},
                                    status="FINISHED", newest_first=True)
        shown += [(BOOK, p) for p in sweeps if protocol(p) == BOOK][:1]
    found = [(p, tracking.find_runs(client, [experiment_id], tags={"mlflow.parentRunId": parent.info.run_id})) for p, parent in shown]
    return [(p, runs) for p, runs in found if runs]


def latest_run(client, experiment: str, preset: str):
    """The latest FINISHED analysis run (a computation, not a sweep) tagged nnx.experiment=preset."""
    return _latest(client, experiment, preset, records.ROLE_ANALYSIS)[1]


def history(client, run, key: str) -> np.ndarray:
    """A metric's values ordered by step."""
    return tracking.metric_history(client, run.info.run_id, key)[1]


def seconds(client, run, key="test_accuracy") -> np.ndarray:
    """Wall-clock seconds from the run's start to each logged value of `key`: MLflow stores a
    timestamp with every metric value, so the time each epoch took needs no metric of its own."""
    return (tracking.metric_history(client, run.info.run_id, key)[2] - run.info.start_time) / 1000


def per_hidden_layer(client, run, name: str, depth: int) -> np.ndarray:
    """[depth, steps] of a per-hidden-layer metric, e.g. name="grad_norm"."""
    return np.stack([history(client, run, records.hidden(name, l)) for l in range(1, depth + 1)])


def artifact_npz(client, run, path: str) -> dict:
    """A .npz artifact of a run, read without leaving files behind."""
    raw = tracking.artifact_bytes(client, run.info.run_id, path)
    if raw is None:
        raise MissingRuns(f"run {run.info.run_id} has no artifact {path}")
    return dict(np.load(io.BytesIO(raw)))


def final_params(client, run) -> list[dict]:
    """The run's trained params (params.npz), in any layout nnx has written (nnx.records)."""
    return records.params_from_arrays(artifact_npz(client, run, "params.npz"))


def param(run, key: str, cast=str):
    return cast(run.data.params[key])


def group(runs, key: str, cast=str) -> dict:
    """{param value: [runs]} sorted by value; e.g. group(runs, "model.depth", int)."""
    out = {}
    for run in runs:
        out.setdefault(param(run, key, cast), []).append(run)
    return dict(sorted(out.items()))


ANALYSIS_ARRAYS = "analysis.npz"


def record_analysis_run(client, experiment_id, preset: str, series: dict, *, params=None, first_step: int = 0,
                        arrays: dict | None = None):
    """A computation that is not training (a theory curve, a check) stored as a FINISHED MLflow run
    tagged nnx.role=analysis, like any result: series {metric: values}, value i at step first_step + i
    (series may differ in length); arrays {name: ndarray}, too large or too many-dimensional for
    metrics (a curve on a fine grid, a surface), as one artifact, ANALYSIS_ARRAYS."""
    run = tracking.Run.start(client, experiment_id, name=preset, params=params or {},
                             tags={records.TAG_EXPERIMENT: preset, records.TAG_ROLE: records.ROLE_ANALYSIS, **tracking.environment_tags()})
    for i in range(max(map(len, series.values()))):
        run.log_metrics(first_step + i, {k: float(v[i]) for k, v in series.items() if i < len(v)})
    if arrays:
        run.log_files({ANALYSIS_ARRAYS: lambda path: np.savez(path, **arrays)})
    run.end("FINISHED")
    return run.run_id


def analysis_arrays(client, run) -> dict:
    """The arrays an analysis run stored (record_analysis_run's `arrays`)."""
    return artifact_npz(client, run, ANALYSIS_ARRAYS)
