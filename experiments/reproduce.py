"""nnx-reproduce: run a chapter's experiments into MLflow, then redraw its report from the store.

    nnx-reproduce ch5                      # train every sweep, then write reports/ch5/
    nnx-reproduce ch5 --plot-only          # redraw reports/ch5/ from the runs already stored
    nnx-reproduce ch5 train.epochs=2 ...   # overrides passed to every sweep (e.g. a smoke test)
    nnx-reproduce ch3hp                    # chapter 3's hyper-parameter craft: early stopping, schedules, search
    nnx-reproduce ch4                      # chapter 4's constructions (no sweeps; a small training inline)
    nnx-reproduce all                      # ch1, ch2, ch3, ch3hp, ch4, ch5 and ch6 in turn, each as if run alone
    nnx-reproduce ch6 --book               # chapter 6 at the book's protocol, not the scaled default
    nnx-reproduce he2015                   # one of the papers beyond the book (see PAPERS)
    nnx-reproduce papers                   # all of them in turn

On a cluster (docs/cluster.md): any Hydra launcher other than the local ones (basic, joblib) runs
every sweep of the command at once, each as its own `nnx-train -m` process that submits its jobs
and waits for them; this command prints how many runs are done, running and queued, then writes
the reports once all have ended. Run it again after a kill: finished runs are skipped, killed ones resumed.

    nnx-reproduce ch6 --book hydra/launcher=slurm hydra.launcher.partition=gpu tracking=server \\
        tracking.uri=http://head:5000 --out reports/ch6-book
"""

import argparse
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from nnx.edges import cli, paths, sweeps, tracking

# The signal-propagation lab: papers that measured chapter 5's problem more finely.
PAPERS = ("glorot2010", "he2015", "saxe2014", "schoenholz2017", "pennington2017", "ioffe2015")
CHAPTERS = {"ch1": "experiments.ch1", "ch2": "experiments.ch2", "ch3": "experiments.ch3", "ch3hp": "experiments.ch3hp",
            "ch4": "experiments.ch4", "ch5": "experiments.ch5", "ch6": "experiments.ch6",
            **{name: f"experiments.{name}" for name in PAPERS}}
GROUPS = {"all": ("ch1", "ch2", "ch3", "ch3hp", "ch4", "ch5", "ch6"), "papers": PAPERS}  # each runs its members in turn
LOCAL_LAUNCHERS = ("basic", "joblib")  # in this process, or its joblib workers: the sweeps run one after another
PROGRESS_SECONDS = 30  # between two progress lines of sweeps run at once (none while nothing changed)


@contextlib.contextmanager
def silenced_stdout():
    """Standard output to /dev/null at the file-descriptor level, so that the joblib workers a sweep
    starts (which inherit the descriptor, not sys.stdout) are as quiet as this process."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 1)
        try:
            with contextlib.redirect_stdout(devnull):
                yield
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)


# The reports read metrics and params.npz, never a logged model, and a model costs ~0.2-0.5 s a run
# (hundreds of runs here): `nnx-reproduce ch5 tracking.log_model=true` logs them all the same.
NO_MODELS = ["tracking.log_model=false"]


def chosen_launcher(overrides: list[str]) -> str | None:
    """The launcher the user's overrides choose (hydra/launcher=NAME; the last one given), or None."""
    chosen = [o.partition("=")[2] for o in overrides if o.lstrip("+~").startswith("hydra/launcher=")]
    return chosen[-1] if chosen else None


def launcher_overrides(overrides: list[str], jobs: int | None) -> list[str]:
    """The launcher settings nnx-reproduce adds to each sweep: --jobs parallel jobs through the local
    joblib launcher (2 unless given), nothing where the user chose a launcher of their own (a cluster
    decides how many run at once), and an error where --jobs was given for one."""
    chosen = chosen_launcher(overrides)
    if chosen is not None and chosen != "joblib":
        if jobs is not None:
            sys.exit(f"nnx-reproduce: error: --jobs sets the local launcher's parallel jobs; with hydra/launcher={chosen} "
                     f"the launcher decides how many run at once (e.g. hydra.launcher.array_parallelism for slurm). Drop --jobs.")
        return []
    jobs = 2 if jobs is None else jobs
    return ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"] if jobs > 1 else []


