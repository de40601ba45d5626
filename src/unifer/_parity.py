"""Do two runs of a model give the same answer? Seeded inputs, and the one way to compare outputs.

Used wherever unifer vouches for outputs: checking a converted model against its source,
rejecting auto-selection candidates, and the benchmark's output integrity.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np

from . import _digest, _onnx_io
from ._errors import InputError
from .backend import Dim, Precision, TensorSpec

#: At fp32 an output may differ from the reference by at most this fraction of the largest
#: reference magnitude, with at least this cosine similarity.
FP32_MAX_RELATIVE_DIFF: Final = 1e-4
FP32_MIN_COSINE: Final = 0.99999

#: Precisions from the most faithful to the loosest.
PRECISION_ORDER: Final[tuple[Precision, ...]] = ("fp32", "fp16", "bf16", "int8")
#: Accuracy each precision must keep against the fp32 reference: (max relative diff, min cosine).
TOLERANCE: Final[Mapping[str, tuple[float, float]]] = {
    "fp32": (FP32_MAX_RELATIVE_DIFF, FP32_MIN_COSINE),
    "fp16": (1e-2, 0.9999),
    "bf16": (5e-2, 0.999),
    "int8": (2e-1, 0.99),
}


def judged_as(precision: Precision, stored: Precision) -> Precision:
    """The precision whose tolerance judges a run at ``precision`` of a model that computes in
    ``stored`` by itself: the looser. Two runtimes both faithful to an int8 model differ as int8
    runs do (their requantization rounds apart), whatever precision= they were asked for."""
    return max(precision, stored, key=PRECISION_ORDER.index)


def model_precision(path: Path) -> Precision:
    """:func:`~unifer._onnx_io.stored_precision` of the ONNX model at ``path`` (remembered per
    version of the file); ``"fp32"`` for other formats and files it cannot read, for which
    nothing is known."""
    if path.suffix.lower() != ".onnx":
        return "fp32"

    def read(file: Path) -> str:
        try:
            return _onnx_io.stored_precision(_onnx_io.read_graph_io(file))
        except (OSError, _onnx_io.OnnxFormatError):
            return "fp32"  # every backend will say what is wrong with the file

    try:
        stored = _digest.remembered(path, "stored_precision", read, _digest.is_str)
    except OSError:
        return "fp32"
    return stored if stored in TOLERANCE else "fp32"  # type: ignore[return-value]


#: The floor of the scale a difference is divided by, as a Python float: a numpy scalar would make
#: the ratio a numpy scalar too, which JSON (the conversion cache's manifest) cannot hold.
_TINY: Final = float(np.finfo(np.float32).tiny)


@dataclass(frozen=True, slots=True)
class Parity:
    """The worst case over all outputs, and all samples of the batch, of one comparison.

    Every number is a Python ``float`` (or ``int``), so a Parity converts to JSON as it is.
    """

    max_abs_diff: float
    max_relative_diff: float
    """Per output, the max abs difference divided by that output's largest reference magnitude;
    the largest over outputs."""
    min_cosine: float
    """The smallest cosine similarity of one sample's output (a row of the batch) with the
    reference's: the direction of an embedding is what it is used for."""
    samples: int = 0
    """Output vectors compared (samples x outputs)."""
    reference_max_abs: float = 0.0
    problem: str | None = None
    """Why the outputs cannot be compared at all (other names, count or shapes; NaN or inf)."""

    def within(
        self, max_relative_diff: float = FP32_MAX_RELATIVE_DIFF, min_cosine: float = FP32_MIN_COSINE
    ) -> bool:
        return (
            self.problem is None
            and self.max_relative_diff <= max_relative_diff
            and self.min_cosine >= min_cosine
        )


def inner_names(inputs: Sequence[TensorSpec]) -> frozenset[str]:
    """The dimension names ``inputs`` use past their first axis."""
    return frozenset(d for spec in inputs for d in spec.shape[1:] if isinstance(d, str))


def is_batch(first: Dim, inner: frozenset[str]) -> bool:
    """Whether an input's first dimension ``first`` is the batch: dynamic, and not a name also
    used past the first axis (``S`` in bias[S] beside x[N, S] is no batch)."""
    return not isinstance(first, int) and first not in inner


