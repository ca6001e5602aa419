"""Layers as init/apply pairs of pure functions (JAX's stax), and a model as a sequence of them.

A layer's params are a plain dict ({} for a layer without parameters), so a model's params are a
list with one dict per layer. Layers that have a weighted input z (Dense, Conv) compute it and
apply their activation in two steps, so that the probes can read z, add a shift to it (the
per-example delta of chapter 2's BP2 is the gradient with respect to that shift) and take the
gradient of its bias. Images flow channels-last, [batch, height, width, channels], so that each
convolution is one matrix product on XLA's CPU backend (see convolve); kernels keep network3's,
Theano's and PyTorch's [maps, channels, k, k], and flatten reads maps in their (channels, height,
width) order, so params are laid out as theirs are. The first layer of a conv net reshapes the
[batch, 784] rows to [batch, 28, 28, 1].

    layer.init(key, in_shape, dtype) -> (out_shape, params)        shapes exclude the batch axis
    layer.weighted(params, x, product) -> z                        only layers with weights
    layer.apply(params, x, *, key, train) -> a                     the others (pool, flatten, dropout)
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nnx import choices


class Layer(NamedTuple):
    kind: str  # "dense", "conv", "max_pool", "flatten", "dropout"
    init: Callable
    weighted: Callable | None  # z = weighted(params, x, product); None for a layer without weights
    activation: Callable | None  # a = activation(z); None for a layer without weights
    apply: Callable | None  # a = apply(params, x, key=, train=) for a layer without weights
    needs_key: bool = False  # draws randomness in training (dropout)


def times_transpose(a, w):
    """a @ w.T: the weighted inputs' product, rows of a against rows of w."""
    return a @ w.T


BN_EPSILON = 1e-5  # Ioffe & Szegedy's epsilon: keeps a constant unit finite


def dense(n_out: int, initializer, activation, *, batch_norm=False, zero=False) -> Layer:
    """z = a w^T + b (the book's w^l_{jk}: w is [n_out, n_in]), then sigma(z); optionally batch-normalised.

    Args:
      initializer: init(key, n_in, n_out, dtype) -> (w, b) from nnx.initializers.
      batch_norm: standardise z over the batch, then gamma z + beta (Ioffe & Szegedy 2015; the
        statistics are always the batch's own).
      zero: w = 0 and b = 0 (network3's softmax layer), whatever the initializer.
    """

    def init(key, in_shape, dtype=jnp.float32):
        (n_in,) = in_shape
        w, b = initializer(key, n_in, n_out, dtype)
        params = {"w": w, "b": b}
        if zero:
            params = {"w": jnp.zeros_like(w), "b": jnp.zeros_like(b)}
        if batch_norm:
            params.update(gamma=jnp.ones((n_out,), dtype), beta=jnp.zeros((n_out,), dtype))
        return (n_out,), params

    def weighted(params, a, product=times_transpose):
        z = product(a, params["w"]) + params["b"][None, :]
        if "gamma" not in params:
            return z
        mean, var = jnp.mean(z, axis=0, keepdims=True), jnp.var(z, axis=0, keepdims=True)
        return params["gamma"][None, :] * (z - mean) * jax.lax.rsqrt(var + BN_EPSILON) + params["beta"][None, :]

    return Layer("dense", init, weighted, activation, None)


def conv_output(in_shape, maps: int, kernel: int, pool: int):
    """(h, w, maps) after a valid kernel x kernel convolution (stride 1) and a pool x pool max-pool."""
    height, width, _ = in_shape
    return (height - kernel + 1) // pool, (width - kernel + 1) // pool, maps


