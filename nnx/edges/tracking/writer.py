"""Writing one run: its params, tags, metrics (sent by a writer thread, in batches), dataset
input, files, system metrics and end. A run's LoggedModel is nnx.edges.tracking.model."""

import importlib.util
import json
import queue
import tempfile
import threading
import time
from pathlib import Path

from nnx import records
from nnx.edges import liveness
from nnx.edges.tracking import model
from nnx.edges.tracking.env import redact
from nnx.edges.tracking.store import TrackingError, denied, retry

BATCH = 1000  # metrics per log_batch call: MLflow's limit
DIGEST_CHARS = 32  # MLflow keeps a dataset digest in 36 characters (a column of PostgreSQL's too): a sha256's first 32
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


def _tag_list(tags: dict) -> list:
    from mlflow.entities import RunTag

    return [RunTag(k, v) for k, v in tags.items()]


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
                            retry(self.client.log_batch, self.run_id, metrics=metrics[i : i + BATCH], tags=tags)
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
            run = retry(client.create_run, experiment_id, run_name=redact(name), tags=tags)
        except Exception as err:  # MlflowException
            if getattr(err, "error_code", None) == "PERMISSION_DENIED":
                raise denied(client.tracking_uri, f"write runs to experiment {experiment_id}") from None
            raise
        self = cls(client, run.info.run_id, experiment_id)
        items = [Param(k, redact(str(v))) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            retry(client.log_batch, self.run_id, params=items[i : i + 100])
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
        retry(self.client.log_artifacts, self.run_id, str(folder))

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
                return retry(self.client.log_inputs, self.run_id, datasets=[DatasetInput(dataset, inputs)])
            except Exception as err:  # MlflowException, RestException
                # MLflow looks the dataset up, then inserts it: parallel jobs meeting a new one on PostgreSQL
                # collide on its key ("dataset_pk"); tried again, the loser finds it and links it.
                if not any(s in str(err) for s in ("dataset_pk", "UNIQUE constraint failed: datasets")) or attempt == 2:
                    raise

    def log_model(self, params_file: Path, config: dict, metrics: dict, step: int, params: dict) -> str:
        """The trained network as this run's MLflow 3 LoggedModel: nnx.edges.tracking.model.log_model."""
        return model.log_model(self, params_file, config, metrics, step, params)

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
        retry(self.client.update_run, self.run_id, status="RUNNING")

    def kill(self, reason: str):
        """Ends a run whose process is gone KILLED, saying why (nnx.killed_reason)."""
        self.set_tags({liveness.KILLED_REASON: reason})
        retry(self.client.set_terminated, self.run_id, "KILLED")

    def set_tags(self, tags: dict):
        for key, value in tags.items():
            retry(self.client.set_tag, self.run_id, key, redact(str(value))[:5000])

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
                self.set_tags({records.TAG_FAILURE: "tracking", records.TAG_ERROR: str(lost or self._failure())})
            retry(self.client.set_terminated, self.run_id, status)
