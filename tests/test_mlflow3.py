"""What MLflow 3 users look for in a run: its training set as a dataset input, its network as a
logged model (loaded and used in a fresh process), and optional system metrics."""

import hashlib
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

import nnx
import roundoff
from conftest import copy_store, tiny_cfg, train_in_process
from nnx import data, records
from nnx.edges import job, tracking
from nnx.spec import build

TINY = ["model.width=8", "train.epochs=2", "data.train_size=100", "probes.size=50", "tracking.experiment=m3"]


@pytest.fixture(scope="module")
def trained(migrated_store, tmp_path_factory):
    """One tiny nnx-train run with the defaults (a logged model) and one with tracking.log_model=false,
    in one store: (uri, client, run with model, run without)."""
    import mlflow

    folder = tmp_path_factory.mktemp("m3")
    uri = copy_store(migrated_store, folder)
    for extra in ([], ["tracking.log_model=false", "seed=1"]):
        done = train_in_process([*TINY, *extra], folder, {"MLFLOW_TRACKING_URI": uri})
        assert done.returncode == 0, done.stderr
    client = mlflow.MlflowClient(uri)
    with_model, without = sorted(client.search_runs([client.get_experiment_by_name("m3").experiment_id]),
                                 key=lambda r: r.data.params["seed"])
    return uri, client, with_model, without


def test_the_training_set_is_the_runs_dataset_input(trained):
    _, _, run, _ = trained
    (given,) = run.inputs.dataset_inputs
    dataset, tags = given.dataset, {t.key: t.value for t in given.tags}
    path = json.loads(dataset.source)["uri"]
    file_sha256 = hashlib.sha256(open(os.path.expanduser(path), "rb").read()).hexdigest()
    assert (dataset.name, dataset.source_type) == ("mnist", "local") and path.endswith("mnist/data/mnist.pkl.gz")
    assert dataset.digest == file_sha256[: tracking.DIGEST_CHARS] and tags["nnx.sha256"] == file_sha256
    assert tags == {"mlflow.data.context": "training", "nnx.split": "train", "nnx.train_size": "100", "nnx.images": "100",
                    "nnx.sha256": file_sha256}
    assert dataset.schema is None and dataset.profile is None  # MLflow never saw the arrays


def test_the_expanded_set_has_its_own_digest(trained):
    _uri, client, _, _ = trained
    cfg = tiny_cfg(data={"name": "mnist_expanded", "path": None, "train_size": 20})
    run = tracking.Run.start(client, client.get_experiment_by_name("m3").experiment_id, name="expanded", params={}, tags={})
    job.log_dataset(run, cfg["data"], build(cfg))  # no image is read: only the recipe's digest
    run.end("FINISHED")
    (given,) = client.get_run(run.run_id).inputs.dataset_inputs
    tags = {t.key: t.value for t in given.tags}
    assert given.dataset.name == "mnist_expanded" and (tags["nnx.train_size"], tags["nnx.images"]) == ("20", "100")
    assert data.digest("mnist_expanded") == tags["nnx.sha256"] != data.MNIST_SHA256
    assert given.dataset.digest == tags["nnx.sha256"][: tracking.DIGEST_CHARS]


