"""A job that dies without a word (SIGKILL) loses nothing: the staleness rule, the writer's order,
and, with real processes, a killed sweep healed by its own command and a killed run by nnx-runs."""

import os
import signal
import subprocess
import time

import pytest

from conftest import BIN, in_process
from nnx.edges import liveness, runs, tracking

TINY = ["model.width=8", "data.train_size=100", "probes.size=50", "tracking.experiment=live"]
EPOCHS = 40


def tags(**kw):
    return {liveness.HOST: "a", liveness.PID: "1234", liveness.PID_START: "500", liveness.HEARTBEAT: "1000", **kw}


def test_same_host_a_dead_or_reused_pid_is_stale_a_live_one_is_not():
    def gone(pid):
        return None

    assert liveness.why_stale(tags(), now=1001, host="a", start_of=gone) == "process 1234 on host a gone"
    reused = liveness.why_stale(tags(), now=1001, host="a", start_of=lambda pid: "900")
    assert reused.startswith("process 1234 on host a gone") and "started later" in reused
    # Alive on its own host: never stale, however old the heartbeat.
    assert liveness.why_stale(tags(), now=10**9, host="a", start_of=lambda pid: "500") is None


def test_other_host_stale_only_after_a_few_epochs_without_a_heartbeat():
    def never(pid):
        raise AssertionError("another host's pid must not be looked up here")

    slow = tags(**{liveness.EPOCH_SECONDS: "100"})  # 5 epochs: 500 s
    assert liveness.why_stale(slow, now=1000 + 499, host="b", start_of=never) is None
    assert "no heartbeat for 501 s" in liveness.why_stale(slow, now=1000 + 501, host="b", start_of=never)
    fast = tags(**{liveness.EPOCH_SECONDS: "0.01"})  # never sooner than STALE_MIN_S
    assert liveness.why_stale(fast, now=1000 + liveness.STALE_MIN_S - 1, host="b", start_of=never) is None
    # Before its first epoch (compiling), FIRST_EPOCH_S; an explicit limit wins over both rules.
    assert liveness.why_stale(tags(), now=1000 + liveness.FIRST_EPOCH_S - 1, host="b", start_of=never) is None
    assert liveness.why_stale(tags(), now=1061, host="b", start_of=never, stale_after=60) is not None
    # A run recorded before nnx wrote where it runs: nothing to judge by.
    assert liveness.why_stale({}, now=10**9, host="a", start_of=never) is None


def test_process_start_tells_a_live_pid_from_a_reaped_one():
    assert liveness.process_start(os.getpid()) == liveness.here()[liveness.PID_START] != ""
    child = subprocess.Popen(["sleep", "30"])
    try:
        assert liveness.process_start(child.pid) not in (None, liveness.process_start(os.getpid()))
    finally:
        child.kill()
    child.wait()
    assert liveness.process_start(child.pid) is None


def test_a_checkpoint_is_written_only_after_its_epochs_metrics_are_stored(store):
    """The writer may lag training; a kill then must not leave a checkpoint ahead of the store."""
    _, client = store
    experiment = client.create_experiment("order")
    run = tracking.Run.start(client, experiment, name="order", params={}, tags={})
    seen = []
    for step in range(30):
        run.log_metrics(step, {"a": step, "b": -step})
        run.save_after_logged(lambda step=step: seen.append((step, [m.step for m in client.get_metric_history(run.run_id, "b")])))
    run.end("FINISHED")
    assert seen and seen[-1][0] == 29
    for step, stored in seen:
        assert stored == list(range(len(stored))) and stored[-1] >= step
    stored = client.get_run(run.run_id).data.tags
    assert stored[liveness.LAST_EPOCH] == "29" and stored[liveness.PID] == str(os.getpid())
    assert float(stored[liveness.EPOCH_SECONDS]) >= 0 and abs(float(stored[liveness.HEARTBEAT]) - time.time()) < 60


