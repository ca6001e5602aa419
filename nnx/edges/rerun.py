"""nnx-rerun RUN_ID: train a finished run again from its logged config and compare the metrics.

The new run is tagged nnx.rerun_of=RUN_ID. Where everything that decides the float bits is as the
run recorded it (nnx.numerics: its arithmetic's version, JAX and jaxlib, backend, device, CPU,
instruction set and XLA flags), every metric must match at every step, bit for bit. Where any differs, the
command names it and compares within float32 round-off as training carries it: each metric within
8 times the spread of twins trained from an initialization nudged by one unit in the last place,
plus 4 units in the last place (nnx.numerics.tolerances). It exits 1 if anything differs beyond that.
A run trained in one vmapped program with other seeds (tag nnx.batch_seeds) is trained again in
that batch, whose other runs are tagged nnx.rerun_of=RUN_ID too (each with its own nnx.seed).
"""

import argparse
import sys

import numpy as np

from nnx import numerics, records
from nnx.edges import devices, job, paths, tracking
from nnx.errors import UserError
from nnx.migrate import migrate
from nnx.spec import build


def compare(client, source_id: str, rerun_id: str, tolerances: dict | None = None) -> list[str]:
    """Every metric of the source run, step by step, against the rerun: bit for bit, or within
    tolerances (metric -> largest allowed difference) where given; returns the differences."""
    source, rerun = tracking.get_run(client, source_id), tracking.get_run(client, rerun_id)
    problems, values = [], ({}, {})
    for key in sorted(source.data.metrics):
        (steps_a, a, _), (steps_b, b, _) = tracking.metric_history(client, source_id, key), tracking.metric_history(client, rerun_id, key)
        if not np.array_equal(steps_a, steps_b):
            problems.append(f"{key}: steps differ ({len(a)} vs {len(b)} values)")
        elif tolerances is None and not np.array_equal(a, b, equal_nan=True):
            problems.append(f"{key}: values differ (largest difference {np.max(np.abs(a - b)):.3g})")
        values[0][key], values[1][key] = a, b
    if tolerances is not None:
        problems += numerics.beyond(*values, tolerances)
    missing = set(rerun.data.metrics) ^ set(source.data.metrics)
    problems += [f"{key}: logged by only one of the runs" for key in sorted(missing)]
    return problems


def rerun_tolerances(client, rerun_id: str, cfg: dict) -> dict:
    """nnx.numerics.tolerances around the rerun's own metrics, from its config's nudged twins."""
    spec = build(cfg)
    nominal = {key: tracking.metric_history(client, rerun_id, key)[1] for key in tracking.get_run(client, rerun_id).data.metrics}
    return numerics.spread_tolerances(spec, spec.load_data(), int(cfg["seed"]), nominal)


BIT_FOR_BIT, WITHIN = "bit for bit", "within float32 tolerance"


def judge(client, source, rerun_id: str, cfg: dict) -> tuple[list[str], str]:
    """(the differences, how they were judged): bit for bit where the numerics are the source's,
    else within tolerances, saying which numerics differ. Tags the rerun with the verdict."""
    changed = numerics.differences(source.data.tags, numerics.fingerprint())
    if changed:
        print(f"nnx-rerun: the numerics differ from the run's ({'; '.join(changed)}): bit-for-bit equality is not expected, so "
              f"each metric is compared within float32 round-off as training carries it ({numerics.SAFETY:g} times the spread of "
              f"{len(numerics.NUDGES)} twins nudged by one unit in the last place, plus {numerics.ULPS} units in the last place)", flush=True)
    problems = compare(client, source.info.run_id, rerun_id, rerun_tolerances(client, rerun_id, cfg) if changed else None)
    how = WITHIN if changed else BIT_FOR_BIT
    tracking.Run(client, rerun_id).set_tags({records.TAG_RERUN_MATCHES: str(not problems).lower(), records.TAG_RERUN_COMPARED: how})
    return problems, how


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
    cfg = migrate(tracking.read_config(client, args.run_id))  # recorded by the nnx it ran under
    cfg["tracking"] = {**cfg["tracking"], "uri": uri}
    batch = source.data.tags.get(job.BATCH_TAG)
    if batch:  # the same vmapped batch: the other seeds' runs are trained (and tagged) alongside
        cfg["seeds"] = [int(s) for s in batch.split(",")]
    kept = (records.TAG_EXPERIMENT, records.TAG_OVERRIDES)
    tags = {records.TAG_RERUN_OF: args.run_id, **{k: v for k, v in source.data.tags.items() if k in kept}}
    try:
        job.run(cfg, name=f"rerun of {source.info.run_name}", tags=tags)
    except UserError as err:
        sys.exit(f"nnx-rerun: error: {err}")
    (rerun,) = tracking.find_runs(client, [source.info.experiment_id], tags={records.TAG_RERUN_OF: args.run_id, records.TAG_SEED: str(cfg["seed"])},
                                  newest_first=True, max_results=1)
    problems, how = judge(client, source, rerun.info.run_id, cfg)
    if problems:
        print(f"nnx-rerun: run {rerun.info.run_id} differs from {args.run_id} ({how}):\n  " + "\n  ".join(problems))
        sys.exit(1)
    print(f"nnx-rerun: run {rerun.info.run_id} matches {args.run_id}: {len(source.data.metrics)} metrics, "
          + ("every step identical" if how == BIT_FOR_BIT else "every step within its float32 tolerance"))


if __name__ == "__main__":
    main()
