"""The tracker: where runs go, what they record, how they end, and how they are read back.

Everything else in nnx and experiments/ reads and writes runs through the verbs here (find_runs,
metric_history, read_config, end_sweep, Run ...), as `from nnx.edges import tracking`; every
store call goes through retry, which SQLite's "database is locked" needs. One job a module:
  store    the store and its experiment: URIs, opening, logins, retry
  env      environment tags (commit, versions, float-bit fingerprint); redaction of what runs record
  reading  runs read back: by tag, metrics, artifacts, config, whether their process is gone
  parents  a sweep's parent run: children joining it, its end
  writer   Run: one run's params, tags, metrics (a writer thread), dataset, files and end
  model    a run's LoggedModel, and warming MLflow's model code while training runs
The UI's links and shared runs views are nnx.edges.ui's.
"""

from nnx.edges.tracking.env import PACKAGES, environment_tags, flatten, redact
from nnx.edges.tracking.model import MODEL_NAME, MODEL_PACKAGES, model_requirements, warm_model_logging
from nnx.edges.tracking.parents import PREVIOUS_PARENT, end_sweep, join_parent, parent_tags
from nnx.edges.tracking.reading import artifact_bytes, find_runs, get_run, has_checkpoint, metric_history, read_config, stale_reason
from nnx.edges.tracking.store import EXPERIMENT_KIND, TrackingError, check_uri, checkpoint_path, connect, experiment_id, open_experiment, resolve_uri, retry
from nnx.edges.tracking.writer import BATCH, DIGEST_CHARS, Run, check_system_metrics, http_retry_wait

__all__ = [
    "BATCH", "DIGEST_CHARS", "EXPERIMENT_KIND", "MODEL_NAME", "MODEL_PACKAGES", "PACKAGES", "PREVIOUS_PARENT", "Run",
    "TrackingError", "artifact_bytes", "check_system_metrics", "check_uri", "checkpoint_path", "connect", "end_sweep",
    "environment_tags", "experiment_id", "find_runs", "flatten", "get_run", "has_checkpoint", "http_retry_wait",
    "join_parent", "metric_history", "model_requirements", "open_experiment", "parent_tags", "read_config", "redact",
    "resolve_uri", "retry", "stale_reason", "warm_model_logging",
]
