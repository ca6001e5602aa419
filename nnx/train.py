"""Training as pure functions built once per Spec and jitted once (network2.SGD, in JAX).

epoch_fn is one epoch of mini-batch SGD as a lax.scan; evaluate_fn and summarize_fn the book's
reported cost and accuracy, a fixed-size chunk of a split at a time; probe_fn the per-layer probes
of nnx.probes (chapter 5's gradients and more). make_* jit them for one network;
fit_many vmaps them over seeds, so several seeds train as one compiled program. fit() strings
them together and returns the history, calling `on_epoch` so the caller can record as it goes.
"""

import math
import operator

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nnx import choices, model, probes, records, schedules
from nnx.data import PIXEL_LEVELS, Split


def make_loss(spec, product=model.times_transpose):
    """C = mean over the mini-batch of C_x (no L2 term: the optimizer adds its gradient).

    product(a, w) = a @ w.T, as model.feedforward takes it (epoch_fn passes training_product).
    loss(params, x, y, key=None): with a key, the net runs as in training (dropout draws its masks).
    """

    def loss(params, x, y, key=None):
        z, a = model.feedforward(spec.net, params, x, product=product, key=key, train=key is not None)
        return jnp.mean(spec.cost(z, a, jax.nn.one_hot(y, z.shape[-1], dtype=z.dtype)))

    return loss


@jax.custom_vjp
def times_transpose_grad(a, w):
    """a @ w.T as model.times_transpose, with the same gradient computed faster on XLA's CPU.

    jax.grad's own rule writes dC/dw = delta.T @ a as one dot contracting the batch axis of both
    operands; XLA's CPU backend hands that form to Eigen, which for the [30,784] gradient of a
    10-row mini-batch took ~5 us of an ~18 us step. With delta.T laid out in memory first (the
    barrier keeps XLA from folding the transpose back into the dot) the same product goes to
    YNNPACK in about half that; the transpose fuses into the fusion that computes delta.
    ([784,30,10], mb 10: ~9% less per epoch; [784,30,30,30,30,10]: ~12%.) The sums are the same,
    so only float32 rounding differs. Only jax.grad may go through it: a custom_vjp function
    has no forward-mode derivative.
    """
    return a @ w.T


def _times_transpose_fwd(a, w):
    return a @ w.T, (a, w)


def _times_transpose_bwd(residuals, g):
    a, w = residuals
    return g @ w, jax.lax.optimization_barrier(g.T) @ a


times_transpose_grad.defvjp(_times_transpose_fwd, _times_transpose_bwd)

# Weight matrices up to this many entries take times_transpose_grad. For large ones Eigen's own
# dot is the faster one (784-1000x5-10, mb 32: 0.86 s plain vs 0.89 s per 6400 images).
SMALL_WEIGHTS = 100_000


def training_product(a, w):
    """a @ w.T for epoch_fn's gradient: the custom VJP where it is faster (on the CPU, for small
    weights: nnx.choices.dense_grad; decided as the program is traced, shapes being static)."""
    return times_transpose_grad(a, w) if w.size <= SMALL_WEIGHTS and choices.dense_grad() == "custom_vjp" else a @ w.T


# Two steps per loop iteration: XLA's CPU while loop costs ~2 us per trip, a tenth of a small
# step ([784,30,10], mb 10: 0.103 -> 0.092 s per epoch); more unrolling gained nothing here.
UNROLL = 2
BLOCKS = True  # block_fn where it applies (a test turns it off to compare with the epoch-by-epoch loop)


def largest_divisor(n: int, at_most: int) -> int:
    """The largest c <= at_most that divides n: chunks of one shape, so nothing recompiles."""
    return max(c for c in range(1, min(n, at_most) + 1) if n % c == 0)


