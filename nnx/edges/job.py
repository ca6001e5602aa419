"""One nnx-train job: a resolved config in, ended MLflow runs out.

No Hydra here: nnx-train (through nnx.edges.cli), resume and nnx-rerun all go through run(). The job
trains one seed, or several at once (fit_many), writes a checkpoint after each epoch, and ends
every run it started as FINISHED, FAILED (an error, or divergence) or KILLED (SIGINT/SIGTERM).
"""

import hashlib
import json
import shutil
import tempfile
import threading
import time
import traceback
from pathlib import Path

import jax
import numpy as np
import yaml

from nnx import choices, probes, records
from nnx import data as nnx_data
from nnx import train as training
from nnx.edges import backend, checkpoint, stop, tracking
from nnx.errors import UserError
from nnx.model import describe, num_params
from nnx.spec import build

# Short copies of the settings people sweep, so the UI's runs table and parallel-coordinates
# plot read "depth", "activation", "eta" without opening the full config.
SHORT_PARAMS = {
    "depth": "model.depth", "width": "model.width", "activation": "activation.name", "init": "init.name",
    "cost": "cost.name", "optimizer": "optimizer.name", "eta": "optimizer.eta", "lmbda": "optimizer.lmbda",
    "mini_batch_size": "train.mini_batch_size", "epochs": "train.epochs", "train_size": "data.train_size",
    "batch_norm": "model.batch_norm", "schedule": "schedule.name", "early_stopping_n": "train.early_stopping_n",
}


class Diverged(UserError, RuntimeError):
    """A run's cost, accuracy or gradient norm became NaN or inf (train.stop_on_divergence)."""


# Keys added after runs were stored, with the value that means "as before": at that value they are
# left out of the hash, so a relaunched sweep still finds (and skips) the runs stored before them.
LATER_KEYS = {("train", "early_stopping_n"): None, ("data", "validation_size"): None, ("schedule",): {"name": "constant"},
              ("train", "eval_every"): 1, ("device",): "auto", ("train", "matmul_precision"): "highest", ("model", "conv_impl"): "auto"}


def config_hash(cfg: dict) -> str:
    """What makes two jobs the same: the config less where it is recorded and how it is resumed."""
    kept = {k: dict(v) if isinstance(v, dict) else v for k, v in cfg.items() if k not in ("tracking", "resume")}
    for path, default in LATER_KEYS.items():
        *parents, key = path
        node = kept
        for parent in parents:
            node = node.get(parent) if isinstance(node, dict) else None
        if isinstance(node, dict) and key in node and node[key] == default:
            del node[key]
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def seed_config(cfg: dict, seed: int) -> dict:
    """The config of one seed's run: what a separate run of that seed would have used."""
    return {**cfg, "seed": seed, "seeds": None, "resume": None}


class Member:
    """One seed's run inside a job."""

    def __init__(self, run, seed, cfg, checkpoint_path, logged_until=-1, earlier=None):
        self.run, self.seed, self.cfg, self.checkpoint = run, seed, cfg, checkpoint_path
        self.logged_until = logged_until  # steps up to here are in the store already (a resume)
        self.earlier = earlier or {}  # a resumed run's history before its checkpoint, from the store

    def log(self, step, values):
        if step > self.logged_until:
            self.run.log_metrics(step, values)

    def end_with_error(self, err):
        self.run.drain()  # the newest checkpoint is written once its epoch's metrics are in the store
        self.run.set_tags({"nnx.error": f"{type(err).__name__}: {err}"})
        files = {"error.txt": lambda p: p.write_text(traceback.format_exc())}
        if self.checkpoint.exists():
            files["checkpoint/last.npz"] = lambda p: p.write_bytes(self.checkpoint.read_bytes())
        self.run.log_files(files)
        self.run.end("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")


