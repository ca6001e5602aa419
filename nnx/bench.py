"""nnx-bench: seconds per epoch of nnx against the book's network.py, numpy and PyTorch (issue 5).

    nnx-bench                                    # every case, the table, reports/bench/bench.json
    nnx-bench --quick --cases "784-30-10 mb10"   # fewer repeats, a shorter cap, one case

Every contender trains the same MNIST images from the same initial params with chapter 1's
hyperparameters (sigmoid, quadratic cost, large init, eta 3.0, no L2), in this one process, one
after another. nnx's time is its jitted epoch with the data already on the device; the baselines
are in nnx.baselines. A baseline whose epochs would take longer than --cap seconds in all is
timed on the first fraction of the training set and scaled up to a whole epoch ("extrapolated").
"""

import argparse
import inspect
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np

from nnx import baselines, tracking

# name -> (hidden layers, width, mini_batch_size, training images)
CASES = {
    "784-30-10 mb10": (1, 30, 10, 50_000),
    "784-30x4-10 mb10": (4, 30, 10, 50_000),
    "784-100-10 mb10": (1, 100, 10, 50_000),
    "784-30x4-10 full1000": (4, 30, 1000, 1000),
    "784-1000x5-10 mb32": (5, 1000, 32, 50_000),
}
ETA = 3.0
SEEDS = list(range(8))
# Set by some machines to pin OpenBLAS to an older kernel: it slows numpy, not JAX or PyTorch.
BLAS_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def config(depth, width, mini_batch_size, train_size, epochs=1, extra=()) -> dict:
    """nnx-train's own config (conf/) with chapter 1's network.py hyperparameters, as nnx.build takes it."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    overrides = [
        f"model.depth={depth}", f"model.width={width}", "activation=sigmoid", "init=large", "cost=quadratic",
        "optimizer=sgd", f"optimizer.eta={ETA}", "optimizer.lmbda=0.0", f"data.train_size={train_size}",
        f"train.epochs={epochs}", f"train.mini_batch_size={mini_batch_size}", "seed=0", *extra,
    ]
    with initialize_config_dir(config_dir=str(tracking.ROOT / "conf"), version_base="1.3"):
        return OmegaConf.to_container(compose(config_name="train", overrides=overrides), resolve=True)


def peak_rss_mb() -> float:
    """The process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> dict:
    import jax
    import threadpoolctl

    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass

    def version(package):
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "jax": version("jax"),
        "jaxlib": version("jaxlib"),
        "numpy": version("numpy"),
        "torch": version("torch"),
        "jax_backend": jax.default_backend(),
        "jax_device": str(jax.devices()[0].device_kind),
        "numpy_blas": [{k: info.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
                       for info in threadpoolctl.threadpool_info()],
        # what the environment had set, and nnx-bench unset before it measured anything
        "blas_env_unset": json.loads(os.environ.get("NNX_BENCH_UNSET", "{}")),
        "blas_env": {name: os.environ.get(name) for name in BLAS_ENV},
        "load_average_1min": os.getloadavg()[0],  # above ~0.5 other processes share the 2 cores
    }


def time_nnx(spec, x, y, repeats):
    """(median seconds per epoch, compile seconds): the first call compiles, then `repeats` more."""
    import jax

    import nnx

    params = nnx.init(jax.random.PRNGKey(0), spec.sizes, spec.initializer)
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
    init = nnx.init(jax.random.PRNGKey(0), spec.sizes, spec.initializer)
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


