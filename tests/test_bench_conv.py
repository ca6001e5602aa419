"""nnx-bench's chapter 6 cases: torch_conv must train the same conv net, step for step, as nnx's epoch."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx
from conftest import tiny_cfg
from nnx.edges.bench import baselines, cases
from nnx.programs import epoch_fn, epoch_order

N, M, ETA, LMBDA = 40, 10, 0.1, 5.0  # 4 mini-batches; lmbda / N = 0.125: the L2 term is a visible part of each step
rng = np.random.default_rng(0)
x = rng.random((N, 784), dtype=np.float32)  # continuous pixels: no ties in a max-pool window, whose gradient
y = rng.integers(0, 10, N)  # routing torch (first maximum) and JAX (split among equals) would choose differently


def needs_torch():
    pytest.importorskip("torch", reason="torch is nnx-bench's optional extra: pip install torch==2.13.0")


def conv_spec(conv_maps, fc, *, lmbda=LMBDA, dropout=0.0, zero_output=False):
    """A small network3 net trained as nnx-bench's conv cases train (ReLU, log-likelihood, file order)."""
    return nnx.build(tiny_cfg(
        model={"name": "conv", "conv_maps": conv_maps, "fc": fc, "kernel": 5, "pool": 2, "dropout": dropout,
               "output_activation": "softmax", "zero_output": zero_output},
        activation={"name": "relu"}, init={"name": "network3"}, cost={"name": "log_likelihood"},
        optimizer={"name": "sgd", "eta": ETA, "lmbda": lmbda}, data={"name": "mnist", "path": None, "train_size": N},
        train={"epochs": 1, "mini_batch_size": M, "shuffle": False, "stop_on_divergence": True, "checkpoint_every": 1},
    ))


def as_numpy(params):
    return [{k: np.asarray(v) for k, v in layer.items()} for layer in params]


# two conv-pool layers and two FC layers (6.dropout's shape, small); one conv layer straight into the
# output; network3's zero output layer, with which the first step moves the output layer only
NETS = {"conv2_fc2": ([4, 6], [16, 12], False), "conv1": ([3], [], False), "zero_output": ([4, 6], [16], True)}


@pytest.mark.parametrize("net", NETS)
def test_one_epoch_equals_nnx(net):
    """From the same initial params, over the same 4 mini-batches in file order, with L2 on the
    weights: torch_conv ends where nnx's epoch ends, to float32 rounding."""
    needs_torch()
    conv_maps, fc, zero_output = NETS[net]
    spec = conv_spec(conv_maps, fc, zero_output=zero_output)
    start = nnx.init(jax.random.PRNGKey(0), spec.net)
    key = np.asarray(jax.random.PRNGKey(1))
    want, _ = jax.jit(epoch_fn(spec))(start, spec.optimizer.init(start), key, epoch_order(spec, key, len(y)), jnp.asarray(x), jnp.asarray(y))
    start, want = as_numpy(start), as_numpy(want)

    got = baselines.torch_conv(start, x, y, M, ETA, lmbda=LMBDA, rng=0)
    assert [sorted(layer) for layer in got] == [sorted(layer) for layer in want]  # {} kept at flatten
    for i, (layer, layer_want, layer_start) in enumerate(zip(got, want, start)):
        for k in layer:
            assert layer[k].shape == layer_want[k].shape and layer[k].dtype == np.float32
            # 4 float32 steps by two programs (torch's convolutions and XLA's im2col products sum 25-150 terms
            # in their own orders): measured 7.5e-8 at most (AVX2 and SSE4.2 XLA); the params are O(0.1-1),
            # and 1e-5 + 1e-4 |w| holds >100x that, more than another CPU's draw (roundoff.ELSEWHERE).
            np.testing.assert_allclose(layer[k], layer_want[k], rtol=1e-4, atol=1e-5, err_msg=f"layer {i} {k}")
            assert not np.allclose(layer[k], layer_start[k]), f"layer {i} {k} did not move: the test would prove nothing"


