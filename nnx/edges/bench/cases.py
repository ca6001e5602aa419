"""The timed cases: nnx's jitted epoch against the book's algorithm in numpy and PyTorch eager.

Every contender trains the same MNIST images from the same initial params, in this one process.
Each is warmed up first; then each repeat times every contender once, in turn (nnx, numpy_book,
numpy_vectorized, torch, nnx, ...: stats.alternate), so that a drift of the machine's speed hits all
alike, and each ratio is the median over the repeats of baseline_r / nnx_r. The MLP cases use
chapter 1's hyperparameters (sigmoid, quadratic cost, large init, eta 3.0, no L2); the conv cases
are chapter 6's network3 nets (ReLU, log-likelihood, network3's init, mini-batches in file order),
against PyTorch only. nnx's time is its jitted epoch with the data already on the device (as uint8
pixels, as nnx-train keeps them); the baselines are in nnx.edges.bench.baselines. A contender
whose epochs would take longer than the cap in all is timed on the first fraction of the training
set and scaled up to a whole epoch ("extrapolated"); nnx is, in the conv cases only.
"""

import functools
import math
import os
import statistics
import time
from typing import NamedTuple

import numpy as np

from nnx.data import encode
from nnx.edges import configs
from nnx.edges.bench import baselines
from nnx.edges.bench.machine import peak_rss_mb, torch_installed
from nnx.edges.bench.stats import Timer, alternate, ratio_summary

# name -> (hidden layers, width, mini_batch_size, training images)
MLP_CASES = {
    "784-30-10 mb10": (1, 30, 10, 50_000),
    "784-30x4-10 mb10": (4, 30, 10, 50_000),
    "784-100-10 mb10": (1, 100, 10, 50_000),
    "784-30x4-10 full1000": (4, 30, 1000, 1000),
    "784-1000x5-10 mb32": (5, 1000, 32, 50_000),
}
ETA = 3.0


class ConvCase(NamedTuple):
    """A chapter 6 net as network3.py trains it: ReLU, softmax with the log-likelihood cost,
    network3's init, plain SGD on mini-batches in file order, on the 50,000 training images."""

    conv_maps: tuple  # feature maps of each 5x5 conv-pool (2x2) layer
    fc: tuple  # widths of the fully connected layers
    mini_batch_size: int
    eta: float
    lmbda: float  # nnx's (network2's) lmbda: network3's lmbda times m (its L2 term is divided by n / m)
    dropout: float  # network3's rate on the input of every FC and output layer


CONV_CASES = {
    # 6.conv2 with ReLU: network3's lmbda = 0.1 at m = 10
    "6.conv2 mb10": ConvCase((20, 40), (100,), 10, 0.03, 1.0, 0.0),
    # the chapter's best single net, on the book's 50,000 images (it trained on the expanded set)
    "6.dropout mb10": ConvCase((20, 40), (1000, 1000), 10, 0.03, 0.0, 0.5),
}
CASES = {**MLP_CASES, **CONV_CASES}  # what nnx-bench --cases offers


def config(depth, width, mini_batch_size, train_size, epochs=1, extra=()) -> dict:
    """nnx-train's own config with chapter 1's network.py hyperparameters, and `extra` overrides."""
    return configs.compose([
        f"model.depth={depth}", f"model.width={width}", "activation=sigmoid", "init=large", "cost=quadratic",
        "optimizer=sgd", f"optimizer.eta={ETA}", "optimizer.lmbda=0.0", f"data.train_size={train_size}",
        f"train.epochs={epochs}", f"train.mini_batch_size={mini_batch_size}", "seed=0", *extra,
    ])


def conv_config(case: ConvCase, train_size, epochs=1, extra=()) -> dict:
    """nnx-train's own config with network3.py's training of a chapter 6 net, and `extra` overrides."""
    as_list = lambda values: "[" + ",".join(map(str, values)) + "]"
    return configs.compose([
        "model=conv", f"model.conv_maps={as_list(case.conv_maps)}", f"model.fc={as_list(case.fc)}",
        f"model.dropout={case.dropout}", "activation=relu", "init=network3", "cost=log_likelihood",
        "optimizer=sgd", f"optimizer.eta={case.eta}", f"optimizer.lmbda={case.lmbda}", f"data.train_size={train_size}",
        f"train.epochs={epochs}", f"train.mini_batch_size={case.mini_batch_size}", "train.shuffle=false", "seed=0", *extra,
    ])


