"""How far float32 may lie from exact arithmetic, for the tests that compare nnx with a reference
computed another way (style rule 23): the reference runs in float64, and these bounds say how far
any CPU's float32 result may be from it, whatever order its vector unit adds in.

Notation follows Higham, Accuracy and Stability of Numerical Algorithms (2nd ed., 2002): u is the
unit roundoff (one rounding errs by at most u times the value) and gamma_n = n u / (1 - n u).

How the tests use them:
  - A sum, mean, norm or product of n terms that another CPU may add in another order: gamma_n times
    the sum of the terms' magnitudes, computed in float64 from the numbers at hand (any order, so any
    CPU; that worst case is ~sqrt(n) times the typical error, which makes it a safe, not a tight, bound).
  - Round-off carried through many operations (a network's layers, training steps), where that worst
    case compounds into something 10^2-10^4 times any error seen: ELSEWHERE times the error measured
    here, or a fixed tolerance whose comment shows it holds more than that.
  - Counts (accuracies, a fraction above a threshold): only the items within the error bound of the
    decision (ambiguous) may count either way.
"""

import numpy as np

U32 = 2.0**-24  # float32's unit roundoff, ~6.0e-8
U64 = 2.0**-53  # float64's, ~1.1e-16

# XLA's exp, logistic, tanh and rsqrt on the CPU are approximations accurate to a few units in the
# last place, not correctly rounded; an activation's own error is taken as 8 of them.
ULPS_PHI = 8

# Another CPU rounds the same operations on the same numbers in another order: its float32 error is
# another draw of the size this machine's is, not the worst case gamma_n bounds (which, carried
# through a batch norm, is ~10^4 times any error seen). A test that must bound another machine's
# float32 by what it measures here allows ELSEWHERE times the largest error measured. Capping XLA
# at SSE4.2 instead of AVX2 (XLA_FLAGS=--xla_cpu_max_isa=SSE4_2) moved the largest error of
# test_records' legacy forward passes by at most 1.25x; nnx.numerics found whole training runs
# recorded on another machine within 2.2x of its nudged twins' spread.
ELSEWHERE = 8


def gamma(n: int, u: float = U32) -> float:
    """Higham's gamma_n (his section 3.1): a sum of n terms, or a dot product of length n,
    computed in any order errs by at most gamma_n times the sum of the terms' magnitudes. In any
    order, so another CPU's summation (SIMD width, XLA's tiling, a fused multiply-add) stays inside
    it; typical errors are ~sqrt(n) u rather than n u, so the bound is what any CPU can promise."""
    assert n * u < 1
    return n * u / (1 - n * u)


def sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, np.float64)))


# name -> (the activation in float64, the largest |phi'|: how much an error in z can grow in a)
ACTIVATIONS = {"sigmoid": (sigmoid, 0.25), "tanh": (np.tanh, 1.0)}


def _batch_norm(z, ez, gamma_, beta, epsilon, u):
    """nnx.layers.dense's batch norm, gamma (z - mean) rsqrt(var + epsilon) + beta over the batch
    (axis 0), in float64, with a bound carried through each of its operations."""
    batch = z.shape[0]
    mean = z.mean(0)
    e_mean = ez.mean(0) + gamma(batch + 1, u) * (np.abs(z) + ez).mean(0)  # a sum of batch terms, a division
    d = z - mean
    ed = ez + e_mean + u * (np.abs(d) + ez + e_mean)
    var = (d**2).mean(0)
    e_var = (2 * np.abs(d) * ed + ed**2).mean(0) + gamma(batch + 2, u) * ((np.abs(d) + ed) ** 2).mean(0)
    s = var + epsilon
    es = e_var + u * (s + e_var)
    r = 1 / np.sqrt(s)
    low = np.maximum(s - es, epsilon)  # var >= 0 in any arithmetic, so var + epsilon >= epsilon
    er = 0.5 * low**-1.5 * es + ULPS_PHI * u / np.sqrt(low)  # |d rsqrt / ds| at the low end, then rsqrt's own error
    out = gamma_ * d * r + beta
    e_out = np.abs(gamma_) * (ed * (r + er) + np.abs(d) * er) + gamma(3, u) * (np.abs(gamma_) * (np.abs(d) + ed) * (r + er) + np.abs(beta))
    return out, e_out


