"""Output integrity: does a backend give the reference backend's answer on the same inputs?

Both runs see the same seeded inputs (:func:`seeded_images`, ``_parity.seeded_feeds``) and are
compared by ``_parity.compare``, the comparison conversions and ``backend="auto"`` use too: per
sample (row of the batch) and output, the cosine similarity (direction, what an embedding is used
for) and the largest absolute difference (scale). The verdict is "yes" when the smallest cosine is
at least ``cosine`` and every output's largest difference at most ``atol + rtol * max|that
output's reference|``. The thresholds depend on the precision asked for (:data:`TOLERANCES`),
since bf16 is expected to differ from fp32 in the third digit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Final

import numpy as np

from .. import _parity, _select


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
    parity = _parity.compare(reference, outputs)
    if parity.problem is not None:
        return {
            "ok": False,
            "cosine_min": None,
            "max_abs_diff": None,
            "reference_max_abs": None,
            "allowed_max_abs_diff": None,
            "samples": 0,
            "tolerance": tolerance.to_dict(),
            "problem": parity.problem,
        }
    allowed = tolerance.atol + tolerance.rtol * parity.reference_max_abs
    relative_ok = parity.max_relative_diff <= tolerance.rtol or parity.max_abs_diff <= allowed
    return {
        "ok": parity.samples > 0 and parity.min_cosine >= tolerance.cosine and relative_ok,
        "cosine_min": parity.min_cosine if parity.samples else None,
        "max_abs_diff": parity.max_abs_diff,
        "reference_max_abs": parity.reference_max_abs,
        "allowed_max_abs_diff": allowed,
        "samples": parity.samples,
        "tolerance": tolerance.to_dict(),
        "problem": None,
    }
