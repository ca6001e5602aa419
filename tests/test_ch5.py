"""Chapter 5's pipeline end to end on a shrunken config, and the vanishing pattern at init."""

import json
import math

import jax
import numpy as np
import pytest

import nnx
from conftest import copy_store, reproduce, tiny_cfg

# Two seeds trained as one vmapped job per config (seeds=[0,1]; seed=0 replaces the presets' seed
# sweeps): one run per seed under each sweep's parent, as separate jobs would give, from half the jobs.
SHRUNK = ["train.epochs=2", "data.train_size=100", "train.mini_batch_size=50", "probes.size=100", "model.width=8",
          "seed=0", "seeds=[0,1]"]
FIGURES = {
    "fig_5_1_depth_accuracy", "fig_5_5_bias_gradients", "fig_5_6_init_norms", "fig_5_7_speed_2_hidden",
    "fig_5_8_speed_3_hidden", "fig_5_9_speed_4_hidden", "fig_5_ratio_last_first", "fig_5_exploding",
    "fig_5_allowed_range", "fig_5_beyond_init_norms", "fig_5_beyond_speed",
}


def reproduce_ch5(uri, cwd, *args):
    done = reproduce("ch5", *args, uri=uri, cwd=cwd)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.fixture(scope="module")
def pipeline(migrated_store, tmp_path_factory):
    import mlflow

    folder = tmp_path_factory.mktemp("ch5")
    uri = copy_store(migrated_store, folder)
    done = reproduce_ch5(uri, folder, "--out", str(folder / "report"), "--jobs", "1", *SHRUNK)
    return folder, uri, mlflow.MlflowClient(uri), done


def test_every_figure_and_row_exists_and_is_finite(pipeline):
    folder, _, _, done = pipeline
    out = folder / "report"
    for name in FIGURES:
        assert (out / f"{name}.png").stat().st_size > 1000
        assert len((out / f"{name}.csv").read_text().splitlines()) > 1
    rows = json.loads((out / "report.json").read_text())["rows"]
    ids = {r["id"] for r in rows}
    assert {"5.1", "5.2", "5.3", "5.4", "5.5", "5.6", "5.9", "5.exploding", "5.analytic", "beyond"} <= ids
    for r in rows:
        assert set(r) >= {"id", "quantity", "book", "ours_mean", "ours_sd", "n_seeds", "tolerance", "verdict"}
        assert math.isfinite(r["ours_mean"]) and math.isfinite(r["ours_sd"]) and r["verdict"] != "no data"
    assert sum(r["id"] == "5.6" for r in rows) == (2 + 3 + 4) + (1 + 2 + 3)  # norms and neighbour ratios
    assert all(r["n_seeds"] == 2 for r in rows if r["id"] in ("5.1", "5.6", "beyond"))
    assert "| 5.4 |" in done.stdout and "report.md" in {p.name for p in out.iterdir()}


def test_the_report_is_an_mlflow_run(pipeline):
    _, _, client, _ = pipeline
    experiment = client.get_experiment_by_name("ch5")
    (run,) = client.search_runs([experiment.experiment_id], "tags.`nnx.report` = 'ch5'")
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.md", "report.json", "fig_5_6_init_norms.png", "fig_5_6_init_norms.csv"} <= artifacts


def test_plot_only_redraws_identical_numbers_without_training(pipeline):
    folder, uri, client, _ = pipeline
    before = len(client.search_runs([client.get_experiment_by_name("ch5").experiment_id], "tags.`nnx.role` != 'report'"))
    reproduce_ch5(uri, folder, "--plot-only", "--out", str(folder / "again"))
    after = len(client.search_runs([client.get_experiment_by_name("ch5").experiment_id], "tags.`nnx.role` != 'report'"))
    assert after == before
    for name in FIGURES:
        assert (folder / "again" / f"{name}.csv").read_bytes() == (folder / "report" / f"{name}.csv").read_bytes()


def test_plot_only_on_an_empty_store_says_what_to_run(store, tmp_path):
    uri, _ = store
    done = reproduce("ch5", "--plot-only", "--out", tmp_path / "r", uri=uri, cwd=tmp_path)
    assert done.returncode != 0 and "no finished ch5_depth sweep" in done.stderr and "nnx-reproduce ch5" in done.stderr


def test_sigmoid_gradients_at_init_grow_from_first_to_last_hidden_layer():
    """The vanishing pattern as a property: in [784,30,30,30,30,10] at init, each hidden layer's
    ||mean dC/db|| exceeds the one before it, for every seed."""
    data = nnx.load(train_size=1000)
    spec = nnx.build(tiny_cfg(model={"depth": 4, "width": 30, "output_activation": "sigmoid"},
                              data={"name": "mnist", "path": None, "train_size": 1000}, probes={"size": 1000}))
    probe = nnx.make_probe(spec)
    for seed in range(5):
        params = nnx.init(jax.random.PRNGKey(seed), spec.net)
        norms = np.asarray(probe(params, data.train.x, data.train.y)["grad_norm"])
        assert np.all(np.diff(norms) > 0), (seed, norms)
        assert norms[-1] / norms[0] > 10
