"""The only module that talks to MLflow: where runs go, what they record, how they end.

The embedded store is a SQLite database plus an artifact folder, both under <project>/mlruns/,
addressed by absolute paths so that every Hydra job (whatever its working directory) and
`make ui` see one store. Everything else in nnx and experiments/ reads and writes runs through
the verbs here (find_runs, metric_history, read_config, end_sweep, Run ...); every write goes
through the retry that SQLite's "database is locked" needs.
"""

import contextlib
import importlib.util
import json
import os
import queue
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from importlib import metadata
from pathlib import Path

import numpy as np
import yaml
from filelock import FileLock

from nnx.edges import liveness
from nnx.edges.paths import ROOT, STORE
from nnx.errors import UserError

# MLflow 3 opens new experiments in its GenAI view unless told this is model training.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
PACKAGES = ("jax", "jaxlib", "optax", "hydra-core", "mlflow", "numpy")


class TrackingError(UserError, RuntimeError):
    """The tracking store cannot be reached or used."""


def resolve_uri(uri: str | None) -> str:
    """tracking.uri if set, else $MLFLOW_TRACKING_URI, else the embedded store under mlruns/."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{STORE / 'mlflow.db'}"


def _local_store(uri: str) -> Path | None:
    """The folder of a local SQLite store (its lock and artifacts live there), else None."""
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).parent
    return None


def checkpoint_path(uri: str, run_id: str) -> Path:
    """Where a run's latest checkpoint is written during training: beside a local store, else
    under this project's mlruns/ (it is also logged as the artifact checkpoint/last.npz)."""
    return (_local_store(uri) or STORE) / "checkpoints" / run_id / "last.npz"


def check_uri(uri: str | None):
    """A tracking URI may not carry a password (http://user:password@host): Hydra records
    tracking.uri in each job's .hydra/ folder and nnx in each run's config, and both are read by
    more people than the password should be. MLflow takes it from the environment instead."""
    from urllib.parse import urlsplit

    if uri and urlsplit(uri).password is not None:
        raise TrackingError(
            f"the tracking URI {redact(uri)} holds a password: it would be recorded in Hydra's output folder and in the "
            f"run. Give the URI without it, and the login as MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or "
            f"as `machine HOST login USER password PASSWORD` in ~/.netrc (or the file $NETRC names).")


def _check_reachable(uri: str, timeout: float = 10.0):
    check_uri(uri)
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
            response.read()
    except (urllib.error.URLError, OSError) as err:
        raise TrackingError(
            f"the MLflow tracking server at {uri} is not reachable ({err}). Start it (`make server`, or `mlflow server "
            f"--host 127.0.0.1 --port 5000`), fix tracking.uri / MLFLOW_TRACKING_URI, or drop them to use "
            f"the embedded store under {STORE}."
        ) from None


def _login_hint(uri: str) -> str:
    from urllib.parse import urlsplit

    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    given = (f"user {user!r} from MLFLOW_TRACKING_USERNAME" if user else
             f"no MLFLOW_TRACKING_USERNAME, so whatever ~/.netrc (or $NETRC) holds for {urlsplit(uri).hostname}, if anything")
    return (f"It was given {given}. Set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or a `machine HOST login "
            f"USER password PASSWORD` line in ~/.netrc) to a login the server's admin created for you")


def _check_login(client, uri: str):
    """/health answers everyone, even with logins on: a call that needs one tells, before any
    training, whether this process's credentials are accepted."""
    from mlflow.exceptions import MlflowException

    if not uri.startswith(("http://", "https://")):
        return
    try:
        client.search_experiments(max_results=1)
    except MlflowException as err:
        if err.error_code == "UNAUTHENTICATED":
            raise TrackingError(f"the MLflow tracking server at {uri} refused the login (401 Unauthorized). "
                                f"{_login_hint(uri)} (README: 'A shared tracking server').") from None
        raise


def _denied(err, uri: str, what: str) -> TrackingError:
    user = os.environ.get("MLFLOW_TRACKING_USERNAME") or "this login"
    return TrackingError(f"the MLflow tracking server at {uri} does not let {user} {what} (403 permission denied). "
                         f"Ask its admin for EDIT on the experiment (MLflow's permissions API; README: 'A shared tracking "
                         f"server'), or write to another experiment with tracking.experiment=NAME.")


