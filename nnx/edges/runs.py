"""nnx-runs: the runs left RUNNING by a process that died without a word, and their healing.

    nnx-runs                   # list them: RUNNING in the store, their process gone
    nnx-runs --mark            # end each KILLED, tagged nnx.killed_reason (why)
    nnx-runs --resume          # end each KILLED, then continue it from its last checkpoint in the same run
                               # (from its start if it died before its first checkpoint)

A run's process is gone when, on this host, its pid (tag nnx.pid) is gone or belongs to a process
started later; on another host, when its heartbeat (tag nnx.heartbeat, written with its metrics)
is older than 5 epochs' time (tag nnx.epoch_seconds), at least 300 s, or --stale-after seconds.
A sweep's parent run is closed once its children are: FINISHED when every one of them is.
"""

import argparse
import sys
import time

from nnx import records
from nnx.edges import devices, liveness, paths, tracking
from nnx.edges.resume import resume
from nnx.errors import UserError

CONTAINERS = (records.ROLE_SWEEP, records.ROLE_SEEDS)  # nnx.role of a run that only holds others (a sweep's parent, a seeds=[...] group)


def stale_runs(client, experiment_ids, stale_after=None) -> list:
    """[(run, why its process is gone)] of the RUNNING runs in these experiments, leaves first.

    A parent run logs nothing, so from another host its heartbeat is its children's newest: it is
    gone when no child still runs and none has beaten within the limit."""
    found, parents = [], []
    for run in tracking.find_runs(client, experiment_ids, status="RUNNING"):
        if run.data.tags.get(records.TAG_ROLE) not in CONTAINERS:
            reason = tracking.stale_reason(run, stale_after)
            if reason:
                found.append((run, reason))
            continue
        children = tracking.find_runs(client, [run.info.experiment_id], tags={"mlflow.parentRunId": run.info.run_id})
        if any(c.info.status == "RUNNING" and not tracking.stale_reason(c, stale_after) for c in children):
            continue
        beats = [float(t) for t in (c.data.tags.get(liveness.HEARTBEAT) for c in [run, *children]) if t]
        reason = tracking.stale_reason(run, stale_after, tags={**run.data.tags, liveness.HEARTBEAT: f"{max(beats, default=0):.0f}"})
        if reason:
            parents.append((run, reason))
    return found + parents


def _age(tags) -> str:
    age = liveness.heartbeat_age(tags, time.time())
    return "-" if age is None else f"{age:.0f} s"


def table(client, uri, stale, names) -> str:
    rows = [("run id", "experiment", "name", "host", "pid", "heartbeat", "last epoch", "checkpoint", "why")]
    for run, reason in stale:
        tags, leaf = run.data.tags, run.data.tags.get(records.TAG_ROLE) not in CONTAINERS
        rows.append((run.info.run_id, names[run.info.experiment_id], run.info.run_name or "", tags.get(liveness.HOST, "?"),
                     tags.get(liveness.PID, "?"), _age(tags), tags.get(liveness.LAST_EPOCH, "-") if leaf else "-",
                     ("yes" if tracking.has_checkpoint(client, uri, run.info.run_id) else "no") if leaf else "-", reason))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(f"{c!s:<{w}}" for c, w in zip(r, widths)) + "  " + r[-1] for r in rows)


def heal(client, uri, stale, names, *, resume_them: bool, stale_after=None) -> list[str]:
    """Ends every stale run KILLED (and, resume_them, continues each from its checkpoint, or its start),
    then closes the stale parents (tracking.end_sweep). Returns what could not be done."""
    problems = []
    leaves = [(r, why) for r, why in stale if r.data.tags.get(records.TAG_ROLE) not in CONTAINERS]
    for run, reason in leaves:
        run_id = run.info.run_id
        if not resume_them:
            tracking.Run(client, run_id).kill(reason)
            print(f"nnx-runs: run {run_id} marked KILLED: {reason}")
            continue
        cfg = {"uri": uri, "experiment": names[run.info.experiment_id], "stale_after": stale_after}
        try:
            resume(run_id, tracking_cfg=cfg)  # marks it KILLED with the reason first, then trains on
        except UserError as err:
            problems.append(f"run {run_id}: {err}")
    for run, reason in stale:
        if run.data.tags.get(records.TAG_ROLE) in CONTAINERS:
            tracking.Run(client, run.info.run_id).set_tags({liveness.KILLED_REASON: reason})
            status, rows = tracking.end_sweep(client, run.info.run_id)
            print(f"nnx-runs: parent run {run.info.run_id} ended {status}: {len(rows)} runs under it")
    return problems


def main(argv=None):
    parser = argparse.ArgumentParser(prog="nnx-runs", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--mark", action="store_true", help="end the stale runs KILLED, tagged nnx.killed_reason")
    action.add_argument("--resume", action="store_true", help="end them KILLED, then resume each from its last checkpoint")
    parser.add_argument("--experiment", help="only this MLflow experiment (default: all)")
    parser.add_argument("--stale-after", type=float, metavar="SECONDS",
                        help="heartbeat age after which a run on another host counts as gone (default: 5 epochs, at least 300 s)")
    parser.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI, else the embedded store)")
    args = parser.parse_args(argv)
    if args.stale_after is not None and args.stale_after <= 0:
        parser.error(f"--stale-after must be a positive number of seconds, not {args.stale_after:g}")

    uri = tracking.resolve_uri(args.tracking_uri)
    try:
        client = tracking.connect(uri)
        experiments = [e for e in tracking.retry(client.search_experiments) if e.name != "Default"]
    except Exception as err:  # TrackingError, or the store answered with an error
        sys.exit(f"nnx-runs: error: cannot read the tracking store {tracking.redact(uri)}: {err}")
    if args.experiment:
        chosen = [e for e in experiments if e.name == args.experiment]
        if not chosen:
            sys.exit(f"nnx-runs: error: no experiment {args.experiment!r} in {tracking.redact(uri)}; "
                     f"it holds: {', '.join(sorted(e.name for e in experiments)) or 'none'}")
        experiments = chosen
    names = {e.experiment_id: e.name for e in experiments}
    stale = stale_runs(client, list(names), args.stale_after) if names else []
    if not stale:
        print(f"nnx-runs: no stale runs in {tracking.redact(uri)}: every RUNNING run's process is alive")
        return
    print(table(client, uri, stale, names))
    if not (args.mark or args.resume):
        print(f"\n{len(stale)} stale runs. `nnx-runs --mark` ends them KILLED; `nnx-runs --resume` continues them "
              f"from their checkpoints in the same runs.")
        return
    devices.use_two_cpu_devices()
    paths.use_compilation_cache()
    problems = heal(client, uri, stale, names, resume_them=args.resume, stale_after=args.stale_after)
    if problems:
        sys.exit("nnx-runs: error: " + "\n  ".join(problems))


if __name__ == "__main__":
    main()
