"""SLURM for real: a one-node cluster (munged, slurmctld, slurmd from Debian's slurm-wlm and munge)
that the module starts in a temporary folder, and sweeps sent to it through hydra/launcher=slurm."""

import itertools
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

from conftest import free_port, reproduce, train_in_process
from experiments import ch6
from nnx.edges import tracking

SBIN = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "sinfo", "scancel", "scontrol")
PARTITION = "nnx"
# Two jobs at a time on the one node (CPUs=2, one CPU each), five minutes and 1 GB each.
LAUNCHER = ["hydra/launcher=slurm", f"hydra.launcher.partition={PARTITION}", "hydra.launcher.timeout_min=5",
            "hydra.launcher.mem_gb=1", "hydra.launcher.cpus_per_task=1"]
TINY = ["model.width=8", "data.train_size=100", "probes.size=50", "data.validation_size=100", "train.eval_splits=[validation,test]"]
# Chapter 6 at the book's protocol (--book: none of ch6.SCALED) shrunk hard: each of its four sweeps one job,
# a net of 2 and 3 maps and FC 8 on 50 images (250 expanded) for one epoch, 100 validation images.
CH6_TINY = ["data.train_size=50", "train.epochs=1", "seed=0", "probes.size=20", "train.checkpoint_every=0", "model.conv_maps=[2,3]",
            "model.fc=[8]", "data.validation_size=100"]

SLURM_CONF = """\
ClusterName=nnxtest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={folder}/munge.socket
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
KillWait=30
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
# The node as written here, whatever the machine has (a 1-core CI box still gets its 2 CPUs).
SlurmdParameters=config_overrides
NodeName={host} NodeAddr=127.0.0.1 CPUs=2 RealMemory={memory} State=UNKNOWN
PartitionName={partition} Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def _tail(path: Path, lines=15) -> str:
    text = path.read_text(errors="replace").splitlines()[-lines:] if path.exists() else ["(no log)"]
    return f"--- {path.name}:\n" + "\n".join(text)


def _real_memory_mb(slurmd: str) -> int:
    """RealMemory as slurmd measures this machine (`slurmd -C`), else /proc/meminfo's."""
    try:
        line = subprocess.run([slurmd, "-C"], capture_output=True, text=True, timeout=30).stdout
        return int(line.split("RealMemory=")[1].split()[0])
    except (OSError, IndexError, ValueError, subprocess.TimeoutExpired):
        return int(Path("/proc/meminfo").read_text().split()[1]) // 1024


def _stop(process: subprocess.Popen):
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


def slurm(*args, check=True) -> str:
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=60)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(args)}: {done.stderr}")
    return done.stdout


@pytest.fixture(scope="module")
def cluster():
    """A one-node SLURM cluster on this machine, its clients pointed at it through SLURM_CONF for the
    module: a throwaway munge key and munged, slurmctld and slurmd in the foreground (-D), each with
    its socket, state, pid and log under one temporary folder; all of it stopped afterwards."""
    found = {name: shutil.which(name, path=SBIN) for name in DAEMONS + CLIENTS}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        pytest.skip(f"SLURM is not installed here ({', '.join(missing)} missing; Debian: apt-get install slurm-wlm munge; "
                    ".ci/run installs them)")
    if os.geteuid() != 0:
        pytest.skip("the test cluster runs its daemons as root (SlurmUser=root); run the tests as root")
    # munged refuses a socket in a folder that others cannot search, so not under pytest's 0700 tmp.
    folder = Path(tempfile.mkdtemp(prefix="nnx-slurm-"))
    folder.chmod(0o755)
    (folder / "state").mkdir()
    (folder / "spool").mkdir()
    key = folder / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    host = subprocess.run(["hostname", "-s"], capture_output=True, text=True).stdout.strip() or "localhost"
    conf = folder / "slurm.conf"
    conf.write_text(SLURM_CONF.format(host=host, folder=folder, ctld_port=free_port(), d_port=free_port(),
                                      memory=_real_memory_mb(found["slurmd"]), partition=PARTITION))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    logs = [folder / "munged.log", folder / "slurmctld.log", folder / "slurmd.log"]
    daemons = []
    patch = pytest.MonkeyPatch()
    try:
        for command in ([found["munged"], "-F", f"--key-file={key}", f"--socket={folder}/munge.socket", f"--pid-file={folder}/munged.pid",
                         f"--log-file={folder}/munged.log", f"--seed-file={folder}/munged.seed"],
                        [found["slurmctld"], "-D"], [found["slurmd"], "-D"]):
            out = open(folder / f"{Path(command[0]).name}.out", "w")
            daemons.append(subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=folder))
            out.close()
            time.sleep(0.5)  # munged's socket before slurmctld, slurmctld before slurmd registers
        patch.setenv("SLURM_CONF", str(conf))  # for sbatch from the launcher, and sbatch's jobs after it
        # submitit configures logging when first imported (logging.config.dictConfig), which closes every
        # handler there is, pytest's own among them; the tests' in-process launcher must not.
        patch.setenv("SUBMITIT_LOG_LEVEL", "NOCONFIG")
        deadline = time.time() + 60
        while "idle" not in slurm(found["sinfo"], "-h", "-N", "-o", "%T", check=False):
            if time.time() > deadline or any(d.poll() is not None for d in daemons):
                reason = "\n".join(_tail(p) for p in logs + [folder / f"{n}.out" for n in DAEMONS])
                pytest.skip(f"the test SLURM cluster did not come up (its node not idle within 60 s):\n{reason}")
            time.sleep(0.5)
        yield found
    finally:
        jobs = slurm(found["squeue"], "-h", "-o", "%A", check=False).split() if daemons else []
        if jobs:  # nothing of a failed test may run on
            slurm(found["scancel"], *set(jobs), check=False)
            deadline = time.time() + 60
            while slurm(found["squeue"], "-h", "-o", "%A", check=False).strip() and time.time() < deadline:
                time.sleep(1)
        patch.undo()
        for process in reversed(daemons):
            _stop(process)
        shutil.rmtree(folder, ignore_errors=True)


