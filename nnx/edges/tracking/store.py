"""Where runs go: the tracking store, its experiment, and the login a shared server asks for.

The embedded store is a SQLite database plus an artifact folder, both under <project>/mlruns/,
addressed by absolute paths so that every Hydra job (whatever its working directory) and
`make ui` see one store. Every store call goes through retry, which SQLite's "database is
locked" needs when parallel jobs share one embedded store.
"""

import contextlib
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

from filelock import FileLock

from nnx.edges.paths import STORE
from nnx.edges.tracking.env import redact
from nnx.errors import UserError

# MLflow 3 opens new experiments in its GenAI view unless told this is model training.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


class TrackingError(UserError, RuntimeError):
    """The tracking store cannot be reached or used."""


def retry(call, *args, attempts=30, **kwargs):
    """Retries a store call that met SQLite's writer lock: parallel jobs on one embedded store
    take turns writing, and SQLite answers a busy turn with "database is locked"."""
    for attempt in range(attempts):
        try:
            return call(*args, **kwargs)
        except Exception as err:  # MlflowException or sqlalchemy's OperationalError
            if "database is locked" not in str(err) or attempt == attempts - 1:
                raise
            time.sleep(min(0.05 * 2**attempt, 2.0))


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


def denied(uri: str, what: str) -> TrackingError:
    """The error for a server's 403 on `what` (creating an experiment, writing runs): whom to ask."""
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
                raise denied(uri, f"create the experiment {name!r}") from None
            # Another job (no file lock reaches a server's clients) created it a moment ago.
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
            return client, experiment.experiment_id


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
