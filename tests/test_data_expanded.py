"""Chapter 6's expanded MNIST: shifts checked against a pixel loop and np.roll, the expanded set
against its definition, and a damaged cache rebuilt, never trusted."""

import collections
import hashlib
import warnings

import numpy as np
import pytest

import nnx
from nnx import data

# (dy, dx) for original, up, down, left, right, written out here rather than read from nnx.
BOOK_SHIFTS = [(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)]


def shift_by_loop(image, dy, dx):
    """One 784-pixel image moved dy rows down, dx columns right, one pixel at a time."""
    grid, out = image.reshape(28, 28), np.zeros((28, 28), image.dtype)
    for r in range(28):
        for c in range(28):
            if 0 <= r - dy < 28 and 0 <= c - dx < 28:
                out[r, c] = grid[r - dy, c - dx]
    return out.reshape(784)


def shift_by_roll(images, dy, dx):
    """np.roll, then zero the rows and columns that wrapped round (as the book's expand_mnist.py does)."""
    grid = np.roll(images.reshape(-1, 28, 28), (dy, dx), axis=(1, 2))
    if dy > 0:
        grid[:, :dy] = 0
    if dy < 0:
        grid[:, dy:] = 0
    if dx > 0:
        grid[:, :, :dx] = 0
    if dx < 0:
        grid[:, :, dx:] = 0
    return grid.reshape(-1, 784)


