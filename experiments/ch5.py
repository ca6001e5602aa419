"""Chapter 5 (the unstable gradient problem), redrawn from the runs stored in MLflow.

Every function here reads finished runs back by tag (experiments.store) and writes figures,
CSVs and report rows; none sees a training result in memory.
"""

import matplotlib.pyplot as plt
import numpy as np

from experiments.plots import band
from experiments.report import at, row, save_figure
from experiments.store import artifact_npz, group, history, latest_run, param, per_hidden_layer, record_analysis_run, sweep_protocol, sweep_runs
from nnx import meanfield, records, theory
from nnx.activations import ACTIVATIONS
from nnx.data import input_sq_norm

EXPERIMENT = "ch5"
SWEEPS = ("ch5_depth", "ch5_speed", "ch5_activations")
BOOK_ACCURACY = {1: 96.48, 2: 96.90, 3: 96.57, 4: 96.53}
BOOK_INIT_NORMS = {2: [0.07, 0.31], 3: [0.012, 0.060, 0.283], 4: [0.003, 0.017, 0.070, 0.285]}
COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]


def _norms(client, run, depth):
    """[depth, steps] gradient norms per hidden layer over the run."""
    return per_hidden_layer(client, run, records.GRAD_NORM, depth)


def depth_accuracy(client, out):
    """5.1-5.4: validation accuracy of 1 to 4 hidden layers, best and final epoch."""
    rows, table, lowest = [], [], 94.0
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (depth, runs) in enumerate(group(sweep_runs(client, EXPERIMENT, "ch5_depth"), "model.depth", int).items()):
        curves = np.stack([100 * history(client, r, "val_accuracy") for r in runs])
        for r, curve in zip(runs, curves):
            table += [(depth, param(r, "seed"), e, v) for e, v in enumerate(curve)]
        band(ax, np.arange(curves.shape[1]), curves, COLORS[i], f"{depth} hidden")
        lowest = min(lowest, np.floor(curves[:, min(2, curves.shape[1] - 1):].min()))
        ax.axhline(BOOK_ACCURACY[depth], color=COLORS[i], ls="--", lw=0.8)
        sizes = param(runs[0], "model.sizes")
        rows.append(row(f"5.{depth}", f"{sizes} validation accuracy %, best epoch", BOOK_ACCURACY[depth], curves.max(axis=1), 1.0, "abs"))
        rows.append(row(f"5.{depth}", f"{sizes} validation accuracy %, final epoch", BOOK_ACCURACY[depth], curves[:, -1], 1.0, "abs"))
    ax.set(xlabel="epoch", ylabel="validation accuracy (%)", title="5.1-5.4: accuracy against depth (dashed: the book)")
    ax.set_ylim(lowest, 97.5)  # the first epochs sit far below: zoom where the book's numbers are
    ax.legend()
    save_figure(out, "fig_5_1_depth_accuracy", fig, ("depth", "seed", "epoch", "val_accuracy"), table)
    return rows


def bias_gradients(client, out, runs_by_depth):
    """5.5: dC/db of the first 6 neurons of each hidden layer of [784,30,30,10] at initialization."""
    runs = sorted(runs_by_depth[2], key=lambda r: param(r, "seed", int))
    grads = [artifact_npz(client, r, "history.npz") for r in runs]
    first = grads[0]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    table = []
    for l in (1, 2):
        values = first[records.hidden(records.INIT_BIAS_GRAD, l)][:6]
        ax.bar(np.arange(6) + 7 * (l - 1), values, color=COLORS[l - 1], label=f"hidden layer {l}")
        table += [(param(runs[0], "seed"), l, j + 1, v) for j, v in enumerate(values)]
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xticks(list(range(6)) + list(range(7, 13)), [f"{j}" for j in range(1, 7)] * 2)
    ax.set(xlabel="neuron (layer 1 | layer 2)", ylabel="dC/db at init",
           title=f"5.5: [784,30,30,10] at initialization (seed {param(runs[0], 'seed')})")
    ax.legend()
    save_figure(out, "fig_5_5_bias_gradients", fig, ("seed", "layer", "neuron", "dC_db"), table)
    first6 = lambda g, l: np.abs(g[records.hidden(records.INIT_BIAS_GRAD, l)][:6])
    ratio = [np.mean(first6(g, 2)) / np.mean(first6(g, 1)) for g in grads]
    return [row("5.5", "mean |dC/db| of the first 6 neurons, layer 2 / layer 1, at init (book: layer 2's bars are much larger)", None, ratio, 1.0, "greater")]


