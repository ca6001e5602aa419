"""Reading runs back: finding them by tag, their metrics, artifacts and config, and whether
their process is gone. What experiments/ and the CLIs that inspect a store use."""

import contextlib
import os
import socket
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from nnx.edges import liveness
from nnx.edges.tracking.store import TrackingError, checkpoint_path, retry


def _filter(tags: dict | None, status: str | None) -> str:
    clauses = [f"tags.`{key}` = '{value}'" for key, value in (tags or {}).items()]
    if status:
        clauses.append(f"attributes.status = '{status}'")
    return " and ".join(clauses)


def find_runs(client, experiment_ids, *, tags: dict | None = None, status: str | None = None,
              newest_first: bool = False, max_results: int = 50_000) -> list:
    """Runs whose tags equal `tags` (e.g. {"mlflow.parentRunId": id}), in `status` if given."""
    order = ["attributes.start_time DESC"] if newest_first else None
    return retry(client.search_runs, list(experiment_ids), _filter(tags, status), order_by=order, max_results=max_results)


def get_run(client, run_id: str):
    """The run, or None if the store has no run of that id."""
    try:
        return client.get_run(run_id)
    except Exception:  # MlflowException: RESOURCE_DOES_NOT_EXIST
        return None


def metric_history(client, run_id: str, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(steps, values, timestamps in ms) of one metric, ordered by step."""
    points = sorted(retry(client.get_metric_history, run_id, key), key=lambda m: m.step)
    return (np.array([m.step for m in points], int), np.array([m.value for m in points], float),
            np.array([m.timestamp for m in points], np.int64))


@contextlib.contextmanager
def without_progress_bars():
    """MLflow draws a progress bar for every file it copies (a model's, or one artifact read back)."""
    bar = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        yield
    finally:
        if bar is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = bar


def artifact_bytes(client, run_id: str, path: str) -> bytes | None:
    """One artifact's bytes, read without leaving files behind; None if the run has no such file."""
    with tempfile.TemporaryDirectory() as folder, without_progress_bars():
        try:
            local = client.download_artifacts(run_id, path, folder)
        except Exception:  # MlflowException or OSError: no such artifact
            return None
        return Path(local).read_bytes()


def read_config(client, run_id: str) -> dict:
    """The resolved config a run logged first (config.yaml)."""
    raw = artifact_bytes(client, run_id, "config.yaml")
    if raw is None:
        raise TrackingError(f"run {run_id} has no config.yaml artifact: it was not started by nnx-train")
    return yaml.safe_load(raw)


def stale_reason(run, stale_after: float | None = None, tags: dict | None = None) -> str | None:
    """Why a RUNNING run's process is gone, seen from this host now (liveness.why_stale), or None;
    tags: what to judge by instead of the run's own."""
    return liveness.why_stale(run.data.tags if tags is None else tags, now=time.time(), host=socket.gethostname(),
                              stale_after=stale_after)


def has_checkpoint(client, uri: str, run_id: str) -> bool:
    """Whether a run left a checkpoint: the file training writes, or the artifact a run that ended logged."""
    if checkpoint_path(uri, run_id).exists():
        return True
    try:
        return any(a.path == "checkpoint/last.npz" for a in retry(client.list_artifacts, run_id, "checkpoint"))
    except Exception:  # MlflowException or OSError: no artifact folder
        return False
