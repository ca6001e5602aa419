"""Every command the README shows is run here (shrunk), or named with the test that runs it."""

import re
import shlex
import subprocess

import pytest

from conftest import BIN, ROOT

# No logged models: ~0.3 s a run over the ~40 runs these commands make; test_mlflow3.py tests them.
SHRINK = ["train.epochs=1", "data.train_size=100", "data.validation_size=500", "probes.size=50", "model.width=8",
          "tracking.experiment=readme", "tracking.log_model=false"]
# Commands with placeholders or long jobs, and the tests that exercise them for real.
COVERED_ELSEWHERE = {
    "nnx-train resume=": "test_reliability.py::test_a_killed_run_resumes_to_the_uninterrupted_numbers",
    "nnx-train -m hydra/launcher=slurm": "test_slurm.py and test_server.py::test_a_slurm_sweep_tracks_into_the_server (a real one-node cluster)",
    "nnx-train -m seed=0,1,2,3 hydra/launcher=joblib": "test_reliability.py::test_16_parallel_jobs_on_the_embedded_store_lose_nothing",
    "nnx-train tracking=server": "test_server.py::test_parallel_jobs_through_the_server_lose_nothing",
    "nnx-rerun": "test_reliability.py::test_rerun_reproduces_a_finished_run",
    "nnx-runs": "test_liveness.py::test_nnx_runs_resumes_a_killed_run_and_says_what_is_wrong (and the sweep test beside it)",
    "nnx-reproduce": "test_ch5.py (the pipeline, --plot-only, overrides)",
    "mlflow server": "test_server.py and test_browser.py start it",
    "make ": ".ci/run runs make test; make reproduce is nnx-reproduce ch5; make server is nnx.edges.server, which test_server.py starts",
    "nnx-train tracking.system_metrics=true": "test_mlflow3.py (psutil is optional: the run, or the error without it)",
    "nnx-train activation=swish": "test_readme.py::test_the_readme_recipe_for_a_new_activation_works_as_written",
}


def readme_commands():
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL)
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
def test_readme_command_runs(command, store, nnx_train):
    _, client = store
    args = shlex.split(command)[1:]
    conv = "model=conv" in args or any(a.startswith("experiment=ch6") for a in args)  # a conv net has no model.width
    shrink = [] if "--help" in args else [o for o in SHRINK if not (o.startswith("model.width") and conv)]
    done = nnx_train(*args, *shrink, check=False)
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


def test_the_readme_recipe_for_a_new_activation_works_as_written(tmp_path, monkeypatch):
    """README, 'Extending nnx': the code and config it gives, used as written, train and probe;
    without the facts it gives, the probes that need them are refused when the config is built."""
    import shutil

    import jax
    import jax.numpy as jnp
    import numpy as np
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import nnx
    from nnx import probes
    from nnx.activations import ACTIVATIONS, Activation

    section = (ROOT / "README.md").read_text().split("## Extending nnx")[1].split("\n## ")[0]
    definition = next(c for c in re.findall(r"`([^`]+)`", section) if c.startswith("def swish"))
    entry = next(c for c in re.findall(r"`([^`]+)`", section) if c.startswith('"swish": '))
    namespace = {"jax": jax, "jnp": jnp, "Activation": Activation}
    exec(definition, namespace)  # noqa: S102 - the README's own code, run as a user would paste it
    monkeypatch.setitem(ACTIVATIONS, "swish", eval(entry.split(": ", 1)[1], namespace))
    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf)
    yaml_lines = [c for c in re.findall(r"`([^`]+)`", section) if c in ("name: swish", "beta: 1.0")]
    (conf / "activation" / "swish.yaml").write_text("\n".join(yaml_lines) + "\n")

    overrides = ["activation=swish", "activation.beta=2.0", "model.depth=2", "model.width=8", "data.train_size=100",
                 "probes.size=50", "train.epochs=1", "probes.kinds=[activations,histograms]"]
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = OmegaConf.to_container(compose("train", overrides=overrides), resolve=True)
    spec = nnx.build(cfg)
    data = nnx.load(train_size=100)
    _, history = nnx.fit(spec, data, key=jax.random.PRNGKey(0))
    assert np.all(np.isfinite(history["act_p50/hidden_2"])) and history["hist/activation/hidden_1"].shape == (2, probes.BINS)

    # swish is not monotone: its activations' percentiles are its own, not sigma(percentiles of z).
    params = nnx.init(jax.random.PRNGKey(0), spec.net)
    measured = jax.jit(probes.probe_fn(spec, ("activations",)))(params, data.train.x[:50], data.train.y[:50])
    hidden, _ = nnx.model.trace(spec.net, params, data.train.x[:50])
    a = np.asarray(hidden[0][1])
    # Two float32 programs computing the same a = swish(x w^T + b) (784-term sums): entries differ by their
    # round-off, ~3e-7 where test_probes measures such sums against float64 (here not at all); a percentile
    # moves by at most its values' largest change (sorted values are 1-Lipschitz in the max norm):
    # 1e-6 + 1e-4 |p| holds more than another CPU's draw of that (roundoff.ELSEWHERE).
    np.testing.assert_allclose(measured["scalars"]["act_p02/hidden_1"], np.percentile(a, 2), rtol=1e-4, atol=1e-6)

    monkeypatch.setitem(ACTIVATIONS, "swish", Activation(namespace["swish"]))
    with pytest.raises(nnx.ConfigError, match="needs the activation's saturated"):
        nnx.build(cfg)
    cfg["probes"]["kinds"] = ["histograms"]
    with pytest.raises(nnx.ConfigError, match="needs the activation's range"):
        nnx.build(cfg)
    cfg["probes"]["kinds"] = []
    assert nnx.build(cfg).activation_facts.range is None