def model_params(cfg: dict, spec) -> dict:
    """A run's params as MLflow records them: its config flattened, the network's layers and size,
    and the short names the runs table shows (SHORT_PARAMS)."""
    params = tracking.flatten({k: v for k, v in cfg.items() if k not in ("tracking", "resume")})
    params.update({"model.sizes" if spec.sizes else "model.layers": describe(spec.net), "model.num_params": str(num_params(spec.net))})
    params.update({short: params[full] for short, full in SHORT_PARAMS.items() if full in params})
    return params


# A run trained in one vmapped program with other seeds: their list. Its numbers are those of that
# batch (a batched product sums in its own order), so nnx-rerun trains the same batch again.
BATCH_TAG = "nnx.batch_seeds"


def _start_member(client, experiment_id, uri, cfg, spec, seed, *, name, tags, parent, batch):
    cfg = seed_config(cfg, seed)
    tags = {**tags, "nnx.config_hash": config_hash(cfg), "nnx.seed": str(seed), **({BATCH_TAG: ",".join(map(str, batch))} if batch else {})}
    run = tracking.Run.start(client, experiment_id, name=name, params=model_params(cfg, spec), parent_run_id=parent, tags=tags)
    # Logged first: a killed or failed run keeps what it takes to resume or rerun it.
    run.log_files({"config.yaml": lambda p: p.write_text(tracking.redact(yaml.safe_dump(cfg, sort_keys=False)))})
    log_dataset(run, cfg["data"], spec)
    if cfg["tracking"].get("system_metrics"):
        run.watch_system(uri)
    if cfg["tracking"].get("log_model", True):
        tracking.warm_model_logging()
    return Member(run, seed, cfg, tracking.checkpoint_path(uri, run.run_id))


def log_dataset(run, data_cfg: dict, spec):
    """The training set as the run's MLflow dataset input: named by data.name, digested by nnx.data.digest,
    sourced from the book's file; which images (split, data.train_size, their number) in the input's tags."""
    path, sha256 = spec.data_path or nnx_data.default_path(), nnx_data.digest(data_cfg["name"])
    run.log_dataset(data_cfg["name"], sha256, str(Path(path).expanduser().resolve()),
                    {"nnx.split": "train", "nnx.train_size": "all" if data_cfg["train_size"] is None else data_cfg["train_size"],
                     "nnx.images": spec.train_size, "nnx.sha256": sha256})


def log_summary(member, spec, params, result: dict, step: int, echo):
    """The run's summary metrics at `step`; with tracking.log_model (the default), linked to the network
    logged as an MLflow model. A model that cannot be logged costs the run nothing but the model: the
    summary goes in unlinked, the reason in tag nnx.model_error, and params.npz still holds the network."""
    if member.cfg["tracking"].get("log_model", True):
        try:
            with tempfile.TemporaryDirectory() as folder:
                params_file = Path(folder) / "params.npz"
                checkpoint.params_writer(params)(params_file)
                member.run.log_model(params_file, member.cfg, result, step, model_params(member.cfg, spec))
            return
        except Exception as err:  # MlflowException, OSError: the store refused it
            member.run.set_tags({"nnx.model_error": f"{type(err).__name__}: {err}"})
            echo(f"nnx: run {member.run.run_id}: its model was not logged ({type(err).__name__}: {err}); params.npz holds the network.")
    member.run.log_metrics(step, result)


def _twin(client, experiment_id, cfg, preset, status="FINISHED"):
    """The newest run of the same preset with the same config in `status`: a FINISHED one is the job a
    relaunched sweep skips (_twin_to_heal finds the one it resumes). (Same preset only: two presets
    that happen to share a config each keep their own runs.)"""
    found = tracking.find_runs(client, [experiment_id], tags={"nnx.config_hash": config_hash(cfg), "nnx.experiment": preset},
                               status=status, newest_first=True, max_results=1)
    return found[0] if found else None