def open_experiment(uri: str, name: str):
    """Returns (client, experiment_id), creating the store and the experiment if needed.

    Parallel jobs that meet a new SQLite file at once collide on its schema creation ("database
    is locked"), so the first touch of a local store is serialised by a file lock beside it.
    """
    import mlflow  # imported here: it is slow, and only runs that track need it

    _check_reachable(uri)
    local = _local_store(uri)
    lock = FileLock(local / ".nnx.lock") if local else contextlib.nullcontext()
    if local:
        local.mkdir(parents=True, exist_ok=True)
    with lock:
        try:
            client = mlflow.MlflowClient(tracking_uri=uri)
            _check_login(client, uri)
            experiment = client.get_experiment_by_name(name)
        except Exception as err:
            if not local or isinstance(err, TrackingError):
                raise
            why = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise TrackingError(
                f"the MLflow store {uri} cannot be opened ({why}): its database is damaged or not MLflow's. Nothing "
                f"was recorded. Move it aside (e.g. mv {local} {local}.damaged) to start a new store there, or point "
                f"tracking.uri (or MLFLOW_TRACKING_URI) at another one.") from err
        if experiment is not None:
            return client, experiment.experiment_id
        artifacts = (local / "artifacts" / name).as_uri() if local else None
        try:
            return client, client.create_experiment(name, artifact_location=artifacts, tags=EXPERIMENT_KIND)
        except mlflow.exceptions.MlflowException as err:
            if err.error_code == "PERMISSION_DENIED":
                raise _denied(err, uri, f"create the experiment {name!r}") from None
            # Another job (no file lock reaches a server's clients) created it a moment ago.
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
            return client, experiment.experiment_id


SYSTEM_INTERVAL = 1.0  # seconds between system metric samples: most runs here take seconds, not minutes


def check_system_metrics():
    """Raises TrackingError unless MLflow's system metrics can run: they read the machine through psutil,
    which nnx does not depend on."""
    if importlib.util.find_spec("psutil") is None:
        raise TrackingError(
            "tracking.system_metrics=true needs the psutil package (MLflow reads CPU and memory through it), and it is "
            "not installed in this environment. Install it (`.venv/bin/pip install psutil`), or leave "
            "tracking.system_metrics=false."
        )


def environment_tags() -> dict:
    """Git commit and dirty flag, package versions, and what decides the float bits (nnx.numerics:
    backend, device, CPU and instruction set, the arithmetic's version)."""
    from nnx import numerics

    def git(*args):
        try:
            out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD") or "unknown"
    status = git("status", "--porcelain", "--untracked-files=no")
    tags = {
        "mlflow.source.git.commit": commit,
        "nnx.git_commit": commit,
        "nnx.git_dirty": "unknown" if status is None else str(bool(status)).lower(),
        "nnx.version.python": sys.version.split()[0],
        **numerics.fingerprint(),  # what decides the run's float bits: nnx-rerun reads them
    }
    for package in PACKAGES:
        tags[f"nnx.version.{package}"] = metadata.version(package)
    return tags


def redact(value: str) -> str:
    """What a run records holds no URL credentials and no home directory: user:password@ in a
    URL becomes ***@, and /home/<user>/ (or /root/) becomes ~/."""
    value = re.sub(r"([a-zA-Z][\w+.-]*://)[^/@\s]+@", r"\1***@", value)
    return value.replace(str(Path.home()).rstrip("/") + "/", "~/")


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"model": {"depth": 2}} -> {"model.depth": "2"}: MLflow params are flat strings."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat


def connect(uri: str):
    """A client of an existing store, for reading runs back (nothing is created)."""
    import mlflow

    _check_reachable(uri)
    client = mlflow.MlflowClient(tracking_uri=uri)
    _check_login(client, uri)
    return client


def experiment_id(client, name: str) -> str | None:
    found = client.get_experiment_by_name(name)
    return None if found is None else found.experiment_id


