"""nnx.layers against direct numpy loops (float64), and conv nets end to end at a small size."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx
import roundoff
from conftest import image_deltas, tiny_cfg
from nnx import layers, model, probes, programs, train
from nnx.registry import ConfigError

CONV = {"name": "conv", "conv_maps": [3, 4], "kernel": 5, "pool": 2, "fc": [6], "dropout": 0.0,
        "output_activation": "softmax", "zero_output": False}


def conv_cfg(**model_overrides):
    return tiny_cfg(model={**CONV, **model_overrides}, cost={"name": "log_likelihood"}, init={"name": "network3"},
                    activation={"name": "relu"}, probes={"size": 20})


def numpy_conv(x, w):
    """Valid, stride-1 cross-correlation by loops: out[n, m, i, j] = sum_c,p,q x[n, c, i+p, j+q] w[m, c, p, q]."""
    n, _c, h, wd = x.shape
    maps, _, k, _ = w.shape
    out = np.zeros((n, maps, h - k + 1, wd - k + 1))
    for i in range(h - k + 1):
        for j in range(wd - k + 1):
            out[:, :, i, j] = np.einsum("ncpq,mcpq->nm", x[:, :, i:i + k, j:j + k], w)
    return out


def numpy_pool(x, s):
    n, c, h, w = x.shape
    out = np.full((n, c, h // s, w // s), -np.inf)
    for i in range(h // s * s):
        for j in range(w // s * s):
            out[:, :, i // s, j // s] = np.maximum(out[:, :, i // s, j // s], x[:, :, i, j])
    return out


def channels_last(x):
    """network3's [n, c, h, w] as nnx's images flow, [n, h, w, c]."""
    return jnp.asarray(x).transpose(0, 2, 3, 1)


def channels_first(x):
    return np.asarray(x).transpose(0, 3, 1, 2)


@pytest.mark.parametrize("impl", ["im2col", "xla"])  # either convolution, on whatever platform this is
def test_conv_and_pool_match_numpy_loops_and_the_pool_comes_before_bias_and_activation(impl):
    rng = np.random.default_rng(0)
    x, w, b = rng.normal(size=(2, 3, 10, 10)), rng.normal(size=(4, 3, 3, 3)), rng.normal(size=4)
    decreasing = lambda z: -z
    layer = layers.conv(4, 3, None, decreasing, pool=2, impl=impl)
    with jax.enable_x64(True):
        z = channels_first(layer.weighted({"w": w, "b": b}, channels_last(x)))
        a = np.asarray(layer.activation(z))
    expected = numpy_pool(numpy_conv(x, w), 2) + b[None, :, None, None]
    # float64 both, 27-term sums in other orders: gamma_28 u64 sum|x||w| ~ 3e-15 x 17 = 5e-14 at worst (measured 5e-15);
    # 1e-12 is far looser, far tighter than a wrong index. The max-pool and flatten below are exact operations.
    np.testing.assert_allclose(z, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(a, -expected, rtol=1e-12)  # sigma(pool(conv) + b), not pool(sigma(conv + b))
    assert not np.allclose(a, numpy_pool(-(numpy_conv(x, w) + b[None, :, None, None]), 2))
    with jax.enable_x64(True):
        np.testing.assert_array_equal(channels_first(layers.max_pool(2).apply({}, channels_last(x))), numpy_pool(x, 2))
        # flatten reads the maps in network3's (c, h, w) order, whatever order the images flow in
        np.testing.assert_array_equal(np.asarray(layers.flatten().apply({}, channels_last(x))), x.reshape(2, -1))


def test_conv_and_pool_gradients_match_finite_differences():
    rng = np.random.default_rng(1)
    x, w, b = rng.normal(size=(2, 2, 8, 8)), rng.normal(size=(3, 2, 3, 3)), rng.normal(size=3)
    layer = layers.conv(3, 3, None, jnp.tanh, pool=2)
    direction = rng.normal(size=(2, 3, 3, 3))

    def f(w, b):
        return jnp.sum(jnp.asarray(direction) * layer.activation(layer.weighted({"w": w, "b": b}, channels_last(x))))

    # A difference quotient errs by its truncation, eps^2 / 6 f''' (~1e-12), and by f's round-off over eps:
    # f sums 54 terms d tanh(z), each z a 19-term sum (float64, any order), so f errs by at most
    # gamma_54 sum|d tanh(z)| + sum|d| (gamma_19 (|x| * |w| + |b|) + ULPS_PHI u64) (Higham), divided by eps.
    # The rounding in f(w + step) and f(w - step) mostly coincides (measured 9e-10 at most), but not by design.
    magnitude = numpy_pool(numpy_conv(np.abs(x), np.abs(w)), 2) + np.abs(b)[None, :, None, None]  # >= |z| and its terms
    a = np.tanh(numpy_pool(numpy_conv(x, w), 2) + b[None, :, None, None])
    f_error = (roundoff.gamma(54, roundoff.U64) * np.sum(np.abs(direction * a))
               + np.sum(np.abs(direction) * (roundoff.gamma(19, roundoff.U64) * magnitude + roundoff.ULPS_PHI * roundoff.U64)))
    with jax.enable_x64(True):
        f = jax.jit(f)  # one compile, not a dispatch per operation for each of the 13 evaluations
        gw, gb = jax.jit(jax.grad(f, argnums=(0, 1)))(jnp.asarray(w), jnp.asarray(b))
        eps = 1e-6
        for index in [(0, 0, 0, 0), (1, 1, 2, 1), (2, 0, 1, 2)]:
            step = np.zeros_like(w)
            step[index] = eps
            numeric = (f(w + step, b) - f(w - step, b)) / (2 * eps)
            np.testing.assert_allclose(gw[index], numeric, rtol=1e-6, atol=f_error / eps)
        for m in range(3):
            step = np.zeros(3)
            step[m] = eps
            np.testing.assert_allclose(gb[m], (f(w, b + step) - f(w, b - step)) / (2 * eps), rtol=1e-6, atol=f_error / eps)


def test_parameter_counts_shared_weights_against_a_fully_connected_layer():
    """The book: 20 maps of 5x5 shared weights are 520 parameters; an FC layer 784 -> 30 has 23,550."""
    conv = model.Net((layers.conv(20, 5, nnx.INITIALIZERS["network3"](), jax.nn.sigmoid, pool=2), layers.flatten(),
                      layers.dense(10, nnx.INITIALIZERS["network3"](), jax.nn.softmax)), (28, 28, 1))
    assert nnx.num_params(conv) == 20 * (25 + 1) + (20 * 12 * 12 + 1) * 10
    fc = nnx.model.mlp((784, 30, 10), nnx.INITIALIZERS["default"](), jax.nn.sigmoid, jax.nn.sigmoid)
    assert nnx.num_params(fc) - 31 * 10 == 23_550
    params = nnx.init(jax.random.PRNGKey(0), conv)
    assert params[0]["w"].shape == (20, 1, 5, 5) and params[1] == {} and params[2]["w"].shape == (10, 2880)


def test_dropout_keeps_1_minus_p_without_rescaling_and_scales_at_test_time():
    drop = layers.dropout(0.5)
    x = jnp.arange(1.0, 1001.0)[None, :]
    kept = [np.asarray(drop.apply({}, x, key=jax.random.PRNGKey(s), train=True)) for s in range(50)]
    fraction = np.mean([np.mean(k != 0) for k in kept])
    assert abs(fraction - 0.5) < 0.01  # 50,000 draws: sd 0.0022
    assert all(np.array_equal(k[k != 0], np.asarray(x)[k != 0]) for k in kept)  # no 1 / (1 - p) rescaling
    assert not np.array_equal(kept[0], kept[1])
    np.testing.assert_array_equal(drop.apply({}, x, key=jax.random.PRNGKey(0), train=True), kept[0])  # same key, same mask
    np.testing.assert_allclose(drop.apply({}, x, train=False), 0.5 * x)  # halving is exact in binary floating point


def test_dropout_masks_come_from_the_epoch_key_and_differ_between_steps():
    spec = nnx.build(conv_cfg(dropout=0.5, conv_maps=[2], fc=[8]))
    data = nnx.load(train_size=100)
    x, y = jnp.asarray(data.train.x), jnp.asarray(data.train.y)
    params = nnx.init(jax.random.PRNGKey(0), spec.net)
    epoch = jax.jit(programs.epoch_fn(spec))
    run = lambda key: epoch(params, spec.optimizer.init(params), key, programs.epoch_order(spec, np.asarray(key), len(y)), x, y)[0]
    same, again, other = run(jax.random.PRNGKey(3)), run(jax.random.PRNGKey(3)), run(jax.random.PRNGKey(4))
    assert jax.tree.all(jax.tree.map(np.array_equal, same, again))
    assert not np.array_equal(same[-1]["w"], other[-1]["w"])
    # Two steps with the same batch but successive keys drop different units: their gradients differ.
    loss = programs.make_loss(spec)
    g1, g2 = (jax.jit(jax.grad(loss))(params, x[:10], y[:10], k) for k in jax.random.split(jax.random.PRNGKey(5)))
    assert not np.allclose(g1[3]["w"], g2[3]["w"])


@pytest.mark.parametrize("overrides,named", [
    ({"conv_maps": [20, 40, 80]}, "a 5x5 kernel on a 4x4 map"),
    ({"kernel": 4}, "a 2x2 pool does not divide conv layer 1's 25x25 map"),
    ({"conv_maps": [20, -1]}, "model.conv_maps=[20, -1]"),
    ({"fc": "100"}, "model.fc='100'"),
    ({"dropout": 1.0}, "model.dropout=1.0"),
])
def test_impossible_shapes_are_refused_when_the_config_is_built(overrides, named):
    with pytest.raises(ConfigError) as err:
        nnx.build(conv_cfg(**overrides))
    assert named in str(err.value) and ("Use " in str(err.value))


def test_jacobian_probes_are_refused_for_a_conv_net():
    cfg = conv_cfg()
    cfg["probes"]["kinds"] = ["jacobians"]
    with pytest.raises(ConfigError, match="model=conv has none"):
        nnx.build(cfg)


def test_conv_gradient_norms_are_the_norm_of_the_mean_bias_gradient_per_layer():
    """Chapter 5's measure on every layer with a weighted input, conv layers included."""
    cfg = conv_cfg()
    cfg["probes"]["kinds"] = ["activations", "histograms"]
    spec = nnx.build(cfg)
    data = nnx.load(train_size=20)
    x, y = jnp.asarray(data.train.x), jnp.asarray(data.train.y)
    params = nnx.init(jax.random.PRNGKey(0), spec.net)
    out = jax.jit(probes.probe_fn(spec, ("activations", "histograms")))(params, x, y)
    g = jax.jit(jax.grad(programs.make_loss(spec)))(params, x, y)
    hidden = spec.net.weighted[:-1]  # conv, conv, dense
    assert len(hidden) == 3 and out["grad_norm"].shape == (3,)
    # Two float32 programs, the same backprop: a bias gradient sums delta over 20 images and every position of
    # its map, in each program's own order, within gamma_n of the sum of |delta| (Higham); the norm is
    # 1-Lipschitz. rtol 1e-4 for the deltas' own few-u differences (measured 7e-7 relative).
    deltas = image_deltas(spec, params, x, y)  # each image's delta at each position
    for l, i in enumerate(hidden):
        d = np.abs(np.asarray(deltas[l], np.float64)) / len(x)  # the mean's terms
        terms = d.size // d.shape[-1]  # images times positions per map (or unit)
        either_order = 2 * roundoff.gamma(terms + 1) * np.linalg.norm(d.reshape(-1, d.shape[-1]).sum(0))
        np.testing.assert_allclose(out["grad_norm"][l], np.linalg.norm(g[i]["b"]), rtol=1e-4, atol=either_order)
    assert out["bias_grad"][0].shape == (3,)  # one bias per map
    assert np.isfinite(float(out["scalars"]["delta_rms/hidden_1"])) and out["arrays"]["hist/delta/hidden_2"].sum() == 20 * 4 * 4 * 4


