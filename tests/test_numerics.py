"""nnx.numerics: what decides a run's bits, and the tolerances a rerun under other numerics gets."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from nnx import numerics


def test_the_fingerprint_names_the_processor_and_the_instruction_set_xla_targets(monkeypatch):
    tags = numerics.fingerprint()
    assert set(tags) == set(numerics.DECIDING) and tags[numerics.NUMERICS_TAG] == str(numerics.VERSION)
    assert numerics.differences(tags, tags) == []
    assert numerics.differences({**tags, numerics.CPU_TAG: "Other"}, tags) == [f"nnx.cpu: Other -> {tags[numerics.CPU_TAG]}"]
    assert numerics.differences({}, tags)[0] == f"nnx.numerics: not recorded -> {numerics.VERSION}"
    widest = numerics.cpu()[1]
    if widest in ("AVX512F", "AVX2", "AVX"):  # an x86 with vector units: capping XLA's ISA is recorded
        monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_max_isa=SSE4_2")
        assert numerics.cpu()[1] == "SSE4_2"


def test_tolerances_scale_the_twins_spread_and_an_accuracy_may_count_one_example_either_way():
    nominal = {"val_cost": np.array([1.0, 0.5]), "val_accuracy": np.array([0.9, 0.95]), "best_val_accuracy": np.array([0.95])}
    twins = [{"val_cost": np.array([1.0, 0.5 + 1e-6]), "val_accuracy": nominal["val_accuracy"], "best_val_accuracy": np.array([0.95])}]
    tol = numerics.tolerances(nominal, twins, {"val": 1000})
    ulp = float(np.spacing(np.float32(1.0)))
    assert tol["val_cost"] == pytest.approx(numerics.SAFETY * 1e-6 + numerics.ULPS * ulp, rel=1e-9)  # 0.5 + 1e-6 - 0.5 in float64
    assert tol["val_accuracy"] == tol["best_val_accuracy"] == 1 / 1000 + numerics.ULPS * ulp  # no spread: one example, and rounding
    assert numerics.beyond(nominal, {**nominal, "val_cost": np.array([1.0, 0.5 + 7e-6])}, tol) == []
    (problem,) = numerics.beyond(nominal, {**nominal, "val_cost": np.array([1.0, 0.5 + 9e-6])}, tol)
    assert problem.startswith("val_cost: largest difference 9e-06 beyond")
    assert numerics.beyond(nominal, {**nominal, "val_accuracy": np.float32([0.901, 0.95])}, tol) == []  # one example, in float32 (1.00002e-3)
    assert numerics.beyond(nominal, {**nominal, "val_accuracy": np.array([0.9, 0.952])}, tol) == ["val_accuracy: largest difference 0.002 beyond its tolerance 0.001"]
    assert numerics.beyond({"x": np.array([np.nan])}, {"x": np.array([np.nan])}, {"x": 0.0}) == []  # NaN where both diverged


def test_a_process_on_fewer_cores_records_other_threads(tmp_path):
    """XLA's CPU pool is sized by the cores a process may use (nnx.numerics.threads): a job given one
    core records that, so a rerun on two names the difference instead of promising the same bits."""
    if jax.default_backend() != "cpu" or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs the CPU backend and two cores to give a process one of them")
    one_core = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
                "from nnx.edges import devices; devices.use_two_cpu_devices(); from nnx import numerics; print(numerics.threads())")
    done = subprocess.run([sys.executable, "-c", one_core], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1 core, 1 device"
    here = numerics.threads()
    assert here.startswith(f"{len(os.sched_getaffinity(0))} cores, ")
    (named,) = numerics.differences({**numerics.fingerprint(), numerics.THREADS_TAG: "1 core, 1 device"}, numerics.fingerprint())
    assert named == f"nnx.cpu_threads: 1 core, 1 device -> {here}"
