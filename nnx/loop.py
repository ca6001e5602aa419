"""The epoch loop of nnx.train's fit and fit_many: one network, or several trained as one (vmapped).

train() runs epoch after epoch. Each is probed before its updates (chapter 5's gradients), trained,
evaluated after them, recorded, and handed on (on_state, e.g. a checkpoint); between epochs the host
advances each network's schedule and early stopping. A network whose values turn non-finite is
recorded once more (so the blow-up is visible) and then dropped from the records; one that stops
early gets its closing gradient measurement at once and keeps that epoch's params while the others
train on; the loop ends early when every network has diverged or stopped.

What stays fixed through a run is a Setup; what changes from epoch to epoch is one Run, passed along.
Two ways of saving time apply only where the host decides nothing between epochs (setup() says where):
  blocks   full-batch epochs between evaluations train as one program (nnx.programs.block_fn): the
           epochs of a block are recorded from its stacked probes, on_state follows its last epoch only,
           and a network that diverges inside one is recorded up to the blow-up, as in the epoch loop.
  beside   each epoch's evaluation runs on a second device (nnx.choices.evaluation_device) while the
           next epoch trains: epoch e is recorded once epoch e + 1 is under way (Run.waiting).
Both give the numbers of the plain loop, bit for bit (tests/test_train.py).
"""

import dataclasses
import math
import operator
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nnx import choices, probes, records, schedules
from nnx.programs import eval_chunks, to_device


class Programs(NamedTuple):
    """What the loop runs, for one network or for `count` vmapped (nnx.train builds both kinds)."""

    count: int  # networks trained at once
    run_epoch: Callable  # (params, opt_state, e, x, y) -> (params, opt_state): epoch e
    run_block: Callable  # (params, opt_state, e, k, x, y, probe_x, probe_y) -> (params, opt_state, probes): epochs e..e+k-1
    probe: Callable  # kinds -> probe(params, x, y), jitted once per distinct kinds
    evaluate: Callable  # (params, (n, chunks)) -> (cost, accuracy) of a split prepared by eval_chunks
    split: Callable  # tree -> [one tree per network]


@dataclasses.dataclass(frozen=True)
class Setup:
    """What stays fixed through a run. The callbacks take the network's index first."""

    spec: Any
    programs: Programs
    first: int  # the first epoch to train (a resumed run's start)
    pixels: Any  # the training images on the device, as stored (uint8: epoch_fn decodes them)
    labels: Any
    probe_set: tuple  # (x, y): the probe batch
    splits: dict  # {name: (n, chunks)} on the evaluating device: the splits evaluated (train.eval_splits)
    blocked: bool  # blocks of epochs (module docstring)
    beside: Any  # the device evaluating beside the next epoch, or None: in line
    on_epoch: Callable | None  # (i, step, values)
    on_state: Callable | None  # (i, epoch, params, opt_state)
    should_stop: Callable | None  # (i, step, values) -> why network i stops there, or ""


class Trained(NamedTuple):
    """An epoch trained and evaluated, not yet recorded (its accuracies may still be under way)."""

    epoch: int
    measured: list  # each network's probes before the epoch's updates
    evaluated: dict  # {split: (cost, accuracy)}, still on the device; {} where not evaluated
    etas: list  # each network's eta in this epoch
    params: Any
    opt_state: Any


@dataclasses.dataclass
class Run:
    """The loop's state between epochs."""

    params: Any
    opt_state: Any
    histories: list  # one dict of lists per network
    rules: list  # each network's (schedule state, early-stopping Patience)
    kept: dict = dataclasses.field(default_factory=dict)  # {network: its params} for those that stopped early
    ahead: list = dataclasses.field(default_factory=list)  # the probes of epochs a block trained already, oldest first
    waiting: Trained | None = None  # evaluated beside: the last epoch, recorded once the next is under way


def setup(spec, data, programs, dtype, *, first, on_epoch, on_state, should_stop, blocks=True, beside=True) -> Setup:
    """The run's Setup: the data on the device, and where blocks and evaluation beside apply.

    blocks, beside: False keeps to the plain loop, which gives the same numbers (the tests compare).
    """
    # device_put, not jnp.asarray: the same bytes, without the program per shape jnp.asarray compiles
    # (lax.stage; ~35 ms each), and the probe's labels cut on the host rather than by one more program.
    pixels = jax.device_put(data.train.x) if data.train.x.dtype == np.uint8 else to_device(data.train.x, dtype)
    labels = jax.device_put(data.train.y)
    probe_set = (to_device(data.train.x[: spec.probe_size], dtype), jax.device_put(data.train.y[: spec.probe_size]))
    # Only where an epoch is one step (full batch): there the host's per-epoch work costs more than the
    # epoch, and a block of them is still short, so stop signals and heartbeats (after each block) stay prompt.
    blocked = (blocks and spec.eval_every > 1 and spec.mini_batch_size >= spec.train_size and not spec.injects_eta
               and spec.early_stopping_n is None and should_stop is None and not spec.probes.kinds)
    # Beside only where nothing the host decides after an epoch (eta, early stopping, should_stop) waits for its accuracies.
    device = None if not beside or blocked or spec.logs_eta or should_stop is not None else choices.evaluation_device()
    splits = {name: eval_chunks(spec, s, dtype, device) for name, s in data._asdict().items() if name in spec.eval_splits}
    return Setup(spec, programs, first, pixels, labels, probe_set, splits, blocked, device, on_epoch, on_state, should_stop)


