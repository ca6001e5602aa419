"""Mean-field maps against closed forms and against wide random networks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nnx import meanfield as mf


def test_relu_and_linear_closed_forms():
    relu, linear = jax.nn.relu, (lambda z: z)
    # Gauss-Hermite quadrature in float32 (nnx.theory.gaussian_mean): exact for these integrands (polynomials;
    # relu's halves by the nodes' symmetry), so only float32's few roundings per term remain, ~3e-7; rel 1e-6
    # holds that. chi_1(relu) is exact the same way: 1e-3 is far looser. The fixed point converges as 0.5^500.
    assert mf.variance_map(relu, 2.0, 2.0, 0.1) == pytest.approx(2.0 * 2.0 / 2 + 0.1, rel=1e-6)
    assert mf.chi_1(relu, 2.0, 0.0, q_star=1.0) == pytest.approx(1.0, rel=1e-3)  # He init: sigma_w^2 / 2 = 1
    assert mf.chi_1(linear, 0.7, 0.0, q_star=1.0) == pytest.approx(0.7, rel=1e-6)
    assert mf.fixed_point_q(linear, 0.5, 1.0) == pytest.approx(2.0, rel=1e-6)  # q = 0.5 q + 1
    assert mf.correlation_map(linear, 0.3, 0.5, 1.0, q_star=2.0) == pytest.approx((0.5 * 2.0 * 0.3 + 1.0) / 2.0, rel=1e-6)


def test_tanh_edge_of_chaos():
    """sigma_b^2 = 0.05: chi_1 crosses 1 near sigma_w^2 ~ 1.76 (Schoenholz et al.), where xi_c diverges."""
    below, above = mf.chi_1(jnp.tanh, 1.5, 0.05), mf.chi_1(jnp.tanh, 2.2, 0.05)
    assert below < 1 < above
    assert mf.xi_c(jnp.tanh, 1.76, 0.05) > 5 * mf.xi_c(jnp.tanh, 1.2, 0.05)


def test_maps_match_a_wide_random_tanh_net():
    """Two inputs at q* with correlation 0.6, pushed through 6 random tanh layers of width 2000."""
    sigma_w2, sigma_b2, width, depth, c0 = 1.8, 0.1, 2000, 6, 0.6
    q_star = mf.fixed_point_q(jnp.tanh, sigma_w2, sigma_b2)
    k1, k2, key = jax.random.split(jax.random.PRNGKey(0), 3)
    a, b = jax.random.normal(k1, (width,)), jax.random.normal(k2, (width,))
    z = jnp.sqrt(q_star) * jnp.stack([a, c0 * a + np.sqrt(1 - c0**2) * b])
    for _ in range(depth):
        kw, kb, key = jax.random.split(key, 3)
        w = jax.random.normal(kw, (width, width)) * jnp.sqrt(sigma_w2 / width)
        z = jnp.tanh(z) @ w.T + (jax.random.normal(kb, (width,)) * jnp.sqrt(sigma_b2))[None, :]
    q_measured = float(jnp.mean(z**2))
    c_measured = float(jnp.mean(z[0] * z[1])) / q_measured
    c = c0
    for _ in range(depth):
        c = mf.correlation_map(jnp.tanh, c, sigma_w2, sigma_b2, q_star)
    # Sampling tolerances (finite width 2000, one draw), not round-off (~1e-6); the key is fixed and its draws
    # are the same bits on every CPU.
    assert q_measured == pytest.approx(q_star, rel=0.1)
    assert c_measured == pytest.approx(c, abs=0.05)
