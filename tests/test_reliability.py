"""Failure modes provoked for real: divergence, signals, resume, rerun, relaunched and parallel sweeps."""

import os
import signal
import subprocess

import numpy as np
import pytest

from conftest import BIN

TINY = ["model.width=8", "data.train_size=100", "probes.size=50", "tracking.experiment=rel"]


def runs(client, experiment="rel"):
    found = client.get_experiment_by_name(experiment)
    return [] if found is None else client.search_runs([found.experiment_id])


def children(client):
    return [r for r in runs(client) if r.data.tags.get("nnx.role") != "sweep"]


def metrics(client, run_id, keys):
    return {k: [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, k), key=lambda m: m.step)] for k in keys}


def test_divergence_fails_that_run_and_the_sweep_goes_on(nnx_train, store):
    _, client = store
    # ReLU with a linear output and eta 10: the quadratic cost overflows within a few epochs.
    done = nnx_train("-m", "optimizer.eta=0.05,10", "activation=relu", "model.output_activation=identity", "cost=quadratic",
                     "optimizer.lmbda=0", "train.epochs=6", *TINY, check=False)
    assert done.returncode != 0 and "diverged" in done.stderr
    by_eta = {r.data.params["optimizer.eta"]: r for r in children(client)}
    bad, good = by_eta["10"], by_eta["0.05"]
    assert bad.info.status == "FAILED" and bad.data.tags["nnx.failure"] == "diverged"
    epoch = int(bad.data.tags["nnx.failure_epoch"])
    history = client.get_metric_history(bad.info.run_id, "train_cost")
    # Every epoch before the blow-up is kept, and the blow-up itself (MLflow stores inf as float max).
    assert [m.step for m in history] == list(range(epoch + 1))
    assert all(np.isfinite(m.value) and m.value < 1e30 for m in history[:-1])
    assert not np.isfinite(history[-1].value) or abs(history[-1].value) > 1e300
    assert good.info.status == "FINISHED"


def test_stop_on_divergence_false_trains_to_the_end(nnx_train, store):
    _, client = store
    nnx_train("activation=relu", "model.output_activation=identity", "cost=quadratic", "optimizer.eta=10", "optimizer.lmbda=0",
              "train.epochs=4", "train.stop_on_divergence=false", *TINY)
    (run,) = runs(client)
    assert run.info.status == "FINISHED" and len(client.get_metric_history(run.info.run_id, "train_cost")) == 4


def test_the_books_eta_100_is_stuck_not_diverged(nnx_train, store):
    _, client = store
    nnx_train("experiment=ch1_30", "optimizer.eta=100", "train.epochs=3", *TINY)
    (run,) = runs(client)
    assert run.info.status == "FINISHED"
    assert all(np.isfinite(m.value) for m in client.get_metric_history(run.info.run_id, "train_cost"))


def start(uri, cwd, *args):
    return subprocess.Popen([str(BIN / "nnx-train"), *args], cwd=cwd, env={**os.environ, "MLFLOW_TRACKING_URI": uri},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(process, prefix):
    for line in process.stdout:
        if line.startswith(prefix):
            return
    raise AssertionError(f"no line starting {prefix!r}")


KEYS = ("train_cost", "val_accuracy", "test_cost", "grad_norm/hidden_1", "grad_norm/hidden_2", "weight_grad_norm/layer_3")


def test_a_killed_run_resumes_to_the_uninterrupted_numbers(store, tmp_path, nnx_train):
    """SIGTERM here; SIGINT ends a run KILLED the same way (test_cli). Epochs of all 50,000 images
    (tens of ms each, where 100 images took a few) leave the signal sent after "Epoch 2:" several
    epochs to land in: one that lands after the last is answered too, but the run is then complete
    (test_a_signal_after_training_s_last_look_is_still_answered)."""
    uri, client = store
    config = ["model.depth=2", "train.epochs=8", "seed=5", *[o for o in TINY if not o.startswith("data.train_size")], "data.train_size=50000"]
    process = start(uri, tmp_path, *config)
    wait_for(process, "Epoch 2:")
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=120)
    (killed,) = runs(client)
    assert killed.info.status == "KILLED"
    assert "checkpoint" in {a.path for a in client.list_artifacts(killed.info.run_id)}
    assert len(client.get_metric_history(killed.info.run_id, "val_accuracy")) < 8

    done = nnx_train(f"resume={killed.info.run_id}", "tracking.experiment=rel")
    assert "resuming run" in done.stdout
    resumed = client.get_run(killed.info.run_id)
    assert resumed.info.status == "FINISHED"

    nnx_train(*config)
    (fresh,) = [r for r in runs(client) if r.info.run_id != killed.info.run_id]
    assert metrics(client, fresh.info.run_id, KEYS) == metrics(client, killed.info.run_id, KEYS)
    assert resumed.data.metrics["best_val_accuracy"] == fresh.data.metrics["best_val_accuracy"]