def start(spec, state, count: int, earlier=None) -> Run:
    """The Run before the first epoch: each network's schedule and early-stopping count caught up on
    `earlier` (its validation accuracies of the epochs before a resumed run's first)."""
    rules = []
    for i in range(count):
        schedule, patience = spec.schedule.init(), schedules.patience_init()
        for e, accuracy in enumerate((earlier or [[]] * count)[i]):
            schedule, patience = spec.schedule.update(schedule, e, accuracy), schedules.patience_update(patience, accuracy)
        rules.append((schedule, patience))
    return Run(*state, histories=[{} for _ in range(count)], rules=rules)


def train(s: Setup, run: Run) -> tuple:
    """Trains epochs s.first .. spec.epochs - 1 and returns ([params per network], [history per network]):
    {metric: np.ndarray over steps}. A network that stopped early returns the params of its last epoch."""
    for e in range(s.first, s.spec.epochs):
        if not train_epoch(s, run, e):
            break
    else:
        finish(s, run)
    return ([run.kept.get(i, p) for i, p in enumerate(s.programs.split(run.params))],
            [{name: np.asarray(v) for name, v in h.items()} for h in run.histories])


def train_epoch(s: Setup, run: Run, e: int) -> bool:
    """Epoch e: probed, trained (or taken from the block that trained it), evaluated, and recorded
    (beside: the epoch before it is). False once every network has diverged or stopped."""
    if s.blocked and not run.ahead and block_length(s.spec, e) > 1:
        run.ahead = train_block(s, run, e, block_length(s.spec, e))
    in_block = bool(run.ahead)  # this epoch's updates are done already
    measured = run.ahead.pop(0) if in_block else measure(s, run.params, e)
    open_histories(s, run, e, measured)
    etas = [schedule.eta for schedule, _ in run.rules]
    if s.spec.injects_eta:
        run.opt_state = schedules.set_eta(run.opt_state, etas)
    if not in_block:
        run.params, run.opt_state = s.programs.run_epoch(run.params, run.opt_state, e, s.pixels, s.labels)
    if run.waiting is not None:
        waiting, run.waiting = run.waiting, None
        if after_epoch(s, run, waiting):  # this epoch is dropped: the runs end with the one before
            run.params, run.opt_state = jax.device_put((waiting.params, waiting.opt_state), jax.devices()[0])
            return False
    if run.ahead:  # params are those of the block's last epoch: nothing to evaluate or save before it
        record(s, run, e, measured, [{}] * len(run.histories), eta_values(s.spec, etas))
        return not all(done(h) for h in run.histories)
    trained = evaluate(s, run, e, measured, etas)
    if s.beside is not None:
        run.waiting = trained
        return True
    return not after_epoch(s, run, trained)


def evaluate(s: Setup, run: Run, e: int, measured, etas) -> Trained:
    """Epoch e as trained, its evaluation under way where one is due (every eval_every-th and the last)."""
    evaluating = (e + 1) % s.spec.eval_every == 0 or e == s.spec.epochs - 1
    # Beside: a copy on the other device, which the next epoch (params donated) leaves as it is.
    at = (run.params, run.opt_state) if s.beside is None else jax.device_put((run.params, run.opt_state), s.beside)
    evaluated = {name: s.programs.evaluate(at[0], prepared) for name, prepared in s.splits.items()} if evaluating else {}
    return Trained(e, measured, evaluated, etas, *at)


def finish(s: Setup, run: Run):
    """After the last epoch: its record, where it was evaluated beside, and the closing measurement."""
    if run.waiting is not None:
        waiting, run.waiting = run.waiting, None
        if after_epoch(s, run, waiting):
            return
    final = measure(s, run.params, s.spec.epochs)
    open_histories(s, run, s.spec.epochs, final)  # epochs=0: the initialization is all there is
    record(s, run, s.spec.epochs, final)  # epochs=0: no accuracies, which would cost a pass over 70000 images


def block_length(spec, e: int) -> int:
    """Epochs from e to the next one after which the host has work: an evaluation, a checkpoint, the end."""
    end = e
    while not ((end + 1) % spec.eval_every == 0 or end == spec.epochs - 1
               or (spec.checkpoint_every and (end + 1) % spec.checkpoint_every == 0)):
        end += 1
    return end - e + 1


def train_block(s: Setup, run: Run, e: int, k: int) -> list:
    """Trains epochs e .. e + k - 1 as one program; returns each epoch's probes, [epoch][network]."""
    run.params, run.opt_state, stacked = s.programs.run_block(run.params, run.opt_state, e, k, s.pixels, s.labels, *s.probe_set)
    host = jax.device_get(stacked)
    return [[probes.finish(m, len(s.spec.net.weighted) - 1) for m in s.programs.split(jax.tree.map(operator.itemgetter(j), host))]
            for j in range(k)]


