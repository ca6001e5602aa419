"""nnx.records: one layout for what a run records; params and checkpoints keyed by tree path,
and files written before that (tests/data, by nnx at 242f746) still load."""

import ast
import json
import re
from pathlib import Path

import jax
import numpy as np
import pytest

import nnx
import roundoff
from conftest import tiny_cfg
from nnx import records
from nnx.edges import checkpoint

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).resolve().parents[1]
LEGACY = json.loads((DATA / "legacy.json").read_text())
CASES = {"mlp": {}, "batch_norm": {"model": {"depth": 2, "width": 8, "output_activation": "sigmoid", "batch_norm": True}}}


def test_names():
    assert records.hidden("grad_norm", 2) == "grad_norm/hidden_2" and records.layer("weight_grad_norm", 3) == "weight_grad_norm/layer_3"
    assert records.hist("delta", 1) == "hist/delta/hidden_1" and records.hist("weight_grad", 2) == "hist/weight_grad/layer_2"
    assert records.per_hidden_layer({"grad_norm/hidden_10": 0, "grad_norm/hidden_2": 0, "x": 0}, "grad_norm") == [
        "grad_norm/hidden_2", "grad_norm/hidden_10"]
    flat = records.flatten_probe({"grad_norm": [1.0, 2.0], "weight_grad_norm": [3.0, 4.0, 5.0], "scalars": {"a/hidden_1": 6.0}})
    assert flat == {"grad_norm/hidden_1": 1.0, "grad_norm/hidden_2": 2.0, "weight_grad_norm/layer_1": 3.0,
                    "weight_grad_norm/layer_2": 4.0, "weight_grad_norm/layer_3": 5.0, "a/hidden_1": 6.0}
    assert records.flatten_evaluation({"validation": (0.5, 0.9)}) == {"val_cost": 0.5, "val_accuracy": 0.9}


def test_summary_picks_the_earliest_best_epoch_and_the_first_last_ratio():
    history = {"val_accuracy": np.array([0.5, 0.9, 0.9]), "test_accuracy": np.array([0.4, 0.8, 0.85]),
               "train_accuracy": np.array([0.6, 0.95, 0.97]),
               "grad_norm/hidden_1": np.array([1.0, 2.0]), "grad_norm/hidden_2": np.array([4.0, 5.0])}
    s = records.summary(history)
    # Exact: values picked from the history, and ratios one correctly rounded division each (2.0 / 5.0 is 0.4)
    assert s["best_epoch"] == 1 and s["test_accuracy_at_best_val"] == 0.8 and s["best_test_accuracy"] == 0.85
    assert s["grad_ratio_first_last_init"] == 0.25 and s["grad_ratio_first_last_final"] == 0.4
    assert set(s) == set(records.SUMMARY)
    # train.eval_splits=[validation] (a preset whose report reads nothing else): the validation entries
    # still name the best epoch (the sweep's runs table shows best_val_accuracy), and no test entry is made up.
    alone = records.summary({"val_accuracy": history["val_accuracy"]})
    assert alone == {"best_val_accuracy": 0.9, "best_epoch": 1, "final_val_accuracy": 0.9}
    # eval_splits=[test] (chapter 1's reports): the test entries, with no best epoch to pick them by.
    assert records.summary({"test_accuracy": history["test_accuracy"]}) == {"best_test_accuracy": 0.85, "final_test_accuracy": 0.85}