def _predicted(activation, init, depth, last_norm, sq_norm):
    return theory.layer_norms(ACTIVATIONS[activation](), init, [784] + [30] * depth + [10], sq_norm, last_norm)


def _mean_field_ratio(activation, init, runs_by_depth):
    """||delta^(l+1)|| / ||delta^l|| = 1 / sqrt(chi_1) in a wide net at the fixed point q*.

    Backprop through one layer gives E||delta^l||^2 = chi_1 E||delta^(l+1)||^2 (nnx.meanfield);
    the book's default init, w ~ N(0, 1/n_in) and b ~ N(0, 1), is sigma_w2 = 1, sigma_b2 = 1, so
    chi_1 ~ 0.042 for sigmoid and each layer's gradient is ~4.9 times the one before it.
    """
    width = param(next(iter(runs_by_depth.values()))[0], "model.width", int)
    var_w, sigma_b2 = theory.init_variances(init, width, width)
    return float(meanfield.chi_1(ACTIVATIONS[activation](), width * var_w, sigma_b2) ** -0.5)


def init_norms(client, out, runs_by_depth, sq_norm):
    """5.6: ||mean dC/db|| per hidden layer at init for 2, 3, 4 hidden layers, with the theory."""
    rows, table, ratios = [], [], []
    mean_field_ratio = _mean_field_ratio("sigmoid", "default", runs_by_depth)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (depth, runs) in enumerate(runs_by_depth.items()):
        at_init = np.stack([_norms(client, r, depth)[:, 0] for r in runs])  # [seeds, layers]
        layers = np.arange(1, depth + 1)
        ax.errorbar(layers, at_init.mean(0), yerr=at_init.std(0), color=COLORS[i], marker="o", capsize=3, label=f"{depth} hidden: ours")
        ax.plot(layers, BOOK_INIT_NORMS[depth], "x", color=COLORS[i], ms=9, mew=2, label=f"{depth} hidden: book")
        predicted = _predicted("sigmoid", "default", depth, at_init[:, -1].mean(), sq_norm)
        ax.plot(layers, predicted, ":", color=COLORS[i], label=f"{depth} hidden: simple theory")
        mean_field = at_init[:, -1].mean() * mean_field_ratio ** (layers - depth)
        ax.plot(layers, mean_field, "-.", color=COLORS[i], lw=0.9, label=f"{depth} hidden: mean field")
        ratios += list((at_init[:, 1:] / at_init[:, :-1]).ravel())
        for r, norms in zip(runs, at_init):
            table += [(depth, param(r, "seed"), l, v) for l, v in zip(layers, norms)]
        for l in layers:
            rows.append(row("5.6", f"{depth} hidden: ||dC/db|| of layer {l} at init", BOOK_INIT_NORMS[depth][l - 1], at_init[:, l - 1], 0.5, "rel"))
        for l in layers[:-1]:
            book = BOOK_INIT_NORMS[depth][l] / BOOK_INIT_NORMS[depth][l - 1]
            rows.append(row("5.6", f"{depth} hidden: ratio layer {l + 1} / layer {l} at init", round(book, 2), at_init[:, l] / at_init[:, l - 1], 0.5, "rel"))
    book_ratios = [b[l + 1] / b[l] for b in BOOK_INIT_NORMS.values() for l in range(len(b) - 1)]
    quantity = ("neighbour ratio ||dC/db^(l+1)|| / ||dC/db^l|| at init, {}; book column: mean field "
                "1/sqrt(chi_1) at sigma_w2 = sigma_b2 = 1")
    rows.append(row("5.6mf", quantity.format("ours, every depth, layer pair and seed"), round(mean_field_ratio, 3), ratios, 0.25, "rel"))
    rows.append(row("5.6mf", quantity.format("the book's own numbers"), round(mean_field_ratio, 3), book_ratios, 0.25, "rel"))
    ax.set_yscale("log")
    ax.set(xlabel="hidden layer", ylabel="||mean dC/db|| at init", title="5.6: gradient norms at initialization")
    ax.legend(fontsize=7, ncol=3)
    save_figure(out, "fig_5_6_init_norms", fig, ("depth", "seed", "layer", "grad_norm"), table)
    return rows


