"""Probes and batch norm against formulas computed independently (numpy, jax.jacfwd, Saxe's isometry)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnx
import roundoff
from conftest import image_deltas, tiny_cfg
from nnx import model, probes, programs, train
from nnx.registry import ConfigError
from nnx.spec import build

ALL_KINDS = {"size": 40, "kinds": ["activations", "histograms", "jacobians"], "jacobian_examples": 3}


def _setup(**overrides):
    spec = build(tiny_cfg(**{"model": {"depth": 3, "width": 12}, "probes": ALL_KINDS, **overrides}))
    params = model.init(jax.random.PRNGKey(1), spec.net)
    x = jax.random.uniform(jax.random.PRNGKey(2), (40, 784))
    y = jnp.arange(40) % 10
    return spec, params, x, y


def _numpy_forward(params, x, phi):
    """[(z^l, a^l)] per hidden layer in float64, written out by hand."""
    a, out = np.asarray(x, np.float64), []
    for layer in params[:-1]:
        z = a @ np.asarray(layer["w"], np.float64).T + np.asarray(layer["b"], np.float64)
        a = phi(z)
        out.append((z, a))
    return out


def test_activation_statistics_match_numpy():
    spec, params, x, y = _setup(activation={"name": "tanh"})
    measured = jax.jit(probes.probe_fn(spec, ("activations",)))(params, x, y)["scalars"]
    traced, _ = model.trace(spec.net, params, x)  # nnx's float32 z and a, to size their round-off
    for l, ((z, a), (z32, a32)) in enumerate(zip(_numpy_forward(params, x, np.tanh), traced), 1):
        # The probe's float32 z and a err by another CPU's draw of the round-off measured here (roundoff.ELSEWHERE);
        # each statistic adds its own roundings.
        err_z = roundoff.ELSEWHERE * np.max(np.abs(np.asarray(z32, np.float64) - z))
        err_a = roundoff.ELSEWHERE * np.max(np.abs(np.asarray(a32, np.float64) - a))
        # A mean of 480 values: their error, plus its own sum in any order, gamma_481 times the mean of |z|.
        np.testing.assert_allclose(measured[f"pre_mean/hidden_{l}"], z.mean(), rtol=0,
                                   atol=err_z + roundoff.gamma(z.size + 1) * np.abs(z).mean())
        # std is 1-Lipschitz in the values' rms change (<= err_a) and its own sums of squares add gamma_483
        # relative: 4e-5 at most here, inside rtol 1e-4 (measured 1e-7).
        np.testing.assert_allclose(measured[f"act_std/hidden_{l}"], a.std(), rtol=1e-4)
        # A percentile moves by at most its values' largest error (sorted values are 1-Lipschitz in the max
        # norm; the interpolation is a convex combination, 3 roundings): err_z ~ 3e-6 here; these are looser.
        np.testing.assert_allclose(measured[f"pre_p85/hidden_{l}"], np.percentile(z, 85), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(measured[f"act_p02/hidden_{l}"], np.percentile(a, 2), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(measured[f"unit_pre_p15/hidden_{l}"], np.percentile(z[:, 0], 15), rtol=1e-4, atol=1e-5)
        # A count above a threshold: only values within err_a of |a| = 0.99 can count either way.
        either_way = np.sum(np.abs(np.abs(a) - 0.99) <= err_a)
        saturated = round(float(measured[f"saturation/hidden_{l}"]) * a.size)
        assert abs(saturated - np.sum(np.abs(a) > 0.99)) <= either_way, (saturated, either_way)


def test_histograms_count_every_value_and_deltas_average_to_the_bias_gradient():
    spec, params, x, y = _setup()
    out = jax.jit(probes.probe_fn(spec, ("histograms",)))(params, x, y)
    for l in range(1, 4):
        assert int(out["arrays"][f"hist/activation/hidden_{l}"].sum()) == 40 * 12
        assert int(out["arrays"][f"hist/delta/hidden_{l}"].sum()) == 40 * 12
    assert int(out["arrays"]["hist/weight_grad/layer_1"].sum()) == 12 * 784
    # Sigmoid activations lie in (0, 1): a histogram over [0, 1] with values that all sit in one half.
    counts = np.asarray(probes.histogram(jnp.array([0.1, 0.2, 0.7, 5.0, -3.0]), 0.0, 1.0, bins=2))
    np.testing.assert_array_equal(counts, [3, 2])  # 5.0 and -3.0 clipped into the edge bins

    deltas = image_deltas(spec, params, x, y)
    for l in range(3):
        # Two float32 programs, the same backprop (deltas within a few u of each other, inside rtol 1e-5);
        # each may sum the 40 rows in its own order: gamma_41 times the mean |delta| apiece, where a mean cancels.
        either_order = 2 * roundoff.gamma(41) * np.mean(np.abs(np.asarray(deltas[l], np.float64)), axis=0)
        mean = np.asarray(jnp.mean(deltas[l], axis=0), np.float64)
        roundoff.assert_within(out["bias_grad"][l], mean, either_order + 1e-5 * np.abs(mean))
    rms = jax.jit(probes.probe_fn(spec, ("activations",)))(params, x, y)["scalars"]["delta_rms/hidden_2"]
    # float32 against float64 of the same deltas: a mean of 40 sums of 12 squares (positive terms, no
    # cancellation) errs by at most gamma_482 relative (2.9e-5); the deltas' own few-u differences fit inside.
    np.testing.assert_allclose(rms, np.sqrt(np.mean(np.sum(np.asarray(deltas[1], np.float64) ** 2, axis=1))),
                               rtol=roundoff.gamma(40 * 12 + 2))


def test_layer_and_end_to_end_jacobians_match_jacfwd():
    spec, params, x, _y = _setup(activation={"name": "tanh"})
    scalars, arrays = probes.jacobian_measures(spec.net, params, x[:3])
    hidden_maps = [lambda a, layer=layer: jnp.tanh(a @ layer["w"].T + layer["b"]) for layer in params[:-1]]
    singular = {l: [] for l in range(1, 4)}
    spectra = []
    for row in x[:3]:
        a = row
        for l, f in enumerate(hidden_maps, 1):
            singular[l].append(np.linalg.svd(np.asarray(jax.jacfwd(f)(a)), compute_uv=False).mean())
            if l == 1:
                a1 = f(a)
            a = f(a)
        end_to_end = jax.jacfwd(lambda a1: hidden_maps[2](hidden_maps[1](a1)))(a1)
        spectra.append(np.linalg.svd(np.asarray(end_to_end), compute_uv=False))
    # Layer Jacobians diag(tanh'(z)) w: the same float32 entries up to z's round-off (measured 7e-8
    # relative in the singular values' mean); rtol 1e-4 is >100x that.
    for l in range(1, 4):
        np.testing.assert_allclose(scalars[f"jacobian_sv_mean/hidden_{l}"], np.mean(singular[l]), rtol=1e-4)
    spectra = np.concatenate(spectra)
    # The end-to-end J = J3 J2 is a float32 product (12 terms) on each side: each errs by at most
    # gamma_12 |J3||J2| <= gamma_12 |w3||w2| (|tanh'| <= 1), and by Weyl each singular value moves by at most
    # that matrix's 2-norm, an absolute error: it decides the smallest values (5.8e-5 here), rtol the rest.
    product_error = roundoff.gamma(12) * np.linalg.norm(np.abs(np.asarray(params[2]["w"], np.float64)) @ np.abs(np.asarray(params[1]["w"], np.float64)), 2)
    np.testing.assert_allclose(np.sort(arrays["spectrum/io_jacobian"]), np.sort(spectra), rtol=1e-4, atol=2 * product_error)
    # Var(sigma^2) is led by the largest values: 2 sigma_max times the error above over Var, <= 4e-4 relative.
    np.testing.assert_allclose(scalars["io_jacobian/sq_sv_var"], np.var(spectra**2), rtol=1e-3)


def test_deep_linear_orthogonal_net_is_an_exact_isometry():
    """Saxe et al. 2014: a product of orthogonal matrices has every singular value 1, at any depth;
    with scaled Gaussian weights the squared singular values spread out."""
    cfg = {"model": {"depth": 8, "width": 32}, "activation": {"name": "identity"}, "probes": ALL_KINDS}
    x = jax.random.uniform(jax.random.PRNGKey(2), (3, 784))
    spreads = {}
    for init in ({"name": "orthogonal", "gain": 1.0}, {"name": "gaussian", "sigma_w2": 1.0}):
        spec = build(tiny_cfg(init=init, **cfg))
        params = model.init(jax.random.PRNGKey(0), spec.net)
        scalars, arrays = probes.jacobian_measures(spec.net, params, x)
        spreads[init["name"]] = float(scalars["io_jacobian/sq_sv_var"])
        if init["name"] == "orthogonal":
            # 7 float32 factors of 32x32 (J = w: identity), each orthogonal to float32's QR accuracy (~n u),
            # multiplied 6 times: by Weyl the singular values move from 1 by about 7 * 32 u + 6 gamma_32 ~ 2.5e-5
            # (measured 9e-7); rtol 1e-4 holds it.
            np.testing.assert_allclose(arrays["spectrum/io_jacobian"], 1.0, rtol=1e-4)
    assert spreads["orthogonal"] < 1e-6 and spreads["gaussian"] > 0.5


def test_batch_norm_standardises_each_unit_over_the_batch():
    spec, params, x, _y = _setup(model={"depth": 2, "width": 12, "batch_norm": True}, probes={"size": 40, "kinds": ["activations"]})
    assert set(params[0]) == {"w", "b", "gamma", "beta"} and set(params[-1]) == {"w", "b"}
    params[0]["gamma"] = jnp.full((12,), 2.0)
    params[0]["beta"] = jnp.full((12,), -1.0)
    hidden, _ = model.trace(spec.net, params, x)
    z = np.asarray(x, np.float64) @ np.asarray(params[0]["w"], np.float64).T + np.asarray(params[0]["b"], np.float64)
    expected = 2.0 * (z - z.mean(0)) / np.sqrt(z.var(0) + nnx.layers.BN_EPSILON) - 1.0
    # float32 batch norm against float64: z's round-off is divided by each unit's std over the batch and
    # doubled by gamma = 2, with the mean's and var's own (measured 1.3e-5 at most, 2.4e-3 relative near 0):
    # atol 1e-4 and rtol 1e-3 hold 24x the error seen, more than another CPU's draw (roundoff.ELSEWHERE).
    np.testing.assert_allclose(hidden[0][0], expected, rtol=1e-3, atol=1e-4)
    plain = build(tiny_cfg(model={"depth": 2, "width": 12}))
    assert nnx.num_params(spec.net) == nnx.num_params(plain.net) + 4 * 12


def test_batch_norm_trains_and_its_gradient_matches_finite_differences():
    spec, params, x, y = _setup(model={"depth": 2, "width": 12, "batch_norm": True}, probes={"size": 40})
    loss = jax.jit(programs.make_loss(spec))  # one program each, not one per eager operation and shape
    g = jax.jit(jax.grad(loss))(params, x, y)
    eps = 1e-3
    # The difference quotient in float64 from the same params: in float32 it resolves only ulp(C) / (2 eps)
    # = 4.8e-4 (C ~ 8.7), more than gamma's gradient (0.015) is allowed to miss by, so one ulp of another
    # CPU's cost would fail it; in float64 the quotient errs by its truncation, eps^2 / 6 C''' (measured 6e-9).
    with jax.enable_x64(True):
        params64 = jax.tree.map(lambda t: jnp.asarray(t, jnp.float64), params)
        x64 = jnp.asarray(x, jnp.float64)
        for key in ("gamma", "beta"):
            bumped = jax.tree.map(lambda t: t, params64)
            bumped[1][key] = params64[1][key].at[3].add(eps)
            lowered = jax.tree.map(lambda t: t, params64)
            lowered[1][key] = params64[1][key].at[3].add(-eps)
            numeric = float((loss(bumped, x64, y) - loss(lowered, x64, y)) / (2 * eps))
            # float32's gradient errs by ~1e-6 relative here (a mean over 40 examples through batch norm): 2e-2
            # and 1e-5 are far looser than both, kept from the float32 quotient, still far from a wrong gradient.
            np.testing.assert_allclose(g[1][key][3], numeric, rtol=2e-2, atol=1e-5)


def test_a_batch_normalised_layer_is_probed_by_its_shift_beta():
    """The batch mean takes b out again, so dC/db is zero in exact arithmetic and float32 leaves only
    round-off in it; chapter 5's measure of that layer (the norm of the mean delta, taken after the
    normalisation) is the gradient of the shift beta, from jax.grad here."""
    spec, params, x, y = _setup(model={"depth": 2, "width": 12, "batch_norm": True}, probes={"size": 40, "kinds": ["activations"]})
    out = jax.jit(probes.probe_fn(spec, ("activations",)))(params, x, y)
    g = jax.jit(jax.grad(programs.make_loss(spec)))(params, x, y)
    beta, b = np.asarray(g[0]["beta"], np.float64), np.asarray(g[0]["b"], np.float64)
    # Two float32 programs, the same backprop summed over 40 images in each one's order: rtol 1e-4 for
    # their few-u differences (as the plain layers' probe test).
    np.testing.assert_allclose(out["grad_norm"][0], np.linalg.norm(beta), rtol=1e-4)
    np.testing.assert_allclose(out["bias_grad"][0], beta, rtol=1e-4, atol=1e-4 * np.abs(beta).max())
    np.testing.assert_allclose(out["scalars"]["bias_grad_std/hidden_1"], beta.std(), rtol=1e-3)
    # dC/db by hand in float64: each image's delta back through the normalisation, (scale / sigma)(delta -
    # mean delta - zhat mean(delta zhat)); the 40 terms cancel, and float32's sum of them can miss zero
    # by Higham's gamma_44 of their magnitudes (4 more for each term's own few roundings). Measured: 1.2%
    # of that bound.
    delta = np.asarray(image_deltas(spec, params, x, y)[0], np.float64)
    z = np.asarray(x, np.float64) @ np.asarray(params[0]["w"], np.float64).T + np.asarray(params[0]["b"], np.float64)
    sigma = np.sqrt(z.var(0) + nnx.layers.BN_EPSILON)
    zhat = (z - z.mean(0)) / sigma
    terms = np.asarray(params[0]["gamma"], np.float64) / sigma * (delta - delta.mean(0) - zhat * (delta * zhat).mean(0))
    np.testing.assert_allclose(terms.sum(0), 0.0, atol=1e-12)  # the formula: zero in exact arithmetic
    assert np.all(np.abs(b) <= roundoff.gamma(len(x) + 4) * np.abs(terms).sum(0) / len(x))


def test_schedule_measures_everything_at_the_ends():
    spec = build(tiny_cfg(probes={**ALL_KINDS, "every": 3, "jacobian_every": 0}, train={"epochs": 7}))
    assert probes.kinds_at(spec, 0, 7) == ("activations", "histograms", "jacobians")
    assert probes.kinds_at(spec, 3, 7) == ("activations", "histograms")
    assert probes.kinds_at(spec, 4, 7) == ()
    assert probes.kinds_at(spec, 7, 7) == ("activations", "histograms", "jacobians")


def test_fit_records_arrays_with_their_steps_and_epochs_zero_measures_the_init():
    spec = build(tiny_cfg(model={"depth": 2, "width": 8}, probes={**ALL_KINDS, "every": 2}, train={"epochs": 3}))
    data = spec.load_data()
    _, history = train.fit(spec, data, key=jax.random.PRNGKey(0))
    assert list(history["probe_steps/hist"]) == [0, 2, 3] and history["hist/activation/hidden_1"].shape == (3, probes.BINS)
    assert list(history["probe_steps/spectrum"]) == [0, 3] and len(history["io_jacobian/sq_sv_mean"]) == 2
    assert len(history["grad_norm/hidden_1"]) == 4  # chapter 5's gradients: every step
    spec0 = build(tiny_cfg(model={"depth": 2, "width": 8}, probes=ALL_KINDS, train={"epochs": 0}))
    _, history = train.fit(spec0, data, key=jax.random.PRNGKey(0))
    assert "val_accuracy" not in history and len(history["act_std/hidden_2"]) == 1


@pytest.mark.parametrize("probes_cfg,model_cfg,message", [
    ({"size": 40, "kinds": ["spectra"]}, {}, "probes.kinds"),
    ({"size": 40, "kinds": ["jacobians"]}, {"batch_norm": True}, "batch-normalised"),
    ({"size": 40, "jacobian_examples": 41}, {}, "probes.jacobian_examples"),
    ({"size": 40, "every": 0}, {}, "probes.every"),
    ({"size": 40}, {"batch_norm": "yes"}, "model.batch_norm"),
])
def test_bad_probe_settings_are_refused(probes_cfg, model_cfg, message):
    with pytest.raises(ConfigError, match=message):
        build(tiny_cfg(probes=probes_cfg, model={"depth": 2, "width": 8, **model_cfg}))