def test_params_round_trip_by_tree_path_with_a_parameter_free_layer():
    params = [{"w": np.ones((3, 4)), "b": np.zeros(3)}, {}, {"w": np.full((2, 3), 2.0), "b": np.ones(2), "gamma": np.ones(2)}]
    arrays = records.params_arrays(params)
    assert set(arrays) == {"0/w", "0/b", "2/w", "2/b", "2/gamma"}
    back = records.params_from_arrays(arrays)
    assert len(back) == 3 and back[1] == {}
    assert jax.tree.all(jax.tree.map(np.array_equal, back, params))


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_params_npz_written_before_tree_paths_loads(case):
    """The old layer_<l>/<k> keys, batch norm included (where len(saved) // 2 layers was wrong). The
    loaded params give legacy.json's numbers, recorded on another machine, within float32 round-off:
    both it and nnx here are held to the same params' forward pass in float64 (numpy)."""
    spec = nnx.build(tiny_cfg(**CASES[case]))
    with np.load(DATA / f"{case}_params.npz") as saved:
        assert any(k.startswith("layer_1/") for k in saved)
        params = records.params_from_arrays(dict(saved))
    fresh = nnx.init(jax.random.PRNGKey(0), spec.net)
    assert jax.tree.structure(params) == jax.tree.structure(jax.tree.map(np.asarray, fresh))
    test = nnx.load(train_size=1).test
    x, labels = test.x[:1000], test.y[:1000]
    z, a = nnx.feedforward(spec.net, params, x)
    _, (z64, worst) = roundoff.dense_forward(params, x, "sigmoid", epsilon=nnx.layers.BN_EPSILON)
    measured = np.abs(np.asarray(z, np.float64) - z64)
    assert np.all(measured <= worst)  # within Higham's gamma_n bound carried through the layers, as on any CPU
    # That bound is at least 190 (mlp) and 18,000 (batch norm) times the error seen, too loose to test with: another
    # CPU's float32 z errs by another draw of the size measured here, allowed ELSEWHERE times over.
    err_z = roundoff.ELSEWHERE * measured.max()
    a64 = roundoff.sigmoid(z64)
    # a = sigma(z) moves by at most max sigma' = 1/4 times z's error, plus sigma's own few ulps; the sum
    # of 10,000 of them is taken in float64 (gamma_n(u64) of it).
    err_sum = np.sum(0.25 * err_z + roundoff.ULPS_PHI * roundoff.U32 * a64) + roundoff.gamma(a64.size, roundoff.U64) * a64.sum()
    for output_sum in (np.asarray(a, np.float64).sum(), LEGACY[case]["output_sum"]):
        assert abs(output_sum - a64.sum()) <= err_sum, (output_sum, a64.sum(), err_sum)
    # An image counts either way only where its top output leads another by no more than both errors:
    # the count correct may differ from float64's by at most that many images (usually none).
    either_way = int(roundoff.ambiguous(z64, np.full_like(z64, err_z)).sum())
    correct64 = int(np.sum(np.argmax(z64, 1) == labels))
    for correct in (int(np.sum(np.argmax(np.asarray(z), 1) == labels)), round(LEGACY[case]["test_accuracy_1000"] * len(labels))):
        assert abs(correct - correct64) <= either_way, (correct, correct64, either_way)


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_checkpoint_written_before_tree_paths_loads_and_a_new_one_round_trips(case, tmp_path):
    spec = nnx.build(tiny_cfg(**CASES[case]))
    epoch, params, opt_state = checkpoint.load(DATA / f"{case}_checkpoint.npz", spec, seed=0)
    assert epoch == 2  # saved after epoch 1: training goes on with epoch 2
    with np.load(DATA / f"{case}_params.npz") as saved:
        expected = records.params_from_arrays(dict(saved))
    assert jax.tree.all(jax.tree.map(lambda x, y: np.array_equal(np.asarray(x), y), params, expected))

    checkpoint.save(tmp_path / "last.npz", 1, params, opt_state)
    with np.load(tmp_path / "last.npz") as saved:
        assert "params/0/w" in saved and "leaf_0" not in saved
    again = checkpoint.load(tmp_path / "last.npz", spec, seed=0)
    assert again[0] == 2 and jax.tree.all(jax.tree.map(lambda x, y: np.array_equal(x, y), again[1:], (params, opt_state)))


def test_a_checkpoint_of_another_model_is_refused_by_name(tmp_path):
    small, deep = nnx.build(tiny_cfg()), nnx.build(tiny_cfg(model={"depth": 2, "width": 8, "output_activation": "sigmoid"}))
    params = nnx.init(jax.random.PRNGKey(0), small.net)
    checkpoint.save(tmp_path / "last.npz", 0, params, small.optimizer.init(params))
    with pytest.raises(KeyError, match="params/2/b"):
        checkpoint.load(tmp_path / "last.npz", deep, seed=0)


