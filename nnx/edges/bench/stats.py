"""Alternated repeats and the ratios taken from them.

A machine's speed drifts while a bench runs (other processes, the CPU's clock, a shared VM's
neighbours). Timing contender A's repeats, then B's, then C's puts a drift into one contender's
numbers only; timing A, B, C, A, B, C, ... puts it into all of them alike. Each repeat r gives one
ratio baseline_r / nnx_r, from samples taken seconds apart, and the bench reports their median
with the smallest and largest, so one disturbed repeat neither decides nor hides.
"""

import statistics
import time
from collections.abc import Callable
from typing import NamedTuple

MIN_REPEATS = 3  # the fewest samples a contender gives, whatever its budget: a median needs three


class Timer(NamedTuple):
    """One contender, warmed up and sized: sample() runs and times one sample."""

    sample: Callable[[], object]  # seconds per whole epoch (the bench's cases), or any measurement
    fraction: float = 1.0  # of an epoch each sample trains; below 1 sample() scales its time up
    budget: float | None = None  # seconds of sampling after which it gives no more (None: never)
    first_s: float = 0.0  # its first call at the sampled size, compilation included (nnx's epoch)


def alternate(timers: dict, repeats: int, clock=time.perf_counter) -> dict:
    """{name: [sample of repeat 0, 1, ...]}: each repeat samples every timer once, in dict order.

    A timer whose samples have taken `budget` seconds (by `clock`) gives no more, once it has given
    MIN_REPEATS; its list is then shorter, but sample r of each list still comes from repeat r.
    """
    samples = {name: [] for name in timers}
    spent = dict.fromkeys(timers, 0.0)
    for _ in range(repeats):
        for name, timer in timers.items():
            over = timer.budget is not None and spent[name] >= timer.budget
            if over and len(samples[name]) >= min(MIN_REPEATS, repeats):
                continue
            start = clock()
            samples[name].append(timer.sample())
            spent[name] += clock() - start
    return samples


def ratio_summary(baseline_s, nnx_s) -> dict | None:
    """baseline_r / nnx_r for each repeat r both were sampled in, and their median, min and max.

    None where either side has no samples (a contender not run)."""
    per_repeat = [b / n for b, n in zip(baseline_s or [], nnx_s or [])]
    if not per_repeat:
        return None
    return {"median": statistics.median(per_repeat), "min": min(per_repeat), "max": max(per_repeat),
            "per_repeat": per_repeat}


def _x(value: float) -> str:
    """Three significant figures or so, with the same decimals for a median and its range."""
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def format_ratio(summary: dict | None) -> str:
    """'21.3x [19.8-22.0]': the median, then the smallest and largest repeat; '-' for None."""
    if summary is None:
        return "-"
    return f"{_x(summary['median'])}x [{_x(summary['min'])}-{_x(summary['max'])}]"
