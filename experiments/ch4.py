"""Chapter 4 (a visual proof that neural nets can compute any function), and whether training finds it.

The book trains nothing here: record_analysis computes its constructions (experiments.universality)
and stores each as an MLflow analysis run, curves and surfaces as the run's analysis.npz. Beyond the
book, it also trains the hand-built networks' shape, [1, N, 1], by gradient descent (TRAINING) and
stores that beside them. build_report reads every run back and draws the figures and rows.
"""

from typing import NamedTuple

import matplotlib.pyplot as plt
import numpy as np

from experiments import universality as U
from experiments.report import row, save_figure
from experiments.store import analysis_arrays, history, latest_run, record_analysis_run

EXPERIMENT = "ch4"
SWEEPS = ()  # the book's chapter 4 trains nothing; TRAINING below is small enough to run inline
TITLE = "Chapter 4 reproduced with nnx: a visual proof that neural nets can compute any function"
COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]

STEP_WEIGHTS = (8.0, 100.0, 999.0)  # the book's interactive figure starts at w = 8; 100 and 999 are its later ones
STEP_AT = 0.4  # s = -b/w: the book's b = -40 at w = 100
BUMP_EDGES, BUMP_HEIGHT = (0.4, 0.6), 0.8
W = 1000.0  # input weight of every hand-built step: its 0.1-0.9 rise is 0.0044 wide, under half of N = 100's bumps
BOOK_HEIGHTS = (-1.243, -1.423, -0.341, -0.983, 1.143)  # the book's best 5 heights
BOOK_SCORE, BOOK_SUCCESS = 0.372, 0.40  # their score; the book's mark of success
FINE = np.arange(500) / 500  # 5 points per bump at N = 100; holds the book's grid
TOWER_X, TOWER_Y, TOWER_H = (0.4, 0.6), (0.3, 0.7), 10.0
TOWER_GRID = np.linspace(0.0, 1.0, 101)


class Training(NamedTuple):
    """Beyond the book: [1, N, 1] networks trained on sigma^-1(f) over FINE, one per N and seed."""
    ns: tuple = (5, 10, 20, 50, 100)
    seeds: tuple = (0, 1, 2)
    steps: int = 5000  # full-batch Adam steps: about a second per N on a CPU, after a compile of ~1 s
    eta: float = 0.1
    record_every: int = 100


TRAINING = Training()


def _steps():
    x = np.linspace(0.0, 1.0, 2001)
    b = [-w * STEP_AT for w in STEP_WEIGHTS]
    far = np.abs(x - STEP_AT) >= 0.05
    a = np.stack([U.neuron(x, w, bw) for w, bw in zip(STEP_WEIGHTS, b)])
    series = {"w": STEP_WEIGHTS, "b": b,
              "half_point": [U.crossing(lambda t, w=w, bw=bw: U.neuron(t, w, bw), 0.5, 0.0, 1.0) for w, bw in zip(STEP_WEIGHTS, b)],
              "width_10_90": [U.step_width(w, bw) for w, bw in zip(STEP_WEIGHTS, b)],
              "far_from_step": np.max(np.abs(a - (x >= STEP_AT))[:, far], axis=1)}
    return series, {"x": x, "a": a}


def _bump():
    x = np.linspace(0.0, 1.0, 2001)
    (s1, s2), h = BUMP_EDGES, BUMP_HEIGHT
    z = U.bump(x, s1, s2, h, W)
    outside = (x <= s1 - 0.05) | (x >= s2 + 0.05)
    series = {"middle": [U.bump(0.5 * (s1 + s2), s1, s2, h, W)], "largest_outside": [np.max(np.abs(z[outside]))]}
    return series, {"x": x, "up": h * U.neuron(x, W, -W * s1), "down": -h * U.neuron(x, W, -W * s2), "bump": z}


