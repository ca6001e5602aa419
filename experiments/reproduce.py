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
import importlib
import os
import sys
import time
from pathlib import Path

from experiments.sweep_command import failure, runs_since, sweep_argv
from experiments.together import train_together
from nnx.edges import cli, paths, tracking

# The signal-propagation lab: papers that measured chapter 5's problem more finely.
PAPERS = ("glorot2010", "he2015", "saxe2014", "schoenholz2017", "pennington2017", "ioffe2015")
CHAPTERS = {"ch1": "experiments.ch1", "ch2": "experiments.ch2", "ch3": "experiments.ch3", "ch3hp": "experiments.ch3hp",
            "ch4": "experiments.ch4", "ch5": "experiments.ch5", "ch6": "experiments.ch6",
            **{name: f"experiments.{name}" for name in PAPERS}}
GROUPS = {"all": ("ch1", "ch2", "ch3", "ch3hp", "ch4", "ch5", "ch6"), "papers": PAPERS}  # each runs its members in turn
LOCAL_LAUNCHERS = ("basic", "joblib")  # in this process, or its joblib workers: the sweeps run one after another


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
        train_together([importlib.import_module(CHAPTERS[c]) for c in members], args, tracking.resolve_uri(args.tracking_uri))
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
