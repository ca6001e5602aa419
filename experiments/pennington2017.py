"""Pennington, Schoenholz & Ganguli 2017: dynamical isometry, redrawn from MLflow.

Input-output Jacobian spectra at initialization for {linear, ReLU, tanh} x {Gaussian, orthogonal}
weights, each at chi_1 = 1, over depth (experiments/spectra.py reads the stored singular values).
"""

import matplotlib.pyplot as plt
import numpy as np

from experiments import spectra
from experiments.report import row, save_figure
from experiments.store import param, sweep_runs

EXPERIMENT = "pennington2017"
TITLE = "Pennington, Schoenholz & Ganguli 2017: dynamical isometry at initialization"
SWEEPS = ("pennington2017",)
NAMES = {"identity": "linear", "relu": "ReLU", "tanh": "tanh"}
GROWS = 2.0       # "grows with depth": Var(sigma^2) at least doubles from the shallowest to the deepest L
ISOMETRY = 10.0   # tanh's Gaussian spread at least 10x its orthogonal one at the deepest L


def _case(run) -> tuple[str, str]:
    return NAMES[param(run, "activation.name")], param(run, "init.name")


def _cases(client):
    """{(activation, init): {L: [spectra over seeds]}} and one run per case (for its scales)."""
    runs = sweep_runs(client, EXPERIMENT, "pennington2017")
    grouped, first = {}, {}
    for run in runs:
        grouped.setdefault(_case(run), []).append(run)
        first.setdefault(_case(run), run)
    order = lambda case: (list(NAMES.values()).index(case[0]), case[1])
    return {c: spectra.by_depth(client, grouped[c]) for c in sorted(grouped, key=order)}, first


def _variance(by_L):
    """{L: [Var(sigma^2) per seed]}."""
    return {L: [spectra.sq_variance(s) for s in ss] for L, ss in by_L.items()}


def densities(out, cases):
    acts = list(dict.fromkeys(a for a, _ in cases))
    inits = sorted({i for _, i in cases})
    fig, axes = plt.subplots(len(acts), len(inits), figsize=(4 * len(inits), 2.8 * len(acts)), sharex=True, squeeze=False)
    bins = spectra.log_bins([s for by_L in cases.values() for ss in by_L.values() for s in ss])
    table = []
    for (act, init), by_L in cases.items():
        ax = axes[acts.index(act), inits.index(init)]
        spectra.density_panel(ax, by_L, bins, f"{act}, {init}", table, f"{act}, {init}")
    fig.suptitle("Pennington 2017: singular values of da^L/da^1 at chi_1 = 1 (density of log10 sigma; grey: [1/2, 2])")
    fig.tight_layout()
    save_figure(out, "fig_pennington_spectra", fig, ("case", "L", "bin_lo", "bin_hi", "density"), table)


def variance_vs_depth(out, cases):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    table = []
    for (act, init), by_L in cases.items():
        var = _variance(by_L)
        Ls = np.array(list(var))
        mean = np.array([np.mean(v) for v in var.values()])
        ax.plot(Ls, np.maximum(mean, 1e-16), "o-" if init == "gaussian" else "s--", label=f"{act}, {init}")
        table += [(act, init, L, m) for L, m in zip(Ls, mean)]
    Ls = np.array(sorted({L for by_L in cases.values() for L in by_L}))
    ax.plot(Ls, [spectra.linear_gaussian_variance(L) for L in Ls], "k:", label="free probability: L (linear Gaussian)")
    spectra.depth_axis(ax, Ls)
    ax.set(yscale="log", ylabel="Var(sigma^2)",
           title="Pennington 2017: spread of the squared singular values against depth")
    ax.legend(fontsize=7)
    save_figure(out, "fig_pennington_variance_vs_depth", fig, ("activation", "init", "L", "var_sq_sv"), table)


