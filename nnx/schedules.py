"""Chapter 3's learning-rate schedules and early stopping, by name (the `schedule` config group).

A schedule gives each epoch's learning rate from what the epochs before it measured: the book's
halving rule reads the validation accuracy, optax's schedules (exponential, cosine) read the epoch
alone. Each is an init/update pair of pure functions over a NamedTuple state, run on the host
between epochs; training reads eta from the optimizer's state (optax.inject_hyperparams), so a new
eta never recompiles the epoch. Early stopping (train.early_stopping_n) is the same patience rule
with "stop" where halving says "halve".

    no-improvement-in-n:  the validation accuracy has not beaten its best for n epochs
    halving:              eta <- eta / 2 each time the rule fires; stop once eta <= floor * eta_0
    exponential:          eta_e = eta_0 * decay_rate^e            (optax.exponential_decay)
    cosine:               eta_e = eta_0 * (alpha + (1 - alpha) (1 + cos(pi e / epochs)) / 2)
                                                                   (optax.cosine_decay_schedule)
"""

import math
from collections.abc import Callable
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
import optax

from nnx.registry import check, is_int, is_number


class Patience(NamedTuple):
    """The no-improvement-in-n rule's state (chapter 3, "Early stopping")."""

    best: float  # the best validation accuracy so far (-inf before the first epoch)
    since: int  # epochs since it last improved


def patience_init() -> Patience:
    return Patience(-math.inf, 0)


def patience_update(state: Patience, accuracy: float) -> Patience:
    """An epoch's validation accuracy: a new best resets the count, anything else (a tie too) adds one."""
    return Patience(float(accuracy), 0) if accuracy > state.best else Patience(state.best, state.since + 1)


class State(NamedTuple):
    eta: float  # the learning rate of the next epoch
    patience: Patience  # the halving rule's count (reset at each halving); unused by the others
    stop: str  # why training should stop after this epoch; "" to go on


class Schedule(NamedTuple):
    """init() -> State before the first epoch; update(state, epoch, val_accuracy) -> State after
    epoch `epoch` (from 0). reads_validation: whether update needs the validation accuracy."""

    init: Callable[[], State]
    update: Callable[[State, int, float], State]
    reads_validation: bool


def _per_epoch(eta_at: Callable[[int], float]) -> Schedule:
    """A schedule that depends on the epoch alone."""

    def init():
        return State(float(eta_at(0)), patience_init(), "")

    def update(state, epoch, accuracy):
        del accuracy
        return state._replace(eta=float(eta_at(epoch + 1)))

    return Schedule(init, update, reads_validation=False)


def constant(eta: float, epochs: int) -> Schedule:
    """The book's fixed eta (the default): nothing is injected into the optimizer."""
    del epochs
    return _per_epoch(lambda e: eta)


def fraction(floor: float) -> str:
    """0.0078125 -> "1/128"; 0.3 -> "0.3"."""
    inverse = 1 / floor
    return f"1/{round(inverse)}" if abs(inverse - round(inverse)) < 1e-9 else f"{floor:g}"


def halving(eta: float, epochs: int, n: int = 10, floor: float = 1 / 128) -> Schedule:
    """Chapter 3's problem: halve eta each time the no-improvement-in-n rule fires; stop once eta
    has fallen to `floor` of its starting value (the book: n = 10, floor = 1/128, so 7 halvings)."""
    del epochs
    check(is_int(n) and n >= 1, "schedule.n", n, "the no-improvement window must be an integer >= 1 (epochs)", "Use e.g. schedule.n=10 (the book's).")
    check(is_number(floor) and 0 < floor < 1, "schedule.floor", floor, "must be a fraction in (0, 1) of the starting eta",
          "Use e.g. schedule.floor=0.0078125 (the book's 1/128).")

    def init():
        return State(float(eta), patience_init(), "")

    def update(state, epoch, accuracy):
        del epoch
        patience, now = patience_update(state.patience, accuracy), state.eta
        if patience.since >= n:
            patience, now = patience._replace(since=0), now / 2
        stop = f"eta fell to {fraction(floor)} of its start (no improvement in {n} epochs, halved each time)" if now <= eta * floor * (1 + 1e-12) else ""
        return State(now, patience, stop)

    return Schedule(init, update, reads_validation=True)


def exponential(eta: float, epochs: int, decay_rate: float = 0.9) -> Schedule:
    """eta_e = eta_0 decay_rate^e (optax.exponential_decay, one transition per epoch)."""
    del epochs
    check(is_number(decay_rate) and 0 < decay_rate <= 1, "schedule.decay_rate", decay_rate, "must be in (0, 1] (the factor per epoch)",
          "Use e.g. schedule.decay_rate=0.9.")
    return _per_epoch(optax.exponential_decay(eta, transition_steps=1, decay_rate=decay_rate))


def cosine(eta: float, epochs: int, alpha: float = 0.0) -> Schedule:
    """Cosine decay from eta_0 to alpha eta_0 over train.epochs (optax.cosine_decay_schedule)."""
    check(is_number(alpha) and 0 <= alpha <= 1, "schedule.alpha", alpha, "must be in [0, 1] (the final eta as a fraction of the first)",
          "Use e.g. schedule.alpha=0.0.")
    return _per_epoch(optax.cosine_decay_schedule(eta, decay_steps=max(epochs, 1), alpha=alpha))


SCHEDULES = {"constant": constant, "halving": halving, "exponential": exponential, "cosine": cosine}


def injected(factory, **hparams):
    """factory(**hparams) with eta moved into the optimizer's state (optax.inject_hyperparams), where
    set_eta changes it between epochs; every other setting stays a Python constant."""
    return optax.inject_hyperparams(factory, static_args=tuple(k for k in hparams if k != "eta"))(**hparams)


def set_eta(opt_state, etas):
    """The injected state with eta = etas: one value, or one per network of a vmapped state. The
    dtype and shape are the old ones, so the jitted epoch sees the same types (no recompilation)."""
    old = opt_state.hyperparams["eta"]
    return opt_state._replace(hyperparams={**opt_state.hyperparams, "eta": jnp.asarray(np.reshape(etas, old.shape), old.dtype)})
