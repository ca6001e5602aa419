"""Glorot & Bengio 2010 and Ioffe & Szegedy 2015 end to end on a shrunken config, each into its own
temporary store, plus the small measures their reports are made of.

Every figure and report row must exist and be finite; numbers are meaningless at this size.
"""


import mlflow
import numpy as np
import pytest

from conftest import check_report, copy_store, reproduce
from experiments import glorot2010, ioffe2015
from experiments.store import sweep_runs

SHRUNK = {
    # 5 hidden layers of 16 (the paper's depth; the reports read the depth from the runs), 1 epoch of
    # 30 updates: enough for the normalized nets to move off chance, so the ranking is defined.
    "glorot2010": ["model.width=16", "data.train_size=300", "train.epochs=1", "probes.size=50"],
    # 5 updates an epoch, 3 probe points, 2 seeds in one vmapped job per case.
    "ioffe2015": ["model.width=16", "data.train_size=300", "train.epochs=2", "probes.size=50", "seeds=[0,1]"],
}
FIGURES = {
    "glorot2010": {"fig_glorot_activations", "fig_glorot_histograms_init", "fig_glorot_jacobians",
                   "fig_glorot_weight_gradients", "fig_glorot_test_error"},
    "ioffe2015": {"fig_ioffe_test_accuracy", "fig_ioffe_sigmoid_input"},
}
IDS = {"glorot2010": {"G.T1", "G.fig2", "G.fig7", "G.4.2.1", "G.fig9"}, "ioffe2015": {"I.1a", "I.1bc"}}


@pytest.fixture(scope="module", params=sorted(SHRUNK))
def finished(request, migrated_store, tmp_path_factory):
    paper = request.param
    folder = tmp_path_factory.mktemp(paper)
    uri = copy_store(migrated_store, folder)
    done = reproduce(paper, "--jobs", "1", "--out", folder / "report", *SHRUNK[paper], uri=uri, cwd=folder)
    assert done.returncode == 0, done.stdout + done.stderr
    return paper, folder, mlflow.MlflowClient(uri), done.stdout


def test_every_figure_and_row_exists_and_is_finite(finished):
    paper, folder, _, output = finished
    check_report(folder / "report", FIGURES[paper], IDS[paper], output)


def test_the_report_is_an_mlflow_run_beside_every_case(finished):
    paper, _, client, _ = finished
    experiment = client.get_experiment_by_name(paper).experiment_id
    report = client.search_runs([experiment], f"tags.`nnx.report` = '{paper}'")[0]
    assert {"report.md", "report.json"} <= {a.path for a in client.list_artifacts(report.info.run_id)}
    module = {"glorot2010": glorot2010, "ioffe2015": ioffe2015}[paper]
    trained = [r for preset in module.SWEEPS for r in sweep_runs(client, paper, preset)]
    # glorot: 3 activations x 2 inits; ioffe: 2 cases x 2 seeds
    assert len(trained) == {"glorot2010": 6, "ioffe2015": 4}[paper]
    assert all(r.info.status == "FINISHED" for r in trained)


def test_ranks_share_ties_like_spearman():
    assert glorot2010.ranks([1.64, 1.72, 1.76, 1.64, 2.21]).tolist() == [1.5, 3.0, 4.0, 1.5, 5.0]


def test_typical_log10_is_the_histograms_centre_of_mass():
    edges = np.linspace(-10.0, 0.0, 51)
    counts = np.zeros(50)
    counts[[10, 30]] = [1, 3]  # bins centred on -7.9 and -3.9 (float64 edges: a few u64 off; approx's rel 1e-6 is loose)
    assert glorot2010.typical_log10(counts, edges) == pytest.approx((-7.9 + 3 * -3.9) / 4)


def test_drift_is_the_mean_range_of_the_percentiles():
    steady = np.array([[-1.0, -1.0], [0.0, 0.0], [1.0, 1.0]])
    assert ioffe2015.drift(steady) == 0.0
    assert ioffe2015.drift(np.array([[-1.0, -2.0, -1.5], [0.0, 0.3, 0.0], [1.0, 1.0, 1.6]])) == pytest.approx((1.0 + 0.3 + 0.6) / 3)


def test_updates_to_reach_counts_whole_epochs_and_the_budget_if_never():
    accuracy = np.array([0.1, 0.5, 0.9, 0.95])
    assert ioffe2015.updates_to_reach(accuracy, 0.9, 100) == 300  # reached after the third epoch
    assert ioffe2015.updates_to_reach(accuracy, 0.99, 100) == 400
