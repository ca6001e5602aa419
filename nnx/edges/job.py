"""One nnx-train job: a resolved config in, ended MLflow runs out.

No Hydra here: nnx-train (through nnx.edges.cli) and nnx-rerun go through run(). The job starts
the run of one seed, or of several trained at once (fit_many), each identified by its config; a run
of the same config FINISHED before is skipped, one left KILLED or RUNNING by a dead process is
resumed (nnx.edges.resume). nnx.edges.lifecycle trains the runs, writes a checkpoint after each
epoch, and ends each FINISHED, FAILED (an error, or divergence) or KILLED (SIGINT/SIGTERM).
"""

import hashlib
import json
import threading
from pathlib import Path

import jax
import yaml

from nnx import choices, records
from nnx import data as nnx_data
from nnx.edges import backend, tracking
from nnx.edges.lifecycle import Member, model_params, train_and_end
from nnx.edges.resume import ResumeError, resume
from nnx.migrate import LATER, migrate
from nnx.model import describe
from nnx.spec import build

# Keys added after runs were identified by their config's hash: at their value in nnx.migrate.LATER
# ("as before") they are left out of the hash, so a relaunched sweep still finds (and skips) the runs
# stored before them. The other keys LATER holds stay in the hash, as they always have: leaving them
# out now would change the identity of every run stored since they came.
LATER_KEYS = {path: LATER[path] for path in [("train", "early_stopping_n"), ("data", "validation_size"), ("schedule",),
                                             ("train", "eval_every"), ("device",), ("train", "matmul_precision"), ("model", "conv_impl")]}


def config_hash(cfg: dict) -> str:
    """What makes two jobs the same: the config less where it is recorded and how it is resumed."""
    kept = {k: dict(v) if isinstance(v, dict) else v for k, v in cfg.items() if k not in ("tracking", "resume")}
    for path, default in LATER_KEYS.items():
        *parents, key = path
        node = kept
        for parent in parents:
            node = node.get(parent) if isinstance(node, dict) else None
        if isinstance(node, dict) and key in node and node[key] == default:
            del node[key]
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def seed_config(cfg: dict, seed: int) -> dict:
    """The config of one seed's run: what a separate run of that seed would have used."""
    return {**cfg, "seed": seed, "seeds": None, "resume": None}


# A run trained in one vmapped program with other seeds: their list. Its numbers are those of that
# batch (a batched product sums in its own order), so nnx-rerun trains the same batch again.
BATCH_TAG = records.TAG_BATCH_SEEDS


def _start_member(client, experiment_id, uri, cfg, spec, seed, *, name, tags, parent, batch):
    cfg = seed_config(cfg, seed)
    tags = {**tags, records.TAG_CONFIG_HASH: config_hash(cfg), records.TAG_SEED: str(seed), **({BATCH_TAG: ",".join(map(str, batch))} if batch else {})}
    run = tracking.Run.start(client, experiment_id, name=name, params=model_params(cfg, spec), parent_run_id=parent, tags=tags)
    # Logged first: a killed or failed run keeps what it takes to resume or rerun it.
    run.log_files({"config.yaml": lambda p: p.write_text(tracking.redact(yaml.safe_dump(cfg, sort_keys=False)))})
    log_dataset(run, cfg["data"], spec)
    if cfg["tracking"]["system_metrics"]:
        run.watch_system(uri)
    if cfg["tracking"]["log_model"]:
        tracking.warm_model_logging()
    return Member(run, seed, cfg, tracking.checkpoint_path(uri, run.run_id))


def log_dataset(run, data_cfg: dict, spec):
    """The training set as the run's MLflow dataset input: named by data.name, digested by nnx.data.digest,
    sourced from the book's file; which images (split, data.train_size, their number) in the input's tags."""
    path, sha256 = spec.data_path or nnx_data.default_path(), nnx_data.digest(data_cfg["name"])
    run.log_dataset(data_cfg["name"], sha256, str(Path(path).expanduser().resolve()),
                    {records.TAG_SPLIT: "train", records.TAG_TRAIN_SIZE: "all" if data_cfg["train_size"] is None else data_cfg["train_size"],
                     records.TAG_IMAGES: spec.train_size, records.TAG_SHA256: sha256})


def _twin(client, experiment_id, cfg, preset, status="FINISHED"):
    """The newest run of the same preset with the same config in `status`: a FINISHED one is the job a
    relaunched sweep skips (_twin_to_heal finds the one it resumes). (Same preset only: two presets
    that happen to share a config each keep their own runs.)"""
    found = tracking.find_runs(client, [experiment_id], tags={records.TAG_CONFIG_HASH: config_hash(cfg), records.TAG_EXPERIMENT: preset},
                               status=status, newest_first=True, max_results=1)
    return found[0] if found else None


