"""The one place nnx reaches past another library's public API.

Each reach is a small named function or constant saying what it touches, why, and what it gains.
tests/test_compat.py pins the versions they were written against (WRITTEN_AGAINST, as
requirements.lock installs them) and exercises each one, so an upgrade that moves one fails
there, naming it. Everywhere else nnx uses other libraries' public names only.
"""

import atexit
import contextlib
import copy
import importlib.util
import os
import re
import sys
from pathlib import Path

# The release each library's reaches were read from and checked against (requirements.lock), and
# those reaches. CPython's (exit_without_teardown) is exercised by the test on whatever Python runs it.
WRITTEN_AGAINST = {
    "hydra-core": ("1.3.8", ("hydra_message", "skip_sweepers_batch_check", "read_each_config_file_once")),
    "jax": ("0.10.2", ("scan_cache_only_near_its_limit",)),
    "mlflow": ("3.17.2", ("mlflow_serves_asgi", "UI_DEFAULTS", "ui_bundle_lacks")),
}


# --- Hydra ---------------------------------------------------------------------------------------

def hydra_message(err: Exception) -> str:
    """Hydra's message without the config search path it lists after a missing config (its
    providers and folders: noise to someone who mistyped a choice). Reaches: the text Hydra
    appends, "\\nConfig search path:" and what follows, which no public attribute holds apart."""
    return str(err).split("\nConfig search path:")[0].strip()


@contextlib.contextmanager
def skip_sweepers_batch_check():
    """Hydra's sweepers compose every job of a batch to check it (Sweeper.validate_batch_is_legal)
    before the launcher composes each again to run it. Where nnx's preflight has already composed
    and built every job of the command, that check is a third composition of each. Reaches: it
    replaces a method of Hydra's Sweeper class for the command's length, which no setting turns off.
    Gain: the check took 0.39-0.65 s of 4.9-7.7 s in-process sweeps of 4 one-epoch jobs (6-8.5%;
    four sweeps, a busy 2-core machine), and grows with the number of jobs."""
    from hydra.plugins.sweeper import Sweeper

    check = Sweeper.validate_batch_is_legal
    Sweeper.validate_batch_is_legal = lambda self, batch: None
    try:
        yield
    finally:
        Sweeper.validate_batch_is_legal = check


_hydra_load = None  # Hydra's own ConfigRepository.load_config, once read_each_config_file_once replaced it


def read_each_config_file_once():
    """Hydra reads, parses and wraps every config file of the defaults tree anew at each composition
    (~20 for nnx-train's config), and a sweep composes each job twice (nnx's preflight, then Hydra's
    launcher). Here a process keeps what Hydra made of each file, under the file's path, size and
    modification time in every folder of the search path (an edited file is read again), and hands
    out a copy: Hydra changes what it loads as it composes. Reaches: replaces
    hydra._internal.config_repository.ConfigRepository.load_config; a file's name in its folder is
    Hydra's (the name, plus .yaml unless it ends so). Gain: a composition of nnx-train's config took
    44-47 ms instead of 62-64 ms (30 each, alternated twice), the same configs to the byte; chapters
    1-3 reproduced in one process at the tests' size (118 compositions) took 40.1 and 43.8 s instead
    of 45.0 and 47.7 s (alternated, empty compilation caches), 9%."""
    global _hydra_load
    from hydra._internal.config_repository import ConfigRepository

    if _hydra_load is not None:
        return
    load = _hydra_load = ConfigRepository.load_config
    kept = {}

    def stamp(source, config_path: str):
        # By scheme, not class: Hydra's plugin scan loads its sources' modules anew, as other classes.
        if source.scheme() != "file":
            return source.scheme(), source.provider, source.path  # packaged and structured configs: fixed
        path = os.path.join(source.path, config_path if config_path.endswith(".yaml") else config_path + ".yaml")
        try:
            found = os.stat(path)
        except OSError:
            return path, None
        return path, found.st_mtime_ns, found.st_size

    def load_config(self, config_path: str):
        key = (config_path, *(stamp(s, config_path) for s in self.sources))
        if key not in kept:
            kept[key] = load(self, config_path)
        return copy.deepcopy(kept[key])

    ConfigRepository.load_config = load_config


# --- JAX ------------------------------------------------------------------------------------------

_jax_evict = None  # JAX's own LRUCache._evict_if_needed, once scan_cache_only_near_its_limit replaced it