def test_a_signal_after_training_s_last_look_is_still_answered(store, nnx_train, monkeypatch):
    """SIGTERM landing after the last epoch's check of the stop flag (here: as fit returns, where the
    closing measurement is fetched): the run ends FINISHED, as it trained, and the command still stops
    for the signal, saying so, instead of exiting as if nothing had come."""
    import threading

    from nnx import train as training

    assert threading.current_thread() is threading.main_thread()  # where nnx's handler takes the signal
    fit = training.fit

    def fit_then_signal(*args, **kwargs):
        out = fit(*args, **kwargs)
        signal.raise_signal(signal.SIGTERM)
        return out

    monkeypatch.setattr(training, "fit", fit_then_signal)
    with pytest.raises(KeyboardInterrupt, match="stopped by a signal once its runs had ended"):  # as nnx-train exits on a signal
        nnx_train("train.epochs=2", *TINY)
    (run,) = runs(store[1])
    assert run.info.status == "FINISHED" and len(store[1].get_metric_history(run.info.run_id, "val_accuracy")) == 2


def test_resume_refuses_a_finished_run(nnx_train, store):
    _, client = store
    nnx_train("train.epochs=1", *TINY)
    (run,) = runs(client)
    done = nnx_train(f"resume={run.info.run_id}", "tracking.experiment=rel", check=False)
    assert done.returncode == 2 and "FINISHED" in done.stderr and "nnx-rerun" in done.stderr


