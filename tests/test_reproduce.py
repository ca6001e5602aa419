"""nnx-reproduce's own decisions: which launcher settings it adds, and what a failed sweep's message says."""

import pytest

from conftest import reproduce
from experiments import reproduce as command


def test_jobs_apply_to_the_local_launcher_only():
    assert command.launcher_overrides([], None) == ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    assert command.launcher_overrides(["seed=0"], 1) == []  # one job at a time, in this process
    assert command.launcher_overrides(["hydra/launcher=joblib"], 3) == ["hydra/launcher=joblib", "hydra.launcher.n_jobs=3"]
    # A launcher of the user's own (a cluster) decides how many run at once: nothing of joblib's is added.
    assert command.launcher_overrides(["hydra/launcher=slurm", "hydra.launcher.partition=nnx"], None) == []
    with pytest.raises(SystemExit, match="--jobs sets the local launcher's parallel jobs; with hydra/launcher=slurm"):
        command.launcher_overrides(["hydra/launcher=slurm"], 2)


def test_a_failed_sweep_says_only_what_happened():
    assert "stopped before any run started" in command.failure("ch5_depth", 2, 0)
    assert "the 3 runs it started are in MLflow" in command.failure("ch5_depth", 1, 3)
    assert "the 1 run it started is in MLflow" in command.failure("ch5_depth", 1, 1)


def test_a_config_refused_before_training_leaves_no_run_and_says_so(store, tmp_path):
    uri, client = store
    done = reproduce("ch5", "--jobs", "1", "--out", tmp_path / "report", "model.depth=-1", uri=uri, cwd=tmp_path)
    assert done.returncode != 0
    assert "stopped before any run started" in done.stderr and "runs are in MLflow" not in done.stderr, done.stderr
    assert "model.depth" in done.stderr  # the error above it names the value
    assert not [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id]) if r.data.tags.get("nnx.role") != "report"]