def _five_bumps():
    x, target = U.BOOK_GRID, U.sigma_inverse(U.goal(U.BOOK_GRID))
    design = U.ideal_bumps(x, 5)
    median, lsq = U.median_heights(x, target, 5), U.least_squares(design, target)
    # The same heights in a real network: steps of weight W at k/5, output weights h_k - h_{k-1}.
    in_network = U.hidden_steps(x, 5, W) @ np.diff(median, prepend=0.0)
    series = {"median_height": median, "lsq_height": lsq, "score_median": [U.score(target, design @ median)],
              "score_lsq": [U.score(target, design @ lsq)], "score_median_w1000": [U.score(target, in_network)]}
    return series, {"x": x, "target": target}


def _n_bumps(cfg: Training):
    import jax

    target = U.sigma_inverse(U.goal(FINE))
    keys = np.stack([np.asarray(jax.random.PRNGKey(s)) for s in cfg.seeds])
    hand, trained, rms, steepest = [], [], [], []
    for n in cfg.ns:
        hand.append(U.hidden_steps(FINE, n, W) @ U.least_squares(U.hidden_steps(FINE, n, W), target))
        curve, z, w = U.train(n, FINE, target, keys=keys, steps=cfg.steps, eta=cfg.eta, record_every=cfg.record_every)
        trained.append(z)
        rms.append(curve)
        steepest.append(np.max(np.abs(w), axis=1))
    hand, trained = np.stack(hand), np.stack(trained)
    series = {"n": cfg.ns, "handbuilt_score": [U.score(target, z) for z in hand],
              "handbuilt_rms": [np.sqrt(np.mean((z - target) ** 2)) for z in hand],
              "trained_score_mean": [np.mean([U.score(target, z) for z in per_n]) for per_n in trained]}
    arrays = {"x": FINE, "target": target, "handbuilt": hand, "trained": trained, "trained_rms": np.stack(rms),
              "trained_max_w": np.stack(steepest),
              "steps": np.arange(rms[0].shape[1]) * cfg.record_every}
    return series, arrays


def _tower():
    x, y = np.meshgrid(TOWER_GRID, TOWER_GRID, indexing="ij")
    kw = {"x_edges": TOWER_X, "y_edges": TOWER_Y, "w": W, "h": TOWER_H}
    hidden, a = U.tower(x, y, **kw)
    mid_x, mid_y = np.mean(TOWER_X), np.mean(TOWER_Y)
    off = ((x < TOWER_X[0] - 0.02) | (x > TOWER_X[1] + 0.02)) | ((y < TOWER_Y[0] - 0.02) | (y > TOWER_Y[1] + 0.02))
    points = {"centre": (mid_x, mid_y), "x_plateau": (mid_x, 0.1), "y_plateau": (0.1, mid_y), "outside": (0.1, 0.1)}
    series = {f"hidden_{k}": [float(U.tower(px, py, **kw)[0])] for k, (px, py) in points.items()}
    series |= {"output_centre": [float(U.tower(mid_x, mid_y, **kw)[1])], "output_off_tower_max": [np.max(a[off])]}
    return series, {"x": TOWER_GRID, "y": TOWER_GRID, "hidden": hidden, "a": a}


def record_analysis(client, experiment_id):
    """Each construction, and the trained networks, as one MLflow analysis run."""
    cfg = TRAINING
    parts = {
        "ch4_step": (_steps, {"s": STEP_AT}),
        "ch4_bump": (_bump, {"edges": BUMP_EDGES, "h": BUMP_HEIGHT, "w": W}),
        "ch4_five_bumps": (_five_bumps, {"grid": "0, 0.01, ..., 0.99", "w": W}),
        "ch4_n_bumps": (lambda: _n_bumps(cfg), {"w": W, "grid": f"{len(FINE)} points", "init": "default", "optimizer": "adam",
                                               "cost": "mean (z - sigma^-1(f))^2", **cfg._asdict()}),
        "ch4_tower": (_tower, {"x_edges": TOWER_X, "y_edges": TOWER_Y, "h": TOWER_H, "w": W, "bias": "-3h/2"}),
    }
    for preset, (compute, params) in parts.items():
        series, arrays = compute()
        record_analysis_run(client, experiment_id, preset, series, params=params, arrays=arrays)


