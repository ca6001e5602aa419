"""A shared tracking server as `make server` starts it (nnx.edges.server): PostgreSQL on a private
socket and `mlflow server --app-name basic-auth` on 127.0.0.1, one of each for the whole module
(the server takes ~20-30 s to answer its first request here)."""

import os
import secrets
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest
from test_slurm import LAUNCHER, check_sweep, cluster  # noqa: F401  (cluster: the test SLURM cluster fixture)
from test_slurm import TINY as SLURM_TINY

from conftest import free_port, train_in_process
from nnx.edges import configs, server, tracking


class Lab:
    """The module's server: its folder, URL and admin login; kill() and start() it at will."""

    def __init__(self, folder: Path, uris: dict):
        self.folder, self.uris, self.port, self.process = folder, uris, free_port(), None
        self.url = f"http://127.0.0.1:{self.port}"
        self.seen = []  # (folder, printed text) of every nnx-train the module ran, for the password test

    def start(self, workers=2):
        self.process = server.start_mlflow(self.folder, self.uris["mlflow"], host="127.0.0.1", port=self.port,
                                           auth_db=self.uris["mlflow_auth"], workers=workers)
        server.wait_until_up(self.url, self.process)
        self.password = os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD") or (self.folder / "admin_password").read_text().strip()

    def kill(self):
        server.stop(self.process, server.signal.SIGKILL)

    def login(self, user="admin", password=None) -> dict:
        return {"MLFLOW_TRACKING_URI": None, "MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password or self.password,
                "NETRC": None}

    def train(self, args, cwd, env):
        done = train_in_process(args, cwd, env)
        self.seen.append((cwd, done.stdout + done.stderr))
        return done


@pytest.fixture(scope="module")
def lab():
    if shutil.which("initdb") is None and not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        pytest.skip("PostgreSQL is not installed here (Debian: apt-get install postgresql; .ci/run installs it)")
    # Not under pytest's tmp folder: as root, PostgreSQL runs as the postgres user, who cannot enter that (0700) folder.
    folder = Path(tempfile.mkdtemp(prefix="nnx-lab-"))
    lab = Lab(folder, server.start_postgres(folder))
    try:
        lab.start()
        yield lab
    finally:
        if lab.process is not None:
            server.stop(lab.process)
        server.stop_postgres(folder)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def as_admin(lab, monkeypatch):
    """This test's process logs in as the admin (MLflow's clients read the login at each request)."""
    for name, value in lab.login().items():
        monkeypatch.setenv(name, value) if value else monkeypatch.delenv(name, raising=False)
    import mlflow
    from mlflow.server.auth.client import AuthServiceClient

    return mlflow.MlflowClient(lab.url), AuthServiceClient(lab.url)


def new_user(auth, name) -> str:
    password = secrets.token_urlsafe(16)
    auth.create_user(name, password)
    return password


TINY = ["train.epochs=3", "model.width=8", "data.train_size=100", "probes.size=50", "tracking=server"]


def test_parallel_jobs_through_the_server_lose_nothing(lab, as_admin, tmp_path):
    client, _ = as_admin
    done = lab.train(["-m", "seed=range(8)", *TINY, f"tracking.uri={lab.url}", "tracking.experiment=server",
                      "hydra/launcher=joblib", "hydra.launcher.n_jobs=4"], tmp_path, lab.login())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    found = client.search_runs([client.get_experiment_by_name("server").experiment_id])
    parents = [r for r in found if r.data.tags.get("nnx.role") == "sweep"]
    children = [r for r in found if r not in parents]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 8 and {r.info.status for r in children} == {"FINISHED"}
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    for r in children:
        assert [m.step for m in client.get_metric_history(r.info.run_id, "val_accuracy")] == [0, 1, 2]
        assert {"config.yaml", "params.npz", "history.npz"} <= {a.path for a in client.list_artifacts(r.info.run_id)}


def test_a_slurm_sweep_tracks_into_the_server(cluster, lab, as_admin, tmp_path):  # noqa: F811
    """test_slurm's sweep with this module's server as the store, logged in through the environment
    the jobs inherit, as on a real cluster (here, not there, so the suite starts one server)."""
    client, _ = as_admin
    done = lab.train(["-m", *LAUNCHER, *SLURM_TINY, "train.epochs=2", "tracking=server", f"tracking.uri={lab.url}",
                      "tracking.experiment=slurm_server", "seed=0,1"], tmp_path, lab.login())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    check_sweep(client, "slurm_server", [0, 1], 2, tmp_path)


