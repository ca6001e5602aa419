"""The timed cases: nnx's jitted epoch against the book's algorithm in numpy and PyTorch eager.

Every contender trains the same MNIST images from the same initial params with chapter 1's
hyperparameters (sigmoid, quadratic cost, large init, eta 3.0, no L2), in this one process, one
after another. nnx's time is its jitted epoch with the data already on the device; the baselines
are in nnx.edges.bench.baselines. A baseline whose epochs would take longer than the cap in all is
timed on the first fraction of the training set and scaled up to a whole epoch ("extrapolated").
"""

import os
import statistics
import time

import numpy as np

from nnx.edges import paths
from nnx.edges.bench import baselines
from nnx.edges.bench.machine import peak_rss_mb, torch_installed

# name -> (hidden layers, width, mini_batch_size, training images)
CASES = {
    "784-30-10 mb10": (1, 30, 10, 50_000),
    "784-30x4-10 mb10": (4, 30, 10, 50_000),
    "784-100-10 mb10": (1, 100, 10, 50_000),
    "784-30x4-10 full1000": (4, 30, 1000, 1000),
    "784-1000x5-10 mb32": (5, 1000, 32, 50_000),
}
ETA = 3.0


def config(depth, width, mini_batch_size, train_size, epochs=1, extra=()) -> dict:
    """nnx-train's own config (conf/) with chapter 1's network.py hyperparameters, as nnx.build takes it."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    overrides = [
        f"model.depth={depth}", f"model.width={width}", "activation=sigmoid", "init=large", "cost=quadratic",
        "optimizer=sgd", f"optimizer.eta={ETA}", "optimizer.lmbda=0.0", f"data.train_size={train_size}",
        f"train.epochs={epochs}", f"train.mini_batch_size={mini_batch_size}", "seed=0", *extra,
    ]
    with initialize_config_dir(config_dir=str(paths.CONF), version_base="1.3"):
        return OmegaConf.to_container(compose(config_name="train", overrides=overrides), resolve=True)


def time_nnx(spec, x, y, repeats):
    """(median seconds per epoch, compile seconds): the first call compiles, then `repeats` more."""
    import jax

    import nnx

    params = nnx.init(jax.random.PRNGKey(0), spec.net)
    opt_state = spec.optimizer.init(params)
    epoch = nnx.make_epoch(spec)
    x, y = jax.device_put(x), jax.device_put(y)  # on the device once, as fit does
    seconds = []
    for e in range(repeats + 1):
        start = time.perf_counter()
        params, opt_state = jax.block_until_ready(epoch(params, opt_state, jax.random.PRNGKey(e), x, y))
        seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds[1:])
    return median, seconds[0] - median


def time_baseline(train_epoch, params, x, y, mini_batch_size, repeats, cap):
    """(seconds per epoch, fraction of the epoch timed, repeats run): the median after a warm-up.

    Two runs on a slice warm up and estimate a whole epoch; if `repeats` epochs would take longer
    than `cap` seconds, each repeat trains the first `fraction` of the images and its time is
    scaled by 1 / fraction (time is linear in the number of mini-batches). Should the machine get
    busier than the estimate, repeats stop once twice the cap is spent (at least one is run).
    """
    n = len(x)

    def timed(n_images):
        start = time.perf_counter()
        train_epoch(params, x[:n_images], y[:n_images], mini_batch_size, ETA, rng=0)
        return time.perf_counter() - start

    n_probe = min(n, 20 * mini_batch_size)
    timed(n_probe)  # warm-up: PyTorch, for one, sets itself up on its first call
    per_image = timed(n_probe) / n_probe
    n_timed = n
    if per_image * n * repeats > cap:
        n_timed = max(mini_batch_size, int(cap / repeats / per_image) // mini_batch_size * mini_batch_size)
    seconds = []
    while len(seconds) < repeats and sum(seconds) < 2 * cap:
        seconds.append(timed(n_timed))
    return statistics.median(seconds) * n / n_timed, n_timed / n, len(seconds)


def bench_case(name, data, repeats, cap) -> dict:
    import jax

    import nnx

    depth, width, mini_batch_size, train_size = CASES[name]
    spec = nnx.build(config(depth, width, mini_batch_size, train_size))
    x, y = data.train.x[:train_size], data.train.y[:train_size]
    init = nnx.init(jax.random.PRNGKey(0), spec.net)
    params = [(np.asarray(layer["w"]), np.asarray(layer["b"])) for layer in init]

    nnx_seconds, compile_s = time_nnx(spec, x, y, repeats)
    seconds, fractions, repeats_run = {"nnx": nnx_seconds}, {"nnx": 1.0}, {"nnx": repeats}
    for baseline, train_epoch in baselines.BASELINES.items():
        if baseline == "torch" and not torch_installed():
            seconds[baseline] = fractions[baseline] = repeats_run[baseline] = None
            continue
        seconds[baseline], fractions[baseline], repeats_run[baseline] = time_baseline(
            train_epoch, params, x, y, mini_batch_size, repeats, cap)
    return {
        "case": name,
        "sizes": list(spec.sizes),
        "mini_batch_size": mini_batch_size,
        "seconds_per_epoch": seconds,
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