def dense_forward(layers, x, activation: str, *, epsilon=None, u=U32):
    """An MLP's forward pass in float64 from the params nnx stores, with an elementwise bound on how
    far nnx's float32 forward pass may lie from each z and a, on any CPU.

    Per dense layer, with the input a known to within e: z = a w^T + b errs by |w| e (the error
    carried in) plus gamma_{n_in + 1} (|a| + e) |w|^T + |b| (its own n_in products and sums and the
    bias); batch norm adds its operations' errors (_batch_norm); a = phi(z) errs by max|phi'| times
    z's error plus ULPS_PHI u |a|. The params and the inputs are float32 numbers, exact in both.

    Args:
      layers: [{"w": [n_out, n_in], "b": [n_out], and "gamma", "beta" where batch-normalised}], the
        output layer last (nnx.model.mlp's params).
      x: [batch, n_in].
      activation: the hidden layers' activation, a key of ACTIVATIONS.
      epsilon: batch norm's epsilon as the float32 program adds it (nnx.layers.BN_EPSILON).
    Returns:
      ([(z, a, err_z, err_a)] per hidden layer, (z, err_z) of the output layer), float64 [batch, n].
    """
    phi, slope = ACTIVATIONS[activation]
    a = np.asarray(x, np.float64)
    ea = np.zeros_like(a)
    hidden = []
    for i, layer in enumerate(layers):
        w, b = (np.asarray(layer[k], np.float64) for k in ("w", "b"))
        z = a @ w.T + b
        ez = ea @ np.abs(w).T + gamma(w.shape[1] + 1, u) * ((np.abs(a) + ea) @ np.abs(w).T + np.abs(b))
        if "gamma" in layer:
            z, ez = _batch_norm(z, ez, np.asarray(layer["gamma"], np.float64), np.asarray(layer["beta"], np.float64),
                                float(np.float32(epsilon)), u)
        if i == len(layers) - 1:
            return hidden, (z, ez)
        a = phi(z)
        ea = slope * ez + ULPS_PHI * u * (np.abs(a) + slope * ez)
        hidden.append((z, a, ez, ea))
    raise ValueError("no output layer")


def ambiguous(z, err_z) -> np.ndarray:
    """Per row: whether float32 could rank another output above the float64 argmax, i.e. the top
    output's lead over some other is within the two outputs' error bounds. Only such rows can count
    differently in an accuracy on another CPU."""
    top = np.argmax(z, axis=1)
    rows = np.arange(len(z))
    lead = z[rows, top][:, None] - z
    reach = err_z[rows, top][:, None] + err_z
    reach[rows, top] = -np.inf
    return np.any(lead <= reach, axis=1)


def assert_within(actual, desired, bound, err_msg=""):
    """|actual - desired| <= bound elementwise (bound broadcasts: a scalar, or one per entry, which
    numpy's assert_allclose does not take), naming the worst entry where it fails."""
    actual, desired = np.asarray(actual, np.float64), np.asarray(desired, np.float64)
    excess = np.abs(actual - desired) - np.broadcast_to(bound, actual.shape)
    worst = np.unravel_index(np.argmax(excess), excess.shape) if excess.size else ()
    assert excess.size == 0 or excess[worst] <= 0, (
        f"{err_msg} |actual - desired| exceeds its bound at {worst}: actual {actual[worst]!r}, desired {desired[worst]!r}, "
        f"bound {np.broadcast_to(bound, actual.shape)[worst]!r}")
