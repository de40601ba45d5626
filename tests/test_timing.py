"""The timing primitive, driven by a fake clock (no real time is measured here)."""

from __future__ import annotations

import pytest

from unifer._timing import Stats, measure


class FakeClock:
    def __init__(self, step_s: float) -> None:
        self.now = 0.0
        self.step_s = step_s

    def __call__(self) -> float:
        self.now += self.step_s  # so every timed call lasts exactly one step
        return self.now


def test_runs_warmup_then_min_runs():
    calls = []
    stats = measure(lambda: calls.append(1), warmup=2, min_runs=5, clock=FakeClock(0.01))
    assert len(calls) == 7
    assert stats.n == 5
    assert stats.median_ms == pytest.approx(10.0)


def test_runs_until_min_time():
    stats = measure(lambda: None, warmup=0, min_runs=1, min_time_s=0.1, clock=FakeClock(0.01))
    assert stats.n == 10


def test_max_runs_caps_min_time():
    stats = measure(
        lambda: None, warmup=0, min_runs=1, min_time_s=100, max_runs=4, clock=FakeClock(0.01)
    )
    assert stats.n == 4


def test_statistics():
    stats = Stats((1.0, 2.0, 3.0, 4.0, 100.0))
    assert stats.median_ms == 3.0
    assert stats.min_ms == 1.0
    assert stats.percentile_ms(50) == 3.0
    assert stats.summary()["n"] == 5
    assert Stats.pooled([Stats((1.0,)), Stats((2.0, 3.0))]).samples_ms == (1.0, 2.0, 3.0)


def test_min_runs_must_be_positive():
    with pytest.raises(ValueError, match="min_runs"):
        measure(lambda: None, min_runs=0)