def test_a_small_conv_net_learns_and_records_every_layer():
    cfg = conv_cfg(conv_maps=[4], fc=[16], zero_output=True)
    cfg["data"].update(train_size=500, validation_size=1000)
    cfg["train"].update(epochs=2, checkpoint_every=0, shuffle=False, eval_splits=["validation"])
    spec = nnx.build(cfg)
    params, history = nnx.fit(spec, spec.load_data(), key=jax.random.PRNGKey(0))
    assert params[-1]["w"].shape == (10, 16)
    assert history["val_accuracy"][0] < history["val_accuracy"][-1] and history["val_accuracy"][-1] > 0.3  # chance: 0.1
    assert {"grad_norm/hidden_1", "grad_norm/hidden_2", "weight_grad_norm/layer_3"} <= set(history)


LEGACY_RUNS = json.loads((Path(__file__).parent / "data" / "legacy_runs.json").read_text())


@pytest.mark.parametrize("name", ["mlp", "batch_norm_probes"])
def test_an_mlp_run_recorded_before_layers_trains_to_the_same_numbers(name, store):
    """Runs stored by nnx before models were built from layers (their config has no model.name,
    train.shuffle or train.eval_splits), trained again from that config, given the keys added since
    (nnx.migrate): every metric at every step (but the bias-gradient ones of batch-normalised layers,
    measured on another parameter since: below).

    They were recorded on another machine (another CPU, older JAX), so float32 round-off differs
    from the first product on and training carries it forward: each metric may differ by what
    nnx.numerics allows a rerun under other numerics (8 times the spread of twins trained here from
    an initialization nudged by one unit in the last place, plus 4 units in the last place; an
    accuracy by one example). Retrained on an AMD EPYC, the worst metric differed from the
    recording by 2.2 times that spread."""
    from nnx import numerics
    from nnx.edges import job, tracking
    from nnx.migrate import migrate

    uri, client = store
    recorded = LEGACY_RUNS[name]
    cfg = migrate({**recorded["config"], "tracking": {"uri": uri, "experiment": "legacy", "skip_finished": False}})
    job.run(cfg, name="again", tags={}, echo=lambda line: None)
    (run,) = tracking.find_runs(client, [client.get_experiment_by_name("legacy").experiment_id])
    assert set(run.data.metrics) == set(recorded["metrics"])
    ours = {}
    for key, points in recorded["metrics"].items():
        steps, ours[key], _ = tracking.metric_history(client, run.info.run_id, key)
        assert list(steps) == [s for s, _ in points], key
    then = {k: np.array([v for _, v in points]) for k, points in recorded["metrics"].items()}
    if cfg["model"].get("batch_norm"):
        # Recorded when a batch-normalised layer was probed by dC/db, zero in exact arithmetic (the batch
        # mean takes b out), now by dC/dbeta (nnx.probes._shift). What was recorded is round-off, checked
        # below 1e-6 of the deltas' size (delta_rms; 17 float32 units of it; 2.5e-7 recorded); its ratio
        # between layers is one round-off over another, which no tolerance bounds. Neither is compared.
        size = max(then[k].max() for k in then if k.startswith("delta_rms/"))
        for key in [k for k in then if k.startswith(("grad_norm/", "bias_grad_std/", "grad_ratio_first_last_"))]:
            assert key.startswith("grad_ratio") or np.all(np.abs(then[key]) <= 1e-6 * size), (key, then[key])
            del then[key]
    spec = nnx.build(cfg)
    tolerances = numerics.spread_tolerances(spec, spec.load_data(), cfg["seed"], ours)
    problems = numerics.beyond(then, ours, tolerances)
    assert problems == [], "\n".join(problems)