def speed_of_learning(client, out, runs_by_depth):
    """5.7-5.9: per-layer gradient norms over 500 epochs of full-batch descent, and last/first ratio."""
    rows, ratio_table = [], []
    ratio_fig, ratio_ax = plt.subplots(figsize=(7, 4))
    for i, (depth, runs) in enumerate(runs_by_depth.items()):
        norms = np.stack([_norms(client, r, depth) for r in runs])  # [seeds, layers, steps]
        steps = np.arange(norms.shape[2])
        fig, ax = plt.subplots(figsize=(7, 4.5))
        table = []
        for l in range(depth):
            band(ax, steps, norms[:, l], COLORS[l], f"hidden layer {l + 1}", log=True)
            for r, curve in zip(runs, norms[:, l]):
                table += [(param(r, "seed"), l + 1, s, v) for s, v in enumerate(curve)]
        ax.set_yscale("log")
        ax.set(xlabel="epoch", ylabel="||mean dC/db||", title=f"5.{depth + 5}: speed of learning, {depth} hidden layers")
        ax.legend()
        save_figure(out, f"fig_5_{depth + 5}_speed_{depth}_hidden", fig, ("seed", "layer", "epoch", "grad_norm"), table)

        ratio = norms[:, -1] / norms[:, 0]
        band(ratio_ax, steps, ratio, COLORS[i], f"{depth} hidden", log=True)
        ratio_table += [(depth, param(r, "seed"), s, v) for r, curve in zip(runs, ratio) for s, v in enumerate(curve)]
        if depth == 4:
            book_init = BOOK_INIT_NORMS[4][-1] / BOOK_INIT_NORMS[4][0]
            rows.append(row("5.9", "4 hidden: last / first hidden layer gradient norm at init", round(book_init), ratio[:, 0], 2.0, "factor"))
            rows.append(row("5.9", "4 hidden: last / first hidden layer ratio, median over training (book: 'roughly 100 times slower')", 100.0, np.median(ratio, axis=1), 2.0, "factor"))
    ratio_ax.set_yscale("log")
    ratio_ax.set(xlabel="epoch", ylabel="||dC/db|| last hidden / first hidden", title="5.7-5.9: how much slower the first hidden layer learns")
    ratio_ax.legend()
    save_figure(out, "fig_5_ratio_last_first", ratio_fig, ("depth", "seed", "epoch", "ratio_last_first"), ratio_table)
    return rows


EXPLODING_DEPTH = 6
WIDTH_GRID = np.round(np.arange(4.0, 20.01, 0.05), 2)


def record_analysis(client, experiment_id):
    """Computes the analytic part (no training) and stores it as MLflow runs, like any result."""
    record_analysis_run(client, experiment_id, "ch5_exploding", {"abs_dC_db": theory.exploding_chain(EXPLODING_DEPTH)},
                        first_step=1)
    record_analysis_run(client, experiment_id, "ch5_analytic",
                        {"abs_w": WIDTH_GRID, "allowed_width": theory.allowed_width(WIDTH_GRID),
                         "allowed_width_book_formula": theory.allowed_width_book(WIDTH_GRID)})


