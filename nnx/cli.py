"""nnx-train: the Hydra entry point, and (with nnx.tracking) the only code with side effects.

    nnx-train model.depth=3 activation=tanh optimizer.eta=0.1 seed=0
    nnx-train -m model.depth=1,2,3,4 activation=sigmoid,tanh,relu
    nnx-train experiment=ch1_30
"""

import json
import signal
import sys
import tempfile
import traceback
import uuid
from pathlib import Path

import hydra
import numpy as np
from filelock import FileLock
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import OmegaConf

from nnx import tracking
from nnx.data import DataError
from nnx.registry import ConfigError
from nnx.spec import build

CONF = str(tracking.ROOT / "conf")
USER_ERRORS = (ConfigError, DataError, tracking.TrackingError)
# Override keys shortened in run names: "model.depth=3" reads "depth=3".
SHORT_PREFIXES = ("model.", "train.", "optimizer.", "data.")
OPEN_SWEEPS: list[Path] = []  # sweep folders this process started, to close their parent runs


def run_name(task_overrides, seed) -> str:
    """`depth=3 activation=tanh seed=0`: what this run sets, so sweeps' runs tell apart."""
    parts = []
    for override in task_overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if key.startswith("hydra") or key.startswith("tracking"):
            continue
        parts.append(f"{key.removeprefix(next((p for p in SHORT_PREFIXES if key.startswith(p)), ''))}={value}")
    if not any(p.startswith("seed=") for p in parts):
        parts.append(f"seed={seed}")
    return " ".join(parts)


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
                tags={"nnx.sweep_id": sweep["sweep_id"], "nnx.role": "sweep", "nnx.experiment": preset,
                      "nnx.overrides": " ".join(sweep["overrides"])},
            )
            sweep.update(parent_run_id=parent.run_id, tracking_uri=client.tracking_uri)
            path.write_text(json.dumps(sweep))
        return sweep["parent_run_id"], sweep["sweep_id"]


def finish_sweep(sweep_dir):
    """Ends the sweep's parent run: FINISHED if every child finished, else FAILED (never RUNNING)."""
    path = sweep_file(sweep_dir)
    if not path.exists():
        return
    sweep = json.loads(path.read_text())
    if "parent_run_id" not in sweep or sweep.get("finished"):
        return
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=sweep["tracking_uri"])
    parent = client.get_run(sweep["parent_run_id"])
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{sweep['parent_run_id']}'", max_results=50000
    )
    statuses = [c.info.status for c in children]
    client.set_tag(parent.info.run_id, "nnx.children", json.dumps({s: statuses.count(s) for s in set(statuses)}))
    ok = statuses and all(s == "FINISHED" for s in statuses)
    client.set_terminated(parent.info.run_id, "FINISHED" if ok else "FAILED")
    sweep["finished"] = True
    path.write_text(json.dumps(sweep))


class SweepParent(Callback):
    """Hydra callback: marks a multirun's folder so its jobs share one MLflow parent run."""

    def on_multirun_start(self, config, **kwargs):
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        overrides = list(config.hydra.overrides.task)
        sweep_file(sweep_dir).write_text(json.dumps({"sweep_id": uuid.uuid4().hex[:12], "overrides": overrides}))
        # main() ends the parent even when a job raises or the sweep is interrupted, where
        # Hydra skips on_multirun_end.
        OPEN_SWEEPS.append(sweep_dir)

    def on_multirun_end(self, config, **kwargs):
        finish_sweep(config.hydra.sweep.dir)


def _artifacts(folder: Path, cfg, params, history):
    OmegaConf.save(cfg, folder / "config.yaml", resolve=True)
    flat = {f"layer_{l}/{k}": np.asarray(v) for l, layer in enumerate(params, 1) for k, v in layer.items()}
    np.savez(folder / "params.npz", **flat)
    np.savez(folder / "history.npz", **history)


