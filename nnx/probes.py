"""Per-layer measurements on a fixed probe batch: chapter 5's gradients and the papers beyond it.

Always measured (chapter 5): dC/db^l averaged over the probe images (one jax.grad of their mean
cost: the book's "norm of the mean"), its norm per hidden layer, and ||dC/dW^l|| per layer.
Optional kinds (probes.kinds), each measured at init, every probes.every epochs and at the end:
  activations  per hidden layer: mean, std and 2/15/50/85/98th percentiles of the weighted input
               z^l (the activation's input) and of the activation a^l over the probe batch;
               the same percentiles of one unit's input (unit 0, Ioffe & Szegedy's "typical
               sigmoid"); the saturation fraction; the spread (std) of the entries of dC/db^l
               and dC/dW^l (Glorot & Bengio's Fig. 7); the root mean square over images of each
               image's ||delta^l|| (the per-example norm the mean-field theory describes).
  histograms   fixed-bin histograms of a^l (over the activation's range), and of log10 |g| for
               each example's delta^l = dC_x/dz^l and for the entries of dC/dW^l. Log-magnitude
               bins are fixed across layers and epochs although the gradients span decades.
  jacobians    (probes.jacobian_every: 0 = at init and at the end only) the mean singular
               value of each hidden layer's Jacobian J^l = diag(sigma'(z^l)) w^l, and the
               spectrum of the end-to-end Jacobian of the square part of the net, da^L/da^1 =
               J^L ... J^2 (depth - 1 factors of width x width): mean and variance of its squared
               singular values and the largest (Saxe 2014; Pennington 2017). Averaged over the
               first probes.jacobian_examples probe images, one Jacobian per image.
Scalars go to MLflow as metrics; histograms and spectra are arrays kept in the run's history.npz.
The probe itself is jitted; the singular values are computed on the host (see spectra).
"""

import jax
import jax.numpy as jnp
import numpy as np

from nnx import model, records

KINDS = ("activations", "histograms", "jacobians")
# The facts of the activation's registry entry (nnx.activations.Activation) each kind needs.
NEEDS = {"activations": ("saturated",), "histograms": ("range",), "jacobians": ()}
PERCENTILES = (2, 15, 50, 85, 98)
BINS = 50
LOG10_RANGE = (-10.0, 0.0)  # |g| below 1e-10 lands in the first bin, above 1 in the last
def histogram(values, lo, hi, bins=BINS):
    """Counts of values in `bins` equal bins over [lo, hi], values outside clipped to the edge bins."""
    index = jnp.clip(jnp.floor((values.ravel() - lo) / (hi - lo) * bins), 0, bins - 1).astype(jnp.int32)
    return jnp.zeros(bins, jnp.int32).at[index].add(1)


def log_histogram(values):
    return histogram(jnp.log10(jnp.abs(values) + 1e-30), *LOG10_RANGE)


def derivative(activation, z):
    """sigma'(z) elementwise (every hidden activation here is elementwise)."""
    return jax.jvp(activation, (z,), (jnp.ones_like(z),))[1]


def layer_jacobians(net, params, x):
    """[per hidden layer: J^l = diag(sigma'(z^l)) w^l for one input row x] of an MLP."""
    hidden, _ = model.trace(net, params, x[None, :])
    return [derivative(layer.activation, z[0])[:, None] * p["w"] for (z, _), layer, p in zip(hidden, net.layers, params)]


def end_to_end_jacobian(jacobians):
    """da^L/da^1 = J^L ... J^2 (the identity for one hidden layer)."""
    product = jnp.eye(jacobians[0].shape[0], dtype=jacobians[0].dtype)
    for j in jacobians[1:]:
        product = j @ product
    return product


def jacobian_matrices(net, params, x):
    """Per row of x: each hidden layer's J^l and the end-to-end product, stacked over the rows."""
    per_example = jax.vmap(lambda row: layer_jacobians(net, params, row))(x)
    return {"layers": per_example, "end_to_end": jax.vmap(lambda *js: end_to_end_jacobian(js))(*per_example)}


