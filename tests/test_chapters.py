"""Chapters 1, 2 and 3 end to end on a shrunken config, each into its own temporary store.

The three pipelines start at once (chapter 3, the longest, runs beside chapters 1 and 2 on a
2-core machine); each chapter's fixture waits for its own. Every figure and report row must exist
and be finite; numbers are meaningless at this size.
"""

import json
import os
import shutil
import subprocess

import mlflow
import pytest

from conftest import BIN, check_report

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


def command(chapter, uri, *args):
    return [str(BIN / "nnx-reproduce"), chapter, "--tracking-uri", uri, "--jobs", "1", *args]


def environment(uri):
    return {**os.environ, "MLFLOW_TRACKING_URI": uri}


@pytest.fixture(scope="module")
def launched(migrated_store, tmp_path_factory):
    """{chapter: (folder, uri, Popen)}: every pipeline started, none waited for."""
    started = {}
    for chapter in FIGURES:
        folder = tmp_path_factory.mktemp(chapter)
        (folder / "mlruns").mkdir()
        shutil.copy(migrated_store, folder / "mlruns" / "mlflow.db")
        uri = f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}"
        process = subprocess.Popen(command(chapter, uri, "--out", str(folder / "report"), *SHRUNK), cwd=folder,
                                   env=environment(uri), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        started[chapter] = folder, uri, process
    yield started
    for _, _, process in started.values():
        if process.poll() is None:
            process.kill()


def finished(launched, chapter):
    folder, uri, process = launched[chapter]
    output, _ = process.communicate(timeout=900)
    assert process.returncode == 0, output
    return folder, uri, mlflow.MlflowClient(uri), output


@pytest.fixture(scope="module")
def ch1(launched):
    return finished(launched, "ch1")


@pytest.fixture(scope="module")
def ch2(launched):
    return finished(launched, "ch2")


@pytest.fixture(scope="module")
def ch3(launched):
    return finished(launched, "ch3")


@pytest.mark.parametrize("chapter", sorted(FIGURES))
def test_every_figure_and_row_exists_and_is_finite(request, chapter):
    folder, _, _, output = request.getfixturevalue(chapter)
    check_report(folder / "report", FIGURES[chapter], IDS[chapter], output)


@pytest.mark.parametrize("chapter", sorted(FIGURES))
def test_the_report_is_an_mlflow_run(request, chapter):
    _, _, client, _ = request.getfixturevalue(chapter)
    experiment = client.get_experiment_by_name(chapter)
    run = client.search_runs([experiment.experiment_id], f"tags.`nnx.report` = '{chapter}'", order_by=["attributes.start_time"])[0]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.md", "report.json"} | {f"{f}.png" for f in FIGURES[chapter]} <= artifacts


def test_seeds_are_runs_and_quoted_accuracies_have_both(ch1, ch3):
    """The shrunken sweeps keep their structure: 2 seeds per quoted accuracy, best and final epoch rows."""
    for folder in (ch1[0], ch3[0]):
        rows = json.loads((folder / "report" / "report.json").read_text())["rows"]
        quoted = [r for r in rows if r["id"] in ("1.30", "1.100", "3.ce", "3.100") and "the best of" not in r["quantity"]]
        assert quoted and all(r["n_seeds"] == 2 for r in quoted)
        assert any("best epoch" in r["quantity"] for r in quoted) and any("final epoch" in r["quantity"] for r in quoted)


def test_the_single_neuron_and_backprop_are_stored_analyses(ch2, ch3):
    for (_, _, client, _), chapter, preset in ((ch2, "ch2", "ch2_backprop"), (ch3, "ch3", "ch3_neuron")):
        experiment = client.get_experiment_by_name(chapter)
        runs = client.search_runs([experiment.experiment_id], f"tags.`nnx.experiment` = '{preset}' and tags.`nnx.role` = 'analysis'")
        assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    rows = json.loads((ch3[0] / "report" / "report.json").read_text())["rows"]
    flat = next(r for r in rows if r["id"] == "3.neuron" and r["book"] == 150)
    assert flat["verdict"] == "agrees"  # no training data involved: the full-size computation even here


def test_all_redraws_chapter_1_identically_then_goes_on_to_chapter_2(ch1):
    """`all --plot-only` on chapter 1's store: chapter 1 redrawn from the store alone, then chapter 2,
    which this store never ran, stops with what to run."""
    folder, uri, client, _ = ch1
    experiment = client.get_experiment_by_name("ch1").experiment_id
    before = len(client.search_runs([experiment], "tags.`nnx.role` != 'report'"))
    done = subprocess.run(command("all", uri, "--plot-only", "--out", str(folder / "again")), cwd=folder,
                          env=environment(uri), capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "no finished ch2_backprop run" in done.stderr and "nnx-reproduce ch2" in done.stderr
    assert len(client.search_runs([experiment], "tags.`nnx.role` != 'report'")) == before
    for name in FIGURES["ch1"]:
        assert (folder / "again" / "ch1" / f"{name}.csv").read_bytes() == (folder / "report" / f"{name}.csv").read_bytes()