def sweep_argv(module, preset: str, overrides: list[str], book: bool, launcher=()) -> list[str]:
    """`nnx-train` arguments of one sweep: the preset, the launcher's settings, the chapter's scaled
    overrides (SCALED; none with `book`), NO_MODELS, then the user's, which come last and win."""
    scaled = [] if book else getattr(module, "SCALED", {}).get(preset, [])
    return ["-m", f"experiment={preset}", *launcher, *scaled, *NO_MODELS, *overrides]


def run_sweeps(module, overrides: list[str], jobs: int | None, book: bool = False, store=None):
    """Each sweep is one `nnx-train -m experiment=<preset>` as a user would type it, run in this
    process (nnx.edges.cli.run) with its progress lines silenced, one after another (a local launcher).
    A chapter whose book protocol takes hours here (SCALED) gets its scaled overrides first, unless `book`.
    store: an MLflow client, to say on a failure whether the sweep had started runs."""
    launcher = launcher_overrides(overrides, jobs)
    for preset in module.SWEEPS:
        argv = sweep_argv(module, preset, overrides, book, launcher)
        print(f"nnx-reproduce: nnx-train {' '.join(argv)}", flush=True)
        started = time.perf_counter()
        since_ms = int(time.time() * 1000)
        with silenced_stdout():
            status = cli.run(argv)
        if status != 0:
            sys.exit(failure(preset, status, None if store is None else runs_since(store, preset, since_ms)))
        print(f"nnx-reproduce: {preset} done in {time.perf_counter() - started:.0f} s", flush=True)


def runs_since(client, preset: str, since_ms: int) -> int:
    """How many runs of the preset (not sweep parents; in any experiment) started at or after since_ms."""
    experiments = [e.experiment_id for e in tracking.retry(client.search_experiments)]
    found = tracking.find_runs(client, experiments, tags={"nnx.experiment": preset}) if experiments else []
    return sum(r.info.start_time >= since_ms and r.data.tags.get("nnx.role") != "sweep" for r in found)


def failure(preset: str, status: int, started: int | None) -> str:
    """What a failed sweep's message says: only what happened (started None: not known)."""
    if started == 0:
        return (f"nnx-reproduce: the {preset} sweep stopped before any run started (exit {status}): its error is above. "
                f"Fix what it names and rerun.")
    runs = "its runs are" if started is None else f"the {started} run{'s' if started != 1 else ''} it started {'are' if started != 1 else 'is'}"
    return (f"nnx-reproduce: the {preset} sweep failed (exit {status}); {runs} in MLflow with their errors. Fix the cause and "
            f"rerun (finished runs are skipped), or redraw what exists with --plot-only.")


# ---- every sweep at once (a cluster's launcher)


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
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    parser = OverridesParser.create()
    given = [o for o in parser.parse_overrides([a for a in argv if not a.startswith("-")])
             if not o.get_key_element().lstrip("+~").startswith("hydra")]
    with initialize_config_dir(config_dir=str(paths.CONF), version_base="1.3"):
        cfg = compose("train", overrides=[o.input_line for o in given if not o.is_sweep_override()], return_hydra_config=True)
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


def train_together(chapters: list[str], args, uri: str):
    """Every sweep of these chapters at once through the user's launcher; exits, saying what
    happened to each, if any failed."""
    import importlib

    modules = [importlib.import_module(CHAPTERS[c]) for c in chapters]
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


