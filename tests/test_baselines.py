"""nnx-bench's baselines against nnx's own epoch: the benchmark must time the same algorithm."""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx
import roundoff
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
    """One or a few SGD steps, w' = w - eta g, by two programs (float32, or numpy_book's float64): w' errs by
    its own rounding, u |w'| <= 3e-7 for the large init's |w| <= 5, plus eta = 3 times g's error, a mean of
    per-example backprops through 784-term sums. Measured: 3.4e-7 at most (AVX2 and SSE4.2 XLA, numpy, torch);
    1e-5 + 1e-5 |w| holds 30x that, more than another CPU's draw of the same roundings (roundoff.ELSEWHERE)."""
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


def test_book_run_counts_as_nnx_and_imports_only_numpy(tmp_path):
    """The whole-command bench's book side: network.py's evaluate agrees with nnx's accuracy on the
    same params, and the book's process never imports JAX (it would pay nnx's start-up)."""
    import gzip
    import pickle
    import subprocess
    import sys

    from nnx.edges.bench import book_run

    spec = book_spec(1, N)
    params = nnx.init(jax.random.PRNGKey(3), spec.net)
    test = [(xi.reshape(784, 1), yi) for xi, yi in zip(x, y)]
    z = nnx.feedforward(spec.net, params, jnp.asarray(x))[0]
    ours = int(jnp.sum(jnp.argmax(z, axis=1) == y))
    # numpy's float32 products and XLA's round differently: only an image whose top two outputs are within
    # another program's draw of float32's error (roundoff.ELSEWHERE times the error measured here) can count
    # either way (none, at this seed).
    _, (z64, _) = roundoff.dense_forward(params, x, "sigmoid")
    err_z = roundoff.ELSEWHERE * np.max(np.abs(np.asarray(z, np.float64) - z64))
    either_way = int(roundoff.ambiguous(z64, np.full_like(z64, err_z)).sum())
    assert abs(book_run.evaluate([(np.asarray(p["w"]), np.asarray(p["b"])) for p in params], test) - ours) <= either_way

    book = tmp_path / "mnist.pkl.gz"
    with gzip.open(book, "wb") as f:
        pickle.dump(((x, y), (x, y), (x, y)), f)
    script = (f"import runpy, sys; sys.argv = ['book_run', {str(book)!r}, '1']; "
              f"runpy.run_path({book_run.__file__!r}, run_name='__main__'); "
              "assert 'jax' not in sys.modules and 'nnx' not in sys.modules, 'imported'")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Epoch 0: ") and out.stdout.strip().endswith(f"/ {N}")