def _twin_to_heal(client, experiment_id, cfg, preset, *, killed_too, echo, look_only=False):
    """The run of the same preset and config that a repeated command continues instead of training
    a new one: one left RUNNING by a process that is gone (marked KILLED here, saying why, unless
    look_only) or, with killed_too (a relaunched sweep), one that ended KILLED. A RUNNING twin whose
    process lives (another command training it now) is left alone."""
    found = tracking.find_runs(client, [experiment_id], tags={records.TAG_CONFIG_HASH: config_hash(cfg), records.TAG_EXPERIMENT: preset},
                               newest_first=True, max_results=20)
    for twin in found:
        if twin.data.tags.get(records.TAG_RERUN_OF) or twin.info.status not in ("RUNNING", "KILLED"):
            continue
        if twin.info.status == "RUNNING":
            reason = tracking.stale_reason(twin, cfg["tracking"]["stale_after"])
            if reason is None:
                continue
            if look_only:
                return twin
            tracking.Run(client, twin.info.run_id).kill(reason)
            echo(f"nnx: run {twin.info.run_id} was left RUNNING: {reason}; marked KILLED")
        elif not killed_too:
            continue
        return twin
    return None


def run(cfg: dict, *, name: str, tags: dict, parent=None, skip_finished=False, heal=False, echo=print, progress=None,
        should_stop=None) -> dict:
    """Trains what `cfg` describes into MLflow and returns the first seed's summary.

    Args:
      cfg: the resolved config as a plain dict: what Hydra composes, or a run's config.yaml (given the
        keys added since it was recorded here, nnx.migrate).
      name: run name; a multi-seed job appends " seed=<s>" per run.
      tags: extra tags for every run (overrides, preset, rerun source ...).
      parent: None, or parent(client, experiment_id) -> (parent run id, sweep id) | None.
      skip_finished: seeds whose identical config already FINISHED are not run again; their runs
        join this sweep's parent instead, and those whose run ended KILLED are resumed into it.
      heal: a seed whose identical config was left RUNNING by a process that is gone is marked
        KILLED (tag nnx.killed_reason) and resumed from its checkpoint in the same run.
      echo: prints a line; progress(step, epochs, values): shows an epoch's numbers (default: a line).
      should_stop: should_stop(i, step, values) -> why the i-th seed's run stops after this epoch, or ""
        (a search's pruner); the run ends FINISHED with tags nnx.stopped and nnx.stopped_epoch.
    Raises:
      ConfigError, DataError, TrackingError, BackendError before any run exists; Diverged after ending the
      diverged run(s) FAILED; anything raised while training after ending the runs FAILED/KILLED.
    """
    cfg = migrate(cfg)
    spec = build(cfg)
    tags = {**backend.tags(spec.device, spec.matmul_precision), **choices.tags(spec), **tags}  # BackendError before any run exists
    with jax.default_device(backend.default_device(spec.device)):
        return _run(cfg, spec, name=name, tags=tags, parent=parent, skip_finished=skip_finished, heal=heal, echo=echo,
                    progress=progress, should_stop=should_stop)


