"""nnx-train resume=RUN_ID: a KILLED or FAILED run continued from its last checkpoint, in the same run
(from its start when it left none).

The epochs before the checkpoint come back from the store, so the run's summary (best epoch ...)
covers the whole run, and the steps already logged are not logged twice.
"""

from pathlib import Path

from nnx import records
from nnx.edges import checkpoint, tracking
from nnx.edges.lifecycle import Member, train_and_end
from nnx.errors import UserError
from nnx.migrate import migrate
from nnx.spec import build

RESUMABLE = ("KILLED", "FAILED", "RUNNING")  # RUNNING: a process killed too hard to say so (nnx.edges.liveness)


class ResumeError(UserError, ValueError):
    """A run cannot be resumed (unknown, finished, or still running in a live process)."""


def resume(run_id: str, *, tracking_cfg: dict, echo=print, progress=None, tags: dict | None = None) -> dict:
    """Continues a KILLED or FAILED run from its last checkpoint, in the same MLflow run; `tags` are
    set on it once it is found resumable (a relaunched sweep's parent run and sweep id)."""
    uri = tracking.resolve_uri(tracking_cfg["uri"])
    client, _ = tracking.open_experiment(uri, tracking_cfg["experiment"])
    stored = tracking.get_run(client, run_id)
    if stored is None:
        raise ResumeError(f"no run {run_id!r} in {uri}. Copy the id from `make ui` or the nnx-train output.")
    if stored.info.status not in RESUMABLE:
        raise ResumeError(f"run {run_id} is {stored.info.status}: only a KILLED or FAILED run can be resumed. "
                          f"To repeat a finished run, use `nnx-rerun {run_id}`.")
    if stored.info.status == "RUNNING":
        reason = tracking.stale_reason(stored, tracking_cfg.get("stale_after"))
        if reason is None:
            tags = stored.data.tags
            raise ResumeError(f"run {run_id} is RUNNING in process {tags.get(records.TAG_PID, '?')} on host {tags.get(records.TAG_HOST, '?')}, "
                              f"which is still alive (or its heartbeat is recent): stop it first, or wait. "
                              f"`nnx-runs` lists the runs whose process is gone.")
        tracking.Run(client, run_id).kill(reason)
    cfg = migrate(tracking.read_config(client, run_id))  # recorded by the nnx it ran under
    cfg["tracking"] = {**cfg["tracking"], **tracking_cfg}
    spec = build(cfg)
    path = tracking.checkpoint_path(uri, run_id)
    if not path.exists():
        saved = tracking.artifact_bytes(client, run_id, "checkpoint/last.npz")
        if saved is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(saved)
    # No checkpoint (train.checkpoint_every=0, or it stopped in its first epoch): it trains again
    # from epoch 0 in the same run; the steps it logged before are not logged again.
    start = checkpoint.load(path, spec, cfg["seed"]) if path.exists() else None
    earlier, logged = {}, [-1]
    for key in stored.data.metrics:
        steps, values, _ = tracking.metric_history(client, run_id, key)
        if start is not None:
            earlier[key] = values[steps < start[0]]
        logged.extend(steps)  # an epoch's values are written together, so the newest step of any key is logged whole
    data = spec.load_data()
    run = tracking.Run(client, run_id)
    run.reopen()
    member = Member(run, cfg["seed"], cfg, path, logged_until=max(logged), earlier=earlier)
    run.set_tags({**(tags or {}), records.TAG_RESUMED_FROM_EPOCH: str(start[0] if start else 0)})
    echo(f"nnx: resuming run {run_id} at epoch {start[0]} of {spec.epochs}" if start else
         f"nnx: run {run_id} left no checkpoint: training it again from epoch 0 in the same run")
    return train_and_end(spec, data, [member], None, echo, start=start, progress=progress)