def torch_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def tracking_overhead(data, train_size) -> dict:
    """A 30-epoch nnx.fit with MLflow logging each epoch (as nnx-train does) against none, in %.

    The fresh SQLite store is created (and migrated) before the clock starts: a real store
    exists already. Timed: Run.start with params and tags, fit with on_epoch=run.log_metrics, end.
    The time the training thread spends inside those calls ("logging_s": with tracking.Run's writer
    thread, the queueing and the final flush) is reported too: on 2 shared cores the difference of
    two wall times can drown in other processes' noise.
    """
    import jax

    import nnx

    cfg = config(1, 30, 10, train_size, epochs=30)
    spec = nnx.build(cfg)
    data = nnx.load(train_size=train_size) if train_size != len(data.train.x) else data
    logging_s = []

    def off():
        nnx.fit(spec, data, key=jax.random.PRNGKey(0))

    def on(client, experiment_id):
        spent = 0.0

        def timed(call, *args, **kwargs):
            nonlocal spent
            start = time.perf_counter()
            result = call(*args, **kwargs)
            spent += time.perf_counter() - start
            return result

        run = timed(tracking.Run.start, client, experiment_id, name="nnx-bench tracking overhead",
                    params=tracking.flatten(cfg), tags=tracking.environment_tags())
        nnx.fit(spec, data, key=jax.random.PRNGKey(0), on_epoch=lambda step, values: timed(run.log_metrics, step, values))
        timed(run.end, "FINISHED")
        logging_s.append(spent)

    with tempfile.TemporaryDirectory() as folder:
        client, experiment_id = tracking.open_experiment(f"sqlite:///{folder}/mlflow.db", "nnx-bench")
        # Alternate off/on twice and keep each one's best: other load on 2 cores only adds time.
        times = {"off": [], "on": []}
        for _ in range(2):
            for mode, run in (("off", off), ("on", lambda: on(client, experiment_id))):
                start = time.perf_counter()
                run()
                times[mode].append(time.perf_counter() - start)
    t_off, t_on = min(times["off"]), min(times["on"])
    return {"train_size": train_size, "epochs": 30, "off_s": t_off, "on_s": t_on, "pct": (t_on - t_off) / t_off * 100,
            "logging_s": min(logging_s), "logging_pct": min(logging_s) / t_off * 100}


def probes_overhead(train_size) -> dict:
    """A 10-epoch fit of chapter 5's [784,30,30,30,30,10] with every optional probe measured after
    every epoch (activations, histograms, Jacobian spectra of 8 images) against chapter 5's
    gradients only, in %. Each mode is timed twice (compilation included, as a user pays it)
    and its best kept."""
    import jax

    import nnx

    data = nnx.load(train_size=train_size)
    every = ["probes.kinds=[activations,histograms,jacobians]", "probes.every=1", "probes.jacobian_every=1"]
    specs = {"off": nnx.build(config(4, 30, 10, train_size, epochs=10)),
             "on": nnx.build(config(4, 30, 10, train_size, epochs=10, extra=every))}
    times = {"off": [], "on": []}
    for _ in range(2):
        for mode, spec in specs.items():
            start = time.perf_counter()
            nnx.fit(spec, data, key=jax.random.PRNGKey(0))
            times[mode].append(time.perf_counter() - start)
    t_off, t_on = min(times["off"]), min(times["on"])
    return {"train_size": train_size, "epochs": 10, "sizes": [784, 30, 30, 30, 30, 10], "off_s": t_off, "on_s": t_on,
            "pct": (t_on - t_off) / t_off * 100}


def multi_seed(data) -> dict | None:
    """nnx.train.fit_many over 8 seeds (one vmapped program) against 8 fit calls in a row."""
    import jax

    import nnx
    from nnx import train

    fit_many = getattr(train, "fit_many", None)
    if fit_many is None:
        print("multi-seed: skipped, nnx.train.fit_many does not exist yet")
        return None
    spec = nnx.build(config(1, 30, 10, 1000, epochs=30))
    data = nnx.load(train_size=1000)
    seeds_arg = "seeds" if "seeds" in inspect.signature(fit_many).parameters else "key_seeds"

    start = time.perf_counter()
    jax.block_until_ready(fit_many(spec, data, **{seeds_arg: SEEDS}))
    vmapped = time.perf_counter() - start
    start = time.perf_counter()
    for seed in SEEDS:
        jax.block_until_ready(nnx.fit(spec, data, key=jax.random.PRNGKey(seed)))
    sequential = time.perf_counter() - start
    return {"seeds": len(SEEDS), "vmapped_s": vmapped, "sequential_s": sequential,
            "train_size": 1000, "epochs": 30, "mini_batch_size": 10}


def _fmt(value, digits=3):
    return "-" if value is None else f"{value:.{digits}g}"


