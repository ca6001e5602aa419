"""One optimizer step against the update rules written out by hand (float64)."""

import jax
import numpy as np
import optax

import nnx
import roundoff
from conftest import tiny_cfg

rng = np.random.default_rng(1)


def random_tree():
    return [{"w": rng.normal(size=(4, 3)), "b": rng.normal(size=4)}, {"w": rng.normal(size=(2, 4)), "b": rng.normal(size=2)}]


def step(optimizer, params, grads, state=None):
    state = optimizer.init(params) if state is None else state
    updates, state = optimizer.update(grads, state, params)
    # numpy out: jax float64 arrays used after the enable_x64 block would be cut to float32.
    return jax.tree.map(np.asarray, optax.apply_updates(params, updates)), state


def test_sgd_is_the_books_rule():
    """Chapter 3, eq. 93: w <- (1 - eta lmbda / n) w - eta grad_w; biases are not decayed."""
    eta, lmbda, n = 0.5, 5.0, 1000
    with jax.enable_x64(True):
        params, grads = random_tree(), random_tree()
        new, _ = step(nnx.OPTIMIZERS["sgd"](eta=eta, lmbda=lmbda, n=n), params, grads)
    # float64, the same rule in another arrangement (optax: p - eta (g + lmbda/n p)): each entry errs by a few
    # u64 of |p| + eta |g|, ~1e-15 relative here unless it cancels; rtol 1e-13 leaves 100x for that (measured 3e-15).
    for p, g, q in zip(params, grads, new):
        np.testing.assert_allclose(q["w"], (1 - eta * lmbda / n) * p["w"] - eta * g["w"], rtol=1e-13)
        np.testing.assert_allclose(q["b"], p["b"] - eta * g["b"], rtol=1e-13)


def test_momentum_two_steps():
    """v <- mu v - eta (g + lmbda/n w); w <- w + v (chapter 3's momentum, with the book's L2)."""
    eta, lmbda, n, mu = 0.1, 2.0, 100, 0.9
    with jax.enable_x64(True):
        params, g1, g2 = random_tree(), random_tree(), random_tree()
        opt = nnx.OPTIMIZERS["momentum"](eta=eta, lmbda=lmbda, n=n, mu=mu)
        p1, state = step(opt, params, g1)
        p2, _ = step(opt, p1, g2, state)
    for p, a, b, q in zip(params, g1, g2, p2):
        for k in ("w", "b"):
            decay = lmbda / n if k == "w" else 0.0
            v1 = -eta * (a[k] + decay * p[k])
            w1 = p[k] + v1
            v2 = mu * v1 - eta * (b[k] + decay * w1)
            # float64, ~10 operations in another order: ~10 u64 (1e-15) of the terms, whose size |q| has here
            # (measured 1.5e-16 relative); rtol 1e-12 leaves 1000x for an entry that cancels.
            np.testing.assert_allclose(q[k], w1 + v2, rtol=1e-12)


def test_adam_first_step_moves_each_weight_by_eta():
    """Adam's bias-corrected first step is eta * g / (|g| + eps): a step of size ~eta per coordinate."""
    with jax.enable_x64(True):
        params, grads = random_tree(), random_tree()
        new, _ = step(nnx.OPTIMIZERS["adam"](eta=0.01, lmbda=0.0, n=10), params, grads)
    # float64: Adam's moments and bias corrections give g / (|g| + eps) within ~10 u64, but q - p cancels
    # |p| ~ 1 down to 0.01: q's rounding (u64 |p|) is ~1e-14 of it; rtol 1e-9 is loose (measured 1e-14).
    for p, g, q in zip(params, grads, new):
        np.testing.assert_allclose(q["w"] - p["w"], -0.01 * g["w"] / (np.abs(g["w"]) + 1e-8), rtol=1e-9)


def test_one_training_step_follows_the_book(tmp_path):
    """A whole-set mini-batch: one scan step equals the book's update with the mean backprop gradient."""
    cfg = tiny_cfg(data={"name": "mnist", "path": None, "train_size": 20}, train={"epochs": 1, "mini_batch_size": 20},
                   optimizer={"name": "sgd", "eta": 0.3, "lmbda": 4.0})
    with jax.enable_x64(True):
        spec = nnx.build(cfg)
        x = rng.uniform(size=(20, 784))
        y = rng.integers(0, 10, size=20)
        params = nnx.init(jax.random.PRNGKey(0), spec.net, np.float64)
        # One program, not an eager one per operation and shape (~50 compilations); the rule in numpy.
        grads = jax.tree.map(np.asarray, jax.jit(jax.grad(nnx.make_loss(spec)))(params, x, y))
        expected = [{"w": (1 - 0.3 * 4.0 / 20) * np.asarray(p["w"]) - 0.3 * g["w"], "b": np.asarray(p["b"]) - 0.3 * g["b"]}
                    for p, g in zip(params, grads)]
        first = np.asarray(params[0]["w"]), np.asarray(params[0]["b"])  # the epoch donates params
        new, _ = nnx.make_epoch(spec)(params, spec.optimizer.init(params), jax.random.PRNGKey(1), x, y)
        new = jax.tree.map(np.asarray, new)
    # float64, the epoch's own gradient (choices.training_product, jitted) against jax.grad's: another XLA may
    # fuse z^1 = x w^T + b otherwise, moving it by up to gamma_785 (|x||w|^T + |b|) (u64, Higham's worst case)
    # and the gradients by about as much (O(1)-Lipschitz in z); times eta = 0.3 for the params (measured: 6e-14
    # relative). rtol 1e-10 for the rest; that atol keeps weights near 0 (w ~ N(0, 1/784)) from failing on it.
    moved = 0.3 * roundoff.gamma(785, roundoff.U64) * np.max(np.abs(x) @ np.abs(first[0]).T + np.abs(first[1]))
    for e, q in zip(expected, new):
        np.testing.assert_allclose(q["w"], e["w"], rtol=1e-10, atol=moved)
        np.testing.assert_allclose(q["b"], e["b"], rtol=1e-10, atol=moved)