def test_a_login_from_netrc_trains(lab, as_admin, tmp_path):
    client, auth = as_admin
    password = new_user(auth, "alice")
    (tmp_path / "netrc").write_text(f"machine 127.0.0.1 login alice password {password}\n")
    lab.netrc_password = password
    env = {"MLFLOW_TRACKING_URI": None, "MLFLOW_TRACKING_USERNAME": None, "MLFLOW_TRACKING_PASSWORD": None,
           "NETRC": str(tmp_path / "netrc")}
    done = lab.train([*TINY, f"tracking.uri={lab.url}", "tracking.experiment=alice"], tmp_path, env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (run,) = client.search_runs([client.get_experiment_by_name("alice").experiment_id])
    assert run.info.status == "FINISHED"


def test_no_login_a_wrong_one_or_no_write_permission_stop_before_training(lab, as_admin, tmp_path):
    client, auth = as_admin
    locked = client.create_experiment("locked")
    reader = new_user(auth, "reader")
    auth.grant_user_permission("reader", "experiment", locked, "READ")
    cases = [({"MLFLOW_TRACKING_USERNAME": None, "MLFLOW_TRACKING_PASSWORD": None}, "nnx", "401", "no MLFLOW_TRACKING_USERNAME"),
             ({"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": "not-the-password"}, "nnx", "401", "user 'admin'"),
             (lab.login("reader", reader), "locked", "403", "does not let reader write runs")]
    for env, experiment, status, says in cases:
        env = {"MLFLOW_TRACKING_URI": None, "NETRC": str(tmp_path / "no-netrc"), **env}
        done = lab.train([*TINY, f"tracking.uri={lab.url}", f"tracking.experiment={experiment}"], tmp_path, env)
        assert done.returncode == 2 and status in done.stderr and lab.url in done.stderr and says in done.stderr, done.stderr
        assert "MLFLOW_TRACKING_USERNAME" in done.stderr or "tracking.experiment" in done.stderr
        assert "Epoch" not in done.stdout  # nothing trained
    assert client.search_runs([locked]) == []
    # A password in the URI is refused before Hydra writes it into the job's .hydra/ folder.
    uri = lab.url.replace("http://", f"http://admin:{lab.password}@")
    (tmp_path / "uri").mkdir()
    done = lab.train([*TINY, f"tracking.uri={uri}"], tmp_path / "uri", lab.login())
    assert done.returncode == 2 and "holds a password" in done.stderr and "***@" in done.stderr
    assert list((tmp_path / "uri").iterdir()) == []


def test_metrics_the_writer_could_not_write_end_the_run_failed_naming_them(lab, as_admin, monkeypatch):
    """Lost metrics are never silent: here log_batch is refused (the user lost write permission
    mid-run, which MLflow does not retry), as an outage past MLflow's retries would be."""
    import mlflow

    client, auth = as_admin
    experiment = client.create_experiment("flaky")
    password = new_user(auth, "flaky")
    auth.grant_user_permission("flaky", "experiment", experiment, "EDIT")

    def login(user, password):  # both clients read the login from the environment at each request
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)

    login("flaky", password)
    run = tracking.Run.start(mlflow.MlflowClient(lab.url), experiment, name="flaky", params={}, tags={})
    run.log_metrics(0, {"val_accuracy": 0.5})
    run.flush()
    login("admin", lab.password)
    auth.revoke_user_permission("flaky", "experiment", experiment)
    auth.grant_user_permission("flaky", "experiment", experiment, "READ")
    login("flaky", password)
    run.log_metrics(1, {"val_accuracy": 0.6, "train_cost": 1.0})
    run._queue.join()
    with pytest.raises(tracking.TrackingError, match=r"3 metric values of epoch\(s\) 1-2 .* not written"):
        run.log_metrics(2, {"val_accuracy": 0.7})  # training stops at the next epoch, whose values are lost too
    login("admin", lab.password)
    auth.revoke_user_permission("flaky", "experiment", experiment)
    auth.grant_user_permission("flaky", "experiment", experiment, "EDIT")
    login("flaky", password)
    run.end("FINISHED")
    stored = client.get_run(run.run_id)
    assert stored.info.status == "FAILED" and stored.data.tags["nnx.failure"] == "tracking"
    assert "3 metric values of epoch(s) 1-2" in stored.data.tags["nnx.error"]
    assert [m.step for m in client.get_metric_history(run.run_id, "val_accuracy")] == [0]