def max_pool2d(x, pool: int):
    """Non-overlapping pool x pool maxima of [batch, h, w, maps] (h and w divisible by pool)."""
    if pool == 1:
        return x
    b, h, w, c = x.shape
    return x.reshape(b, h // pool, pool, w // pool, pool, c).max(axis=(2, 4))


def convolve(x, w):
    """Valid, stride-1 cross-correlation of [batch, h, w, c_in] images with [maps, c_in, k, k]
    kernels: [batch, h - k + 1, w - k + 1, maps] (Theano's conv2d flips its kernels; that only
    mirrors the learned filters).

    Written as im2col: the k*k shifted views side by side along the channel axis, then one matrix
    product with the kernels as a [k*k*c_in, maps] matrix. XLA's CPU backend gives its own
    convolutions a slow generic form at these small sizes, inside a loop body worst of all
    (jax-ml/jax#12868); a matrix product goes to its fast GEMM. 6.conv2 (mb 10) took 4.4 ms a step
    with lax.conv_general_dilated in NCHW, 2.2 ms so.
    """
    maps, c_in, k, _ = w.shape
    b, height, width, _ = x.shape
    h, v = height - k + 1, width - k + 1
    columns = jnp.concatenate([x[:, i:i + h, j:j + v, :] for i in range(k) for j in range(k)], axis=3)
    kernels = w.transpose(2, 3, 1, 0).reshape(k * k * c_in, maps)  # rows in the columns' (i, j, c) order
    return (columns.reshape(b * h * v, k * k * c_in) @ kernels).reshape(b, h, v, maps)


def convolve_xla(x, w):
    """The same cross-correlation as convolve, by XLA's own convolution (cuDNN's on a GPU)."""
    return jax.lax.conv_general_dilated(x, w, window_strides=(1, 1), padding="VALID", dimension_numbers=("NHWC", "OIHW", "NHWC"))


CONVOLUTIONS = {"im2col": convolve, "xla": convolve_xla}


def conv(maps: int, kernel: int, initializer, activation, *, pool: int = 1, impl: str = "auto") -> Layer:
    """network3's ConvPoolLayer: z = maxpool(conv(a, w)) + b, a = sigma(z): the pool comes before the
    bias and the activation (for a nondecreasing sigma the values equal pooling afterwards).

    The initializer sees network3's fan-out, maps * kernel^2 / pool^2, and the kernel's fan-in.
    impl: the convolution (nnx.choices.conv_impl: auto is im2col on the CPU, XLA's elsewhere).
    """

    def init(key, in_shape, dtype=jnp.float32):
        channels = in_shape[2]
        fan_in, fan_out = channels * kernel * kernel, maps * kernel * kernel // (pool * pool)
        w, b = initializer(key, fan_in, fan_out, dtype, shape=(maps, channels, kernel, kernel))
        return conv_output(in_shape, maps, kernel, pool), {"w": w, "b": b}

    def weighted(params, a, product=None):
        del product  # the dense layers' faster matrix product has no convolution counterpart
        convolution = CONVOLUTIONS[choices.conv_impl(impl)]  # decided as the program is traced, on its platform
        return max_pool2d(convolution(a, params["w"]), pool) + params["b"][None, None, None, :]

    return Layer("conv", init, weighted, activation, None)


def max_pool(pool: int) -> Layer:
    """A pool x pool max-pool of its input (after an activation, unlike conv(pool=...))."""

    def init(key, in_shape, dtype=jnp.float32):
        del key, dtype
        h, w, c = in_shape
        return (h // pool, w // pool, c), {}

    def apply(params, x, *, key=None, train=False):
        del params, key, train
        return max_pool2d(x, pool)

    return Layer("max_pool", init, None, None, apply)


def flatten() -> Layer:
    """[batch, h, w, c] -> [batch, c h w] in (c, h, w) order, as network3 and PyTorch flatten, so a
    dense layer's weights after it are laid out as theirs."""

    def init(key, in_shape, dtype=jnp.float32):
        del key, dtype
        return (int(np.prod(in_shape)),), {}

    def apply(params, x, *, key=None, train=False):
        del params, key, train
        return (x if x.ndim == 2 else x.transpose(0, 3, 1, 2)).reshape(x.shape[0], -1)

    return Layer("flatten", init, None, None, apply)


def dropout(p: float) -> Layer:
    """network3's dropout on the next layer's input: in training each unit is zeroed with
    probability p and the rest are not rescaled; at test time the input is scaled by (1 - p), which
    is network3's (1 - p) x w + b."""

    def init(key, in_shape, dtype=jnp.float32):
        del key, dtype
        return in_shape, {}

    def apply(params, x, *, key=None, train=False):
        del params
        if not train:
            return (1.0 - p) * x
        keep = jax.random.bernoulli(key, 1.0 - p, x.shape)
        return jnp.where(keep, x, jnp.zeros((), x.dtype))

    return Layer("dropout", init, None, None, apply, needs_key=True)


def to_images(x, shape):
    """[batch, 784] rows -> [batch, *shape] (e.g. (28, 28, 1)) for a conv net's first layer."""
    return x.reshape(x.shape[0], *shape)
