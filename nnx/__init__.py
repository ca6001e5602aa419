"""nnx: Nielsen's Neural Networks and Deep Learning, reproduced and extended in JAX."""

from nnx.activations import ACTIVATIONS, OUTPUT_ACTIVATIONS
from nnx.costs import COSTS
from nnx.data import DATASETS, Data, DataError, Split, load
from nnx.initializers import INITIALIZERS
from nnx.model import feedforward, init, num_params
from nnx.optimizers import OPTIMIZERS
from nnx.programs import make_epoch, make_evaluate, make_loss, make_probe
from nnx.registry import ConfigError
from nnx.schedules import SCHEDULES
from nnx.spec import Spec, build
from nnx.train import fit, fit_many

__all__ = [
    "ACTIVATIONS",
    "COSTS",
    "DATASETS",
    "INITIALIZERS",
    "OPTIMIZERS",
    "OUTPUT_ACTIVATIONS",
    "SCHEDULES",
    "ConfigError",
    "Data",
    "DataError",
    "Spec",
    "Split",
    "build",
    "feedforward",
    "fit",
    "fit_many",
    "init",
    "load",
    "make_epoch",
    "make_evaluate",
    "make_loss",
    "make_probe",
    "num_params",
]