def steps_per_gather(n_batches: int, m: int, rows: int = 1024) -> int:
    """How many mini-batches to gather at once: the largest divisor of n_batches whose rows fit
    in `rows`. XLA's CPU gather costs about twice a [784,30] step when done 10 rows at a time;
    gathered 1000 rows at a time it is cheap, and the steps then slice contiguous memory."""
    return largest_divisor(n_batches, max(rows, m) // m)


def epoch_fn(spec):
    """epoch(params, opt_state, key, x, y, hyper=()) -> (params, opt_state), not yet jitted.

    hyper: runtime_hyper(spec, dtype) where the spec has them (the book's fixed eta): eta and lmbda / n
    as arguments, not constants, so one compiled epoch serves every eta and lmbda of a sweep (each
    compiled its own, ~1 s apiece here). () trains with spec.optimizer's constants: the same numbers.

    x: the training images, float or as nnx.data.encode stores them (uint8): gathered that way,
    the rows cost less to gather (~7% of a [784,30,10] mb 10 epoch) and are decoded exactly after.

    A fresh permutation of the training set (or, with spec.shuffle false, the set in file order,
    as network3 trains) is cut into n // m mini-batches of one shape (a remainder smaller than m is
    dropped, so nothing recompiles; the book's sizes divide evenly). Rows are gathered by index a
    chunk of mini-batches at a time: the shuffled set is never copied whole, and no step waits on a
    small gather. A net with dropout gets one key per step, split from the epoch's key.
    """
    grad = jax.grad(make_loss(spec, training_product))
    m = spec.mini_batch_size
    random = spec.net.has_randomness

    def epoch(params, opt_state, key, x, y, hyper=()):
        optimizer = spec.optimizer_at(*hyper) if hyper else spec.optimizer

        def step(carry, batch):
            params, opt_state = carry
            updates, opt_state = optimizer.update(grad(params, *batch), opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), None

        n_batches = x.shape[0] // m
        c = steps_per_gather(n_batches, m)
        order, step_keys = epoch_plan(spec, key, x.shape[0])
        order = order.reshape(n_batches // c, c * m)
        chunks = (order, step_keys.reshape(n_batches // c, c, *step_keys.shape[1:])) if random else order

        def chunk(carry, chunk_of):
            idx, keys = chunk_of if random else (chunk_of, None)
            rows = images(x[idx], jax.tree.leaves(carry[0])[0].dtype)
            batches = (rows.reshape(c, m, -1), y[idx].reshape(c, m)) + ((keys,) if random else ())
            return jax.lax.scan(step, carry, batches, unroll=UNROLL)[0], None

        (params, opt_state), _ = jax.lax.scan(chunk, (params, opt_state), chunks)
        return params, opt_state

    return epoch


def epoch_plan(spec, key, n: int):
    """(the epoch's mini-batches as [n // m, m] row indices, one key per step or None): a fresh
    permutation (or file order, spec.shuffle false) and, for a net with dropout, the steps' keys
    from a fold of the epoch's key (the permutation used the key itself)."""
    m = spec.mini_batch_size
    order = permutation(key, n) if spec.shuffle else jnp.arange(n)
    order = order[: n // m * m].reshape(n // m, m)
    return order, jax.random.split(jax.random.fold_in(key, 1), n // m) if spec.net.has_randomness else None


def permutation(key, n: int):
    """jax.random.permutation(key, n), the same integers, in about a third of the time on XLA's CPU.

    JAX shuffles by sorting positions by random 32-bit keys, stably, in rounds (two for 50,000),
    and XLA's CPU sorts (key, position) pairs through a comparator: ~10 ms a round for 50,000, a
    sixth of a [784,30,10] mb 10 epoch. Here each stable sort is a radix sort whose passes sort
    single uint32 words, a key's digit above the position (plain integers, no comparator): the
    positions break ties, so each pass is stable, and the passes from the lowest digit up sort by
    the whole key. The keys are JAX's own (split, then 32 random bits a position).
    """
    rounds = int(np.ceil(3 * np.log(max(1, n)) / np.log(np.iinfo(np.uint32).max)))  # as jax.random's _shuffle
    position_bits = max(1, (n - 1).bit_length())
    if position_bits > 24:  # digits of fewer than 8 bits: more passes than the comparator's sort costs
        return jax.random.permutation(key, n)
    digit_bits, positions = 32 - position_bits, jnp.arange(n, dtype=jnp.uint32)
    order = jnp.arange(n)
    for _ in range(rounds):
        key, subkey = jax.random.split(key)
        bits, by = jax.random.bits(subkey, (n,), jnp.uint32), positions
        for low in range(0, 32, digit_bits):
            digit = (bits[by] >> low) & ((1 << min(digit_bits, 32 - low)) - 1)
            by = by[jnp.sort((digit << position_bits) | positions) & ((1 << position_bits) - 1)]
        order = order[by]
    return order


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


def probe_fn(spec, kinds=()):
    """probe(params, x, y) -> dict of chapter 5's gradient measurements (and `kinds`): nnx.probes."""
    return probes.probe_fn(spec, kinds)


def block_fn(epoch, probe):
    """block(params, opt_state, keys, x, y, probe_x, probe_y, hyper) -> (params, opt_state, measured): len(keys)
    epochs in one program, each probed before its updates, the probes stacked over the epochs.

    For full-batch runs that need nothing from the host between evaluations (no schedule or early
    stopping to decide, no optional probe kinds): ch5's take one step an epoch, and a call, a fetch
    and a record per epoch cost more than the step.
    """

    def block(params, opt_state, keys, x, y, probe_x, probe_y, hyper=()):
        def one(carry, key):
            measured = probe(carry[0], probe_x, probe_y)
            return epoch(*carry, key, x, y, hyper), measured

        (params, opt_state), measured = jax.lax.scan(one, (params, opt_state), keys)
        return params, opt_state, measured

    return block


def make_epoch(spec):
    """epoch(params, opt_state, key, x, y): epoch_fn jitted once, params and optimizer state donated
    (updated in place), the spec's runtime_hyper passed in the params' dtype."""
    jitted = jax.jit(epoch_fn(spec), donate_argnums=(0, 1))

    def epoch(params, opt_state, key, x, y):
        return jitted(params, opt_state, key, x, y, runtime_hyper(spec, jax.tree.leaves(params)[0].dtype))

    epoch.jitted = jitted  # the jitted program, one compilation per shape and dtype
    return epoch


def runtime_hyper(spec, dtype) -> tuple:
    """spec.hyper as epoch_fn's `hyper`: arrays of the params' dtype (float32 rounds eta and lmbda / n
    as the constants they replace would be; float64 keeps them)."""
    return tuple(np.asarray(v, dtype) for v in spec.hyper)


def make_evaluate(spec):
    """evaluate(params, x, y) -> (cost, accuracy) of the images x [n, ...] with labels y, as a run records them."""
    evaluate_split = split_evaluator(spec, jax.jit(evaluate_fn(spec)), jax.jit(summarize_fn), _zero_sums)
    return lambda params, x, y: evaluate_split(params, eval_chunks(spec, Split(x, y), jax.tree.leaves(params)[0].dtype))


def _zero_sums(device, shape=()):
    return jax.device_put((np.zeros(shape, np.float32), np.zeros(shape, np.int32)), device)


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


@jax.jit
def epoch_key(shuffle_key, epoch):
    """The key epoch `epoch` shuffles with, fold_in(shuffle_key, epoch), jitted: eager, it costs
    ~0.12 ms, a tenth of a full-batch epoch of 1,000 images."""
    return jax.random.fold_in(shuffle_key, epoch)


def init_state(spec, key, dtype=jnp.float32):
    params = model.init(key, spec.net, dtype)
    return params, spec.optimizer.init(params)


def fit(spec, data, *, key, on_epoch=None, on_state=None, start=None, earlier=None, should_stop=None, dtype=jnp.float32):
    """Trains one network for spec.epochs epochs and returns (params, history), like network2.SGD.

    Steps are numbered as in the book: gradients at step e are measured before epoch e's updates
    (step 0 is the initialization, and one more measurement follows the last epoch); costs and
    accuracies at step e are measured after epoch e.

    Args:
      data: nnx.data.Data (numpy arrays, pixels float or encoded; moved to the device once here).
      key: PRNG key; split into one key for the initialization and one folded per epoch.
      on_epoch: called as on_epoch(step, values), values a dict of floats: gradient measures at
        steps 0..epochs, costs and accuracies at steps 0..epochs-1.
      on_state: called as on_state(epoch, params, opt_state) after each epoch's values are
        recorded, e.g. to write a checkpoint.
      start: (epoch, params, opt_state) to resume from a checkpoint: training goes on with that
        epoch, drawing the same shuffles an uninterrupted run would.
      earlier: with start, the validation accuracies of the epochs before it, from which the
        schedule and early stopping pick up their count where the run left off.
      should_stop: called as should_stop(step, values) after each epoch's values are recorded;
        a non-empty string stops training there, for that reason (e.g. a search's pruner).
    Returns:
      params, and history: {metric: np.ndarray over steps}; if spec.stop_on_divergence and a
      cost, accuracy or gradient norm became NaN or inf, training stopped there and
      history["diverged_at"] holds that step. If training stopped early (train.early_stopping_n,
      the schedule, or should_stop), history["stopped_at"] holds the last epoch trained and
      history["stop_reason"] why; params are that epoch's.
    """
    init_key, shuffle_key = jax.random.split(key)
    epoch, hyper = make_epoch(spec), runtime_hyper(spec, dtype)
    blocks = jax.jit(block_fn(epoch_fn(spec), probe_fn(spec)), donate_argnums=(0, 1))
    epoch_keys = jax.jit(jax.vmap(jax.random.fold_in, in_axes=(None, 0)))  # the keys epoch() is given one by one
    first, state = (0, init_state(spec, init_key, dtype)) if start is None else (start[0], start[1:])
    with jax.default_matmul_precision(spec.matmul_precision):  # traced at it: TF32 or bfloat16 products only when asked
        (params,), (history,) = _train(
            spec, data, state, first=first,
            run_epoch=lambda p, s, e, x, y: epoch.jitted(p, s, epoch_key(shuffle_key, e), x, y, hyper),
            probe=lambda kinds: make_probe(spec, kinds), split=lambda tree: [tree],
            evaluate=split_evaluator(spec, jax.jit(evaluate_fn(spec)), jax.jit(summarize_fn), _zero_sums),
            run_block=lambda p, s, e, k, *xy: blocks(p, s, epoch_keys(shuffle_key, jnp.arange(e, e + k)), *xy, hyper),
            on_epoch=None if on_epoch is None else lambda i, step, values: on_epoch(step, values),
            on_state=None if on_state is None else lambda i, e, p, s: on_state(e, p, s), dtype=dtype,
            should_stop=None if should_stop is None else lambda i, step, values: should_stop(step, values),
            earlier=None if earlier is None else [earlier],
        )
    return params, history


def fit_many(spec, data, *, seeds, on_epoch=None, on_state=None, should_stop=None, dtype=jnp.float32):
    """fit() for several seeds at once: one compiled program, vmapped over the seeds.

    Seed s uses PRNGKey(s) exactly as fit(key=PRNGKey(s)) does: the same initialization and the
    same shuffles as a separate run. Metrics agree with separate runs to float32 rounding (XLA's
    batched matrix products sum in another order), not bit for bit.

    Args:
      seeds: a sequence of ints.
      on_epoch: called as on_epoch(i, step, values) for the i-th seed.
      on_state: called as on_state(i, epoch, params, opt_state) for the i-th seed.
      should_stop: called as should_stop(i, step, values) for the i-th seed (see fit).
    Returns:
      ([params for each seed], [history for each seed]). A seed that stops early keeps the params
      of its last epoch while the others train on.
    """
    keys = jax.vmap(jax.random.split)(jnp.stack([jax.random.PRNGKey(s) for s in seeds]))
    init_keys, shuffle_keys, hyper = keys[:, 0], keys[:, 1], runtime_hyper(spec, dtype)
    epoch = jax.jit(jax.vmap(epoch_fn(spec), in_axes=(0, 0, 0, None, None, None)), donate_argnums=(0, 1))
    # Jitted: an eager vmap is traced anew at every call, ~20 ms an epoch (ch5_speed: 500 epochs a run).
    fold = jax.jit(jax.vmap(jax.random.fold_in, in_axes=(0, None)))
    blocks = jax.jit(block_fn(jax.vmap(epoch_fn(spec), in_axes=(0, 0, 0, None, None, None)),
                              jax.vmap(probe_fn(spec), in_axes=(0, None, None))), donate_argnums=(0, 1))
    epoch_keys = jax.jit(jax.vmap(jax.vmap(jax.random.fold_in, in_axes=(0, None)), in_axes=(None, 0)))  # [epochs, seeds]
    with jax.default_matmul_precision(spec.matmul_precision):
        return _train(
            spec, data, jax.vmap(lambda k: init_state(spec, k, dtype))(init_keys), first=0,
            run_epoch=lambda p, s, e, x, y: epoch(p, s, fold(shuffle_keys, e), x, y, hyper),
            run_block=lambda p, s, e, k, *xy: blocks(p, s, epoch_keys(shuffle_keys, jnp.arange(e, e + k)), *xy, hyper),
            probe=lambda kinds: jax.jit(jax.vmap(probe_fn(spec, kinds), in_axes=(0, None, None))),
            evaluate=split_evaluator(spec, jax.jit(jax.vmap(evaluate_fn(spec), in_axes=(0, None, None, None, 0))),
                                     jax.jit(jax.vmap(summarize_fn, in_axes=(0, 0, None, None))),
                                     lambda device: _zero_sums(device, (len(seeds),))),
            # Cut on the host: slicing each seed out of device arrays costs a dispatch per leaf and seed,
            # and the params are cut every epoch for the checkpoints (ch5_speed's 5 seeds: 13 of 28 s).
            split=lambda tree: [jax.tree.map(operator.itemgetter(i), host) for host in [jax.device_get(tree)] for i in range(len(seeds))],
            on_epoch=on_epoch, on_state=on_state, dtype=dtype, should_stop=should_stop,
        )


def _train(spec, data, state, *, first, run_epoch, run_block, probe, evaluate, split, on_epoch, on_state, dtype, should_stop=None,
           earlier=None):
    """The epoch loop of fit and fit_many; split(tree) cuts a result into one tree per network
    (fit_many's cuts on the host, so its params come back as numpy arrays).

    probe(kinds) builds the jitted probe for those optional kinds (once per distinct set).
    A network whose values turn non-finite is recorded once more (so the blow-up is visible) and
    then dropped from the records; the loop ends early when every network has diverged or stopped.
    Each network follows its own schedule and early stopping (nnx.schedules), on the host between
    epochs; one that stops gets its closing gradient measurement at once and keeps that epoch's
    params. Histograms and spectra go into the history as arrays stacked over the steps listed in
    history["probe_steps/hist"] and history["probe_steps/spectrum"], never to on_epoch (MLflow
    metrics are scalars).

    run_block(params, opt_state, e, k, x, y, probe_x, probe_y) trains epochs e .. e+k-1 in one call
    (block_fn) where nothing is decided on the host between evaluations (`blocked` below); the epochs
    inside a block are recorded from its stacked probes, on_state is called after its last epoch
    only, and a network that diverges inside one is recorded up to the blow-up as in the epoch loop.
    """
    params, opt_state = state
    # Training gathers its rows from the pixels as stored (uint8: epoch_fn decodes them).
    pixels = jnp.asarray(data.train.x) if data.train.x.dtype == np.uint8 else to_device(data.train.x, dtype)
    y_train = jnp.asarray(data.train.y)
    probe_set = (to_device(data.train.x[: spec.probe_size], dtype), y_train[: spec.probe_size])
    histories, built, rules, kept = None, {}, None, {}
    ahead = []  # the probes of the epochs a block has trained already, oldest first
    # Only where an epoch is one step (full batch): there the host's per-epoch work costs more than the
    # epoch, and a block of them is still short, so stop signals and heartbeats (after each block) stay prompt.
    blocked = (BLOCKS and spec.eval_every > 1 and spec.mini_batch_size >= spec.train_size and not spec.injects_eta
               and spec.early_stopping_n is None and should_stop is None and not spec.probes.kinds)
    # Evaluation beside the next epoch, where nothing the host decides after an epoch (eta, early
    # stopping, should_stop) waits for its accuracies: epoch e is recorded once epoch e + 1 is under way.
    beside = None if blocked or spec.logs_eta or should_stop is not None else choices.evaluation_device()
    # On the evaluating device, in evaluate's chunks: the splits evaluated (train.eval_splits).
    splits = {name: eval_chunks(spec, s, dtype, beside) for name, s in data._asdict().items() if name in spec.eval_splits}

    def block_length(e):
        """Epochs from e to the next one after which the host has work: an evaluation, a checkpoint, the end."""
        end = e
        while not ((end + 1) % spec.eval_every == 0 or end == spec.epochs - 1
                   or (spec.checkpoint_every and (end + 1) % spec.checkpoint_every == 0)):
            end += 1
        return end - e + 1

    def train_block(e, k):
        nonlocal params, opt_state
        params, opt_state, stacked = run_block(params, opt_state, e, k, pixels, y_train, *probe_set)
        host = jax.device_get(stacked)
        return [[probes.finish(m, len(spec.net.weighted) - 1) for m in split(jax.tree.map(operator.itemgetter(j), host))] for j in range(k)]

    def measure(step, params):
        kinds = probes.kinds_at(spec, step, spec.epochs)
        if kinds not in built:
            built[kinds] = probe(kinds)
        return [probes.finish(m, len(spec.net.weighted) - 1) for m in split(jax.device_get(built[kinds](params, *probe_set)))]

    def start_histories(measured):
        """One history per network; 5.5's bars (dC/db at init) only where step 0 is measured."""
        return [records.init_bias_grads(m["bias_grad"]) if first == 0 else {} for m in measured]

    def start_rules(count):
        """Each network's (schedule state, early-stopping count), caught up on the epochs before `first`."""
        out = []
        for i in range(count):
            state, patience = spec.schedule.init(), schedules.patience_init()
            for e, accuracy in enumerate((earlier or [[]] * count)[i]):
                state, patience = spec.schedule.update(state, e, accuracy), schedules.patience_update(patience, accuracy)
            out.append((state, patience))
        return out

    def done(history):
        return records.DIVERGED_AT in history or records.STOPPED_AT in history

    def record(step, measured, evaluated=None, extra=None, only=None):
        for i, (history, m) in enumerate(zip(histories, measured)):
            if done(history) or (only is not None and i not in only):
                continue
            values = {**records.flatten_probe(m), **({} if evaluated is None else records.flatten_evaluation(evaluated[i])),
                      **({} if extra is None else extra[i])}
            if spec.eval_every > 1 and evaluated is not None and evaluated[i]:  # which epochs the accuracies are of
                history.setdefault(records.EVAL_STEPS, []).append(step)
            if on_epoch is not None:
                on_epoch(i, step, values)
            for name, value in values.items():
                history.setdefault(name, []).append(value)
            for group in {name.split("/", 1)[0] for name in m.get("arrays", {})}:  # hist, spectrum
                history.setdefault(records.probe_steps(group), []).append(step)
            for name, value in m.get("arrays", {}).items():
                history.setdefault(name, []).append(np.asarray(value))
            if spec.stop_on_divergence and not all(np.isfinite(v) for v in values.values()):
                history[records.DIVERGED_AT] = step

    def stop_reasons(e, evaluated) -> dict:
        """{network: why it stops after epoch e}; advances every live network's schedule and count."""
        reasons = {}
        for i, history in enumerate(histories):
            if done(history):
                continue
            values = records.flatten_evaluation(evaluated[i])
            state, patience = rules[i]
            if "val_accuracy" in values:
                state = spec.schedule.update(state, e, values["val_accuracy"])
                patience = schedules.patience_update(patience, values["val_accuracy"])
            elif not spec.schedule.reads_validation:
                state = spec.schedule.update(state, e, math.nan)
            rules[i] = (state, patience)
            n = spec.early_stopping_n
            rule = state.stop or (f"no improvement in {n} epochs" if n is not None and patience.since >= n else "")
            asked = should_stop(i, e, values) if should_stop is not None else ""  # asked every epoch: a pruner records each
            if (asked or rule) and e < spec.epochs - 1:  # after the last epoch the run ends anyway
                reasons[i] = asked or rule
        return reasons

    def after_epoch(e, measured, evaluated, etas, params, opt_state) -> bool:
        """Records epoch e (fetching its accuracies: evaluate's results, still on the device) and
        hands on its state; True once every network has diverged or stopped."""
        evaluated = split(jax.device_get(evaluated)) if evaluated else [{}] * len(histories)
        record(e, measured, evaluated, [{records.ETA: eta} for eta in etas] if spec.logs_eta else None)
        stopping = stop_reasons(e, evaluated)
        if stopping:
            kept.update({i: jax.tree.map(jnp.copy, split(params)[i]) for i in stopping})  # the others train on (vmapped)
            record(e + 1, measure(e + 1, params), only=stopping)  # the closing gradient measurement, after the last epoch
            for i, reason in stopping.items():
                histories[i].update({records.STOPPED_AT: e, records.STOP_REASON: reason})
        if all(done(h) for h in histories):
            return True
        if on_state is not None:
            for i, (p, s) in enumerate(zip(split(params), split(opt_state))):
                if not done(histories[i]):
                    on_state(i, e, p, s)
        return False

    waiting = None  # with evaluation beside: the last epoch's after_epoch arguments, its accuracies under way
    for e in range(first, spec.epochs):
        if blocked and not ahead and block_length(e) > 1:
            ahead = train_block(e, block_length(e))
        in_block = bool(ahead)  # this epoch's updates are done already
        measured = ahead.pop(0) if in_block else measure(e, params)
        histories = histories or start_histories(measured)
        rules = rules or start_rules(len(measured))
        etas = [state.eta for state, _ in rules]
        if spec.injects_eta:
            opt_state = schedules.set_eta(opt_state, etas)
        if not in_block:
            params, opt_state = run_epoch(params, opt_state, e, pixels, y_train)
        if waiting is not None:
            if after_epoch(*waiting):  # this epoch is dropped: the runs end with the one before
                params, opt_state = jax.device_put(waiting[-2:], jax.devices()[0])
                waiting = None
                break
            waiting = None
        if ahead:  # params are those of the block's last epoch: nothing to evaluate or save before it
            record(e, measured, [{}] * len(histories), [{records.ETA: eta} for eta in etas] if spec.logs_eta else None)
            if all(done(h) for h in histories):
                break
            continue
        evaluating = (e + 1) % spec.eval_every == 0 or e == spec.epochs - 1
        # Beside: a copy on the other device, which the next epoch (params donated) leaves as it is.
        at = (params, opt_state) if beside is None else jax.device_put((params, opt_state), beside)
        evaluated = {name: evaluate(at[0], prepared) for name, prepared in splits.items()} if evaluating else {}
        if beside is not None:
            waiting = (e, measured, evaluated, etas, *at)
        elif after_epoch(e, measured, evaluated, etas, *at):
            break
    else:
        if waiting is None or not after_epoch(*waiting):
            final = measure(spec.epochs, params)
            # epochs=0 (measure the initialization only), or resumed after the last epoch
            histories = histories or start_histories(final)
            record(spec.epochs, final)  # epochs=0: no accuracies, which would cost a pass over 70000 images
    return ([kept.get(i, p) for i, p in enumerate(split(params))],
            [{name: np.asarray(v) for name, v in h.items()} for h in histories])
