"""nnx.threefry draws JAX's random numbers on the host: the same integers as jax.random, and the hash
itself against Threefry-2x32's published known answers."""

import jax
import numpy as np
import pytest

import nnx
from conftest import tiny_cfg
from nnx import programs, threefry


@pytest.mark.parametrize("key,counter,want", [  # Random123's known-answer tests for threefry2x32_20
    ((0x00000000, 0x00000000), (0x00000000, 0x00000000), (0x6B200159, 0x99BA4EFE)),
    ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
    ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
])
def test_the_hash_gives_threefrys_known_answers(key, counter, want):
    got = threefry.hash2x32(*(np.array([k], np.uint32) for k in (*key, *counter)))
    assert [int(g[0]) for g in got] == list(want)


KEYS = np.asarray(jax.vmap(jax.random.PRNGKey)(np.array([0, 1, 7, 2**31 - 1])))


def test_split_fold_in_and_bits_are_jax_randoms():
    first, second = threefry.split(KEYS)
    for key, a, b in zip(KEYS, first, second):
        np.testing.assert_array_equal(np.stack([a, b]), jax.random.split(key))
        for data in (0, 1, 59, 2**32 - 1):
            np.testing.assert_array_equal(threefry.fold_in(key, data), jax.random.fold_in(key, data))
        np.testing.assert_array_equal(threefry.bits(key, 1000), jax.random.bits(key, (1000,), np.uint32))
    # a batch of keys and of data: [data, keys, 2]
    folded = threefry.fold_in(KEYS, np.arange(3))
    assert folded.shape == (3, len(KEYS), 2)
    np.testing.assert_array_equal(folded[2, 1], jax.random.fold_in(KEYS[1], 2))


@pytest.mark.parametrize("n", [1, 2, 10, 1000, 50_000, 250_000])  # sorting rounds: 0, 1, 1, 1, 2, 2
def test_permutation_is_jax_random_permutation(n):
    """Integer for integer. At 250,000 positions ~7 pairs of the 32-bit sort keys collide in each
    round: the ties are broken as JAX's stable sort breaks them."""
    got = threefry.permutation(KEYS[:2], n)
    assert got.shape == (2, n) and got.dtype == np.int32
    for key, order in zip(KEYS[:2], got):
        np.testing.assert_array_equal(order, jax.random.permutation(key, n))


def test_an_epochs_order_is_the_permutation_or_file_order_cut_to_whole_mini_batches():
    shuffled = nnx.build(tiny_cfg())  # mini-batches of 10
    in_file_order = nnx.build({**tiny_cfg(), "train": {**tiny_cfg()["train"], "shuffle": False}})
    np.testing.assert_array_equal(programs.epoch_order(shuffled, KEYS[0], 105), jax.random.permutation(KEYS[0], 105)[:100])
    np.testing.assert_array_equal(programs.epoch_order(in_file_order, KEYS[:2], 105), np.tile(np.arange(100), (2, 1)))


def test_keys_that_are_not_raw_uint32_pairs_are_refused():
    with pytest.raises(TypeError, match="uint32 arrays"):
        threefry.permutation(np.array([0, 1]), 10)
