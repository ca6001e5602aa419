"""A job's runs from their first epoch to their end: training them with their metrics and
checkpoints logged as they come, then ending each FINISHED, FAILED (an error, or divergence) or
KILLED (a signal), with its files, summary and model. nnx.edges.job starts the runs (or finds them
to skip or heal) and nnx.edges.resume continues one; both hand them here.
"""

import shutil
import tempfile
import time
import traceback
from pathlib import Path

import jax
import numpy as np

from nnx import probes, records
from nnx import train as training
from nnx.edges import checkpoint, stop, tracking
from nnx.errors import UserError
from nnx.model import describe, num_params

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
        self.run.set_tags({records.TAG_ERROR: f"{type(err).__name__}: {err}"})
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


def log_summary(member, spec, params, result: dict, step: int, echo):
    """The run's summary metrics at `step`; with tracking.log_model (the default), linked to the network
    logged as an MLflow model. A model that cannot be logged costs the run nothing but the model: the
    summary goes in unlinked, the reason in tag nnx.model_error, and params.npz still holds the network."""
    if member.cfg["tracking"]["log_model"]:
        try:
            with tempfile.TemporaryDirectory() as folder:
                params_file = Path(folder) / "params.npz"
                checkpoint.params_writer(params)(params_file)
                member.run.log_model(params_file, member.cfg, result, step, model_params(member.cfg, spec))
            return
        except Exception as err:  # MlflowException, OSError: the store refused it
            member.run.set_tags({records.TAG_MODEL_ERROR: f"{type(err).__name__}: {err}"})
            echo(f"nnx: run {member.run.run_id}: its model was not logged ({type(err).__name__}: {err}); params.npz holds the network.")
    member.run.log_metrics(step, result)


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
            m.run.set_tags({records.TAG_FAILURE: "diverged", records.TAG_FAILURE_EPOCH: step,
                            records.TAG_ERROR: f"Diverged: NaN or inf at epoch {step}"})
            m.run.end("FAILED")
            diverged.append((m.seed, step))
        else:
            result = records.summary(history)
            stopped = records.STOPPED_AT in history
            last = int(history[records.STOPPED_AT]) + 1 if stopped else spec.epochs  # the step after the last epoch
            if stopped:
                m.run.set_tags({records.TAG_STOPPED: str(history[records.STOP_REASON]), records.TAG_STOPPED_EPOCH: last - 1})
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
    if records.BEST_VAL_ACCURACY in result:
        return f": best validation accuracy {result[records.BEST_VAL_ACCURACY]:.2%} at epoch {result[records.BEST_EPOCH]:.0f}"
    for split, key in (("test", "final_test_accuracy"), ("training", "final_train_accuracy")):
        if key in result:
            return f": {split} accuracy {result[key]:.2%} after the last epoch"
    return " (the initialization measured)" if epochs == 0 else ""