def measure(s: Setup, params, step: int) -> list:
    """Each network's probes at `step`: chapter 5's gradients and the optional kinds due then."""
    probe = s.programs.probe(probes.kinds_at(s.spec, step, s.spec.epochs))
    return [probes.finish(m, len(s.spec.net.weighted) - 1) for m in s.programs.split(jax.device_get(probe(params, *s.probe_set)))]


def open_histories(s: Setup, run: Run, step: int, measured):
    """5.5's bars (dC/db at init) open each history, where step 0 is measured (a run from the start)."""
    if step == s.first == 0:
        for history, m in zip(run.histories, measured):
            history.update(records.init_bias_grads(m["bias_grad"]))


def eta_values(spec, etas) -> list | None:
    """Each network's eta as a value to record, where the spec records it."""
    return [{records.ETA: eta} for eta in etas] if spec.logs_eta else None


def done(history) -> bool:
    return records.DIVERGED_AT in history or records.STOPPED_AT in history


def after_epoch(s: Setup, run: Run, trained: Trained) -> bool:
    """Records an epoch (fetching its accuracies: evaluate's results, still on the device), stops the
    networks whose rules say so, and hands on the others' state; True once every network has diverged or stopped."""
    e = trained.epoch
    evaluated = s.programs.split(jax.device_get(trained.evaluated)) if trained.evaluated else [{}] * len(run.histories)
    record(s, run, e, trained.measured, evaluated, eta_values(s.spec, trained.etas))
    stopping = stop_reasons(s, run, e, evaluated)
    if stopping:
        mine = s.programs.split(trained.params)
        run.kept.update({i: jax.tree.map(jnp.copy, mine[i]) for i in stopping})  # the others train on (vmapped)
        record(s, run, e + 1, measure(s, trained.params, e + 1), only=stopping)  # the closing measurement, after the last epoch
        for i, reason in stopping.items():
            run.histories[i].update({records.STOPPED_AT: e, records.STOP_REASON: reason})
    if all(done(h) for h in run.histories):
        return True
    if s.on_state is not None:
        for i, (p, state) in enumerate(zip(s.programs.split(trained.params), s.programs.split(trained.opt_state))):
            if not done(run.histories[i]):
                s.on_state(i, e, p, state)
    return False


def record(s: Setup, run: Run, step: int, measured, evaluated=None, extra=None, only=None):
    """Appends step's values to each live network's history (of the networks in `only`, where given)
    and hands them to on_epoch. Histograms and spectra go into the history as arrays stacked over the
    steps listed in history["probe_steps/hist"] and ["probe_steps/spectrum"], never to on_epoch (MLflow
    metrics are scalars). A value that is not finite marks the network diverged at this step."""
    for i, (history, m) in enumerate(zip(run.histories, measured)):
        if done(history) or (only is not None and i not in only):
            continue
        values = {**records.flatten_probe(m), **({} if evaluated is None else records.flatten_evaluation(evaluated[i])),
                  **({} if extra is None else extra[i])}
        if s.spec.eval_every > 1 and evaluated is not None and evaluated[i]:  # which epochs the accuracies are of
            history.setdefault(records.EVAL_STEPS, []).append(step)
        if s.on_epoch is not None:
            s.on_epoch(i, step, values)
        for name, value in values.items():
            history.setdefault(name, []).append(value)
        for group in {name.split("/", 1)[0] for name in m.get("arrays", {})}:  # hist, spectrum
            history.setdefault(records.probe_steps(group), []).append(step)
        for name, value in m.get("arrays", {}).items():
            history.setdefault(name, []).append(np.asarray(value))
        if s.spec.stop_on_divergence and not all(np.isfinite(v) for v in values.values()):
            history[records.DIVERGED_AT] = step


def stop_reasons(s: Setup, run: Run, e: int, evaluated) -> dict:
    """{network: why it stops after epoch e}; advances every live network's schedule and count."""
    reasons = {}
    for i, history in enumerate(run.histories):
        if done(history):
            continue
        values = records.flatten_evaluation(evaluated[i])
        run.rules[i], rule = advance(s.spec, run.rules[i], e, values)
        asked = s.should_stop(i, e, values) if s.should_stop is not None else ""  # asked every epoch: a pruner records each
        if (asked or rule) and e < s.spec.epochs - 1:  # after the last epoch the run ends anyway
            reasons[i] = asked or rule
    return reasons


def advance(spec, rules, e: int, values: dict) -> tuple:
    """((schedule state, Patience) after epoch e's values, the rules' reason to stop there or "")."""
    schedule, patience = rules
    if "val_accuracy" in values:
        schedule = spec.schedule.update(schedule, e, values["val_accuracy"])
        patience = schedules.patience_update(patience, values["val_accuracy"])
    elif not spec.schedule.reads_validation:
        schedule = spec.schedule.update(schedule, e, math.nan)
    n = spec.early_stopping_n
    return (schedule, patience), schedule.stop or (f"no improvement in {n} epochs" if n is not None and patience.since >= n else "")