def _run(cfg, spec, *, name, tags, parent, skip_finished, heal, echo, progress, should_stop) -> dict:
    """run() on the device the config chose."""
    data = spec.load_data()
    uri = tracking.resolve_uri(cfg["tracking"]["uri"])
    if cfg["tracking"]["system_metrics"]:
        tracking.check_system_metrics()
    seeds = list(spec.seeds or [spec.seed])
    if parent is None and uri.startswith("sqlite:"):
        # The embedded store: training starts at once, while a thread opens the store (importing MLflow
        # and its store is ~2 s of Python; training leaves a core and the GIL free) and starts the runs.
        # Their metrics wait until the runs exist; a run found to skip or resume abandons the training
        # for the path below.
        ahead = Ahead(lambda: _fresh_runs(cfg, spec, uri, seeds, name=name, tags=tags, skip_finished=skip_finished, heal=heal))
        try:
            return train_and_end(spec, data, None, None, echo, progress=progress, should_stop=should_stop, ahead=ahead)
        except NotFresh:
            pass
    client, experiment_id = tracking.open_experiment(uri, cfg["tracking"]["experiment"])
    tags = {**tracking.environment_tags(), **tags}
    found = parent(client, experiment_id) if parent else None
    parent_id = None
    if found:
        parent_id, tags[records.TAG_SWEEP_ID] = found
    preset = tags.get(records.TAG_EXPERIMENT, "none")
    twins = {s: _twin(client, experiment_id, seed_config(cfg, s), preset) for s in seeds} if skip_finished else {}
    for seed, twin in twins.items():
        if twin is not None:
            echo(f"nnx: seed {seed} skipped: the same config FINISHED as run {twin.info.run_id}")
            if parent_id:
                tracking.join_parent(client, twin, parent_id, tags[records.TAG_SWEEP_ID])
    seeds = [s for s in seeds if twins.get(s) is None]
    summaries = []
    for seed in list(seeds) if heal or skip_finished else []:
        twin = _twin_to_heal(client, experiment_id, seed_config(cfg, seed), preset, killed_too=skip_finished, echo=echo)
        if twin is None:
            continue
        # It goes on from its last checkpoint in its own run, as `nnx-train resume=RUN_ID` would.
        joined = tracking.parent_tags(twin, parent_id, tags[records.TAG_SWEEP_ID]) if parent_id else {}
        try:
            summaries.append(resume(twin.info.run_id, tracking_cfg=cfg["tracking"], echo=echo, progress=progress, tags=joined))
        except ResumeError as err:
            echo(f"nnx: seed {seed}: run {twin.info.run_id} cannot be resumed ({err}); training it anew")
            continue
        seeds.remove(seed)
    if not seeds:
        return summaries[0] if summaries else {k: v for k, v in next(iter(twins.values())).data.metrics.items()}
    members, group = _start_runs(client, experiment_id, uri, cfg, spec, seeds, name=name, tags=tags, parent_id=parent_id)
    for m in members:
        echo(_intro(m, name, spec, uri))
    return train_and_end(spec, data, members, group, echo, progress=progress, should_stop=should_stop)


def _start_runs(client, experiment_id, uri, cfg, spec, seeds, *, name, tags, parent_id):
    """(one Member per seed, their group run or None): several seeds outside a sweep get a parent of their own."""
    group = None
    if len(seeds) > 1 and parent_id is None:
        group = tracking.Run.start(client, experiment_id, name=f"{name} seeds={seeds}", params={},
                                   tags={**tags, records.TAG_ROLE: records.ROLE_SEEDS})
        parent_id = group.run_id
    members = [
        _start_member(client, experiment_id, uri, cfg, spec, s, name=name if len(seeds) == 1 else f"{name} seed={s}",
                      tags=tags, parent=parent_id, batch=seeds if len(seeds) > 1 else None)
        for s in seeds
    ]
    return members, group


def _intro(member, name, spec, uri) -> str:
    on = backend.default_device(spec.device)  # device=auto says what JAX found
    return (f"nnx: run {member.run.run_id} ({name}) seed={member.seed} {describe(spec.net)} on {on.platform} ({on.device_kind}, "
            f"device={spec.device}) in {tracking.redact(uri)}")


class NotFresh(Exception):
    """A job that Ahead started training finds, in the store, a run of its config to skip or resume."""


def _fresh_runs(cfg, spec, uri, seeds, *, name, tags, skip_finished, heal):
    """(members, group, their intro lines) of a job outside a sweep, opening the store; raises
    NotFresh, writing nothing, where run()'s own path would skip or resume a seed's run."""
    client, experiment_id = tracking.open_experiment(uri, cfg["tracking"]["experiment"])
    preset = tags.get(records.TAG_EXPERIMENT, "none")
    for seed in seeds:
        same = seed_config(cfg, seed)
        if (skip_finished and _twin(client, experiment_id, same, preset)) or ((heal or skip_finished) and _twin_to_heal(
                client, experiment_id, same, preset, killed_too=skip_finished, echo=None, look_only=True)):
            raise NotFresh(seed)
    tags = {**tracking.environment_tags(), **tags}
    members, group = _start_runs(client, experiment_id, uri, cfg, spec, seeds, name=name, tags=tags, parent_id=None)
    return members, group, [_intro(m, name, spec, uri) for m in members]


class Ahead:
    """(members, group, intro lines) being started by a thread while training runs; see run()."""

    def __init__(self, start):
        self._result, self._error = None, None
        self._thread = threading.Thread(target=self._start, args=(start,), name="nnx-open-store", daemon=True)
        self._thread.start()

    def _start(self, start):
        try:
            self._result = start()
        except BaseException as err:  # handed to the training thread, which raises it
            self._error = err

    def get(self, wait: bool):
        """(members, group, their intro lines), None while the thread works (unless wait); raises what the thread raised."""
        if not wait and self._thread.is_alive():
            return None
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._result


