"""A sweep's parent run in the store: its children join it (or a relaunched sweep's parent) and
it ends once they have, in a status that sums theirs. The sweep's own process side (its shared
file, Hydra's callback) is nnx.edges.sweeps."""

import json

from nnx import records
from nnx.edges import liveness
from nnx.edges.tracking.reading import find_runs, get_run, stale_reason
from nnx.edges.tracking.store import retry
from nnx.edges.tracking.writer import Run

PREVIOUS_PARENT = records.TAG_PREVIOUS_PARENT  # a relaunched sweep's child: the parent run it had before


def parent_tags(run, parent_run_id: str, sweep_id: str) -> dict:
    """The tags that move a run under a relaunched sweep's parent, remembering the one it leaves
    (end_sweep closes that one if its process is gone: a sweep killed with its jobs leaves its parent RUNNING)."""
    old = run.data.tags.get("mlflow.parentRunId")
    tags = {"mlflow.parentRunId": parent_run_id, records.TAG_SWEEP_ID: sweep_id}
    if old and old != parent_run_id:
        tags[PREVIOUS_PARENT] = old
    return tags


def join_parent(client, run, parent_run_id: str, sweep_id: str):
    Run(client, run.info.run_id).set_tags(parent_tags(run, parent_run_id, sweep_id))


def _close_dead_parent(client, run_id: str, by_sweep: str):
    run = get_run(client, run_id)
    if run is None or run.info.status != "RUNNING":
        return
    reason = stale_reason(run)
    if reason is None:
        return  # its sweep still runs
    Run(client, run_id).set_tags({liveness.KILLED_REASON: f"{reason}; its runs were finished by sweep {by_sweep}"})
    if find_runs(client, [run.info.experiment_id], tags={"mlflow.parentRunId": run_id}, max_results=1):
        end_sweep(client, run_id)
    else:
        retry(client.set_terminated, run_id, "KILLED")


def end_sweep(client, parent_run_id: str, failed_ok: bool = False) -> tuple[str, list]:
    """Ends a sweep's parent run; children still RUNNING lost their worker and end KILLED.

    The parent is FINISHED if every child finished (or, failed_ok, none was killed: a search's
    diverged trials are among its results), KILLED if any was killed, else FAILED.
    Returns (the parent's status, [(child name, status, best_val_accuracy or None)] sorted by name).
    """
    parent = retry(client.get_run, parent_run_id)
    children = find_runs(client, [parent.info.experiment_id], tags={"mlflow.parentRunId": parent_run_id})
    statuses = []
    for child in children:
        if child.info.status == "RUNNING":
            Run(client, child.info.run_id).set_tags({records.TAG_ERROR: "the sweep ended before this job did"})
            Run(client, child.info.run_id).kill(stale_reason(child) or "the sweep ended before this job did")
        statuses.append("KILLED" if child.info.status == "RUNNING" else child.info.status)
    Run(client, parent_run_id).set_tags({records.TAG_CHILDREN: json.dumps({s: statuses.count(s) for s in sorted(set(statuses))})})
    for old in {c.data.tags.get(PREVIOUS_PARENT) for c in children} - {None, parent_run_id}:
        _close_dead_parent(client, old, parent.data.tags.get(records.TAG_SWEEP_ID, parent_run_id))
    finished = {"FINISHED", "FAILED"} if failed_ok else {"FINISHED"}
    status = "FINISHED" if statuses and set(statuses) <= finished else "KILLED" if "KILLED" in statuses else "FAILED"
    retry(client.set_terminated, parent_run_id, status)
    rows = sorted((c.info.run_name, s, c.data.metrics.get(records.BEST_VAL_ACCURACY)) for c, s in zip(children, statuses))
    return status, rows
