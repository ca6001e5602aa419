"""Every command the README and docs/ show is run here (shrunk), or named with the test that runs it;
every relative link in them resolves."""

import re
import shlex
import subprocess

import pytest

from conftest import BIN, ROOT

# The user's pages: the README, then docs/, whose commands are tested the same way.
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# No logged models: ~0.3 s a run over the runs these commands make; test_mlflow3.py tests them.
SHRINK = ["train.epochs=1", "data.train_size=100", "data.validation_size=500", "probes.size=50", "model.width=8",
          "tracking.experiment=readme", "tracking.log_model=false"]
# A conv net has no model.width: two small conv-pool layers and FC 8 instead, as test_ch6.py shrinks them.
SHRINK_CONV = ["model.conv_maps=[2,3]", "model.fc=[8]"]
# Commands with placeholders or long jobs, and the tests that exercise them for real.
COVERED_ELSEWHERE = {
    "nnx-train resume=": "test_reliability.py::test_a_killed_run_resumes_to_the_uninterrupted_numbers",
    "nnx-train -m hydra/launcher=slurm": "test_slurm.py and test_server.py::test_a_slurm_sweep_tracks_into_the_server (a real one-node cluster)",
    "nnx-train -m seed=0,1,2,3 hydra/launcher=joblib": "test_reliability.py::test_16_parallel_jobs_on_the_embedded_store_lose_nothing",
    "nnx-train tracking=server": "test_server.py::test_parallel_jobs_through_the_server_lose_nothing",
    "nnx-train experiment=ch6_basic": "test_ch6.py (the ch6 pipeline trains the ch6_basic preset, shrunk)",
    "nnx-rerun": "test_reliability.py::test_rerun_reproduces_a_finished_run",
    "nnx-runs": "test_liveness.py::test_nnx_runs_resumes_a_killed_run_and_says_what_is_wrong (and the sweep test beside it)",
    "nnx-train -m experiment=<preset>": "test_slurm.py::test_a_book_reproduction_submits_every_sweep_at_once_and_writes_its_report (what nnx-reproduce starts per sweep on a cluster)",
    "nnx-reproduce ch6 --book hydra/launcher=slurm": "test_slurm.py::test_a_book_reproduction_submits_every_sweep_at_once_and_writes_its_report",
    "nnx-reproduce": "test_ch5.py (the pipeline, --plot-only, overrides), test_chapters.py, test_ch3hp.py, test_ch4.py, test_ch6.py, test_papers_*.py",
    "nnx-bench": "test_bench_stats.py, test_baselines.py and test_bench_conv.py (its parts: a whole bench takes minutes)",
    "mlflow server": "test_server.py and test_browser.py start it",
    "make ": ".ci/run runs make test; make reproduce is nnx-reproduce ch5; make server is nnx.edges.server, which test_server.py starts",
    "nnx-train tracking.system_metrics=true": "test_mlflow3.py (psutil is optional: the run, or the error without it)",
    "nnx-train activation=swish": "test_readme.py::test_the_readme_recipe_for_a_new_activation_works_as_written",
}
SHELL_SETUP = ("export ", "source ")  # lines of a bash block that set up the shell, not commands of nnx


def page_commands(path) -> list:
    """The commands a page shows: each line of its ```bash blocks (comments cut), then its inline `nnx-... ` code."""
    text = path.read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():  # a command continued over lines is one
            line = line.split("  #")[0].strip()
            if line:
                commands.append(line)
    return commands + re.findall(r"`(nnx-[a-z]+ [^`]+)`", text)


def docs_commands() -> list:
    """Every page's commands, each once (a command shown on two pages is run once)."""
    return list(dict.fromkeys(c for page in PAGES for c in page_commands(page)))


def covered(command: str) -> bool:
    return any(command.startswith(p) for p in COVERED_ELSEWHERE)


RUNNABLE = [c for c in docs_commands() if c.startswith("nnx-train") and not covered(c)]


def test_every_command_shown_is_run_here_or_named_with_its_test():
    for command in docs_commands():
        assert command in RUNNABLE or covered(command) or command.startswith(SHELL_SETUP), (
            f"{command!r}: run it in test_readme_command_runs or add it to COVERED_ELSEWHERE with the test that runs it")


def test_the_readme_reads_in_five_minutes_and_gives_the_test_command():
    """A page a user reads in five minutes, details in docs/; .ci/run runs the README's test command, `make test`."""
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 200
    assert "make test" in page_commands(ROOT / "README.md")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not checked offline
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        assert file.exists(), f"{page.name}: {target} does not exist"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", file.read_text(), flags=re.MULTILINE)
            assert anchor in {slug(h) for h in headings}, f"{page.name}: {target}: no heading #{anchor} in {file.name}"


@pytest.mark.parametrize("command", RUNNABLE)
def test_readme_command_runs(command, store, nnx_train):
    _, client = store
    args = shlex.split(command)[1:]
    conv = "model=conv" in args or any(a.startswith("experiment=ch6") for a in args)
    shrink = [] if "--help" in args else [o for o in SHRINK if not (o.startswith("model.width") and conv)] + (SHRINK_CONV if conv else [])
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
    """docs/extending.md, 'A new activation': the code and config it gives, used as written, train and
    probe; without the facts it gives, the probes that need them are refused when the config is built."""
    import shutil

    import jax
    import jax.numpy as jnp
    import numpy as np

    import nnx
    from nnx import probes
    from nnx.activations import ACTIVATIONS, Activation
    from nnx.edges import configs

    section = (ROOT / "docs" / "extending.md").read_text().split("## A new activation")[1].split("\n## ")[0]
    definition = next(c for c in re.findall(r"`([^`]+)`", section) if c.startswith("def swish"))
    entry = next(c for c in re.findall(r"`([^`]+)`", section) if c.startswith('"swish": '))
    namespace = {"jax": jax, "jnp": jnp, "Activation": Activation}
    exec(definition, namespace)  # noqa: S102 - the page's own code, run as a user would paste it
    monkeypatch.setitem(ACTIVATIONS, "swish", eval(entry.split(": ", 1)[1], namespace))
    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf)
    yaml_lines = [c for c in re.findall(r"`([^`]+)`", section) if c in ("name: swish", "beta: 1.0")]
    (conf / "activation" / "swish.yaml").write_text("\n".join(yaml_lines) + "\n")

    overrides = ["activation=swish", "activation.beta=2.0", "model.depth=2", "model.width=8", "data.train_size=100",
                 "probes.size=50", "train.epochs=1", "probes.kinds=[activations,histograms]"]
    cfg = configs.compose(overrides, conf=conf)
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
