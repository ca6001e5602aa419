"""Training loop: compiled once, deterministic, learns; the probe is the book's norm of the mean."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx
import roundoff
from conftest import tiny_cfg
from nnx import records


@pytest.fixture(scope="module")
def small():
    return nnx.load(train_size=200)


def test_epoch_compiles_once(small):
    spec = nnx.build(tiny_cfg(data={"name": "mnist", "path": None, "train_size": 200}))
    epoch = nnx.make_epoch(spec)
    params = nnx.init(jax.random.PRNGKey(0), spec.net)
    state = spec.optimizer.init(params)
    x, y = jnp.asarray(small.train.x), jnp.asarray(small.train.y)
    for e in range(4):
        params, state = epoch(params, state, jax.random.fold_in(jax.random.PRNGKey(1), e), x, y)
    assert epoch.jitted._cache_size() == 1


@pytest.mark.cpu_only  # two programs (constants, arguments) whose operations XLA's CPU backend emits alike
def test_one_compiled_epoch_serves_every_eta_and_lmbda_with_the_numbers_of_constants(small):
    """The book's fixed eta and the L2 coefficient lmbda / n are the epoch's arguments: specs that differ
    only in them lower to one program, and each trains to the bits its constants gave."""
    x, y = jnp.asarray(small.train.x[:100]), jnp.asarray(small.train.y[:100])
    texts = set()
    for eta, lmbda in ((0.1, 0.0), (3.0, 5.0)):
        spec = nnx.build(tiny_cfg(optimizer={"name": "momentum", "eta": eta, "lmbda": lmbda, "mu": 0.9}))
        hyper = nnx.programs.runtime_hyper(spec, jnp.float32)
        assert hyper == (np.float32(eta), np.float32(lmbda / 100))
        start = nnx.programs.init_state(spec, jax.random.PRNGKey(0))
        plan = nnx.train.epoch_plans(spec, np.asarray(jax.random.PRNGKey(1)), 0, len(y))
        texts.add(jax.jit(nnx.programs.epoch_fn(spec)).lower(*start, *plan, x, y, hyper).as_text())
        trained = [jax.jit(nnx.programs.epoch_fn(spec))(*start, *plan, x, y, h) for h in (hyper, ())]
        for a, b in zip(*(jax.tree.leaves(t) for t in trained)):
            np.testing.assert_array_equal(a, b)
    assert len(texts) == 1


def test_networks_of_one_structure_share_programs_and_train_to_the_numbers_of_their_own(small):
    """nnx.train keeps each structure's programs: a network that differs only in what no program reads
    (seed, init, eta and lmbda as arguments, epochs, the data's size) reuses them and trains to the bits
    fresh programs give it; a setting a program reads makes another structure."""
    from nnx import train

    def cfg(**groups):
        return tiny_cfg(**{"data": {"name": "mnist", "path": None, "train_size": 200}, **groups})

    first = nnx.build(cfg())
    second = nnx.build(cfg(seed=3, init={"name": "large"}, optimizer={"name": "sgd", "eta": 0.5, "lmbda": 2.0},
                           train={"epochs": 3, "mini_batch_size": 10, "stop_on_divergence": True, "checkpoint_every": 0},
                           data={"name": "mnist", "path": None, "train_size": 100}))
    assert first.structure == second.structure
    train.programs_kept.clear()
    nnx.fit(first, small, key=jax.random.PRNGKey(0))
    built = list(train.programs_kept.values())
    shared = nnx.fit(second, small, key=jax.random.PRNGKey(3))
    assert list(train.programs_kept.values()) == built  # nothing new was built
    train.programs_kept.clear()
    own = nnx.fit(second, small, key=jax.random.PRNGKey(3))
    for a, b in zip(jax.tree.leaves(shared), jax.tree.leaves(own)):
        np.testing.assert_array_equal(a, b)
    read = [cfg(activation={"name": "tanh"}), cfg(cost={"name": "quadratic"}), cfg(model={"depth": 2, "width": 8, "output_activation": "sigmoid"}),
            cfg(train={"epochs": 2, "mini_batch_size": 20, "stop_on_divergence": True, "checkpoint_every": 1}),
            cfg(probes={"size": 50, "kinds": ["activations"]}), cfg(optimizer={"name": "momentum", "eta": 0.1, "lmbda": 0.0, "mu": 0.9})]
    assert len({first.structure} | {nnx.build(c).structure for c in read}) == 1 + len(read)
    # with a schedule eta lives in the optimizer's state and lmbda / n is a constant: both count
    halving = [nnx.build(cfg(schedule={"name": "halving"}, optimizer={"name": "sgd", "eta": eta, "lmbda": 1.0})) for eta in (0.1, 0.2)]
    assert halving[0].structure != halving[1].structure


@pytest.mark.cpu_only  # two programs (uint8 gathered, floats gathered) compared bit for bit
def test_an_epoch_on_stored_uint8_pixels_is_the_epoch_on_their_floats(small):
    """fit trains from the pixels as stored (uint8 k, decoded to k/256 after the gather): the same bits."""
    spec = nnx.build(tiny_cfg(data={"name": "mnist", "path": None, "train_size": 200}))
    epoch = jax.jit(nnx.programs.epoch_fn(spec))
    stored = nnx.load(train_size=200, encoded=True).train
    assert stored.x.dtype == np.uint8
    np.testing.assert_array_equal(nnx.programs.images(jnp.asarray(stored.x), jnp.float32), small.train.x)
    params = nnx.init(jax.random.PRNGKey(0), spec.net)
    state = spec.optimizer.init(params)
    plan, y = nnx.train.epoch_plans(spec, np.asarray(jax.random.PRNGKey(1)), 0, 200), jnp.asarray(small.train.y)
    from_floats = epoch(params, state, *plan, jnp.asarray(small.train.x), y)
    from_pixels = epoch(params, state, *plan, jnp.asarray(stored.x), y)
    for a, b in zip(jax.tree.leaves(from_floats), jax.tree.leaves(from_pixels)):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(from_floats[0][0]["w"], params[0]["w"])  # it trained


def test_fit_history_and_step_numbering(small):
    spec = nnx.build(tiny_cfg(model={"depth": 2, "width": 8, "output_activation": "sigmoid"},
                              data={"name": "mnist", "path": None, "train_size": 200}, train={"epochs": 3, "mini_batch_size": 10}))
    steps = []
    _, history = nnx.fit(spec, small, key=jax.random.PRNGKey(0), on_epoch=lambda step, values: steps.append((step, sorted(values))))
    # Gradients at steps 0..3 (before each epoch, then after the last); costs after epochs 0..2.
    assert [s for s, _ in steps] == [0, 1, 2, 3]
    assert len(history["grad_norm/hidden_1"]) == 4 and len(history["grad_norm/hidden_2"]) == 4
    assert len(history["weight_grad_norm/layer_3"]) == 4
    for name in ("train_cost", "train_accuracy", "val_cost", "val_accuracy", "test_cost", "test_accuracy"):
        assert history[name].shape == (3,) and np.all(np.isfinite(history[name]))
    assert history["init_bias_grad/hidden_1"].shape == (8,)


def test_eval_every_measures_accuracies_every_kth_epoch_and_the_last_with_the_same_training(small):
    cfg = tiny_cfg(data={"name": "mnist", "path": None, "train_size": 200}, train={"epochs": 7, "mini_batch_size": 10})
    every = nnx.build(cfg)
    sparse = nnx.build({**cfg, "train": {**cfg["train"], "eval_every": 3}})
    _, full = nnx.fit(every, small, key=jax.random.PRNGKey(0))
    _, history = nnx.fit(sparse, small, key=jax.random.PRNGKey(0))
    assert list(history["eval_steps"]) == [2, 5, 6] and "eval_steps" not in full  # epochs 3, 6 and the last
    for name in ("train_accuracy", "val_cost", "test_accuracy"):
        np.testing.assert_array_equal(history[name], full[name][[2, 5, 6]])  # evaluating changes no step
    np.testing.assert_array_equal(history["grad_norm/hidden_1"], full["grad_norm/hidden_1"])  # probed every epoch
    summary = records.summary(history)
    assert summary["best_epoch"] == [2, 5, 6][int(np.argmax(full["val_accuracy"][[2, 5, 6]]))]
    with pytest.raises(nnx.ConfigError, match="train.eval_every=3.*Use train.eval_every=1"):
        nnx.build({**cfg, "train": {**cfg["train"], "eval_every": 3, "early_stopping_n": 2}})


@pytest.mark.cpu_only  # a block of epochs and the epoch loop: two programs compared bit for bit
def test_blocks_of_epochs_give_the_numbers_of_the_epoch_loop(small):
    """Between evaluations, epochs run as one program (programs.block_fn): the same numbers, bit for
    bit, as one call per epoch, for one seed and vmapped seeds; on_state only where the host acts."""
    cfg = tiny_cfg(data={"name": "mnist", "path": None, "train_size": 200},
                   train={"epochs": 9, "mini_batch_size": 200, "eval_every": 4, "checkpoint_every": 6, "stop_on_divergence": True})
    spec = nnx.build(cfg)
    runs = {}
    for blocks in (True, False):
        states = []
        _, one = nnx.fit(spec, small, key=jax.random.PRNGKey(1), on_state=lambda e, p, s, states=states: states.append(e), blocks=blocks)
        _, many = nnx.fit_many(spec, small, seeds=[1, 2], blocks=blocks)
        runs[blocks] = (one, *many, states)
    for blocked, looped in zip(runs[True][:3], runs[False][:3]):
        assert blocked.keys() == looped.keys()
        for name in blocked:
            np.testing.assert_array_equal(blocked[name], looped[name], err_msg=name)
    assert runs[True][0]["eval_steps"].tolist() == [3, 7, 8]
    assert runs[True][3] == [3, 5, 7, 8] and runs[False][3] == list(range(9))  # evaluations, checkpoint at 5, the end


@pytest.mark.cpu_only  # the second CPU device exists on the CPU only
def test_evaluation_beside_the_next_epoch_gives_the_numbers_in_line(small):
    """With two CPU devices, each epoch's accuracies are evaluated on the second while the next epoch
    trains (nnx.choices.evaluation_device): the same numbers, bit for bit, as evaluating in line, the
    same checkpoints, and a run that diverges ends with the params of the epoch it diverged at."""
    if nnx.choices.evaluation_device() is None:
        pytest.skip("this process has one CPU device (nnx.edges.devices gives two where two cores are free)")
    train = {"epochs": 4, "mini_batch_size": 10, "checkpoint_every": 1, "stop_on_divergence": True}
    spec = nnx.build(tiny_cfg(data={"name": "mnist", "path": None, "train_size": 200}, train=train))
    diverging = nnx.build(tiny_cfg(data={"name": "mnist", "path": None, "train_size": 200}, train={**train, "epochs": 30},
                                   activation={"name": "relu"}, model={"depth": 1, "width": 8, "output_activation": "identity"},
                                   cost={"name": "quadratic"}, optimizer={"name": "sgd", "eta": 10.0, "lmbda": 0.0}))
    runs = {}
    for beside in (True, False):
        states = []
        one = nnx.fit(spec, small, key=jax.random.PRNGKey(1), on_state=lambda e, p, s, states=states: states.append((e, jax.device_get(p))),
                      beside=beside)
        many = nnx.fit_many(spec, small, seeds=[1, 2], beside=beside)
        runs[beside] = (one, many, nnx.fit(diverging, small, key=jax.random.PRNGKey(1), beside=beside), states)
    beside, in_line = runs[True], runs[False]
    for (params_a, history_a), (params_b, history_b) in [(beside[0], in_line[0]), (beside[2], in_line[2]),
                                                         *zip(zip(*beside[1]), zip(*in_line[1]))]:
        assert history_a.keys() == history_b.keys()
        for name in history_a:
            np.testing.assert_array_equal(history_a[name], history_b[name], err_msg=name)
        for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b)):
            np.testing.assert_array_equal(a, b)
    assert records.DIVERGED_AT in beside[2][1] and beside[2][1][records.DIVERGED_AT] < 29  # it stopped early
    assert [e for e, _ in beside[3]] == [e for e, _ in in_line[3]] == [0, 1, 2, 3]
    for (_, a), (_, b) in zip(beside[3], in_line[3]):
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            np.testing.assert_array_equal(x, y)


def test_same_seed_same_numbers_other_seed_other_numbers(small):
    spec = nnx.build(tiny_cfg(data={"name": "mnist", "path": None, "train_size": 200}))
    run = lambda seed: nnx.fit(spec, small, key=jax.random.PRNGKey(seed))[1]
    a, b, c = run(0), run(0), run(1)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    assert not np.array_equal(a["val_cost"], c["val_cost"])


def test_learns_on_a_small_set(small):
    spec = nnx.build(tiny_cfg(model={"depth": 1, "width": 30, "output_activation": "sigmoid"},
                              optimizer={"name": "sgd", "eta": 0.5, "lmbda": 0.0},
                              data={"name": "mnist", "path": None, "train_size": 200}, train={"epochs": 20, "mini_batch_size": 10}))
    _, history = nnx.fit(spec, small, key=jax.random.PRNGKey(0))
    assert history["train_cost"][-1] < 0.5 * history["train_cost"][0]
    assert history["train_accuracy"][-1] > 0.9 and history["val_accuracy"][-1] > 0.6


def test_reported_cost_includes_the_l2_term(small):
    """Book: cost = mean C_x + (lmbda / 2 len(data)) sum ||w||^2 over the evaluated set."""
    spec = nnx.build(tiny_cfg(optimizer={"name": "sgd", "eta": 0.1, "lmbda": 3.0}))
    params = nnx.init(jax.random.PRNGKey(0), spec.net)
    x, y = small.validation.x[:500], small.validation.y[:500]
    cost, accuracy = nnx.make_evaluate(spec)(params, x, y)
    z, a = nnx.feedforward(spec.net, params, x)
    a, t = np.asarray(a, np.float64), np.eye(10)[y]
    terms = -(t * np.log(a) + (1 - t) * np.log(1 - a))  # [500, 10], all positive
    squares = np.concatenate([np.asarray(layer["w"], np.float64).ravel() ** 2 for layer in params])
    book = np.mean(np.sum(terms, axis=1)) + 0.5 * 3.0 / 500 * np.sum(squares)
    # The book's terms from feedforward's float32 a, evaluate's from its own z (a stable form): with a in
    # (0.18, 0.92) at this init each is within a few ulps (ULPS_PHI u); then two sums of positive terms, 5,000
    # costs and 6,352 squared weights, each in any order within Higham's gamma_n of itself (3e-4 and 4e-4
    # relative; measured: 7e-8 of the whole).
    allowed = ((roundoff.gamma(terms.size + 1) + roundoff.ULPS_PHI * roundoff.U32) * np.mean(np.sum(terms, axis=1))
               + roundoff.gamma(squares.size + 2) * 0.5 * 3.0 / 500 * np.sum(squares))
    np.testing.assert_allclose(cost, book, rtol=0, atol=allowed)
    # evaluate's argmax runs in another program: only an image whose top two outputs are within another
    # CPU's draw of float32's error (roundoff.ELSEWHERE times the error measured here) can count either way.
    _, (z64, _) = roundoff.dense_forward(params, x, "sigmoid")
    err_z = roundoff.ELSEWHERE * np.max(np.abs(np.asarray(z, np.float64) - z64))
    either_way = int(roundoff.ambiguous(z64, np.full_like(z64, err_z)).sum())
    assert abs(round(float(accuracy) * len(y)) - int(np.sum(np.argmax(a, axis=1) == y))) <= either_way


def test_probe_is_the_norm_of_the_mean_per_example_gradient(small):
    """Chapter 5: average dC_x/db^l over the images, then take the norm (not the mean of norms)."""
    spec = nnx.build(tiny_cfg(model={"depth": 3, "width": 8, "output_activation": "sigmoid"}))
    params = nnx.init(jax.random.PRNGKey(0), spec.net)
    x, y = jnp.asarray(small.train.x[:50]), jnp.asarray(small.train.y[:50])
    loss = nnx.make_loss(spec)
    per_example = jax.vmap(lambda xi, yi: jax.grad(loss)(params, xi[None], yi[None]))(x, y)
    probe = nnx.make_probe(spec)(params, x, y)
    for l in range(3):
        db = np.asarray(per_example[l]["b"], np.float64)
        mean_db = np.mean(db, axis=0)
        # Two float32 programs, the same backprop per example (within a few u: rtol 1e-5 = 170 u); the mean of 50
        # may be summed in another order by each: gamma_51 times the mean |db| apiece, where the mean cancels.
        allowed = 2 * roundoff.gamma(51) * np.mean(np.abs(db), axis=0) + 1e-5 * np.abs(mean_db)
        roundoff.assert_within(probe["bias_grad"][l], mean_db, allowed)
        # A norm is 1-Lipschitz: it moves by at most the norm of those, plus its own sum of squares and root.
        np.testing.assert_allclose(probe["grad_norm"][l], np.linalg.norm(mean_db), rtol=roundoff.gamma(db.shape[1] + 2),
                                   atol=np.linalg.norm(allowed))
    assert probe["grad_norm"].shape == (3,) and probe["weight_grad_norm"].shape == (4,)