def test_a_parent_on_another_host_is_stale_only_when_its_children_are(store):
    """A sweep's parent logs nothing: from another host its heartbeat is its children's newest."""
    _, client = store
    experiment = client.create_experiment("hosts")
    now = time.time()

    def on_other_host(name, beat, parent=None, role=None):
        where = {liveness.HOST: "elsewhere", liveness.PID: "7", liveness.HEARTBEAT: f"{beat:.0f}", liveness.EPOCH_SECONDS: "1"}
        return tracking.Run.start(client, experiment, name=name, params={}, tags={**where, **({"nnx.role": role} if role else {})},
                                  parent_run_id=parent).run_id

    alive = on_other_host("sweep", now - 4000, role="sweep")
    on_other_host("beating", now - 10, parent=alive)
    assert runs.stale_runs(client, [experiment]) == []  # its child beats: both alive
    parent = on_other_host("sweep", now - 4000, role="sweep")
    tracking.Run(client, on_other_host("done", now - 3000, parent=parent)).end("FINISHED")
    dead = on_other_host("dead", now - 400, parent=parent)
    found = [(r.info.run_id, why) for r, why in runs.stale_runs(client, [experiment])]
    assert [run_id for run_id, _ in found] == [dead, parent]  # leaves first
    why = found[0][1]
    assert why.startswith("process 7 on host elsewhere gone: no heartbeat for 40") and why.endswith(" s (the limit is 300 s)")
    assert runs.stale_runs(client, [experiment], stale_after=500) == []