def claims(cases, first):
    rows = []
    for case in cases:
        run = first[case]
        q_star, chi = spectra.mean_field(run)
        rows.append(row("pen.critical", f"{case[0]}, {case[1]}: chi_1 at sigma_w2 = {spectra.weight_variance(run):.5g}, "
                        f"sigma_b2 = {param(run, 'init.sigma_b2', float):g} "
                        f"({'every q is a fixed point' if np.isnan(q_star) else f'q* = {q_star:.3g}'})", 1.0, [chi], 1e-3, "abs"))
    variances = {case: _variance(by_L) for case, by_L in cases.items()}
    deepest = max(L for var in variances.values() for L in var)
    shallowest = min(L for var in variances.values() for L in var)
    for init in ("gaussian", "orthogonal"):
        var = variances.get(("ReLU", init))
        if var:
            ratio = np.array(var[deepest]) / np.array(var[shallowest])
            rows.append(row("pen.relu", f"ReLU, {init}: Var(sigma^2) at L = {deepest} / at L = {shallowest} (no isometry: grows)",
                            None, ratio, GROWS, "greater"))
    gauss, orth = variances.get(("tanh", "gaussian")), variances.get(("tanh", "orthogonal"))
    if gauss and orth:
        rows.append(row("pen.tanh", f"tanh: Var(sigma^2) at L = {deepest}, Gaussian / orthogonal (isometry needs orthogonal weights)",
                        None, np.array(gauss[deepest]) / np.array(orth[deepest]), ISOMETRY, "greater"))
        near = [spectra.fraction_near_one(s) for s in cases[("tanh", "orthogonal")][deepest]]
        rows.append(row("pen.tanh", f"tanh, orthogonal: fraction of sigma in [1/2, 2] at L = {deepest}", None, near, 0.0, "none"))
    linear = variances.get(("linear", "gaussian"))
    if linear:
        rows += [row("pen.linear", f"linear, Gaussian: Var(sigma^2) at L = {L} (free probability: L)", spectra.linear_gaussian_variance(L),
                     v, 0.25, "rel") for L, v in linear.items()]
    ranked = sorted(variances, key=lambda c: np.mean(variances[c][deepest]))
    for rank, case in enumerate(ranked, 1):
        rows.append(row("pen.order", f"rank {rank} (smallest spread first) at L = {deepest}: {case[0]}, {case[1]}: Var(sigma^2)",
                        None, variances[case][deepest], 0.0, "none"))
    return rows


NOTES = [
    ("No training: each run is the initialization (train.epochs=0), its end-to-end Jacobian da^L/da^1 = J^L ... J^2 "
    "measured on probe images; L = depth - 1 factors of width x width (the first layer, 784 -> width, is not square). "
    "Default: width 512, L = 2, 8, 32 (width >= 16 L, papers.md). Wider and deeper: "
    "`nnx-reproduce pennington2017 model.width=1024 model.depth=3,9,33,65` "
    "(~16x the time: each SVD costs width^3, one per layer and image)."),
    ("Each case sits at chi_1 = 1: linear sigma_w2 = 1; ReLU sigma_w2 = 2 (He), orthogonal gain sqrt(2); tanh sigma_b2 = 1e-4 "
    "with sigma_w2 = 1.0860 (orthogonal gain = its square root) found with nnx.meanfield; the pen.critical rows recompute "
    "chi_1 and q* from each run's stored scales. Orthogonal weights with gain g give the per-unit variance of sigma_w2 = g^2."),
    ("A linear net's Jacobian does not depend on the input: one image gives its spectrum. ReLU and tanh pool 4 images. "
    "ReLU's exact zeros (a direction through a unit that is off) are drawn in the first bin of the densities."),
    ("Free probability (Fuss-Catalan moments) gives Var(sigma^2) = L for linear Gaussian products in the wide limit; a "
    "wide-limit argument also puts ReLU at about 2L (Gaussian) and L (orthogonal), but orthogonal ReLU converges slowly "
    "in the width (half of each layer's units are off), so only the linear case is compared with a number."),
    (f"Judged claims: ReLU's spread grows (at least x{GROWS:g} from the shallowest to the deepest L) for both inits; tanh's "
    f"Gaussian spread is at least {ISOMETRY:g}x its orthogonal one at the deepest L. The pen.order rows give the measured "
    "ordering of all six cases at the deepest L."),
]


def build_report(client, out):
    cases, first = _cases(client)
    densities(out, cases)
    variance_vs_depth(out, cases)
    rows = claims(cases, first)
    return rows, sorted(p.stem for p in out.glob("fig_*.png"))