def _twin_to_heal(client, experiment_id, cfg, preset, *, killed_too, echo, look_only=False):
    """The run of the same preset and config that a repeated command continues instead of training
    a new one: one left RUNNING by a process that is gone (marked KILLED here, saying why, unless
    look_only) or, with killed_too (a relaunched sweep), one that ended KILLED. A RUNNING twin whose
    process lives (another command training it now) is left alone."""
    found = tracking.find_runs(client, [experiment_id], tags={"nnx.config_hash": config_hash(cfg), "nnx.experiment": preset},
                               newest_first=True, max_results=20)
    for twin in found:
        if twin.data.tags.get("nnx.rerun_of") or twin.info.status not in ("RUNNING", "KILLED"):
            continue
        if twin.info.status == "RUNNING":
            reason = tracking.stale_reason(twin, cfg["tracking"].get("stale_after"))
            if reason is None:
                continue
            if look_only:
                return twin
            tracking.Run(client, twin.info.run_id).kill(reason)
            echo(f"nnx: run {twin.info.run_id} was left RUNNING: {reason}; marked KILLED")
        elif not killed_too:
            continue
        return twin
    return None


def run(cfg: dict, *, name: str, tags: dict, parent=None, skip_finished=False, heal=False, echo=print, progress=None,
        should_stop=None) -> dict:
    """Trains what `cfg` describes into MLflow and returns the first seed's summary.

    Args:
      cfg: the resolved config as a plain dict (what Hydra composes, or a run's config.yaml).
      name: run name; a multi-seed job appends " seed=<s>" per run.
      tags: extra tags for every run (overrides, preset, rerun source ...).
      parent: None, or parent(client, experiment_id) -> (parent run id, sweep id) | None.
      skip_finished: seeds whose identical config already FINISHED are not run again; their runs
        join this sweep's parent instead, and those whose run ended KILLED are resumed into it.
      heal: a seed whose identical config was left RUNNING by a process that is gone is marked
        KILLED (tag nnx.killed_reason) and resumed from its checkpoint in the same run.
      echo: prints a line; progress(step, epochs, values): shows an epoch's numbers (default: a line).
      should_stop: should_stop(i, step, values) -> why the i-th seed's run stops after this epoch, or ""
        (a search's pruner); the run ends FINISHED with tags nnx.stopped and nnx.stopped_epoch.
    Raises:
      ConfigError, DataError, TrackingError, BackendError before any run exists; Diverged after ending the
      diverged run(s) FAILED; anything raised while training after ending the runs FAILED/KILLED.
    """
    spec = build(cfg)
    tags = {**backend.tags(spec.device, spec.matmul_precision), **choices.tags(spec), **tags}  # BackendError before any run exists
    with jax.default_device(backend.default_device(spec.device)):
        return _run(cfg, spec, name=name, tags=tags, parent=parent, skip_finished=skip_finished, heal=heal, echo=echo,
                    progress=progress, should_stop=should_stop)


