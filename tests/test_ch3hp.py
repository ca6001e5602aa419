"""Chapter 3's hyper-parameter section (nnx-reproduce ch3hp) end to end on a shrunken config: every
figure and row exists and is finite, and the search's trials are recorded as the sweeper promises."""

import mlflow

from conftest import check_report, copy_store, reproduce

# 200 images and 2 epochs for every sweep (the search: 3 trials of 2 epochs, its budget of 3 trials),
# one seed where a preset trains several, and no checkpoints. Numbers are meaningless at this size.
SHRUNK = ["train.epochs=2", "data.train_size=200", "probes.size=50", "seeds=[0]", "train.checkpoint_every=0"]
FIGURES = {"fig_3hp_broad_strategy", "fig_3hp_threshold", "fig_3hp_stopping", "fig_3hp_search"}
IDS = {"3hp.broad", "3hp.threshold", "3hp.stopping", "3hp.search"}


def test_ch3hp_reproduces_every_row_and_figure(migrated_store, tmp_path):
    uri = copy_store(migrated_store, tmp_path)
    done = reproduce("ch3hp", "--jobs", "1", "--out", tmp_path / "report", *SHRUNK, uri=uri, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = check_report(tmp_path / "report", FIGURES, IDS, done.stdout)
    assert sum(r["id"] == "3hp.broad" for r in rows) == 8  # the book's four runs, each epoch trained here (2 of its 3-4)
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("ch3hp").experiment_id
    runs = client.search_runs([experiment], "tags.`nnx.experiment` = 'ch3hp_search'")
    parent = next(r for r in runs if r.data.tags.get("nnx.role") == "sweep")
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FINISHED" and len(trials) == 3 and parent.data.tags["nnx.search.epochs"] == "6"
    assert all(t.info.status == "FINISHED" for t in trials)
    assert sum(t.data.tags.get("nnx.best_trial") == "true" for t in trials) == 1
