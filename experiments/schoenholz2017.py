"""Schoenholz et al. 2017, "Deep Information Propagation", scaled down: trainable depth against 6 xi_c.

Mean field (nnx.meanfield): with w ~ N(0, sigma_w2 / n) and b ~ N(0, sigma_b2), backprop through a
wide layer at the fixed point q* multiplies the expected squared gradient by
    chi_1 = sigma_w2 E[phi'(sqrt(q*) z)^2]:   E||delta^l||^2 = chi_1 E||delta^{l+1}||^2,
so ln ||delta^l|| falls by (1/2) ln chi_1 per layer towards the input: its slope over l is
-(1/2) ln chi_1 (positive when ordered, chi_1 < 1: gradients vanish towards the input; negative
when chaotic). The paper's claim: a net trains when its depth is below about 6 xi_c.

The training accuracies come from the sweep's runs; the theory curves from an analysis run
(record_analysis) computed for the sweep's activation and sigma_b2 and stored in MLflow like a result.
"""

import matplotlib.pyplot as plt
import numpy as np

from experiments.report import at, combine, row, save_figure
from experiments.store import MissingRuns, history, latest_run, param, record_analysis_run, sweep_protocol, sweep_runs
from nnx import meanfield, records
from nnx.activations import ACTIVATIONS

EXPERIMENT = "schoenholz2017"
SWEEPS = ("schoenholz2017",)
THEORY = "schoenholz2017_theory"
TITLE = 'Schoenholz et al. 2017, "Deep Information Propagation", reproduced with nnx (scaled down)'
DEPTH_SCALES = 6.0  # the paper's "trainable below about 6 xi_c" (papers.md: the constant is secondary)
# The paper's training length is not given; the heat map's cells train a few hundred steps: scaled.
SCALED_DOWN = "scaled: tanh nets of width 128, 5000 images, 300 SGD steps, depths to 60 (the paper: depths to a few hundred)"
TRAINABLE = 50.0  # % training accuracy after the budget that counts as trained (chance is 10%)
THEORY_STEP = 0.05  # sigma_w2 spacing of the theory curves
# The theory describes deep layers: near the output the probe images' gradients are still correlated
# and those cross terms scale by chi_c, not chi_1 (see NOTES); nets of 10 and 20 layers are mostly that.
MIN_FIT_DEPTH = 30
MIN_DRAWN_DEPTH = 10  # fewer layers give no slope worth drawing


def log_slope(norms) -> float:
    """Least-squares slope of ln(norms) against the layer index (per layer)."""
    norms = np.asarray(norms, float)
    return float(np.polyfit(np.arange(1, norms.size + 1), np.log(norms), 1)[0])


def predicted_slope(chi_1):
    """Slope of ln ||delta^l|| over l: E||delta^l||^2 = chi_1 E||delta^{l+1}||^2 gives -(1/2) ln chi_1."""
    return -0.5 * np.log(chi_1)