def summary(history) -> dict:
    """Scalars that let a runs table answer "which won" (best = highest validation accuracy)."""
    best = int(np.argmax(history["val_accuracy"]))
    out = {
        "best_val_accuracy": history["val_accuracy"][best],
        "best_epoch": best,
        "test_accuracy_at_best_val": history["test_accuracy"][best],
        "best_test_accuracy": np.max(history["test_accuracy"]),
        "final_val_accuracy": history["val_accuracy"][-1],
        "final_test_accuracy": history["test_accuracy"][-1],
        "final_train_accuracy": history["train_accuracy"][-1],
    }
    if "grad_norm/hidden_1" in history:
        last = max(int(k.rsplit("_", 1)[1]) for k in history if k.startswith("grad_norm/hidden_"))
        first_last = history["grad_norm/hidden_1"] / history[f"grad_norm/hidden_{last}"]
        out["grad_ratio_first_last_init"] = first_last[0]
    return out


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def train(cfg) -> dict:
    """One job: validate, load data, open the store, train while logging, end the run."""
    import jax

    from nnx import train as training
    from nnx.model import num_params

    plain = OmegaConf.to_container(cfg, resolve=True)
    spec = build(plain)
    data = spec.dataset(spec.data_path, spec.train_size)
    uri = tracking.resolve_uri(plain["tracking"]["uri"])
    client, experiment_id = tracking.open_experiment(uri, plain["tracking"]["experiment"])

    hc = HydraConfig.get()
    tags = tracking.environment_tags()
    preset = hc.runtime.choices.get("experiment") or "none"
    tags.update({"nnx.overrides": " ".join(hc.overrides.task), "nnx.experiment": preset})
    parent = None
    if hc.mode == RunMode.MULTIRUN:
        found = sweep_parent(client, experiment_id, hc.sweep.dir, preset)
        if found:
            parent, tags["nnx.sweep_id"] = found
    params = tracking.flatten({k: v for k, v in plain.items() if k != "tracking"})
    params["model.sizes"] = str(list(spec.sizes))
    params["model.num_params"] = str(num_params(spec.sizes))
    run = tracking.Run.start(client, experiment_id, name=run_name(hc.overrides.task, spec.seed), params=params, tags=tags, parent_run_id=parent)
    print(f"nnx: run {run.run_id} ({run_name(hc.overrides.task, spec.seed)}) sizes={list(spec.sizes)} in {uri}", flush=True)

    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        def on_epoch(step, values):
            run.log_metrics(step, values)
            if "val_accuracy" in values:
                print(f"Epoch {step}: val {values['val_accuracy']:.4f} test {values['test_accuracy']:.4f} "
                      f"train cost {values['train_cost']:.4f}", flush=True)

        params_out, history = training.fit(spec, data, key=jax.random.PRNGKey(spec.seed), on_epoch=on_epoch)
        result = summary(history)
        run.log_metrics(spec.epochs, result)
        with tempfile.TemporaryDirectory() as folder:
            _artifacts(Path(folder), cfg, params_out, history)
            run.log_artifacts(Path(folder))
        run.end("FINISHED")
        return {k: float(v) for k, v in result.items()}
    except BaseException as err:
        run.set_tags({"nnx.error": f"{type(err).__name__}: {err}"})
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "error.txt").write_text(traceback.format_exc())
            run.log_artifacts(Path(folder))
        run.end("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


@hydra.main(version_base="1.3", config_path=CONF, config_name="train")
def _hydra_main(cfg):
    try:
        return train(cfg)
    except USER_ERRORS as err:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # the other jobs go on; Hydra reports this one at the end of the batch
        print(f"nnx-train: error: {err}", file=sys.stderr)
        sys.exit(2)


def main():
    from nnx.preflight import preflight

    preflight(sys.argv[1:], CONF, "train")
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        _hydra_main()
    finally:
        signal.signal(signal.SIGTERM, previous)
        while OPEN_SWEEPS:
            finish_sweep(OPEN_SWEEPS.pop())
