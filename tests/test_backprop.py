"""jax.grad against the book's four backpropagation equations (chapter 2), written in numpy, float64."""

import itertools

import jax
import numpy as np
import pytest

import nnx
import roundoff
from conftest import tiny_cfg
from experiments.backprop_numpy import ACTIVATIONS, LEAKY_SLOPE, OUTPUTS, mean_gradient, sigmoid

rng = np.random.default_rng(0)


@pytest.mark.parametrize("cost,output", list(OUTPUTS))
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_jax_grad_equals_bp1_to_bp4(cost, output, activation):
    sizes = (784, 7, 5, 10)
    cfg = tiny_cfg(
        model={"depth": 2, "width": 7, "output_activation": output},
        activation={"name": activation, **({"negative_slope": LEAKY_SLOPE} if activation == "leaky_relu" else {})},
        cost={"name": cost},
    )
    with jax.enable_x64(True):
        spec = nnx.build(cfg)
        # Layers of unequal width ([784, 7, 5, 10]) catch a transposed weight; the loss takes any sizes.
        params = [
            {"w": rng.normal(size=(n_out, n_in)) / np.sqrt(n_in), "b": rng.normal(size=n_out)}
            for n_in, n_out in itertools.pairwise(sizes)
        ]
        x = rng.uniform(size=(6, 784))
        labels = rng.integers(0, 10, size=6)
        grads = jax.grad(nnx.make_loss(spec))(params, x, labels)

    expected = mean_gradient([(p["w"], p["b"]) for p in params], x, labels, activation, cost, output)
    # Both float64 (u = 1.1e-16), summed in other orders: the 784-term z^1 errs by ~sqrt(784) u |w||x| ~ 3e-14
    # typically (gamma_784 |w||x| ~ 1e-12 at worst) and the gradients by that order; rtol 1e-9 leaves 10^4 for
    # cancellation, atol 1e-12 holds entries that cancel towards 0 (measured: 1.3e-15 at most).
    for l, (expected_b, expected_w) in enumerate(expected):
        np.testing.assert_allclose(grads[l]["b"], expected_b, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(grads[l]["w"], expected_w, rtol=1e-9, atol=1e-12)


def test_training_product_has_jax_grads_own_gradient():
    """epoch_fn differentiates through choices.training_product (a custom VJP for small weights): the
    same numbers as jax's own rule."""
    from nnx import choices

    cfg = tiny_cfg(model={"depth": 2, "width": 7, "output_activation": "sigmoid"}, cost={"name": "cross_entropy"})
    with jax.enable_x64(True):
        spec = nnx.build(cfg)
        sizes = (784, 7, 7, 10)
        params = [{"w": rng.normal(size=(n_out, n_in)) / np.sqrt(n_in), "b": rng.normal(size=n_out)}
                  for n_in, n_out in itertools.pairwise(sizes)]
        x, labels = rng.uniform(size=(6, 784)), rng.integers(0, 10, size=6)
        expected = jax.grad(nnx.make_loss(spec))(params, x, labels)
        got = jax.jit(jax.grad(nnx.make_loss(spec, choices.training_product)))(params, x, labels)
        # The same a @ w.T forward on both sides, run here: equal (1e-15 allows ~9 ulps and is never used).
        np.testing.assert_allclose(nnx.make_loss(spec, choices.times_transpose_grad)(params, x, labels),
                                   nnx.make_loss(spec)(params, x, labels), rtol=1e-15)
    # Two float64 programs (jitted, delta.T laid out first): here their forward passes round alike (entries
    # differ by 6e-17), but another XLA may fuse z^1 = x w^T + b otherwise, moving it by up to
    # gamma_785 (|x||w|^T + |b|) ~ 1e-12 (u64; Higham's worst case, ~28x the typical). The gradients are
    # O(1)-Lipschitz in z here (sigma' <= 1/4, |w| ~ 0.4): entries may differ by about that much.
    moved = roundoff.gamma(785, roundoff.U64) * np.max(np.abs(x) @ np.abs(params[0]["w"]).T + np.abs(params[0]["b"]))
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g["w"], e["w"], rtol=1e-12, atol=moved)
        np.testing.assert_allclose(g["b"], e["b"], rtol=1e-12, atol=moved)


def test_cross_entropy_output_delta_is_a_minus_y_even_when_saturated():
    """Chapter 3: dC/dz^L = a - y, also where float32 rounds sigma(z) to exactly 1."""
    fn = nnx.COSTS["cross_entropy"]("sigmoid")
    z = np.array([-30.0, -2.0, 0.0, 3.0, 40.0], np.float32)
    y = np.array([1.0, 0.0, 1.0, 0.0, 0.0], np.float32)
    delta = jax.grad(lambda z: fn(z, jax.nn.sigmoid(z), y))(z)
    # float32 against float64: a handful of float32 operations on numbers <= 1, each within u = 6e-8, and
    # XLA's logistic within a few ulps (roundoff.ULPS_PHI = 8); 1e-6 is ~17 u (measured: 1e-8).
    np.testing.assert_allclose(delta, sigmoid(z.astype(float)) - y, atol=1e-6)
    assert np.isfinite(fn(z, jax.nn.sigmoid(z), y))


def test_cross_entropy_value_matches_the_book_formula():
    fn = nnx.COSTS["cross_entropy"]("sigmoid")
    with jax.enable_x64(True):
        z = rng.normal(size=(4, 10)) * 3
        y = np.eye(10)[[1, 2, 3, 4]]
        a = sigmoid(z)
        book = -np.sum(y * np.log(a) + (1 - y) * np.log(1 - a), axis=-1)
        # float64 both, another formula (nnx's from z, the book's from a = sigma(z)): log(1 - a) for a near 1
        # errs by ~u64 / (1 - a), 1e-12 at z = 9, against costs of O(10); rtol 1e-12 holds that (measured 1e-14).
        np.testing.assert_allclose(fn(z, jax.nn.sigmoid(z), y), book, rtol=1e-12)
