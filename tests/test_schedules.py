"""Chapter 3's schedules and early stopping: the rules against hand counts, and runs that stop where
they must by construction (eta = 1e-30: the accuracy never changes, so it never improves after epoch 0)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx
from conftest import tiny_cfg
from nnx import schedules
from nnx.edges.job import config_hash

FROZEN = {"name": "sgd", "eta": 1e-30, "lmbda": 0.0}  # updates of ~1e-31: nothing a float32 accuracy can see


def train(epochs, **kw):
    return {"epochs": epochs, "mini_batch_size": 10, "stop_on_divergence": True, "checkpoint_every": 1, **kw}


@pytest.fixture(scope="module")
def small():
    return nnx.load(train_size=100)


def run_rule(schedule, accuracies):
    """The etas a schedule gives epochs 0..len, and the epoch after which it says stop (or None)."""
    state, etas = schedule.init(), []
    for e, accuracy in enumerate(accuracies):
        etas.append(state.eta)
        state = schedule.update(state, e, accuracy)
        if state.stop:
            return etas, e
    return etas, None


def test_patience_counts_epochs_without_a_new_best():
    state = schedules.patience_init()
    counts = []
    for accuracy in (0.5, 0.6, 0.6, 0.55, 0.7, 0.7):
        state = schedules.patience_update(state, accuracy)
        counts.append(state.since)
    assert counts == [0, 0, 1, 2, 0, 1] and state.best == 0.7  # a tie is no improvement


def test_halving_halves_after_n_flat_epochs_and_stops_at_the_floor():
    """The book's rule: n = 10, floor 1/128. A flat accuracy: halve after epochs 10, 20, ... 70; stop after 70."""
    etas, stopped = run_rule(schedules.halving(0.5, 500), [0.9] * 200)
    assert stopped == 70
    assert etas[:11] == [0.5] * 11 and etas[11] == 0.25 and etas[21] == 0.125 and etas[70] == 0.5 / 64
    # An improvement resets the count: the first halving waits for 10 epochs without a new best.
    etas, _ = run_rule(schedules.halving(0.5, 500, n=3), [0.1, 0.2, 0.3, 0.3, 0.3, 0.3, 0.3])
    assert etas == [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.25]


def test_optax_schedules_give_the_formulas_per_epoch():
    # optax's float32 schedules against float64 formulas: a power, a cosine and a few products, each within a
    # few ulps on values >= 0.1 of the largest: ~5 u relative (measured 9e-8); rtol 1e-6 is ~17 u.
    etas, _ = run_rule(schedules.exponential(0.5, 10, decay_rate=0.8), [0.0] * 5)
    np.testing.assert_allclose(etas, 0.5 * 0.8 ** np.arange(5), rtol=1e-6)
    etas, _ = run_rule(schedules.cosine(0.5, 4, alpha=0.1), [0.0] * 4)
    np.testing.assert_allclose(etas, 0.5 * (0.1 + 0.9 * (1 + np.cos(np.pi * np.arange(4) / 4)) / 2), rtol=1e-6)
    assert run_rule(schedules.constant(0.5, 3), [0.1, 0.1, 0.1]) == ([0.5] * 3, None)


def test_early_stopping_stops_at_epoch_n_when_nothing_improves(small):
    spec = nnx.build(tiny_cfg(optimizer=FROZEN, train=train(10, early_stopping_n=3)))
    _params, history = nnx.fit(spec, small, key=jax.random.PRNGKey(0))
    assert int(history["stopped_at"]) == 3 and str(history["stop_reason"]) == "no improvement in 3 epochs"
    assert len(history["val_accuracy"]) == 4 and len(history["grad_norm/hidden_1"]) == 5  # the closing measurement too
    assert np.all(history["val_accuracy"] == history["val_accuracy"][0])
    np.testing.assert_allclose(history["eta"], 1e-30)  # float32's 1e-30: within u = 6e-8 of float64's


