"""Input-output Jacobian spectra read back from MLflow, shared by saxe2014 and pennington2017.

Each run stores the singular values of da^L/da^1 = J^L ... J^2 (the square part of the net:
model.depth - 1 factors of width x width) in history.npz as "spectrum/io_jacobian", one row per
probe step; with train.epochs=0 the only row is the initialization.
"""

import matplotlib.pyplot as plt
import numpy as np

from experiments.store import artifact_npz, param
from nnx import meanfield, records
from nnx.activations import ACTIVATIONS

# "Near 1": within a factor 2 either way, |log2 sigma| <= 1. A signal or gradient along such a
# direction neither vanishes nor explodes by more than 2x over the whole chain; the band is
# symmetric on the log scale on which the spectra spread.
NEAR_ONE = (0.5, 2.0)
FLOOR = 1e-12  # singular values below this are drawn in the first bin (exact zeros: dead ReLUs)


def spectrum(client, run) -> np.ndarray:
    """The singular values of the run's end-to-end Jacobian at initialization (step 0)."""
    return np.asarray(artifact_npz(client, run, "history.npz")[records.SPECTRUM_IO][0], float)


def factors(run) -> int:
    """L, the number of width x width factors in the measured chain: hidden layers - 1."""
    return param(run, "model.depth", int) - 1


def sq_variance(sv) -> float:
    """Var(sigma^2): Pennington's sigma^2_{JJ^T}, the spread of the squared singular values."""
    return float(np.var(np.asarray(sv) ** 2))


def fraction_near_one(sv, band=NEAR_ONE) -> float:
    sv = np.asarray(sv)
    return float(np.mean((sv >= band[0]) & (sv <= band[1])))


def linear_gaussian_variance(L: int) -> float:
    """Var(sigma^2) of a product of L wide Gaussian matrices with entries N(0, 1/N).

    The squared singular values' moments are the Fuss-Catalan numbers FC_L(k) = binom((L+1)k, k)
    / (Lk + 1): mean FC_L(1) = 1, second moment FC_L(2) = L + 1, so the variance is L.
    """
    return float(L)


def weight_variance(run) -> float:
    """sigma_w^2 of the run's init: gain^2 for orthogonal weights (same per-unit variance)."""
    return param(run, "init.gain", float) ** 2 if param(run, "init.name") == "orthogonal" else param(run, "init.sigma_w2", float)


def mean_field(run) -> tuple[float, float]:
    """(q*, chi_1) of the run's activation and scales (nnx.meanfield, Gaussian-weight theory).

    q* is nan where every q is a fixed point (a linear or ReLU net at chi_1 = 1 with no bias):
    there chi_1 does not depend on q.
    """
    phi = ACTIVATIONS[param(run, "activation.name")]()
    sigma_w2, sigma_b2 = weight_variance(run), param(run, "init.sigma_b2", float)
    q_star = meanfield.fixed_point_q(phi, sigma_w2, sigma_b2)
    chi = float(meanfield.chi_1(phi, sigma_w2, sigma_b2, q_star=max(q_star, 1e-12)))
    every_q = all(abs(meanfield.variance_map(phi, q, sigma_w2, sigma_b2) - q) < 1e-5 * q for q in (0.5, 2.0))
    return (float("nan") if every_q else q_star), chi


def by_depth(client, runs) -> dict:
    """{L: [spectrum per run (seed)]}, sorted by L."""
    out = {}
    for run in runs:
        out.setdefault(factors(run), []).append(spectrum(client, run))
    return dict(sorted(out.items()))


def log_bins(spectra, n=60):
    """Fixed log-spaced bins covering every spectrum drawn on one figure."""
    pooled = np.concatenate([np.ravel(s) for s in spectra])
    lo = np.log10(max(pooled[pooled > 0].min(initial=1.0), FLOOR)) if np.any(pooled > 0) else -1
    hi = np.log10(max(pooled.max(), 1.0))
    return np.logspace(np.floor(lo) - 0.1, np.ceil(hi) + 0.1, n + 1)


def density_panel(ax, spectra_by_L: dict, bins, title: str, table: list, label: str):
    """One curve per depth: the density of log10 sigma (so every decade has equal width)."""
    colors = plt.cm.viridis(np.linspace(0, 0.9, max(len(spectra_by_L), 1)))
    for color, (L, spectra) in zip(colors, spectra_by_L.items()):
        sv = np.maximum(np.concatenate(spectra), bins[0])
        counts, _ = np.histogram(sv, bins)
        density = counts / counts.sum() / np.diff(np.log10(bins))
        ax.step(bins[:-1], density, where="post", color=color, label=f"L = {L}")
        table += [(label, L, lo, hi, d) for lo, hi, d in zip(bins[:-1], bins[1:], density)]
    ax.axvspan(*NEAR_ONE, color="0.9", zorder=0)
    ax.set_xscale("log")
    ax.set(title=title, xlabel="singular value of da^L/da^1")
    ax.legend(fontsize=7)


def depth_axis(ax, Ls):
    """A log2 axis of L labelled at the measured depths only."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(Ls), [str(L) for L in Ls])
    ax.minorticks_off()
    ax.set_xlabel("L (width x width factors of the chain: depth - 1)")
