"""Training's compiled programs, as pure functions built once per Spec (network2.SGD's pieces, in JAX).

epoch_fn is one epoch of mini-batch SGD as a lax.scan; block_fn a run of epochs as one program;
evaluate_fn and summarize_fn the book's reported cost and accuracy, a fixed-size chunk of a split at a
time; probe_fn the per-layer probes of nnx.probes (chapter 5's gradients and more). None is jitted
here: make_* jit them for one network, nnx.train vmaps them over seeds, and nnx.loop runs them.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nnx import choices, model, probes, threefry
from nnx.data import PIXEL_LEVELS, Split


def make_loss(spec, product=model.times_transpose):
    """C = mean over the mini-batch of C_x (no L2 term: the optimizer adds its gradient).

    product(a, w) = a @ w.T, as model.feedforward takes it (epoch_fn passes choices.training_product).
    loss(params, x, y, key=None): with a key, the net runs as in training (dropout draws its masks).
    """

    def loss(params, x, y, key=None):
        z, a = model.feedforward(spec.net, params, x, product=product, key=key, train=key is not None)
        return jnp.mean(spec.cost(z, a, jax.nn.one_hot(y, z.shape[-1], dtype=z.dtype)))

    return loss




def largest_divisor(n: int, at_most: int) -> int:
    """The largest c <= at_most that divides n: chunks of one shape, so nothing recompiles."""
    return max(c for c in range(1, min(n, at_most) + 1) if n % c == 0)


def steps_per_gather(n_batches: int, m: int, rows: int = 1024) -> int:
    """How many mini-batches to gather at once: the largest divisor of n_batches whose rows fit
    in `rows`. XLA's CPU gather costs about twice a [784,30] step when done 10 rows at a time;
    gathered 1000 rows at a time it is cheap, and the steps then slice contiguous memory."""
    return largest_divisor(n_batches, max(rows, m) // m)


def epoch_fn(spec):
    """epoch(params, opt_state, key, order, x, y, hyper=()) -> (params, opt_state), not yet jitted.

    order: the rows in the order the epoch trains them, epoch_order's (drawn on the host from the
    epoch's key); key: the epoch's key, from which a net with dropout gets one key per step.

    hyper: runtime_hyper(spec, dtype) where the spec has them (the book's fixed eta): eta and lmbda / n
    as arguments, not constants, so one compiled epoch serves every eta and lmbda of a sweep (each
    compiled its own, ~1 s apiece here). () trains with spec.optimizer's constants: the same numbers.

    x: the training images, float or as nnx.data.encode stores them (uint8): gathered that way,
    the rows cost less to gather (~7% of a [784,30,10] mb 10 epoch) and are decoded exactly after.

    The order is cut into mini-batches of m rows, gathered by index a chunk of mini-batches at a
    time: the shuffled set is never copied whole, and no step waits on a small gather.
    """
    grad = jax.grad(make_loss(spec, choices.training_product))
    m = spec.mini_batch_size
    random = spec.net.has_randomness

    def epoch(params, opt_state, key, order, x, y, hyper=()):
        optimizer = spec.optimizer_at(*hyper) if hyper else spec.optimizer

        def step(carry, batch):
            params, opt_state = carry
            updates, opt_state = optimizer.update(grad(params, *batch), opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), None

        n_batches = order.shape[0] // m
        c = steps_per_gather(n_batches, m)
        order = order.reshape(n_batches // c, c * m)
        if random:  # a fold of the epoch's key (the shuffle drew from the key itself)
            step_keys = jax.random.split(jax.random.fold_in(key, 1), n_batches)
            chunks = (order, step_keys.reshape(n_batches // c, c, *step_keys.shape[1:]))
        else:
            chunks = order

        def chunk(carry, chunk_of):
            idx, keys = chunk_of if random else (chunk_of, None)
            rows = images(x[idx], jax.tree.leaves(carry[0])[0].dtype)
            batches = (rows.reshape(c, m, -1), y[idx].reshape(c, m)) + ((keys,) if random else ())
            # Not unrolled: two steps a trip saved half of XLA's ~2 us per trip (a [784,30,10] epoch of
            # 50,000 images: 0.103 -> 0.092 s, 0.3 s over 30 epochs) but compiled each epoch for longer
            # (that net +0.9-1.2 s, a small conv net 4.6-5.5 -> 8.4-9.4 s). The same bits either way.
            return jax.lax.scan(step, carry, batches)[0], None

        (params, opt_state), _ = jax.lax.scan(chunk, (params, opt_state), chunks)
        return params, opt_state

    return epoch


def epoch_order(spec, keys, n: int) -> np.ndarray:
    """The rows of a training set of n images in the order an epoch trains them, for each of the
    epochs' keys (host uint32 [..., 2]): int32 [..., n // m * m]. jax.random.permutation(key, n)
    (nnx.threefry, on the host: compiled into each epoch it doubled the epoch's compile time), or
    with spec.shuffle false the file order, as network3 trains; a remainder smaller than a
    mini-batch is dropped, so nothing recompiles (the book's sizes divide evenly)."""
    keys = np.asarray(keys)
    order = threefry.permutation(keys, n) if spec.shuffle else np.broadcast_to(np.arange(n, dtype=np.int32), (*keys.shape[:-1], n))
    return order[..., : n // spec.mini_batch_size * spec.mini_batch_size]


def block_fn(epoch, probe):
    """block(params, opt_state, keys, orders, x, y, probe_x, probe_y, hyper) -> (params, opt_state, measured):
    len(keys) epochs (each its key and epoch_order's order) in one program, each probed before its
    updates, the probes stacked over the epochs.

    For full-batch runs that need nothing from the host between evaluations (nnx.loop decides where):
    ch5's take one step an epoch, and a call, a fetch and a record per epoch cost more than the step
    (ch5_speed's fit_many, 5 seeds of [784,30,30,30,10], 500 epochs: 12.4 s against 14.2 s for one call
    an epoch, best of 7 alternated; medians 18 against 26 s, on 2 cores shared with other jobs).
    """

    def block(params, opt_state, keys, orders, x, y, probe_x, probe_y, hyper=()):
        def one(carry, plan):
            measured = probe(carry[0], probe_x, probe_y)
            return epoch(*carry, *plan, x, y, hyper), measured

        (params, opt_state), measured = jax.lax.scan(one, (params, opt_state), (keys, orders))
        return params, opt_state, measured

    return block


def probe_fn(spec, kinds=()):
    """probe(params, x, y) -> dict of chapter 5's gradient measurements (and `kinds`): nnx.probes."""
    return probes.probe_fn(spec, kinds)


# Images per evaluation pass; a split is cut into chunks of this size (the last one padded), so one
# compiled program evaluates every split of every size, and a conv net's feature maps of a whole
# split never have to fit at once. A program per split size took ~0.5 s each to compile here: three
# a run, and every size a sweep or a test used its own (157 of the test suite's 1,667 programs).
EVAL_CHUNK = 1000


def evaluate_fn(spec):
    """evaluate(params, x, y, valid, sums) -> sums plus this chunk's (summed C_x, correct count).

    x holds EVAL_CHUNK images of which the first `valid` are real (the rest padding, left out of
    both sums); summarize_fn turns a split's sums into the book's cost and accuracy.
    """

    def evaluate(params, x, y, valid, sums):
        z, a = model.feedforward(spec.net, params, x)
        real = jnp.arange(x.shape[0]) < valid
        costs = spec.cost(z, a, jax.nn.one_hot(y, z.shape[-1], dtype=z.dtype))
        correct = real & (jnp.argmax(z, axis=-1) == y)
        return sums[0] + jnp.sum(jnp.where(real, costs, 0)), sums[1] + jnp.sum(correct)

    return evaluate


def summarize_fn(params, sums, n, l2_factor):
    """(cost, accuracy) of a split of n images from evaluate's sums, as network2's total_cost and
    accuracy: cost = mean C_x + (lmbda / 2n) sum_l ||w^l||^2 (the book divides by the evaluated
    set's size; l2_factor is lmbda / 2n, a runtime value so that no lmbda or n compiles anew)."""
    l2 = sum(jnp.sum(layer["w"] ** 2) for layer in params if "w" in layer)
    return sums[0] / n + l2_factor * l2, sums[1] / n


SUMMARIZE = jax.jit(summarize_fn)  # the same for every network: jitted once per process


def eval_chunks(spec, split, dtype, device=None) -> tuple:
    """(n, [(x, y, valid) per chunk of EVAL_CHUNK images]) on the device: a split as evaluate takes it,
    the last chunk padded with zeros. Pixels go over as stored and are decoded there (to_device).

    A net with batch normalisation takes the split as one chunk: its layers normalise by the batch
    they are given, and the split's statistics are the ones the book's evaluation would use."""
    x, y = np.asarray(split.x), np.asarray(split.y)
    n = len(y)
    c = n if spec.batch_norm else EVAL_CHUNK

    def padded(a):
        return a if len(a) == c else np.concatenate([a, np.zeros((c - len(a), *a.shape[1:]), a.dtype)])

    return n, [(to_device(padded(x[i:i + c]), dtype, device), jax.device_put(padded(y[i:i + c]), device),
                jax.device_put(np.int32(min(c, n - i)), device)) for i in range(0, n, c)]


def split_evaluator(spec, evaluate, summarize, zeros):
    """evaluate_split(params, (n, chunks)) -> (cost, accuracy): evaluate over a split's chunks, then
    summarize. zeros(device) gives the starting sums where the chunks are."""

    def evaluate_split(params, prepared):
        n, chunks = prepared
        sums = zeros(chunks[0][0].devices().pop())
        for x, y, valid in chunks:
            sums = evaluate(params, x, y, valid, sums)
        return summarize(params, sums, np.float32(n), np.float32(0.5 * spec.lmbda / n))

    return evaluate_split


def zero_sums(device, shape=()):
    """evaluate's starting sums (summed C_x, correct count) on `device`, one per network of `shape`."""
    return jax.device_put((np.zeros(shape, np.float32), np.zeros(shape, np.int32)), device)


def runtime_hyper(spec, dtype) -> tuple:
    """spec.hyper as epoch_fn's `hyper`: arrays of the params' dtype (float32 rounds eta and lmbda / n
    as the constants they replace would be; float64 keeps them)."""
    return tuple(np.asarray(v, dtype) for v in spec.hyper)


def make_epoch(spec):
    """epoch(params, opt_state, key, x, y): epoch_fn jitted once, params and optimizer state donated
    (updated in place), the key's epoch_order and the spec's runtime_hyper (in the params' dtype) passed in."""
    jitted = jax.jit(epoch_fn(spec), donate_argnums=(0, 1))

    def epoch(params, opt_state, key, x, y):
        key = np.asarray(key)
        return jitted(params, opt_state, key, epoch_order(spec, key, x.shape[0]), x, y, runtime_hyper(spec, jax.tree.leaves(params)[0].dtype))

    epoch.jitted = jitted  # the jitted program, one compilation per shape and dtype
    return epoch


def make_evaluate(spec):
    """evaluate(params, x, y) -> (cost, accuracy) of the images x [n, ...] with labels y, as a run records them."""
    evaluate_split = split_evaluator(spec, jax.jit(evaluate_fn(spec)), SUMMARIZE, zero_sums)
    return lambda params, x, y: evaluate_split(params, eval_chunks(spec, Split(x, y), jax.tree.leaves(params)[0].dtype))


def make_probe(spec, kinds=()):
    return jax.jit(probe_fn(spec, kinds))


def images(x, dtype):
    """Images as dtype: pixels nnx.data.encode stored as uint8 decoded (exactly: a power of two
    divides, as nnx.data.decode does), float ones as they are."""
    return x.astype(dtype) / PIXEL_LEVELS if x.dtype == jnp.uint8 else x.astype(dtype)


def to_device(x, dtype, device=None):
    """Images on the device (the default one, or `device`) as dtype. uint8 pixels go over as they are
    and are decoded there, so the host never holds their float copy (220 MB for MNIST, ~0.5 s to write)."""
    if x.dtype == np.uint8:
        return _decode(jax.device_put(x, device), dtype)
    return jax.device_put(np.asarray(x, dtype) if isinstance(x, np.ndarray) else x.astype(dtype), device)


_decode = jax.jit(images, static_argnums=1)


def init_state(spec, key, dtype=jnp.float32):
    """(params, optimizer state) of a fresh network: nnx.model.init, then the optimizer's init."""
    params = model.init(key, spec.net, dtype)
    return params, spec.optimizer.init(params)
