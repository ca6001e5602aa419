"""Where the project's folders are: nnx is installed editable from the project, so the root is
the folder above the package. Hydra's configs, the embedded store and the reports live there."""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
STORE = ROOT / "mlruns"
REPORTS = ROOT / "reports"
JAX_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nnx" / "jax"
JAX_CACHE_BYTES = 2 * 1024**3


def use_compilation_cache():
    """JAX's persistent compilation cache, in ~/.cache/nnx/jax ($XDG_CACHE_HOME/nnx/jax;
    JAX_COMPILATION_CACHE_DIR wins).

    A program of the same shapes compiles once: a sweep's seeds, a rerun, the next command, and a
    new clone or venv of the same versions (one cache per user, like pip's). Entries are keyed by
    the program and the JAX, XLA and flag versions, so a stale one is never used, and past the size
    limit the least recently used go. With a size limit set, JAX takes a file lock around every
    read and write of the cache, which is what makes one folder safe for parallel jobs (without one
    it writes entries unguarded); compat.scan_cache_only_near_its_limit keeps it from scanning the
    whole folder at each write. Every program is kept however fast it compiled: the small ones of
    a sweep add up.
    """
    import jax

    from nnx.edges import compat

    if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        jax.config.update("jax_compilation_cache_dir", str(JAX_CACHE))
    jax.config.update("jax_compilation_cache_max_size", JAX_CACHE_BYTES)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    compat.scan_cache_only_near_its_limit()