def seeded_feeds(
    inputs: Sequence[TensorSpec],
    *,
    batch: int = 1,
    seed: int = 0,
    sizes: Mapping[str, int] | None = None,
    fill: int = 1,
) -> dict[str, np.ndarray]:
    """Deterministic feeds for ``inputs``: a dynamic dimension named in ``sizes`` gets that size,
    another dynamic first dimension ``batch`` (unless its name is used past the first axis too),
    the rest ``fill``; floats are standard normal, integers small non-negative, booleans random.
    """
    rng = np.random.default_rng(seed)
    named = sizes or {}
    inner = inner_names(inputs)

    def size(axis: int, dim: Dim) -> int:
        if isinstance(dim, int):
            return dim
        if isinstance(dim, str) and dim in named:
            return named[dim]
        return batch if axis == 0 and is_batch(dim, inner) else fill

    feeds = {}
    for spec in inputs:
        shape = tuple(size(axis, d) for axis, d in enumerate(spec.shape))
        if spec.dtype.kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        elif spec.dtype.kind in "iu":
            feeds[spec.name] = rng.integers(0, 8, size=shape).astype(spec.dtype)
        elif spec.dtype.kind == "b":
            feeds[spec.name] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            raise UnseedableInputError(
                f"unifer cannot make test values for input {spec}; pass real inputs for this model"
            )
    return feeds


class UnseedableInputError(InputError):
    """An input of a type no test values can be made for (strings): nothing can be measured or
    compared on made-up inputs."""


def compare(
    want: Mapping[str, np.ndarray],
    got: Mapping[str, np.ndarray],
    *,
    declared: Sequence[TensorSpec] = (),
) -> Parity:
    """Compare ``got`` with the reference ``want`` output by output: by name when the names agree,
    else by position (a converted model may rename its outputs).

    ``declared``: the output specs of the session that returned ``got``. An output whose rank or
    fixed sizes differ from its own declaration is wrong whatever the reference returns (a
    reference can lose a dimension just as the session did).
    """
    if (problem := _undeclared_shape(declared, got)) is not None:
        return incomparable(problem)
    if set(want) == set(got):
        pairs = [(name, want[name], got[name]) for name in want]
    else:
        pairs = [(name, a, b) for (name, a), b in zip(want.items(), got.values(), strict=False)]
    if len(want) != len(got):
        missing = [name for name in want if name not in got]
        return incomparable(
            f"{len(got)} outputs, the reference has {len(want)}"
            + (f"; missing {', '.join(map(repr, missing))}" if missing else "")
        )
    max_abs = max_rel = ref_max = 0.0
    min_cos = 1.0
    samples = 0
    for name, a, b in pairs:
        if a.shape != b.shape:
            return incomparable(f"output {name!r} has shape {b.shape}, the reference {a.shape}")
        if not a.size:
            continue
        rows = a.shape[0] if a.ndim > 1 else 1  # one vector per sample of the batch
        ref = a.astype(np.float64).reshape(rows, -1)
        other = b.astype(np.float64).reshape(rows, -1)
        if not (np.isfinite(ref).all() and np.isfinite(other).all()):
            return incomparable(f"output {name!r} has NaN or infinite values")
        diff = float(np.abs(ref - other).max())
        scale = float(np.abs(ref).max())
        max_abs = max(max_abs, diff)
        max_rel = max(max_rel, diff / max(scale, _TINY))
        ref_max = max(ref_max, scale)
        min_cos = min([min_cos, *(_cosine(r, o) for r, o in zip(ref, other, strict=True))])
        samples += rows
    return Parity(max_abs, max_rel, min_cos, samples=samples, reference_max_abs=ref_max)


def worst(parities: Iterable[Parity]) -> Parity:
    """The worst case of several comparisons (of one model at several batch sizes), as one."""
    items = list(parities)
    return Parity(
        max(p.max_abs_diff for p in items),
        max(p.max_relative_diff for p in items),
        min(p.min_cosine for p in items),
        samples=sum(p.samples for p in items),
        reference_max_abs=max(p.reference_max_abs for p in items),
        problem=next((p.problem for p in items if p.problem is not None), None),
    )


def _undeclared_shape(declared: Sequence[TensorSpec], got: Mapping[str, np.ndarray]) -> str | None:
    """Why an output in ``got`` does not have the rank and fixed sizes ``declared`` for it."""
    for spec in declared:
        if spec.name not in got:
            continue  # a missing output is compare's to report
        shape = got[spec.name].shape
        if len(shape) != len(spec.shape) or any(
            isinstance(d, int) and d != size for d, size in zip(spec.shape, shape, strict=True)
        ):
            return f"output {spec.name!r} has shape {shape}, but its model declares {spec}"
    return None


def incomparable(problem: str) -> Parity:
    """A parity that fails, for outputs that cannot be compared (``problem`` says why)."""
    return Parity(math.inf, math.inf, -1.0, problem=problem)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        # Two zero vectors are the same answer; one zero and one not are not.
        return 1.0 if na == nb else 0.0
    return min(1.0, float(np.dot(a, b) / (na * nb)))
