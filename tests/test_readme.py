"""Every command the README shows is run here (shrunk), or named with the test that runs it."""

import os
import re
import shlex
import subprocess

import pytest

from conftest import BIN, ROOT

SHRINK = ["train.epochs=1", "data.train_size=100", "probes.size=50", "model.width=8", "tracking.experiment=readme"]
# Commands with placeholders or long jobs, and the tests that exercise them for real.
COVERED_ELSEWHERE = {
    "nnx-train resume=": "test_reliability.py::test_a_killed_run_resumes_to_the_uninterrupted_numbers",
    "nnx-train -m hydra/launcher=slurm": "test_readme.py::test_the_slurm_launcher_config_composes",
    "nnx-train tracking=server": "test_server.py::test_16_parallel_jobs_through_the_server_lose_nothing",
    "nnx-rerun": "test_reliability.py::test_rerun_reproduces_a_finished_run",
    "nnx-reproduce": "test_ch5.py (the pipeline, --plot-only, overrides)",
    "mlflow server": "test_server.py and test_browser.py start it",
    "make ": ".ci/run runs make test; make reproduce is nnx-reproduce ch5",
    "nnx-train activation=swish": "(runs only after the two edits that README section describes)",
}


def readme_commands():
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    commands = []
    for block in blocks:
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line:
                commands.append(line)
    inline = re.findall(r"`(nnx-[a-z]+ [^`]+)`", text)
    return commands + inline


RUNNABLE = [c for c in readme_commands() if c.startswith("nnx-train") and not any(c.startswith(p) for p in COVERED_ELSEWHERE)]


@pytest.mark.parametrize("command", RUNNABLE)
def test_readme_command_runs(command, store, tmp_path):
    uri, client = store
    args = shlex.split(command)[1:]
    extra = [] if "--help" in args else SHRINK
    done = subprocess.run([str(BIN / "nnx-train"), *args, *extra], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "MLFLOW_TRACKING_URI": uri})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    if "--help" in args:
        assert "activation: identity, leaky_relu, relu, sigmoid, softsign, tanh" in done.stdout
        return
    experiment = client.get_experiment_by_name("readme")
    found = client.search_runs([experiment.experiment_id])
    assert found and all(r.info.status == "FINISHED" for r in found)


def test_the_slurm_launcher_config_composes(tmp_path):
    done = subprocess.run([str(BIN / "nnx-train"), "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "--cfg", "hydra"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "SlurmLauncher" in done.stdout and "partition: gpu" in done.stdout