def test_l2_and_mini_batches_matter():
    """The comparison above is sharp: without L2, or with one more mini-batch, the params differ."""
    needs_torch()
    spec = conv_spec([4, 6], [16])
    start = as_numpy(nnx.init(jax.random.PRNGKey(0), spec.net))
    ref = baselines.torch_conv(start, x, y, M, ETA, lmbda=LMBDA)
    no_l2 = baselines.torch_conv(start, x, y, M, ETA, lmbda=0.0)
    remainder = baselines.torch_conv(start, x[:N - 1], y[:N - 1], M, ETA, lmbda=LMBDA, n=N)  # 39 images: 3 mini-batches
    # test_one_epoch_equals_nnx's tolerance: these differences are more than round-off could make
    assert not np.allclose(ref[0]["w"], no_l2[0]["w"], rtol=1e-4, atol=1e-5)
    assert not np.allclose(ref[0]["w"], remainder[0]["w"], rtol=1e-4, atol=1e-5)
    three = baselines.torch_conv(start, x[:30], y[:30], M, ETA, lmbda=LMBDA, n=N)
    for a, b in zip(remainder, three):  # the short last mini-batch is dropped, as nnx drops it: the same steps, exactly
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_network3_dropout_zeroes_without_rescaling():
    """network3's dropout_layer: units become 0 with probability p, the others keep their value exactly."""
    needs_torch()
    import torch

    a = torch.full((200, 500), 3.0)
    for p in (0.5, 0.2):
        out = baselines.network3_dropout(a, p, torch.Generator().manual_seed(0))
        assert out.shape == a.shape and set(out.unique().tolist()) <= {0.0, 3.0}  # no 1 / (1 - p)
        kept = (out == 3.0).float().mean().item()
        assert abs(kept - (1 - p)) < 0.01, (p, kept)  # 100,000 draws: sd of the fraction ~0.0016
    same = baselines.network3_dropout(a, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(same, baselines.network3_dropout(a, 0.5, torch.Generator().manual_seed(0)))
    assert torch.equal(baselines.network3_dropout(a, 0.0, torch.Generator().manual_seed(0)), a)


def test_dropout_epoch_keeps_layout_and_follows_rng():
    """With dropout the epoch's layout is nnx's (dropout's {} included) and the masks come from rng."""
    needs_torch()
    spec = conv_spec([4, 6], [16, 12], lmbda=0.0, dropout=0.5)
    start = as_numpy(nnx.init(jax.random.PRNGKey(0), spec.net))
    assert [layer.kind for layer in spec.net.layers] == ["conv", "conv", "flatten", "dropout", "dense", "dropout", "dense", "dropout", "dense"]
    got = baselines.torch_conv(start, x, y, M, ETA, dropout=0.5, rng=0)
    assert [{k: v.shape for k, v in layer.items()} for layer in got] == [{k: v.shape for k, v in layer.items()} for layer in start]
    assert all(np.isfinite(v).all() for layer in got for v in layer.values())
    again, other = (baselines.torch_conv(start, x, y, M, ETA, dropout=0.5, rng=seed) for seed in (0, 1))
    np.testing.assert_array_equal(got[4]["w"], again[4]["w"])
    assert not np.allclose(got[4]["w"], other[4]["w"])
    assert not np.allclose(got[4]["w"], baselines.torch_conv(start, x, y, M, ETA, rng=0)[4]["w"])


@pytest.mark.parametrize("name", list(cases.CONV_CASES))
def test_bench_conv_cases_build_the_chapter_6_nets(name):
    """Each conv case is nnx's own config: the net, ReLU, eta, lmbda, file order; torch_conv reads its params."""
    case = cases.CONV_CASES[name]
    spec = nnx.build(cases.conv_config(case, 50_000))
    kinds = [layer.kind for layer in spec.net.layers]
    assert kinds.count("conv") == len(case.conv_maps) and kinds.count("dense") == len(case.fc) + 1
    assert kinds.count("dropout") == (len(case.fc) + 1 if case.dropout else 0)
    assert (spec.activation_name, spec.lmbda, spec.shuffle, spec.mini_batch_size) == ("relu", case.lmbda, False, 10)
    shapes = [{k: v.shape for k, v in layer.items()} for layer in nnx.init(jax.random.PRNGKey(0), spec.net)]
    assert shapes[0] == {"w": (20, 1, 5, 5), "b": (20,)} and shapes[1] == {"w": (40, 20, 5, 5), "b": (40,)}
    assert [s["w"][0] for s in shapes if s and len(s["w"]) == 2] == [*case.fc, 10]
