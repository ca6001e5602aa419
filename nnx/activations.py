"""Activation functions, by name (chapter 1's sigmoid and the alternatives chapter 5 points to).

Each entry is a factory taking the activation's hyperparameters and returning an elementwise
function z -> a. Derivatives come from JAX, so nothing here can drift from its own derivative.
"""

import functools

import jax
import jax.numpy as jnp


def sigmoid():
    """sigma(z) = 1 / (1 + e^-z), the book's neuron (chapter 1, eq. 3)."""
    return jax.nn.sigmoid


def tanh():
    return jnp.tanh


def relu():
    return jax.nn.relu


def leaky_relu(negative_slope: float = 0.01):
    return functools.partial(jax.nn.leaky_relu, negative_slope=negative_slope)


def softsign():
    """z / (1 + |z|), the activation Glorot & Bengio (2010) compare with tanh."""
    return jax.nn.soft_sign


def identity():
    return lambda z: z


def softmax():
    """e^{z_j} / sum_k e^{z_k} over the last axis: an output layer only (chapter 3)."""
    return functools.partial(jax.nn.softmax, axis=-1)


ACTIVATIONS = {
    "sigmoid": sigmoid,
    "tanh": tanh,
    "relu": relu,
    "leaky_relu": leaky_relu,
    "softsign": softsign,
    "identity": identity,
}

# The output layer may also be a softmax; a hidden layer may not (it is not elementwise).
OUTPUT_ACTIVATIONS = {**ACTIVATIONS, "softmax": softmax}
