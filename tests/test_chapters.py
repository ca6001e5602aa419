"""Chapters 1, 2 and 3 end to end on a shrunken config, in turn into one temporary store.

Every figure and report row must exist and be finite; numbers are meaningless at this size.
"""

import json

import mlflow
import pytest

from conftest import check_report, copy_store, reproduce

# 200 images (so the full batch, 200, differs from mini-batch 100), 2 epochs, no checkpoints, and 2 seeds
# trained by one vmapped job (seeds=[0,1]; seed=0 replaces each preset's seed sweep): the same runs, one
# per seed under the sweep's parent, from half the jobs. model.width is left alone: the reports key the
# book's numbers by 30 and 100 hidden neurons.
SHRUNK = ["train.epochs=2", "data.train_size=200", "probes.size=50", "seed=0", "seeds=[0,1]", "train.checkpoint_every=0"]
FIGURES = {
    "ch1": {"fig_1_accuracy", "fig_1_learning_rates", "fig_1_online"},
    "ch2": {"fig_2_backprop_check"},
    "ch3": {
        "fig_3_cross_entropy_vs_quadratic", "fig_3_single_neuron", "fig_3_overfitting1_training_cost",
        "fig_3_overfitting2_test_accuracy", "fig_3_overfitting3_test_cost", "fig_3_overfitting4_training_accuracy",
        "fig_3_regularized1_training_cost", "fig_3_regularized2_test_accuracy", "fig_3_overfitting_full",
        "fig_3_regularized_full", "fig_3_weight_initialization_30", "fig_3_weight_initialization_100",
        "fig_3_more_data", "fig_3_multiple_eta", "fig_3_100_hidden_lmbda5",
    },
}
IDS = {
    "ch1": {"1.30", "1.100", "1.eta", "1.online"},
    "ch2": {"2.BP"},
    "ch3": {"3.ce", "3.neuron", "3.overfitting", "3.regularized", "3.overfitting_full", "3.regularized_full", "3.init",
            "3.more_data", "3.multiple_eta", "3.100"},
}


@pytest.fixture(scope="module")
def chapters(migrated_store, tmp_path_factory):
    """ch1, ch2 and ch3 reproduced in turn into one store, as `nnx-reproduce all` would: ch3's own
    ch1_accuracy sweep finds chapter 1's runs FINISHED and trains nothing twice.
    Returns (folder, uri, client, {chapter: CompletedProcess})."""
    folder = tmp_path_factory.mktemp("chapters")
    uri = copy_store(migrated_store, folder)
    done = {}
    for chapter in FIGURES:
        done[chapter] = reproduce(chapter, "--jobs", "1", "--out", folder / "report" / chapter, *SHRUNK, uri=uri, cwd=folder)
        assert done[chapter].returncode == 0, done[chapter].stdout + done[chapter].stderr
    return folder, uri, mlflow.MlflowClient(uri), done


@pytest.fixture(scope="module")
def ch1(chapters):
    folder, uri, client, done = chapters
    return folder / "report" / "ch1", uri, client, done["ch1"].stdout


@pytest.fixture(scope="module")
def ch2(chapters):
    folder, uri, client, done = chapters
    return folder / "report" / "ch2", uri, client, done["ch2"].stdout


@pytest.fixture(scope="module")
def ch3(chapters):
    folder, uri, client, done = chapters
    return folder / "report" / "ch3", uri, client, done["ch3"].stdout


@pytest.mark.parametrize("chapter", sorted(FIGURES))
def test_every_figure_and_row_exists_and_is_finite(request, chapter):
    report, _, _, output = request.getfixturevalue(chapter)
    check_report(report, FIGURES[chapter], IDS[chapter], output)


@pytest.mark.parametrize("chapter", sorted(FIGURES))
def test_the_report_is_an_mlflow_run(request, chapter):
    _, _, client, _ = request.getfixturevalue(chapter)
    experiment = client.get_experiment_by_name(chapter)
    run = client.search_runs([experiment.experiment_id], f"tags.`nnx.report` = '{chapter}'", order_by=["attributes.start_time"])[0]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.md", "report.json"} | {f"{f}.png" for f in FIGURES[chapter]} <= artifacts


def test_seeds_are_runs_and_quoted_accuracies_have_both(ch1, ch3):
    """The shrunken sweeps keep their structure: 2 seeds per quoted accuracy, best and final epoch rows."""
    for report in (ch1[0], ch3[0]):
        rows = json.loads((report / "report.json").read_text())["rows"]
        quoted = [r for r in rows if r["id"] in ("1.30", "1.100", "3.ce", "3.100") and "the best of" not in r["quantity"]]
        assert quoted and all(r["n_seeds"] == 2 for r in quoted)
        assert any("best epoch" in r["quantity"] for r in quoted) and any("final epoch" in r["quantity"] for r in quoted)


def test_the_single_neuron_and_backprop_are_stored_analyses(ch2, ch3):
    for (_, _, client, _), chapter, preset in ((ch2, "ch2", "ch2_backprop"), (ch3, "ch3", "ch3_neuron")):
        experiment = client.get_experiment_by_name(chapter)
        runs = client.search_runs([experiment.experiment_id], f"tags.`nnx.experiment` = '{preset}' and tags.`nnx.role` = 'analysis'")
        assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    rows = json.loads((ch3[0] / "report.json").read_text())["rows"]
    flat = next(r for r in rows if r["id"] == "3.neuron" and r["book"] == 150)
    assert flat["verdict"] == "agrees"  # no training data involved: the full-size computation even here


def test_ch3_trained_chapter_1s_runs_only_once(chapters):
    """ch3 sets chapter 1's quadratic-cost runs beside cross-entropy: in a store that has them, its
    ch1_accuracy sweep skips every job (same preset, same config) and links the finished runs."""
    _, _, client, _done = chapters
    experiment = client.get_experiment_by_name("ch1").experiment_id
    found = client.search_runs([experiment], "tags.`nnx.experiment` = 'ch1_accuracy'")
    sweeps = [r for r in found if r.data.tags.get("nnx.role") == "sweep"]
    trained = [r for r in found if r not in sweeps]
    assert len(trained) == 2 * 2  # widths 30 and 100, seeds 0 and 1: once
    assert len(sweeps) == 2 and {s.info.status for s in sweeps} == {"FINISHED"}
    assert {r.data.tags["mlflow.parentRunId"] for r in trained} == {max(sweeps, key=lambda r: r.info.start_time).info.run_id}


def test_all_redraws_chapters_1_to_3_identically_then_stops_at_the_next(chapters):
    """`all --plot-only` on the chapters' store: ch1, ch2 and ch3 redrawn from the store alone, then
    ch3hp (chapter 3's hyper-parameter section, next in `all`), which this store never ran, stops
    with what to run, and nothing was trained."""
    folder, uri, client, _ = chapters
    experiments = [client.get_experiment_by_name(c).experiment_id for c in FIGURES]
    before = len(client.search_runs(experiments, "tags.`nnx.role` != 'report'"))
    done = reproduce("all", "--plot-only", "--out", folder / "again", uri=uri, cwd=folder)
    assert done.returncode != 0 and "no finished ch3hp_broad sweep" in done.stderr and "nnx-reproduce ch3hp" in done.stderr
    assert len(client.search_runs(experiments, "tags.`nnx.role` != 'report'")) == before
    for chapter, figures in FIGURES.items():
        for name in figures:
            again = (folder / "again" / chapter / f"{name}.csv").read_bytes()
            assert again == (folder / "report" / chapter / f"{name}.csv").read_bytes(), (chapter, name)
