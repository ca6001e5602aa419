"""Chapter 4: the constructions against independent formulas, and the reproduction end to end."""

import json
import math

import jax
import numpy as np
import pytest

import nnx
from conftest import check_report, copy_store, reproduce
from experiments import ch4
from experiments import universality as U


def logistic(z):
    """The sigmoid in another closed form than experiments.universality's."""
    return 0.5 * (1.0 + np.tanh(np.asarray(z, float) / 2.0))


def book_score(heights) -> float:
    """The book's score written out: the mean over x = i/100, i = 0..99, of |sigma^-1(f(x)) - h_k| with
    bump k holding 20k <= i < 20(k + 1)."""
    total = 0.0
    for i in range(100):
        x = i / 100
        f = 0.2 + 0.4 * x * x + 0.3 * x * math.sin(15 * x) + 0.05 * math.cos(50 * x)
        total += abs(math.log(f / (1 - f)) - heights[i // 20])
    return total / 100


def test_the_five_bump_score_is_the_books_formula():
    series, _ = ch4._five_bumps()
    # float64 both (numpy against math, log - log1p against log(f / (1 - f))): 100 terms of O(1), each within a
    # few u64, averaged: ~1e-15; abs 1e-12 is loose. The book prints its heights and score to 3 decimals: the
    # heights' rounding (<= 5e-4) moves a mean of |...| by <= 5e-4, the score's own by 5e-4: abs 1e-3.
    assert series["score_median"][0] == pytest.approx(book_score(series["median_height"]), abs=1e-12)
    assert series["score_lsq"][0] == pytest.approx(book_score(series["lsq_height"]), abs=1e-12)
    assert book_score(ch4.BOOK_HEIGHTS) == pytest.approx(ch4.BOOK_SCORE, abs=1e-3)
    assert series["score_median"][0] < series["score_lsq"][0] < ch4.BOOK_SUCCESS


def test_the_best_heights_minimise_the_score_and_least_squares_the_squares():
    series, arrays = ch4._five_bumps()
    best, lsq, target = series["median_height"], series["lsq_height"], arrays["target"]
    for k in range(5):
        for delta in (-1e-3, 1e-3):
            moved = best.copy()
            moved[k] += delta
            assert book_score(moved) > book_score(best) - 1e-12
    # float64 least squares on a 0/1 design of orthogonal columns, equal norms (condition number 1): a few u64 of |target| ~ 2
    assert lsq == pytest.approx([np.mean(target[20 * k: 20 * (k + 1)]) for k in range(5)], abs=1e-12)


def test_a_neuron_steps_at_minus_b_over_w_and_sharpens_as_one_over_w():
    # float64 bisection to adjacent floats (200 halvings): the crossings are found to a few ulps of x ~ 0.4
    # (~1e-16) plus sigma's error over w sigma' (~1e-16); the tolerances below are far looser.
    for w, s in ((8.0, 0.4), (999.0, 0.4), (1000.0, 0.2)):
        b = -w * s
        assert U.crossing(lambda x, w=w, b=b: U.neuron(x, w, b), 0.5, 0.0, 1.0) == pytest.approx(s, abs=1e-12)
        assert U.step_width(w, b) == pytest.approx(2 * math.log(9) / w, rel=1e-9)
    assert U.sigma(-50.0) == pytest.approx(math.exp(-50) / (1 + math.exp(-50)), rel=1e-12)


def test_a_hand_built_network_is_the_books_bumps():
    """N steps with output weights h_k - h_{k-1}, run by nnx, equal the book's N bumps of heights h_k."""
    n, w = 7, 1000.0
    heights = np.random.default_rng(0).normal(size=n)
    x = np.linspace(0.0, 0.99, 397)
    bumps = sum(h * (logistic(w * (x - k / n)) - logistic(w * (x - (k + 1) / n))) for k, h in enumerate(heights))
    net = nnx.model.mlp((1, n, 1), nnx.INITIALIZERS["default"](), nnx.ACTIVATIONS["sigmoid"](), nnx.ACTIVATIONS["sigmoid"]())
    with jax.enable_x64(True):
        z, _ = nnx.feedforward(net, U.step_network(n, w, np.diff(heights, prepend=0.0)), x[:, None])
    assert np.max(np.abs(np.asarray(z)[:, 0] - bumps)) < 1e-3  # the last bump's fall at x = 1 is not there
    # float64 both (XLA's and numpy's 7-term sums of O(1) terms): ~7 u64 ~ 1e-15; atol 1e-12 is loose
    assert np.allclose(U.hidden_steps(x, n, w) @ np.diff(heights, prepend=0.0), np.asarray(z)[:, 0], atol=1e-12)


def test_the_tower_is_2h_on_a_plateau_of_h():
    h, kw = 10.0, {"x_edges": (0.4, 0.6), "y_edges": (0.3, 0.7), "w": 1000.0}
    for (x, y), level in (((0.5, 0.5), 2 * h), ((0.5, 0.1), h), ((0.1, 0.5), h), ((0.9, 0.9), 0.0)):
        hidden, a = U.tower(x, y, h=h, **kw)
        # float64: the steps at w = 1000 are 1 or 0 to within e^-100 at these points; h sigma sums err by ~u64 h
        assert hidden == pytest.approx(level, abs=1e-9)
        assert a == pytest.approx(1 / (1 + math.exp(-(level - 1.5 * h))), rel=1e-9)


SHRUNK = ch4.Training(ns=(5,), seeds=(0, 1), steps=100, record_every=50)  # one N: one compile
IDS = {"4.step_w8", "4.step_w100", "4.step_w999", "4.bump", "4.bumps5_heights", "4.bumps5_score", "4.bumps5_lsq",
       "4.bumps5_net", "4.tower"} | {f"4.{kind}_N{n}" for kind in ("handbuilt", "trained") for n in SHRUNK.ns}
FIGURES = {"fig_4_step", "fig_4_bump", "fig_4_five_bumps", "fig_4_error_vs_bumps", "fig_4_fits", "fig_4_tower"}


@pytest.fixture(scope="module")
def pipeline(migrated_store, tmp_path_factory):
    """ch4 with a shrunken training (TRAINING is the one knob) into a fresh store."""
    import mlflow

    folder = tmp_path_factory.mktemp("ch4")
    uri = copy_store(migrated_store, folder)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ch4, "TRAINING", SHRUNK)
        patch.setattr(ch4, "TOWER_GRID", np.linspace(0.0, 1.0, 41))
        done = reproduce("ch4", "--out", folder / "report", uri=uri, cwd=folder)
        assert done.returncode == 0, done.stdout + done.stderr
        again = reproduce("ch4", "--plot-only", "--out", folder / "again", uri=uri, cwd=folder)
        assert again.returncode == 0, again.stdout + again.stderr
    return folder, mlflow.MlflowClient(uri), done


def test_every_figure_and_row_exists_and_the_books_numbers_agree(pipeline):
    folder, client, done = pipeline
    rows = check_report(folder / "report", FIGURES, IDS, done.stdout)
    compared = [r for r in rows if r["tolerance_kind"] != "none"]
    assert len(compared) == 3 + 2 + 5 + 1 + 1 + 4 and all(r["verdict"] == "agrees" for r in compared), compared
    assert sum(r["id"].startswith("4.trained") for r in rows) == 2 * len(SHRUNK.ns)
    assert all(r["n_seeds"] == len(SHRUNK.seeds) for r in rows if r["id"].startswith("4.trained"))
    (run,) = client.search_runs([client.get_experiment_by_name("ch4").experiment_id], "tags.`nnx.report` = 'ch4'",
                                order_by=["attributes.start_time"], max_results=1)
    assert {"report.md", "report.json"} | {f"{f}.png" for f in FIGURES} <= {a.path for a in client.list_artifacts(run.info.run_id)}


def test_the_stored_training_is_consistent(pipeline):
    """The last recorded RMS is the RMS of the stored trained output, and the score rows are the book's
    formula on it: the report reads what training produced."""
    from experiments.store import analysis_arrays, latest_run

    folder, client, _ = pipeline
    arrays = analysis_arrays(client, latest_run(client, "ch4", "ch4_n_bumps"))
    assert arrays["trained_rms"].shape == (len(SHRUNK.ns), len(SHRUNK.seeds), SHRUNK.steps // SHRUNK.record_every + 1)
    rms = np.sqrt(np.mean((arrays["trained"] - arrays["target"]) ** 2, axis=-1))
    # Training's float32 sqrt(mean((z - target)^2)) against float64 from the stored z: the target's float32
    # rounding (u |target| <= 1.4e-7 against residuals of rms ~0.6), the mean of 500 squares (gamma_500 / 2
    # = 1.5e-5 relative, Higham) and z evaluated twice in one program (a 5-term sum, a few u): <= 2e-5, inside
    # rtol 1e-4 (measured 4e-8).
    assert np.allclose(arrays["trained_rms"][..., -1], rms, rtol=1e-4)
    assert np.all(arrays["trained_rms"][..., -1] < arrays["trained_rms"][..., 0])
    rows = json.loads((folder / "report" / "report.json").read_text())["rows"]
    score = next(r for r in rows if r["id"] == "4.trained_N5" and "score" in r["quantity"])
    # float64 both, the same numbers averaged in another grouping (per seed, then over seeds): ~1e-15
    assert score["ours_mean"] == pytest.approx(np.mean(np.abs(arrays["trained"][0] - arrays["target"])), rel=1e-9)


def test_plot_only_redraws_identical_numbers(pipeline):
    folder, _, _ = pipeline
    for name in FIGURES:
        assert (folder / "again" / f"{name}.csv").read_bytes() == (folder / "report" / f"{name}.csv").read_bytes()


def test_plot_only_on_an_empty_store_says_what_to_run(store, tmp_path):
    uri, _ = store
    done = reproduce("ch4", "--plot-only", "--out", tmp_path / "r", uri=uri, cwd=tmp_path)
    assert done.returncode != 0 and "no finished ch4_step run" in done.stderr and "nnx-reproduce ch4" in done.stderr
