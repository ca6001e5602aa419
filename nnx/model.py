"""The book's fully connected network as a plain pytree (chapters 1-5), with optional batch norm.

params is a list with one {"w": [n_out, n_in], "b": [n_out]} per layer after the input layer,
as network.py's weights[l] and biases[l]. Inputs are rows: x has shape [batch, 784].
A hidden layer that also holds "gamma" and "beta" is batch-normalised (Ioffe & Szegedy 2015):
its weighted input is standardised over the batch, then scaled by gamma and shifted by beta,
before the activation. The statistics are always the batch's own: evaluation on a whole split
(10000 images) uses that split's statistics, which stand in for the population averages.
"""

import jax
import jax.numpy as jnp

BN_EPSILON = 1e-5  # Ioffe & Szegedy's epsilon: keeps a constant unit finite


def init(key, sizes, initializer, dtype=jnp.float32, batch_norm=False):
    """Draws the weights and biases of a network with layer sizes `sizes` (e.g. [784, 30, 10]).

    Args:
      key: a PRNG key; each layer gets its own split.
      sizes: neurons per layer, input layer first.
      initializer: `init(key, n_in, n_out, dtype) -> (w, b)` from nnx.initializers.
      batch_norm: give each hidden layer gamma = 1 and beta = 0 (the identity transform at init).
    Returns:
      [{"w": [sizes[l+1], sizes[l]], "b": [sizes[l+1]]} for each layer l >= 1].
    """
    keys = jax.random.split(key, len(sizes) - 1)
    params = []
    for l, (k, n_in, n_out) in enumerate(zip(keys, sizes[:-1], sizes[1:]), 1):
        w, b = initializer(k, n_in, n_out, dtype)
        layer = {"w": w, "b": b}
        if batch_norm and l < len(sizes) - 1:
            layer.update(gamma=jnp.ones((n_out,), dtype), beta=jnp.zeros((n_out,), dtype))
        params.append(layer)
    return params


def times_transpose(a, w):
    """a @ w.T: the weighted inputs' product, rows of a against rows of w."""
    return a @ w.T


def weighted_input(layer, a, product=times_transpose):
    """z^l = w^l a^{l-1} + b^l for a batch of rows, batch-normalised if the layer says so.

    product(a, w) computes a @ w.T; training passes one that differentiates faster (nnx.train).
    """
    z = product(a, layer["w"]) + layer["b"][None, :]
    if "gamma" not in layer:
        return z
    mean, var = jnp.mean(z, axis=0, keepdims=True), jnp.var(z, axis=0, keepdims=True)
    return layer["gamma"][None, :] * (z - mean) * jax.lax.rsqrt(var + BN_EPSILON) + layer["beta"][None, :]


def trace(params, x, activation, shifts=None, product=times_transpose):
    """Every hidden layer's weighted input z^l and activation a^l, and the output layer's z.

    shifts, if given, are added to each hidden z^l (zeros of z^l's shape): the gradient of the
    summed cost with respect to them is each example's delta^l = dC_x/dz^l (chapter 2's BP2).
    Returns:
      ([(z^l, a^l) for each hidden layer], z of the output layer).
    """
    a, hidden = x, []
    for l, layer in enumerate(params[:-1]):
        z = weighted_input(layer, a, product)
        if shifts is not None:
            z = z + shifts[l]
        a = activation(z)
        hidden.append((z, a))
    return hidden, product(a, params[-1]["w"]) + params[-1]["b"][None, :]


def feedforward(params, x, activation, output_activation, product=times_transpose):
    """a^l = sigma(w^l a^{l-1} + b^l) layer by layer (chapter 2, eq. 25), batched over rows of x.

    product(a, w) computes a @ w.T; training passes one that differentiates faster (nnx.train).
    Returns:
      (z, a) of the output layer, each [batch, sizes[-1]]: costs need z for a stable form.
    """
    _, z = trace(params, x, activation, product=product)
    return z, output_activation(z)


def num_params(sizes, batch_norm=False):
    """sum over layers of (n_in + 1) * n_out, plus gamma and beta per hidden neuron with batch norm."""
    extra = 2 * sum(sizes[1:-1]) if batch_norm else 0
    return sum((n_in + 1) * n_out for n_in, n_out in zip(sizes[:-1], sizes[1:])) + extra