def start(uri, cwd, *args):
    return subprocess.Popen([str(BIN / "nnx-train"), *args], cwd=cwd, env={**os.environ, "MLFLOW_TRACKING_URI": uri},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def kill_when_training(process, client, seed, uri=None, timeout=240):
    """SIGKILLs the process named by the pid tag of `seed`'s run once its first epoch is in the store
    and, given the store's uri, its first checkpoint too (written after that epoch's metrics, so a
    kill as soon as they show would often find none)."""
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        experiment = client.get_experiment_by_name("live")
        for run in client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'") if experiment else []:
            if (run.data.tags.get("nnx.seed") == str(seed) and "val_accuracy" in run.data.metrics
                    and (uri is None or tracking.has_checkpoint(client, uri, run.info.run_id))):
                os.kill(int(run.data.tags[liveness.PID]), signal.SIGKILL)
                process.communicate(timeout=60)
                return run.info.run_id, run.data.tags[liveness.PID]
        time.sleep(0.05)
    raise AssertionError(f"seed {seed}'s run never logged an epoch: {process.communicate(timeout=60)[0][-2000:]}")


def store_table(client) -> dict:
    """{run id: (role, seed, status, values of val_accuracy, steps of grad_norm/hidden_1)}."""
    out = {}
    for run in client.search_runs([client.get_experiment_by_name("live").experiment_id]):
        val = [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")]
        grad = [m.step for m in client.get_metric_history(run.info.run_id, "grad_norm/hidden_1")]
        out[run.info.run_id] = (run.data.tags.get("nnx.role", "job"), run.data.tags.get("nnx.seed"), run.info.status, val, grad)
    print("\n".join(f"{k[:8]} {role:<5} seed={seed} {status:<8} val_accuracy {len(v)} values, grad_norm {len(g)} values"
                    for k, (role, seed, status, v, g) in out.items()))
    return out


def nnx_runs(uri, cwd, *args):
    return in_process(["nnx-runs", *args], lambda: runs.main([*args, "--tracking-uri", uri]), cwd, {})


def test_a_sweep_killed_mid_job_is_healed_by_its_own_command(store, tmp_path, nnx_train):
    uri, client = store
    sweep = ["-m", "seed=0,1,2", f"train.epochs={EPOCHS}", *TINY]
    process = start(uri, tmp_path, *sweep)  # the basic launcher: the jobs run one after another in this process
    victim, pid = kill_when_training(process, client, seed=1, uri=uri)
    print("\nafter SIGKILL:")
    before = store_table(client)
    (old_parent,) = [k for k, row in before.items() if row[0] == "sweep"]
    assert {row[1:3] for row in before.values()} == {(None, "RUNNING"), ("0", "FINISHED"), ("1", "RUNNING")}
    assert 0 < len(before[victim][3]) < EPOCHS  # killed mid-run
    listed = nnx_runs(uri, tmp_path)
    assert listed.returncode == 0 and victim in listed.stdout and old_parent in listed.stdout, listed.stdout + listed.stderr
    assert f"host {liveness.here()[liveness.HOST]} gone" in listed.stdout and "yes" in listed.stdout, listed.stdout  # its checkpoint

    done = nnx_train(*sweep)
    assert "skipped" in done.stdout and f"resuming run {victim}" in done.stdout
    print("after the relaunch:")
    after = store_table(client)
    jobs = {k: row for k, row in after.items() if row[0] == "job"}
    assert set(before) <= set(after) and len(jobs) == 3  # the same runs, and seed 2's new one
    for (_, seed, status, val, grad) in jobs.values():
        assert status == "FINISHED" and val == list(range(EPOCHS)) and grad == list(range(EPOCHS + 1)), (seed, status)
    healed = client.get_run(victim).data.tags
    assert healed[liveness.KILLED_REASON] == f"process {pid} on host {liveness.here()[liveness.HOST]} gone"
    assert int(healed["nnx.resumed_from_epoch"]) > 0
    (new_parent,) = {client.get_run(k).data.tags["mlflow.parentRunId"] for k in jobs}
    assert after[new_parent][2] == "FINISHED" and new_parent != old_parent
    assert after[old_parent][2] == "KILLED" and "gone" in client.get_run(old_parent).data.tags[liveness.KILLED_REASON]
    assert "no stale runs" in nnx_runs(uri, tmp_path).stdout


def test_nnx_runs_resumes_a_killed_run_and_says_what_is_wrong(store, tmp_path):
    """Without checkpoints (the sweep test has them): the run trains again from its start, in the same run."""
    uri, client = store
    process = start(uri, tmp_path, f"train.epochs={EPOCHS}", "seed=1", "train.checkpoint_every=0", *TINY)
    victim, _ = kill_when_training(process, client, seed=1)
    assert client.get_run(victim).info.status == "RUNNING"
    listed = nnx_runs(uri, tmp_path, "--experiment", "live")
    (row,) = [line for line in listed.stdout.splitlines() if line.startswith(victim)]
    assert " no " in row and row.endswith(" gone")  # no checkpoint; why

    done = nnx_runs(uri, tmp_path, "--resume")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "training it again from epoch 0 in the same run" in done.stdout
    run = client.get_run(victim)
    assert run.info.status == "FINISHED" and "gone" in run.data.tags[liveness.KILLED_REASON]
    assert [m.step for m in client.get_metric_history(victim, "val_accuracy")] == list(range(EPOCHS))
    assert len(client.search_runs([run.info.experiment_id])) == 1

    wrong = nnx_runs(uri, tmp_path, "--experiment", "nope")
    assert wrong.returncode == 1 and "no experiment 'nope'" in wrong.stderr and "live" in wrong.stderr
    both = nnx_runs(uri, tmp_path, "--mark", "--resume")
    assert both.returncode == 2 and "not allowed with" in both.stderr
    negative = nnx_runs(uri, tmp_path, "--stale-after", "-5")
    assert negative.returncode == 2 and "positive number of seconds" in negative.stderr


def test_resume_refuses_a_run_whose_process_is_alive(store):
    """A RUNNING run whose process lives (here: this test's own) is not resumed under it."""
    from nnx.edges.resume import ResumeError, resume

    uri, client = store
    experiment = client.create_experiment("alive")
    run = tracking.Run.start(client, experiment, name="alive", params={}, tags={})
    with pytest.raises(ResumeError, match="still alive"):
        resume(run.run_id, tracking_cfg={"uri": uri, "experiment": "alive"})
    assert client.get_run(run.run_id).info.status == "RUNNING"
    run.end("FINISHED")
