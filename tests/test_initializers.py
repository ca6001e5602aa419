"""Initializer statistics against their definitions."""

import jax
import numpy as np
import pytest

import nnx

N_IN, N_OUT = 400, 300
# name -> (weight variance, bias variance); uniform U[-r, r] has variance r^2 / 3.
EXPECTED = {
    "large": (1.0, 1.0),
    "default": (1 / N_IN, 1.0),
    "glorot_normal": (2 / (N_IN + N_OUT), 0.0),
    "glorot_uniform": (6 / (N_IN + N_OUT) / 3, 0.0),
    "standard_uniform": (1 / N_IN / 3, 0.0),
    "he_normal": (2 / N_IN, 0.0),
    "orthogonal": (1 / N_IN, 0.0),  # rows orthonormal: each row has squared norm 1 over n_in entries
    "gaussian": (1 / N_IN, 0.0),
    "network3": (1 / N_OUT, 1.0),  # network3.py divides by the fan-out
}


# The variance checks below are sampling tolerances (a variance of 120,000 draws has sd 0.4%, of 300 draws
# 8%), not round-off: each key is fixed, threefry's bits are the same on every CPU, and float32's transform
# of them into the draws moves a variance by ~u. Only the key decides whether they pass (at most 15% of each).


def test_gaussian_scales_with_sigma_w2_and_sigma_b2():
    w, b = nnx.INITIALIZERS["gaussian"](sigma_w2=1.76, sigma_b2=0.05)(jax.random.PRNGKey(1), N_IN, N_OUT, np.float32)
    np.testing.assert_allclose(np.var(w), 1.76 / N_IN, rtol=0.03)
    np.testing.assert_allclose(np.var(b), 0.05, rtol=0.25)


@pytest.mark.parametrize("name", sorted(nnx.INITIALIZERS))
def test_moments(name):
    w, b = nnx.INITIALIZERS[name]()(jax.random.PRNGKey(0), N_IN, N_OUT, np.float32)
    assert w.shape == (N_OUT, N_IN) and b.shape == (N_OUT,)
    w_var, b_var = EXPECTED[name]
    assert abs(float(np.mean(w))) < 4 * np.sqrt(w_var / w.size)
    np.testing.assert_allclose(np.var(w), w_var, rtol=0.03)
    if b_var == 0:
        assert not np.any(b)
    else:
        np.testing.assert_allclose(np.var(b), b_var, rtol=0.25)  # only 300 biases


@pytest.mark.parametrize("name,bound", [("glorot_uniform", np.sqrt(6 / (N_IN + N_OUT))), ("standard_uniform", 1 / np.sqrt(N_IN))])
def test_uniform_bounds(name, bound):
    w, _ = nnx.INITIALIZERS[name]()(jax.random.PRNGKey(0), N_IN, N_OUT, np.float32)
    assert np.max(np.abs(w)) <= bound and np.max(np.abs(w)) > 0.99 * bound


def test_orthogonal_rows_scaled_by_gain():
    w, _ = nnx.INITIALIZERS["orthogonal"](gain=1.5)(jax.random.PRNGKey(0), N_IN, N_OUT, np.float32)
    # The float32 product's 400-term sums err by at most gamma_400 |w||w|^T <= gamma_400 1.5^2 = 5.4e-5 (Higham),
    # and float32's QR leaves the rows orthogonal to 8e-7 here (another LAPACK's draw: 8x that, 7e-6); 1e-4
    # holds both (measured 2e-6).
    np.testing.assert_allclose(w @ w.T, 1.5**2 * np.eye(N_OUT), atol=1e-4)


def test_parameter_count():
    sizes = (784, 30, 30, 10)
    net = nnx.model.mlp(sizes, nnx.INITIALIZERS["default"](), jax.nn.sigmoid, jax.nn.sigmoid)
    params = nnx.init(jax.random.PRNGKey(0), net)
    counted = sum(p.size for layer in params for p in layer.values())
    assert counted == nnx.num_params(net) == 785 * 30 + 31 * 30 + 31 * 10


@pytest.mark.parametrize("name", sorted(nnx.INITIALIZERS))
def test_a_conv_kernel_gets_its_shape_and_one_bias_per_map(name):
    """[maps, channels, k, k] kernels: fan-in c k^2, network3's pooled fan-out maps k^2 / 4."""
    w, b = nnx.INITIALIZERS[name]()(jax.random.PRNGKey(0), 25, 20 * 25 // 4, np.float32, shape=(20, 1, 5, 5))
    assert w.shape == (20, 1, 5, 5) and b.shape == (20,)
    if name == "network3":
        np.testing.assert_allclose(np.var(np.asarray(w)), 4 / (20 * 25), rtol=0.2)


@pytest.mark.parametrize("shape", [(20, 1, 5, 5), (7,)])  # a conv kernel, and a size just under a power of two
def test_draws_are_jax_randoms_bits_for_every_shape_eager_and_vmapped(shape):
    """nnx.initializers draws from one program per power of two of the size and cuts the draw to the
    shape: the bits of jax.random's own draw of that shape (scaled), eagerly and under vmap."""
    from nnx import initializers

    key = jax.random.PRNGKey(7)
    scale = np.float32(0.3)
    pairs = [(initializers.normal(key, shape, np.float32, scale), jax.random.normal(key, shape) * scale),
             (initializers.uniform(key, shape, np.float32, -0.2, 0.2), jax.random.uniform(key, shape, np.float32, -0.2, 0.2))]
    keys = jax.random.split(key, 3)
    pairs.append((jax.vmap(lambda k: initializers.normal(k, shape, np.float32, scale))(keys),
                  jax.vmap(lambda k: jax.random.normal(k, shape) * scale)(keys)))
    for ours, theirs in pairs:
        assert ours.shape == theirs.shape
        np.testing.assert_array_equal(ours, theirs)
