"""Optimizers, by name, as optax GradientTransformations over the params pytree.

Every entry adds the book's L2 term the way network2.py does: the gradient of
(lmbda / 2n) sum ||w||^2 is (lmbda / n) w, added to the weights' gradients only (biases are not
decayed). With plain SGD this gives exactly the book's update (chapter 3, eq. 93):
    w <- (1 - eta lmbda / n) w - eta grad_w C,    b <- b - eta grad_b C,
where grad C is the mini-batch mean and n is the training-set size.
"""

import jax
import optax


def _weights_only(params):
    return jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key == "w", params)


def _l2(lmbda, n):
    return optax.add_decayed_weights(lmbda / n, mask=_weights_only)


def sgd(eta: float, lmbda: float, n: int):
    """The book's stochastic gradient descent with L2 regularization."""
    return optax.chain(_l2(lmbda, n), optax.sgd(eta))


def momentum(eta: float, lmbda: float, n: int, mu: float = 0.9):
    """Momentum SGD (chapter 3): v <- mu v - eta grad C, w <- w + v."""
    return optax.chain(_l2(lmbda, n), optax.sgd(eta, momentum=mu))


def adam(eta: float, lmbda: float, n: int, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8):
    """Adam (Kingma & Ba, 2015) on the L2-regularized cost (L2 added to the gradient, not decoupled)."""
    return optax.chain(_l2(lmbda, n), optax.adam(eta, b1=b1, b2=b2, eps=eps))


OPTIMIZERS = {"sgd": sgd, "momentum": momentum, "adam": adam}
