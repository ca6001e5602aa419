"""The timed cases: nnx's jitted epoch against the book's algorithm in numpy and PyTorch eager.

Every contender trains the same MNIST images from the same initial params, in this one process, one
after another. The MLP cases use chapter 1's hyperparameters (sigmoid, quadratic cost, large init,
eta 3.0, no L2); the conv cases are chapter 6's network3 nets (ReLU, log-likelihood, network3's
init, mini-batches in file order), against PyTorch only. nnx's time is its jitted epoch with the
data already on the device (as uint8 pixels, as nnx-train keeps them); the baselines are in
nnx.edges.bench.baselines. A contender whose epochs would take longer than the cap in all is timed
on the first fraction of the training set and scaled up to a whole epoch ("extrapolated"); nnx is,
in the conv cases only.
"""

import functools
import math
import os
import statistics
import time
from typing import NamedTuple

import numpy as np

from nnx.data import encode
from nnx.edges import paths
from nnx.edges.bench import baselines
from nnx.edges.bench.machine import peak_rss_mb, torch_installed

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


def compose(overrides) -> dict:
    """nnx-train's own config (conf/) with these overrides, resolved, as nnx.build takes it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(paths.CONF), version_base="1.3"):
        return OmegaConf.to_container(hydra_compose(config_name="train", overrides=list(overrides)), resolve=True)


def config(depth, width, mini_batch_size, train_size, epochs=1, extra=()) -> dict:
    """nnx-train's own config with chapter 1's network.py hyperparameters, and `extra` overrides."""
    return compose([
        f"model.depth={depth}", f"model.width={width}", "activation=sigmoid", "init=large", "cost=quadratic",
        "optimizer=sgd", f"optimizer.eta={ETA}", "optimizer.lmbda=0.0", f"data.train_size={train_size}",
        f"train.epochs={epochs}", f"train.mini_batch_size={mini_batch_size}", "seed=0", *extra,
    ])


def conv_config(case: ConvCase, train_size, epochs=1, extra=()) -> dict:
    """nnx-train's own config with network3.py's training of a chapter 6 net, and `extra` overrides."""
    as_list = lambda values: "[" + ",".join(map(str, values)) + "]"
    return compose([
        "model=conv", f"model.conv_maps={as_list(case.conv_maps)}", f"model.fc={as_list(case.fc)}",
        f"model.dropout={case.dropout}", "activation=relu", "init=network3", "cost=log_likelihood",
        "optimizer=sgd", f"optimizer.eta={case.eta}", f"optimizer.lmbda={case.lmbda}", f"data.train_size={train_size}",
        f"train.epochs={epochs}", f"train.mini_batch_size={case.mini_batch_size}", "train.shuffle=false", "seed=0", *extra,
    ])


def time_nnx(spec, x, y, repeats, cap=None):
    """(seconds per epoch, compile seconds, fraction of the epoch timed, repeats run).

    The first call at a shape compiles, then `repeats` more are timed and their median taken (each
    the mean of epochs_per_sample epochs where one is short). With
    a cap, as time_baseline: two epochs of one gather chunk (nnx.train.steps_per_gather) estimate a
    whole epoch; if `repeats` epochs would take longer than `cap` seconds, each repeat trains the
    first `fraction` of the images, a whole number of the full epoch's chunks (so each step runs
    the same compiled code as in a full epoch), and its time is scaled by 1 / fraction. The
    shorter epoch compiles once more, outside the clock; the repeats stop once twice the cap is spent.
    """
    import itertools

    import jax

    import nnx
    from nnx.train import epoch_key, steps_per_gather

    params = nnx.init(jax.random.PRNGKey(0), spec.net)
    opt_state = spec.optimizer.init(params)
    epoch = nnx.make_epoch(spec)
    x = encode(x)  # the pixels as nnx-train trains from them (uint8; the epoch decodes the rows it gathers)
    n, m, keys, shuffle_key = len(x), spec.mini_batch_size, itertools.count(), jax.random.PRNGKey(0)
    on_device, first_call = {}, {}

    def timed(n_images):
        nonlocal params, opt_state
        if n_images not in on_device:  # on the device once, as fit does
            on_device[n_images] = jax.device_put(x[:n_images]), jax.device_put(y[:n_images])
        start = time.perf_counter()  # the epoch's key as fit draws it (nnx.train.epoch_key), on the clock
        params, opt_state = jax.block_until_ready(epoch(params, opt_state, epoch_key(shuffle_key, next(keys)), *on_device[n_images]))
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
    seconds = samples(timed, n_timed, epochs_per_sample(timed(n_timed)), repeats, cap)
    median = statistics.median(seconds)
    return median * n / n_timed, first_call[n_timed] - median, n_timed / n, len(seconds)


SAMPLE_S = 0.1  # an epoch shorter than this is timed as the mean of enough consecutive epochs to last it


def epochs_per_sample(epoch_s: float) -> int:
    """How many epochs one timed sample averages: a full-batch epoch of 1,000 images lasts ~1.5 ms,
    where one epoch's time varies by tens of percent from one call to the next."""
    return max(1, math.ceil(SAMPLE_S / max(epoch_s, 1e-6)))


def samples(timed, n_images, per_sample, repeats, cap) -> list[float]:
    """`repeats` timed samples of timed(n_images), each the mean of per_sample epochs; with a cap,
    they stop once twice the cap is spent (at least one is taken)."""
    seconds = []
    while len(seconds) < repeats and (cap is None or sum(seconds) < 2 * cap):
        seconds.append(statistics.mean(timed(n_images) for _ in range(per_sample)))
    return seconds


