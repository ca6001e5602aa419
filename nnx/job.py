"""One nnx-train job: a resolved config in, ended MLflow runs out.

No Hydra here: nnx-train (through nnx.cli), resume and nnx-rerun all go through run(). The job
trains one seed, or several at once (fit_many), writes a checkpoint after each epoch, and ends
every run it started as FINISHED, FAILED (an error, or divergence) or KILLED (SIGINT/SIGTERM).
"""

import hashlib
import json
import os
import shutil
import signal
import tempfile
import threading
import time
import traceback
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import yaml

from nnx import probes, tracking
from nnx import train as training
from nnx.model import num_params
from nnx.spec import build

RESUMABLE = ("KILLED", "FAILED", "RUNNING")  # RUNNING: a process killed too hard to say so
# Short copies of the settings people sweep, so the UI's runs table and parallel-coordinates
# plot read "depth", "activation", "eta" without opening the full config.
SHORT_PARAMS = {
    "depth": "model.depth", "width": "model.width", "activation": "activation.name", "init": "init.name",
    "cost": "cost.name", "optimizer": "optimizer.name", "eta": "optimizer.eta", "lmbda": "optimizer.lmbda",
    "mini_batch_size": "train.mini_batch_size", "epochs": "train.epochs", "train_size": "data.train_size",
    "batch_norm": "model.batch_norm",
}


class Diverged(RuntimeError):
    """A run's cost, accuracy or gradient norm became NaN or inf (train.stop_on_divergence)."""


class ResumeError(ValueError):
    """A run cannot be resumed (unknown, finished, or without a checkpoint)."""


def config_hash(cfg: dict) -> str:
    """What makes two jobs the same: the config less where it is recorded and how it is resumed."""
    kept = {k: v for k, v in cfg.items() if k not in ("tracking", "resume")}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def seed_config(cfg: dict, seed: int) -> dict:
    """The config of one seed's run: what a separate run of that seed would have used."""
    return {**cfg, "seed": seed, "seeds": None, "resume": None}


def save_checkpoint(path: Path, epoch: int, params, opt_state):
    """Params, optimizer state and the epoch they follow, written atomically (tmp + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    leaves = jax.tree.leaves((params, opt_state))
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, epoch=epoch, **{f"leaf_{i}": np.asarray(a) for i, a in enumerate(leaves)})
    os.replace(tmp, path)


def load_checkpoint(path: Path, spec, seed: int):
    """(next epoch, params, opt_state); the tree's shape comes from a fresh init of the same spec.

    The shuffle keys need no saving: epoch e always uses fold_in(key(seed), e).
    """
    init_key, _ = jax.random.split(jax.random.PRNGKey(seed))
    treedef = jax.tree.structure(training.init_state(spec, init_key))
    with np.load(path) as saved:
        leaves = [jnp.asarray(saved[f"leaf_{i}"]) for i in range(treedef.num_leaves)]
        epoch = int(saved["epoch"])
    params, opt_state = jax.tree.unflatten(treedef, leaves)
    return epoch + 1, params, opt_state


def summary(history) -> dict:
    """Scalars that let a runs table answer "which won" (best = highest validation accuracy)."""
    out = {}
    if "val_accuracy" in history:
        out.update(_accuracy_summary(history))
    norms = sorted((k for k in history if k.startswith("grad_norm/hidden_")), key=lambda k: int(k.rsplit("_", 1)[1]))
    if len(norms) > 1:
        out["grad_ratio_first_last_init"] = history[norms[0]][0] / history[norms[-1]][0]
        out["grad_ratio_first_last_final"] = history[norms[0]][-1] / history[norms[-1]][-1]
    return {k: float(v) for k, v in out.items()}


def _accuracy_summary(history) -> dict:
    best = int(np.argmax(history["val_accuracy"]))
    return {
        "best_val_accuracy": history["val_accuracy"][best],
        "best_epoch": best,
        "test_accuracy_at_best_val": history["test_accuracy"][best],
        "best_test_accuracy": np.max(history["test_accuracy"]),
        "final_val_accuracy": history["val_accuracy"][-1],
        "final_test_accuracy": history["test_accuracy"][-1],
        "final_train_accuracy": history["train_accuracy"][-1],
    }


def _log_files(run, files: dict):
    """files: {artifact path: writer(local_path)}; written to a temporary folder, then logged."""
    with tempfile.TemporaryDirectory() as folder:
        for name, write in files.items():
            local = Path(folder) / name
            local.parent.mkdir(parents=True, exist_ok=True)
            write(local)
        run.log_artifacts(Path(folder))


def _params_npz(params):
    flat = {f"layer_{l}/{k}": np.asarray(v) for l, layer in enumerate(params, 1) for k, v in layer.items()}
    return lambda path: np.savez(path, **flat)


class _Member:
    """One seed's run inside a job."""

    def __init__(self, run, seed, cfg, checkpoint, logged_until=-1, earlier=None):
        self.run, self.seed, self.cfg, self.checkpoint = run, seed, cfg, checkpoint
        self.logged_until = logged_until  # steps up to here are in the store already (a resume)
        self.earlier = earlier or {}  # a resumed run's history before its checkpoint, from the store

    def log(self, step, values):
        if step > self.logged_until:
            self.run.log_metrics(step, values)

    def end_with_error(self, err):
        self.run.set_tags({"nnx.error": f"{type(err).__name__}: {err}"})
        files = {"error.txt": lambda p: p.write_text(traceback.format_exc())}
        if self.checkpoint.exists():
            files["checkpoint/last.npz"] = lambda p: p.write_bytes(self.checkpoint.read_bytes())
        _log_files(self.run, files)
        self.run.end("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")