def exploding(client, out):
    """The book's exploding chain: w = 100, b = -100 a_{j-1}, so each layer multiplies by 25."""
    run = latest_run(client, EXPERIMENT, "ch5_exploding")
    grads = history(client, run, "abs_dC_db")
    layers = np.arange(1, len(grads) + 1)
    growth = grads[:-1] / grads[1:]  # |dC/db_j| / |dC/db_{j+1}|: earlier layers get the larger gradient
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.semilogy(layers, grads, "o-")
    for j, g in zip(layers[:-1], growth):
        ax.annotate(f"x{g:.1f}", (j + 0.5, np.sqrt(grads[j - 1] * grads[j])), ha="center", fontsize=8)
    ax.set(xlabel="layer j (single sigmoid neurons, w = 100, b = -100 a_{j-1})", ylabel="|dC/db_j|",
           title="Exploding gradients: each earlier layer x25")
    save_figure(out, "fig_5_exploding", fig, ("layer", "abs_dC_db"), list(zip(layers, grads)))
    return [row("5.exploding", "per-layer growth of |dC/db| in the w=100, b=-100 a chain", 25.0, growth, 1e-6, "rel")]


def allowed_range(client, out):
    """|w sigma'(wa + b)| >= 1 holds only on a narrow range of a: at most ~0.45 wide, near |w| ~ 6.9."""
    run = latest_run(client, EXPERIMENT, "ch5_analytic")
    w, width, book = (history(client, run, k) for k in ("abs_w", "allowed_width", "allowed_width_book_formula"))
    peak = int(np.argmax(width))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(w, width, label="measured on a grid of a")
    ax.plot(w, book, ":", label="book's closed form")
    ax.plot(w[peak], width[peak], "o", color="k")
    ax.annotate(f"max {width[peak]:.3f} at |w| = {w[peak]:.2f}", (w[peak], width[peak]), xytext=(10, -15), textcoords="offset points")
    ax.set(xlabel="|w|", ylabel="width of the a-range with |w sigma'(wa+b)| >= 1", title="Chapter 5 problem: the allowed range of a")
    ax.legend()
    save_figure(out, "fig_5_allowed_range", fig, ("abs_w", "allowed_width", "book_formula"), list(zip(w, width, book)))
    return [
        row("5.analytic", "largest width of the allowed range of a", 0.45, [width[peak]], 0.01, "abs"),
        row("5.analytic", "|w| at which the allowed range is widest", 6.9, [w[peak]], 0.1, "abs"),
    ]


def beyond(client, out, sq_norm):
    """Beyond the book: 5.6 and 5.7-5.9 for sigmoid, tanh, relu x default, glorot, he inits (4 hidden)."""
    runs = sweep_runs(client, EXPERIMENT, "ch5_activations")
    combos = {}
    for r in runs:
        combos.setdefault((param(r, "activation.name"), param(r, "init.name")), []).append(r)
    combos = dict(sorted(combos.items()))
    depth = 4
    rows, init_table, speed_table = [], [], []
    acts = sorted({a for a, _ in combos})
    inits = sorted({i for _, i in combos})
    init_fig, init_axes = plt.subplots(1, len(acts), figsize=(4 * len(acts), 4), sharey=True, squeeze=False)
    speed_fig, speed_axes = plt.subplots(len(acts), len(inits), figsize=(4 * len(inits), 3 * len(acts)), sharex=True, squeeze=False)
    for (act, init), members in combos.items():
        norms = np.stack([_norms(client, r, depth) for r in members])  # [seeds, layers, steps]
        layers = np.arange(1, depth + 1)
        ax = init_axes[0, acts.index(act)]
        color = COLORS[inits.index(init)]
        at_init = norms[:, :, 0]
        ax.errorbar(layers, at_init.mean(0), yerr=at_init.std(0), marker="o", capsize=3, color=color, label=f"{init}: measured")
        ax.plot(layers, _predicted(act, init, depth, at_init[:, -1].mean(), sq_norm), ":", color=color, label=f"{init}: simple theory")
        init_table += [(act, init, param(r, "seed"), l, v) for r, n in zip(members, at_init) for l, v in zip(layers, n)]
        sax = speed_axes[acts.index(act), inits.index(init)]
        for l in range(depth):
            band(sax, np.arange(norms.shape[2]), np.maximum(norms[:, l], 1e-30), COLORS[l], f"layer {l + 1}", log=True)
        sax.set_yscale("log")
        sax.set_title(f"{act}, {init}", fontsize=9)
        speed_table += [(act, init, param(r, "seed"), l + 1, s, v) for r, n in zip(members, norms) for l in range(depth) for s, v in enumerate(n[l])]
        ratio = at_init[:, -1] / at_init[:, 0]
        rows.append(row("beyond", f"{act}, {init} init, 4 hidden: last / first hidden gradient norm at init", None, ratio, 0.0, "none"))
    for ax, act in zip(init_axes[0], acts):
        ax.set_yscale("log")
        ax.set(xlabel="hidden layer", title=act)
        ax.legend(fontsize=7)
    init_axes[0, 0].set_ylabel("||mean dC/db|| at init")
    init_fig.suptitle("Beyond the book: gradient norms at init, 4 hidden layers (dotted: simple theory)")
    speed_axes[0, 0].legend(fontsize=7)
    speed_fig.suptitle("Beyond the book: speed of learning per layer, 4 hidden layers, 1000 images")
    save_figure(out, "fig_5_beyond_init_norms", init_fig, ("activation", "init", "seed", "layer", "grad_norm"), init_table)
    save_figure(out, "fig_5_beyond_speed", speed_fig, ("activation", "init", "seed", "layer", "epoch", "grad_norm"), speed_table)
    return rows


