"""nnx-rerun RUN_ID: train a finished run again from its logged config and compare the metrics.

The new run is tagged nnx.rerun_of=RUN_ID. On the same machine and package versions every
metric must match at every step; the command prints what differs and exits 1 if anything does.
A run trained in one vmapped program with other seeds (tag nnx.batch_seeds) is trained again in
that batch, whose other runs are tagged nnx.rerun_of=RUN_ID too (each with its own nnx.seed).
"""

import argparse
import sys

import numpy as np

from nnx.data import DataError
from nnx.edges import devices, job, paths, tracking
from nnx.registry import ConfigError


def compare(client, source_id: str, rerun_id: str) -> list[str]:
    """Every metric of the source run, step by step, against the rerun; returns the differences."""
    source, rerun = tracking.get_run(client, source_id), tracking.get_run(client, rerun_id)
    problems = []
    for key in sorted(source.data.metrics):
        (steps_a, a, _), (steps_b, b, _) = tracking.metric_history(client, source_id, key), tracking.metric_history(client, rerun_id, key)
        if not np.array_equal(steps_a, steps_b):
            problems.append(f"{key}: steps differ ({len(a)} vs {len(b)} values)")
        elif not np.array_equal(a, b, equal_nan=True):
            problems.append(f"{key}: values differ (largest difference {np.max(np.abs(a - b)):.3g})")
    missing = set(rerun.data.metrics) ^ set(source.data.metrics)
    problems += [f"{key}: logged by only one of the runs" for key in sorted(missing)]
    return problems


def main(argv=None):
    parser = argparse.ArgumentParser(prog="nnx-rerun", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_id")
    parser.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI, else the embedded store)")
    args = parser.parse_args(argv)
    devices.use_two_cpu_devices()
    paths.use_compilation_cache()

    uri = tracking.resolve_uri(args.tracking_uri)
    try:
        client = tracking.connect(uri)
    except tracking.TrackingError as err:
        sys.exit(f"nnx-rerun: error: {err}")
    source = tracking.get_run(client, args.run_id)
    if source is None:
        sys.exit(f"nnx-rerun: error: no run {args.run_id!r} in {uri}. Copy the id from `make ui` or the nnx-train output.")
    if source.info.status != "FINISHED":
        sys.exit(f"nnx-rerun: error: run {args.run_id} is {source.info.status}; rerun compares finished runs. "
                 f"Continue an interrupted run with `nnx-train resume={args.run_id}`.")
    cfg = tracking.read_config(client, args.run_id)
    cfg["tracking"] = {**cfg["tracking"], "uri": uri}
    batch = source.data.tags.get(job.BATCH_TAG)
    if batch:  # the same vmapped batch: the other seeds' runs are trained (and tagged) alongside
        cfg["seeds"] = [int(s) for s in batch.split(",")]
    tags = {"nnx.rerun_of": args.run_id, **{k: v for k, v in source.data.tags.items() if k in ("nnx.experiment", "nnx.overrides")}}
    try:
        job.run(cfg, name=f"rerun of {source.info.run_name}", tags=tags)
    except (ConfigError, DataError, tracking.TrackingError, job.Diverged) as err:
        sys.exit(f"nnx-rerun: error: {err}")
    (rerun,) = tracking.find_runs(client, [source.info.experiment_id], tags={"nnx.rerun_of": args.run_id, "nnx.seed": str(cfg["seed"])},
                                  newest_first=True, max_results=1)
    problems = compare(client, args.run_id, rerun.info.run_id)
    tracking.Run(client, rerun.info.run_id).set_tags({"nnx.rerun_matches": str(not problems).lower()})
    if problems:
        print(f"nnx-rerun: run {rerun.info.run_id} differs from {args.run_id}:\n  " + "\n  ".join(problems))
        sys.exit(1)
    print(f"nnx-rerun: run {rerun.info.run_id} matches {args.run_id}: {len(source.data.metrics)} metrics, every step identical")


if __name__ == "__main__":
    main()