def _start_member(client, experiment_id, uri, cfg, spec, seed, *, name, tags, parent):
    cfg = seed_config(cfg, seed)
    params = tracking.flatten({k: v for k, v in cfg.items() if k not in ("tracking", "resume")})
    params.update({"model.sizes": str(list(spec.sizes)), "model.num_params": str(num_params(spec.sizes, spec.batch_norm))})
    params.update({short: params[full] for short, full in SHORT_PARAMS.items() if full in params})
    run = tracking.Run.start(client, experiment_id, name=name, params=params, parent_run_id=parent,
                             tags={**tags, "nnx.config_hash": config_hash(cfg), "nnx.seed": str(seed)})
    # Logged first: a killed or failed run keeps what it takes to resume or rerun it.
    _log_files(run, {"config.yaml": lambda p: p.write_text(tracking.redact(yaml.safe_dump(cfg, sort_keys=False)))})
    return _Member(run, seed, cfg, tracking.checkpoint_path(uri, run.run_id))


def _finished_twin(client, experiment_id, cfg, preset):
    """A FINISHED run of the same preset with the same config: the job a relaunched sweep skips.
    (Same preset only: two presets that happen to share a config each keep their own runs.)"""
    query = (f"tags.`nnx.config_hash` = '{config_hash(cfg)}' and tags.`nnx.experiment` = '{preset}' "
             f"and attributes.status = 'FINISHED'")
    found = client.search_runs([experiment_id], query, order_by=["attributes.start_time DESC"], max_results=1)
    return found[0] if found else None


