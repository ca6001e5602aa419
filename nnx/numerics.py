"""What decides a run's float bits, and how far two runs may differ when it is not the same.

Bit-for-bit equal reruns are a promise for the same numerics: the same nnx arithmetic (VERSION),
the same JAX and jaxlib, the same backend and device, the same XLA flags, and on the CPU the same
processor and instruction set XLA compiles for (a wider vector unit sums a dot product in another order)
and the same threads (threads()). Every run records them (fingerprint()); nnx-rerun compares bit for
bit where they all match.

Where one differs, float32 round-off differs from the first product on, and training carries it
forward. How far it carries is measured, not guessed: the same config is trained again from an
initialization nudged by one unit in the last place (twin_history), and each metric may differ by
SAFETY times the largest distance between the nominal and the nudged run, plus a few units in the
last place of the metric (tolerances). The runs in tests/data/legacy_runs.json, recorded on
another machine and retrained on an AMD EPYC, differed by at most 2.2 times that spread.
"""

import os
import platform
from importlib import metadata

import jax
import jax.numpy as jnp
import numpy as np

from nnx import programs, records, train

# Bump whenever a change alters float rounding (an operation's order, a fused product, a new
# kernel): runs recorded before it are then compared within tolerances(), not bit for bit.
# 2: evaluation in fixed chunks (nnx.programs.EVAL_CHUNK): costs summed chunk by chunk, and an
# accuracy divided by the split's size at run time (the last ulp of both can differ from 1's).
# 3: a batch-normalised layer's bias-gradient probes measure beta (nnx.probes._shift), where b's
# gradient, zero in exact arithmetic, left round-off that changed with every compiler and CPU.
VERSION = 3

NUMERICS_TAG, CPU_TAG, ISA_TAG, FLAGS_TAG = records.TAG_NUMERICS, records.TAG_CPU, records.TAG_CPU_ISA, records.TAG_XLA_FLAGS
THREADS_TAG = records.TAG_CPU_THREADS
# The run tags that decide the bits. XLA's flags too: --xla_backend_optimization_level=0 alone
# changed the bits of a trained net here.
DECIDING = (NUMERICS_TAG, records.TAG_JAX_BACKEND, records.TAG_DEVICE, CPU_TAG, ISA_TAG, THREADS_TAG, FLAGS_TAG,
            records.version_tag("jax"), records.version_tag("jaxlib"))

# The twin's nudge perturbs each initial weight once; another CPU rounds every partial sum of
# every product. Runs recorded on another machine differed by up to 2.2 times the nudge's spread
# (both tests/data/legacy_runs.json runs, every metric): 8 leaves room for a wider difference.
SAFETY = 8.0
ULPS = 4  # and every value may differ in its last units (one rounding of a cost, a norm or a mean)
NUDGES = (1, 2, 3)  # the nudged twins trained: the spread is the largest over them

_ISAS = (("AVX512F", "avx512f"), ("AVX2", "avx2"), ("AVX", "avx"), ("SSE4_2", "sse4_2"))


