import contextlib
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


# The files that take longest, in that order, run first (the rest follow in name order): with
# --dist loadfile the workers take whole files in collection order (make test passes
# --no-loadscope-reorder: xdist's default orders files by their number of tests, which put the long
# end-to-end files, with few tests each, last), and a long file taken last would leave the other
# worker idle while it runs (fresh-clone durations, 2 cores). make test-fast's workers take single
# tests, but a long one taken last (test_validation_properties') does the same.
LONGEST_FIRST = ("test_reliability.py", "test_slurm.py", "test_server.py", "test_chapters.py", "test_layers.py", "test_ch5.py",
                 "test_accel.py", "test_readme.py", "test_ch6.py", "test_papers_signal.py", "test_cli.py", "test_train.py",
                 "test_browser.py", "test_papers_spectra.py", "test_papers_training.py", "test_ch3hp.py", "test_probes.py",
                 "test_liveness.py", "test_validation_properties.py", "test_schedules.py")


# End to end (marker e2e): whole commands (reproductions, nnx-train and its sweeps, in process or not)
# and the real components (the MLflow store, MLflow's server app, mlflow server over PostgreSQL, SLURM,
# Chromium, processes killed and resumed). `make test-fast` runs the rest: the math, the configs, the layers, the engine.
E2E_FILES = {"test_browser.py", "test_server.py", "test_slurm.py", "test_reliability.py", "test_liveness.py", "test_cli.py",
             "test_mlflow3.py", "test_readme.py", "test_chapters.py", "test_ch3hp.py", "test_ch4.py", "test_ch5.py", "test_ch6.py",
             "test_papers_signal.py", "test_papers_spectra.py", "test_papers_training.py", "test_search.py", "test_reproduce.py",
             "test_accel.py", "test_ui.py"}
E2E_FIXTURES = {"store", "migrated_store", "nnx_train"}  # a test anywhere that records runs in a store


def pytest_configure(config):
    # With -n, this process (xdist's controller) only hands out tests and reports: importing JAX and
    # nnx here (~1.8 s) would only delay the workers' start. The workers, and a run without -n, set up JAX.
    if config.getoption("dist", "no") != "no" and not hasattr(config, "workerinput"):
        return
    import jax

    from nnx.edges import devices, paths

    # Silent broadcasting (a row where a column was meant) fails loudly in tests.
    jax.config.update("jax_numpy_rank_promotion", "raise")
    # Every comparison with a float32 or float64 reference assumes true float32 products: an accelerator's
    # default (TF32, bfloat16 passes) would be ~1e-3. On the CPU it is what float32 does anyway (the same bits).
    jax.config.update("jax_default_matmul_precision", "highest")
    paths.use_compilation_cache()  # the unit tests' programs too, as every nnx command does
    devices.use_two_cpu_devices()  # as every nnx command does: evaluation beside training (nnx.choices.evaluation_device)