def run(cfg: dict, *, name: str, tags: dict, parent=None, skip_finished=False, echo=print, progress=None) -> dict:
    """Trains what `cfg` describes into MLflow and returns the first seed's summary.

    Args:
      cfg: the resolved config as a plain dict (what Hydra composes, or a run's config.yaml).
      name: run name; a multi-seed job appends " seed=<s>" per run.
      tags: extra tags for every run (overrides, preset, rerun source ...).
      parent: None, or parent(client, experiment_id) -> (parent run id, sweep id) | None.
      skip_finished: seeds whose identical config already FINISHED are not run again; their runs
        join this sweep's parent instead.
      echo: prints a line; progress(step, epochs, values): shows an epoch's numbers (default: a line).
    Raises:
      ConfigError, DataError, TrackingError before any run exists; Diverged after ending the
      diverged run(s) FAILED; anything raised while training after ending the runs FAILED/KILLED.
    """
    spec = build(cfg)
    data = spec.dataset(spec.data_path, spec.train_size)
    uri = tracking.resolve_uri(cfg["tracking"]["uri"])
    client, experiment_id = tracking.open_experiment(uri, cfg["tracking"]["experiment"])
    tags = {**tracking.environment_tags(), **tags}
    seeds = list(spec.seeds or [spec.seed])
    found = parent(client, experiment_id) if parent else None
    parent_id = None
    if found:
        parent_id, tags["nnx.sweep_id"] = found
    preset = tags.get("nnx.experiment", "none")
    twins = {s: _finished_twin(client, experiment_id, seed_config(cfg, s), preset) for s in seeds} if skip_finished else {}
    for seed, twin in twins.items():
        if twin is not None:
            echo(f"nnx: seed {seed} skipped: the same config FINISHED as run {twin.info.run_id}")
            if parent_id:
                tracking.Run(client, twin.info.run_id).set_tags({"mlflow.parentRunId": parent_id, "nnx.sweep_id": tags["nnx.sweep_id"]})
    seeds = [s for s in seeds if twins.get(s) is None]
    if not seeds:
        return {k: v for k, v in next(iter(twins.values())).data.metrics.items()}

    group = None
    if len(seeds) > 1 and parent_id is None:
        group = tracking.Run.start(client, experiment_id, name=f"{name} seeds={seeds}", params={},
                                   tags={**tags, "nnx.role": "seeds"})
        parent_id = group.run_id
    members = [
        _start_member(client, experiment_id, uri, cfg, spec, s, name=name if len(seeds) == 1 else f"{name} seed={s}",
                      tags=tags, parent=parent_id)
        for s in seeds
    ]
    for m in members:
        echo(f"nnx: run {m.run.run_id} ({name}) seed={m.seed} sizes={list(spec.sizes)} in {uri}")
    return _train_and_end(spec, data, members, group, echo, progress=progress)


def resume(run_id: str, *, tracking_cfg: dict, echo=print, progress=None) -> dict:
    """Continues a KILLED or FAILED run from its last checkpoint, in the same MLflow run."""
    uri = tracking.resolve_uri(tracking_cfg["uri"])
    client, _ = tracking.open_experiment(uri, tracking_cfg["experiment"])
    try:
        stored = client.get_run(run_id)
    except Exception as err:  # MlflowException: unknown id
        raise ResumeError(f"no run {run_id!r} in {uri} ({err}). Copy the id from `make ui` or the nnx-train output.") from None
    if stored.info.status not in RESUMABLE:
        raise ResumeError(f"run {run_id} is {stored.info.status}: only a KILLED or FAILED run can be resumed. "
                          f"To repeat a finished run, use `nnx-rerun {run_id}`.")
    with tempfile.TemporaryDirectory() as folder:
        cfg = yaml.safe_load(open(client.download_artifacts(run_id, "config.yaml", folder)))
        cfg["tracking"] = {**cfg["tracking"], **tracking_cfg}
        spec = build(cfg)
        checkpoint = tracking.checkpoint_path(uri, run_id)
        if not checkpoint.exists():
            try:
                checkpoint.parent.mkdir(parents=True, exist_ok=True)
                checkpoint.write_bytes(Path(client.download_artifacts(run_id, "checkpoint/last.npz", folder)).read_bytes())
            except Exception:
                raise ResumeError(f"run {run_id} has no checkpoint (train.checkpoint_every=0, or it stopped in its first "
                                  f"epoch). Start it again with `nnx-rerun {run_id}`.") from None
    start = load_checkpoint(checkpoint, spec, cfg["seed"])
    logged = [m.step for m in client.get_metric_history(run_id, "val_accuracy")]
    # The summary (best epoch ...) covers the whole run: the epochs before the checkpoint come back from the store.
    earlier = {}
    for key in stored.data.metrics:
        points = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        earlier[key] = np.array([v for step, v in points if step < start[0]])
    data = spec.dataset(spec.data_path, spec.train_size)
    client.update_run(run_id, status="RUNNING")
    member = _Member(tracking.Run(client, run_id), cfg["seed"], cfg, checkpoint, logged_until=max(logged, default=-1), earlier=earlier)
    member.run.set_tags({"nnx.resumed_from_epoch": str(start[0])})
    echo(f"nnx: resuming run {run_id} at epoch {start[0]} of {spec.epochs}")
    return _train_and_end(spec, data, [member], None, echo, start=start, progress=progress)


