"""Saxe, McClelland & Ganguli 2014: Jacobian spectra at initialization, redrawn from MLflow.

Deep linear nets with Gaussian or orthogonal weights, and tanh nets with orthogonal weights at gains
0.9, 1 and 1.1, over depth (experiments/spectra.py reads the stored singular values).
"""

import matplotlib.pyplot as plt
import numpy as np

from experiments import spectra
from experiments.report import row, save_figure
from experiments.store import group, sweep_runs

EXPERIMENT = "saxe2014"
TITLE = "Saxe, McClelland & Ganguli 2014: input-output Jacobian spectra at initialization"
SWEEPS = ("saxe2014_linear", "saxe2014_tanh")
COLLAPSED = 0.05  # "collapse": at most this fraction of singular values left within a factor 2 of 1
FINITE = 0.1      # "a finite fraction": at least this fraction within a factor 2 of 1


def _cases(client):
    """{label: {L: [spectra over seeds]}} for every stored case, plus the tanh runs by gain."""
    linear = group(sweep_runs(client, EXPERIMENT, "saxe2014_linear"), "init.name")
    tanh = group(sweep_runs(client, EXPERIMENT, "saxe2014_tanh"), "init.gain", float)
    cases = {f"linear, {init}": spectra.by_depth(client, runs) for init, runs in linear.items()}
    cases.update({f"tanh, orthogonal g = {g:g}": spectra.by_depth(client, runs) for g, runs in tanh.items()})
    return cases, tanh


def densities(out, cases):
    fig, axes = plt.subplots(1, len(cases), figsize=(3.6 * len(cases), 3.4), sharey=True, squeeze=False)
    bins = spectra.log_bins([s for by_L in cases.values() for ss in by_L.values() for s in ss])
    table = []
    for ax, (label, by_L) in zip(axes[0], cases.items()):
        spectra.density_panel(ax, by_L, bins, label, table, label)
    axes[0, 0].set_ylabel("density of log10 singular value")
    fig.suptitle("Saxe 2014: singular values of da^L/da^1 at init (L = depth - 1 factors; grey: [1/2, 2])", y=1.04)
    save_figure(out, "fig_saxe_spectra", fig, ("case", "L", "bin_lo", "bin_hi", "density"), table)


def spread(out, cases):
    """Var(sigma^2) and the fraction near 1 against L, every case on one pair of axes."""
    fig, (ax_var, ax_frac) = plt.subplots(1, 2, figsize=(11, 4))
    table = []
    for label, by_L in cases.items():
        Ls = np.array(list(by_L))
        var = [np.mean([spectra.sq_variance(s) for s in ss]) for ss in by_L.values()]
        frac = [np.mean([spectra.fraction_near_one(s) for s in ss]) for ss in by_L.values()]
        ax_var.plot(Ls, np.maximum(var, 1e-16), "o-", label=label)
        ax_frac.plot(Ls, frac, "o-", label=label)
        table += [(label, L, v, f) for L, v, f in zip(Ls, var, frac)]
    Ls = np.array(sorted({L for by_L in cases.values() for L in by_L}))
    ax_var.plot(Ls, [spectra.linear_gaussian_variance(L) for L in Ls], "k:", label="free probability: L (linear Gaussian)")
    ax_var.set(yscale="log", ylabel="Var(sigma^2)", title="spread of the squared singular values")
    ax_frac.set(ylabel="fraction of singular values in [1/2, 2]", title="fraction near 1")
    for ax in (ax_var, ax_frac):
        spectra.depth_axis(ax, Ls)
    ax_var.legend(fontsize=7)
    save_figure(out, "fig_saxe_spread_vs_depth", fig, ("case", "L", "var_sq_sv", "fraction_near_1"), table)


def _per_seed(by_L, L, measure):
    return [measure(s) for s in by_L[L]]


