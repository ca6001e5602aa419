"""nnx.edges.compat, the one module that reaches past other libraries' public APIs: the releases
its reaches were written against, and each reach exercised, so an upgrade that moves one fails
here with the reach's name (and nowhere later, in a user's command)."""

import inspect
import json
import random
import re
import subprocess
import sys
from importlib import metadata

import pytest

from conftest import ROOT
from nnx.edges import compat


def fails(reach: str, why: str) -> str:
    return f"nnx.edges.compat.{reach} no longer holds: {why}. Re-read that reach against the installed release (its docstring says what it needs)."


@pytest.mark.parametrize("package", sorted(compat.WRITTEN_AGAINST))
def test_the_libraries_are_the_releases_the_reaches_were_written_against(package):
    version, reaches = compat.WRITTEN_AGAINST[package]
    locked = re.search(rf"^{re.escape(package)}==(\S+)$", (ROOT / "requirements.lock").read_text(), re.MULTILINE | re.IGNORECASE)
    assert locked and locked.group(1) == version, f"requirements.lock pins {package} {locked and locked.group(1)}, compat was written against {version}"
    installed = metadata.version(package)
    assert installed == version, (
        f"{package} {installed} is installed; nnx.edges.compat's reaches into it ({', '.join(reaches)}) were written "
        f"against {version}. Check each (the tests below exercise them), then update compat.WRITTEN_AGAINST.")


