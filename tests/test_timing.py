"""The timing primitive, driven by a fake clock (no real time is measured here)."""

from __future__ import annotations

import pytest

from unifer._timing import Stats, measure, time_once


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


class ScriptedClock:
    """Each timed call lasts the next duration from a list (seconds), repeating the last one."""

    def __init__(self, durations_s: list[float]) -> None:
        self.now = 0.0
        self.durations = list(durations_s)
        self.starting = True

    def __call__(self) -> float:
        if not self.starting:  # the end of a call: advance by this call's duration
            self.now += self.durations.pop(0) if len(self.durations) > 1 else self.durations[0]
        self.starting = not self.starting
        return self.now


def test_max_time_caps_min_runs():
    stats = measure(lambda: None, warmup=0, min_runs=100, max_time_s=0.045, clock=FakeClock(0.01))
    assert stats.n == 5
    assert stats.stop == "max_time"


def test_complete_and_max_runs_reasons():
    assert measure(lambda: None, warmup=0, min_runs=3, clock=FakeClock(0.01)).stop == "complete"
    capped = measure(
        lambda: None, warmup=0, min_runs=1, min_time_s=9, max_runs=2, clock=FakeClock(0.01)
    )
    assert capped.stop == "max_runs"


def test_stable_stops_before_min_time_once_the_median_is_tight():
    # Identical durations: the CI of the median has zero width as soon as min_runs are done.
    stats = measure(
        lambda: None, warmup=0, min_runs=20, min_time_s=100, stable=0.01, clock=FakeClock(0.01)
    )
    assert stats.n == 20
    assert stats.stop == "stable"


def test_stable_keeps_running_while_noisy():
    # Alternating 10 ms / 30 ms: the median's CI spans both values, so it never counts as stable
    # and the measurement runs to min_time_s.
    clock = ScriptedClock([0.01, 0.03] * 500)
    stats = measure(lambda: None, warmup=0, min_runs=10, min_time_s=1.0, stable=0.01, clock=clock)
    assert stats.stop == "complete"
    assert stats.n == 50


def test_stable_must_be_positive():
    with pytest.raises(ValueError, match="stable"):
        measure(lambda: None, stable=0)


def test_median_ci_rel():
    assert Stats((5.0,)).median_ci_rel == float("inf")
    assert Stats((10.0,) * 50).median_ci_rel == 0.0
    wide = Stats(tuple(float(x) for x in range(1, 101)))
    assert 0.1 < wide.median_ci_rel < 0.3  # ~ +-10 ranks around 50 of 1..100
    assert Stats.pooled([Stats((1.0,)), Stats((2.0,))]).stop == "pooled"


def test_time_once():
    result, seconds = time_once(lambda: "loaded", clock=FakeClock(0.5))
    assert result == "loaded"
    assert seconds == pytest.approx(0.5)
