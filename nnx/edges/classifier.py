"""A trained network as an MLflow pyfunc model: images in, digits out.

What nnx.edges.tracking logs as a run's MLflow 3 LoggedModel. Its artifacts are the run's final
params (params.npz, as nnx.records writes them) and the run's resolved config (config.json); the
network is rebuilt from that config by nnx.spec.build, so the model needs nnx's code (carried in
the model, see tracking.Run.log_model), jax, optax and numpy, nothing else:

    model = mlflow.pyfunc.load_model(f"models:/{model_id}")
    digits = model.predict(images)   # images [n, 784] float32 in [0, 1), as nnx.data gives them
"""

import json
from pathlib import Path

import mlflow.pyfunc
import numpy as np


class Classifier(mlflow.pyfunc.PythonModel):
    """predict(images [n, 784] float32) -> digits [n] int64: argmax of the network's output layer,
    the same rule as the accuracies a run logs (nnx.programs.evaluate_fn)."""

    def load_context(self, context):
        import jax

        from nnx import records
        from nnx.model import feedforward
        from nnx.spec import build

        net = build(json.loads(Path(context.artifacts["config"]).read_text())).net
        with np.load(context.artifacts["params"]) as saved:
            self.params = jax.tree.map(jax.numpy.asarray, records.params_from_arrays(dict(saved)))
        self.digits = jax.jit(lambda params, x: jax.numpy.argmax(feedforward(net, params, x)[0], axis=-1))

    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        x = np.asarray(model_input, np.float32)
        if x.ndim != 2 or x.shape[1] != 784:
            raise ValueError(f"the model takes images as rows of 784 pixels, [n, 784]; got shape {x.shape}. "
                             f"Reshape 28x28 images with images.reshape(-1, 784).")
        return np.asarray(self.digits(self.params, x), np.int64)