def main(argv=None):
    parser = argparse.ArgumentParser(prog="nnx-reproduce", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("chapter", choices=[*sorted(CHAPTERS), *GROUPS])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every sweep, e.g. seed=0,1 train.epochs=2; "
                                                     "hydra/launcher=slurm runs every sweep at once on a cluster")
    parser.add_argument("--plot-only", action="store_true", help="redraw from the runs in the store; train nothing")
    parser.add_argument("--out", type=Path, help="report folder (default: reports/<chapter>/ in the project; "
                                                 "with `all` or `papers`, one subfolder per member)")
    parser.add_argument("--jobs", type=int, help="parallel jobs per sweep through the local joblib launcher (default 2; 1 = "
                                                  "one job at a time, in this process); not with a launcher of your own "
                                                  "such as hydra/launcher=slurm, which decides that itself")
    parser.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI, else the embedded store)")
    parser.add_argument("--book", action="store_true", help="the book's (the paper's) own protocol wherever the default "
                                                           "is scaled: ch3's more_data uncapped, ch3hp on all images, ch6 on "
                                                           "all images for 40-60 epochs with 3-5 seeds, ioffe2015's 50,000 "
                                                           "updates (hours to days on a CPU)")
    args = parser.parse_intermixed_args(argv)
    paths.use_compilation_cache()  # the analyses (ch2's backprop, the theory curves) compile too
    if args.tracking_uri:
        # The sweeps read the store from the environment, like any nnx-train.
        os.environ["MLFLOW_TRACKING_URI"] = args.tracking_uri
    members = GROUPS.get(args.chapter, (args.chapter,))
    together = not args.plot_only and chosen_launcher(args.overrides) not in (None, *LOCAL_LAUNCHERS)
    started, times = time.perf_counter(), {}
    if together:
        launcher_overrides(args.overrides, args.jobs)  # --jobs has no say here: its error
        train_together(members, args, tracking.resolve_uri(args.tracking_uri))
        times["sweeps"] = time.perf_counter() - started
    for chapter in members:
        begun = time.perf_counter()
        out = args.out if args.chapter not in GROUPS else None if args.out is None else args.out / chapter
        reproduce(chapter, args, out, train=not args.plot_only and not together)
        times[chapter] = time.perf_counter() - begun
    if args.chapter in GROUPS:
        print(f"\nnnx-reproduce {args.chapter}: " + ", ".join(f"{c} {t:.0f} s" for c, t in times.items())
              + f"; {time.perf_counter() - started:.0f} s in all")


def reproduce(chapter: str, args, out: Path | None, train: bool = True):
    """One chapter: its sweeps one after another (train) and its analysis into MLflow (unless
    --plot-only), then its report."""
    import importlib

    from experiments import report
    from experiments.store import MissingRuns

    module = importlib.import_module(CHAPTERS[chapter])
    out = out or paths.REPORTS / chapter
    try:
        client, experiment_id = tracking.open_experiment(tracking.resolve_uri(args.tracking_uri), module.EXPERIMENT)
    except tracking.TrackingError as err:
        sys.exit(f"nnx-reproduce: error: {err}")
    started = time.perf_counter()
    if train:
        run_sweeps(module, args.overrides, args.jobs, args.book, store=client)
    if not args.plot_only and hasattr(module, "record_analysis"):  # a computation outside the sweeps (ch2, ch3, ch4, ch5)
        module.record_analysis(client, experiment_id)
    try:
        rows, figures, *notes = module.build_report(client, out)
    except MissingRuns as err:
        sys.exit(f"nnx-reproduce: error: {err}")
    title = getattr(module, "TITLE", f"Chapter {chapter.removeprefix('ch')} reproduced with nnx")
    reference = "published" if chapter in PAPERS else "book"
    if chapter in PAPERS:  # a row with nothing to compare is beyond the paper, not the book; its own protocol is the paper's
        rows = [{**r, "verdict": "no published number" if r["verdict"] == "beyond the book" else r["verdict"],
                 "protocol": report.PAPER if r["protocol"] == report.BOOK else r["protocol"]} for r in rows]
    report.write(out, title, rows, notes[0] if notes else module.NOTES, figures, reference)
    run_id = report.log_report_run(client, experiment_id, chapter, out, {})
    print(report.markdown_table(rows, reference))
    print(f"\nnnx-reproduce: {len(rows)} rows, {len(figures)} figures in {out} (MLflow run {run_id}, "
          f"tag nnx.report={chapter}); {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