def claims(cases, tanh_runs):
    rows = []
    orth, gauss = cases.get("linear, orthogonal"), cases.get("linear, gaussian")
    if orth:
        worst = max(np.max(np.abs(s - 1)) for ss in orth.values() for s in ss)
        rows.append(row("saxe.orthogonal", f"linear, orthogonal: max |sigma - 1| over every singular value, L = {min(orth)}..{max(orth)} "
                        "(exact isometry; float32 products)", 0.0, [worst], 1e-4, "abs"))
    if gauss:
        for L in gauss:
            rows.append(row("saxe.gaussian", f"linear, Gaussian sigma_w2 = 1: Var(sigma^2) at L = {L} (free probability: L)",
                            spectra.linear_gaussian_variance(L), _per_seed(gauss, L, spectra.sq_variance), 0.25, "rel"))
        first, last = min(gauss), max(gauss)
        grow = np.array(_per_seed(gauss, last, spectra.sq_variance)) / np.array(_per_seed(gauss, first, spectra.sq_variance))
        rows.append(row("saxe.gaussian", f"linear, Gaussian: Var(sigma^2) at L = {last} / at L = {first} (grows with depth)", None, grow, 2.0, "greater"))
    for g, runs in tanh_runs.items():
        by_L = cases[f"tanh, orthogonal g = {g:g}"]
        deepest = max(by_L)
        q_star, chi = spectra.mean_field(runs[0])
        frac = _per_seed(by_L, deepest, spectra.fraction_near_one)
        where = f"tanh, orthogonal g = {g:g} (mean field: q* = {q_star:.3g}, chi_1 = {chi:.4g}): fraction of sigma in [1/2, 2] at L = {deepest}"
        if g < 1:
            rows.append(row("saxe.tanh", f"{where} (collapse)", 0.0, frac, COLLAPSED, "abs"))
        elif g == 1:
            rows.append(row("saxe.tanh", f"{where} (a finite fraction stays near 1)", None, frac, FINITE, "greater"))
        else:
            rows.append(row("saxe.tanh", f"{where}", None, frac, 0.0, "none"))
        rows.append(row("saxe.tanh", f"tanh, orthogonal g = {g:g}: largest singular value at L = {deepest}", None,
                        _per_seed(by_L, deepest, np.max), 0.0, "none"))
    return rows


NOTES = [
    ("No training: each run is the initialization (train.epochs=0), its end-to-end Jacobian da^L/da^1 = J^L ... J^2 "
    "measured on probe images. The net's depth counts hidden layers; the first (784 -> width) is not square, so the "
    "chain has L = depth - 1 factors of width x width. Default: width 512, L = 2, 4, 8, 16, 32 (width >= 16 L, "
    "papers.md). Wider and deeper: `nnx-reproduce saxe2014 model.width=1024 model.depth=3,5,9,17,33,65` "
    "(~16x the time: each SVD costs width^3, one per layer and image)."),
    ("A linear net's Jacobian does not depend on the input, so its spectrum comes from one image; tanh spectra pool "
    "4 images (probes.jacobian_examples). Singular values are taken on the host in float64 from float32 products: "
    "Gaussian chains' smallest values (below about 1e-7 of the largest) are round-off, which Var(sigma^2) does not feel."),
    ("Free probability: the squared singular values of a product of L wide N(0, 1/N) matrices have the Fuss-Catalan "
    "moments, mean 1 and variance L; finite width adds a few percent at L/N = 1/16 (tolerance 25%)."),
    ("'Near 1' is the band [1/2, 2] (|log2 sigma| <= 1): within a factor 2 the chain neither vanishes nor explodes. "
    f"'Collapse' reads as at most {COLLAPSED:.0%} of the singular values left in the band, 'a finite fraction' as at least "
    f"{FINITE:.0%}. Saxe's g > 1 case has no number in papers.md: it is reported, not judged."),
    ("q* and chi_1 beside each gain come from nnx.meanfield with sigma_w2 = g^2 and sigma_b2 = 0 (the Gaussian-weight "
    "theory: orthogonal weights give the same per-unit variance). At g = 1 the iteration approaches q* = 0 only as a "
    "power law, so the q* printed is its value after 500 layers."),
    ("With MNIST inputs the first layer's q is set by the images (about ||x||^2 / 784), not q*. At g = 1 it decays slowly "
    "toward 0 and every tanh' < 1 shaves a little off each factor, so the spectrum drifts below 1 with depth; g = 1.1 "
    "with sigma_b2 = 0 has chi_1 just above 1 in mean field, itself near critical at these depths. Compare the g rows "
    "in fig_saxe_spread_vs_depth rather than one depth."),
]


def build_report(client, out):
    cases, tanh_runs = _cases(client)
    densities(out, cases)
    spread(out, cases)
    rows = claims(cases, tanh_runs)
    return rows, sorted(p.stem for p in out.glob("fig_*.png"))