def runs(client, experiment):
    found = client.get_experiment_by_name(experiment)
    return [] if found is None else client.search_runs([found.experiment_id])


def steps(client, run_id, key):
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def check_sweep(client, experiment, seeds, epochs, cwd):
    """The store holds one FINISHED parent and one FINISHED child per seed with every epoch's
    metrics and files, each child trained by a SLURM job (its log in the sweep's submitit folder)
    running this checkout's code. Returns the children."""
    found = runs(client, experiment)
    (parent,) = [r for r in found if r.data.tags.get("nnx.role") == "sweep"]
    children = [r for r in found if r is not parent]
    assert parent.info.status == "FINISHED" and {r.info.status for r in children} == {"FINISHED"}
    assert sorted(int(r.data.params["seed"]) for r in children) == seeds
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    # sbatch passes the environment on (PYTHONPATH too), and the job runs this interpreter
    assert {r.data.tags["nnx.git_commit"] for r in children} == {tracking.environment_tags()["nnx.git_commit"]}
    logs = "".join(p.read_text() for p in cwd.glob("multirun/*/*/.submitit/*_*/*_log.out"))
    for r in children:
        assert f"nnx: run {r.info.run_id}" in logs, "a child run that no SLURM job's log names"
        assert steps(client, r.info.run_id, "val_accuracy") == list(range(epochs))
        assert steps(client, r.info.run_id, "grad_norm/hidden_1") == list(range(epochs + 1))
        assert "best_val_accuracy" in r.data.metrics
        assert {"config.yaml", "params.npz", "history.npz"} <= {a.path for a in client.list_artifacts(r.info.run_id)}
    return children


def test_a_sweep_runs_as_slurm_jobs_into_the_embedded_store(cluster, store, tmp_path):
    uri, client = store
    done = train_in_process(["-m", *LAUNCHER, *TINY, "train.epochs=2", "tracking.experiment=slurm", "seed=0,1"], tmp_path,
                            {"MLFLOW_TRACKING_URI": uri})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    check_sweep(client, "slurm", [0, 1], 2, tmp_path)


def test_slurms_stop_signals_end_runs_killed_and_the_relaunched_sweep_resumes_them(cluster, store, tmp_path):
    """seed 3's job is cancelled (scancel: SIGTERM, SIGKILL after KillWait), seed 4's gets the signal
    SLURM sends before a job's time limit (SIGUSR2, as submitit asks with --signal)."""
    uri, client = store
    epochs = 200  # a tiny epoch takes milliseconds: enough of them that the signal lands mid-training
    args = ["-m", *LAUNCHER, *TINY, f"train.epochs={epochs}", "tracking.experiment=slurm_kill", "seed=3,4"]
    signalled = {}

    def signal_each_job_after_its_first_epoch():
        deadline = time.time() + 240
        while len(signalled) < 2 and time.time() < deadline:
            for r in runs(client, "slurm_kill"):
                seed = r.data.params.get("seed")
                if r.info.status == "RUNNING" and seed in ("3", "4") and seed not in signalled and steps(client, r.info.run_id, "val_accuracy"):
                    task = {"3": 0, "4": 1}[seed]  # the job's index in the sweep, its SLURM array task
                    (job,) = [j for j in slurm(cluster["squeue"], "-h", "-o", "%i").split() if j.endswith(f"_{task}")]
                    slurm(cluster["scancel"], *([] if seed == "3" else ["--signal=USR2"]), job)
                    signalled[seed] = job
            time.sleep(0.1)

    watcher = threading.Thread(target=signal_each_job_after_its_first_epoch)
    watcher.start()
    done = train_in_process(args, tmp_path, {"MLFLOW_TRACKING_URI": uri})
    watcher.join()
    assert len(signalled) == 2, f"only {signalled} were signalled: a job's run never logged an epoch"
    # The launcher hears of both from the jobs' result files at once (there is no accounting here for sacct)
    assert done.returncode != 0 and "KILLED" in done.stdout + done.stderr, done.stdout[-3000:] + done.stderr[-3000:]
    (parent,) = [r for r in runs(client, "slurm_kill") if r.data.tags.get("nnx.role") == "sweep"]
    killed = {r.data.params["seed"]: r for r in runs(client, "slurm_kill") if r.info.run_id != parent.info.run_id}
    assert sorted(killed) == ["3", "4"] and parent.info.status == "KILLED"
    stopped_at = {}
    for seed, r in killed.items():
        assert r.info.status == "KILLED", (seed, r.info.status, r.data.tags.get("nnx.error"))
        # the artifact, or the file beside the store where a job was SIGKILLed (KillWait) before logging it
        assert tracking.has_checkpoint(client, uri, r.info.run_id), (seed, r.data.tags)
        stopped_at[seed] = len(steps(client, r.info.run_id, "val_accuracy"))
        assert 1 <= stopped_at[seed] < epochs

    again = train_in_process(args, tmp_path, {"MLFLOW_TRACKING_URI": uri})
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    found = runs(client, "slurm_kill")
    latest = max((r for r in found if r.data.tags.get("nnx.role") == "sweep"), key=lambda r: r.info.start_time)
    resumed = {r.data.params["seed"]: r for r in found if r.data.tags.get("nnx.role") != "sweep"}
    assert {s: r.info.run_id for s, r in resumed.items()} == {s: r.info.run_id for s, r in killed.items()}  # no new runs
    assert latest.info.status == "FINISHED"
    for seed, r in resumed.items():
        assert r.info.status == "FINISHED" and r.data.tags["nnx.resumed_from_epoch"] == str(stopped_at[seed])
        assert r.data.tags["mlflow.parentRunId"] == latest.info.run_id
        assert steps(client, r.info.run_id, "val_accuracy") == list(range(epochs))  # each epoch once


