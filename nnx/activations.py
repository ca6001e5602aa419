"""Activation functions, by name (chapter 1's sigmoid and the alternatives chapter 5 points to).

Each entry is an Activation: a factory taking the activation's hyperparameters and returning an
elementwise function z -> a, with the facts about it that measurements need (where its outputs
lie, where it saturates, whether it is monotone). Calling the entry calls the factory, so
ACTIVATIONS["tanh"]() is jnp.tanh. Derivatives come from JAX, so nothing here can drift from its
own derivative. A fact left out (None) makes nnx.build refuse the probe that needs it.
"""

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Activation:
    make: Callable[..., Callable]  # make(**hyperparameters) -> elementwise sigma
    range: tuple[float, float] | None = None  # the histogram range of sigma(z); values outside land in the edge bins
    saturated: Callable | None = None  # a -> bool: where sigma's slope is a small fraction of its largest
    monotone: bool = False  # nondecreasing: sorting z sorts sigma(z) (the probes then sort once)

    def __call__(self, **hyperparameters) -> Callable:
        return self.make(**hyperparameters)


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
    "sigmoid": Activation(sigmoid, range=(0.0, 1.0), saturated=lambda a: (a < 0.01) | (a > 0.99), monotone=True),
    "tanh": Activation(tanh, range=(-1.0, 1.0), saturated=lambda a: jnp.abs(a) > 0.99, monotone=True),
    "relu": Activation(relu, range=(0.0, 4.0), saturated=lambda a: a <= 0, monotone=True),
    "leaky_relu": Activation(leaky_relu, range=(-1.0, 4.0), saturated=lambda a: a <= 0, monotone=True),
    "softsign": Activation(softsign, range=(-1.0, 1.0), saturated=lambda a: jnp.abs(a) > 0.99, monotone=True),
    "identity": Activation(identity, range=(-4.0, 4.0), saturated=lambda a: jnp.zeros(a.shape, bool), monotone=True),
}

# The output layer may also be a softmax; a hidden layer may not (it is not elementwise).
OUTPUT_ACTIVATIONS = {**ACTIVATIONS, "softmax": Activation(softmax)}