def test_halving_stops_when_eta_reaches_the_floor_for_every_seed(small):
    spec = nnx.build(tiny_cfg(optimizer=FROZEN, schedule={"name": "halving", "n": 1, "floor": 0.125}, train=train(20)))
    _, histories = nnx.fit_many(spec, small, seeds=[0, 1])
    for history in histories:  # halved after epochs 1, 2, 3: 1/8 of the start, so it stops after epoch 3
        assert int(history["stopped_at"]) == 3 and str(history["stop_reason"]).startswith("eta fell to 1/8 of its start")
        # float32's 1e-30 (within u of it) halved exactly
        np.testing.assert_allclose(history["eta"], [1e-30, 1e-30, 5e-31, 2.5e-31], rtol=1e-6)


def test_a_seed_that_stops_keeps_its_params_while_the_others_train_on(small):
    """should_stop stops seed 1 after epoch 0: its params are epoch 0's, seed 0 trains all 3 epochs."""
    spec = nnx.build(tiny_cfg(optimizer={"name": "sgd", "eta": 0.5, "lmbda": 0.0}, train=train(3)))
    stop = lambda i, step, values: "told to" if i == 1 else ""
    params, histories = nnx.fit_many(spec, small, seeds=[0, 1], should_stop=stop)
    assert len(histories[0]["val_accuracy"]) == 3 and "stopped_at" not in histories[0]
    assert int(histories[1]["stopped_at"]) == 0 and len(histories[1]["val_accuracy"]) == 1
    one_epoch = nnx.fit(nnx.build(tiny_cfg(optimizer={"name": "sgd", "eta": 0.5, "lmbda": 0.0}, train=train(1))), small,
                        key=jax.random.PRNGKey(1))[0]
    # One epoch (10 steps) in two programs, vmapped over seeds or not, whose products may sum in other orders
    # (here they agree): a few ulps of w a step, which an epoch carries to ~3e-8 per ulp (a run from params
    # nudged by one ulp, in the test below), so ~3e-7 in all; 1e-6 + 1e-4 |w| holds >10x that.
    np.testing.assert_allclose(params[1][0]["w"], one_epoch[0]["w"], rtol=1e-4, atol=1e-6)


def test_a_scheduled_eta_is_the_optimizers_eta_and_never_recompiles(small):
    """An epoch at an injected eta equals an epoch of the constant optimizer at that eta."""
    x, y = jnp.asarray(small.train.x), jnp.asarray(small.train.y)
    scheduled = nnx.build(tiny_cfg(schedule={"name": "halving", "n": 10, "floor": 0.0078125}))
    epoch = nnx.make_epoch(scheduled)
    key = jax.random.PRNGKey(0)
    for eta in (0.4, 0.1):
        fixed = nnx.build(tiny_cfg(optimizer={"name": "sgd", "eta": eta, "lmbda": 0.0}))
        params = nnx.init(key, fixed.net)
        nudged = jax.tree.map(lambda t: jnp.asarray(np.nextafter(np.asarray(t), np.float32(np.inf))), params)  # one ulp up
        fixed_epoch = nnx.make_epoch(fixed)
        expected, _ = fixed_epoch(params, fixed.optimizer.init(params), key, x, y)
        carried, _ = fixed_epoch(nudged, fixed.optimizer.init(nudged), key, x, y)
        params = nnx.init(key, scheduled.net)
        got, _ = epoch(params, schedules.set_eta(scheduled.optimizer.init(params), [eta]), key, x, y)
        # Two programs, eta a constant in one and a value in the other: the same float32 operations (here the
        # same bits), but XLA may fuse w - eta g into one multiply-add in one only: a rounding more or less, at
        # most an ulp of each weight, in each of the 10 steps. What an epoch makes of an ulp of every weight is
        # measured (the nudged run: ~3e-8); 10 of those, one a step, bound the difference (nnx.numerics' twins).
        steps = len(y) // scheduled.mini_batch_size
        np.testing.assert_allclose(got[0]["w"], expected[0]["w"], rtol=0, atol=steps * np.max(np.abs(carried[0]["w"] - expected[0]["w"])))
    assert epoch.jitted._cache_size() == 1


