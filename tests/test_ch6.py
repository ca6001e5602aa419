"""Chapter 6 end to end on a shrunken config (every figure and row exists and is finite), and the
ensemble's vote against a hand count."""

import json
import time

import mlflow
import numpy as np
import pytest

from conftest import check_report, copy_store, reproduce
from experiments import ch6

# 50 images (250 expanded), one epoch, one seed, and one small net per preset (2 then 3 maps, FC 8: the
# sweeps over architectures collapse to 6.conv2 and 6.expanded), so the "ensemble" is one net: the
# pipeline's structure, not its numbers. The scaled defaults (ch6.SCALED) come first; these override
# them. Every preset's own architectures are composed and built in test_config.py, and case_of
# (which row a run is) is checked below on all of them.
SHRUNK = ["data.train_size=50", "train.epochs=1", "seed=0", "probes.size=20", "train.checkpoint_every=0",
          "model.conv_maps=[2,3]", "model.fc=[8]"]
FIGURES = {"fig_6_accuracy", "fig_6_misclassified", "fig_6_filters", "fig_6_gradients"}
IDS = {"6.conv2", "6.relu", "6.expanded", "6.dropout", "6.ensemble", "6.order", "6.gradients", "6.params"}


@pytest.fixture(scope="module")
def pipeline(migrated_store, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ch6")
    uri = copy_store(migrated_store, folder)
    done = reproduce("ch6", "--jobs", "1", "--out", folder / "report", *SHRUNK, uri=uri, cwd=folder)
    assert done.returncode == 0, done.stdout + done.stderr
    return folder, mlflow.MlflowClient(uri), done.stdout


def test_every_figure_and_row_exists_and_is_finite(pipeline):
    folder, _, printed = pipeline
    rows = check_report(folder / "report", FIGURES, IDS, printed)
    assert {r["book"] for r in rows if r["id"] == "6.params"} == {520, 23_550}
    assert all(r["verdict"] == "agrees" for r in rows if r["id"] == "6.params")
    text = (folder / "report" / "report.md").read_text()
    assert "the first 50 training images (x5 expanded), 1 epoch, 1 seed" in text
    # Shrunk, the runs are not the book's protocol: each accuracy row says so, with its gap to the book.
    accuracies = [r for r in rows if r["tolerance_kind"] == "abs" and r["id"] != "6.params"]
    assert accuracies and all(r["verdict"] == f"scaled ({r['ours_mean'] - r['book']:+.3g} points)" for r in accuracies)
    assert {r["protocol"] for r in accuracies} == {"scaled: " + " ".join(o for o in SHRUNK if not o.startswith(("seed=", "train.checkpoint")))}
    assert "Protocol of each row: scaled (" in text


def test_the_runs_follow_network3(pipeline):
    """Every chapter 6 run: conv model, network3 init, unshuffled mini-batches of 10, no training-set
    evaluation, and the expanded rows on 5 images per original."""
    _, client, _ = pipeline
    runs = client.search_runs([client.get_experiment_by_name("ch6").experiment_id])
    trained = [r for r in runs if "model.name" in r.data.params]
    assert len(trained) == 4
    for r in trained:
        p = r.data.params
        assert (p["model.name"], p["init.name"], p["train.shuffle"], p["train.mini_batch_size"]) == ("conv", "network3", "False", "10")
        assert "train_accuracy" not in r.data.metrics and "test_accuracy_at_best_val" in r.data.metrics
    expanded = [r for r in trained if r.data.params["data.name"] == "mnist_expanded"]
    assert len(expanded) == 2 and {r.data.params["model.dropout"] for r in expanded} == {"0.0", "0.5"}


@pytest.mark.parametrize("preset,maps,fc,case", [
    ("ch6_basic", "[]", "[100]", "6.fc"), ("ch6_basic", "[20]", "[100]", "6.conv1"), ("ch6_basic", "[20, 40]", "[100]", "6.conv2"),
    ("ch6_relu", "[20, 40]", "[100]", "6.relu"), ("ch6_expanded", "[20, 40]", "[100]", "6.expanded"),
    ("ch6_expanded", "[20, 40]", "[300]", "6.fc300"), ("ch6_expanded", "[20, 40]", "[1000]", "6.fc1000"),
    ("ch6_expanded", "[20, 40]", "[100, 100]", "6.fc2"), ("ch6_dropout", "[20, 40]", "[1000, 1000]", "6.dropout"),
])
def test_each_presets_networks_map_to_their_rows(preset, maps, fc, case):
    class Run:
        class data:
            tags = {"nnx.experiment": preset}  # noqa: RUF012 - a stand-in for an MLflow run
            params = {"model.conv_maps": maps, "model.fc": fc}  # noqa: RUF012

    assert ch6.case_of(Run) == case


def test_the_vote_is_a_plurality_with_ties_to_the_smallest_digit():
    predictions = np.array([[3, 1, 7, 2, 9],
                            [3, 4, 7, 5, 8],
                            [5, 4, 1, 2, 8],
                            [5, 1, 1, 0, 9],
                            [3, 2, 6, 0, 0]])
    # image 0: 3 three times; 1: 1 and 4 twice each (tie -> 1); 2: 7 and 1 twice (tie -> 1); 3: 2 and 0 twice
    # (tie -> 0); 4: 9 and 8 twice (tie -> 8)
    np.testing.assert_array_equal(ch6.vote(predictions), [3, 1, 1, 0, 8])


def test_the_reported_epoch_is_the_best_validation_one_with_ties_to_the_later():
    class Run:
        class info:
            run_id = "x"

    histories = {"val_accuracy": np.array([0.5, 0.9, 0.8, 0.9]), "test_accuracy": np.array([0.4, 0.85, 0.95, 0.87])}
    original = ch6.history
    ch6.history = lambda client, run, key: histories[key]
    try:
        assert ch6.reported(None, Run) == (90.0, 87.0)
    finally:
        ch6.history = original
    json.dumps(ch6.SCALED)  # plain overrides: the report quotes them


def test_the_books_protocol_is_shown_beside_the_latest_scaled_runs_and_judged_at_its_tolerance(store, tmp_path):
    """A store with a 6.fc sweep at the book's protocol, then a scaled one: the report judges the book's
    runs at 0.3 points and gives the scaled runs their gap, each row saying its protocol."""
    from experiments.store import runs_by_protocol
    from nnx.edges import tracking

    _, client = store
    experiment_id = tracking.open_experiment(client.tracking_uri, "ch6")[1]
    sweeps = {"book": ("experiment=ch6_basic seed=0,1 model.conv_maps=[]", None, [97.9, 97.6]),
              "scaled": ("experiment=ch6_basic data.train_size=20000 train.epochs=8 model.conv_maps=[]", "20000", [96.5, 96.2])}
    for overrides, size, accuracies in sweeps.values():  # the book's first, the scaled one latest
        parent = tracking.Run.start(client, experiment_id, name="sweep", params={},
                                    tags={"nnx.role": "sweep", "nnx.experiment": "ch6_basic", "nnx.overrides": overrides})
        for seed, accuracy in enumerate(accuracies):
            run = tracking.Run.start(client, experiment_id, name=f"seed={seed}", parent_run_id=parent.run_id,
                                     tags={"nnx.experiment": "ch6_basic"},
                                     params={"model.conv_maps": "[]", "model.fc": "[100]", "seed": seed, "data.train_size": size,
                                             "train.epochs": 2, "data.name": "mnist"})
            for step, acc in enumerate((accuracy - 1, accuracy)):
                run.log_metrics(step, {"val_accuracy": acc / 100, "test_accuracy": acc / 100})
            run.end("FINISHED")
        parent.end("FINISHED")
        time.sleep(0.01)  # distinct start times: the scaled sweep is the latest

    found = runs_by_protocol(client, "ch6", "ch6_basic")
    # model.conv_maps=[]: one of ch6_basic's own nets, picked from its sweep (not a change of protocol)
    assert [p for p, _ in found] == ["scaled: data.train_size=20000 train.epochs=8", "book"]
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(ch6, "SWEEPS", ("ch6_basic",))
    try:
        groups = ch6.cases(client)
    finally:
        monkeypatch.undo()
    assert list(groups) == ["book", found[0][0]]
    rows = ch6.accuracy_rows(client, tmp_path, groups)
    mean = {r["protocol"]: r for r in rows if "best of" not in r["quantity"]}
    assert mean["book"]["verdict"] == "agrees" and mean["book"]["tolerance"] == 0.3  # 97.75 against 97.80
    assert "all 50,000 training images, 2 epochs, 2 seeds" in mean["book"]["quantity"]
    assert mean["scaled: data.train_size=20000 train.epochs=8"]["verdict"] == "scaled (-1.45 points)"
    assert (tmp_path / "fig_6_accuracy.png").exists()
