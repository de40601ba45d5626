"""Do two runs of a model give the same answer? Seeded inputs, and one way to compare outputs.

Used wherever unifer vouches for outputs: checking a converted model against its source, and
(later) rejecting auto-selection candidates and reporting integrity in benchmarks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np

from ._errors import InputError
from .backend import TensorSpec

#: At fp32 an output may differ from the reference by at most this fraction of the largest
#: reference magnitude, with at least this cosine similarity.
FP32_MAX_RELATIVE_DIFF: Final = 1e-4
FP32_MIN_COSINE: Final = 0.99999


@dataclass(frozen=True, slots=True)
class Parity:
    """The worst case over all outputs of one comparison."""

    max_abs_diff: float
    max_relative_diff: float
    """``max_abs_diff`` divided by the largest reference magnitude of that output."""
    min_cosine: float
    same_layout: bool = True
    """False when the runs returned different output names, counts or sizes."""

    def within(
        self, max_relative_diff: float = FP32_MAX_RELATIVE_DIFF, min_cosine: float = FP32_MIN_COSINE
    ) -> bool:
        return (
            self.same_layout
            and self.max_relative_diff <= max_relative_diff
            and self.min_cosine >= min_cosine
        )


def seeded_feeds(
    inputs: Sequence[TensorSpec], *, batch: int = 1, seed: int = 0
) -> dict[str, np.ndarray]:
    """Deterministic feeds for ``inputs``: a dynamic first dimension becomes ``batch``, other
    dynamic dimensions 1; floats are standard normal, integers small non-negative, booleans random.
    """
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in inputs:
        shape = tuple(
            d if isinstance(d, int) else (batch if axis == 0 else 1)
            for axis, d in enumerate(spec.shape)
        )
        if spec.dtype.kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        elif spec.dtype.kind in "iu":
            feeds[spec.name] = rng.integers(0, 8, size=shape).astype(spec.dtype)
        elif spec.dtype.kind == "b":
            feeds[spec.name] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            raise InputError(
                f"cannot make test values for input {spec}; pass real inputs for this model"
            )
    return feeds


def compare(want: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray]) -> Parity:
    """Compare two runs output by output: by name when the names agree, else by position."""
    if set(want) == set(got):
        pairs = [(want[name], got[name]) for name in want]
    else:
        pairs = list(zip(want.values(), got.values(), strict=False))
    if len(pairs) != len(want) or len(want) != len(got) or any(a.size != b.size for a, b in pairs):
        return Parity(float("inf"), float("inf"), -1.0, same_layout=False)
    max_abs = max_rel = 0.0
    min_cos = 1.0
    for a, b in pairs:
        ref = a.astype(np.float64).ravel()
        other = b.astype(np.float64).ravel()
        if not ref.size:
            continue
        diff = float(np.abs(ref - other).max())
        scale = max(float(np.abs(ref).max()), np.finfo(np.float32).tiny)
        norms = float(np.linalg.norm(ref) * np.linalg.norm(other))
        cosine = float(ref @ other / norms) if norms > 0 else float(diff == 0.0)
        max_abs = max(max_abs, diff)
        max_rel = max(max_rel, diff / scale)
        min_cos = min(min_cos, cosine)
    return Parity(max_abs, max_rel, min_cos)