def cpu() -> tuple[str, str]:
    """(the processor's model name, the widest x86 vector instruction set XLA compiles for on it).

    XLA's CPU backend targets the host's features, capped by --xla_cpu_max_isa in XLA_FLAGS."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                if model and flags:
                    break
    except OSError:
        pass
    names = [name for name, flag in _ISAS if flag in flags]  # widest first
    cap = next((f.split("=", 1)[1].upper() for f in os.environ.get("XLA_FLAGS", "").split() if f.startswith("--xla_cpu_max_isa=")), None)
    order = [name for name, _ in _ISAS]
    if cap in order:
        names = [n for n in names if order.index(n) >= order.index(cap)]
    return model, names[0] if names else platform.machine()


def threads() -> str:
    """On the CPU backend, the cores this process may use and JAX's CPU devices: XLA sizes its pool of
    threads by them, and a product or a sum it shares out over the pool adds in an order of its own.

    Seen here (2-core AMD EPYC, jax 0.10.2): a process on one core (one CPU device) and one on two
    (two devices, or one) trained a run to the same params, but a batch-normalised [784,8,8,8,10]
    net's validation cost after its second epoch differed in the last bit (3.5227437 against
    3.5227435), and so did a conv net's first-layer weight-gradient norm (a probe). A SLURM job
    of one CPU and its rerun on a laptop are such a pair. Other backends: "-" (their kernels are not
    shared out over the host's threads)."""
    if jax.default_backend() != "cpu":
        return "-"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    devices = jax.local_device_count()
    return f"{cores} core{'s' * (cores != 1)}, {devices} device{'s' * (devices != 1)}"


def fingerprint() -> dict:
    """The run tags that decide its bits, as this process computes."""
    model, isa = cpu()
    return {NUMERICS_TAG: str(VERSION), records.TAG_JAX_BACKEND: jax.default_backend(), records.TAG_DEVICE: str(jax.devices()[0].device_kind),
            CPU_TAG: model, ISA_TAG: isa, THREADS_TAG: threads(), FLAGS_TAG: os.environ.get("XLA_FLAGS", "").strip() or "none",
            **{records.version_tag(p): metadata.version(p) for p in ("jax", "jaxlib")}}


def differences(recorded: dict, now: dict) -> list[str]:
    """What decides the bits and differs between a run's tags and now: "name: was -> is" each."""
    return [f"{key}: {recorded.get(key, 'not recorded')} -> {now[key]}" for key in DECIDING if recorded.get(key) != now[key]]


def nudge(params, key):
    """params with every float moved one unit in the last place, up or down at random."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    moved = [jnp.where(jax.random.bernoulli(k, 0.5, p.shape), jnp.nextafter(p, jnp.inf), jnp.nextafter(p, -jnp.inf))
             for k, p in zip(keys, leaves)]
    return jax.tree.unflatten(tree, moved)


def metrics(history: dict) -> dict:
    """The values a run logs as metrics, by name, in step order: history's series and the summary."""
    out = {k: np.asarray(v, np.float64) for k, v in history.items() if np.ndim(v) == 1 and k != records.EVAL_STEPS}
    out.update({k: np.array([v], np.float64) for k, v in records.summary(history).items()})
    return out


def twin_history(spec, data, seed: int, nudge_seed: int) -> dict:
    """metrics() of seed's run trained from its initialization nudged (nudge) by nudge_seed."""
    key = jax.random.PRNGKey(seed)
    params, opt_state = programs.init_state(spec, jax.random.split(key)[0])
    _, history = train.fit(spec, data, key=key, start=(0, nudge(params, jax.random.PRNGKey(nudge_seed)), opt_state))
    return metrics(history)


def example_sizes(data) -> dict:
    """The number of examples behind each split's accuracy, by the metric names' prefixes."""
    return {records.SPLIT_PREFIX[name]: len(getattr(data, name).y) for name in ("train", "validation", "test")
            if getattr(data, name, None) is not None}


def tolerances(nominal: dict, twins: list[dict], sizes: dict) -> dict:
    """Each metric's tolerance: SAFETY times the largest distance of a twin from the nominal run
    over the steps, plus ULPS units in the last place of its largest value; an accuracy may also
    count one example differently (an output near a tie flips either way), give or take ULPS units
    of the last place below 1."""
    out = {}
    for key, values in nominal.items():
        spread = max((np.max(np.abs(t[key] - values)) for t in twins if key in t and len(t[key]) == len(values)), default=0.0)
        finite = np.abs(values[np.isfinite(values)])
        tol = SAFETY * float(np.nan_to_num(spread)) + ULPS * float(np.spacing(np.float32(finite.max() if finite.size else 0.0)))
        split = next((word for word in key.split("_") if word in sizes), None)
        if "accuracy" in key and split:  # one example, and each float32 value's own rounding of its fraction
            tol = max(tol, 1.0 / sizes[split] + ULPS * float(np.spacing(np.float32(1.0))))
        out[key] = tol
    return out


def spread_tolerances(spec, data, seed: int, nominal: dict) -> dict:
    """tolerances() of the nominal run's metrics against its nudged twins (NUDGES)."""
    return tolerances(nominal, [twin_history(spec, data, seed, s) for s in NUDGES], example_sizes(data))


def beyond(a: dict, b: dict, tol: dict) -> list[str]:
    """The metrics of a and b (name -> values in step order) that differ by more than tol allows."""
    problems = []
    for key in sorted(set(a) & set(b)):
        x, y = np.asarray(a[key], np.float64), np.asarray(b[key], np.float64)
        if x.shape != y.shape:
            problems.append(f"{key}: {len(x)} values against {len(y)}")
            continue
        gap = np.abs(x - y)
        gap[np.isnan(x) & np.isnan(y)] = 0.0
        if not np.all(gap <= tol.get(key, 0.0)):
            problems.append(f"{key}: largest difference {np.nanmax(gap):.3g} beyond its tolerance {tol.get(key, 0.0):.3g}")
    return problems
