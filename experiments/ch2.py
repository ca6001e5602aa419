"""Chapter 2 (how backpropagation works): the four equations against jax.grad, case by case.

Nothing trains. record_analysis computes, for several networks, activations and costs, the
largest difference between the book's BP1-BP4 written out in numpy (experiments.backprop_numpy)
and jax.grad of nnx's loss, in float64, and stores it as an MLflow run; build_report reads that
run back and writes the table and its figure.
"""

import itertools

import jax
import matplotlib.pyplot as plt
import numpy as np

from experiments import backprop_numpy
from experiments.report import row, save_figure
from experiments.store import history, latest_run, record_analysis_run
from nnx import choices

EXPERIMENT = "ch2"
SWEEPS = ()  # chapter 2 trains nothing
PRESET = "ch2_backprop"
BATCH = 10  # the first 10 training images
TOLERANCE = 1e-12  # float64 rounding after a few hundred multiply-adds is ~1e-15 of the largest entry

# (sizes, activation, cost, output activation). [784,7,5,10] has layers of unequal width, so a
# transposed weight cannot pass; it runs every activation with every cost. [784,30,10] is the
# network of chapters 1 and 3, [784,30,30,30,30,10] chapter 5's deepest.
CASES = (
    [((784, 7, 5, 10), act, cost, out) for act in backprop_numpy.ACTIVATIONS for cost, out in backprop_numpy.OUTPUTS]
    + [(sizes, "sigmoid", cost, out) for sizes in ((784, 30, 10), (784, 30, 30, 30, 30, 10))
       for cost, out in backprop_numpy.OUTPUTS]
)


def describe(case) -> str:
    sizes, act, cost, out = case
    return f"[{','.join(map(str, sizes))}] {act}, {cost} ({out} output)"


def _spec(case):
    """nnx's own config (conf/train.yaml) for the case: the loss jax.grad differentiates."""
    from nnx import build
    from nnx.edges import configs

    sizes, act, cost, out = case
    overrides = [f"model.depth={len(sizes) - 2}", f"model.width={sizes[1]}", f"activation={act}", f"cost={cost}",
                 f"model.output_activation={out}", "optimizer.lmbda=0.0"]
    if act == "leaky_relu":
        overrides.append(f"activation.negative_slope={backprop_numpy.LEAKY_SLOPE}")
    return build(configs.compose(overrides))


def compare(case, x, labels, rng) -> dict:
    """max |BP - jax.grad| over every weight and bias of one random network (network2's default init)."""
    from nnx import make_loss

    sizes = case[0]
    params = [{"w": rng.normal(size=(n_out, n_in)) / np.sqrt(n_in), "b": rng.normal(size=n_out)}
              for n_in, n_out in itertools.pairwise(sizes)]
    with choices.float64():
        grads = jax.grad(make_loss(_spec(case)))(params, x, labels)
    expected = backprop_numpy.mean_gradient([(p["w"], p["b"]) for p in params], x, labels, *case[1:])
    diff = max(float(np.max(np.abs(np.asarray(g[k]) - e))) for g, pair in zip(grads, expected) for k, e in zip("bw", pair))
    scale = max(float(np.max(np.abs(e))) for pair in expected for e in pair)
    return {"max_abs_diff": diff, "max_abs_grad": scale, "max_rel_diff": diff / scale}


def record_analysis(client, experiment_id):
    """Every case's comparison as one MLflow run (step i = case i), like any result."""
    from nnx import load

    train = load(train_size=BATCH).train
    x, labels = train.x.astype(np.float64), np.asarray(train.y)
    rng = np.random.default_rng(0)
    params = {"batch": BATCH, "seed": 0, **{f"case.{i}": describe(c) for i, c in enumerate(CASES)}}
    compared = [compare(case, x, labels, rng) for case in CASES]
    record_analysis_run(client, experiment_id, PRESET, {k: [c[k] for c in compared] for k in compared[0]}, params=params)


def backprop_check(client, out):
    """A row per case: BP1-BP4 and jax.grad agree to float64 rounding."""
    run = latest_run(client, EXPERIMENT, PRESET)
    names = [run.data.params[f"case.{i}"] for i in range(len(history(client, run, "max_rel_diff")))]
    rel, diff, scale = (history(client, run, k) for k in ("max_rel_diff", "max_abs_diff", "max_abs_grad"))
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(names) + 1.2))
    ax.barh(np.arange(len(names)), np.maximum(rel, 1e-20), color="C0")
    ax.axvline(TOLERANCE, color="k", ls="--", lw=0.8, label=f"tolerance {TOLERANCE:g}")
    ax.set_yticks(np.arange(len(names)), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set(xlabel="max |BP1-BP4 - jax.grad| / max |gradient|  (float64)",
           title=f"Chapter 2: backpropagation against jax.grad ({BATCH} MNIST images)")
    ax.legend(fontsize=8)
    save_figure(out, "fig_2_backprop_check", fig, ("case", "max_abs_diff", "max_abs_grad", "max_rel_diff"),
                list(zip(names, diff, scale, rel)))
    return [row("2.BP", f"{name}: max |BP - jax.grad| / max |grad|", 0.0, [r], TOLERANCE, "abs") for name, r in zip(names, rel)]


NOTES = [
    ("The book states that backpropagation's four equations (BP1-BP4) give the gradient of the cost; it shows no "
    "number. Each row compares them, written out in numpy after network.py's backprop "
    "(experiments/backprop_numpy.py), with jax.grad of the loss nnx trains with, in float64, on the first "
    f"{BATCH} MNIST training images and a random network (w ~ N(0, 1/n_in), b ~ N(0, 1))."),
    ("The quantity is the largest absolute difference over every weight and bias divided by the largest gradient "
    f"entry; 'agrees' means below {TOLERANCE:g}, i.e. equal to float64 rounding. The absolute differences are "
    "in the CSV beside the figure."),
    ("BP1 uses the book's closed forms: (a - y) sigma'(z) for the quadratic cost, a - y for cross-entropy with "
    "sigmoid outputs and for log-likelihood with softmax outputs."),
]


def build_report(client, out):
    """The chapter 2 table and figure from the store; returns (rows, figure names)."""
    rows = backprop_check(client, out)
    return rows, sorted(p.stem for p in out.glob("fig_*.png"))
