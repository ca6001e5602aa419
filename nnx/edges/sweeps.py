"""A sweep's shared file and its MLflow parent run: the protocol between a multirun's process and its jobs.

Hydra's callback (SweepParent, conf/train.yaml) writes nnx_sweep.json in the sweep's folder when a
multirun starts; the first job to need the parent run creates it and writes its id there, under a
file lock, for the others (in this process, joblib's workers or SLURM's jobs); the sweep's own
process ends the parent when the multirun ends, however it ends (nnx.edges.cli.main,
nnx.edges.search).
"""

import json
import uuid
from pathlib import Path

from filelock import FileLock
from hydra.experimental.callback import Callback

from nnx import records
from nnx.edges import liveness, tracking

OPEN_SWEEPS: list[Path] = []  # sweep folders this process started, to close their parent runs


def sweep_file(sweep_dir) -> Path:
    return Path(sweep_dir) / "nnx_sweep.json"


def sweep_parent(client, experiment_id, sweep_dir, preset: str) -> tuple[str, str] | None:
    """(parent run id, sweep id) of the sweep's parent run, created by whichever job gets here first.

    Jobs may run in other processes (joblib, submitit), where the fluent API's active run is not
    visible, so the parent's id is shared through a file in the sweep folder, under a file lock.
    """
    path = sweep_file(sweep_dir)
    if not path.exists():
        return None
    with FileLock(str(path) + ".lock"):
        sweep = json.loads(path.read_text())
        if "parent_run_id" not in sweep:
            parent = tracking.Run.start(
                client, experiment_id, name=f"sweep {preset} {' '.join(sweep['overrides'])}".strip(), params={},
                tags={records.TAG_SWEEP_ID: sweep["sweep_id"], records.TAG_ROLE: records.ROLE_SWEEP, records.TAG_EXPERIMENT: preset,
                      records.TAG_OVERRIDES: " ".join(sweep["overrides"]), **sweep.get("where", {})},
            )
            sweep.update(parent_run_id=parent.run_id, tracking_uri=client.tracking_uri)
            path.write_text(json.dumps(sweep))
        return sweep["parent_run_id"], sweep["sweep_id"]


def finish_sweep(sweep_dir, failed_ok: bool = False):
    """Ends the sweep's parent run when the sweep process ends, however it ends (tracking.end_sweep),
    and prints its children's outcome. failed_ok: the search sweeper's rule (FAILED trials are results)."""
    path = sweep_file(sweep_dir)
    if not path.exists():
        return
    sweep = json.loads(path.read_text())
    if "parent_run_id" not in sweep or sweep.get("finished"):
        return
    status, rows = tracking.end_sweep(tracking.connect(sweep["tracking_uri"]), sweep["parent_run_id"], failed_ok=failed_ok)
    sweep["finished"] = True
    path.write_text(json.dumps(sweep))
    width = max((len(r[0]) for r in rows), default=3)
    print(f"\nnnx: sweep {sweep['sweep_id']} {status}: {len(rows)} runs under parent run {sweep['parent_run_id']}")
    for name, state, best in rows:
        print(f"  {name:<{width}}  {state:<8}  {'' if best is None else f'best val {best:.2%}'}")
    print("  Compare them with `make ui`: open the experiment, expand the parent run, select the children, Compare.", flush=True)


class SweepParent(Callback):
    """Hydra callback: marks a multirun's folder so its jobs share one MLflow parent run."""

    def on_multirun_start(self, config, **kwargs):
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        overrides = list(config.hydra.overrides.task)
        # where: the sweep's own process, which ends the parent run (its jobs may run in other processes)
        sweep_file(sweep_dir).write_text(json.dumps({"sweep_id": uuid.uuid4().hex[:12], "overrides": overrides,
                                                     "where": liveness.here()}))
        # main() ends the parent even when a job raises or the sweep is interrupted, where
        # Hydra skips on_multirun_end.
        OPEN_SWEEPS.append(sweep_dir)

    def on_multirun_end(self, config, **kwargs):
        finish_sweep(config.hydra.sweep.dir)
