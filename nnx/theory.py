"""Chapter 5's analytic side: why gradients vanish or explode, as numbers to set beside the runs.

- per-layer factors of the "simple theory": backprop multiplies delta by W^T and sigma'(z) at each
  layer, so on average ||delta^l|| ~ chi_l ||delta^{l+1}|| with chi_l^2 = n_l v_w E[sigma'(z_l)^2]
  where z_l ~ N(0, q_l) and q_l is the pre-activation variance carried forward from the input;
- the book's exploding chain (w = 100, b = -100 a_{j-1}: each factor w sigma'(0) = 25);
- the width of the range of inputs a where |w sigma'(wa + b)| >= 1 (chapter 5's problem).
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from nnx import choices

# Gauss-Hermite nodes for E_{z ~ N(0, 1)}[f(z)] (probabilists' weights, normalised).
_NODES, _WEIGHTS = np.polynomial.hermite_e.hermegauss(100)  # even: no node at 0, where relu' jumps
_WEIGHTS = _WEIGHTS / _WEIGHTS.sum()


def gaussian_mean(f, q: float) -> float:
    """E[f(z)] for z ~ N(0, q), by 100-point Gauss-Hermite quadrature."""
    return float(np.sum(_WEIGHTS * np.asarray(f(jnp.asarray(np.sqrt(q) * _NODES)))))


def init_variances(name: str, n_in: int, n_out: int, gain: float = 1.0, sigma_w2: float = 1.0,
                   sigma_b2: float = 0.0) -> tuple[float, float]:
    """(Var w, Var b) of one layer under the named initializer (nnx.initializers)."""
    return {
        "large": (1.0, 1.0),
        "default": (1.0 / n_in, 1.0),
        "glorot_normal": (2.0 / (n_in + n_out), 0.0),
        "glorot_uniform": (2.0 / (n_in + n_out), 0.0),
        "standard_uniform": (1.0 / (3 * n_in), 0.0),
        "he_normal": (2.0 / n_in, 0.0),
        # Orthonormal rows (n_out <= n_in) or columns: each entry has variance 1 / max(n_in, n_out).
        "orthogonal": (gain**2 / max(n_in, n_out), sigma_b2),
        "gaussian": (sigma_w2 / n_in, sigma_b2),
        "network3": (1.0 / n_out, 1.0),
    }[name]


def layer_factors(activation, sizes, variances, input_sq_norm: float):
    """Mean-field forward variances q_l and backward factors chi_l of each hidden layer.

    Args:
      activation: elementwise sigma.
      sizes: [784, n_1, ..., n_L, 10].
      variances: [(Var w, Var b) for each layer after the input].
      input_sq_norm: E ||x||^2 over the inputs (q_1 = Var w ||x||^2 + Var b).
    Returns:
      (q, chi): q[l] for hidden layers 1..L; chi[l] = predicted ||delta^l|| / ||delta^{l+1}|| for
      hidden layers 1..L-1 (chi between the last hidden layer and the output is not needed).
    """
    dsigma = jax.vmap(jax.grad(activation))
    hidden = len(sizes) - 2
    q = [variances[0][0] * input_sq_norm + variances[0][1]]
    for l in range(1, hidden):
        v_w, v_b = variances[l]
        q.append(sizes[l] * v_w * gaussian_mean(lambda z: activation(z) ** 2, q[-1]) + v_b)
    chi = [np.sqrt(sizes[l + 1] * variances[l + 1][0] * gaussian_mean(lambda z: dsigma(z) ** 2, q[l]))
           for l in range(hidden - 1)]
    return np.array(q), np.array(chi)


def predicted_norms(last_norm: float, chi) -> np.ndarray:
    """||delta^l|| for l = 1..L from the last hidden layer's measured norm and the factors chi."""
    return last_norm * np.append(np.cumprod(np.asarray(chi)[::-1])[::-1], 1.0)


def layer_norms(activation, init: str, sizes, input_sq_norm: float, last_norm: float = 1.0) -> np.ndarray:
    """The simple theory's ||delta^l|| for hidden layers l = 1..L of a net of `sizes` under the
    named initializer, anchored at `last_norm` for the last hidden layer (the figures' overlay)."""
    variances = [init_variances(init, a, b) for a, b in itertools.pairwise(sizes)]
    _, chi = layer_factors(activation, list(sizes), variances, input_sq_norm)
    return predicted_norms(last_norm, chi)


def exploding_chain(depth: int, w: float = 100.0, a0: float = 0.5):
    """The book's exploding gradient: a chain of single sigmoid neurons with w_j = w and
    b_j = -w a_{j-1}, so every z_j = 0 and every factor w sigma'(z_j) = w / 4.

    Returns:
      |dC/db_j| for j = 1..depth with C = (a_depth - 0)^2 / 2, in float64.
    """

    def cost(biases):
        a = a0
        for b in biases:
            a = jax.nn.sigmoid(w * a + b)
        return 0.5 * a**2

    with choices.float64():
        a, biases = a0, []
        for _ in range(depth):
            biases.append(-w * a)
            a = float(jax.nn.sigmoid(w * a + biases[-1]))
        return np.abs(np.asarray(jax.grad(cost)(jnp.asarray(biases, jnp.float64))))


def allowed_width(w: np.ndarray, a_range: float = 4.0, points: int = 400_001) -> np.ndarray:
    """Width of the set of a with |w sigma'(wa + b)| >= 1, measured on a grid (b only shifts it)."""
    a = np.linspace(-a_range / 2, a_range / 2, points)
    da = a[1] - a[0]
    widths = []
    for wi in np.atleast_1d(w):
        s = 1 / (1 + np.exp(-wi * a))
        widths.append(np.count_nonzero(np.abs(wi) * s * (1 - s) >= 1) * da)
    return np.array(widths)


def allowed_width_book(w: np.ndarray) -> np.ndarray:
    """The book's closed form: (2/|w|) ln(|w|(1 + sqrt(1 - 4/|w|))/2 - 1) for |w| >= 4, else 0."""
    w = np.abs(np.atleast_1d(np.asarray(w, float)))
    out = np.zeros_like(w)
    ok = w >= 4
    out[ok] = 2 / w[ok] * np.log(w[ok] * (1 + np.sqrt(1 - 4 / w[ok])) / 2 - 1)
    return out