def epoch_line(step, epochs, values) -> str:
    """The plain progress line (CI logs); nnx.cli draws a bar instead on a terminal."""
    return (f"Epoch {step}: val {values['val_accuracy']:.4f} test {values['test_accuracy']:.4f} "
            f"train cost {values['train_cost']:.4f}")


def _train_and_end(spec, data, members, group, echo, start=None, progress=None):
    every = spec.checkpoint_every
    started = time.perf_counter()

    def on_epoch(i, step, values):
        members[i].log(step, values)
        if "val_accuracy" in values and i == 0 and spec.epochs:
            (progress or (lambda s, n, v: echo(epoch_line(s, n, v))))(step, spec.epochs, values)

    def on_state(i, epoch, params, opt_state):
        if every and ((epoch + 1) % every == 0 or epoch == spec.epochs - 1):
            save_checkpoint(members[i].checkpoint, epoch, params, opt_state)
        if stop.is_set() and i == len(members) - 1:
            raise KeyboardInterrupt("stopped by a signal after a whole epoch (logged and checkpointed)")

    # SIGINT/SIGTERM stop the run at the next epoch boundary: an exception raised at a random
    # point could land inside the store client's locks and hang the clean-up. A second signal
    # stops at once.
    stop = threading.Event()

    def request_stop(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt(f"signal {signum}")
        stop.set()

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if len(members) == 1:
            key = jax.random.PRNGKey(members[0].seed)
            results = [training.fit(spec, data, key=key, start=start, on_epoch=lambda s, v: on_epoch(0, s, v),
                                    on_state=lambda e, p, o: on_state(0, e, p, o))]
        else:
            params, histories = training.fit_many(spec, data, seeds=[m.seed for m in members], on_epoch=on_epoch, on_state=on_state)
            results = list(zip(params, histories))
    except BaseException as err:
        for m in members:
            m.end_with_error(err)
        if group:
            group.end("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    diverged, histories = [], []
    for m, (params, history) in zip(members, results):
        history = {k: np.concatenate([m.earlier[k], v]) if k in m.earlier and np.ndim(v) == 1 else v for k, v in history.items()}
        histories.append(history)
        if "probe_steps/hist" in history:
            history.update(probes.histogram_edges(spec.activation_name))
        files = {"params.npz": _params_npz(params), "history.npz": lambda p, h=history: np.savez(p, **h)}
        if m.checkpoint.exists():
            files["checkpoint/last.npz"] = lambda p, c=m.checkpoint: p.write_bytes(c.read_bytes())
        _log_files(m.run, files)
        if "diverged_at" in history:
            step = int(history["diverged_at"])
            m.run.set_tags({"nnx.failure": "diverged", "nnx.failure_epoch": step,
                            "nnx.error": f"Diverged: NaN or inf at epoch {step}"})
            m.run.end("FAILED")
            diverged.append((m.seed, step))
        else:
            result = summary(history)
            m.run.log_metrics(spec.epochs, result)
            m.run.end("FINISHED")
            shutil.rmtree(m.checkpoint.parent, ignore_errors=True)  # the artifact keeps it
            best = (f": best validation accuracy {result['best_val_accuracy']:.2%} at epoch {result['best_epoch']:.0f}"
                    if "best_val_accuracy" in result else " (the initialization measured)")
            echo(f"nnx: run {m.run.run_id} FINISHED in {time.perf_counter() - started:.1f} s{best} (seed {m.seed}). "
                 f"See it with `make ui`, experiment {m.cfg['tracking']['experiment']!r}.")
    if group:
        group.end("FAILED" if diverged else "FINISHED")
    if diverged:
        raise Diverged(
            f"diverged (NaN or inf) at seed/epoch {diverged}: the runs ended FAILED with tag nnx.failure=diverged. "
            f"Lower optimizer.eta, or set train.stop_on_divergence=false to train on regardless."
        )
    return summary(histories[0])
