"""The one timing primitive: warm up, then time calls until enough runs and enough time.

Everything that measures speed in unifer (the benchmarks, and later ``unifer bench`` and
``backend="auto"``) times calls through :func:`measure`, so their numbers mean the same thing.
Statistics are robust ones (median, percentiles) because a shared machine is noisy.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class Stats:
    """Per-call latencies of one measurement, in milliseconds."""

    samples_ms: tuple[float, ...]

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
        return cls(tuple(s for part in parts for s in part.samples_ms))


def measure(
    call: Callable[[], object],
    *,
    warmup: int = 3,
    min_runs: int = 10,
    min_time_s: float = 0.0,
    max_runs: int | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> Stats:
    """Time ``call`` after ``warmup`` untimed calls.

    Runs until at least ``min_runs`` calls and ``min_time_s`` seconds of timed calls, but never
    more than ``max_runs`` calls (when given). Each call is timed on its own, so the result keeps
    the distribution, not only the mean.
    """
    if min_runs < 1:
        raise ValueError(f"min_runs must be at least 1, got {min_runs}")
    for _ in range(warmup):
        call()
    samples: list[float] = []
    spent = 0.0
    while len(samples) < min_runs or spent < min_time_s:
        if max_runs is not None and len(samples) >= max_runs:
            break
        start = clock()
        call()
        elapsed = clock() - start
        samples.append(elapsed * 1e3)
        spent += elapsed
    return Stats(tuple(samples))