def test_the_network_is_a_logged_model_that_classifies_in_a_fresh_process(trained, tmp_path):
    uri, client, run, without = trained
    (model,) = client.search_logged_models([run.info.experiment_id])
    assert (model.source_run_id, str(model.status), model.name) == (run.info.run_id, "READY", tracking.MODEL_NAME)
    (output,) = run.outputs.model_outputs
    assert (output.model_id, output.step) == (model.model_id, 2)  # the step after the last epoch, where the summary is
    linked = {m.key: m.value for m in client.get_logged_model(model.model_id).metrics}
    assert linked["final_test_accuracy"] == run.data.metrics["final_test_accuracy"]
    assert set(linked) == {"best_val_accuracy", "best_epoch", "test_accuracy_at_best_val", "best_test_accuracy",
                           "final_val_accuracy", "final_test_accuracy", "final_train_accuracy"}  # the run's summary
    files = client.download_artifacts(run.info.run_id, "", str(tmp_path / "run"))  # the run's own files, unchanged
    assert sorted(os.listdir(files)) == ["checkpoint", "config.yaml", "history.npz", "params.npz"]
    assert without.outputs.model_outputs == [] and without.data.metrics["final_test_accuracy"] > 0

    script = (
        "import json, sys, mlflow, numpy as np\n"
        f"model = mlflow.pyfunc.load_model('models:/{model.model_id}')\n"
        "from nnx import data\n"  # after loading: the model's copy of nnx is the one imported
        "test = data.load().test\n"
        "digits = model.predict(test.x)\n"
        "import nnx\n"
        "print(json.dumps({'correct': int(np.sum(digits == test.y)), 'n': len(test.y), 'nnx': nnx.__file__,"
        " 'dtype': str(digits.dtype), 'shape': list(digits.shape)}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "MLFLOW_TRACKING_URI": uri})
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    # The run's final_test_accuracy came from training's evaluation, the digits from the model's own jitted
    # forward pass: two float32 programs. Only an image whose top two outputs are within float32's error
    # (another program's draw of it: roundoff.ELSEWHERE times the error measured here) can count differently.
    with open(os.path.join(files, "config.yaml")) as f:
        cfg = yaml.safe_load(f)
    with np.load(os.path.join(files, "params.npz")) as saved:
        params = records.params_from_arrays(dict(saved))
    test = nnx.load(train_size=1).test
    z32 = np.asarray(nnx.feedforward(build(cfg).net, params, test.x)[0], np.float64)
    _, (z64, _) = roundoff.dense_forward(params, test.x, cfg["activation"]["name"])
    either_way = int(roundoff.ambiguous(z64, np.full_like(z64, roundoff.ELSEWHERE * np.max(np.abs(z32 - z64)))).sum())
    assert abs(got["correct"] - round(run.data.metrics["final_test_accuracy"] * got["n"])) <= either_way and got["n"] == 10_000
    assert (got["dtype"], got["shape"]) == ("int64", [10_000])
    assert "/code/nnx/" in got["nnx"]  # the model's own copy of nnx, not the one installed here


def test_the_model_needs_only_what_it_names(trained, tmp_path):
    uri, client, run, _ = trained
    (model,) = client.search_logged_models([run.info.experiment_id])
    import mlflow

    local = mlflow.artifacts.download_artifacts(artifact_uri=model.artifact_location, dst_path=str(tmp_path / "model"),
                                                tracking_uri=uri)  # else MLflow opens its default store, ./mlflow.db
    requirements = open(os.path.join(local, "requirements.txt")).read().split()
    assert {r.split("==")[0] for r in requirements} == {"mlflow", *tracking.MODEL_PACKAGES}, requirements
    assert os.path.exists(os.path.join(local, "code", "nnx", "model.py"))
    assert not any("__pycache__" in root for root, _, _ in os.walk(local))


@pytest.mark.skipif(importlib.util.find_spec("psutil") is not None, reason="psutil is installed: see the next test")
def test_system_metrics_without_psutil_fail_before_any_run(nnx_train, store):
    _, client = store
    done = nnx_train(*TINY, "tracking.system_metrics=true", check=False)
    assert done.returncode == 2 and "psutil" in done.stderr and "tracking.system_metrics=false" in done.stderr
    assert client.get_experiment_by_name("m3") is None or client.search_runs([client.get_experiment_by_name("m3").experiment_id]) == []


@pytest.mark.skipif(importlib.util.find_spec("psutil") is None, reason="psutil (MLflow's system metrics) is not installed")
def test_system_metrics_are_recorded_while_a_run_trains(nnx_train, store, monkeypatch):
    _, client = store
    monkeypatch.setattr(tracking.writer, "SYSTEM_INTERVAL", 0.05)  # read where the run starts its monitor
    nnx_train(*TINY, "train.epochs=20", "tracking.system_metrics=true")
    (run,) = client.search_runs([client.get_experiment_by_name("m3").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["system/cpu_utilization_percentage"] >= 0
    assert run.data.metrics["system/system_memory_usage_megabytes"] > 0
