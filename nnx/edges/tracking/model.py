"""A trained network as an MLflow 3 LoggedModel (the experiment's Models tab), and the head start
that makes logging it cheap: MLflow's model code imported while the process trains."""

import contextlib
import json
import tempfile
import threading
import time
from importlib import metadata
from pathlib import Path

import numpy as np

from nnx.edges.tracking.env import redact
from nnx.edges.tracking.reading import without_progress_bars
from nnx.edges.tracking.store import retry

MODEL_NAME = "network"  # each run's LoggedModel; the Models tab tells them apart by source run
MODEL_PACKAGES = ("jax", "jaxlib", "optax", "numpy", "cloudpickle")  # what a logged model needs besides mlflow


def model_requirements() -> list[str]:
    return [f"{p}=={metadata.version(p)}" for p in MODEL_PACKAGES]


_WARMED = threading.Event()


def warm_model_logging():
    """Pays, in a daemon thread while the process trains, what log_model would pay after it:
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
        with without_progress_bars(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*input example was not provided")
            yield
    finally:
        log.setLevel(level)


def _save(folder: Path, model, run_id: str, params_file: Path, config: dict):
    """Writes the pyfunc model (nnx.edges.classifier over params_file and config) into folder/model."""
    import mlflow.pyfunc
    from mlflow.models import Model, ModelSignature
    from mlflow.types import Schema, TensorSpec

    import nnx
    from nnx.edges.classifier import Classifier

    (folder / "config.json").write_text(redact(json.dumps(config)))
    # Unnamed tensors: predict takes and returns bare arrays (a named input arrives as a dict).
    signature = ModelSignature(Schema([TensorSpec(np.dtype(np.float32), (-1, 784))]),
                               Schema([TensorSpec(np.dtype(np.int64), (-1,))]))
    mlflow.pyfunc.save_model(
        folder / "model", python_model=Classifier(), signature=signature,
        artifacts={"params": str(params_file), "config": str(folder / "config.json")},
        # Its own copy of nnx: the model loads wherever jax and optax do, whatever nnx is there.
        code_paths=[str(Path(nnx.__file__).parent)],
        # Given, not inferred: inference imports the model and can query a package index.
        pip_requirements=model_requirements(),
        mlflow_model=Model(artifact_path=model.artifact_location, model_uuid=model.model_id, run_id=run_id,
                           model_id=model.model_id))


def log_model(run, params_file: Path, config: dict, metrics: dict, step: int, params: dict) -> str:
    """The trained network as an MLflow 3 LoggedModel (the experiment's Models tab): a pyfunc
    (nnx.edges.classifier) over params_file and `config`, carrying nnx's code, an output of
    the run (a tracking.Run) at `step`, with `metrics` logged to the run at `step` and linked to
    the model. Returns the model's id: mlflow.pyfunc.load_model(f"models:/{id}") classifies images.

    Built by hand rather than by mlflow.pyfunc.log_model, which needs the fluent API's global
    tracking URI and reads back every metric's whole history to link the ones at `step`."""
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric

    client = run.client
    experiment_id = run.experiment_id or retry(client.get_run, run.run_id).info.experiment_id
    model = retry(client.create_logged_model, experiment_id, name=MODEL_NAME, source_run_id=run.run_id,
                  params={k: redact(str(v)) for k, v in params.items()}, model_type="nnx classifier")
    try:
        with tempfile.TemporaryDirectory() as folder, _quiet_model_saving():
            _save(Path(folder), model, run.run_id, params_file, config)
            retry(client.log_model_artifacts, model.model_id, str(Path(folder) / "model"))
    except BaseException:
        retry(client.finalize_logged_model, model.model_id, LoggedModelStatus.FAILED)
        raise
    retry(client.finalize_logged_model, model.model_id, LoggedModelStatus.READY)
    retry(client.log_outputs, run.run_id, [LoggedModelOutput(model.model_id, step)])
    now = int(time.time() * 1000)
    run.flush()
    retry(client.log_batch, run.run_id,
          metrics=[Metric(k, float(v), now, step, model_id=model.model_id) for k, v in metrics.items()])
    return model.model_id