def spectra(matrices, depth: int):
    """Singular values on the host, in float64 (numpy's LAPACK).

    Not inside the jitted probe: XLA's CPU runtime was seen to hang when its LAPACK calls ran
    beside the sorts of the activation statistics. The SVD in float64 adds no round-off of its
    own; the product itself is float32, so values below about 1e-6 of the largest are noise.
    """
    layer_sv = [np.linalg.svd(np.asarray(j, np.float64), compute_uv=False) for j in matrices["layers"]]
    scalars = {records.hidden("jacobian_sv_mean", l): float(sv.mean()) for l, sv in enumerate(layer_sv, 1)}
    if depth < 2:
        return scalars, {}
    spectrum = np.linalg.svd(np.asarray(matrices["end_to_end"], np.float64), compute_uv=False).ravel()
    squared = spectrum**2
    scalars.update({"io_jacobian/sq_sv_mean": float(squared.mean()), "io_jacobian/sq_sv_var": float(squared.var()),
                    "io_jacobian/sv_max": float(spectrum.max())})
    return scalars, {records.SPECTRUM_IO: spectrum}


def jacobian_measures(net, params, x):
    """(scalars, arrays) of the Jacobian spectra over the rows of x (see spectra)."""
    return spectra(jax.device_get(jax.jit(jacobian_matrices, static_argnums=0)(net, params, x)), len(params) - 1)


def percentiles_of_sorted(ordered):
    """numpy's default (linear) percentiles of an already sorted vector."""
    position = jnp.array(PERCENTILES, ordered.dtype) / 100 * (ordered.shape[0] - 1)
    lo = jnp.floor(position).astype(jnp.int32)
    hi = jnp.minimum(lo + 1, ordered.shape[0] - 1)
    return ordered[lo] + (position - lo) * (ordered[hi] - ordered[lo])


def _stats(z, a, activation, l, monotone):
    """Mean, std and percentiles of z^l and a^l. For a nondecreasing activation one sort serves
    both, since sorting z sorts sigma(z) too (XLA's CPU sort is the costly part)."""
    ordered = jnp.sort(z.ravel())
    out = {}
    for prefix, values, sorted_values in (("pre", z, ordered), ("act", a, activation(ordered) if monotone else jnp.sort(a.ravel()))):
        out[records.hidden(f"{prefix}_mean", l)] = jnp.mean(values)
        out[records.hidden(f"{prefix}_std", l)] = jnp.std(values)
        for p, v in zip(PERCENTILES, percentiles_of_sorted(sorted_values)):
            out[records.hidden(f"{prefix}_p{p:02d}", l)] = v
    return out


def _shift(grads: dict):
    """dC/db^l, the book's delta^l averaged over the batch; for a batch-normalised layer dC/dbeta^l.
    The batch mean there takes b out again, so dC/db is zero in exact arithmetic and what float32
    gives is round-off (~1e-8, differing from one compiler or CPU to the next); beta is the shift
    that acts (Ioffe & Szegedy), and the mean of that layer's deltas, which are taken after it."""
    return grads["beta"] if "beta" in grads else grads["b"]


