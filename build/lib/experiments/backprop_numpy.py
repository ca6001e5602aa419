"""The book's four backpropagation equations (chapter 2, BP1-BP4) in plain numpy, float64.

Written independently of nnx, as network.py's backprop, so that jax.grad has an oracle: the
chapter 2 report (experiments.ch2) and tests/test_backprop.py both compare against it.
"""

import numpy as np


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


# name -> (sigma, sigma'), written independently of nnx.
ACTIVATIONS = {
    "sigmoid": (sigmoid, lambda z: sigmoid(z) * (1 - sigmoid(z))),
    "tanh": (np.tanh, lambda z: 1 - np.tanh(z) ** 2),
    "relu": (lambda z: np.maximum(z, 0), lambda z: (z > 0).astype(float)),
    "leaky_relu": (lambda z: np.where(z > 0, z, 0.01 * z), lambda z: np.where(z > 0, 1.0, 0.01)),
    "softsign": (lambda z: z / (1 + np.abs(z)), lambda z: 1 / (1 + np.abs(z)) ** 2),
    "identity": (lambda z: z, lambda z: np.ones_like(z)),
}
LEAKY_SLOPE = 0.01  # leaky_relu's negative slope above; nnx must be built with the same

# (cost, output activation) -> (output activation, BP1's delta(z, a, y)), the book's closed forms.
OUTPUTS = {
    ("quadratic", "sigmoid"): (sigmoid, lambda z, a, y: (a - y) * sigmoid(z) * (1 - sigmoid(z))),
    ("cross_entropy", "sigmoid"): (sigmoid, lambda z, a, y: a - y),
    ("log_likelihood", "softmax"): (softmax, lambda z, a, y: a - y),
}


def backprop(params, x, y, hidden, output):
    """network.py's backprop for one example (column vectors), returning (nabla_b, nabla_w).

    Args:
      params: [(w [n_out, n_in], b [n_out]) for each layer after the input].
      x: [784] input; y: [10] one-hot target.
      hidden: (sigma, sigma') of the hidden layers, e.g. ACTIVATIONS["sigmoid"].
      output: (output activation, delta(z, a, y)), e.g. OUTPUTS[("quadratic", "sigmoid")].
    Returns:
      dC_x/db and dC_x/dw for each layer, from
        BP1  delta^L = dC/da^L * sigma'(z^L)   (the cost's closed form)
        BP2  delta^l = ((w^{l+1})^T delta^{l+1}) * sigma'(z^l)
        BP3  dC/db^l = delta^l
        BP4  dC/dw^l = delta^l (a^{l-1})^T
    """
    (sigma, sigma_prime), (out, delta_L) = hidden, output
    activation, activations, zs = x, [x], []
    for l, (w, b) in enumerate(params):
        z = w @ activation + b
        zs.append(z)
        activation = out(z) if l == len(params) - 1 else sigma(z)
        activations.append(activation)
    delta = delta_L(zs[-1], activations[-1], y)  # BP1
    nabla_b, nabla_w = [None] * len(params), [None] * len(params)
    nabla_b[-1], nabla_w[-1] = delta, np.outer(delta, activations[-2])  # BP3, BP4
    for l in range(2, len(params) + 1):
        delta = (params[-l + 1][0].T @ delta) * sigma_prime(zs[-l])  # BP2
        nabla_b[-l], nabla_w[-l] = delta, np.outer(delta, activations[-l - 1])
    return nabla_b, nabla_w


def mean_gradient(params, x, labels, activation: str, cost: str, output: str):
    """BP1-BP4 averaged over a batch: the gradient of the mean cost, layer by layer.

    Args:
      x: [batch, 784]; labels: [batch] ints 0..9.
    Returns:
      [(mean dC/db, mean dC/dw) for each layer].
    """
    per_example = [backprop(params, x[i], np.eye(10)[labels[i]], ACTIVATIONS[activation], OUTPUTS[(cost, output)])
                   for i in range(len(x))]
    return [(np.mean([nb[l] for nb, _ in per_example], axis=0), np.mean([nw[l] for _, nw in per_example], axis=0))
            for l in range(len(params))]