def test_hydra_message_drops_the_search_path_hydra_appends(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.errors import MissingConfigException

    (tmp_path / "activation").mkdir()
    (tmp_path / "activation" / "tanh.yaml").write_text("name: tanh\n")
    (tmp_path / "train.yaml").write_text("defaults:\n  - activation: tanh\n")
    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"), pytest.raises(MissingConfigException) as raised:
        compose("train", overrides=["activation=swish"])
    assert "\nConfig search path:" in str(raised.value), fails("hydra_message", "Hydra's message no longer lists its search path so")
    assert compat.hydra_message(raised.value) == "In 'train': Could not find 'activation/swish'\n\nAvailable options in 'activation':\n\ttanh"


def test_skip_sweepers_batch_check_turns_off_the_check_hydras_sweeper_runs():
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.plugins.sweeper import Sweeper

    check = Sweeper.validate_batch_is_legal
    assert list(inspect.signature(check).parameters) == ["self", "batch"], fails("skip_sweepers_batch_check", "its signature changed")
    assert "validate_batch_is_legal" in inspect.getsource(BasicSweeper.sweep), fails(
        "skip_sweepers_batch_check", "Hydra's basic sweeper no longer calls Sweeper.validate_batch_is_legal")
    with compat.skip_sweepers_batch_check():
        assert Sweeper.validate_batch_is_legal(None, [["no.such.key=1"]]) is None
    assert Sweeper.validate_batch_is_legal is check


def test_read_each_config_file_once_composes_hydras_configs_and_reads_an_edited_file_again(tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir
    from hydra._internal.config_repository import ConfigRepository
    from omegaconf import OmegaConf

    compat.read_each_config_file_once()
    assert compat._hydra_load is not None and ConfigRepository.load_config is not compat._hydra_load, "not installed"
    assert list(inspect.signature(compat._hydra_load).parameters) == ["self", "config_path"], fails(
        "read_each_config_file_once", "Hydra's ConfigRepository.load_config takes other arguments")
    jobs = [[], ["experiment=ch5_depth", "model.depth=3"], ["experiment=ch6_dropout", "activation=relu"], []]

    def composed():
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            return [OmegaConf.to_container(compose("train", overrides=job, return_hydra_config=True)) for job in jobs]

    kept = composed()
    monkeypatch.setattr(ConfigRepository, "load_config", compat._hydra_load)
    assert kept == composed()  # the same configs as Hydra's own reading, twice over the same files
    monkeypatch.undo()

    (tmp_path / "activation").mkdir()
    (tmp_path / "activation" / "tanh.yaml").write_text("name: tanh\nalpha: 1\n")
    (tmp_path / "train.yaml").write_text("defaults:\n  - activation: tanh\n  - _self_\nseed: 0\n")
    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
        assert OmegaConf.to_container(compose("train", overrides=["activation.alpha=2"])) == {"activation": {"name": "tanh", "alpha": 2}, "seed": 0}
        assert compose("train").activation.alpha == 1  # the override changed a copy, not what is kept
        (tmp_path / "activation" / "tanh.yaml").write_text("name: tanh\nalpha: 30\n")
        assert compose("train").activation.alpha == 30


def test_the_compilation_cache_scans_its_folder_only_when_a_write_would_pass_its_limit(tmp_path, monkeypatch):
    from jax._src import lru_cache

    installed = compat._jax_evict is not None and lru_cache.LRUCache._evict_if_needed is not compat._jax_evict
    assert installed, "nnx.edges.paths.use_compilation_cache did not install it"
    assert list(inspect.signature(compat._jax_evict).parameters) == ["self", "additional_size"], fails(
        "scan_cache_only_near_its_limit", "JAX's LRUCache._evict_if_needed takes other arguments")
    assert "self._evict_if_needed(additional_size=len(value))" in inspect.getsource(lru_cache.LRUCache.put), fails(
        "scan_cache_only_near_its_limit", "JAX's LRUCache.put no longer asks _evict_if_needed before it writes")
    scans, jax_scan = [], compat._jax_evict
    monkeypatch.setattr(compat, "_jax_evict", lambda cache, **size: scans.append(size) or jax_scan(cache, **size))
    cache = lru_cache.LRUCache(str(tmp_path), max_size=10_000)
    for i in range(4):
        cache.put(f"k{i}", bytes(2_000))
    assert scans == []  # 8,000 bytes: nothing to evict, and the folder was listed once, not scanned
    assert cache.get("k0") == bytes(2_000)  # k1 is now the least recently used
    cache.put("k4", bytes(3_000))  # 11,000 bytes: JAX's scan evicts as before
    assert scans == [{"additional_size": 3_000}]
    assert cache.get("k1") is None and all(cache.get(k) for k in ("k0", "k2", "k3", "k4"))
    assert sum(p.stat().st_size for p in tmp_path.glob("*-cache")) == 9_000


def test_preflight_checks_the_jobs_hydras_basic_sweeper_launches():
    """preflight expands a sweep with Hydra's public override API; the jobs must be the ones Hydra's
    own BasicSweeper (private) launches, or a bad job could slip past the check."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from nnx.edges.preflight import basic_sweep_jobs

    for line in (["a=1,2", "b=range(3)", "c=choice(x,y)", "a=5,6,7"], ["+d=1", "~e", "f=[1,2]", "g='q,r'", "h=shuffle(1,2)"],
                 ["i=null", "j={a:1}", "k=tag(t,choice(1,2))", "l=range(0,1,0.5)"], []):
        overrides = OverridesParser.create().parse_overrides(line)
        random.seed(0)  # shuffle() draws its order from `random`: the same draws for both
        ours = basic_sweep_jobs(overrides)
        random.seed(0)
        assert ours == BasicSweeper.split_arguments(overrides, None)[0], line


def test_exit_without_teardown_runs_atexit_flushes_and_exits_with_the_status():
    code = ("import atexit; from nnx.edges import compat; atexit.register(lambda: print('handler ran', flush=True)); "
            "print('output', end=''); compat.exit_without_teardown(3)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (3, "outputhandler ran\n"), fails("exit_without_teardown", f"{done}")


def test_mlflow_serves_asgi_reads_what_mlflows_server_sets(monkeypatch):
    server = (compat.mlflow_folder() / "server" / "__init__.py").read_text()
    assert '_MLFLOW_SGI_NAME.name] = "uvicorn"' in server, fails("mlflow_serves_asgi", "MLflow's server no longer sets _MLFLOW_SGI_NAME")
    monkeypatch.setenv("_MLFLOW_SGI_NAME", "uvicorn")
    assert compat.mlflow_serves_asgi()
    monkeypatch.setenv("_MLFLOW_SGI_NAME", "gunicorn")
    assert not compat.mlflow_serves_asgi()
    monkeypatch.delenv("_MLFLOW_SGI_NAME")
    assert not compat.mlflow_serves_asgi()


def test_mlflows_ui_bundle_still_reads_the_keys_nnx_sets():
    assert compat.ui_bundle_lacks() == [], fails("UI_DEFAULTS", (
        f"MLflow {metadata.version('mlflow')}'s UI bundle no longer has these: find where it keeps the sidebar's GenAI / Model "
        "training toggle and the assistant's first-visit flag now"))
    assert all(json.dumps(v) for v in compat.UI_DEFAULTS.values()) and compat.WORKFLOW_KEY in compat.UI_DEFAULTS


def test_a_bundle_without_them_is_reported(tmp_path):
    (tmp_path / "static" / "js").mkdir(parents=True)
    (tmp_path / "index.html").write_text('<script defer="defer" src="static-files/static/js/main.0a1b.js"></script>')
    (tmp_path / "static" / "js" / "main.0a1b.js").write_text('useLocalStorage({key:"mlflow.sidebarMode",version:2})')
    assert compat.ui_bundle_lacks(tmp_path) == list(compat.BUNDLE_FACTS)


def test_no_other_module_reaches_past_a_librarys_public_names():
    """The reaches this module holds appear nowhere else in nnx/ or experiments/."""
    pattern = re.compile(r"_internal|_run_exitfuncs|reusable_executor\._executor|_MLFLOW_|\bos\._exit\b")
    found = [f"{p.relative_to(ROOT)}:{n}" for folder in ("nnx", "experiments", "hydra_plugins") for p in sorted((ROOT / folder).rglob("*.py"))
             if p.name != "compat.py" for n, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert found == []


def test_every_lock_pins_versions_only():
    """requirements.lock and the accelerators' locks (make install ACCEL=...): comments and name==version
    lines, no URL, path or range, so an install takes exactly these versions from whatever index is configured."""
    locks = sorted(ROOT.glob("requirements*.lock"))
    assert {p.name for p in locks} >= {"requirements.lock", "requirements-cuda13.lock", "requirements-cuda12.lock", "requirements-tpu.lock"}
    for lock in locks:
        for line in lock.read_text().splitlines():
            assert line.startswith("#") or re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*==[0-9][0-9A-Za-z.+!-]*", line), (lock.name, line)
