"""nnx-reproduce on a cluster: every sweep of the command at once, each its own `nnx-train -m`
process in a sweep folder of its own, with the runs' progress printed while they change.

Any Hydra launcher other than the local ones (basic, joblib) brings nnx-reproduce here
(docs/cluster.md); the reports are drawn once every sweep has ended, by experiments.reproduce.
"""

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from experiments.sweep_command import failure, runs_since, sweep_argv
from nnx.edges import configs, sweeps, tracking

PROGRESS_SECONDS = 30  # between two progress lines of sweeps run at once (none while nothing changed)


@dataclass
class Sweep:
    """One sweep run at once with the others: its own `nnx-train -m` process and Hydra sweep folder."""
    preset: str
    argv: list[str]
    folder: Path                # its hydra.sweep.dir, holding nnx_sweep.json (the parent run's id)
    experiment: str             # its MLflow experiment
    expected: int | None        # the runs it will have; None where its sweeper decides (a search)
    process: subprocess.Popen | None = None
    status: int | None = None
    began: float = field(default_factory=time.perf_counter)

    @property
    def log(self) -> Path:
        return self.folder.with_suffix(".log")


def planned(argv: list[str]) -> tuple[str, int | None]:
    """(the MLflow experiment a sweep writes to, how many runs it will have) from its config: Hydra's
    basic sweeper runs the product of its params' values (the command line's replace the preset's
    for a key), each job one run per seed of `seeds` (one without); None for another sweeper."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    parser = OverridesParser.create()
    given = [o for o in parser.parse_overrides([a for a in argv if not a.startswith("-")])
             if not o.get_key_element().lstrip("+~").startswith("hydra")]
    cfg = configs.compose([o.input_line for o in given if not o.is_sweep_override()], hydra=True)
    sweeper = OmegaConf.to_container(cfg.hydra.sweeper, resolve=False)
    if not str(sweeper.get("_target_", "")).endswith("BasicSweeper"):
        return cfg.tracking.experiment, None
    values = {}
    for o in [*parser.parse_overrides([f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]), *given]:
        values[o.get_key_element()] = len(list(o.sweep_string_iterator())) if o.is_discrete_sweep() else 1
    return cfg.tracking.experiment, math.prod(values.values()) * (len(cfg.seeds) if cfg.seeds else 1)


def sweeps_together(modules, overrides: list[str], book: bool, label: str) -> list[Sweep]:
    """Every sweep of these chapters, each once (chapter 3 shares chapter 1's ch1_accuracy), in a
    folder of its own under one folder for the command: the user's hydra.sweep.dir, else
    multirun/<date>/<time>-reproduce-<label> (two sweeps in one folder would share one parent run)."""
    base = next((o.partition("=")[2] for o in overrides if o.startswith("hydra.sweep.dir=")), None)
    base = Path(base.strip("'\"") if base else Path("multirun") / time.strftime("%Y-%m-%d") /
                f"{time.strftime('%H-%M-%S')}-{time.time_ns() // 1_000_000 % 1000:03d}-reproduce-{label}").absolute()
    rest = [o for o in overrides if not o.startswith("hydra.sweep.dir=")]
    found = {}
    for module in modules:
        for preset in module.SWEEPS:
            argv = sweep_argv(module, preset, rest, book)
            if tuple(argv) not in found:
                folder = base / (preset if all(s.preset != preset for s in found.values()) else f"{preset}-{len(found)}")
                found[tuple(argv)] = Sweep(preset, [*argv, f"hydra.sweep.dir='{folder}'"], folder, *planned(argv))
    return list(found.values())


def parent_run(sweep: Sweep) -> str | None:
    """The id of the sweep's parent run, once its first job has made it (nnx.edges.sweeps' file)."""
    try:
        return json.loads(sweeps.sweep_file(sweep.folder).read_text()).get("parent_run_id")
    except (OSError, ValueError):  # not there yet, or being written
        return None


def progress(client, together: list[Sweep]) -> str:
    """How many runs are done, running and queued (not started yet), from the runs' statuses in the
    store and the runs each sweep will have."""
    counts = {"FINISHED": 0, "RUNNING": 0, "FAILED": 0, "KILLED": 0}
    for sweep in together:
        parent, experiment_id = parent_run(sweep), tracking.experiment_id(client, sweep.experiment)
        if parent is not None and experiment_id is not None:
            for run in tracking.find_runs(client, [experiment_id], tags={"mlflow.parentRunId": parent}):
                counts[run.info.status] = counts.get(run.info.status, 0) + 1
    seen = sum(counts.values())
    known = all(s.expected is not None for s in together)
    queued = max(sum(s.expected for s in together) - seen, 0) if known else "?"
    ended = sum(s.status is not None for s in together)
    failed = counts["FAILED"] + counts["KILLED"]
    return (f"nnx-reproduce: runs {counts['FINISHED']} done, {counts['RUNNING']} running, {queued} queued"
            f"{f', {failed} failed or killed' if failed else ''}; {ended} of {len(together)} sweeps ended")


def nnx_train() -> list[str]:
    """The nnx-train command beside this interpreter (the console script), or the same through -c."""
    script = Path(sys.executable).parent / "nnx-train"
    return [str(script)] if script.exists() else [sys.executable, "-c", "from nnx.edges.cli import console; console()"]


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def run_together(together: list[Sweep], client, every: float = PROGRESS_SECONDS) -> list[Sweep]:
    """Starts every sweep's `nnx-train -m` at once (its output in <its folder>.log), prints what ends
    and, every `every` seconds while anything changed, the runs' progress; returns the failed sweeps.
    Stopped (Ctrl-C, SIGTERM), it stops them and exits."""
    for sweep in together:
        sweep.folder.parent.mkdir(parents=True, exist_ok=True)
        with open(sweep.log, "w") as log:
            sweep.process = subprocess.Popen([*nnx_train(), *sweep.argv], stdout=log, stderr=subprocess.STDOUT,
                                             env={**os.environ, "PYTHONUNBUFFERED": "1"})
        print(f"nnx-reproduce: nnx-train {' '.join(sweep.argv)}  ({sweep.expected or 'its sweeper decides how many'} "
              f"runs; output in {sweep.log})", flush=True)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        shown, last = None, time.monotonic()
        while any(s.status is None for s in together):
            time.sleep(1)
            for sweep in (s for s in together if s.status is None):
                sweep.status = sweep.process.poll()
                if sweep.status is not None:
                    how = "done" if sweep.status == 0 else f"failed (exit {sweep.status})"
                    print(f"nnx-reproduce: {sweep.preset} {how} in {time.perf_counter() - sweep.began:.0f} s", flush=True)
            if time.monotonic() - last >= every:
                last, line = time.monotonic(), progress(client, together)
                if line != shown:
                    print(line, flush=True)
                    shown = line
    except KeyboardInterrupt:
        stop(together)
        sys.exit("nnx-reproduce: stopped: every sweep's nnx-train was told to stop. Jobs already handed to a cluster run on "
                 "unless cancelled (SLURM: scancel), and their runs are kept. Run the same command again to go on: finished "
                 "runs are skipped, killed ones resumed from their checkpoints.")
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(progress(client, together), flush=True)
    return [s for s in together if s.status != 0]


def stop(together: list[Sweep], grace: float = 60.0):
    """SIGTERM to every sweep process still running (nnx-train ends its parent run on it); SIGKILL
    to those still there after `grace` seconds."""
    live = [s.process for s in together if s.process is not None and s.process.poll() is None]
    for process in live:
        process.terminate()
    deadline = time.monotonic() + grace
    for process in live:
        try:
            process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def train_together(modules: list, args, uri: str):
    """Every sweep of these chapters (their experiments.<chapter> modules) at once through the user's
    launcher; exits, saying what happened to each, if any failed."""
    together = sweeps_together(modules, args.overrides, args.book, args.chapter)
    if not together:
        return
    since_ms = int(time.time() * 1000)
    try:  # each experiment made once, before any job: parallel jobs collide creating an SQLite store's
        client = None
        for name in dict.fromkeys([*(m.EXPERIMENT for m in modules), *(s.experiment for s in together)]):
            client, _ = tracking.open_experiment(uri, name)
    except tracking.TrackingError as err:
        sys.exit(f"nnx-reproduce: error: {err}")
    failed = run_together(together, client)
    for sweep in failed:
        tail = sweep.log.read_text(errors="replace").splitlines()[-20:] if sweep.log.exists() else []
        print("\n".join([f"--- the end of {sweep.log}:", *tail]), file=sys.stderr)
        print(failure(sweep.preset, sweep.status, runs_since(client, sweep.preset, since_ms)), file=sys.stderr)
    if failed:
        sys.exit(f"nnx-reproduce: {len(failed)} of {len(together)} sweeps failed ({', '.join(s.preset for s in failed)}); "
                 "no report was written.")
