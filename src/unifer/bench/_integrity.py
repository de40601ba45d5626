"""Output integrity: does a backend give the reference backend's answer on the same inputs?

Both runs see the same seeded inputs (:func:`seeded_images`, ``_parity.seeded_feeds``). Each
output of each case is compared as a flat vector per sample (row of the batch): the cosine
similarity (direction, what an embedding is used for) and the largest absolute difference (scale).
The verdict
is "yes" when, over every sample and output, the smallest cosine is at least ``cosine`` and the
largest difference at most ``atol + rtol * max|reference|``. The thresholds depend on the precision
asked for (:data:`TOLERANCES`), since bf16 is expected to differ from fp32 in the third digit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Final

import numpy as np

from .. import _select


@dataclass(frozen=True, slots=True, kw_only=True)
class Tolerance:
    """When outputs count as "the same answer" as the reference."""

    cosine: float
    """Smallest acceptable cosine similarity of any sample's output with the reference's."""
    atol: float
    """Absolute part of the allowed max abs difference."""
    rtol: float
    """Part of the allowed max abs difference relative to the largest reference value."""

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


#: Per precision, the thresholds ``backend="auto"`` uses to reject a candidate (one definition, in
#: ``unifer._select``): fp32 must be faithful (BASELINE.md measured cos 1.0 and ~3e-5 on values up
#: to ~4.8 for every fp32 runtime), reduced precisions are judged by what they can keep.
TOLERANCES: Final[Mapping[str, Tolerance]] = {
    precision: Tolerance(cosine=min_cosine, atol=0.0, rtol=max_relative)
    for precision, (max_relative, min_cosine) in _select.TOLERANCE.items()
}


def seeded_images(count: int, height: int, width: int, seed: int) -> np.ndarray:
    """``count`` HxWx3 uint8 RGB images, the same for every backend and run with this seed."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(count, height, width, 3), dtype=np.uint8)


def compare(
    outputs: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    tolerance: Tolerance,
) -> dict[str, Any]:
    """Compare every output with the reference's; a JSON-ready verdict.

    Keys: ``ok`` (the yes/no), ``cosine_min``, ``max_abs_diff``, ``reference_max_abs``,
    ``allowed_max_abs_diff``, ``samples`` (vectors compared) and ``tolerance``; ``problem`` when
    the outputs cannot be compared at all (missing output, other shape, non-finite values).
    """
    problem = None
    cosines: list[float] = []
    max_diff = 0.0
    ref_max = 0.0
    samples = 0
    for name, ref in reference.items():
        got = outputs.get(name)
        if got is None:
            problem = f"output {name!r} is missing"
            break
        if got.shape != ref.shape:
            problem = f"output {name!r} has shape {got.shape}, the reference {ref.shape}"
            break
        if ref.size == 0:
            continue
        rows = ref.shape[0] if ref.ndim else 1  # one vector per sample of the batch
        a = np.asarray(got, dtype=np.float64).reshape(rows, -1)
        b = np.asarray(ref, dtype=np.float64).reshape(rows, -1)
        if not (np.isfinite(a).all() and np.isfinite(b).all()):
            problem = f"output {name!r} has NaN or infinite values"
            break
        for row_a, row_b in zip(a, b, strict=True):
            cosines.append(_cosine(row_a, row_b))
        if a.size:
            max_diff = max(max_diff, float(np.max(np.abs(a - b))))
            ref_max = max(ref_max, float(np.max(np.abs(b))))
        samples += a.shape[0]
    allowed = tolerance.atol + tolerance.rtol * ref_max
    cosine_min = min(cosines) if cosines else None
    ok = (
        problem is None
        and cosine_min is not None
        and cosine_min >= tolerance.cosine
        and max_diff <= allowed
    )
    return {
        "ok": bool(ok),
        "cosine_min": cosine_min,
        "max_abs_diff": max_diff if problem is None else None,
        "reference_max_abs": ref_max,
        "allowed_max_abs_diff": allowed,
        "samples": samples,
        "tolerance": tolerance.to_dict(),
        "problem": problem,
    }


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        # Two zero vectors are the same answer; one zero and one not are not.
        return 1.0 if na == nb else 0.0
    value = float(np.dot(a, b) / (na * nb))
    return min(1.0, value) if math.isfinite(value) else 0.0