def _filter(tags: dict | None, status: str | None) -> str:
    clauses = [f"tags.`{key}` = '{value}'" for key, value in (tags or {}).items()]
    if status:
        clauses.append(f"attributes.status = '{status}'")
    return " and ".join(clauses)


UI = "http://127.0.0.1:5000"  # where `make ui` serves the embedded store


def ui_links(client, base: str = UI) -> dict:
    """{experiment name: the MLflow UI page of its runs}, each in the UI's Model training view.

    MLflow 3.17's UI opens an experiment in its GenAI view (traces, prompts, an assistant) unless
    the URL asks for the training one: the sidebar's toggle lives in the browser's localStorage,
    whatever the experiment's mlflow.experimentKind tag says (MLflow issue #24498); `make ui` also
    sets that default for a fresh browser (nnx.edges.ui). Where share_runs_views has stored the
    experiment's view, the link opens it: the swept params and best_val_accuracy as columns.
    """
    experiments = _retry(client.search_experiments)
    links = {}
    for e in sorted(experiments, key=lambda e: e.name):
        if e.name != "Default":
            shared = f"&{SHARE_PARAM}={RUNS_VIEW}" if f"{SHARE_TAG}{RUNS_VIEW}" in e.tags else ""
            links[e.name] = f"{redact(base.rstrip('/'))}/#/experiments/{e.experiment_id}/runs?workflowType=machine_learning{shared}"
    return links


# MLflow 3.17's UI "Share" keeps a view of the runs table (its columns, sort, filters) as the
# experiment tag mlflow.sharedViewState.<key> and opens it from ?viewStateShareKey=<key>.
SHARE_TAG, SHARE_PARAM, RUNS_VIEW = "mlflow.sharedViewState.", "viewStateShareKey", "nnx-runs"
UI_DEFAULT_COLUMNS = ["attributes.`Source`", "attributes.`Models`", "attributes.`Dataset`"]  # the UI's own defaults
BEST = "best_val_accuracy"


DERIVED = ("model.layers", "model.sizes", "model.num_params")  # nnx logs these from the swept ones


def runs_view(runs, most: int = 8) -> dict | None:
    """The shared view state of a runs table whose columns are what a sweep swept (the params whose
    values differ between these runs, by name; of params equal run by run, the shortest name, so
    `depth` and not also `model.depth`; at most `most`) and best_val_accuracy; None if nothing
    differs and no run has best_val_accuracy. Unsorted: sorting by a metric flattens each sweep's
    parent and children into one list, and a column header's click sorts anyway."""
    columns = {}
    for key in sorted({key for run in runs for key in run.data.params} - set(DERIVED), key=lambda k: (len(k), k)):
        values = tuple(run.data.params.get(key) for run in runs)
        if len(set(values) - {None}) > 1:
            columns.setdefault(values, key)
    swept = sorted(columns.values())[:most]
    best = any(BEST in run.data.metrics for run in runs)
    if not swept and not best:
        return None
    return {"selectedColumns": UI_DEFAULT_COLUMNS + [f"params.`{key}`" for key in swept] + ([f"metrics.`{BEST}`"] if best else [])}


def share_runs_views(client, max_runs: int = 5000):
    """Stores each experiment's runs_view (of its latest max_runs runs) as the shared view ui_links opens."""
    for e in _retry(client.search_experiments):
        view = runs_view(find_runs(client, [e.experiment_id], newest_first=True, max_results=max_runs))
        value = json.dumps(view, sort_keys=True) if view else None
        if value and e.tags.get(f"{SHARE_TAG}{RUNS_VIEW}") != value:
            _retry(client.set_experiment_tag, e.experiment_id, f"{SHARE_TAG}{RUNS_VIEW}", value)


def find_runs(client, experiment_ids, *, tags: dict | None = None, status: str | None = None,
              newest_first: bool = False, max_results: int = 50_000) -> list:
    """Runs whose tags equal `tags` (e.g. {"mlflow.parentRunId": id}), in `status` if given."""
    order = ["attributes.start_time DESC"] if newest_first else None
    return _retry(client.search_runs, list(experiment_ids), _filter(tags, status), order_by=order, max_results=max_results)


