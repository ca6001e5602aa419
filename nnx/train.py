"""Training, as network2.SGD: fit() trains one network and returns its params and history; fit_many()
trains several seeds as one compiled program, vmapped over them.

Each builds its Programs (nnx.programs' pure functions jitted for one network or vmapped, kept per
process for every network of the same structure: kept()) and hands them to nnx.loop, which runs the epochs, calling `on_epoch` and `on_state` so the
caller can record as it goes.
"""

import collections
import functools
import operator

import jax
import jax.numpy as jnp
import numpy as np

from nnx import loop, threefry
from nnx.programs import (
    SUMMARIZE,
    block_fn,
    epoch_fn,
    epoch_order,
    evaluate_fn,
    init_state,
    make_probe,
    probe_fn,
    runtime_hyper,
    split_evaluator,
    summarize_fn,
    zero_sums,
)


def fit(spec, data, *, key, on_epoch=None, on_state=None, start=None, earlier=None, should_stop=None, dtype=jnp.float32,
        blocks=True, beside=True):
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
      blocks, beside: False trains without blocks of epochs or evaluation beside (nnx.loop), with
        the same numbers (the tests compare them).
    Returns:
      params, and history: {metric: np.ndarray over steps}; if spec.stop_on_divergence and a
      cost, accuracy or gradient norm became NaN or inf, training stopped there and
      history["diverged_at"] holds that step. If training stopped early (train.early_stopping_n,
      the schedule, or should_stop), history["stopped_at"] holds the last epoch trained and
      history["stop_reason"] why; params are that epoch's.
    """
    init_key, shuffle_key = jax.random.split(key)
    programs = one_network(spec, shuffle_key, dtype)
    first, state = (0, init_state(spec, init_key, dtype)) if start is None else (start[0], start[1:])
    with jax.default_matmul_precision(spec.matmul_precision):  # traced at it: TF32 or bfloat16 products only when asked
        s = loop.setup(spec, data, programs, dtype, first=first,
                       on_epoch=None if on_epoch is None else lambda i, step, values: on_epoch(step, values),
                       on_state=None if on_state is None else lambda i, e, p, s: on_state(e, p, s),
                       should_stop=None if should_stop is None else lambda i, step, values: should_stop(step, values),
                       blocks=blocks, beside=beside)
        (params,), (history,) = loop.train(s, loop.start(spec, state, 1, None if earlier is None else [earlier]))
    return params, history


def fit_many(spec, data, *, seeds, on_epoch=None, on_state=None, should_stop=None, dtype=jnp.float32, blocks=True, beside=True):
    """fit() for several seeds at once: one compiled program, vmapped over the seeds.

    Seed s uses PRNGKey(s) exactly as fit(key=PRNGKey(s)) does: the same initialization and the
    same shuffles as a separate run. Metrics agree with separate runs to float32 rounding (XLA's
    batched matrix products sum in another order), not bit for bit.

    Args:
      seeds: a sequence of ints.
      on_epoch: called as on_epoch(i, step, values) for the i-th seed.
      on_state: called as on_state(i, epoch, params, opt_state) for the i-th seed.
      should_stop: called as should_stop(i, step, values) for the i-th seed (see fit).
      blocks, beside: as fit's.
    Returns:
      ([params for each seed], [history for each seed]). A seed that stops early keeps the params
      of its last epoch while the others train on.
    """
    keys = jax.vmap(jax.random.split)(jnp.stack([jax.random.PRNGKey(s) for s in seeds]))
    init_keys, shuffle_keys = keys[:, 0], keys[:, 1]
    programs = many_networks(spec, shuffle_keys, dtype)
    with jax.default_matmul_precision(spec.matmul_precision):
        state = jax.vmap(lambda k: init_state(spec, k, dtype))(init_keys)
        s = loop.setup(spec, data, programs, dtype, first=0, on_epoch=on_epoch, on_state=on_state, should_stop=should_stop,
                       blocks=blocks, beside=beside)
        return loop.train(s, loop.start(spec, state, len(seeds)))


# Programs kept per process by the networks' structure (Spec.structure): a sweep's runs that differ
# only in seed, eta, lmbda or sizes reuse one run's jitted programs instead of tracing and lowering
# their own (on the persistent cache's hit, too). The last KEPT structures stay.
KEPT = 16
programs_kept: collections.OrderedDict = collections.OrderedDict()  # (structure, kind, dtype) -> programs
# The same for every network: jitted once per process (one network's summarize: nnx.programs.SUMMARIZE).
SUMMARIZE_MANY = jax.jit(jax.vmap(summarize_fn, in_axes=(0, 0, None, None)))


def kept(spec, kind: str, dtype, build):
    """build()'s programs for networks of spec's structure: built at the first, then kept. A Spec is
    made by nnx.build, which sets its structure; one changed in place of a new config would need its own."""
    if not spec.structure:
        return build()
    key = (spec.structure, kind, jnp.dtype(dtype).name)
    if key not in programs_kept:
        programs_kept[key] = build()
        while len(programs_kept) > KEPT:
            programs_kept.popitem(last=False)
    programs_kept.move_to_end(key)
    return programs_kept[key]


def epoch_plans(spec, shuffle_keys, epochs, n: int) -> tuple:
    """(keys, orders) on the host for the epochs (an int, or an array of them for a block) of each
    network: epoch e's key is fold_in(shuffle_key, e), and it draws the epoch's order (epoch_order)."""
    keys = threefry.fold_in(shuffle_keys, epochs)
    return keys, epoch_order(spec, keys, n)


def one_network(spec, shuffle_key, dtype) -> loop.Programs:
    """fit's programs; epoch e shuffles with fold_in(shuffle_key, e) (epoch_plans)."""
    hyper, shuffle_key = runtime_hyper(spec, dtype), np.asarray(shuffle_key)
    epoch, block, evaluate, probe = kept(spec, "one", dtype, lambda: (
        jax.jit(epoch_fn(spec), donate_argnums=(0, 1)),
        jax.jit(block_fn(epoch_fn(spec), probe_fn(spec)), donate_argnums=(0, 1)),
        jax.jit(evaluate_fn(spec)),
        functools.cache(lambda kinds: make_probe(spec, kinds)),
    ))
    return loop.Programs(
        count=1,
        run_epoch=lambda p, s, e, x, y: epoch(p, s, *epoch_plans(spec, shuffle_key, e, len(x)), x, y, hyper),
        run_block=lambda p, s, e, k, x, *rest: block(p, s, *epoch_plans(spec, shuffle_key, np.arange(e, e + k), len(x)), x, *rest, hyper),
        probe=probe,
        evaluate=split_evaluator(spec, evaluate, SUMMARIZE, zero_sums),
        split=lambda tree: [tree],
    )