def slurm_jobs(cluster, under: Path) -> list[dict]:
    """The jobs slurmctld still knows (it keeps finished ones MinJobAge, 300 s) whose log is under `under`:
    scontrol's fields, SubmitTime, StartTime and EndTime as datetimes (whole seconds)."""
    jobs = []
    for line in slurm(cluster["scontrol"], "-o", "show", "job").splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        if fields.get("StdOut", "").startswith(str(under)):
            jobs.append({**fields, **{k: datetime.fromisoformat(fields[k]) for k in ("SubmitTime", "StartTime", "EndTime")}})
    return jobs


def test_a_book_reproduction_submits_every_sweep_at_once_and_writes_its_report(cluster, store, tmp_path):
    """`nnx-reproduce ch6 --book hydra/launcher=slurm ...`: each of the chapter's four sweeps is its own
    nnx-train, submitting its array job at once; every job was submitted before any ended, and the
    report's rows say what protocol ran (here the shrunken one: scaled, with the gap to the book)."""
    uri, client = store
    done = reproduce("ch6", "--book", "--out", tmp_path / "report", *LAUNCHER, *CH6_TINY, uri=uri, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    found = runs(client, "ch6")
    parents = {r.data.tags["nnx.experiment"]: r for r in found if r.data.tags.get("nnx.role") == "sweep"}
    children = [r for r in found if r.data.tags.get("nnx.role") not in ("sweep", "report")]
    assert sorted(parents) == sorted(ch6.SWEEPS) and {p.info.status for p in parents.values()} == {"FINISHED"}
    assert len(children) == 4 and {r.info.status for r in children} == {"FINISHED"}
    for p in parents.values():  # --book: the scaled default's overrides are not on any command line
        assert not any(o in p.data.tags["nnx.overrides"] for o in ch6.SCALED[p.data.tags["nnx.experiment"]] if o != "seed=0")

    jobs = slurm_jobs(cluster, tmp_path)
    assert len({j.get("ArrayJobId", j["JobId"]) for j in jobs}) == 4, jobs  # one (array) job per sweep
    # Submitted together: the last sweep's job was submitted before the first job ended (one after
    # another, each sweep would wait for the one before it to end, and for the next nnx-train's
    # seconds of start-up), and the node's two slots held jobs of two sweeps at once. Those are the
    # jobs' own spans, as slurmctld keeps them (whole seconds): the runs inside them start seconds
    # later, after the imports, and four runs of 3-4 s were seen back to back on a fast machine.
    assert max(j["SubmitTime"] for j in jobs) <= min(j["EndTime"] for j in jobs), jobs
    spans = sorted((j["StartTime"], j["EndTime"]) for j in jobs)
    assert any(later[0] <= earlier[1] for earlier, later in itertools.pairwise(spans)), spans

    report = json.loads((tmp_path / "report" / "report.json").read_text())["rows"]
    accuracies = [r for r in report if r["id"] in ("6.conv2", "6.relu", "6.expanded", "6.dropout", "6.ensemble") and r["tolerance_kind"] == "abs"]
    assert accuracies and all(r["protocol"].startswith("scaled: data.train_size=50 train.epochs=1") for r in accuracies)
    assert all(r["verdict"].startswith("scaled (") and r["verdict"].endswith(" points)") for r in accuracies)
    notes = (tmp_path / "report" / "report.md").read_text()
    assert "Protocol of each row: scaled (data.train_size=50" in notes and "the book's protocol: 6.params." in notes
    assert "queued" in done.stdout and "ch6_dropout done" in done.stdout
