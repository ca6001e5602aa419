"""The book's fully connected network as a plain pytree (chapters 1-5).

params is a list with one {"w": [n_out, n_in], "b": [n_out]} per layer after the input layer,
as network.py's weights[l] and biases[l]. Inputs are rows: x has shape [batch, 784].
"""

import jax
import jax.numpy as jnp


def init(key, sizes, initializer, dtype=jnp.float32):
    """Draws the weights and biases of a network with layer sizes `sizes` (e.g. [784, 30, 10]).

    Args:
      key: a PRNG key; each layer gets its own split.
      sizes: neurons per layer, input layer first.
      initializer: `init(key, n_in, n_out, dtype) -> (w, b)` from nnx.initializers.
    Returns:
      [{"w": [sizes[l+1], sizes[l]], "b": [sizes[l+1]]} for each layer l >= 1].
    """
    keys = jax.random.split(key, len(sizes) - 1)
    params = []
    for k, n_in, n_out in zip(keys, sizes[:-1], sizes[1:]):
        w, b = initializer(k, n_in, n_out, dtype)
        params.append({"w": w, "b": b})
    return params


def feedforward(params, x, activation, output_activation):
    """a^l = sigma(w^l a^{l-1} + b^l) layer by layer (chapter 2, eq. 25), batched over rows of x.

    Returns:
      (z, a) of the output layer, each [batch, sizes[-1]]: costs need z for a stable form.
    """
    a = x
    for layer in params[:-1]:
        a = activation(a @ layer["w"].T + layer["b"][None, :])
    z = a @ params[-1]["w"].T + params[-1]["b"][None, :]
    return z, output_activation(z)


def num_params(sizes):
    """sum over layers of (n_in + 1) * n_out."""
    return sum((n_in + 1) * n_out for n_in, n_out in zip(sizes[:-1], sizes[1:]))
