"""jax.grad against the book's four backpropagation equations (chapter 2), written in numpy, float64."""

import jax
import numpy as np
import pytest

import nnx
from conftest import tiny_cfg

rng = np.random.default_rng(0)


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


# name -> (sigma, sigma'), written independently of nnx.
ACTIVATIONS = {
    "sigmoid": (sigmoid, lambda z: sigmoid(z) * (1 - sigmoid(z))),
    "tanh": (np.tanh, lambda z: 1 - np.tanh(z) ** 2),
    "relu": (lambda z: np.maximum(z, 0), lambda z: (z > 0).astype(float)),
    "leaky_relu": (lambda z: np.where(z > 0, z, 0.01 * z), lambda z: np.where(z > 0, 1.0, 0.01)),
    "softsign": (lambda z: z / (1 + np.abs(z)), lambda z: 1 / (1 + np.abs(z)) ** 2),
    "identity": (lambda z: z, lambda z: np.ones_like(z)),
}


def softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


# (cost, output activation) -> (output activation, BP1's delta(z, a, y)), the book's closed forms.
OUTPUTS = {
    ("quadratic", "sigmoid"): (sigmoid, lambda z, a, y: (a - y) * sigmoid(z) * (1 - sigmoid(z))),
    ("cross_entropy", "sigmoid"): (sigmoid, lambda z, a, y: a - y),
    ("log_likelihood", "softmax"): (softmax, lambda z, a, y: a - y),
}


def backprop(params, x, y, hidden, output):
    """network.py's backprop for one example (column vectors), returning (nabla_b, nabla_w)."""
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


@pytest.mark.parametrize("cost,output", list(OUTPUTS))
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_jax_grad_equals_bp1_to_bp4(cost, output, activation):
    sizes = (784, 7, 5, 10)
    cfg = tiny_cfg(
        model={"depth": 2, "width": 7, "output_activation": output},
        activation={"name": activation, **({"negative_slope": 0.01} if activation == "leaky_relu" else {})},
        cost={"name": cost},
    )
    with jax.enable_x64(True):
        spec = nnx.build(cfg)
        # Layers of unequal width ([784, 7, 5, 10]) catch a transposed weight; the loss takes any sizes.
        params = [
            {"w": rng.normal(size=(n_out, n_in)) / np.sqrt(n_in), "b": rng.normal(size=n_out)}
            for n_in, n_out in zip(sizes[:-1], sizes[1:])
        ]
        x = rng.uniform(size=(6, 784))
        labels = rng.integers(0, 10, size=6)
        grads = jax.grad(nnx.make_loss(spec))(params, x, labels)

    np_params = [(p["w"], p["b"]) for p in params]
    per_example = [backprop(np_params, x[i], np.eye(10)[labels[i]], ACTIVATIONS[activation], OUTPUTS[(cost, output)]) for i in range(6)]
    for l in range(3):
        expected_b = np.mean([nb[l] for nb, _ in per_example], axis=0)
        expected_w = np.mean([nw[l] for _, nw in per_example], axis=0)
        np.testing.assert_allclose(grads[l]["b"], expected_b, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(grads[l]["w"], expected_w, rtol=1e-9, atol=1e-12)


def test_cross_entropy_output_delta_is_a_minus_y_even_when_saturated():
    """Chapter 3: dC/dz^L = a - y, also where float32 rounds sigma(z) to exactly 1."""
    fn = nnx.COSTS["cross_entropy"]("sigmoid")
    z = np.array([-30.0, -2.0, 0.0, 3.0, 40.0], np.float32)
    y = np.array([1.0, 0.0, 1.0, 0.0, 0.0], np.float32)
    delta = jax.grad(lambda z: fn(z, jax.nn.sigmoid(z), y))(z)
    np.testing.assert_allclose(delta, sigmoid(z.astype(float)) - y, atol=1e-6)
    assert np.isfinite(fn(z, jax.nn.sigmoid(z), y))


def test_cross_entropy_value_matches_the_book_formula():
    fn = nnx.COSTS["cross_entropy"]("sigmoid")
    with jax.enable_x64(True):
        z = rng.normal(size=(4, 10)) * 3
        y = np.eye(10)[[1, 2, 3, 4]]
        a = sigmoid(z)
        book = -np.sum(y * np.log(a) + (1 - y) * np.log(1 - a), axis=-1)
        np.testing.assert_allclose(fn(z, jax.nn.sigmoid(z), y), book, rtol=1e-12)
