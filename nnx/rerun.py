"""nnx-rerun RUN_ID: train a finished run again from its logged config and compare the metrics.

The new run is tagged nnx.rerun_of=RUN_ID. On the same machine and package versions every
metric must match at every step; the command prints what differs and exits 1 if anything does.
"""

import argparse
import sys
import tempfile

import numpy as np
import yaml

from nnx import job, tracking
from nnx.data import DataError
from nnx.registry import ConfigError


def compare(client, source_id: str, rerun_id: str) -> list[str]:
    """Every metric of the source run, step by step, against the rerun; returns the differences."""
    source, rerun = client.get_run(source_id), client.get_run(rerun_id)
    problems = []
    for key in sorted(source.data.metrics):
        a = sorted((m.step, m.value) for m in client.get_metric_history(source_id, key))
        b = sorted((m.step, m.value) for m in client.get_metric_history(rerun_id, key))
        if [s for s, _ in a] != [s for s, _ in b]:
            problems.append(f"{key}: steps differ ({len(a)} vs {len(b)} values)")
        elif not np.array_equal(np.array([v for _, v in a]), np.array([v for _, v in b]), equal_nan=True):
            diff = max(abs(x - y) for (_, x), (_, y) in zip(a, b))
            problems.append(f"{key}: values differ (largest difference {diff:.3g})")
    missing = set(rerun.data.metrics) ^ set(source.data.metrics)
    problems += [f"{key}: logged by only one of the runs" for key in sorted(missing)]
    return problems


def main(argv=None):
    parser = argparse.ArgumentParser(prog="nnx-rerun", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_id")
    parser.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI, else the embedded store)")
    args = parser.parse_args(argv)

    uri = tracking.resolve_uri(args.tracking_uri)
    import mlflow

    client = mlflow.MlflowClient(uri)
    try:
        source = client.get_run(args.run_id)
    except Exception as err:
        sys.exit(f"nnx-rerun: error: no run {args.run_id!r} in {uri} ({type(err).__name__}).")
    if source.info.status != "FINISHED":
        sys.exit(f"nnx-rerun: error: run {args.run_id} is {source.info.status}; rerun compares finished runs. "
                 f"Continue an interrupted run with `nnx-train resume={args.run_id}`.")
    with tempfile.TemporaryDirectory() as folder:
        cfg = yaml.safe_load(open(client.download_artifacts(args.run_id, "config.yaml", folder)))
    cfg["tracking"] = {**cfg["tracking"], "uri": uri}
    tags = {"nnx.rerun_of": args.run_id, **{k: v for k, v in source.data.tags.items() if k in ("nnx.experiment", "nnx.overrides")}}
    try:
        job.run(cfg, name=f"rerun of {source.info.run_name}", tags=tags)
    except (ConfigError, DataError, tracking.TrackingError, job.Diverged) as err:
        sys.exit(f"nnx-rerun: error: {err}")
    experiment = source.info.experiment_id
    (rerun,) = client.search_runs([experiment], f"tags.`nnx.rerun_of` = '{args.run_id}'", order_by=["attributes.start_time DESC"], max_results=1)
    problems = compare(client, args.run_id, rerun.info.run_id)
    client.set_tag(rerun.info.run_id, "nnx.rerun_matches", str(not problems).lower())
    if problems:
        print(f"nnx-rerun: run {rerun.info.run_id} differs from {args.run_id}:\n  " + "\n  ".join(problems))
        sys.exit(1)
    print(f"nnx-rerun: run {rerun.info.run_id} matches {args.run_id}: {len(source.data.metrics)} metrics, every step identical")


if __name__ == "__main__":
    main()