def _stored(client, preset, *keys):
    run = latest_run(client, EXPERIMENT, preset)
    return run, {k: history(client, run, k) for k in keys}, analysis_arrays(client, run)


def step(client, out):
    """A sigmoid neuron turns into a step at s = -b/w as w grows."""
    _, m, arr = _stored(client, "ch4_step", "w", "b", "half_point", "width_10_90", "far_from_step")
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for i, (w, b) in enumerate(zip(m["w"], m["b"])):
        ax.plot(arr["x"], arr["a"][i], color=COLORS[i], label=f"w = {w:g}, b = {b:g}")
    ax.axvline(STEP_AT, color="k", ls=":", lw=0.8)
    ax.set(xlabel="x", ylabel="sigma(w x + b)", title=f"A neuron becomes a step at s = -b/w = {STEP_AT:g} (dotted)")
    ax.legend(loc="upper left", fontsize=8)
    save_figure(out, "fig_4_step", fig, ("w", "b", "x", "a"),
                [(w, b, x, a) for w, b, curve in zip(m["w"], m["b"], arr["a"]) for x, a in zip(arr["x"], curve)])
    rows = []
    for w, b, half, width, far in zip(*(m[k] for k in ("w", "b", "half_point", "width_10_90", "far_from_step"))):
        rows += [row(f"4.step_w{w:g}", f"w = {w:g}, b = {b:g}: x where sigma(w x + b) = 1/2 (book: s = -b/w)", -b / w, [half], 1e-9, "abs"),
                 row(f"4.step_w{w:g}", f"w = {w:g}: width in x of the rise from 0.1 to 0.9", None, [width], 0.0, "none"),
                 row(f"4.step_w{w:g}", f"w = {w:g}: largest |sigma(w x + b) - step at s| 0.05 or more from s", None, [far], 0.0, "none")]
    return rows


def bump_figure(client, out):
    """Two steps, output weights +h and -h, make a bump of height h."""
    _, m, arr = _stored(client, "ch4_bump", "middle", "largest_outside")
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.plot(arr["x"], arr["up"], color=COLORS[0], ls="--", lw=1, label=f"+{BUMP_HEIGHT:g} sigma(w(x - {BUMP_EDGES[0]:g}))")
    ax.plot(arr["x"], arr["down"], color=COLORS[1], ls="--", lw=1, label=f"-{BUMP_HEIGHT:g} sigma(w(x - {BUMP_EDGES[1]:g}))")
    ax.plot(arr["x"], arr["bump"], color="k", lw=1.6, label="their sum: the weighted output")
    ax.set(xlabel="x", ylabel="weighted output", title=f"Two steps make a bump (w = {W:g})", ylim=(-1.0, 1.3))
    ax.legend(loc="lower left", fontsize=8)
    save_figure(out, "fig_4_bump", fig, ("x", "up", "down", "bump"), list(zip(arr["x"], arr["up"], arr["down"], arr["bump"])))
    return [
        row("4.bump", f"weighted output in the middle of the bump, x = {np.mean(BUMP_EDGES):g} (book: height h = {BUMP_HEIGHT:g})",
            BUMP_HEIGHT, m["middle"], 1e-3, "abs"),
        row("4.bump", "largest |weighted output| 0.05 or more outside the bump (book: 0)", 0.0, m["largest_outside"], 1e-3, "abs"),
    ]