def nnx_timer(spec, x, y, repeats, cap=None) -> Timer:
    """nnx's jitted epoch, compiled and sized, as a Timer whose sample() gives seconds per epoch.

    The first call at a shape compiles (Timer.first_s keeps its time); a sample is one epoch, or
    the mean of epochs_per_sample epochs where one is short. With a cap, as baseline_timer: two
    epochs of one gather chunk (nnx.programs.steps_per_gather) estimate a whole epoch; if `repeats`
    epochs would take longer than `cap` seconds, each sample trains the first `fraction` of the
    images, a whole number of the full epoch's chunks (so each step runs the same compiled code as
    in a full epoch), and its time is scaled by 1 / fraction. The shorter epoch compiles once more,
    outside the clock; sampling stops once twice the cap is spent (stats.alternate).
    """
    import itertools

    import jax

    import nnx
    from nnx import threefry
    from nnx.programs import steps_per_gather

    params = nnx.init(jax.random.PRNGKey(0), spec.net)
    opt_state = spec.optimizer.init(params)
    epoch = nnx.make_epoch(spec)
    x = encode(x)  # the pixels as nnx-train trains from them (uint8; the epoch decodes the rows it gathers)
    n, m, keys, shuffle_key = len(x), spec.mini_batch_size, itertools.count(), np.asarray(jax.random.PRNGKey(0))
    on_device, first_call = {}, {}

    def timed(n_images):
        nonlocal params, opt_state
        if n_images not in on_device:  # on the device once, as fit does
            on_device[n_images] = jax.device_put(x[:n_images]), jax.device_put(y[:n_images])
        start = time.perf_counter()  # the epoch's key and order drawn as fit draws them (nnx.train.epoch_plans), on the clock
        params, opt_state = jax.block_until_ready(epoch(params, opt_state, threefry.fold_in(shuffle_key, next(keys)), *on_device[n_images]))
        seconds = time.perf_counter() - start
        first_call.setdefault(n_images, seconds)
        return seconds

    n_timed, chunk = n, m * steps_per_gather(n // m, m)
    if cap is not None and chunk < n:
        timed(chunk)  # compiles
        per_image = timed(chunk) / chunk
        if per_image * n * repeats > cap:
            n_timed = max(chunk, int(cap / repeats / per_image) // chunk * chunk)
    if n_timed not in first_call:
        timed(n_timed)  # compiles
    sample = sampler(timed, n_timed, n, epochs_per_sample(timed(n_timed)))
    return Timer(sample, n_timed / n, None if cap is None else 2 * cap, first_call[n_timed])


SAMPLE_S = 0.1  # an epoch shorter than this is timed as the mean of enough consecutive epochs to last it


def epochs_per_sample(epoch_s: float) -> int:
    """How many epochs one timed sample averages: a full-batch epoch of 1,000 images lasts ~1.5 ms,
    where one epoch's time varies by tens of percent from one call to the next."""
    return max(1, math.ceil(SAMPLE_S / max(epoch_s, 1e-6)))


def sampler(timed, n_timed, n, per_sample):
    """A Timer's sample(): the mean of per_sample calls of timed(n_timed), scaled to n images."""
    return lambda: statistics.mean(timed(n_timed) for _ in range(per_sample)) * n / n_timed


def baseline_timer(train_epoch, params, x, y, mini_batch_size, repeats, cap, eta=ETA) -> Timer:
    """A baseline's epoch, warmed up and sized, as a Timer whose sample() gives seconds per epoch.

    Two runs on a slice warm up and estimate a whole epoch (a short one is sampled as in
    nnx_timer, epochs_per_sample at a time); if `repeats` epochs would take longer than `cap`
    seconds, each sample trains the first `fraction` of the images and its time is scaled by
    1 / fraction (time is linear in the number of mini-batches). Should the machine get busier
    than the estimate, sampling stops once twice the cap is spent (stats.alternate).
    """
    n = len(x)

    def timed(n_images):
        start = time.perf_counter()
        train_epoch(params, x[:n_images], y[:n_images], mini_batch_size, eta, rng=0)
        return time.perf_counter() - start

    n_probe = min(n, 20 * mini_batch_size)
    timed(n_probe)  # warm-up: PyTorch, for one, sets itself up on its first call
    per_image = timed(n_probe) / n_probe
    n_timed = n
    if per_image * n * repeats > cap:
        n_timed = max(mini_batch_size, int(cap / repeats / per_image) // mini_batch_size * mini_batch_size)
    return Timer(sampler(timed, n_timed, n, epochs_per_sample(per_image * n_timed)), n_timed / n, 2 * cap)


def bench_case(name, data, repeats, cap) -> dict:
    """An MLP case: nnx, then each baseline, warmed up; then `repeats` rounds that time each once, in turn."""
    import jax

    import nnx

    if name in CONV_CASES:
        return bench_conv_case(name, data, repeats, cap)
    depth, width, mini_batch_size, train_size = CASES[name]
    spec = nnx.build(config(depth, width, mini_batch_size, train_size))
    x, y = data.train.x[:train_size], data.train.y[:train_size]
    init = nnx.init(jax.random.PRNGKey(0), spec.net)
    params = [(np.asarray(layer["w"]), np.asarray(layer["b"])) for layer in init]

    timers = {"nnx": nnx_timer(spec, x, y, repeats)}
    for baseline, train_epoch in baselines.BASELINES.items():
        if baseline != "torch" or torch_installed():
            timers[baseline] = baseline_timer(train_epoch, params, x, y, mini_batch_size, repeats, cap)
    return _result(name, list(spec.sizes), mini_batch_size, train_size, timers, alternate(timers, repeats))


def bench_conv_case(name, data, repeats, cap) -> dict:
    """A chapter 6 case: nnx (capped like a baseline: a conv epoch takes about a minute on 2 cores) against
    torch_conv, from nnx's initial params, over the same first images in file order, alternated."""
    import jax

    import nnx
    from nnx.model import describe

    case, train_size = CONV_CASES[name], 50_000
    spec = nnx.build(conv_config(case, train_size))
    x, y = data.train.x[:train_size], data.train.y[:train_size]
    init = nnx.init(jax.random.PRNGKey(0), spec.net)  # what nnx_timer starts from too
    params = [{k: np.asarray(v) for k, v in layer.items()} for layer in init]

    timers, torch_threads = {"nnx": nnx_timer(spec, x, y, repeats, cap)}, None
    if torch_installed():
        import torch

        torch_threads = torch.get_num_threads()  # its default, one per core: slow where other processes share the cores
        # n: the L2 term's training-set size, also when only a prefix is timed
        torch_epoch = functools.partial(baselines.torch_conv, lmbda=case.lmbda, dropout=case.dropout, n=train_size,
                                        activation=spec.activation_name)
        timers["torch"] = baseline_timer(torch_epoch, params, x, y, case.mini_batch_size, repeats, cap, eta=case.eta)
    print(f"  {describe(spec.net)}: seconds per {train_size} images, nnx timed on "
          + ", torch on ".join(f"{timers[b].fraction:.0%}" for b in ("nnx", "torch") if b in timers)
          + " of them (numpy baselines not run for conv nets)", flush=True)
    result = _result(name, None, case.mini_batch_size, train_size, timers, alternate(timers, repeats))
    return {**result, "net": describe(spec.net), "eta": case.eta, "lmbda": case.lmbda, "dropout": case.dropout,
            "torch_threads": torch_threads, "torch_flush_denormal": True,
            "not_run": {"numpy_book": "conv net", "numpy_vectorized": "conv net"}}


CONTENDERS = ("nnx", *baselines.BASELINES)  # every case's keys, None where a contender did not run


def _result(name, sizes, mini_batch_size, train_size, timers, samples) -> dict:
    seconds = {c: samples.get(c) or None for c in CONTENDERS}  # per epoch of train_size images, one per repeat
    median = {c: None if s is None else statistics.median(s) for c, s in seconds.items()}
    ratios = {b: ratio_summary(seconds[b], seconds["nnx"]) for b in CONTENDERS if b != "nnx"}
    nnx = timers["nnx"]
    return {
        "case": name,
        "sizes": sizes,  # an MLP's layer sizes; None for a conv net ("net" describes it)
        "mini_batch_size": mini_batch_size,
        "seconds_per_epoch": median,  # the median over the repeats; None: not run
        # the median over the repeats of baseline_r / nnx_r (each repeat timed every contender once, in turn)
        "speedup": {b: None if r is None else r["median"] for b, r in ratios.items()},
        "speedup_range": ratios,  # {"median", "min", "max", "per_repeat"} of those ratios
        "seconds_per_repeat": seconds,
        "order": list(timers),  # the order each repeat timed the contenders in
        "compile_s": nnx.first_s - median["nnx"] * nnx.fraction,  # its first call at the timed size, less a timed one
        "peak_rss_mb": peak_rss_mb(),
        # at the case's end; nnx-bench's own threads add up to ~2, so only a rough sign of other load
        "load_average_1min": os.getloadavg()[0],
        "train_size": train_size,
        "repeats": {c: None if s is None else len(s) for c, s in seconds.items()},  # timed samples, after a warm-up
        # the fraction of an epoch each repeat trained; below 1, seconds_per_epoch is scaled up from it
        "epoch_fraction_timed": {c: timers[c].fraction if c in timers else None for c in CONTENDERS},
        "extrapolated": any(t.fraction < 1 for t in timers.values()),
    }