@pytest.hookimpl(tryfirst=True)
def pytest_unconfigure(config):
    """An xdist worker that has sent its results (at the session's end) ends here, without the ~5 s
    that pytest's garbage collection for unraisable exceptions (which a worker no longer reports),
    JAX's exit handler (freeing each compiled program) and the interpreter's teardown took after its
    last test, while the controller waited for it. Only where nothing is left that an ordinary exit
    would wait for or end: a child process (joblib's workers) or a thread that is not a daemon."""
    if not hasattr(config, "workerinput") or multiprocessing.active_children():
        return
    if any(not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def pytest_runtest_setup(item):
    import jax

    if item.get_closest_marker("cpu_only") and jax.default_backend() != "cpu":
        pytest.skip(f"compares two programs bit for bit, which only the CPU backend emits alike; this is {jax.default_backend()}")


def pytest_ignore_collect(collection_path, config):
    # Under make test-fast (-m "not e2e") an end-to-end file would be imported, by each worker, only to
    # be deselected: its imports (MLflow, the experiments) took about 4 of the 9-10 s each worker spent collecting.
    if collection_path.name in E2E_FILES and config.getoption("markexpr") == "not e2e":
        return True
    return None


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_itemcollected(item):
    if item.path.name in E2E_FILES or E2E_FIXTURES & set(getattr(item, "fixturenames", ())):
        item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(trylast=True)  # after pytest's own ordering by fixtures, which the stable sort keeps within a file
def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


# The tests' small config: conf/'s defaults (chapter 5's sigmoid net, cross-entropy, sgd) at width 8 and
# without L2, on 100 images for 2 epochs, 50 probe images, one seed, a checkpoint after every epoch.
TINY = ("seed=0", "seeds=null", "model.depth=1", "model.width=8", "optimizer.lmbda=0.0", "data.train_size=100",
        "train.epochs=2", "train.mini_batch_size=10", "train.checkpoint_every=1", "probes.size=50")


def tiny_cfg(**overrides) -> dict:
    """The config a user's run gets (conf/), shrunk for tests (TINY), as nnx.build takes it. A keyword
    group updates its group; one naming another option of conf/ (model={"name": "conv", ...}) updates
    that option's own settings, as model=conv would on the command line."""
    from nnx.edges import configs, paths

    cfg = configs.compose(TINY)  # kept per process by configs.compose, handed out as a copy
    for key, value in overrides.items():
        if not isinstance(value, dict):
            cfg[key] = value
            continue
        name = value.get("name")
        if isinstance(name, str) and name != cfg[key].get("name") and (paths.CONF / key / f"{name}.yaml").exists():
            cfg[key] = every_option()[key][name]
        cfg[key] = {**cfg[key], **value}
    return cfg


def image_deltas(spec, params, x, y) -> list:
    """Each image's delta at every layer's weighted input ([images, ...] per layer), the tests' own
    reference for the probes: jax.grad of the summed cost by a shift added to each weighted input,
    as one jitted program (shapes traced, not run; eager, it would compile every operation)."""
    import jax
    import jax.numpy as jnp

    from nnx import model

    def summed(shifts):  # the sum of C_x: its gradient by the shifts is each image's delta
        _, z = model.trace(spec.net, params, x, shifts=shifts)
        return jnp.sum(spec.cost(z, spec.output_activation(z), jax.nn.one_hot(y, z.shape[-1], dtype=z.dtype)))

    shapes = jax.eval_shape(lambda: model.trace(spec.net, params, x))[0]
    return jax.jit(jax.grad(summed))([jnp.zeros(z.shape, z.dtype) for z, _ in shapes])


def conf_options() -> dict[str, list[str]]:
    """{group: its options} for every config group of conf/ but Hydra's own and the experiment presets."""
    from nnx.edges import paths

    return {p.name: sorted(o.stem for o in p.glob("*.yaml")) for p in sorted(paths.CONF.iterdir())
            if p.is_dir() and p.name not in ("hydra", "experiment")}


def every_option() -> dict:
    """{group: {option: its settings}} for every option of conf_options(), each as composing
    <group>=<option> places it (tests/test_config.py checks that), from one composition of Hydra's
    group@package overrides (0.9 s) instead of one composition per option (31 of them: 5.8 s)."""
    from nnx.edges import configs

    return configs.compose([f"+{g}@every_option.{g}.{o}={o}" for g, options in conf_options().items()
                            for o in options])["every_option"]


@pytest.fixture(scope="session")
def migrated_store(tmp_path_factory):
    """One SQLite store with every MLflow migration applied (seconds each); tests copy it."""
    import mlflow

    folder = tmp_path_factory.mktemp("store")
    mlflow.MlflowClient(f"sqlite:///{folder / 'mlflow.db'}").search_experiments()
    return folder / "mlflow.db"


def check_report(out, figures: set, ids: set, printed: str) -> list:
    """A reproduction's report folder holds exactly `figures` (PNG and the CSV behind each) and rows
    with exactly `ids`, every row complete and finite, and the table was printed. Returns the rows."""
    import json
    import math

    for name in figures:
        assert (out / f"{name}.png").stat().st_size > 1000, name
        assert len((out / f"{name}.csv").read_text().splitlines()) > 1, name
    assert {p.stem for p in out.glob("fig_*.png")} == figures
    rows = json.loads((out / "report.json").read_text())["rows"]
    assert {r["id"] for r in rows} == ids
    for r in rows:
        assert set(r) >= {"id", "quantity", "book", "ours_mean", "ours_sd", "n_seeds", "tolerance", "tolerance_kind", "verdict"}
        assert math.isfinite(r["ours_mean"]) and math.isfinite(r["ours_sd"]) and r["verdict"] != "no data", r
    assert f"| {min(ids)} |" in printed and (out / "report.md").exists()
    return rows


def in_process(command: list, main, cwd, env: dict) -> subprocess.CompletedProcess:
    """A console script's own main() run in this process, where its sweeps and the test share one
    interpreter and compile cache: from cwd, with env's variables set (None: unset) for its duration.
    Returns a CompletedProcess with its exit status (main's return value, or SystemExit's) and what it printed."""
    import io

    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        for name, value in env.items():
            patch.setenv(name, value) if value is not None else patch.delenv(name, raising=False)
        patch.chdir(cwd)
        try:
            status = main() or 0
        except SystemExit as stop:
            status = stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 1
            if isinstance(stop.code, str):
                err.write(stop.code)
    return subprocess.CompletedProcess(command, status, out.getvalue(), err.getvalue())


def reproduce(*args, uri: str, cwd) -> subprocess.CompletedProcess:
    """nnx-reproduce with these arguments into the store at `uri`, in this process (in_process; the
    variable is restored after: main() sets it for its sweeps)."""
    from experiments import reproduce as command

    args = [str(a) for a in args]
    return in_process(["nnx-reproduce", *args], lambda: command.main([*args, "--tracking-uri", uri]), cwd, {"MLFLOW_TRACKING_URI": uri})


def copy_store(migrated_store, folder) -> str:
    """A fresh embedded store at folder/mlruns/mlflow.db, copied from the migrated one; its URI."""
    (folder / "mlruns").mkdir()
    shutil.copy(migrated_store, folder / "mlruns" / "mlflow.db")
    return f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}"