def five_bumps(client, out):
    """The 5-bump approximation of sigma^-1(f): the best heights for the book's score, and least squares'."""
    _, m, arr = _stored(client, "ch4_five_bumps", "median_height", "lsq_height", "score_median", "score_lsq", "score_median_w1000")
    x, target = arr["x"], arr["target"]
    design = U.ideal_bumps(x, 5)
    fine = np.linspace(0.0, 0.999, 1000)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(x, target, ".", color="0.4", ms=4, label="sigma^-1(f(x)) on the book's grid")
    for heights, color, label in ((m["median_height"], COLORS[0], f"bump medians: score {m['score_median'][0]:.4f}"),
                                  (m["lsq_height"], COLORS[1], f"least squares: score {m['score_lsq'][0]:.4f}")):
        left.plot(fine, U.ideal_bumps(fine, 5) @ heights, color=color, label=label)
        right.plot(fine, U.sigma(U.ideal_bumps(fine, 5) @ heights), color=color)
    left.plot((np.arange(5) + 0.5) / 5, BOOK_HEIGHTS, "x", color="k", ms=8, mew=2, label=f"the book's heights (score {BOOK_SCORE:g})")
    left.set(xlabel="x", ylabel="weighted output", title="5 bumps against sigma^-1(f)")
    left.legend(fontsize=7, loc="upper left")
    right.plot(fine, U.goal(fine), color="0.4", label="f(x)")
    right.set(xlabel="x", ylabel="network output", title="the network's output sigma(weighted output) against f")
    right.legend(fontsize=7, loc="upper left")
    save_figure(out, "fig_4_five_bumps", fig, ("x", "target", "z_median", "z_least_squares"),
                list(zip(x, target, design @ m["median_height"], design @ m["lsq_height"])))
    rows = [row("4.bumps5_heights", f"best height of bump {k + 1} for the book's score (its median of sigma^-1(f))", book, [h], 1e-3, "abs")
            for k, (book, h) in enumerate(zip(BOOK_HEIGHTS, m["median_height"]))]
    return rows + [
        row("4.bumps5_score", "the book's score of the best 5 heights", BOOK_SCORE, m["score_median"], 1e-3, "abs"),
        row("4.bumps5_lsq", "the book's score of the least-squares heights (book: success is 0.40 or less)", BOOK_SUCCESS,
            m["score_lsq"], BOOK_SUCCESS, "less"),
        row("4.bumps5_net", f"the best heights in a [1,5,1] network of w = {W:g} steps (a grid point on an edge gets "
            "half of each neighbour): the book's score", None, m["score_median_w1000"], 0.0, "none"),
    ]