def print_table(cases):
    names = ("numpy_book", "numpy_vectorized", "torch")
    header = ("case", "nnx s/epoch", "numpy_book", "numpy_vec", "torch", "speedup book/vec/torch", "compile s", "peak MB")
    rows = [header]
    for c in cases:
        s, f = c["seconds_per_epoch"], c["epoch_fraction_timed"]
        cell = lambda b: _fmt(s[b]) + ("*" if f[b] is not None and f[b] < 1 else "")
        rows.append((c["case"], _fmt(s["nnx"]), *(cell(b) for b in names),
                     " / ".join("-" if c["speedup"][b] is None else f"{c['speedup'][b]:.3g}x" for b in names),
                     f"{c['compile_s']:.2f}", f"{c['peak_rss_mb']:.0f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for i, row in enumerate(rows):
        print(" | ".join(cell.ljust(w) for cell, w in zip(row, widths)))
        if i == 0:
            print("-+-".join("-" * w for w in widths))
    if any(c["extrapolated"] for c in cases):
        print("* timed on the first part of an epoch and scaled to a whole one (see epoch_fraction_timed in the JSON).")
    print("peak MB: the process's peak resident memory so far (ru_maxrss), so it never falls from one case to the next.")


def _restart_without_blas_env(argv):
    """OPENBLAS_CORETYPE pins numpy to an older kernel (Haswell on a CPU with AVX-512): unfair to it."""
    found = {name: os.environ[name] for name in BLAS_ENV if name in os.environ}
    if not found:
        return
    print(f"nnx-bench: restarting without {found} so numpy uses OpenBLAS's kernel for this CPU "
          f"(--keep-blas-env keeps them)", flush=True)
    env = {k: v for k, v in os.environ.items() if k not in BLAS_ENV}
    env["NNX_BENCH_UNSET"] = json.dumps(found)
    os.execve(sys.executable, [sys.executable, "-m", "nnx.bench", *argv], env)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="nnx-bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES), metavar="CASE",
                        help=f"cases to run (default all): {', '.join(repr(c) for c in CASES)}")
    parser.add_argument("--quick", action="store_true", help="3 repeats, a 15 s cap, tracking on 10000 images")
    parser.add_argument("--cap", type=float, help="seconds a baseline may spend per case (default 60, 15 with --quick)")
    parser.add_argument("--out", type=Path, default=tracking.ROOT / "reports" / "bench" / "bench.json")
    parser.add_argument("--keep-blas-env", action="store_true", help=f"do not unset {', '.join(BLAS_ENV)}")
    args = parser.parse_args(argv)
    if not args.keep_blas_env:
        _restart_without_blas_env(argv)
    repeats, cap = (3, 15.0) if args.quick else (5, 60.0)
    cap = args.cap or cap

    import nnx

    info = machine()
    print(f"nnx-bench on {info['cpu']} ({info['cores']} cores), jax {info['jax']} on {info['jax_device']}, "
          f"numpy {info['numpy']} with {info['numpy_blas']}, torch {info['torch']}", flush=True)
    if info["load_average_1min"] > 0.5:
        print(f"nnx-bench: load average {info['load_average_1min']:.1f}: other processes are using the CPUs, "
              f"so timings will be slower and noisier than on an idle machine", flush=True)
    if not torch_installed():
        print("torch not installed: pip install torch==2.13.0 (make bench does this)", flush=True)
    data = nnx.load()
    cases = []
    for name in args.cases:
        print(f"{name} ...", flush=True)
        cases.append(bench_case(name, data, repeats, cap))
    overhead = tracking_overhead(data, 10_000 if args.quick else 50_000)
    print(f"tracking overhead: {overhead['pct']:.1f}% ({overhead['on_s']:.2f} s with MLflow, {overhead['off_s']:.2f} s "
          f"without; 30 epochs of [784,30,10] mb 10 on {overhead['train_size']} images); time inside the MLflow "
          f"calls: {overhead['logging_s']:.2f} s = {overhead['logging_pct']:.1f}%", flush=True)
    probing = probes_overhead(10_000 if args.quick else 50_000)
    print(f"probes overhead: {probing['pct']:.1f}% ({probing['on_s']:.2f} s with every probe after every epoch, "
          f"{probing['off_s']:.2f} s with chapter 5's gradients only; 10 epochs of [784,30,30,30,30,10] mb 10 on "
          f"{probing['train_size']} images)", flush=True)
    seeds = multi_seed(data)
    if seeds:
        print(f"multi-seed: {seeds['seeds']} seeds in {seeds['vmapped_s']:.1f} s vmapped, {seeds['sequential_s']:.1f} s "
              f"one after another (30 epochs of [784,30,10] mb 10 on 1000 images)", flush=True)

    info["load_average_1min_end"] = os.getloadavg()[0]
    print()
    print_table(cases)
    report = {"machine": info, "cases": cases, "tracking_overhead_pct": overhead["pct"], "tracking_overhead": overhead,
              "probes_overhead_pct": probing["pct"], "probes_overhead": probing,
              "multi_seed": seeds or {"seeds": len(SEEDS), "vmapped_s": None, "sequential_s": None}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