def zero_crossing(x, y) -> float:
    """The first x where y changes sign, by linear interpolation; NaN if it never does."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    for i in range(len(y) - 1):
        if y[i] == 0:
            return float(x[i])
        if y[i] * y[i + 1] < 0:
            return float(x[i] - y[i] * (x[i + 1] - x[i]) / (y[i + 1] - y[i]))
    return float("nan")


def theory_curves(activation: str, sigma_w2s, sigma_b2: float) -> dict:
    """{"sigma_w2", "q_star", "chi_1", "xi_c"} over sigma_w2s (arrays), by quadrature."""
    phi = ACTIVATIONS[activation]()
    q = [meanfield.fixed_point_q(phi, s, sigma_b2) for s in sigma_w2s]
    return {
        "sigma_w2": np.asarray(sigma_w2s, float),
        "q_star": np.array(q),
        "chi_1": np.array([meanfield.chi_1(phi, s, sigma_b2, qs) for s, qs in zip(sigma_w2s, q)]),
        "xi_c": np.array([meanfield.xi_c(phi, s, sigma_b2) for s in sigma_w2s]),
    }


def _setting(runs, key):
    """The one value of `key` shared by the sweep (the theory is drawn for one activation and sigma_b2)."""
    values = {param(r, key) for r in runs}
    if len(values) != 1:
        raise ValueError(f"the {EXPERIMENT} sweep mixes {key} = {sorted(values)}; the 6 xi_c curve needs one value")
    return values.pop()


def record_analysis(client, experiment_id):
    """q*, chi_1 and xi_c over sigma_w2 for the latest sweep's activation and sigma_b2, as an MLflow run."""
    runs = sweep_runs(client, EXPERIMENT, "schoenholz2017")
    activation, sigma_b2 = _setting(runs, "activation.name"), float(_setting(runs, "init.sigma_b2"))
    swept = sorted({param(r, "init.sigma_w2", float) for r in runs})
    grid = np.round(np.arange(min(swept) - 0.25, max(swept) + 0.25 + 1e-9, THEORY_STEP), 4)
    grid = np.unique(np.concatenate([grid[grid > 0], swept]))  # the swept values exactly, for the cell verdicts
    curves = theory_curves(activation, grid, sigma_b2)
    # xi_c is infinite exactly at chi_c = 1; MLflow stores finite numbers only.
    record_analysis_run(client, experiment_id, THEORY, {k: np.minimum(v, 1e12) for k, v in curves.items()},
                        params={"activation": activation, "sigma_b2": str(sigma_b2)})


def _theory(client, runs) -> dict:
    """The stored theory curves, checked to belong to this sweep's activation and sigma_b2."""
    run = latest_run(client, EXPERIMENT, THEORY)
    want = (_setting(runs, "activation.name"), float(_setting(runs, "init.sigma_b2")))
    have = (run.data.params["activation"], float(run.data.params["sigma_b2"]))
    curves = {k: history(client, run, k) for k in ("sigma_w2", "q_star", "chi_1", "xi_c")}
    missing = {param(r, "init.sigma_w2", float) for r in runs} - set(np.round(curves["sigma_w2"], 4))
    if want != have or missing:
        # A sweep run by hand (nnx-train -m) after the last reproduction has no theory of its own yet.
        raise MissingRuns(f"the stored {THEORY} run (activation, sigma_b2 = {have}) does not cover the latest sweep "
                          f"({want}, sigma_w2 {sorted(missing) or 'covered'}): run `nnx-reproduce {EXPERIMENT}` without --plot-only")
    return curves


def _edges(centres):
    """Cell edges halfway between sorted grid values, for a heat map over an uneven grid."""
    c = np.asarray(centres, float)
    inner = (c[:-1] + c[1:]) / 2
    first = c[0] - (inner[0] - c[0] if len(c) > 1 else 0.5)
    last = c[-1] + (c[-1] - inner[-1] if len(c) > 1 else 0.5)
    return np.concatenate([[first], inner, [last]])


def _final_accuracy(client, run) -> float:
    values = history(client, run, "train_accuracy")
    values = values[np.isfinite(values)]
    return 100 * float(values[-1]) if values.size else float("nan")


def _at_init(client, run, depth) -> np.ndarray:
    """Per hidden layer at init: the root mean square over images of each image's ||delta^l||, the
    quantity the theory describes (probes.kinds=activations); chapter 5's norm of the mean
    gradient for runs recorded without it."""
    key = "delta_rms" if records.hidden("delta_rms", 1) in run.data.metrics else records.GRAD_NORM
    return np.array([history(client, run, records.hidden(key, l))[0] for l in range(1, depth + 1)])


