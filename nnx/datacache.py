"""nnx's data cache: plain arrays in files, each file trusted only while its sha256 matches.

A file is np.savez of named arrays (no pickles) with its sha256 in a sha256sum-style .sha256 file
beside it, both written through a temporary file renamed into place. nnx.data keeps the book's
MNIST arrays and chapter 6's expanded set here, so a process need not unpickle or expand again.
"""

import hashlib
import os
from pathlib import Path

import numpy as np

CACHE_ENV = "NNX_DATA_CACHE"


def default_cache_dir() -> Path:
    """$NNX_DATA_CACHE if set, else nnx's folder of the user's cache: $XDG_CACHE_HOME/nnx, ~/.cache/nnx
    by default (beside JAX's compiled programs, nnx.edges.paths.JAX_CACHE)."""
    return Path(os.environ.get(CACHE_ENV) or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nnx").expanduser()


def checksum_path(path: Path) -> Path:
    """Where the sha256 of the arrays at path is recorded."""
    return path.with_name(path.name + ".sha256")


def _sha256(file) -> str:
    digest = hashlib.sha256()
    for block in iter(lambda: file.read(1 << 22), b""):
        digest.update(block)
    return digest.hexdigest()


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays np.savez wrote to path, if its sha256 is the one recorded beside it, else raises."""
    recorded = checksum_path(path).read_text().split()[0]
    with path.open("rb") as file:  # one handle: the bytes hashed are the bytes loaded
        found = _sha256(file)
        if found != recorded:
            raise ValueError(f"sha256 {found}, but {recorded} was recorded when it was written")
        file.seek(0)
        with np.load(file, allow_pickle=False) as arrays:
            return {name: arrays[name] for name in arrays.files}


def write_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Writes the arrays, then their sha256; each via a temporary file renamed into place, so a
    reader never sees half a file (a crash in between leaves no checksum: the cache is rebuilt)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    checksum = checksum_path(path)
    checksum.unlink(missing_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    try:
        with partial.open("w+b") as file:
            np.savez(file, **arrays)
            file.seek(0)
            digest = _sha256(file)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)  # a full disk leaves no 200 MB fragment behind
    partial = checksum.with_name(f"{checksum.name}.{os.getpid()}.partial")
    partial.write_text(f"{digest}  {path.name}\n")
    os.replace(partial, checksum)