def n_bumps(client, out):
    """Beyond the book: the error against N, hand-built and trained, and how the training got there."""
    run, m, arr = _stored(client, "ch4_n_bumps", "n", "handbuilt_score", "handbuilt_rms")
    ns, target, trained, curves = m["n"].astype(int), arr["target"], arr["trained"], arr["trained_rms"]
    trained_score = np.array([[U.score(target, z) for z in per_n] for per_n in trained])  # [N, seeds]
    steps, eta = int(run.data.params["steps"]), float(run.data.params["eta"])
    seeds = trained.shape[1]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    left.plot(ns, m["handbuilt_score"], "o-", color="k", label=f"hand-built (w = {W:g}, least-squares heights)")
    mean = trained_score.mean(1)
    left.errorbar(ns, mean, yerr=[mean - trained_score.min(1), trained_score.max(1) - mean],
                  fmt="s-", color=COLORS[0], capsize=3, label=f"trained: {steps} Adam steps, eta {eta:g} ({seeds} seeds, min-max)")
    if 5 in ns:
        left.plot([5], [BOOK_SCORE], "x", color="k", ms=8, mew=2, label="the book: best 5 bumps")
    left.set(xscale="log", yscale="log", xlabel="N (hidden neurons = bumps)", ylabel=f"the book's score on {len(FINE)} points",
             title="Error of [1, N, 1] sigmoid networks")
    left.set_xticks(ns, [str(n) for n in ns])
    left.minorticks_off()
    left.legend(fontsize=7)
    for i, n in enumerate(ns):
        right.plot(arr["steps"], curves[i].mean(0), color=COLORS[i % len(COLORS)], label=f"N = {n}")
        right.fill_between(arr["steps"], curves[i].min(0), curves[i].max(0), color=COLORS[i % len(COLORS)], alpha=0.2, lw=0)
        right.axhline(m["handbuilt_rms"][i], color=COLORS[i % len(COLORS)], ls="--", lw=0.8)
    right.set(yscale="log", xlabel="Adam step", ylabel="root mean square error of the weighted output",
              title=f"Training ({seeds} seeds, band min-max); dashed: hand-built")
    right.legend(fontsize=7, loc="upper right", ncol=2)
    table = [(n, "handbuilt", "", s, r) for n, s, r in zip(ns, m["handbuilt_score"], m["handbuilt_rms"])]
    table += [(n, "trained", seed, trained_score[i, seed], curves[i, seed, -1]) for i, n in enumerate(ns) for seed in range(seeds)]
    save_figure(out, "fig_4_error_vs_bumps", fig, ("n", "network", "seed", "score", "rms"), table)

    fits, axes = plt.subplots(1, len(ns), figsize=(3.2 * len(ns), 3.2), sharey=True, squeeze=False)
    for ax, n, hand, z in zip(axes[0], ns, arr["handbuilt"], trained):
        ax.plot(arr["x"], target, color="0.6", lw=2.5, label="sigma^-1(f)")
        ax.plot(arr["x"], hand, color="k", lw=0.9, label="hand-built")
        ax.plot(arr["x"], z[0], color=COLORS[0], lw=0.9, label="trained (seed 0)")
        ax.set(title=f"N = {n}", xlabel="x")
    axes[0, 0].set_ylabel("weighted output")
    axes[0, 0].legend(fontsize=7, loc="upper left")
    fits.suptitle("The hand-built and trained [1, N, 1] networks' weighted output against sigma^-1(f) (at x = 0 the "
                  "first hand-built step is half-way up: sigma(0) = 1/2)", y=1.04)
    save_figure(out, "fig_4_fits", fits, ("n", "x", "target", "handbuilt", "trained_seed0"),
                [(n, x, t, h, z) for n, hand, per_n in zip(ns, arr["handbuilt"], trained)
                 for x, t, h, z in zip(arr["x"], target, hand, per_n[0])])

    ratio = trained_score.mean(1) / m["handbuilt_score"]
    summary = ("Trained / hand-built error (the book's score, trained: mean over seeds) at N = " + ", ".join(map(str, ns)) + ": "
               + ", ".join(f"{r:.2g}" for r in ratio) + ". Below 1 training found a better [1, N, 1] network than the "
               "construction; above 1 it did not find what the construction shows exists. The trained networks' "
               f"steepest hidden neurons reach |w| of {arr['trained_max_w'].min():.0f} to {arr['trained_max_w'].max():.0f}, "
               f"against the construction's {W:g} (fig_4_fits shows where their fits fall short).")
    rows = []
    for i, n in enumerate(ns):
        rows += [row(f"4.handbuilt_N{n}", f"hand-built [1,{n},1], w = {W:g}, least-squares output weights: the book's "
                     f"score on x = 0, {FINE[1]:g}, ..., {FINE[-1]:g}", None, [m["handbuilt_score"][i]], 0.0, "none"),
                 row(f"4.trained_N{n}", f"[1,{n},1] trained from the default init, {steps} Adam steps: the same score",
                     None, trained_score[i], 0.0, "none"),
                 row(f"4.trained_N{n}", f"the same: its largest |hidden input weight| (hand-built: {W:g})", None,
                     arr["trained_max_w"][i], 0.0, "none")]
    return rows, summary