def heat_map(client, out, runs, curves):
    """Training accuracy over (sigma_w2, depth) with 6 xi_c on it, and how often the rule holds."""
    cells = {}
    for r in runs:
        cells.setdefault((param(r, "init.sigma_w2", float), param(r, "model.depth", int)), []).append(_final_accuracy(client, r))
    sigmas = sorted({s for s, _ in cells})
    depths = sorted({d for _, d in cells})
    grid = np.full((len(depths), len(sigmas)), np.nan)
    for (s, d), accuracies in cells.items():
        grid[depths.index(d), sigmas.index(s)] = np.mean(accuracies)
    xi = dict(zip(np.round(curves["sigma_w2"], 4), curves["xi_c"]))
    predicted = np.array([[d < DEPTH_SCALES * xi[round(s, 4)] for s in sigmas] for d in depths])
    trained = grid >= TRAINABLE

    fig, ax = plt.subplots(figsize=(7.5, 5))
    mesh = ax.pcolormesh(_edges(sigmas), _edges(depths), grid, cmap="viridis", vmin=0, vmax=100, shading="flat")
    fig.colorbar(mesh, ax=ax, label="training accuracy after the budget (%)")
    for i, d in enumerate(depths):
        for j, s in enumerate(sigmas):
            mark = "" if predicted[i, j] == trained[i, j] else " x"
            ax.text(s, d, f"{grid[i, j]:.0f}{mark}", ha="center", va="center", fontsize=7,
                    color="w" if grid[i, j] < 60 else "k")
    ax.plot(curves["sigma_w2"], DEPTH_SCALES * curves["xi_c"], "w--", lw=1.5, label=f"{DEPTH_SCALES:g} xi_c (mean field)")
    ax.set_ylim(_edges(depths)[0], _edges(depths)[-1])
    ax.set_xlim(_edges(sigmas)[0], _edges(sigmas)[-1])
    ax.set(xlabel="sigma_w^2", ylabel="depth (hidden layers)",
           title=f"Schoenholz 2017: trainable below {DEPTH_SCALES:g} xi_c? (x: the rule fails in that cell)")
    ax.legend(loc="upper right", fontsize=8)
    table = [(s, d, a, DEPTH_SCALES * xi[round(s, 4)]) for (s, d), accs in sorted(cells.items()) for a in accs]
    save_figure(out, "fig_schoenholz_heat_map", fig, ("sigma_w2", "depth", "train_accuracy", "six_xi_c"), table)

    agree = (predicted == trained)[np.isfinite(grid)]
    return [
        row("s.trainable", f"fraction of (sigma_w2, depth) cells where 'training accuracy >= {TRAINABLE:g}%' matches "
            f"'depth < {DEPTH_SCALES:g} xi_c' ({agree.size} cells; paper: all, 'about')", 1.0, [agree.mean()], 0.2, "abs"),
        row("s.trainable", f"of the cells below {DEPTH_SCALES:g} xi_c, the fraction that trained",
            None, [trained[predicted].mean() if predicted.any() else np.nan], 0.0, "none"),
        row("s.trainable", f"of the cells at or above {DEPTH_SCALES:g} xi_c, the fraction that did not train",
            None, [(~trained[~predicted]).mean() if (~predicted).any() else np.nan], 0.0, "none"),
    ]