# The names stored runs carry: a store's runs are found by them, so a constant's value never changes.
STORED_TAGS = {
    "nnx.experiment", "nnx.overrides", "nnx.role", "nnx.sweep_id", "nnx.children", "nnx.previous_parent", "nnx.config_hash",
    "nnx.seed", "nnx.batch_seeds", "nnx.rerun_of", "nnx.rerun_matches", "nnx.rerun_compared", "nnx.resumed_from_epoch",
    "nnx.report", "nnx.split", "nnx.train_size", "nnx.images", "nnx.sha256", "nnx.error", "nnx.model_error", "nnx.failure",
    "nnx.failure_epoch", "nnx.stopped", "nnx.stopped_epoch", "nnx.killed_reason", "nnx.host", "nnx.pid", "nnx.pid_start",
    "nnx.heartbeat", "nnx.last_epoch", "nnx.epoch_seconds", "nnx.search_trial", "nnx.search_state", "nnx.best_trial",
    "nnx.pruned_epoch", "nnx.numerics", "nnx.jax_backend", "nnx.device", "nnx.cpu", "nnx.cpu_isa", "nnx.xla_flags",
    "nnx.cpu_threads",
    "nnx.dense_grad", "nnx.evaluation", "nnx.conv_impl", "nnx.device_requested", "nnx.backend", "nnx.matmul_precision",
    "nnx.platform_version", "nnx.git_commit", "nnx.git_dirty"}


def test_the_tag_constants_hold_the_stored_names():
    constants = {name: value for name, value in vars(records).items() if name.startswith("TAG_") and isinstance(value, str)}
    assert set(constants.values()) == STORED_TAGS and len(constants) == len(STORED_TAGS)
    assert (records.ROLE_SWEEP, records.ROLE_SEEDS, records.ROLE_ANALYSIS, records.ROLE_REPORT) == ("sweep", "seeds", "analysis", "report")
    assert records.TAG_SEARCH["budget_epochs"] == "nnx.search.budget_epochs" and len(records.TAG_SEARCH) == 10
    assert records.version_tag("jax") == "nnx.version.jax" and records.source_tag("x") == "nnx.source.x"
    assert records.BEST_VAL_ACCURACY == "best_val_accuracy" and records.SUMMARY[0] == records.BEST_VAL_ACCURACY


def tag_literals(path: Path, root: Path = ROOT) -> list[str]:
    """Strings in a module that spell a tag name ("nnx.seed", or f"nnx.version.{x}"'s "nnx.version.")
    rather than taking it from nnx.records. A module's own dotted path (`python -m nnx.edges.bench.accel`)
    is not a tag; a one-dot name is, even where a module has it too ("nnx.numerics")."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and re.fullmatch(r"nnx\.[a-z0-9_.]*", node.value):
            parts = node.value.split(".")
            if len(parts) > 2 and root.joinpath(*parts).with_suffix(".py").exists():
                continue
            found.append((node.lineno, node.col_offset, f"{path.relative_to(root)}:{node.lineno} {node.value!r}"))
    return [text for *_, text in sorted(found)]


def test_tag_names_are_spelt_only_in_records(tmp_path):
    """nnx/ and experiments/ name every tag through nnx.records, so a name is spelt once (tests spell them
    out: they check the stored names from outside)."""
    modules = [p for p in sorted((ROOT / "nnx").rglob("*.py")) + sorted((ROOT / "experiments").glob("*.py")) if p != ROOT / "nnx" / "records.py"]
    assert len(modules) > 50 and ROOT / "experiments" / "store.py" in modules
    assert [found for p in modules for found in tag_literals(p)] == []
    # The check finds each way of spelling one: a key, a filter's value, an f-string's prefix; not a module's path.
    (tmp_path / "nnx" / "edges" / "bench").mkdir(parents=True)
    (tmp_path / "nnx" / "edges" / "bench" / "accel.py").write_text("")
    planted = tmp_path / "nnx" / "a.py"
    planted.write_text('tags = {"nnx.seed": 1}\nfound = tags.get(\'nnx.role\') == f"nnx.version.{tags}"\n'
                       'argv = ["-m", "nnx.edges.bench.accel", "not nnx.seed here"]\n')
    assert tag_literals(planted, tmp_path) == ["nnx/a.py:1 'nnx.seed'", "nnx/a.py:2 'nnx.role'", "nnx/a.py:2 'nnx.version.'"]
