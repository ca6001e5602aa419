"""A user's whole command against the book's code doing the same job, as whole processes.

Chapter 1's run ([784,30,10], mb 10, eta 3.0, test accuracy after each epoch): `nnx-train
experiment=ch1_30` against network.py's algorithm run the book's way (book_run.py, numpy only).
Everything a user waits for counts: start-up, loading the data, compiling, training, evaluating,
and for nnx the MLflow store (one that exists already, as a user's does: it is created untimed).
nnx-train also evaluates the training and validation sets and probes chapter 5's gradients each
epoch, which the book's run does not. Each command runs `repeats` times, alternating; the median
wall times, the median, min and max of the per-repeat ratio, and each command's peak resident
memory are kept.
"""

import functools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nnx.edges.bench.stats import Timer, alternate, ratio_summary

BOOK_RUN = Path(__file__).with_name("book_run.py")


# Forks the command from a small process and prints its peak memory (KiB). Measured from this
# process instead, a child's ru_maxrss starts at this process's own size: Python starts children
# with vfork, and Linux carries the old address space's high-water mark across exec.
_PEAK = "import os, sys; pid = os.fork() or os.execv(sys.argv[1], sys.argv[1:]); _, s, u = os.wait4(pid, 0); " \
        "print(u.ru_maxrss, file=sys.stderr); sys.exit(os.waitstatus_to_exitcode(s))"


def _timed(command, env) -> tuple[float, float]:
    """(wall seconds, peak resident MiB) of one process."""
    with tempfile.TemporaryFile("w+") as errors:  # a file, not a pipe: nothing is read until the process ends
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", _PEAK, *command], env=env, stdout=subprocess.DEVNULL, stderr=errors)
        wall = time.perf_counter() - start
        errors.seek(0)
        lines = errors.read().splitlines()
    if done.returncode:
        raise RuntimeError(f"{' '.join(map(str, command))} failed ({done.returncode}): {chr(10).join(lines[-30:])}")
    return wall, int(lines[-1]) / 1024


def whole_job(epochs: int = 30, repeats: int = 3) -> dict:
    """Each command `repeats` times, alternated (book, nnx, book, nnx, ...); the ratio is the median over
    the repeats of book_r / nnx_r, with its min and max (stats.ratio_summary)."""
    from nnx import data
    from nnx.edges import tracking

    book_file = data.default_path()
    with tempfile.TemporaryDirectory() as folder:
        uri = f"sqlite:///{folder}/mlflow.db"
        tracking.open_experiment(uri, "ch1")
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
        commands = {
            "book": [sys.executable, str(BOOK_RUN), str(book_file), str(epochs)],
            "nnx": [str(Path(sys.executable).parent / "nnx-train"), "experiment=ch1_30", f"train.epochs={epochs}",
                    f"hydra.run.dir={folder}/outputs"],
        }
        runs = alternate({name: Timer(functools.partial(_timed, command, env)) for name, command in commands.items()}, repeats)
    wall = {name: [seconds for seconds, _ in runs[name]] for name in commands}
    ratio = ratio_summary(wall["book"], wall["nnx"])
    return {"epochs": epochs, "repeats": repeats,
            "book_s": statistics.median(wall["book"]), "nnx_s": statistics.median(wall["nnx"]),  # medians
            "speedup": ratio["median"], "speedup_range": ratio,  # of book_r / nnx_r over the repeats
            "book_runs_s": wall["book"], "nnx_runs_s": wall["nnx"], "order": list(commands),
            "book_peak_mb": max(m for _, m in runs["book"]), "nnx_peak_mb": max(m for _, m in runs["nnx"]),
            "commands": {"book": "python nnx/edges/bench/book_run.py <mnist.pkl.gz> " + str(epochs),
                         "nnx": f"nnx-train experiment=ch1_30 train.epochs={epochs}"}}
