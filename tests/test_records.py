"""nnx.records: one layout for what a run records; params and checkpoints keyed by tree path,
and files written before that (tests/data, by nnx at 242f746) still load."""

import json
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
