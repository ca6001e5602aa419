import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import pytest

# Silent broadcasting (a row where a column was meant) fails loudly in tests.
jax.config.update("jax_numpy_rank_promotion", "raise")

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def tiny_cfg(**overrides) -> dict:
    """The plain config nnx.build takes, shrunk for tests; keyword groups update their group."""
    cfg = {
        "seed": 0,
        "seeds": None,
        "model": {"depth": 1, "width": 8, "output_activation": "sigmoid"},
        "activation": {"name": "sigmoid"},
        "init": {"name": "default"},
        "cost": {"name": "cross_entropy"},
        "optimizer": {"name": "sgd", "eta": 0.1, "lmbda": 0.0},
        "data": {"name": "mnist", "path": None, "train_size": 100},
        "train": {"epochs": 2, "mini_batch_size": 10, "stop_on_divergence": True, "checkpoint_every": 1},
        "probes": {"size": 50},
    }
    for key, value in overrides.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) else value
    return cfg


@pytest.fixture(scope="session")
def migrated_store(tmp_path_factory):
    """One SQLite store with every MLflow migration applied (seconds each); tests copy it."""
    import mlflow

    folder = tmp_path_factory.mktemp("store")
    mlflow.MlflowClient(f"sqlite:///{folder / 'mlflow.db'}").search_experiments()
    return folder / "mlflow.db"


@pytest.fixture
def store(migrated_store, tmp_path):
    """A fresh embedded store for one test: (tracking URI, MlflowClient)."""
    import mlflow

    folder = tmp_path / "mlruns"
    folder.mkdir()
    shutil.copy(migrated_store, folder / "mlflow.db")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    return uri, mlflow.MlflowClient(uri)


@pytest.fixture
def nnx_train(store, tmp_path):
    """Runs the nnx-train console script into the test's store; returns the CompletedProcess."""
    uri, _ = store

    def run(*args, timeout=300, check=True):
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
        done = subprocess.run(
            [str(BIN / "nnx-train"), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout
        )
        if check and done.returncode != 0:
            raise AssertionError(f"nnx-train {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return done

    return run
