"""A shared tracking server: `mlflow server` on 127.0.0.1 backed by a PostgreSQL the test starts."""

import glob
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import free_port, mlflow_server, train_in_process
from test_slurm import LAUNCHER, TINY, check_sweep, cluster  # noqa: F401  (cluster: the test SLURM cluster fixture)

PG_BINS = sorted(glob.glob("/usr/lib/postgresql/*/bin"))


def as_postgres(*command):
    subprocess.run(["runuser", "-u", "postgres", "--", *command], check=True, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def postgres():
    if not PG_BINS or shutil.which("runuser") is None:
        pytest.skip("PostgreSQL is not installed here (Debian: apt-get install postgresql; .ci/run installs it)")
    pg = Path(PG_BINS[-1])
    folder = Path(tempfile.mkdtemp(prefix="nnx-pg-"))
    shutil.chown(folder, "postgres", "postgres")
    data, port = folder / "data", free_port()
    as_postgres(str(pg / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres")
    as_postgres(str(pg / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"), "-w", "start",
                "-o", f"-p {port} -k {folder} -c listen_addresses=127.0.0.1")
    try:
        as_postgres(str(pg / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "mlflow")
        # The driver named: SQLAlchemy 2.1 would otherwise look for psycopg 3.
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/mlflow"
    finally:
        as_postgres(str(pg / "pg_ctl"), "-D", str(data), "-m", "fast", "stop")
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def server(postgres, tmp_path_factory):
    artifacts = tmp_path_factory.mktemp("server-artifacts")
    with mlflow_server(postgres, artifacts, "--artifacts-destination", str(artifacts)) as url:
        yield url


def test_16_parallel_jobs_through_the_server_lose_nothing(server, tmp_path):
    import mlflow

    done = train_in_process(["-m", "seed=range(16)", "train.epochs=3", "model.width=8", "data.train_size=100", "probes.size=50",
                             "tracking=server", f"tracking.uri={server}", "tracking.experiment=server", "hydra/launcher=joblib",
                             "hydra.launcher.n_jobs=4"], tmp_path, {"MLFLOW_TRACKING_URI": None})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    client = mlflow.MlflowClient(server)
    found = client.search_runs([client.get_experiment_by_name("server").experiment_id])
    parents = [r for r in found if r.data.tags.get("nnx.role") == "sweep"]
    children = [r for r in found if r not in parents]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 16 and {r.info.status for r in children} == {"FINISHED"}
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    for r in children:
        assert [m.step for m in client.get_metric_history(r.info.run_id, "val_accuracy")] == [0, 1, 2]
        assert {"config.yaml", "params.npz", "history.npz"} <= {a.path for a in client.list_artifacts(r.info.run_id)}


def test_a_slurm_sweep_tracks_into_the_server(cluster, server, tmp_path):  # noqa: F811
    """test_slurm's sweep with this module's server as the store (here, not there, so the suite
    starts one server: its first answer takes ~30 s)."""
    import mlflow

    done = train_in_process(["-m", *LAUNCHER, *TINY, "train.epochs=2", "tracking=server", f"tracking.uri={server}",
                             "tracking.experiment=slurm_server", "seed=0,1"], tmp_path, {"MLFLOW_TRACKING_URI": None})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    check_sweep(mlflow.MlflowClient(server), "slurm_server", [0, 1], 2, tmp_path)
