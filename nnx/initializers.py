"""Weight and bias initializers, by name.

Each entry is a factory taking the initializer's hyperparameters and returning
`init(key, n_in, n_out, dtype, shape=None) -> (w, b)` with `w` of shape [n_out, n_in] (the book's
w^l_{jk}: row j is neuron j of layer l, column k is neuron k of layer l-1) and `b` of shape [n_out].
A conv layer passes its kernel's shape [maps, channels, k, k] as `shape`, its fan-in and fan-out
as n_in and n_out (network3 counts a pooled fan-out); b then has one entry per map.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np


def _drawn(sample, key, shape, dtype, scale=None):
    """sample(key, shape, dtype) (times scale), the same bits, from a program per power of two of the
    size instead of one per shape: with threefry's partitionable bits (JAX's default) entry i of a draw
    depends on the key and i alone, so the first n entries of a longer draw are the draw of n
    (tests/test_initializers.py). Each shape compiled its own sampler (~0.27 s; ~200 in the test suite)."""
    if not jax.config.jax_threefry_partitionable:
        out = sample(key, shape, dtype)
        return out if scale is None else out * scale
    n = math.prod(shape)
    drawn = sample(key, (1 << max(n - 1, 0).bit_length(),), dtype)
    drawn = drawn if scale is None else drawn * scale  # elementwise: each entry rounds as in a draw of n
    try:
        return jax.device_put(np.asarray(drawn)[:n].reshape(shape))  # cut on the host: no program per shape
    except jax.errors.TracerArrayConversionError:  # traced (seeds vmapped, eval_shape): cut in the trace
        return drawn[:n].reshape(shape)


def normal(key, shape, dtype=jnp.float32, scale=None):
    """jax.random.normal(key, shape, dtype) * scale, bit for bit (_drawn)."""
    return _drawn(jax.random.normal, key, tuple(shape), dtype, scale)


def uniform(key, shape, dtype, low, high):
    """jax.random.uniform(key, shape, dtype, low, high), bit for bit (_drawn)."""
    return _drawn(lambda k, s, d: jax.random.uniform(k, s, d, low, high), key, tuple(shape), dtype)


def large():
    """network.py (chapter 1): w ~ N(0, 1), b ~ N(0, 1)."""

    def init(key, n_in, n_out, dtype=jnp.float32, shape=None):
        shape = shape or (n_out, n_in)
        kw, kb = jax.random.split(key)
        return normal(kw, shape, dtype), normal(kb, shape[:1], dtype)

    return init


def default():
    """network2.py (chapter 3): w ~ N(0, 1/n_in), b ~ N(0, 1)."""

    def init(key, n_in, n_out, dtype=jnp.float32, shape=None):
        shape = shape or (n_out, n_in)
        kw, kb = jax.random.split(key)
        w = _drawn(lambda k, s, d: jax.random.normal(k, s, d) / jnp.sqrt(jnp.asarray(n_in, dtype)), kw, shape, dtype)
        return w, normal(kb, shape[:1], dtype)

    return init


def _zero_bias(weight_init):
    """Wraps a weight-only initializer: the modern schemes below start biases at 0."""

    def init(key, n_in, n_out, dtype=jnp.float32, shape=None):
        shape = shape or (n_out, n_in)
        return weight_init(key, n_in, n_out, dtype, shape), jnp.zeros(shape[:1], dtype)

    return init


def glorot_normal():
    """Glorot & Bengio (2010): w ~ N(0, 2/(n_in + n_out)), b = 0."""

    def weights(key, n_in, n_out, dtype, shape):
        return normal(key, shape, dtype, jnp.sqrt(2.0 / (n_in + n_out)).astype(dtype))

    return _zero_bias(weights)


def glorot_uniform():
    """Glorot & Bengio's "normalized" init (their eq. 16): w ~ U[-r, r], r = sqrt(6/(n_in + n_out)), b = 0."""

    def weights(key, n_in, n_out, dtype, shape):
        r = (6.0 / (n_in + n_out)) ** 0.5
        return uniform(key, shape, dtype, -r, r)

    return _zero_bias(weights)


def standard_uniform():
    """Glorot & Bengio's "standard" (LeCun's) init (their eq. 1): w ~ U[-1/sqrt(n_in), 1/sqrt(n_in)], b = 0."""

    def weights(key, n_in, n_out, dtype, shape):
        r = n_in**-0.5
        return uniform(key, shape, dtype, -r, r)

    return _zero_bias(weights)


def he_normal():
    """He et al. (2015): w ~ N(0, 2/n_in), b = 0, which keeps ReLU activations' variance fixed."""

    def weights(key, n_in, n_out, dtype, shape):
        return normal(key, shape, dtype, jnp.sqrt(2.0 / n_in).astype(dtype))

    return _zero_bias(weights)


def orthogonal(gain: float = 1.0, sigma_b2: float = 0.0):
    """Saxe et al. (2014): w = gain * Q with Q having orthonormal rows or columns, b ~ N(0, sigma_b2)."""

    def init(key, n_in, n_out, dtype=jnp.float32, shape=None):
        shape = shape or (n_out, n_in)
        kw, kb = jax.random.split(key)
        # A kernel [maps, c, k, k] is a [maps, c k^2] matrix: its maps' flattened kernels are the rows.
        w = jax.nn.initializers.orthogonal(scale=gain, column_axis=0 if len(shape) > 2 else -1)(kw, shape, dtype)
        return w, normal(kb, shape[:1], dtype, jnp.sqrt(jnp.asarray(sigma_b2, dtype)))

    return init


def gaussian(sigma_w2: float = 1.0, sigma_b2: float = 0.0):
    """The mean-field papers' parametrisation (Poole 2016, Schoenholz 2017): w ~ N(0, sigma_w2 / n_in),
    b ~ N(0, sigma_b2). sigma_w2 = 1, sigma_b2 = 1 is the book's default init."""

    def init(key, n_in, n_out, dtype=jnp.float32, shape=None):
        shape = shape or (n_out, n_in)
        kw, kb = jax.random.split(key)
        w = normal(kw, shape, dtype, jnp.sqrt(jnp.asarray(sigma_w2 / n_in, dtype)))
        return w, normal(kb, shape[:1], dtype, jnp.sqrt(jnp.asarray(sigma_b2, dtype)))

    return init


def network3():
    """network3.py (chapter 6): w ~ N(0, 1/n_out), b ~ N(0, 1), where a conv layer's n_out is its
    pooled fan-out, maps x k^2 / pool^2 (the code's later comment calls n_out a mistake for n_in; the
    book's numbers were made with n_out). Its softmax layer starts at zero: model.zero_output."""

    def init(key, n_in, n_out, dtype=jnp.float32, shape=None):
        shape = shape or (n_out, n_in)
        kw, kb = jax.random.split(key)
        w = normal(kw, shape, dtype, jnp.sqrt(jnp.asarray(1.0 / n_out, dtype)))
        return w, normal(kb, shape[:1], dtype)

    return init


INITIALIZERS = {
    "large": large,
    "default": default,
    "glorot_normal": glorot_normal,
    "glorot_uniform": glorot_uniform,
    "standard_uniform": standard_uniform,
    "he_normal": he_normal,
    "orthogonal": orthogonal,
    "gaussian": gaussian,
    "network3": network3,
}
