"""nnx-bench's alternated repeats and ratio summaries, with fake timers (nothing trains)."""

import itertools

import pytest

from nnx.edges.bench import stats, table
from nnx.edges.bench.stats import Timer, alternate, format_ratio, ratio_summary


def fake(name, calls, seconds):
    """A Timer whose samples are `seconds` in turn and which records each call's name in `calls`."""
    values = iter(seconds)
    return Timer(lambda: calls.append(name) or next(values))


def test_each_repeat_samples_every_contender_once_in_turn():
    calls = []
    timers = {name: fake(name, calls, range(10)) for name in ("nnx", "numpy_book", "torch")}
    samples = alternate(timers, 3)
    assert calls == ["nnx", "numpy_book", "torch"] * 3  # A B C A B C A B C, not A A A B B B C C C
    assert samples == {name: [0, 1, 2] for name in timers}


def test_a_spent_budget_stops_a_contender_but_never_before_three_samples():
    calls, ticks = [], itertools.count()  # the fake clock advances one second per reading
    timers = {"nnx": fake("nnx", calls, range(10)), "book": Timer(fake("book", calls, range(10)).sample, budget=0.5)}
    samples = alternate(timers, 5, clock=lambda: next(ticks))
    assert calls == ["nnx", "book"] * 3 + ["nnx"] * 2  # book spent 1 s after its first: it stops after its third
    assert len(samples["nnx"]) == 5 and samples["book"] == [0, 1, 2]


def test_ratios_are_taken_per_repeat_then_summarized():
    """A drift that slows repeat 2 for both contenders leaves its ratio alone: the median of the
    per-repeat ratios is 21, where the ratio of the medians would be book 2.4 / nnx 0.1 = 24."""
    nnx = [0.1, 0.1, 0.3]
    book = [2.0, 2.4, 6.3]  # ratios 20, 24, 21
    got = ratio_summary(book, nnx)
    assert got["per_repeat"] == pytest.approx([20, 24, 21])
    assert (got["median"], got["min"], got["max"]) == pytest.approx((21, 20, 24))
    assert format_ratio(got) == "21.0x [20.0-24.0]"
    assert format_ratio(ratio_summary([1.9, 2.1, 2.0], [1, 1, 1])) == "2.00x [1.90-2.10]"


def test_a_baseline_with_fewer_samples_pairs_with_the_same_repeats_and_none_is_none():
    assert ratio_summary([4.0, 8.0, 3.0], [1.0, 2.0, 1.0, 9.0, 9.0])["per_repeat"] == [4.0, 4.0, 3.0]
    assert ratio_summary(None, [1.0]) is None and format_ratio(None) == "-"


def test_goals_are_judged_on_the_median():
    """20x the book: met at a median of 20 even though one repeat gave 19; missed at 19.9."""
    def case(book, vec):
        r = lambda xs: ratio_summary(xs, [1.0] * len(xs))
        return {"case": "784-30-10 mb10", "sizes": [784, 30, 10],
                "speedup_range": {"numpy_book": r(book), "numpy_vectorized": r(vec), "torch": None}}

    met = {g["goal"]: g["met"] for g in table.goals([case([19.0, 20.0, 23.0], [0.9, 1.1, 1.2])], None)}
    assert list(met.values()) == [True, None, True, None]  # book, torch not run, vectorised, no whole command
    missed = table.goals([case([19.0, 19.9, 23.0], [0.8, 0.9, 1.5])], {"speedup_range": ratio_summary([9, 11, 12], [1] * 3)})
    assert [g["met"] for g in missed] == [False, None, False, True]


def test_at_least_three_repeats():
    assert stats.MIN_REPEATS >= 3