def _run(cfg, spec, *, name, tags, parent, skip_finished, heal, echo, progress, should_stop) -> dict:
    """run() on the device the config chose."""
    data = spec.load_data()
    uri = tracking.resolve_uri(cfg["tracking"]["uri"])
    if cfg["tracking"].get("system_metrics"):
        tracking.check_system_metrics()
    seeds = list(spec.seeds or [spec.seed])
    if parent is None and uri.startswith("sqlite:"):
        # The embedded store: training starts at once, while a thread opens the store (importing MLflow
        # and its store is ~2 s of Python; training leaves a core and the GIL free) and starts the runs.
        # Their metrics wait until the runs exist; a run found to skip or resume abandons the training
        # for the path below.
        ahead = Ahead(lambda: _fresh_runs(cfg, spec, uri, seeds, name=name, tags=tags, skip_finished=skip_finished, heal=heal))
        try:
            return train_and_end(spec, data, None, None, echo, progress=progress, should_stop=should_stop, ahead=ahead)
        except NotFresh:
            pass
    client, experiment_id = tracking.open_experiment(uri, cfg["tracking"]["experiment"])
    tags = {**tracking.environment_tags(), **tags}
    found = parent(client, experiment_id) if parent else None
    parent_id = None
    if found:
        parent_id, tags["nnx.sweep_id"] = found
    preset = tags.get("nnx.experiment", "none")
    twins = {s: _twin(client, experiment_id, seed_config(cfg, s), preset) for s in seeds} if skip_finished else {}
    for seed, twin in twins.items():
        if twin is not None:
            echo(f"nnx: seed {seed} skipped: the same config FINISHED as run {twin.info.run_id}")
            if parent_id:
                tracking.join_parent(client, twin, parent_id, tags["nnx.sweep_id"])
    seeds = [s for s in seeds if twins.get(s) is None]
    summaries = []
    for seed in list(seeds) if heal or skip_finished else []:
        twin = _twin_to_heal(client, experiment_id, seed_config(cfg, seed), preset, killed_too=skip_finished, echo=echo)
        if twin is None:
            continue
        # It goes on from its last checkpoint in its own run, as `nnx-train resume=RUN_ID` would;
        # imported here because resume is built on this module.
        from nnx.edges.resume import ResumeError, resume

        joined = tracking.parent_tags(twin, parent_id, tags["nnx.sweep_id"]) if parent_id else {}
        try:
            summaries.append(resume(twin.info.run_id, tracking_cfg=cfg["tracking"], echo=echo, progress=progress, tags=joined))
        except ResumeError as err:
            echo(f"nnx: seed {seed}: run {twin.info.run_id} cannot be resumed ({err}); training it anew")
            continue
        seeds.remove(seed)
    if not seeds:
        return summaries[0] if summaries else {k: v for k, v in next(iter(twins.values())).data.metrics.items()}
    members, group = _start_runs(client, experiment_id, uri, cfg, spec, seeds, name=name, tags=tags, parent_id=parent_id)
    for m in members:
        echo(_intro(m, name, spec, uri))
    return train_and_end(spec, data, members, group, echo, progress=progress, should_stop=should_stop)


def _start_runs(client, experiment_id, uri, cfg, spec, seeds, *, name, tags, parent_id):
    """(one Member per seed, their group run or None): several seeds outside a sweep get a parent of their own."""
    group = None
    if len(seeds) > 1 and parent_id is None:
        group = tracking.Run.start(client, experiment_id, name=f"{name} seeds={seeds}", params={},
                                   tags={**tags, "nnx.role": "seeds"})
        parent_id = group.run_id
    members = [
        _start_member(client, experiment_id, uri, cfg, spec, s, name=name if len(seeds) == 1 else f"{name} seed={s}",
                      tags=tags, parent=parent_id, batch=seeds if len(seeds) > 1 else None)
        for s in seeds
    ]
    return members, group


def _intro(member, name, spec, uri) -> str:
    on = backend.default_device(spec.device)  # device=auto says what JAX found
    return (f"nnx: run {member.run.run_id} ({name}) seed={member.seed} {describe(spec.net)} on {on.platform} ({on.device_kind}, "
            f"device={spec.device}) in {tracking.redact(uri)}")


class NotFresh(Exception):
    """A job that Ahead started training finds, in the store, a run of its config to skip or resume."""


def _fresh_runs(cfg, spec, uri, seeds, *, name, tags, skip_finished, heal):
    """(members, group, their intro lines) of a job outside a sweep, opening the store; raises
    NotFresh, writing nothing, where run()'s own path would skip or resume a seed's run."""
    client, experiment_id = tracking.open_experiment(uri, cfg["tracking"]["experiment"])
    preset = tags.get("nnx.experiment", "none")
    for seed in seeds:
        same = seed_config(cfg, seed)
        if (skip_finished and _twin(client, experiment_id, same, preset)) or ((heal or skip_finished) and _twin_to_heal(
                client, experiment_id, same, preset, killed_too=skip_finished, echo=None, look_only=True)):
            raise NotFresh(seed)
    tags = {**tracking.environment_tags(), **tags}
    members, group = _start_runs(client, experiment_id, uri, cfg, spec, seeds, name=name, tags=tags, parent_id=None)
    return members, group, [_intro(m, name, spec, uri) for m in members]


