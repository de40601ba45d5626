"""``backend="auto"``: measure the candidates on this machine, keep the fastest faithful one.

The flow, with every side effect passed in so tests can drive it with fakes::

    candidates (backend x threads x precision)
      -> cached ranking for this key?  open the best one that still opens  (source "cache")
      -> else open each candidate, check its outputs against the fp32 reference on seeded inputs,
         time it with the shared timing primitive within a budget        (source "measured")
      -> rank by objective; near-ties (within TIE_TOLERANCE) go to the static order
      -> keep the winner's session open, close the rest, store the ranking

Nothing here imports a runtime; the caller (``Engine.load``) supplies how to open a candidate.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final, Literal

import numpy as np

from ._errors import NoBackendAvailableError, UniferError
from ._parity import (
    PRECISION_ORDER,
    TOLERANCE,
    Parity,
    UnseedableInputError,
    compare,
    inner_names,
    is_batch,
    judged_as,
    seeded_feeds,
)
from ._registry import STATIC_ORDER
from ._timing import Stats, measure
from .backend import Precision, Session, TensorSpec

logger = logging.getLogger("unifer.auto")

Objective = Literal["latency", "throughput"]
Source = Literal["cache", "measured", "environment", "static", "explicit"]

#: Candidates whose cost is within this fraction of the best are tied; the static order decides.
TIE_TOLERANCE: Final = 0.03
#: The default measuring budget is this many first-run latencies per candidate, within bounds.
RUNS_PER_CANDIDATE: Final = 40
MIN_BUDGET_S: Final = 0.5
MAX_BUDGET_S: Final = 20.0
#: Batch measured for objective="throughput" when the batch dimension is dynamic.
THROUGHPUT_BATCH: Final = 8
#: What a dynamic dimension besides the batch is measured at when ``dims`` does not size it:
#: where a 3x3 convolution uses every tap (as the conversion check feeds it); 1 where the model
#: cannot run at that size.
DEFAULT_SIZE: Final = 32


@dataclass(frozen=True, slots=True)
class Candidate:
    """One configuration auto may pick."""

    backend: str
    threads: int | None
    precision: Precision
    device: str | None = None
    """An accelerator the backend is opened on (its ``device`` backend option); ``None``: the
    backend's default device."""

    def __str__(self) -> str:
        threads = "default" if self.threads is None else self.threads
        where = f"{self.backend}/{self.device}" if self.device else self.backend
        return f"{where}/{self.precision}/threads={threads}"


@dataclass(frozen=True, slots=True)
class Trial:
    """What happened to one candidate."""

    candidate: Candidate
    status: Literal["measured", "rejected", "failed", "skipped", "chosen-from-cache"]
    median_ms: float | None = None
    p90_ms: float | None = None
    per_sample_ms: float | None = None
    runs: int | None = None
    open_s: float | None = None
    max_abs_diff: float | None = None
    max_relative_diff: float | None = None
    """``max_abs_diff`` over the reference's largest magnitude: what the tolerance limits."""
    cosine: float | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["candidate"] = asdict(self.candidate)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Trial:
        return cls(**{**data, "candidate": Candidate(**data["candidate"])})


@dataclass(frozen=True, slots=True)
class Selection:
    """Why the Engine runs on what it runs on. ``explain()`` renders it as a table."""

    chosen: Candidate
    source: Source
    objective: Objective = "latency"
    trials: tuple[Trial, ...] = ()
    key: str | None = None
    notes: tuple[str, ...] = field(default=())

    def explain(self) -> str:
        lines = [f"chose {self.chosen} ({self.source}, objective {self.objective})"]
        lines.extend(self.notes)
        if self.trials:
            lines.append(
                f"{'candidate':<36} {'status':<18} {'median ms':>10} {'p90 ms':>9} "
                f"{'open s':>7} {'rel diff':>8} {'cosine':>10}  reason"
            )
            for t in self.trials:
                lines.append(
                    f"{t.candidate!s:<36} {t.status:<18} {_fmt(t.median_ms, '.3f'):>10} "
                    f"{_fmt(t.p90_ms, '.3f'):>9} {_fmt(t.open_s, '.2f'):>7} "
                    f"{_fmt(t.max_relative_diff, '.1e'):>8} {_fmt(t.cosine, '.7f'):>10}  "
                    f"{t.reason or ''}"
                )
        return "\n".join(lines)

    def summary(self) -> str:
        """One log line: the choice, its latency, and what it beat."""
        measured = [t for t in self.trials if t.median_ms is not None]
        best = next((t for t in measured if t.candidate == self.chosen), None)
        others = ", ".join(
            f"{t.candidate} {t.median_ms:.3f} ms" for t in measured if t.candidate != self.chosen
        )
        speed = f" {best.median_ms:.3f} ms" if best and best.median_ms is not None else ""
        return f"auto: {self.chosen}{speed} ({self.source})" + (f" over {others}" if others else "")


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def candidates(
    backends: Sequence[str],
    threads: Sequence[int | None],
    precisions: Sequence[Precision],
    devices: Mapping[str, Sequence[str | None]] | None = None,
) -> list[Candidate]:
    """Every combination, fp32 first (the reference must be measured before the others); each
    backend on each of its ``devices`` (``None``: its default device, the only one by default)."""
    ordered = sorted(precisions, key=PRECISION_ORDER.index)
    where = devices or {}
    return [
        Candidate(b, t, p, d)
        for p in ordered
        for b in backends
        for d in where.get(b, (None,))
        for t in threads
    ]