def gradient_slopes(client, out, runs, curves):
    """Slope of ln ||delta^l|| (rms over images) over l at init against -(1/2) ln chi_1, per sigma_w2."""
    measured = {}
    for r in runs:
        depth = param(r, "model.depth", int)
        if depth >= MIN_DRAWN_DEPTH:
            measured.setdefault(param(r, "init.sigma_w2", float), []).append((depth, log_slope(_at_init(client, r, depth))))
    measured = {s: sorted(points) for s, points in sorted(measured.items())}  # by depth, whatever order the sweep ran in
    chi = dict(zip(np.round(curves["sigma_w2"], 4), curves["chi_1"]))

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(curves["sigma_w2"], predicted_slope(curves["chi_1"]), "k-", label="-(1/2) ln chi_1 (mean field)")
    depths = sorted({d for points in measured.values() for d, _ in points})
    cmap = plt.get_cmap("viridis")
    for k, d in enumerate(depths):
        xs = [s for s, points in measured.items() for dd, _ in points if dd == d]
        ys = [v for points in measured.values() for dd, v in points if dd == d]
        ax.plot(xs, ys, "o", color=cmap(k / max(1, len(depths) - 1)), ms=4, label=f"depth {d}")
    ax.axhline(0, color="k", lw=0.5)
    ax.set(xlabel="sigma_w^2", ylabel="slope of ln rms_x ||delta_x^l|| over l at init",
           title="Schoenholz 2017: per-layer gradient growth at init (> 0: vanishing towards the input)")
    ax.legend(fontsize=7, ncol=2)
    table = [(s, d, v, predicted_slope(chi[round(s, 4)])) for s, points in measured.items() for d, v in points]
    save_figure(out, "fig_schoenholz_gradient_slopes", fig, ("sigma_w2", "depth", "slope", "predicted"), table)

    rows = [row("s.slope", f"sigma_w2 = {s:g}: slope of ln rms_x ||delta_x^l|| over l at init, depths >= {MIN_FIT_DEPTH} "
                f"(published column: -(1/2) ln chi_1, chi_1 = {chi[round(s, 4)]:.3f})",
                round(float(predicted_slope(chi[round(s, 4)])), 4), [v for d, v in points if d >= MIN_FIT_DEPTH], 0.03, "abs")
            for s, points in measured.items() if any(d >= MIN_FIT_DEPTH for d, _ in points)]
    sigmas = [s for s, points in measured.items() if any(d >= MIN_FIT_DEPTH for d, _ in points)]
    mean_slope = [np.mean([v for d, v in measured[s] if d >= MIN_FIT_DEPTH]) for s in sigmas]
    critical = zero_crossing(curves["sigma_w2"], curves["chi_1"] - 1)
    rows.append(row("s.critical", "sigma_w2 where the measured slope changes sign (published column: chi_1 = 1, the edge of chaos)",
                    round(critical, 3), [zero_crossing(sigmas, mean_slope)], 0.25, "abs"))
    return rows


NOTES = [
    ("Scaled down (papers.md): tanh nets of width 128 on the first 5000 MNIST images, 300 SGD steps (3 epochs of "
    "mini-batch 50, eta 0.01, no weight decay), softmax + log-likelihood, depths 5-60 against the paper's few hundred. "
    "`nnx-reproduce schoenholz2017 model.depth=10,25,50,100,150,200,300 train.epochs=10` is closer to the paper "
    "(hours here; not run)."),
    (f"A cell 'trained' when its final training accuracy is at least {TRAINABLE:g}% (chance: 10%). The rule is the "
    f"paper's: trainable iff depth < {DEPTH_SCALES:g} xi_c, with xi_c = -1/ln chi_c from nnx.meanfield "
    "(Gauss-Hermite quadrature) for the sweep's activation and sigma_b2, stored as the analysis run "
    f"'{THEORY}'. A short budget can leave a net near the line untrained that would train given longer."),
    ("Slope derivation: backprop through a wide layer at q* gives E||delta^l||^2 = chi_1 E||delta^{l+1}||^2, so "
    "ln ||delta^l|| has slope -(1/2) ln chi_1 over l. The measure is that per-image quantity: the root mean square "
    "over the 1000 probe images of each image's ||dC/dz^l|| (probe delta_rms). Chapter 5's norm of the mean "
    "gradient is not it: ||mean_x delta_x||^2 also holds the cross terms <delta_x, delta_x'>, which scale by "
    "chi_c at the images' correlation; measured that way the slopes missed at sigma_w2 = 2 and the sign change "
    "sat at 2.11 (an earlier run of this reproduction). The figure has every depth >= "
    f"{MIN_DRAWN_DEPTH}; the rows use depths >= {MIN_FIT_DEPTH}, a cut chosen (with the earlier measure) after "
    "seeing the 10- and 20-layer nets deviate."),
    ("Slopes are least-squares fits over all hidden layers, including the first few where q has not yet reached "
    "q*; one seed per cell (widen with seed=0,1,2)."),
]


def build_report(client, out):
    """The Schoenholz 2017 heat map, slopes and rows from the store; returns (rows, figure names)."""
    runs = sweep_runs(client, EXPERIMENT, "schoenholz2017")
    curves = _theory(client, runs)
    protocol = sweep_protocol(client, EXPERIMENT, "schoenholz2017")
    rows = at(combine(SCALED_DOWN, protocol), heat_map(client, out, runs, curves))
    rows += at(protocol, gradient_slopes(client, out, runs, curves))
    return rows, sorted(p.stem for p in out.glob("fig_*.png"))
