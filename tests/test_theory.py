"""nnx.theory against closed forms, the initializers it describes, and simulation."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx
from nnx import theory


def test_gaussian_mean_closed_forms():
    # 100-point Gauss-Hermite is exact for these polynomials; f runs in float32: a node rounded (u) and
    # raised to a power (2 to 4 more roundings) errs by ~5 u = 3e-7 per term, all positive; rel 1e-6 holds it.
    # relu^2: the symmetric nodes give exactly half of z^2's sum, so 1e-3 is far looser than its round-off.
    assert theory.gaussian_mean(lambda z: z**2, 2.5) == pytest.approx(2.5, rel=1e-6)
    assert theory.gaussian_mean(lambda z: jax.nn.relu(z) ** 2, 2.5) == pytest.approx(1.25, rel=1e-3)
    assert theory.gaussian_mean(lambda z: z**4, 2.0) == pytest.approx(3 * 4.0, rel=1e-6)


@pytest.mark.parametrize("name", sorted(nnx.INITIALIZERS))
def test_init_variances_describe_the_initializers(name):
    w, b = nnx.INITIALIZERS[name]()(jax.random.PRNGKey(3), 500, 200, np.float32)
    v_w, v_b = theory.init_variances(name, 500, 200)
    # Sampling tolerances (the variance of 100,000 draws has sd 0.45%, of 200 draws 10%), not round-off: the key
    # is fixed, threefry's bits are the same on every CPU and float32's transform to the draws moves a variance
    # by ~u. Only the key decides (measured: 38% and 34% of the tolerance).
    np.testing.assert_allclose(np.var(w), v_w, rtol=0.03)
    np.testing.assert_allclose(np.var(b), v_b, rtol=0.2, atol=1e-12)


def test_identity_net_factors_are_the_weight_scale():
    sizes = [784, 50, 50, 50, 10]
    variances = [(2.0 / n_in, 0.0) for n_in in sizes[:-1]]
    q, chi = theory.layer_factors(lambda z: z, sizes, variances, input_sq_norm=100.0)
    # n_l (2 / n_l) E[1] and E[z^2] by float32 quadrature: a few roundings per term, ~3e-7 (measured 2e-8)
    np.testing.assert_allclose(chi, np.sqrt(2.0), rtol=1e-6)
    np.testing.assert_allclose(q, [200 / 784, 200 / 784 * 2, 200 / 784 * 4], rtol=1e-6)


def test_factors_match_a_simulated_wide_tanh_net():
    """Per-example ||delta^l|| / ||delta^{l+1}|| in a wide random net against chi_l."""
    width, depth, n = 800, 3, 64
    sizes = [784] + [width] * depth + [10]
    key = jax.random.PRNGKey(0)
    net = nnx.model.mlp(sizes, nnx.INITIALIZERS["glorot_normal"](), jnp.tanh, lambda z: z)
    params = nnx.init(key, net)
    x = jax.random.uniform(jax.random.PRNGKey(1), (n, 784))
    variances = [theory.init_variances("glorot_normal", a, b) for a, b in itertools.pairwise(sizes)]
    _, chi = theory.layer_factors(jnp.tanh, sizes, variances, float(jnp.mean(jnp.sum(x**2, axis=1))))

    def loss(biases, xi):
        ps = [{"w": p["w"], "b": b} for p, b in zip(params, biases)]
        z, _ = nnx.feedforward(net, ps, xi[None])
        return jnp.sum(z * jnp.arange(10.0)[None, :])  # any fixed output direction

    grads = jax.jit(jax.vmap(lambda xi: jax.grad(loss)([p["b"] for p in params], xi)))(x)  # one program, not one per operation
    norms = np.array([np.sqrt(np.mean(np.sum(np.asarray(g) ** 2, axis=1))) for g in grads[:depth]])
    # Sampling (64 examples, width 800: finite-width deviations of a few %), not round-off (~1e-6 of a norm);
    # the key is fixed and its draws are the same bits on every CPU (measured: 34% of the tolerance).
    np.testing.assert_allclose(norms[:-1] / norms[1:], chi, rtol=0.1)


def test_exploding_chain_grows_25x_per_layer():
    grads = theory.exploding_chain(6)
    # float64, and exact here: every z is w a - w a = 0, sigma'(0) = 1/4, and products of 25s are exact in
    # float64; rtol 1e-9 only leaves room for a rounding
    np.testing.assert_allclose(grads[:-1] / grads[1:], 25.0, rtol=1e-9)


def test_allowed_width_peaks_near_the_books_numbers():
    w = np.round(np.arange(4.0, 20.01, 0.05), 2)
    width = theory.allowed_width(w)
    # A count of grid points times their spacing da = 4 / 400,000: an interval's measured width is within da of
    # its length, and round-off (numpy's exp differs by an ulp across CPUs) may flip a point at either end: 3 da.
    da = 4.0 / 400_000
    np.testing.assert_allclose(width, theory.allowed_width_book(w), rtol=0, atol=3 * da)
    # the book's 6.9 and 0.45, to the digits it prints
    assert w[np.argmax(width)] == pytest.approx(6.9, abs=0.1) and width.max() == pytest.approx(0.45, abs=0.01)
    assert theory.allowed_width(np.array([3.9]))[0] == 0.0  # |w| < 4: sigma' <= 1/4 never reaches 1/|w|


def test_float64_checks_run_on_the_cpu_in_float64_whatever_the_default_device():
    """chapter 2's backprop check and these curves compute in float64, which a TPU lacks: on the CPU."""
    import jax
    import jax.numpy as jnp

    from nnx import choices

    with choices.float64():
        x = jnp.ones(3, jnp.float64) / 3
    assert x.dtype == jnp.float64 and x.devices() == {jax.devices("cpu")[0]}