def static_rank(candidate: Candidate) -> tuple[int, int, bool, int]:
    """The one documented tie-break order: backend, then higher precision, then the backend's
    default device before an accelerator, then more threads."""
    order = {name: i for i, name in enumerate(STATIC_ORDER)}
    return (
        order.get(candidate.backend, len(order)),
        PRECISION_ORDER.index(candidate.precision),
        candidate.device is not None,
        -(candidate.threads or 0),
    )


def rank(trials: Sequence[Trial]) -> list[Trial]:
    """Measured trials, best first: lowest cost, with near-ties settled by :func:`static_rank`."""
    measured = [t for t in trials if t.status == "measured" and t.per_sample_ms is not None]
    if not measured:
        return []
    best = min(t.per_sample_ms for t in measured if t.per_sample_ms is not None)
    tied = [t for t in measured if (t.per_sample_ms or 0) <= best * (1 + TIE_TOLERANCE)]
    winner = min(tied, key=lambda t: static_rank(t.candidate))
    rest = sorted((t for t in measured if t is not winner), key=lambda t: t.per_sample_ms or 0)
    return [winner, *rest]


OpenFn = Callable[[Candidate], Session]
MeasureFn = Callable[..., Stats]


def measure_candidates(
    pool: Sequence[Candidate],
    *,
    open_candidate: OpenFn,
    objective: Objective,
    budget_s: float | None,
    reference_only: Collection[Candidate] = (),
    dims: Mapping[str, int] | None = None,
    stored: Precision = "fp32",
    measure_fn: MeasureFn = measure,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[list[Trial], dict[Candidate, Session], dict[str, int]]:
    """Open, check and time every candidate; return the trials, the sessions still open, and the
    sizes fed to the dynamic dimensions besides the batch that ``dims`` left unsized.

    Only sessions within the tie tolerance of the best so far stay open, so the winner needs no
    second load and memory holds few models at a time. ``reference_only`` candidates (fp32, put
    first in ``pool`` when the caller's precisions exclude fp32) only give the reference: the
    first that runs does, is listed as skipped, and the rest are not opened. ``stored``: the
    precision the model computes in by itself (a quantized model's int8), which no candidate is
    judged more strictly than.
    """
    trials: list[Trial] = []
    kept: dict[Candidate, Session] = {}
    costs: dict[Candidate, float] = {}
    best_cost = float("inf")
    reference: dict[str, np.ndarray] | None = None
    reference_name = ""
    feeds: dict[str, np.ndarray] | None = None
    batch = 1
    defaulted: dict[str, int] = {}
    per_candidate_s: float | None = None if budget_s is None else budget_s / max(len(pool), 1)
    for candidate in pool:
        if candidate in reference_only and reference is not None:
            continue
        start = clock()
        try:
            session = open_candidate(candidate)
        except UniferError as exc:
            trials.append(Trial(candidate, "failed", reason=exc.message))
            continue
        open_s = clock() - start
        try:
            if feeds is None:
                feeds, batch, defaulted, outputs, first_s = _first_run(
                    session, objective, dims or {}, clock
                )
            else:
                first_start = clock()
                outputs = session.run(feeds)
                first_s = clock() - first_start
            parity: Parity | None = None
            if reference is None:
                if candidate.precision != "fp32":
                    trials.append(
                        Trial(
                            candidate,
                            "skipped",
                            open_s=open_s,
                            reason="no fp32 reference to check it against",
                        )
                    )
                    continue
                reference, reference_name = outputs, str(candidate)
                if candidate in reference_only:
                    reason = "the fp32 reference only: the precisions asked for exclude fp32"
                    trials.append(Trial(candidate, "skipped", open_s=open_s, reason=reason))
                    continue
            else:
                parity = compare(reference, outputs)
                max_rel, min_cos = TOLERANCE[judged_as(candidate.precision, stored)]
                if not parity.within(max_rel, min_cos):
                    trials.append(
                        Trial(
                            candidate,
                            "rejected",
                            open_s=open_s,
                            max_abs_diff=parity.max_abs_diff,
                            max_relative_diff=parity.max_relative_diff,
                            cosine=parity.min_cosine,
                            reason=(
                                f"outputs differ from {reference_name}: "
                                + (
                                    parity.problem  # NaN, other shapes: numbers would mislead
                                    or f"max abs diff {parity.max_abs_diff:.3g} "
                                    f"({parity.max_relative_diff:.3g} of the output's scale), "
                                    f"cosine {parity.min_cosine:.6f} (needs <= {max_rel:g} of "
                                    f"the scale, >= {min_cos})"
                                )
                            ),
                        )
                    )
                    continue
            if per_candidate_s is None:
                budget = min(
                    max(RUNS_PER_CANDIDATE * first_s * len(pool), MIN_BUDGET_S), MAX_BUDGET_S
                )
                per_candidate_s = budget / len(pool)
            run_once = functools.partial(session.run, feeds)
            stats = measure_fn(
                run_once,
                warmup=1,
                min_runs=5,
                min_time_s=per_candidate_s,
                max_runs=2000,
            )
            cost = stats.median_ms / batch
            trials.append(
                Trial(
                    candidate,
                    "measured",
                    median_ms=stats.median_ms,
                    p90_ms=stats.percentile_ms(90),
                    per_sample_ms=cost,
                    runs=stats.n,
                    open_s=open_s,
                    max_abs_diff=None if parity is None else parity.max_abs_diff,
                    max_relative_diff=None if parity is None else parity.max_relative_diff,
                    cosine=None if parity is None else parity.min_cosine,
                    reason="fp32 reference" if parity is None else None,
                )
            )
            # Keep every session that could still win after the tie-break; close the rest.
            costs[candidate] = cost
            best_cost = min(best_cost, cost)
            kept[candidate] = session
            for other in [c for c in kept if costs[c] > best_cost * (1 + TIE_TOLERANCE)]:
                kept.pop(other).close()
        except (MemoryError, UnseedableInputError):  # the latter: for every candidate alike
            raise
        except Exception as exc:  # one plugin's defect (a non-unifer error) fails only its trial
            trials.append(Trial(candidate, "failed", open_s=open_s, reason=_reason(exc)))
        finally:
            if candidate not in kept:
                session.close()  # idempotent: a session pruned above is already closed
    return trials, kept, defaulted


def _reason(exc: Exception) -> str:
    if isinstance(exc, UniferError):
        return exc.message
    return f"raised {type(exc).__name__}: {exc} (a defect in the plugin: report it to its authors)"


def _first_run(
    session: Session, objective: Objective, dims: Mapping[str, int], clock: Callable[[], float]
) -> tuple[dict[str, np.ndarray], int, dict[str, int], dict[str, np.ndarray], float]:
    """The feeds every candidate is measured on, found by running the first session: seeded
    inputs, a larger batch for throughput when the batch is dynamic, ``dims`` for the dimensions
    it names and :data:`DEFAULT_SIZE` (else 1) for the others. Returns the feeds, the batch, the
    sizes defaulted, and the first run's outputs and seconds."""
    inputs = session.inputs
    batch = 1
    if (
        objective == "throughput"
        and inputs
        and inputs[0].shape
        and not isinstance(inputs[0].shape[0], int)
    ):
        batch = THROUGHPUT_BATCH
    unsized = _unsized(inputs, dims)
    fills = [DEFAULT_SIZE, 1] if unsized else [1]
    for fill in fills[:-1]:
        try:
            return _timed_run(session, batch, dims, fill, unsized, clock)
        except UniferError:
            continue  # a model that cannot run at DEFAULT_SIZE may at 1
    return _timed_run(session, batch, dims, fills[-1], unsized, clock)


def _timed_run(
    session: Session,
    batch: int,
    dims: Mapping[str, int],
    fill: int,
    unsized: Sequence[str],
    clock: Callable[[], float],
) -> tuple[dict[str, np.ndarray], int, dict[str, int], dict[str, np.ndarray], float]:
    feeds = seeded_feeds(session.inputs, batch=batch, sizes=dims, fill=fill)
    start = clock()
    outputs = session.run(feeds)
    return feeds, batch, dict.fromkeys(unsized, fill), outputs, clock() - start


def _unsized(inputs: Sequence[TensorSpec], dims: Mapping[str, int]) -> list[str]:
    """The dynamic dimensions besides the batch that ``dims`` does not size ("?" if unnamed)."""
    inner = inner_names(inputs)
    found = [
        d if isinstance(d, str) else "?"
        for spec in inputs
        for axis, d in enumerate(spec.shape)
        if not isinstance(d, int)
        and not (axis == 0 and is_batch(d, inner))
        and not (isinstance(d, str) and d in dims)
    ]
    return list(dict.fromkeys(found))


def no_candidate_error(trials: Sequence[Trial], what: str) -> NoBackendAvailableError:
    reasons = {str(t.candidate): t.reason or t.status for t in trials}
    lines = "\n".join(f"  {name}: {reason}" for name, reason in reasons.items())
    return NoBackendAvailableError(
        f"auto found no usable backend for {what}:\n{lines}\nFix one of the above, or name a "
        "backend",
        reasons=reasons,
    )