def test_conv_nets_with_dropout_train_as_vmapped_seeds_with_the_steps_of_separate_runs():
    """fit_many (one program for every seed, as nnx-reproduce ch6 trains its ensemble) takes each
    seed's own mini-batches, dropout masks and updates, to float32 round-off."""
    cfg = conv_cfg(conv_maps=[2], fc=[8], dropout=0.5)
    cfg["data"].update(train_size=60, validation_size=500)
    cfg["train"].update(epochs=2, checkpoint_every=0, shuffle=True, eval_splits=["validation"])
    spec = nnx.build(cfg)
    data = spec.load_data()
    states = {"together": {}, "alone": {}}
    together, histories = train.fit_many(spec, data, seeds=[3, 4], on_state=lambda i, e, p, s: states["together"].update({e: p}) if i == 1 else None)
    alone, alone_history = train.fit(spec, data, key=jax.random.PRNGKey(4),  # the second seed: not the batch's first row
                                     on_state=lambda e, p, s: states["alone"].update({e: p}))
    # 12 float32 steps in two programs (XLA's batched products sum in another order): measured 6e-8 at most
    # here (AVX2 and SSE4.2) on params of O(0.1-1); 1e-6 + 1e-5 |w| holds >70x that, more than another CPU's
    # draw of the same roundings (roundoff.ELSEWHERE), though steps carry round-off forward.
    for a, b in zip(jax.tree.leaves(together[1]), jax.tree.leaves(alone)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # Accuracies count images: one whose top two outputs are within the two runs' difference (another CPU's
    # draw of it: ELSEWHERE times the one measured after that epoch) can count either way; usually none.
    val = jnp.asarray(data.validation.x)
    outputs = jax.jit(lambda params: nnx.feedforward(spec.net, params, val)[0])  # one program, not one per operation
    for e, (got, want) in enumerate(zip(histories[1]["val_accuracy"], alone_history["val_accuracy"])):
        z_together, z_alone = (np.asarray(outputs(states[k][e]), np.float64) for k in ("together", "alone"))
        differ = roundoff.ELSEWHERE * max(np.max(np.abs(z_together - z_alone)), roundoff.U32 * np.max(np.abs(z_alone)))  # >= 1 rounding
        either_way = int(roundoff.ambiguous(z_alone, np.full_like(z_alone, differ)).sum())
        assert abs(round(float(got) * len(val)) - round(float(want) * len(val))) <= either_way, (e, got, want, either_way)
    assert not np.allclose(together[0][0]["w"], together[1][0]["w"])


def test_the_convolution_is_chosen_per_platform_checked_and_recorded():
    """model.conv_impl=auto: im2col on the CPU, XLA's convolution elsewhere (nnx.choices); a conv net
    built either way computes the same outputs to float32 rounding, and a run records which it used."""
    from nnx import choices

    assert choices.conv_impl("auto") == ("im2col" if jax.default_backend() == "cpu" else "xla")
    assert choices.conv_impl("xla") == "xla" and choices.conv_impl("im2col") == "im2col"
    with pytest.raises(ConfigError, match="model.conv_impl='fft' is invalid"):
        nnx.build(conv_cfg(conv_impl="fft"))
    nets = {impl: nnx.build(conv_cfg(conv_impl=impl)) for impl in ("im2col", "xla")}
    params = nnx.init(jax.random.PRNGKey(0), nets["xla"].net)
    x = nnx.load(train_size=20).train.x
    z = {impl: np.asarray(nnx.feedforward(spec.net, params, x)[0], np.float64) for impl, spec in nets.items()}
    # Two float32 programs summing each 25-term convolution (then 3x5x5 and the dense layers) in their own orders:
    # within a few hundred u of the outputs' scale (measured 1e-7 relative), far below a wrong kernel's O(1).
    np.testing.assert_allclose(z["xla"], z["im2col"], rtol=0, atol=1e-4 * np.max(np.abs(z["im2col"])))
    assert choices.tags(nets["xla"])["nnx.conv_impl"] == "xla"
    assert choices.tags(nnx.build(conv_cfg()))["nnx.conv_impl"] == choices.conv_impl("auto")
    assert "nnx.conv_impl" not in choices.tags(nnx.build(tiny_cfg()))  # an MLP has no convolution