NOTES = [
    ("The book shows one run per network and does not say whether 96.48% etc. are best-epoch or final-epoch "
    "validation accuracies; both are reported, over several seeds (mean ± sd; figures show the seeds' min-max band)."),
    ("Gradient norms follow the book: the norm of the mean over the first 1000 training images of the per-example "
    "dC/db (cross-entropy, no L2 term), hidden layers only, measured before each epoch's update (step 0 = init)."),
    "5.5 and 5.6 come from step 0 of the ch5_speed runs: at initialization the training protocol plays no part.",
    ("The simple theory multiplies, layer by layer, chi_l = sqrt(n_l Var(w) E[sigma'(z_l)^2]) with z_l ~ N(0, q_l) "
    "carried forward from the inputs (nnx.theory), anchored at the measured last hidden layer. It predicts "
    "per-example norms; the book's measure is the norm of a mean, so it is a guide to the slope, not the level."),
    ("The mean-field line (dash-dot, 5.6mf rows) is the wide-net limit at the fixed point q* (nnx.meanfield): the "
    "book's default init is sigma_w2 = 1, sigma_b2 = 1, backprop multiplies E||delta||^2 by chi_1 = sigma_w2 "
    "E[sigma'(z)^2] ~ 0.042 per layer, so each layer's gradient norm is 1/sqrt(chi_1) ~ 4.9 times the one before. "
    "The nets are 30 wide, not infinite, and the first layer's q is not yet q*, hence a 25% tolerance."),
    ("Tolerances: accuracy within 1 percentage point of the book's single run; norms at init within 50% (the book's "
    "numbers are one random network); ratios of ~100 within a factor 2; the exploding and analytic parts are exact "
    "computations. 'greater' rows: the book states only a direction (ours must exceed the tolerance)."),
    ("Beyond-the-book rows have no book number: they show how far each activation/initializer pair is from equal "
    "learning speeds (ratio 1)."),
]


def build_report(client, out):
    """Every chapter 5 figure and table from the store; returns (rows, figure names)."""
    def protocol(*presets):
        return sweep_protocol(client, EXPERIMENT, *presets)

    rows = at(protocol("ch5_depth"), depth_accuracy(client, out))
    speed = group(sweep_runs(client, EXPERIMENT, "ch5_speed"), "model.depth", int)
    sq_norm = input_sq_norm(1000)
    rows += at(protocol("ch5_speed"), bias_gradients(client, out, speed) + init_norms(client, out, speed, sq_norm)
               + speed_of_learning(client, out, speed))
    rows += exploding(client, out)
    rows += allowed_range(client, out)
    rows += at(protocol("ch5_activations"), beyond(client, out, sq_norm))
    figures = sorted(p.stem for p in out.glob("fig_*.png"))
    return rows, figures