@pytest.fixture
def store(migrated_store, tmp_path):
    """A fresh embedded store for one test: (tracking URI, MlflowClient)."""
    import mlflow

    uri = copy_store(migrated_store, tmp_path)
    return uri, mlflow.MlflowClient(uri)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(backend_uri: str, cwd, *extra):
    """`mlflow server` on a free 127.0.0.1 port over backend_uri; yields its URL once it answers.

    One worker process, as `make ui` serves a browser, not MLflow's default four: each imports the whole
    server stack at start (most of the ~10-30 s before the first answer here)."""
    from nnx.edges import server

    port = free_port()
    process = subprocess.Popen([str(BIN / "mlflow"), "server", "--backend-store-uri", backend_uri, "--host", "127.0.0.1",
                                "--port", str(port), "--workers", "1", *extra], cwd=cwd, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env={**server.JOBS_OFF, **os.environ})
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180  # its first answer takes ~30 s here
    try:
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=5).read()
                break
            except OSError:
                if time.time() > deadline or process.poll() is not None:
                    raise RuntimeError(f"mlflow server over {backend_uri} did not answer within 180 s")
                time.sleep(1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def train_in_process(args, cwd, env: dict) -> subprocess.CompletedProcess:
    """nnx-train with these arguments in this process (in_process; nnx.edges.cli.run is the console
    script's own entry point), from cwd, with env's variables set (None: unset)."""
    from nnx.edges import cli

    args = [str(a) for a in args]
    return in_process(["nnx-train", *args], lambda: cli.run(args), cwd, env)


@pytest.fixture
def nnx_train(store, tmp_path):
    """Runs nnx-train into the test's store, in this process (train_in_process). Tests of signals
    and of parallel workers start real processes."""
    uri, _ = store

    def run(*args, check=True):
        done = train_in_process(args, tmp_path, {"MLFLOW_TRACKING_URI": uri})
        if check and done.returncode != 0:
            raise AssertionError(f"nnx-train {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return done

    return run