def probe_fn(spec, kinds=()):
    """probe(params, x, y) -> dict, not yet jitted.

    Keys: bias_grad [mean dC/db^l per hidden layer (dC/dbeta^l where batch-normalised: _shift)], grad_norm [depth], weight_grad_norm
    [depth + 1], and with any kinds: scalars {metric name: value} and arrays {name: array}.
    """
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown probe kinds {sorted(unknown)}; valid: {KINDS}")

    net = spec.net
    hidden_layers, weighted = net.weighted[:-1], net.weighted  # indices into params of the layers with weights

    def summed_cost(params, shifts, x, y):
        hidden, z = model.trace(net, params, x, shifts=shifts)
        a = spec.output_activation(z)
        return jnp.sum(spec.cost(z, a, jax.nn.one_hot(y, z.shape[-1], dtype=z.dtype))), hidden

    def probe(params, x, y):
        # The weighted inputs' shapes ([batch, n] dense, [batch, h, w, maps] conv), without computing them.
        shapes = jax.eval_shape(lambda: model.trace(net, params, x)[0])
        shifts = [jnp.zeros(z.shape, x.dtype) for z, _ in shapes]
        (g, deltas), hidden = jax.grad(summed_cost, argnums=(0, 1), has_aux=True)(params, shifts, x, y)
        g = jax.tree.map(lambda t: t / x.shape[0], g)  # the gradient of the mean cost
        shift = [_shift(g[i]) for i in hidden_layers]
        out = {
            "bias_grad": shift,
            "grad_norm": jnp.stack([jnp.linalg.norm(s) for s in shift]) if hidden_layers else jnp.zeros((0,)),
            "weight_grad_norm": jnp.stack([jnp.linalg.norm(g[i]["w"]) for i in weighted]),
        }
        if not kinds:
            return out
        scalars, arrays = {}, {}
        facts = spec.activation_facts
        if "activations" in kinds:
            for l, (z, a) in enumerate(hidden, 1):
                scalars.update(_stats(z, a, spec.activation, l, facts.monotone))
                for p, v in zip(PERCENTILES, percentiles_of_sorted(jnp.sort(z.reshape(z.shape[0], -1)[:, 0]))):
                    scalars[records.hidden(f"unit_pre_p{p:02d}", l)] = v
                scalars[records.hidden("saturation", l)] = jnp.mean(facts.saturated(a))
                scalars[records.hidden("bias_grad_std", l)] = jnp.std(shift[l - 1])
                # The mean-field theory's quantity: E_x ||delta_x^l||^2 scales by chi_1 per layer,
                # while the norm of the mean (grad_norm) also carries the images' cross terms.
                per_image = jnp.sum(deltas[l - 1].reshape(x.shape[0], -1) ** 2, axis=1)
                scalars[records.hidden("delta_rms", l)] = jnp.sqrt(jnp.mean(per_image))
            for l, i in enumerate(weighted, 1):
                scalars[records.layer("weight_grad_std", l)] = jnp.std(g[i]["w"])
        if "histograms" in kinds:
            lo, hi = facts.range
            for l, ((_, a), delta) in enumerate(zip(hidden, deltas), 1):
                arrays[records.hist("activation", l)] = histogram(a, lo, hi)
                arrays[records.hist("delta", l)] = log_histogram(delta)
            for l, i in enumerate(weighted, 1):
                arrays[records.hist("weight_grad", l)] = log_histogram(g[i]["w"])
        if "jacobians" in kinds:  # their singular values are taken on the host: finish()
            out["jacobian_matrices"] = jacobian_matrices(net, params, x[: spec.probes.jacobian_examples])
        out["scalars"], out["arrays"] = scalars, arrays
        return out

    return probe


def finish(measured: dict, depth: int) -> dict:
    """A probe's output fetched to the host, with its Jacobians turned into spectra."""
    matrices = measured.pop("jacobian_matrices", None)
    if matrices is not None:
        scalars, arrays = spectra(matrices, depth)
        measured["scalars"] = {**measured["scalars"], **scalars}
        measured["arrays"] = {**measured["arrays"], **arrays}
    return measured


def histogram_edges(facts) -> dict:
    """The bin edges behind every hist/ array (facts: the activation's registry entry), for whoever draws them."""
    return {records.HIST_EDGES["activation"]: np.linspace(*facts.range, BINS + 1),
            records.HIST_EDGES["log10_gradient"]: np.linspace(*LOG10_RANGE, BINS + 1)}


def kinds_at(spec, step: int, last: int) -> tuple:
    """Which optional kinds to measure at `step` (0 .. last): all at init and at the end, the
    others every probes.every epochs; jacobians every probes.jacobian_every (0: init and end)."""
    p = spec.probes
    edge = step in (0, last)
    kinds = [k for k in p.kinds if k != "jacobians" and (edge or step % p.every == 0)]
    if "jacobians" in p.kinds and (edge or (p.jacobian_every and step % p.jacobian_every == 0)):
        kinds.append("jacobians")
    return tuple(k for k in KINDS if k in kinds)