def tower(client, out):
    """Two inputs: bumps in x and y, each weighted h, and output bias -3h/2 make a tower."""
    _, m, arr = _stored(client, "ch4_tower", "hidden_centre", "hidden_x_plateau", "hidden_y_plateau", "hidden_outside",
                        "output_centre", "output_off_tower_max")
    x, y = np.meshgrid(arr["x"], arr["y"], indexing="ij")
    fig = plt.figure(figsize=(12, 5))
    for i, (key, label) in enumerate((("hidden", "weighted output of the hidden layer"), ("a", "network output"))):
        ax = fig.add_subplot(1, 2, i + 1, projection="3d")
        ax.plot_surface(x, y, arr[key], cmap="viridis", rstride=1, cstride=1, linewidth=0, antialiased=False)
        ax.set(xlabel="x", ylabel="y", title=label)
        ax.view_init(elev=28, azim=-120)
    fig.suptitle(f"A tower: x bump {TOWER_X[0]:g}-{TOWER_X[1]:g}, y bump {TOWER_Y[0]:g}-{TOWER_Y[1]:g}, w = {W:g}, "
                 f"h = {TOWER_H:g}, output bias -3h/2")
    save_figure(out, "fig_4_tower", fig, ("x", "y", "hidden", "a"),
                list(zip(x.ravel(), y.ravel(), arr["hidden"].ravel(), arr["a"].ravel())))
    h = TOWER_H
    return [
        row("4.tower", f"hidden layer's weighted output at the tower's centre (book: 2h = {2 * h:g})", 2 * h, m["hidden_centre"],
            1e-3, "abs"),
        row("4.tower", f"the same on the x bump's plateau (book: h = {h:g})", h, m["hidden_x_plateau"], 1e-3, "abs"),
        row("4.tower", f"the same on the y bump's plateau (book: h = {h:g})", h, m["hidden_y_plateau"], 1e-3, "abs"),
        row("4.tower", "the same outside both bumps (book: 0)", 0.0, m["hidden_outside"], 1e-3, "abs"),
        row("4.tower", "network output at the centre, sigma(2h - 3h/2)", None, m["output_centre"], 0.0, "none"),
        row("4.tower", "highest network output 0.02 or more off the tower", None, m["output_off_tower_max"], 0.0, "none"),
    ]


NOTES = [
    ("Nothing here is trained except the 4.trained rows: every other number is an exact computation of the "
    "book's constructions (experiments/universality.py), stored as MLflow analysis runs and read back."),
    ("The steps keep s = -b/w = 0.4 at every w (b = -0.4 w; the book's b = -40 at w = 100); the 1/2-crossing is "
    "found by bisection on the neuron's output, not from the formula, and the rise narrows as 2 ln 9 / w."),
    ("The book's score is a mean absolute error on x = 0, 0.01, ..., 0.99. With its 5 disjoint bumps on "
    "[k/5, (k+1)/5) it splits into one term per bump, each minimised by that bump's median of sigma^-1(f): "
    "these medians are the book's heights, and their score its 0.372. A least-squares solve (the bumps' means) "
    "minimises the squared error instead; its score is higher, though still under the book's 0.40."),
    ("A [1, N, 1] network holds N bumps: neighbouring bumps share an edge, so N steps at k/N with output weights "
    f"h_k - h_{{k-1}} give the book's N bumps (its 2N neurons) on [0, 1). The hand-built rows use w = {W:g} steps "
    f"and the least-squares output weights over {len(FINE)} points x = 0, {FINE[1]:g}, ..., {FINE[-1]:g} (the book's "
    f"100-point grid would let N = 100 interpolate it exactly); the score is the book's formula on those {len(FINE)} points."),
    ("Beyond the book, the trained rows fit the same [1, N, 1] networks (sigmoid hidden layer, network2's default "
    "init w ~ N(0, 1/n_in), b ~ N(0, 1), output bias trained) by full-batch Adam on the mean squared error of the "
    "weighted output against sigma^-1(f) over the same points: the objective the least-squares construction "
    "minimises. Mean ± sd over seeds; fig_4_error_vs_bumps' right panel shows whether training was still improving "
    "at its last step."),
    ("At x = 0 the first hand-built step is half-way up (sigma(0) = 1/2), as in the book's own network: the spike at "
    "the left of fig_4_fits."),
    ("The tower's hidden layer has a bump in x and one in y, each of output weight h = 10; the output neuron's bias "
    "-3h/2 (for m inputs (-m + 1/2) h) leaves sigma(h/2) on the tower and sigma(-h/2) or less elsewhere."),
]


def build_report(client, out):
    """The chapter 4 tables and figures from the store; returns (rows, figure names, notes)."""
    rows = step(client, out) + bump_figure(client, out) + five_bumps(client, out)
    trained, summary = n_bumps(client, out)
    rows += trained + tower(client, out)
    return rows, sorted(p.stem for p in out.glob("fig_*.png")), NOTES + [summary]