def get_run(client, run_id: str):
    """The run, or None if the store has no run of that id."""
    try:
        return client.get_run(run_id)
    except Exception:  # MlflowException: RESOURCE_DOES_NOT_EXIST
        return None


def metric_history(client, run_id: str, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(steps, values, timestamps in ms) of one metric, ordered by step."""
    points = sorted(_retry(client.get_metric_history, run_id, key), key=lambda m: m.step)
    return (np.array([m.step for m in points], int), np.array([m.value for m in points], float),
            np.array([m.timestamp for m in points], np.int64))


def artifact_bytes(client, run_id: str, path: str) -> bytes | None:
    """One artifact's bytes, read without leaving files behind; None if the run has no such file."""
    with tempfile.TemporaryDirectory() as folder, _without_progress_bars():
        try:
            local = client.download_artifacts(run_id, path, folder)
        except Exception:  # MlflowException or OSError: no such artifact
            return None
        return Path(local).read_bytes()


def read_config(client, run_id: str) -> dict:
    """The resolved config a run logged first (config.yaml)."""
    raw = artifact_bytes(client, run_id, "config.yaml")
    if raw is None:
        raise TrackingError(f"run {run_id} has no config.yaml artifact: it was not started by nnx-train")
    return yaml.safe_load(raw)


def stale_reason(run, stale_after: float | None = None, tags: dict | None = None) -> str | None:
    """Why a RUNNING run's process is gone, seen from this host now (liveness.why_stale), or None;
    tags: what to judge by instead of the run's own."""
    return liveness.why_stale(run.data.tags if tags is None else tags, now=time.time(), host=socket.gethostname(),
                              stale_after=stale_after)


def has_checkpoint(client, uri: str, run_id: str) -> bool:
    """Whether a run left a checkpoint: the file training writes, or the artifact a run that ended logged."""
    if checkpoint_path(uri, run_id).exists():
        return True
    try:
        return any(a.path == "checkpoint/last.npz" for a in _retry(client.list_artifacts, run_id, "checkpoint"))
    except Exception:  # MlflowException or OSError: no artifact folder
        return False


PREVIOUS_PARENT = "nnx.previous_parent"  # a relaunched sweep's child: the parent run it had before


def parent_tags(run, parent_run_id: str, sweep_id: str) -> dict:
    """The tags that move a run under a relaunched sweep's parent, remembering the one it leaves
    (end_sweep closes that one if its process is gone: a sweep killed with its jobs leaves its parent RUNNING)."""
    old = run.data.tags.get("mlflow.parentRunId")
    tags = {"mlflow.parentRunId": parent_run_id, "nnx.sweep_id": sweep_id}
    if old and old != parent_run_id:
        tags[PREVIOUS_PARENT] = old
    return tags


def join_parent(client, run, parent_run_id: str, sweep_id: str):
    Run(client, run.info.run_id).set_tags(parent_tags(run, parent_run_id, sweep_id))


def _close_dead_parent(client, run_id: str, by_sweep: str):
    run = get_run(client, run_id)
    if run is None or run.info.status != "RUNNING":
        return
    reason = stale_reason(run)
    if reason is None:
        return  # its sweep still runs
    Run(client, run_id).set_tags({liveness.KILLED_REASON: f"{reason}; its runs were finished by sweep {by_sweep}"})
    if find_runs(client, [run.info.experiment_id], tags={"mlflow.parentRunId": run_id}, max_results=1):
        end_sweep(client, run_id)
    else:
        _retry(client.set_terminated, run_id, "KILLED")


def end_sweep(client, parent_run_id: str, failed_ok: bool = False) -> tuple[str, list]:
    """Ends a sweep's parent run; children still RUNNING lost their worker and end KILLED.

    The parent is FINISHED if every child finished (or, failed_ok, none was killed: a search's
    diverged trials are among its results), KILLED if any was killed, else FAILED.
    Returns (the parent's status, [(child name, status, best_val_accuracy or None)] sorted by name).
    """
    parent = _retry(client.get_run, parent_run_id)
    children = find_runs(client, [parent.info.experiment_id], tags={"mlflow.parentRunId": parent_run_id})
    statuses = []
    for child in children:
        if child.info.status == "RUNNING":
            Run(client, child.info.run_id).set_tags({"nnx.error": "the sweep ended before this job did"})
            Run(client, child.info.run_id).kill(stale_reason(child) or "the sweep ended before this job did")
        statuses.append("KILLED" if child.info.status == "RUNNING" else child.info.status)
    Run(client, parent_run_id).set_tags({"nnx.children": json.dumps({s: statuses.count(s) for s in sorted(set(statuses))})})
    for old in {c.data.tags.get(PREVIOUS_PARENT) for c in children} - {None, parent_run_id}:
        _close_dead_parent(client, old, parent.data.tags.get("nnx.sweep_id", parent_run_id))
    finished = {"FINISHED", "FAILED"} if failed_ok else {"FINISHED"}
    status = "FINISHED" if statuses and set(statuses) <= finished else "KILLED" if "KILLED" in statuses else "FAILED"
    _retry(client.set_terminated, parent_run_id, status)
    rows = sorted((c.info.run_name, s, c.data.metrics.get("best_val_accuracy")) for c, s in zip(children, statuses))
    return status, rows


def _tag_list(tags: dict) -> list:
    from mlflow.entities import RunTag

    return [RunTag(k, v) for k, v in tags.items()]


def _retry(call, *args, attempts=30, **kwargs):
    """Retries a store call that met SQLite's writer lock: parallel jobs on one embedded store
    take turns writing, and SQLite answers a busy turn with "database is locked"."""
    for attempt in range(attempts):
        try:
            return call(*args, **kwargs)
        except Exception as err:  # MlflowException or sqlalchemy's OperationalError
            if "database is locked" not in str(err) or attempt == attempts - 1:
                raise
            time.sleep(min(0.05 * 2**attempt, 2.0))


BATCH = 1000  # metrics per log_batch call: MLflow's limit
DIGEST_CHARS = 32  # MLflow keeps a dataset digest in 36 characters (a column of PostgreSQL's too): a sha256's first 32
MODEL_NAME = "network"  # each run's LoggedModel; the Models tab tells them apart by source run
MODEL_PACKAGES = ("jax", "jaxlib", "optax", "numpy", "cloudpickle")  # what a logged model needs besides mlflow


def model_requirements() -> list[str]:
    return [f"{p}=={metadata.version(p)}" for p in MODEL_PACKAGES]


_WARMED = threading.Event()


def warm_model_logging():
    """Pays, in a daemon thread while the process trains, what Run.log_model would pay after it:
    importing MLflow's model code, and MLflow's check of the model's requirements against every
    installed package's metadata (~0.6 s of a ~10 s command, cached for the process). Once per process."""
    if _WARMED.is_set():
        return
    _WARMED.set()

    def warm():
        try:
            import mlflow.pyfunc  # noqa: F401
            from mlflow.utils.requirements_utils import warn_dependency_requirement_mismatches

            warn_dependency_requirement_mismatches(model_requirements())
        except Exception:  # only a head start: log_model does it all again, and reports its own errors
            pass

    threading.Thread(target=warm, name="nnx-warm-model", daemon=True).start()


@contextlib.contextmanager
def _without_progress_bars():
    """MLflow draws a progress bar for every file it copies (a model's, or one artifact read back)."""
    bar = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        yield
    finally:
        if bar is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = bar


@contextlib.contextmanager
def _quiet_model_saving():
    """Without MLflow's progress bars (one per file copied into a model) and its advice, for models
    logged from code, to log from a file and with an input example: nnx's pickle is a class reference
    into the nnx code the model carries, and an example would cost a load and predict per run."""
    import logging
    import warnings

    log = logging.getLogger("mlflow.pyfunc")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with _without_progress_bars(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*input example was not provided")
            yield
    finally:
        log.setLevel(level)


def http_retry_wait() -> float:
    """Seconds MLflow's REST client sleeps across its retries of one request before it gives up
    on a server that refuses connections (a restart) or answers 429/5xx: urllib3's backoff, 0 then
    factor * 2**k capped at 120 s, over MLFLOW_HTTP_REQUEST_MAX_RETRIES retries (7 and factor 2
    by default: 0+4+8+16+32+64+120 = 244 s, plus up to 1 s of jitter each). A server that accepts
    but never answers costs MLFLOW_HTTP_REQUEST_TIMEOUT (120 s) per attempt on top."""
    from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR, MLFLOW_HTTP_REQUEST_MAX_RETRIES

    retries, factor = MLFLOW_HTTP_REQUEST_MAX_RETRIES.get(), MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR.get()
    return float(sum(min(factor * 2 ** (k - 1), 120) for k in range(2, retries + 1)))


def _steps(metrics) -> str:
    steps = sorted({m.step for m in metrics})
    return f"{steps[0]}" if len(steps) == 1 else f"{steps[0]}-{steps[-1]}" if steps == list(range(steps[0], steps[-1] + 1)) else str(steps)


class Run:
    """One MLflow run: metrics are sent by a writer thread, so training does not wait on the store
    (flushed before the run ends), in batches of whatever has queued up, never one call per value.
    Each batch also carries the run's heartbeat tags (liveness): no store call of their own.

    A server that goes away (a restart) is waited out by MLflow's own retries of each request
    (http_retry_wait: ~4 minutes by default); meanwhile training goes on and its metrics queue up.
    If a batch still fails, nothing is dropped silently: the values not written are counted, the
    next log_metrics stops training, and the run ends FAILED with tags saying which epochs were lost.
    """

    def __init__(self, client, run_id: str, experiment_id: str | None = None):
        self.client, self.run_id, self.experiment_id = client, run_id, experiment_id  # experiment_id: None, ask the store
        self._queue, self._writer, self._error, self._lost, self._raised = queue.Queue(), None, None, [], False
        self._system = None  # MLflow's system metrics monitor (watch_system)
        self._last_logged, self._save_error = None, None

    def _write(self):
        while True:
            # Everything queued goes in as few calls as it fits: a call costs ~0.5 ms plus ~0.1 ms a
            # value on SQLite, so 500 epochs of 9 gradient norms took 2.2 s one epoch a call, 0.44 s so.
            items = [self._queue.get()]
            while items[-1] is not None and sum(len(i[1]) for i in items if i[0] == "metrics") < BATCH:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            metrics = [m for item in items if item is not None and item[0] == "metrics" for m in item[1]]
            beats = [item[2] for item in items if item is not None and item[0] == "metrics" and item[2]]
            saves = [item[1] for item in items if item is not None and item[0] == "save"]
            try:
                for i in range(0, len(metrics), BATCH):
                    if self._error is None:
                        try:
                            tags = _tag_list({k: v for beat in beats for k, v in beat.items()}) if i == 0 else []
                            _retry(self.client.log_batch, self.run_id, metrics=metrics[i : i + BATCH], tags=tags)
                            continue
                        except Exception as err:  # surfaced by log_metrics or flush, in the training thread
                            self._error = err
                    self._lost.extend(metrics[i : i + BATCH])
                if saves and self._error is None:
                    try:
                        saves[-1]()  # only the newest checkpoint matters; its epoch's metrics are in the store now
                    except Exception as err:  # a full disk, say: raised by flush, in the training thread
                        self._save_error = err
            finally:
                for _ in items:
                    self._queue.task_done()
            if items[-1] is None:
                return

    def _put(self, item):
        if self._writer is None:
            self._writer = threading.Thread(target=self._write, daemon=True, name=f"mlflow-{self.run_id[:8]}")
            self._writer.start()
        self._queue.put(item)

    def save_after_logged(self, save):
        """Runs save() (a checkpoint's write) in the writer once every metric queued before it is in
        the store, so a process killed at any moment never leaves a checkpoint ahead of its metrics:
        a resume from it logs no step twice and misses none. A newer save waiting in the same batch
        supersedes an older one."""
        self._put(("save", save))

    def drain(self):
        """Waits until everything queued is written (or failed: flush and end raise that)."""
        if self._writer is not None:
            self._queue.join()

    def _failure(self) -> TrackingError:
        self._raised = True
        return TrackingError(
            f"{len(self._lost)} metric values of epoch(s) {_steps(self._lost)} of run {self.run_id} were not written to "
            f"{redact(self.client.tracking_uri)}: {self._error}. (MLflow retries a request to a server that is down or answers "
            f"429/5xx for about {http_retry_wait():.0f} s; MLFLOW_HTTP_REQUEST_MAX_RETRIES, at most 10, and "
            f"MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR make that wait longer.)")

    def flush(self):
        """Waits until every queued metric is in the store; raises TrackingError naming what was
        lost if the writer could not write something (once: log_metrics may have raised it first)."""
        self.drain()
        if self._save_error is not None:
            error, self._save_error = self._save_error, None
            raise error
        if self._error is not None and not self._raised:
            raise self._failure()

    @classmethod
    def start(cls, client, experiment_id, *, name, params, tags, parent_run_id=None):
        from mlflow.entities import Param

        tags = {k: redact(str(v)) for k, v in {**liveness.here(), **tags}.items()}
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        try:
            run = _retry(client.create_run, experiment_id, run_name=redact(name), tags=tags)
        except Exception as err:  # MlflowException
            if getattr(err, "error_code", None) == "PERMISSION_DENIED":
                raise _denied(err, client.tracking_uri, f"write runs to experiment {experiment_id}") from None
            raise
        self = cls(client, run.info.run_id, experiment_id)
        items = [Param(k, redact(str(v))) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            _retry(client.log_batch, self.run_id, params=items[i : i + 100])
        return self

    def log_metrics(self, step: int, values: dict):
        from mlflow.entities import Metric

        now = time.time()
        metrics = [Metric(k, float(v), int(now * 1000), step) for k, v in values.items()]
        if self._error is not None and not self._raised:  # no use training on when its numbers are not kept
            self._lost.extend(metrics)
            raise self._failure()
        beat = {liveness.HEARTBEAT: f"{now:.0f}", liveness.LAST_EPOCH: str(step)}
        if self._last_logged is not None:  # the time between two epochs' values: one epoch's duration
            beat[liveness.EPOCH_SECONDS] = f"{now - self._last_logged:.3g}"
        self._last_logged = now
        self._put(("metrics", metrics, beat))

    def log_artifacts(self, folder: Path):
        _retry(self.client.log_artifacts, self.run_id, str(folder))

    def log_files(self, files: dict):
        """files: {artifact path: writer(local_path)}; written to a temporary folder, then logged."""
        with tempfile.TemporaryDirectory() as folder:
            for name, write in files.items():
                local = Path(folder) / name
                local.parent.mkdir(parents=True, exist_ok=True)
                write(local)
            self.log_artifacts(Path(folder))

    def log_dataset(self, name: str, sha256: str, source: str, tags: dict):
        """The data the run trains on, as an MLflow dataset input in context "training" (the runs
        table's Dataset column): its name, its sha256's first DIGEST_CHARS hex digits as digest, its
        file as source, `tags` on the input. Metadata only: MLflow never sees the arrays, so it
        computes no schema or profile (mlflow.data.from_numpy would hash and profile 157 MB)."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        dataset = Dataset(name=name, digest=sha256[:DIGEST_CHARS], source_type="local", source=json.dumps({"uri": redact(source)}))
        inputs = [InputTag("mlflow.data.context", "training"), *(InputTag(k, redact(str(v))) for k, v in tags.items())]
        for attempt in range(3):
            try:
                return _retry(self.client.log_inputs, self.run_id, datasets=[DatasetInput(dataset, inputs)])
            except Exception as err:  # MlflowException, RestException
                # MLflow looks the dataset up, then inserts it: parallel jobs meeting a new one on PostgreSQL
                # collide on its key ("dataset_pk"); tried again, the loser finds it and links it.
                if not any(s in str(err) for s in ("dataset_pk", "UNIQUE constraint failed: datasets")) or attempt == 2:
                    raise

    def log_model(self, params_file: Path, config: dict, metrics: dict, step: int, params: dict) -> str:
        """The trained network as an MLflow 3 LoggedModel (the experiment's Models tab): a pyfunc
        (nnx.edges.classifier) over params_file and `config`, carrying nnx's code, an output of
        this run at `step`, with `metrics` logged to the run at `step` and linked to the model.
        Returns the model's id: mlflow.pyfunc.load_model(f"models:/{id}") classifies images.

        Built by hand rather than by mlflow.pyfunc.log_model, which needs the fluent API's global
        tracking URI and reads back every metric's whole history to link the ones at `step`."""
        import mlflow.pyfunc
        from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric
        from mlflow.models import Model, ModelSignature
        from mlflow.types import Schema, TensorSpec

        import nnx
        from nnx.edges.classifier import Classifier

        experiment_id = self.experiment_id or _retry(self.client.get_run, self.run_id).info.experiment_id
        model = _retry(self.client.create_logged_model, experiment_id, name=MODEL_NAME, source_run_id=self.run_id,
                       params={k: redact(str(v)) for k, v in params.items()}, model_type="nnx classifier")
        try:
            with tempfile.TemporaryDirectory() as folder, _quiet_model_saving():
                (Path(folder) / "config.json").write_text(redact(json.dumps(config)))
                # Unnamed tensors: predict takes and returns bare arrays (a named input arrives as a dict).
                signature = ModelSignature(Schema([TensorSpec(np.dtype(np.float32), (-1, 784))]),
                                           Schema([TensorSpec(np.dtype(np.int64), (-1,))]))
                mlflow.pyfunc.save_model(
                    Path(folder) / "model", python_model=Classifier(), signature=signature,
                    artifacts={"params": str(params_file), "config": str(Path(folder) / "config.json")},
                    # Its own copy of nnx: the model loads wherever jax and optax do, whatever nnx is there.
                    code_paths=[str(Path(nnx.__file__).parent)],
                    # Given, not inferred: inference imports the model and can query a package index.
                    pip_requirements=model_requirements(),
                    mlflow_model=Model(artifact_path=model.artifact_location, model_uuid=model.model_id, run_id=self.run_id,
                                       model_id=model.model_id))
                _retry(self.client.log_model_artifacts, model.model_id, str(Path(folder) / "model"))
        except BaseException:
            _retry(self.client.finalize_logged_model, model.model_id, LoggedModelStatus.FAILED)
            raise
        _retry(self.client.finalize_logged_model, model.model_id, LoggedModelStatus.READY)
        _retry(self.client.log_outputs, self.run_id, [LoggedModelOutput(model.model_id, step)])
        now = int(time.time() * 1000)
        self.flush()
        _retry(self.client.log_batch, self.run_id,
               metrics=[Metric(k, float(v), now, step, model_id=model.model_id) for k, v in metrics.items()])
        return model.model_id

    def watch_system(self, uri: str):
        """MLflow's system metrics (CPU, memory, disk, network; GPUs where present) as metrics
        system/..., sampled every SYSTEM_INTERVAL seconds ($MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL wins)
        until the run ends. Call check_system_metrics() before any run starts."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self._system = SystemMetricsMonitor(self.run_id, sampling_interval=SYSTEM_INTERVAL, tracking_uri=uri)
        self._system.start()

    def reopen(self):
        """Marks an ended run RUNNING again (a resume trains on in the same run), in this process."""
        self.set_tags(liveness.here())
        _retry(self.client.update_run, self.run_id, status="RUNNING")

    def kill(self, reason: str):
        """Ends a run whose process is gone KILLED, saying why (nnx.killed_reason)."""
        self.set_tags({liveness.KILLED_REASON: reason})
        _retry(self.client.set_terminated, self.run_id, "KILLED")

    def set_tags(self, tags: dict):
        for key, value in tags.items():
            _retry(self.client.set_tag, self.run_id, key, redact(str(value))[:5000])

    def end(self, status: str):
        """Ends the run in status once its metrics are written; FAILED, tagged nnx.failure=tracking
        and nnx.error, if some were lost (and raises TrackingError saying which)."""
        lost = None
        try:
            if self._system is not None:
                self._system.finish()  # its last samples go in before the run ends
                self._system = None
            self.flush()
        except TrackingError as err:
            lost = err
            raise
        finally:
            if self._writer is not None:
                self._queue.put(None)
                self._writer = None
            if self._error is not None:
                status = "FAILED"
                self.set_tags({"nnx.failure": "tracking", "nnx.error": str(lost or self._failure())})
            _retry(self.client.set_terminated, self.run_id, status)