def scan_cache_only_near_its_limit():
    """JAX's size-limited compilation cache (jax_compilation_cache_max_size) scans its whole folder
    each time it writes an entry (a stat and a read of every entry's access-time file) to find what
    to evict: a cost that grows with the cache, paid on every compilation. Here a process sums the
    entries' sizes when it first writes, then adds what it writes, and runs JAX's scan (which
    evicts) only when that total would pass the limit. What other processes write meanwhile is
    counted at their own first write or scan, so a folder shared by parallel jobs can pass the
    limit by what they wrote since, until the next scan evicts down to it.
    Reaches: replaces jax._src.lru_cache.LRUCache._evict_if_needed, which JAX calls under its file
    lock (so still one writer at a time); where a JAX lacks it, JAX is left alone.
    Gain: a write into a cache of the suite's 1,539 entries took 69-81 ms, 1.9-2.4 ms this way (50
    writes); into one of 20,000 (at the suite's 17 KB an entry, ~350 MB of the 2 GiB nnx allows)
    0.84 s, 0.9 ms this way. In a fresh clone's make test the scans were ~7% of py-spy's samples."""
    global _jax_evict
    try:
        from jax._src import lru_cache
    except ImportError:
        return
    scan = getattr(getattr(lru_cache, "LRUCache", None), "_evict_if_needed", None)
    if _jax_evict is not None or scan is None:
        return
    _jax_evict = scan

    def entry_bytes(folder) -> int:
        return sum(e.stat().st_size for e in os.scandir(folder) if e.name.endswith(lru_cache._CACHE_SUFFIX))

    def evict_if_needed(cache, *, additional_size: int = 0):
        if not isinstance(cache.path, Path):  # a remote folder (etils' paths): scanned each time, as JAX does
            return _jax_evict(cache, additional_size=additional_size)
        size = getattr(cache, "nnx_bytes", None)
        if size is None:
            size = entry_bytes(cache.path)
        if size + additional_size > cache.max_size:
            _jax_evict(cache, additional_size=additional_size)
            size = entry_bytes(cache.path)
        cache.nnx_bytes = size + additional_size

    lru_cache.LRUCache._evict_if_needed = evict_if_needed


# --- CPython -------------------------------------------------------------------------------------

def exit_without_teardown(status: int):
    """Ends the process with status, running atexit's handlers (logging, joblib's workers) but not
    the interpreter's teardown, which frees JAX's, MLflow's and their imports' objects one by one.
    Reaches: atexit._run_exitfuncs, what an ordinary exit runs first, which has no public name;
    then os._exit. Only for a process whose work is all written: streams are flushed here, and the
    caller makes sure no non-daemon thread is left. Gain: nnx-train train.epochs=1 data.train_size=100
    took 0.08-0.12 s from main()'s return to its exit this way, 0.9-1.4 s by the ordinary exit, of
    a 6.4-8.6 s command (3 runs each, a busy 2-core machine: 7.2 s against 7.8 s on average, 8%, as
    one run in three kept an MLflow thread-pool worker and so exited the ordinary way)."""
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


# --- MLflow's server and UI ----------------------------------------------------------------------

def mlflow_serves_asgi() -> bool:
    """Whether the `mlflow server` / `mlflow ui` that imports an app plugin runs it under uvicorn
    (it wants the FastAPI app then, else the Flask one). Reaches: MLflow's private environment
    variable _MLFLOW_SGI_NAME, which its CLI sets for its server process and its own basic-auth
    plugin reads the same way; nothing public tells. Gain: `make ui` works under MLflow 3's default server."""
    return os.environ.get("_MLFLOW_SGI_NAME") == "uvicorn"


def mlflow_folder() -> Path:
    """Where the mlflow package is installed, found without importing it (~2 s, with its GenAI modules)."""
    return Path(importlib.util.find_spec("mlflow").submodule_search_locations[0])


# What a browser that has not chosen gets, as MLflow 3.17.2's UI bundle stores it: useLocalStorage({key,
# version}) keeps JSON under `${key}_v${version}`. The sidebar's toggle opens experiments in Model training;
# the GenAI assistant's panel (it wants an LLM provider) is not opened by itself on the first visit, but its
# button stays. Reaches: key names read from MLflow's minified UI bundle; ui_bundle_lacks checks they hold.
# Gain: `make ui` opens experiments in Model training in a fresh browser (nnx.edges.ui).
WORKFLOW_KEY = "mlflow.workflowType_v1"
UI_DEFAULTS = {WORKFLOW_KEY: "machine_learning", "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": True}
BUNDLE_FACTS = ('key:"mlflow.workflowType",version:1', 'MACHINE_LEARNING="machine_learning"',
                'key:"mlflow.assistant.fab.autoOpenedOnFirstLoad",version:1', "`${e}_v${t}`")


def ui_bundle_lacks(build: Path | None = None) -> list[str]:
    """The facts about MLflow's UI bundle (its main script) that UI_DEFAULTS relies on and the bundle
    lacks. Reaches: the minified bundle's text, found through the index.html MLflow ships."""
    build = build or mlflow_folder() / "server" / "js" / "build"
    main = re.search(r'src="static-files/(static/js/main\.[0-9a-f]+\.js)"', (build / "index.html").read_text())
    text = (build / main.group(1)).read_text() if main else ""
    return [fact for fact in BUNDLE_FACTS if fact not in text]