def many_networks(spec, shuffle_keys, dtype) -> loop.Programs:
    """fit_many's programs: one's, vmapped over the seeds (the data and probe batch shared)."""
    hyper, count, shuffle_keys = runtime_hyper(spec, dtype), len(shuffle_keys), np.asarray(shuffle_keys)

    def build():
        seeds_epoch = jax.vmap(epoch_fn(spec), in_axes=(0, 0, 0, 0, None, None, None))
        return (jax.jit(seeds_epoch, donate_argnums=(0, 1)),
                jax.jit(block_fn(seeds_epoch, jax.vmap(probe_fn(spec), in_axes=(0, None, None))), donate_argnums=(0, 1)),
                jax.jit(jax.vmap(evaluate_fn(spec), in_axes=(0, None, None, None, 0))),
                functools.cache(lambda kinds: jax.jit(jax.vmap(probe_fn(spec, kinds), in_axes=(0, None, None)))))

    epoch, block, evaluate, probe = kept(spec, "many", dtype, build)
    return loop.Programs(
        count=count,
        run_epoch=lambda p, s, e, x, y: epoch(p, s, *epoch_plans(spec, shuffle_keys, e, len(x)), x, y, hyper),
        run_block=lambda p, s, e, k, x, *rest: block(p, s, *epoch_plans(spec, shuffle_keys, np.arange(e, e + k), len(x)), x, *rest, hyper),
        probe=probe,
        evaluate=split_evaluator(spec, evaluate, SUMMARIZE_MANY, lambda device: zero_sums(device, (count,))),
        split=functools.partial(cut, count),
    )


def cut(count: int, tree) -> list:
    """[the tree of each of `count` networks] from one vmapped over them, cut on the host: slicing each
    out of device arrays costs a dispatch per leaf and seed, and the params are cut every epoch for
    the checkpoints (ch5_speed's 5 seeds: 13 of 28 s)."""
    host = jax.device_get(tree)
    return [jax.tree.map(operator.itemgetter(i), host) for i in range(count)]