def time_baseline(train_epoch, params, x, y, mini_batch_size, repeats, cap, eta=ETA):
    """(seconds per epoch, fraction of the epoch timed, repeats run): the median after a warm-up.

    Two runs on a slice warm up and estimate a whole epoch (a short one is timed as in time_nnx,
    epochs_per_sample at a time); if `repeats` epochs would take longer
    than `cap` seconds, each repeat trains the first `fraction` of the images and its time is
    scaled by 1 / fraction (time is linear in the number of mini-batches). Should the machine get
    busier than the estimate, repeats stop once twice the cap is spent (at least one is run).
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
    seconds = samples(timed, n_timed, epochs_per_sample(per_image * n_timed), repeats, cap)
    return statistics.median(seconds) * n / n_timed, n_timed / n, len(seconds)


def bench_case(name, data, repeats, cap) -> dict:
    import jax

    import nnx

    if name in CONV_CASES:
        return bench_conv_case(name, data, repeats, cap)
    depth, width, mini_batch_size, train_size = CASES[name]
    spec = nnx.build(config(depth, width, mini_batch_size, train_size))
    x, y = data.train.x[:train_size], data.train.y[:train_size]
    init = nnx.init(jax.random.PRNGKey(0), spec.net)
    params = [(np.asarray(layer["w"]), np.asarray(layer["b"])) for layer in init]

    nnx_seconds, compile_s, _, _ = time_nnx(spec, x, y, repeats)
    seconds, fractions, repeats_run = {"nnx": nnx_seconds}, {"nnx": 1.0}, {"nnx": repeats}
    for baseline, train_epoch in baselines.BASELINES.items():
        if baseline == "torch" and not torch_installed():
            seconds[baseline] = fractions[baseline] = repeats_run[baseline] = None
            continue
        seconds[baseline], fractions[baseline], repeats_run[baseline] = time_baseline(
            train_epoch, params, x, y, mini_batch_size, repeats, cap)
    return _result(name, list(spec.sizes), mini_batch_size, train_size, seconds, fractions, repeats_run, compile_s)


def bench_conv_case(name, data, repeats, cap) -> dict:
    """A chapter 6 case: nnx (capped like a baseline: a conv epoch takes about a minute on 2 cores) against
    torch_conv, from nnx's initial params, over the same first images in file order."""
    import jax

    import nnx
    from nnx.model import describe

    case, train_size = CONV_CASES[name], 50_000
    spec = nnx.build(conv_config(case, train_size))
    x, y = data.train.x[:train_size], data.train.y[:train_size]
    init = nnx.init(jax.random.PRNGKey(0), spec.net)  # what time_nnx starts from too
    params = [{k: np.asarray(v) for k, v in layer.items()} for layer in init]

    nnx_seconds, compile_s, nnx_fraction, nnx_repeats = time_nnx(spec, x, y, repeats, cap)
    seconds = {"nnx": nnx_seconds, "numpy_book": None, "numpy_vectorized": None, "torch": None}
    fractions = {**{b: None for b in seconds}, "nnx": nnx_fraction}
    repeats_run = {**{b: None for b in seconds}, "nnx": nnx_repeats}
    torch_threads = None
    if torch_installed():
        import torch

        torch_threads = torch.get_num_threads()  # its default, one per core: slow where other processes share the cores
        # n: the L2 term's training-set size, also when only a prefix is timed
        torch_epoch = functools.partial(baselines.torch_conv, lmbda=case.lmbda, dropout=case.dropout, n=train_size,
                                        activation=spec.activation_name)
        seconds["torch"], fractions["torch"], repeats_run["torch"] = time_baseline(
            torch_epoch, params, x, y, case.mini_batch_size, repeats, cap, eta=case.eta)
    print(f"  {describe(spec.net)}: seconds per {train_size} images, nnx timed on "
          + ", torch on ".join(f"{fractions[b]:.0%}" for b in ("nnx", "torch") if fractions[b] is not None)
          + " of them (numpy baselines not run for conv nets)", flush=True)
    return {**_result(name, None, case.mini_batch_size, train_size, seconds, fractions, repeats_run, compile_s),
            "net": describe(spec.net), "eta": case.eta, "lmbda": case.lmbda, "dropout": case.dropout,
            "torch_threads": torch_threads, "torch_flush_denormal": True, "not_run": {"numpy_book": "conv net", "numpy_vectorized": "conv net"}}


def _result(name, sizes, mini_batch_size, train_size, seconds, fractions, repeats_run, compile_s) -> dict:
    nnx_seconds = seconds["nnx"]
    return {
        "case": name,
        "sizes": sizes,  # an MLP's layer sizes; None for a conv net ("net" describes it)
        "mini_batch_size": mini_batch_size,
        "seconds_per_epoch": seconds,  # per epoch of train_size images; None: not run
        "speedup": {b: None if s is None else s / nnx_seconds for b, s in seconds.items() if b != "nnx"},
        "compile_s": compile_s,
        "peak_rss_mb": peak_rss_mb(),
        # at the case's end; nnx-bench's own threads add up to ~2, so only a rough sign of other load
        "load_average_1min": os.getloadavg()[0],
        "train_size": train_size,
        "repeats": repeats_run,  # timed epochs (or epoch fractions) behind each median, after a warm-up
        # the fraction of an epoch each repeat trained; below 1, seconds_per_epoch is scaled up from it
        "epoch_fraction_timed": fractions,
        "extrapolated": any(f is not None and f < 1 for f in fractions.values()),
    }
