"""Mean-field signal propagation in wide random networks (Poole et al. 2016, Schoenholz et al. 2017).

For weights w ~ N(0, sigma_w^2 / n_in) and biases b ~ N(0, sigma_b^2), the pre-activations of a
wide layer are Gaussian, and two quantities follow layer to layer:
  the variance map     q' = sigma_w^2 E_z[phi(sqrt(q) z)^2] + sigma_b^2,
  the correlation map  c' = (sigma_w^2 E[phi(u1) phi(u2)] + sigma_b^2) / q*,
                       u1 = sqrt(q*) z1, u2 = sqrt(q*) (c z1 + sqrt(1 - c^2) z2).
chi_1 = sigma_w^2 E[phi'(sqrt(q*) z)^2] is the mean squared singular value of a layer's Jacobian:
gradients vanish (chi_1 < 1) or explode (chi_1 > 1) geometrically with depth; at chi_1 = 1 (the
edge of chaos) they do neither. xi_c = -1 / ln(chi_c) is the depth over which correlations between
inputs are forgotten, and the depth to which a net can be trained (about 6 xi_c).
The book's default init (w ~ N(0, 1/n_in), b ~ N(0, 1)) is sigma_w^2 = 1, sigma_b^2 = 1.
Expectations use Gauss-Hermite quadrature (nnx.theory.gaussian_mean and a 2-d product rule).
"""

import jax
import jax.numpy as jnp
import numpy as np

from nnx.theory import gaussian_mean

_NODES, _WEIGHTS = np.polynomial.hermite_e.hermegauss(80)  # even: no node at 0
_WEIGHTS = _WEIGHTS / _WEIGHTS.sum()
_Z1, _Z2 = np.meshgrid(_NODES, _NODES, indexing="ij")
_W2 = np.outer(_WEIGHTS, _WEIGHTS)


def variance_map(phi, q, sigma_w2, sigma_b2):
    return sigma_w2 * gaussian_mean(lambda z: phi(z) ** 2, q) + sigma_b2


def fixed_point_q(phi, sigma_w2, sigma_b2, q0=1.0, iterations=500, tol=1e-10):
    """q* by iterating the variance map (it converges for the bounded and ReLU-like activations here)."""
    q = q0
    for _ in range(iterations):
        new = variance_map(phi, q, sigma_w2, sigma_b2)
        if abs(new - q) < tol * max(1.0, q):
            return new
        q = new
    return q


def chi_1(phi, sigma_w2, sigma_b2, q_star=None):
    """sigma_w^2 E[phi'(sqrt(q*) z)^2]."""
    q_star = fixed_point_q(phi, sigma_w2, sigma_b2) if q_star is None else q_star
    dphi = jax.vmap(jax.grad(phi))
    return sigma_w2 * gaussian_mean(lambda z: dphi(z) ** 2, q_star)


def _pair_mean(f, g, q, c):
    u1 = np.sqrt(q) * _Z1
    u2 = np.sqrt(q) * (c * _Z1 + np.sqrt(max(1 - c**2, 0.0)) * _Z2)
    return float(np.sum(_W2 * np.asarray(f(jnp.asarray(u1))) * np.asarray(g(jnp.asarray(u2)))))


def correlation_map(phi, c, sigma_w2, sigma_b2, q_star):
    return (sigma_w2 * _pair_mean(phi, phi, q_star, c) + sigma_b2) / q_star


def fixed_point_c(phi, sigma_w2, sigma_b2, q_star, c0=0.5, iterations=2000, tol=1e-10):
    c = c0
    for _ in range(iterations):
        new = min(correlation_map(phi, c, sigma_w2, sigma_b2, q_star), 1.0)
        if abs(new - c) < tol:
            return new
        c = new
    return c


def xi_c(phi, sigma_w2, sigma_b2):
    """-1 / ln(chi_c), chi_c = sigma_w^2 E[phi'(u1) phi'(u2)] at the correlation fixed point c*."""
    q_star = fixed_point_q(phi, sigma_w2, sigma_b2)
    c_star = fixed_point_c(phi, sigma_w2, sigma_b2, q_star)
    dphi = jax.vmap(jax.grad(lambda z: phi(z)))
    flat = lambda f: (lambda u: f(u.ravel()).reshape(u.shape))
    chi_c = sigma_w2 * _pair_mean(flat(dphi), flat(dphi), q_star, c_star)
    return -1.0 / np.log(chi_c) if chi_c != 1 else np.inf
