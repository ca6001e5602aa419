"""The files a run writes: checkpoints during training, params.npz and history.npz at the end.

The arrays' names come from nnx.records; this module only puts them on disk and back.
"""

import os
from pathlib import Path

import jax
import numpy as np

from nnx import programs, records


def save(path: Path, epoch: int, params, opt_state):
    """Params, optimizer state and the epoch they follow, written atomically (tmp + rename)."""
    saver(path, epoch, params, opt_state)()


def saver(path: Path, epoch: int, params, opt_state):
    """save's write as a function of no arguments, over host copies taken now: training may run on
    while another thread writes it (tracking.Run.save_after_logged)."""
    arrays = records.checkpoint_arrays(epoch, params, opt_state)

    def write():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)

    return write


def load(path: Path, spec, seed: int):
    """(next epoch, params, opt_state); the tree's shape comes from a fresh init of the same spec.

    The shuffle keys need no saving: epoch e always uses fold_in(key(seed), e).
    """
    init_key, _ = jax.random.split(jax.random.PRNGKey(seed))
    template = programs.init_state(spec, init_key)
    with np.load(path) as saved:
        epoch, params, opt_state = records.checkpoint_from_arrays(dict(saved), template)
    to_device = lambda tree: jax.tree.map(jax.numpy.asarray, tree)
    return epoch + 1, to_device(params), to_device(opt_state)


def params_writer(params):
    """writer(path) for params.npz (see nnx.records.params_arrays)."""
    arrays = records.params_arrays(params)
    return lambda path: np.savez(path, **arrays)


def history_writer(history):
    return lambda path: np.savez(path, **history)