def test_a_server_restart_mid_run_loses_no_metric(lab, as_admin, tmp_path, monkeypatch):
    """The server is killed after epoch 1 and started again on the same port and database: the
    writer's log_batch waits in MLflow's retries (0, 4, 8, 16 ... s: http_retry_wait, ~4 min in
    all, so a 30 s restart is covered 8 times over) while training goes on. Here the backoff is
    halved (retries 2, 6, 14, 30 ... s after the first failure, ~2 min in all): the same retries,
    without waiting up to 16 s past a server that is back."""
    from nnx.edges import job

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    assert tracking.http_retry_wait() > 100

    client, _ = as_admin
    cfg = configs.compose([*TINY, "train.epochs=6", f"tracking.uri={lab.url}", "tracking.experiment=restart"])
    # One worker: a restart is a whole server start (MLflow and its auth app imported per worker).
    restarted, down = threading.Thread(target=lambda: (time.sleep(3), lab.start(workers=1))), []

    def progress(step, epochs, values):
        if step == 1:
            lab.kill()
            down.append(time.time())
            restarted.start()

    started = time.time()
    job.run(cfg, name="restart", tags={}, echo=lambda line: None, progress=progress)
    restarted.join()
    print(f"outage from epoch 1 to the run's end: {time.time() - down[0]:.1f} s; whole run {time.time() - started:.1f} s")
    (run,) = client.search_runs([client.get_experiment_by_name("restart").experiment_id])
    assert run.info.status == "FINISHED" and "nnx.failure" not in run.data.tags
    for key in ("val_accuracy", "train_cost", "grad_norm/hidden_1"):  # grad norms have step 6 too: after the last epoch
        assert set(range(6)) <= {m.step for m in client.get_metric_history(run.info.run_id, key)}, key


def test_no_password_in_the_store_the_logs_or_the_artifacts(lab, as_admin, tmp_path):
    """After a run of its own through the server (logged in as the admin) and whatever the tests above
    left (a sweep, a netrc login, refused logins, a password in a URI): the passwords are in none of
    PostgreSQL's databases (MLflow keeps only hashes of users'), the artifacts, the server's log,
    Hydra's .hydra/ and .log files or what nnx-train printed. Alone or after the others, in any order."""
    done = lab.train([*TINY, f"tracking.uri={lab.url}", "tracking.experiment=secrets"], tmp_path, lab.login())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    secrets_ = [lab.password] + ([lab.netrc_password] if hasattr(lab, "netrc_password") else [])
    pg = [str(server.postgres_bin() / "pg_dump"), "-h", str(lab.folder / "socket"), "-p", str(server.PG_PORT), "-U", "postgres"]
    texts = {f"pg_dump {db}": server._pg([*pg, db]) for db in ("mlflow", "mlflow_auth")}
    assert "CREATE TABLE public.runs" in texts["pg_dump mlflow"] and "CREATE TABLE public.users" in texts["pg_dump mlflow_auth"]
    texts.update({str(cwd): printed for cwd, printed in lab.seen})
    roots = [lab.folder / "artifacts", lab.folder / "mlflow.log", *(cwd for cwd, _ in lab.seen)]
    files = [p for root in roots for p in ([root] if root.is_file() else root.rglob("*")) if p.is_file() and p.name != "netrc"]
    # conf/train.yaml turns off Hydra's .hydra/ folder and job log; a sweep's folder holds nnx_sweep.json (with the URI).
    assert files and not any(p.parent.name == ".hydra" for p in files)
    assert any(p.name == "config.yaml" and "artifacts" in p.parts for p in files)
    texts.update({str(p): p.read_bytes().decode("utf-8", "replace") for p in files})
    for where, text in texts.items():
        for password in secrets_:
            assert password not in text, where
