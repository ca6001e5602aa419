"""Cost functions C_x for one example, by name (chapters 1 and 3).

Each entry is a factory `make(output_activation) -> fn(z, a, y)` returning the cost of each
example: z and a are the output layer's weighted inputs and activations, y the one-hot target,
all of shape [..., 10]; the result has shape [...]. The factory sees the output activation so
that a cost can use a form that stays finite where a = sigma(z) rounds to exactly 0 or 1.

Output deltas (BP1) follow from these by differentiation; tests check them against the book's
closed forms: (a - y) * sigma'(z) for the quadratic cost, a - y for cross-entropy on sigmoid
outputs and for log-likelihood on softmax outputs.
"""

import jax
import jax.numpy as jnp

from nnx.registry import ConfigError


def quadratic(output_activation: str):
    """C_x = ||y - a||^2 / 2 (chapter 1, eq. 6)."""
    del output_activation

    def fn(z, a, y):
        del z
        return 0.5 * jnp.sum((a - y) ** 2, axis=-1)

    return fn


def cross_entropy(output_activation: str):
    """C_x = -sum_j [y_j ln a_j + (1 - y_j) ln(1 - a_j)] (chapter 3, eq. 63).

    Computed as sum_j [softplus(z_j) - y_j z_j], equal for sigmoid outputs in value and gradient
    (a - y) but free of log(0) once sigma(z) rounds to 1 in float32 (z > ~17): the book's
    nan_to_num only rescues the value, not the gradient.
    """
    if output_activation != "sigmoid":
        raise ConfigError(
            f"cost=cross_entropy needs outputs in (0, 1), i.e. model.output_activation=sigmoid, got "
            f"{output_activation!r}. Set model.output_activation=sigmoid, or use cost=log_likelihood "
            f"with model.output_activation=softmax (chapter 3)."
        )

    def fn(z, a, y):
        del a
        return jnp.sum(jax.nn.softplus(z) - y * z, axis=-1)

    return fn


def log_likelihood(output_activation: str):
    """C_x = -ln a_y with softmax outputs (chapter 3, eq. 80)."""
    if output_activation != "softmax":
        raise ConfigError(
            f"cost=log_likelihood needs model.output_activation=softmax (the outputs must be a "
            f"probability distribution), got {output_activation!r}. Set model.output_activation=softmax."
        )

    def fn(z, a, y):
        del a
        return -jnp.sum(y * jax.nn.log_softmax(z, axis=-1), axis=-1)

    return fn


COSTS = {
    "quadratic": quadratic,
    "cross_entropy": cross_entropy,
    "log_likelihood": log_likelihood,
}
