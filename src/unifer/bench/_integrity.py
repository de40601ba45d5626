"""Output integrity: does a backend give the reference backend's answer on the same inputs?

Both runs see the same seeded inputs (:func:`seeded_images`, ``_parity.seeded_feeds``) and are
compared by ``_parity.compare``, the comparison conversions and ``backend="auto"`` use too: per
sample (row of the batch) and output, the cosine similarity (direction, what an embedding is used
for) and the largest absolute difference (scale). The verdict is ``Parity.within``, the same test
``backend="auto"`` applies: "yes" when the smallest cosine is at least ``cosine`` and every
output's largest difference is at most ``rtol * max|that output's reference|`` (each output on its
own scale: a large output must not excuse a small one). The thresholds depend on the precision
asked for (:data:`TOLERANCES`), since bf16 is expected to differ from fp32 in the third digit,
and on the precision the model computes in by itself (a quantized model's int8: two runtimes
faithful to it differ as int8 runs do), whichever is looser.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Final

import numpy as np

from .. import _parity


@dataclass(frozen=True, slots=True, kw_only=True)
class Tolerance:
    """When outputs count as "the same answer" as the reference."""

    cosine: float
    """Smallest acceptable cosine similarity of any sample's output with the reference's."""
    rtol: float
    """Largest acceptable max abs difference of an output, as a fraction of the largest absolute
    value of that output's reference."""

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


#: Per precision, the thresholds ``backend="auto"`` uses to reject a candidate (one definition, in
#: ``unifer._parity``): fp32 must be faithful (BASELINE.md measured cos 1.0 and ~3e-5 on values up
#: to ~4.8 for every fp32 runtime), reduced precisions are judged by what they can keep.
TOLERANCES: Final[Mapping[str, Tolerance]] = {
    precision: Tolerance(cosine=min_cosine, rtol=max_relative)
    for precision, (max_relative, min_cosine) in _parity.TOLERANCE.items()
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

    Keys: ``ok`` (the yes/no), ``cosine_min``, ``max_abs_diff``, ``max_relative_diff`` (per
    output, its max abs diff over its largest reference magnitude; the largest over outputs, which
    the verdict holds to ``rtol``), ``reference_max_abs``, ``samples`` (vectors compared) and
    ``tolerance``; ``problem`` when the outputs cannot be compared at all (missing output, other
    shape, non-finite values).
    """
    parity = _parity.compare(reference, outputs)
    comparable = parity.problem is None
    return {
        "ok": parity.samples > 0 and parity.within(tolerance.rtol, tolerance.cosine),
        "cosine_min": parity.min_cosine if comparable and parity.samples else None,
        "max_abs_diff": parity.max_abs_diff if comparable else None,
        "max_relative_diff": parity.max_relative_diff if comparable else None,
        "reference_max_abs": parity.reference_max_abs if comparable else None,
        "samples": parity.samples,
        "tolerance": tolerance.to_dict(),
        "problem": parity.problem,
    }
