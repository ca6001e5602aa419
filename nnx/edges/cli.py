"""nnx-train: the Hydra entry point (the runs it trains go through nnx.edges.job).

    nnx-train model.depth=3 activation=tanh optimizer.eta=0.1 seed=0
    nnx-train -m model.depth=1,2,3,4 activation=sigmoid,tanh,relu
    nnx-train experiment=ch1_30
"""

import contextlib
import os
import signal
import sys
import threading

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

from nnx import records
from nnx.edges import compat, devices, job, paths, search, sweeps
from nnx.edges.resume import resume
from nnx.errors import UserError

CONF = str(paths.CONF)
# Override keys shortened in run names: "model.depth=3" reads "depth=3".
SHORT_PREFIXES = ("model.", "train.", "optimizer.", "data.")


def run_name(task_overrides, seed=None) -> str:
    """`depth=3 activation=tanh seed=0`: what this run sets, so sweeps' runs tell apart."""
    parts = []
    for override in task_overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if key.startswith(("hydra", "tracking", "seeds", "experiment")):
            continue
        parts.append(f"{key.removeprefix(next((p for p in SHORT_PREFIXES if key.startswith(p)), ''))}={value}")
    if seed is not None and not any(p.startswith("seed=") for p in parts):
        parts.append(f"seed={seed}")
    return " ".join(parts)


