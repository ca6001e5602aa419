"""A network as a sequence of layers (nnx.layers) over plain-pytree params.

params is a list with one dict per layer ({} for a layer without parameters). The book's fully
connected networks (chapters 1-5) are mlp(): one dense layer per layer after the input, so params
is network.py's weights[l] and biases[l] as [{"w": [n_out, n_in], "b": [n_out]}, ...], with gamma
and beta in a batch-normalised hidden layer. Chapter 6's convolutional nets are conv_net().
Inputs are rows: x has shape [batch, 784]; a conv net reshapes them to images itself.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nnx import layers as L
from nnx.layers import times_transpose


class Net(NamedTuple):
    layers: tuple  # nnx.layers.Layer, the output layer last
    input_shape: tuple = (784,)  # what the first layer sees; (28, 28, 1) for a conv net
    sizes: tuple | None = None  # an MLP's [784, n_1, ..., 10]; None for other nets

    @property
    def has_randomness(self) -> bool:
        return any(layer.needs_key for layer in self.layers)

    @property
    def weighted(self) -> list[int]:
        """Indices of the layers with a weighted input (dense and conv), the output layer last."""
        return [i for i, layer in enumerate(self.layers) if layer.weighted is not None]


def mlp(sizes, initializer, activation, output_activation, *, batch_norm=False) -> Net:
    """The book's network of layer sizes `sizes` (e.g. [784, 30, 10]): dense layers, sigma in the
    hidden ones, the output activation in the last."""
    hidden = [L.dense(n, initializer, activation, batch_norm=batch_norm) for n in sizes[1:-1]]
    return Net((*hidden, L.dense(sizes[-1], initializer, output_activation)), (sizes[0],), tuple(sizes))


def conv_net(conv_maps, fc, initializer, activation, output_activation, *, kernel=5, pool=2, dropout=0.0,
             zero_output=False, image=(28, 28, 1), conv_impl="auto") -> Net:
    """Chapter 6's nets: conv-pool layers of `conv_maps` maps each, fully connected layers of widths
    `fc`, then 10 outputs. dropout > 0 puts network3's dropout on the input of every FC and output
    layer; zero_output starts the output layer at w = b = 0 (network3's softmax layer)."""
    stack = [L.conv(maps, kernel, initializer, activation, pool=pool, impl=conv_impl) for maps in conv_maps] + [L.flatten()]
    for width in fc:
        stack += ([L.dropout(dropout)] if dropout else []) + [L.dense(width, initializer, activation)]
    stack += ([L.dropout(dropout)] if dropout else []) + [L.dense(10, initializer, output_activation, zero=zero_output)]
    return Net(tuple(stack), image)


def init(key, net: Net, dtype=jnp.float32) -> list[dict]:
    """Draws every layer's params; layer i uses the i-th split of key (an MLP: network.py's layers)."""
    keys = jax.random.split(key, len(net.layers))
    shape, params = net.input_shape, []
    for k, layer in zip(keys, net.layers):
        shape, p = layer.init(k, shape, dtype)
        params.append(p)
    return params


def trace(net: Net, params, x, *, shifts=None, product=times_transpose, key=None, train=False):
    """Every hidden weighted layer's z^l and a^l, and the output layer's z.

    shifts, if given, are added to each hidden z^l (zeros of z^l's shape): the gradient of the
    summed cost with respect to them is each example's delta^l = dC_x/dz^l (chapter 2's BP2).
    key: the randomness of the layers that draw it (dropout), used only with train=True.
    Returns:
      ([(z^l, a^l) for each hidden layer with weights], z of the output layer).
    """
    a = x if len(net.input_shape) == 1 else L.to_images(x, net.input_shape)
    keys = jax.random.split(key, len(net.layers)) if key is not None else [None] * len(net.layers)
    hidden, last = [], len(net.layers) - 1
    for i, (layer, p, k) in enumerate(zip(net.layers, params, keys)):
        if layer.weighted is None:
            a = layer.apply(p, a, key=k, train=train)
            continue
        z = layer.weighted(p, a, product)
        if i == last:
            return hidden, z
        if shifts is not None:
            z = z + shifts[len(hidden)]
        a = layer.activation(z)
        hidden.append((z, a))
    raise ValueError("a Net's last layer must have weights (the output layer)")


def feedforward(net: Net, params, x, *, product=times_transpose, key=None, train=False):
    """a^l = sigma(w^l a^{l-1} + b^l) layer by layer (chapter 2, eq. 25), batched over rows of x.

    Returns:
      (z, a) of the output layer, each [batch, 10]: costs need z for a stable form.
    """
    _, z = trace(net, params, x, product=product, key=key, train=train)
    return z, net.layers[-1].activation(z)


def layer_shapes(net: Net) -> list[tuple]:
    """[(output shape, {name: param shape})] per layer, worked out without drawing any number."""
    found = []

    def draw(key):
        shape = net.input_shape
        for layer in net.layers:
            shape, params = layer.init(key, shape)
            found.append((tuple(shape), {k: tuple(v.shape) for k, v in params.items()}))

    jax.eval_shape(draw, jax.random.PRNGKey(0))
    return found


def describe(net: Net) -> str:
    """One line a runs table can show: an MLP's sizes ("[784, 30, 10]"), else its layers
    ("conv 20@5x5 -> 20x12x12 | conv 40@5x5 -> 40x4x4 | flatten | dropout | dense 100 | dense 10")."""
    if net.sizes is not None:
        return str(list(net.sizes))
    parts = []
    for layer, (out, params) in zip(net.layers, layer_shapes(net)):
        if layer.kind == "conv":
            maps, _, k, _ = params["w"]
            parts.append(f"conv {maps}@{k}x{k} -> {'x'.join(map(str, out))}")
        elif layer.kind == "dense":
            parts.append(f"dense {params['w'][0]}")
        else:
            parts.append(layer.kind)
    return " | ".join(parts)


def num_params(net: Net) -> int:
    """Every weight and bias (and batch-norm scale and shift) of the net: for an MLP, the sum over
    layers of (n_in + 1) * n_out; a conv layer of m maps of k x k over c channels has m (c k^2 + 1)."""
    return int(sum(np.prod(shape) for _, params in layer_shapes(net) for shape in params.values()))