def expected_rows(x, y, order):
    """Row j is copy order[j] % 5 of original order[j] // 5, built by the pixel loop."""
    rows = [shift_by_loop(x[o // 5], *BOOK_SHIFTS[o % 5]) for o in order]
    return np.array(rows, x.dtype).reshape(-1, 784), y[order // 5]


def as_multiset(split):
    return collections.Counter((row.tobytes(), int(label)) for row, label in zip(split.x, split.y))


@pytest.fixture(scope="module")
def book():
    return nnx.load()


@pytest.fixture(scope="module")
def few(book):
    return data.Split(book.train.x[:6], book.train.y[:6])


@pytest.fixture(scope="module")
def full_cache(tmp_path_factory, book):
    """The one build of the full 250,000-image cache these tests make, in a temporary folder."""
    folder = tmp_path_factory.mktemp("nnx_cache")
    return folder, data.load_expanded(cache_dir=folder)


@pytest.mark.parametrize("dy, dx", BOOK_SHIFTS + [(2, -3), (-5, 4)])
def test_shift_matches_a_pixel_loop_and_roll(few, dy, dx):
    moved = data.shift(few.x, dy, dx)
    assert moved.shape == few.x.shape and moved.dtype == few.x.dtype
    np.testing.assert_array_equal(moved, np.stack([shift_by_loop(image, dy, dx) for image in few.x]))
    np.testing.assert_array_equal(moved, shift_by_roll(few.x, dy, dx))


@pytest.mark.parametrize("dy, dx", BOOK_SHIFTS[1:])
def test_shift_moves_the_digit_and_shifts_in_zeros(few, dy, dx):
    """MNIST digits sit in a 20x20 box with a blank border, so a one-pixel shift loses no ink: the
    total ink is kept and the centre of mass moves by exactly (dy, dx); the edge it left is blank."""
    moved = data.shift(few.x, dy, dx).reshape(-1, 28, 28).astype(np.float64)
    before = few.x.reshape(-1, 28, 28).astype(np.float64)
    rows, cols = np.arange(28.0)[:, None], np.arange(28.0)[None, :]

    def centre(ink):
        mass = ink.sum(axis=(1, 2))
        return (ink * rows).sum(axis=(1, 2)) / mass, (ink * cols).sum(axis=(1, 2)) / mass

    # Pixels are k/256 and rows integers: the sums are exact in float64, and each centre rounds once in its
    # division (u64 x 28 ~ 6e-15): the tolerances below only leave room for that.
    np.testing.assert_allclose(moved.sum(axis=(1, 2)), before.sum(axis=(1, 2)), rtol=1e-12)
    np.testing.assert_allclose(centre(moved)[0] - centre(before)[0], dy, atol=1e-9)
    np.testing.assert_allclose(centre(moved)[1] - centre(before)[1], dx, atol=1e-9)
    edge = {(-1, 0): moved[:, -1, :], (1, 0): moved[:, 0, :], (0, -1): moved[:, :, -1], (0, 1): moved[:, :, 0]}
    assert not edge[dy, dx].any()


def test_shift_refuses_bad_input(few):
    with pytest.raises(ValueError, match=r"\[N, 784\].*reshape"):
        data.shift(few.x.reshape(-1, 28, 28), 1, 0)
    with pytest.raises(ValueError, match="whole image out"):
        data.shift(few.x, 28, 0)


def test_expand_holds_each_original_and_each_shift_once(few):
    expanded = data.expand(few)
    n = len(few.y)
    assert expanded.x.shape == (5 * n, 784) and expanded.y.shape == (5 * n,)
    wanted = collections.Counter((shift_by_loop(x, dy, dx).tobytes(), int(y)) for x, y in zip(few.x, few.y)
                                 for dy, dx in BOOK_SHIFTS)
    assert len(wanted) == 5 * n  # the 30 images are distinct, so "once each" is a real check
    assert as_multiset(expanded) == wanted


def test_expand_is_one_fixed_shuffle(few):
    order = np.random.default_rng(0).permutation(5 * len(few.y))
    expanded = data.expand(few)
    x, y = expected_rows(few.x, few.y, order)
    np.testing.assert_array_equal(expanded.x, x)
    np.testing.assert_array_equal(expanded.y, y)
    again = data.expand(few)
    np.testing.assert_array_equal(again.x, expanded.x)
    np.testing.assert_array_equal(again.y, expanded.y)
    assert not np.array_equal(order, np.arange(5 * len(few.y)))


def test_pixels_are_stored_exactly(book):
    x = book.train.x
    assert np.all(x * 256 == np.round(x * 256))  # the book's pixels are k/256
    stored = data.encode(x)
    assert stored.dtype == np.uint8
    assert np.array_equal(data.decode(stored).view(np.uint32), x.view(np.uint32))  # bit for bit
    other = np.array([[0.1, 0.5]], np.float32)  # not k/256: kept as float32, exactly
    assert data.encode(other).dtype == np.float32 and np.array_equal(data.decode(data.encode(other)), other)


def test_cache_is_written_then_used(few, tmp_path, monkeypatch):
    first = data.cached_expand(few, "k", tmp_path)
    [cache] = tmp_path.glob("*.npz")
    assert cache == data.cache_path(tmp_path, "k")
    recorded = cache.with_name(cache.name + ".sha256").read_text().split()
    assert recorded == [hashlib.sha256(cache.read_bytes()).hexdigest(), cache.name]  # sha256sum -c format
    assert np.load(cache, allow_pickle=False)["pixels"].dtype == np.uint8

    monkeypatch.setattr(data, "expand", lambda train: pytest.fail("rebuilt although the cache is sound"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = data.cached_expand(few, "k", tmp_path)
    np.testing.assert_array_equal(second.x, first.x)
    np.testing.assert_array_equal(second.y, first.y)
    assert second.x.dtype == np.float32 and second.y.dtype == np.int32


def flip_bytes(cache):
    raw = bytearray(cache.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    cache.write_bytes(bytes(raw))


def rewrite_validly(cache):
    """A well-formed cache of the right shapes but other pixels: only the checksum can tell."""
    with np.load(cache, allow_pickle=False) as arrays:
        stored = dict(arrays)
    stored["pixels"] = stored["pixels"][::-1].copy()
    with cache.open("wb") as file:
        np.savez(file, **stored)


@pytest.mark.parametrize("damage", [
    flip_bytes,
    rewrite_validly,
    lambda cache: cache.write_bytes(cache.read_bytes()[:1000]),
    lambda cache: cache.unlink(),
    lambda cache: cache.with_name(cache.name + ".sha256").unlink(),
    lambda cache: cache.with_name(cache.name + ".sha256").write_text("not a checksum"),
    lambda cache: cache.with_name(cache.name + ".sha256").write_text(""),
], ids=["flipped", "rewritten", "truncated", "missing", "no checksum", "bad checksum", "empty checksum"])
def test_damaged_cache_is_rebuilt_with_a_warning(few, tmp_path, damage):
    good = data.cached_expand(few, "k", tmp_path)
    cache = data.cache_path(tmp_path, "k")
    damage(cache)
    with pytest.warns(UserWarning, match=f"{cache}.*damaged.*rebuilding"):
        rebuilt = data.cached_expand(few, "k", tmp_path)
    np.testing.assert_array_equal(rebuilt.x, good.x)
    np.testing.assert_array_equal(rebuilt.y, good.y)
    assert sorted(p.name for p in tmp_path.iterdir()) == [cache.name, cache.name + ".sha256"]  # no partial files left
    recorded = cache.with_name(cache.name + ".sha256").read_text().split()[0]
    assert recorded == hashlib.sha256(cache.read_bytes()).hexdigest()  # and the cache is sound again


def test_another_source_never_reuses_the_cache(book, tmp_path):
    a, b = (data.Split(book.train.x[i:i + 3], book.train.y[i:i + 3]) for i in (0, 3))
    data.cached_expand(a, "source_a", tmp_path)
    from_b = data.cached_expand(b, "source_b", tmp_path)
    assert as_multiset(from_b) == as_multiset(data.expand(b))


def test_cached_train_size_keeps_the_rows_of_the_first_originals(few, tmp_path):
    order = np.random.default_rng(0).permutation(5 * len(few.y))
    for n in (2, 0, len(few.y)):
        kept = data.cached_expand(few, "k", tmp_path, train_size=n)
        x, y = expected_rows(few.x, few.y, order[order // 5 < n])
        np.testing.assert_array_equal(kept.x, x)
        np.testing.assert_array_equal(kept.y, y)


def test_load_expanded_builds_the_books_set(book, full_cache):
    folder, expanded = full_cache
    [cache] = folder.glob("*.npz")
    assert cache == data.cache_path(folder, data.MNIST_SHA256) and data.MNIST_SHA256 in cache.name
    assert expanded.train.x.shape == (250_000, 784) and expanded.train.x.dtype == np.float32
    assert expanded.train.y.dtype == np.int32 and len(expanded.train.y) == data.TRAIN_SIZES["mnist_expanded"]
    np.testing.assert_array_equal(np.bincount(expanded.train.y), 5 * np.bincount(book.train.y))
    order = np.random.default_rng(0).permutation(250_000)
    rows = np.random.default_rng(1).choice(250_000, size=40, replace=False)  # a sample against the definition
    x, y = expected_rows(book.train.x, book.train.y, order[rows])
    np.testing.assert_array_equal(expanded.train.x[rows], x)
    np.testing.assert_array_equal(expanded.train.y[rows], y)
    for name in ("validation", "test"):
        np.testing.assert_array_equal(getattr(expanded, name).x, getattr(book, name).x)
        np.testing.assert_array_equal(getattr(expanded, name).y, getattr(book, name).y)


def test_load_expanded_train_size_counts_originals(book, full_cache, monkeypatch):
    folder, _ = full_cache
    monkeypatch.setattr(data, "expand", lambda train: pytest.fail("rebuilt although the cache is sound"))
    monkeypatch.setenv("NNX_DATA_CACHE", str(folder))  # cache_dir=None reads the environment
    n = 7
    small = data.load_expanded(train_size=n)
    order = np.random.default_rng(0).permutation(250_000)
    x, y = expected_rows(book.train.x, book.train.y, order[order // 5 < n])
    np.testing.assert_array_equal(small.train.x, x)
    np.testing.assert_array_equal(small.train.y, y)
    assert len(small.validation.y) == 10_000
    with pytest.raises(ValueError, match="counts original images.*0..50000"):
        data.load_expanded(train_size=50_001, cache_dir=folder)


def test_second_load_reads_the_same_arrays(full_cache, monkeypatch):
    folder, first = full_cache
    monkeypatch.setattr(data, "expand", lambda train: pytest.fail("rebuilt although the cache is sound"))
    second = data.load_expanded(cache_dir=folder)
    assert np.array_equal(second.train.x, first.train.x) and np.array_equal(second.train.y, first.train.y)


def test_default_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("NNX_DATA_CACHE", str(tmp_path / "here"))
    assert data.default_cache_dir() == tmp_path / "here"
    monkeypatch.delenv("NNX_DATA_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # the user's cache, beside JAX's compiled programs
    assert data.default_cache_dir() == tmp_path / "xdg" / "nnx"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert data.default_cache_dir() == tmp_path / ".cache" / "nnx"


def test_registry_and_sizes():
    assert data.DATASETS["mnist_expanded"] is data.load_expanded and data.DATASETS["mnist"] is data.load
    assert data.TRAIN_SIZES == {"mnist": 50_000, "mnist_expanded": 250_000}