class Ahead:
    """(members, group, intro lines) being started by a thread while training runs; see run()."""

    def __init__(self, start):
        self._result, self._error = None, None
        self._thread = threading.Thread(target=self._start, args=(start,), name="nnx-open-store", daemon=True)
        self._thread.start()

    def _start(self, start):
        try:
            self._result = start()
        except BaseException as err:  # handed to the training thread, which raises it
            self._error = err

    def get(self, wait: bool):
        """(members, group, their intro lines), None while the thread works (unless wait); raises what the thread raised."""
        if not wait and self._thread.is_alive():
            return None
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._result


def epoch_line(step, epochs, values) -> str:
    """The plain progress line (CI logs); nnx.edges.cli draws a bar instead on a terminal. Each
    number appears when its split was evaluated (train.eval_splits)."""
    shown = [("val", "val_accuracy"), ("test", "test_accuracy"), ("train cost", "train_cost")]
    return f"Epoch {step}: " + " ".join(f"{label} {values[key]:.4f}" for label, key in shown if key in values)


def train_and_end(spec, data, members, group, echo, start=None, progress=None, should_stop=None, ahead=None):
    """Trains the members' networks (one, or several seeds vmapped), logging as it goes, and ends
    every run: FINISHED with its files and summary (also when it stopped early: early stopping, the
    schedule or should_stop, tagged nnx.stopped), FAILED on divergence or an error, KILLED on a signal.

    ahead: an Ahead still starting (members, group), which are None until then (run(): the embedded
    store). Each seed's metrics and newest checkpoint are kept meanwhile and handed over once the runs
    exist; NotFresh from it ends training, unrecorded.
    """
    every = spec.checkpoint_every
    started = time.perf_counter()
    seeds = [m.seed for m in members] if ahead is None else list(spec.seeds or [spec.seed])
    kept, newest = [], {}  # while ahead works: (i, step, values) in order; {i: the newest checkpoint (epoch, params, opt_state)}

    def ready(wait=False) -> bool:
        """Whether the runs exist; the first time they do, what was kept goes to them."""
        nonlocal members, group
        if members is None:
            got = ahead.get(wait)
            if got is None:
                return False
            members, group, intro = got
            for line in intro:  # below the epochs shown so far (a bar's line is left as it is)
                echo(("\n" if progress and kept else "") + line)
            for i, step, values in kept:
                members[i].log(step, values)
            for i, (epoch, params, opt_state) in newest.items():
                members[i].run.save_after_logged(checkpoint.saver(members[i].checkpoint, epoch, params, opt_state))
        return True

    def on_epoch(i, step, values):
        if ready():
            members[i].log(step, values)
        else:
            kept.append((i, step, values))
        if any(k.endswith("_accuracy") for k in values) and i == 0 and spec.epochs:
            (progress or (lambda s, n, v: echo(epoch_line(s, n, v))))(step, spec.epochs, values)

    def on_state(i, epoch, params, opt_state):
        if every and ((epoch + 1) % every == 0 or epoch == spec.epochs - 1):
            if ready():
                members[i].run.save_after_logged(checkpoint.saver(members[i].checkpoint, epoch, params, opt_state))
            else:  # host copies: the device's are updated in place by the next epoch
                newest[i] = (epoch, *jax.device_get((params, opt_state)))
        if i == len(seeds) - 1:
            stop_request.check()

    # One stop request from the first epoch to the runs' end: a signal that lands after training's last
    # look at it (the closing measurement, the ending) is still answered, once every run has ended as it
    # trained (the ordinary handler would stop the ending halfway and leave the runs RUNNING).
    with stop.on_signals() as stop_request:
        try:
            if len(seeds) == 1:
                key = jax.random.PRNGKey(seeds[0])
                earlier = members[0].earlier.get("val_accuracy") if start is not None else None
                results = [training.fit(spec, data, key=key, start=start, earlier=earlier, on_epoch=lambda s, v: on_epoch(0, s, v),
                                        on_state=lambda e, p, o: on_state(0, e, p, o),
                                        should_stop=None if should_stop is None else lambda s, v: should_stop(0, s, v))]
            else:
                params, histories = training.fit_many(spec, data, seeds=seeds, on_epoch=on_epoch,
                                                      on_state=on_state, should_stop=should_stop)
                results = list(zip(params, histories))
            ready(wait=True)
        except BaseException as err:
            if members is None:  # the runs still to come get the error; if none come, it is raised as it is
                try:
                    ready(wait=True)
                except BaseException as opening:
                    if opening is err:  # the store's own error, or NotFresh, met while training
                        raise
                    raise err from None
            for m in members:
                m.end_with_error(err)
            if group:
                group.end("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
            raise

        diverged, histories = _end_runs(spec, members, group, results, echo, progress, started)
    stop_request.check("stopped by a signal once its runs had ended")
    if diverged:
        raise Diverged(
            f"diverged (NaN or inf) at seed/epoch {diverged}: the runs ended FAILED with tag nnx.failure=diverged. "
            f"Lower optimizer.eta, or set train.stop_on_divergence=false to train on regardless."
        )
    return records.summary(histories[0])


def _end_runs(spec, members, group, results, echo, progress, started) -> tuple[list, list]:
    """Ends each trained run, FINISHED with its files and summary or FAILED where it diverged; returns
    ([(seed, epoch) of each divergence], [each run's whole history])."""
    diverged, histories = [], []
    for m, (params, history) in zip(members, results):
        m.run.drain()  # the last checkpoint is written by the run's writer
        history = {k: np.concatenate([m.earlier[k], v]) if k in m.earlier and np.ndim(v) == 1 else v for k, v in history.items()}
        histories.append(history)
        if records.probe_steps("hist") in history:
            history.update(probes.histogram_edges(spec.activation_facts))
        files = {"params.npz": checkpoint.params_writer(params), "history.npz": checkpoint.history_writer(history)}
        if m.checkpoint.exists():
            files["checkpoint/last.npz"] = lambda p, c=m.checkpoint: p.write_bytes(c.read_bytes())
        m.run.log_files(files)
        if records.DIVERGED_AT in history:
            step = int(history[records.DIVERGED_AT])
            m.run.set_tags({"nnx.failure": "diverged", "nnx.failure_epoch": step,
                            "nnx.error": f"Diverged: NaN or inf at epoch {step}"})
            m.run.end("FAILED")
            diverged.append((m.seed, step))
        else:
            result = records.summary(history)
            stopped = records.STOPPED_AT in history
            last = int(history[records.STOPPED_AT]) + 1 if stopped else spec.epochs  # the step after the last epoch
            if stopped:
                m.run.set_tags({"nnx.stopped": str(history[records.STOP_REASON]), "nnx.stopped_epoch": last - 1})
            log_summary(m, spec, params, result, last, echo)
            m.run.end("FINISHED")
            shutil.rmtree(m.checkpoint.parent, ignore_errors=True)  # the artifact keeps it
            best = _outcome(result, spec.epochs)
            why = f"; stopped after epoch {last - 1} of {spec.epochs}: {history[records.STOP_REASON]}" if stopped else ""
            echo(f"{chr(10) if stopped and progress else ''}nnx: run {m.run.run_id} FINISHED in {time.perf_counter() - started:.1f} s{best} "
                 f"(seed {m.seed}){why}. See it with `make ui`, experiment {m.cfg['tracking']['experiment']!r}.")
    if group:
        group.end("FAILED" if diverged else "FINISHED")
    return diverged, histories


def _outcome(result: dict, epochs: int) -> str:
    """What a FINISHED line says of the run: its best validation accuracy, else what it evaluated."""
    if "best_val_accuracy" in result:
        return f": best validation accuracy {result['best_val_accuracy']:.2%} at epoch {result['best_epoch']:.0f}"
    for split, key in (("test", "final_test_accuracy"), ("training", "final_train_accuracy")):
        if key in result:
            return f": {split} accuracy {result[key]:.2%} after the last epoch"
    return " (the initialization measured)" if epochs == 0 else ""
