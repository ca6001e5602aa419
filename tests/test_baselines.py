"""nnx-bench's baselines against nnx's own epoch: the benchmark must time the same algorithm."""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx
from conftest import tiny_cfg
from nnx.edges.bench import baselines

N, ETA = 20, 3.0
rng = np.random.default_rng(0)
x = rng.random((N, 784), dtype=np.float32)
y = rng.integers(0, 10, N)


def book_spec(depth, mini_batch_size):
    return nnx.build(tiny_cfg(
        model={"depth": depth, "width": 8, "output_activation": "sigmoid"}, init={"name": "large"},
        cost={"name": "quadratic"}, optimizer={"name": "sgd", "eta": ETA, "lmbda": 0.0},
        data={"name": "mnist", "path": None, "train_size": N}, train={"epochs": 1, "mini_batch_size": mini_batch_size},
    ))


@pytest.fixture(scope="module", params=[1, 3], ids=["depth1", "depth3"])
def oracle(request):
    """(initial params, params after one full-batch nnx epoch): shuffling cannot matter."""
    spec = book_spec(request.param, N)
    params = nnx.init(jax.random.PRNGKey(0), spec.net)
    start = [(np.asarray(layer["w"]), np.asarray(layer["b"])) for layer in params]
    after, _ = nnx.make_epoch(spec)(params, spec.optimizer.init(params), jax.random.PRNGKey(1), jnp.asarray(x), jnp.asarray(y))
    return start, [(np.asarray(layer["w"]), np.asarray(layer["b"])) for layer in after]


def assert_params_close(got, want):
    assert len(got) == len(want)
    for (w, b), (w_want, b_want) in zip(got, want):
        assert w.shape == w_want.shape and b.shape == b_want.shape
        np.testing.assert_allclose(w, w_want, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(b, b_want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["numpy_book", "numpy_vectorized", "torch"])
def test_one_full_batch_epoch_equals_nnx(oracle, name):
    if name == "torch":
        pytest.importorskip("torch")
    start, want = oracle
    got = baselines.BASELINES[name](start, x, y, N, ETA, rng=0)
    assert_params_close(got, want)
    assert not np.allclose(got[0][1], start[0][1])  # the step moved the params
    # torch flushed subnormals only while it trained: the process computes with them again
    assert np.float32(1e-45) * np.float32(1.0) > 0


def test_baselines_cut_the_same_mini_batches():
    """With one seed every baseline visits the same mini-batches in the same order (m < N here)."""
    spec = book_spec(2, 5)
    params = nnx.init(jax.random.PRNGKey(0), spec.net)
    start = [(np.asarray(layer["w"]), np.asarray(layer["b"])) for layer in params]
    want = baselines.numpy_book(start, x, y, 5, ETA, rng=7)
    assert_params_close(baselines.numpy_vectorized(start, x, y, 5, ETA, rng=7), want)
    assert not np.allclose(baselines.numpy_book(start, x, y, 5, ETA, rng=8)[0][0], want[0][0])
    if importlib.util.find_spec("torch"):  # an optional extra; the test above reports its skip
        assert_params_close(baselines.torch_eager(start, x, y, 5, ETA, rng=7), want)


@pytest.mark.parametrize("baseline", ["torch_eager", "torch_conv"])
def test_torch_missing_says_how_to_install(monkeypatch, baseline):
    import builtins

    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch":
            raise ImportError("No module named 'torch'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    with pytest.raises(ImportError, match="pip install torch==2.13.0"):
        getattr(baselines, baseline)([], x, y, N, ETA)