def test_rerun_reproduces_a_finished_run(nnx_train, store, tmp_path):
    uri, client = store
    nnx_train("model.depth=2", "train.epochs=3", "seed=7", *TINY)
    (source,) = runs(client)
    done = subprocess.run([str(BIN / "nnx-rerun"), source.info.run_id, "--tracking-uri", uri], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "matches" in done.stdout and "every step identical" in done.stdout  # the same numerics: bit for bit
    (rerun,) = [r for r in runs(client) if r.data.tags.get("nnx.rerun_of") == source.info.run_id]
    assert rerun.data.tags["nnx.rerun_matches"] == "true" and rerun.data.params == source.data.params
    assert rerun.data.tags["nnx.rerun_compared"] == "bit for bit"


def test_rerun_under_other_numerics_names_them_and_compares_within_float32_tolerance(nnx_train, store, tmp_path):
    """A run recorded on another CPU and nnx arithmetic (its tags say so): bit-for-bit equality is not
    promised, so nnx-rerun names what differs and judges each metric within its stated tolerance."""
    from conftest import in_process
    from nnx import numerics
    from nnx.edges import rerun

    uri, client = store
    nnx_train("model.depth=2", "train.epochs=3", "seed=7", *TINY)
    (source,) = runs(client)
    assert {k: source.data.tags[k] for k in numerics.DECIDING} == numerics.fingerprint()  # every run records them
    client.set_tag(source.info.run_id, numerics.CPU_TAG, "Another CPU")
    client.set_tag(source.info.run_id, numerics.NUMERICS_TAG, "0")
    done = in_process(["nnx-rerun"], lambda: rerun.main([source.info.run_id, "--tracking-uri", uri]), tmp_path, {"MLFLOW_TRACKING_URI": uri})
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"nnx.cpu: Another CPU -> {numerics.cpu()[0]}" in done.stdout and "nnx.numerics: 0 -> " in done.stdout
    assert "every step within its float32 tolerance" in done.stdout
    (again,) = [r for r in runs(client) if r.data.tags.get("nnx.rerun_of") == source.info.run_id]
    assert again.data.tags["nnx.rerun_compared"] == "within float32 tolerance" and again.data.tags["nnx.rerun_matches"] == "true"


def test_rerun_of_a_seed_trained_in_a_vmapped_batch_trains_the_batch_again(nnx_train, store, tmp_path):
    """Alone, seed 8 would differ from its batch in float32 rounding (a batched product sums in its own order).
    nnx-rerun in this process (test_rerun_reproduces_a_finished_run runs it as its own process)."""
    from conftest import in_process
    from nnx.edges import rerun

    uri, client = store
    nnx_train("model.depth=2", "model.width=30", "train.epochs=2", "seeds=[7,8]", *TINY)
    (source,) = [r for r in runs(client) if r.data.tags.get("nnx.seed") == "8"]
    assert source.data.tags["nnx.batch_seeds"] == "7,8"
    done = in_process(["nnx-rerun"], lambda: rerun.main([source.info.run_id, "--tracking-uri", uri]), tmp_path, {"MLFLOW_TRACKING_URI": uri})
    assert done.returncode == 0 and "matches" in done.stdout, done.stdout + done.stderr
    reruns = [r for r in runs(client) if r.data.tags.get("nnx.rerun_of") == source.info.run_id and "nnx.seed" in r.data.tags]
    assert sorted(r.data.tags["nnx.seed"] for r in reruns) == ["7", "8"]


def test_a_relaunched_sweep_skips_finished_jobs(nnx_train, store):
    _, client = store
    args = ["-m", "seed=0,1", "train.epochs=1", *TINY]
    nnx_train(*args)
    first = {r.info.run_id for r in children(client)}
    done = nnx_train(*args)
    assert done.stdout.count("skipped") == 2
    assert {r.info.run_id for r in children(client)} == first  # nothing trained twice
    parents = sorted((r for r in runs(client) if r.data.tags.get("nnx.role") == "sweep"), key=lambda r: r.info.start_time)
    latest = [r for r in children(client) if r.data.tags["mlflow.parentRunId"] == parents[-1].info.run_id]
    assert len(latest) == 2 and parents[-1].info.status == "FINISHED"
    nnx_train(*args, "tracking.skip_finished=false")
    assert len(children(client)) == 4


def test_16_parallel_jobs_on_the_embedded_store_lose_nothing(nnx_train, store):
    """Two joblib workers, as nnx-reproduce runs its sweeps unless told otherwise: SQLite lets one
    writer at a time, so two already contend for every write; four only queued more for the same
    lock, and their two extra interpreters cost ~13 of the test's 34 CPU-seconds here."""
    _, client = store
    nnx_train("-m", "seed=range(16)", "train.epochs=3", *TINY, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    found = children(client)
    assert len(found) == 16 and {r.info.status for r in found} == {"FINISHED"}
    assert len({r.data.tags["mlflow.parentRunId"] for r in found}) == 1
    assert len([r for r in runs(client) if r.data.tags.get("nnx.role") == "sweep"]) == 1
    for r in found:
        assert [m.step for m in client.get_metric_history(r.info.run_id, "val_accuracy")] == [0, 1, 2]
        assert len(client.get_metric_history(r.info.run_id, "grad_norm/hidden_1")) == 4


def test_submitit_local_links_children_to_the_parent(store, tmp_path):
    """A real nnx-train process: submitit's local launcher watches its jobs from the parent process."""
    uri, client = store
    process = start(uri, tmp_path, "-m", "seed=0,1", "train.epochs=1", *TINY, "hydra/launcher=submitit_local",
                    "hydra.launcher.timeout_min=10")
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    found = children(client)
    (parent,) = [r for r in runs(client) if r.data.tags.get("nnx.role") == "sweep"]
    assert len(found) == 2 and {r.data.tags["mlflow.parentRunId"] for r in found} == {parent.info.run_id}
    assert {r.info.status for r in found} == {"FINISHED"} and parent.info.status == "FINISHED"


def test_a_killed_sweep_leaves_nothing_running(store, tmp_path):
    uri, client = store
    process = start(uri, tmp_path, "-m", "seed=0,1,2", "train.epochs=100000", *TINY)
    wait_for(process, "Epoch 1:")
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=120)
    statuses = {r.info.status for r in runs(client)}
    assert "RUNNING" not in statuses and "KILLED" in statuses
