"""nnx-bench: seconds per epoch of nnx against the book's network.py, numpy and PyTorch (issue 5).

    nnx-bench                                    # every case, the table, reports/bench/bench.json
    nnx-bench --quick --cases "784-30-10 mb10"   # fewer repeats, a shorter cap, one case

Every contender trains the same MNIST images from the same initial params with chapter 1's
hyperparameters (sigmoid, quadratic cost, large init, eta 3.0, no L2), in this one process; each
repeat times every contender once, in turn, and each ratio is the median over the repeats of
baseline_r / nnx_r, printed with its smallest and largest ("21.3x [19.8-22.0]"). nnx's time is its
jitted epoch with the data already on the device; the baselines are in nnx.edges.bench.baselines.
A baseline whose epochs would take longer than --cap seconds in all is timed on the first fraction
of the training set and scaled up to a whole epoch ("extrapolated").
"""

import argparse
import json
import os
import sys
from pathlib import Path

from nnx.edges import paths
from nnx.edges.bench.cases import CASES, bench_case
from nnx.edges.bench.machine import BLAS_ENV, machine, restart_without_blas_env, torch_installed
from nnx.edges.bench.overhead import probes_overhead, tracking_overhead
from nnx.edges.bench.seeds import multi_seed
from nnx.edges.bench.stats import format_ratio
from nnx.edges.bench.table import goals, print_goals, print_table
from nnx.edges.bench.wholejob import whole_job


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="nnx-bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES), metavar="CASE",
                        help=f"cases to run (default all): {', '.join(repr(c) for c in CASES)}")
    parser.add_argument("--quick", action="store_true", help="3 repeats, a 15 s cap, tracking on 10000 images")
    parser.add_argument("--cap", type=float, help="seconds a baseline may spend per case (default 60, 15 with --quick)")
    parser.add_argument("--no-whole-job", action="store_true",
                        help="skip the whole-command comparison (the book's chapter 1 run takes ~70 s a time)")
    parser.add_argument("--out", type=Path, default=paths.REPORTS / "bench" / "bench.json")
    parser.add_argument("--keep-blas-env", action="store_true", help=f"do not unset {', '.join(BLAS_ENV)}")
    args = parser.parse_args(argv)
    if not args.keep_blas_env:
        restart_without_blas_env(argv)
    repeats, cap = (3, 15.0) if args.quick else (5, 60.0)
    cap = args.cap or cap

    import nnx

    info = machine()
    print(f"nnx-bench on {info['cpu']} ({info['cores']} cores), jax {info['jax']} on {info['jax_device']}, "
          f"numpy {info['numpy']} with {info['numpy_blas']}, torch {info['torch']}", flush=True)
    if info["load_average_1min"] > 0.5:
        print(f"nnx-bench: load average {info['load_average_1min']:.1f}: other processes are using the CPUs, "
              f"so timings will be slower and noisier than on an idle machine", flush=True)
    if not torch_installed():
        print("torch not installed: pip install torch==2.13.0 (make bench does this)", flush=True)
    data = nnx.load()
    cases = []
    for name in args.cases:
        print(f"{name} ...", flush=True)
        cases.append(bench_case(name, data, repeats, cap))
    overhead = tracking_overhead(data, 10_000 if args.quick else 50_000)
    print(f"tracking overhead: {overhead['pct']:.1f}% ({overhead['on_s']:.2f} s with MLflow, {overhead['off_s']:.2f} s "
          f"without; 30 epochs of [784,30,10] mb 10 on {overhead['train_size']} images); time inside the MLflow "
          f"calls: {overhead['logging_s']:.2f} s = {overhead['logging_pct']:.1f}%", flush=True)
    probing = probes_overhead(10_000 if args.quick else 50_000)
    print(f"probes overhead: {probing['pct']:.1f}% ({probing['on_s']:.2f} s with every probe after every epoch, "
          f"{probing['off_s']:.2f} s with chapter 5's gradients only; 10 epochs of [784,30,30,30,30,10] mb 10 on "
          f"{probing['train_size']} images)", flush=True)
    seeds = multi_seed()
    print(f"multi-seed: {seeds['seeds']} seeds in {seeds['vmapped_s']:.1f} s vmapped, {seeds['sequential_s']:.1f} s "
          f"one after another (30 epochs of [784,30,10] mb 10 on 1000 images)", flush=True)

    whole = None
    if not args.no_whole_job:
        whole = whole_job(epochs=5 if args.quick else 30)
        print(f"whole command: {whole['commands']['nnx']} {whole['nnx_s']:.1f} s (peak {whole['nnx_peak_mb']:.0f} MiB) against "
              f"the book's run {whole['book_s']:.1f} s ({whole['book_peak_mb']:.0f} MiB): "
              f"{format_ratio(whole['speedup_range'])}, seconds and ratio the medians of {whole['repeats']} "
              f"alternated repeats, start-up, store and evaluation included", flush=True)

    info["load_average_1min_end"] = os.getloadavg()[0]
    print()
    print_table(cases)
    judged = goals(cases, whole)
    print()
    print_goals(judged)
    report = {"machine": info, "cases": cases, "tracking_overhead_pct": overhead["pct"], "tracking_overhead": overhead,
              "probes_overhead_pct": probing["pct"], "probes_overhead": probing,
              "multi_seed": seeds, "whole_job": whole, "goals": judged}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
