"""The one timing primitive: warm up, then time calls until enough runs and enough time.

Everything that measures speed in unifer (the benchmarks, ``unifer bench`` and, later,
``backend="auto"``) times repeated calls through :func:`measure` and one-off events (a model load)
through :func:`time_once`, so their numbers mean the same thing. Statistics are robust ones (median,
percentiles, an order-statistics confidence interval of the median) because a shared machine is
noisy.
"""

from __future__ import annotations

import bisect
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal, TypeVar

import numpy as np

T = TypeVar("T")

#: Why :func:`measure` stopped: both minimums met, the median stable early, or a cap reached.
StopReason = Literal["complete", "stable", "max_runs", "max_time", "pooled"]

#: z/2 for a ~95% interval: the median's order-statistics CI spans n/2 +- Z_HALF * sqrt(n).
_Z_HALF: Final = 0.98


@dataclass(frozen=True, slots=True)
class Stats:
    """Per-call latencies of one measurement, in milliseconds, and why the measurement stopped."""

    samples_ms: tuple[float, ...]
    stop: StopReason = "complete"

    @property
    def n(self) -> int:
        return len(self.samples_ms)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def mean_ms(self) -> float:
        return statistics.fmean(self.samples_ms)

    @property
    def min_ms(self) -> float:
        return min(self.samples_ms)

    @property
    def stdev_ms(self) -> float:
        return statistics.stdev(self.samples_ms) if self.n > 1 else 0.0

    def percentile_ms(self, q: float) -> float:
        """The ``q``-th percentile (0..100), linearly interpolated."""
        return float(np.percentile(self.samples_ms, q))

    @property
    def median_ci_rel(self) -> float:
        """Half-width of a ~95% confidence interval of the median, relative to the median.

        Distribution-free (order statistics), so a few slow outliers do not inflate it the way they
        inflate the standard deviation. ``inf`` for fewer than two samples.
        """
        return median_ci_rel(sorted(self.samples_ms))

    def summary(self) -> dict[str, float]:
        """The usual figures, for JSON reports."""
        return {
            "n": self.n,
            "mean_ms": self.mean_ms,
            "median_ms": self.median_ms,
            "p90_ms": self.percentile_ms(90),
            "p99_ms": self.percentile_ms(99),
            "min_ms": self.min_ms,
            "stdev_ms": self.stdev_ms,
        }

    @classmethod
    def pooled(cls, parts: Sequence[Stats]) -> Stats:
        """One Stats over the samples of several measurements (e.g. interleaved rounds)."""
        return cls(tuple(s for part in parts for s in part.samples_ms), "pooled")


def median_ci_rel(ordered: Sequence[float]) -> float:
    """Relative half-width of the ~95% order-statistics CI of the median of sorted ``ordered``."""
    n = len(ordered)
    if n < 2:
        return math.inf
    spread = _Z_HALF * math.sqrt(n)
    lo = max(0, math.floor(n / 2 - spread))
    hi = min(n - 1, math.ceil(n / 2 + spread))
    mid = n // 2
    median = ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2
    if median <= 0:
        return math.inf
    return (ordered[hi] - ordered[lo]) / 2 / median


def time_once(
    call: Callable[[], T], *, clock: Callable[[], float] = time.perf_counter
) -> tuple[T, float]:
    """Run ``call`` once and return its result and the seconds it took (a load, a first run)."""
    start = clock()
    result = call()
    return result, clock() - start


def measure(
    call: Callable[[], object],
    *,
    warmup: int = 3,
    min_runs: int = 10,
    min_time_s: float = 0.0,
    max_runs: int | None = None,
    max_time_s: float | None = None,
    stable: float | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> Stats:
    """Time ``call`` after ``warmup`` untimed calls.

    Runs until at least ``min_runs`` calls and ``min_time_s`` seconds of timed calls, but never
    more than ``max_runs`` calls or ``max_time_s`` seconds of timed calls (when given). With
    ``stable`` (a fraction such as ``0.01``), it also stops once ``min_runs`` are done and the ~95%
    confidence interval of the median is within ``stable`` of it (see :attr:`Stats.median_ci_rel`),
    before ``min_time_s`` is reached. Each call is timed on its own, so the result keeps the
    distribution, not only the mean; :attr:`Stats.stop` says which rule ended it.
    """
    if min_runs < 1:
        raise ValueError(f"min_runs must be at least 1, got {min_runs}")
    if stable is not None and not stable > 0:
        raise ValueError(f"stable must be a positive fraction (e.g. 0.01), got {stable}")
    for _ in range(warmup):
        call()
    samples: list[float] = []
    ordered: list[float] = []  # kept sorted only for the stability test: O(n) insert, no re-sort
    spent = 0.0
    stop: StopReason = "complete"
    while len(samples) < min_runs or spent < min_time_s:
        if max_runs is not None and len(samples) >= max_runs:
            stop = "max_runs"
            break
        if max_time_s is not None and spent >= max_time_s:
            stop = "max_time"
            break
        if stable is not None and len(samples) >= min_runs and median_ci_rel(ordered) <= stable:
            stop = "stable"
            break
        start = clock()
        call()
        elapsed = clock() - start
        samples.append(elapsed * 1e3)
        if stable is not None:
            bisect.insort(ordered, elapsed * 1e3)
        spent += elapsed
    return Stats(tuple(samples), stop)