def test_a_resumed_run_picks_up_its_schedule(small):
    """Training from epoch 3's checkpoint, with the first 3 accuracies, gives what the whole run gave."""
    spec = nnx.build(tiny_cfg(optimizer={"name": "sgd", "eta": 10.0, "lmbda": 0.0}, schedule={"name": "halving", "n": 1, "floor": 0.01},
                              train=train(6)))
    saved = {}
    _, whole = nnx.fit(spec, small, key=jax.random.PRNGKey(0), on_state=lambda e, p, s: saved.setdefault(e, jax.tree.map(jnp.copy, (p, s))))
    params, opt_state = saved[2]
    _, rest = nnx.fit(spec, small, key=jax.random.PRNGKey(0), start=(3, params, opt_state), earlier=whole["val_accuracy"][:3])
    assert whole["eta"].tolist() == [10, 10, 5, 5, 5, 2.5]  # halved before and after the checkpoint
    # The same compiled epoch from the same params and state: exact (rtol 1e-6 is far under one image).
    np.testing.assert_allclose(rest["eta"], whole["eta"][3:])
    np.testing.assert_allclose(rest["val_accuracy"], whole["val_accuracy"][3:], rtol=1e-6)


def test_stored_runs_keep_their_config_hash():
    """The new keys at their defaults leave the hash of a run stored before them unchanged."""
    before = tiny_cfg()
    before.pop("schedule")
    after = tiny_cfg(train=train(2, early_stopping_n=None), data={"name": "mnist", "path": None, "train_size": 100, "validation_size": None})
    assert config_hash(after) == config_hash(before)
    assert config_hash(tiny_cfg(train=train(2, early_stopping_n=10))) != config_hash(before)


@pytest.mark.parametrize("changes,named", [
    ({"train": train(2, early_stopping_n=0)}, "train.early_stopping_n=0 is invalid"),
    ({"train": train(2, early_stopping_n=5, eval_splits=["test"])}, "train.early_stopping_n reads the validation accuracy"),
    ({"schedule": {"name": "halving", "n": 10, "floor": 2.0}}, "schedule.floor=2.0 is invalid"),
    ({"schedule": {"name": "halving", "n": 0, "floor": 0.5}}, "schedule.n=0 is invalid"),
    ({"schedule": {"name": "step"}}, "valid schedules: constant, cosine, exponential, halving"),
    ({"schedule": {"name": "halving", "n": 10, "floor": 0.5}, "train": train(2, early_stopping_n=10)}, "it would stop the run at the first halving"),
    ({"schedule": {"name": "exponential", "decay_rate": 1.5}}, "schedule.decay_rate=1.5 is invalid"),
    ({"data": {"name": "mnist", "path": None, "train_size": 100, "validation_size": 0}}, "data.validation_size=0 is invalid"),
])
def test_impossible_settings_are_named(changes, named):
    with pytest.raises(nnx.ConfigError, match=named.replace("[", r"\[").replace(".", r"\.")):
        nnx.build(tiny_cfg(**changes))


def test_an_early_stopped_run_ends_finished_and_says_why(nnx_train, store):
    """nnx-train end to end: FINISHED, tagged, metrics up to the stop, the summary at the step after it."""
    _, client = store
    nnx_train("model.width=8", "data.train_size=100", "data.validation_size=100", "probes.size=50", "train.epochs=10",
              "optimizer.eta=1e-30", "train.early_stopping_n=3", "tracking.experiment=stop")
    (run,) = client.search_runs([client.get_experiment_by_name("stop").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["nnx.stopped"] == "no improvement in 3 epochs" and run.data.tags["nnx.stopped_epoch"] == "3"
    steps = lambda key: [m.step for m in client.get_metric_history(run.info.run_id, key)]
    assert steps("val_accuracy") == [0, 1, 2, 3] and steps("eta") == [0, 1, 2, 3] and steps("grad_norm/hidden_1") == [0, 1, 2, 3, 4]
    assert steps("best_val_accuracy") == [4] and run.data.metrics["best_epoch"] == 0
    assert run.data.params["data.validation_size"] == "100" and run.data.params["early_stopping_n"] == "3"