class Killed(Exception):
    """A submitit job (SLURM) whose run(s) a signal ended KILLED: scancel, preemption, time limit."""


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def train(cfg) -> dict:
    """One Hydra job: name it, find its sweep's parent, and hand the resolved config to nnx.edges.job."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    if plain["resume"]:
        return resume(plain["resume"], tracking_cfg=plain["tracking"], echo=_echo, progress=_progress())
    hc = HydraConfig.get()
    preset = hc.runtime.choices.get("experiment") or "none"
    tags = {records.TAG_OVERRIDES: " ".join(hc.overrides.task), records.TAG_EXPERIMENT: preset}
    multirun = hc.mode == RunMode.MULTIRUN
    parent = (lambda client, experiment_id: sweeps.sweep_parent(client, experiment_id, hc.sweep.dir, preset)) if multirun else None
    name = run_name(hc.overrides.task, None if plain["seeds"] else plain["seed"])
    trial = search.trial_stopper(hc.sweep.dir, hc.job.num, plain["train"]["epochs"]) if multirun else None  # a search's trial
    if trial is not None:
        tags[search.TRIAL_TAG] = str(trial.number)
    # A search's trial always trains: the study needs its epochs, and a twin from another search was judged by another study.
    skip = multirun and plain["tracking"]["skip_finished"] and trial is None
    heal = plain["tracking"]["skip_finished"] and trial is None  # a run left RUNNING by a dead process is resumed
    return job.run(plain, name=name, tags=tags, parent=parent, skip_finished=skip, heal=heal, echo=_echo, progress=_progress(),
                   should_stop=trial)


def _progress():
    """A bar on a terminal; plain "Epoch k:" lines elsewhere, so CI logs stay readable."""
    return _bar if sys.stdout.isatty() else None


def _echo(line):
    print(line, flush=True)


def _bar(step, epochs, values):
    """One self-overwriting line per run on a terminal: epochs done and the current accuracy."""
    done = step + 1
    filled = round(30 * done / epochs)
    shown = "  ".join(f"{label} {values[key]:.2%}" for label, key in (("val", "val_accuracy"), ("test", "test_accuracy"))
                      if key in values)
    print(f"\r[{'#' * filled}{'.' * (30 - filled)}] epoch {done}/{epochs}  {shown}", end="\n" if done == epochs else "", flush=True)


@hydra.main(version_base="1.3", config_path=CONF, config_name="train")
def _hydra_main(cfg):
    devices.use_two_cpu_devices()
    paths.use_compilation_cache()  # also in joblib's and submitit's (SLURM's) workers, which never run main()
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)  # also in joblib/submitit workers
    try:
        return train(cfg)
    except UserError as err:  # a bad value, file, store or run: its message says the fix
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # the other jobs go on; Hydra reports this one at the end of the batch
        print(f"nnx-train: error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as err:
        if not os.environ.get("SUBMITIT_EXECUTOR"):
            raise
        # In a submitit job an interrupt (a BaseException) leaves no result file, and the sweep's
        # launcher then learns that the job ended only from sacct: after up to 10 minutes, or never
        # where the cluster keeps no accounting. As an Exception it is this job's recorded failure,
        # which the launcher reads at once (the sweep's other jobs still run to their end).
        raise Killed(f"{err}: the run ended KILLED after its last checkpoint; run the same sweep again to resume it") from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def register_search():
    """Makes hydra/sweeper=search known to Hydra. Hydra finds plugins by walking the hydra_plugins
    namespace package, which misses a package that an editable install maps through setuptools'
    import finder (pip install -e: what `make install` does), so nnx registers its own by hand."""
    from hydra.core.plugins import Plugins

    from hydra_plugins.nnx_search.search_sweeper import SearchSweeper

    Plugins.instance().register(SearchSweeper)


def main():
    from nnx.edges.preflight import preflight

    devices.use_two_cpu_devices()
    paths.use_compilation_cache()
    register_search()
    compat.read_each_config_file_once()
    checked = preflight(sys.argv[1:], CONF, "train")
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        # preflight has composed and built every job: Hydra's check of the batch would compose each a third time.
        with compat.skip_sweepers_batch_check() if checked else contextlib.nullcontext():
            _hydra_main()
    finally:
        signal.signal(signal.SIGTERM, previous)
        while sweeps.OPEN_SWEEPS:
            sweeps.finish_sweep(sweeps.OPEN_SWEEPS.pop())


def console():
    """The nnx-train command: main(), then out without the interpreter's teardown.

    By the time main() returns every run has ended and been written, yet freeing JAX's, MLflow's
    and their imports' objects one by one takes about a second of a ~8 s command (the numbers:
    compat.exit_without_teardown). atexit's handlers still run (logging, joblib's workers); only
    that teardown is skipped, and only when no thread that the ordinary exit would wait for is left.
    """
    try:
        main()
        status = 0
    except SystemExit as stop:
        status = exit_status(stop)
    if any(not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(status)
    compat.exit_without_teardown(status)


_WORKERS_STARTED_IN = None  # (cwd, the tracking variables) of the last in-process run


def _no_stale_workers():
    """joblib keeps its worker processes between the sweeps of one process, and a worker keeps the
    folder and environment it started with: a sweep run in process from another folder, for
    another store or with another login would find the sweep's shared file under the old folder and
    write to the old store as the old user. So the workers go when any of these changed since the
    last run (nnx-reproduce's sweeps share them and keep theirs)."""
    global _WORKERS_STARTED_IN
    from joblib.externals.loky import get_reusable_executor

    here = (os.getcwd(), *(os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                                                         "NETRC")))
    if _WORKERS_STARTED_IN is not None and here != _WORKERS_STARTED_IN:
        # An earlier run may have left workers (the joblib launcher's): loky hands back its executor
        # as it is (reuse=True), or a fresh one with none, and either shuts down with its workers (~3 ms).
        get_reusable_executor(reuse=True).shutdown(wait=True, kill_workers=True)
    _WORKERS_STARTED_IN = here


def run(argv: list[str]) -> int:
    """nnx-train with these arguments, in this process: its exit status (0 when every job finished).

    What nnx-reproduce and the tests use: the same entry point a user types, without a new
    interpreter that imports JAX, Hydra and MLflow again and compiles again what this one has.
    """
    _no_stale_workers()
    saved = sys.argv
    sys.argv = ["nnx-train", *argv]
    try:
        main()
    except SystemExit as stop:
        return exit_status(stop)
    finally:
        sys.argv = saved
    return 0


def exit_status(stop: SystemExit) -> int:
    """The status a process would exit with (a message goes to stderr, as Python's exit prints it)."""
    if isinstance(stop.code, str):
        print(stop.code, file=sys.stderr)
    return stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 1
