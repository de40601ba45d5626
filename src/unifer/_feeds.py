"""Checking a call's feeds against the model's inputs before any runtime sees them.

Runtimes report bad feeds in their own words, sometimes only after a crash deep in a kernel. The
core checks names, rank, fixed and named dimensions, dtype and NaN once, with one wording for every
backend: what was expected against what was given, and how to fix it.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ._errors import InputError
from .backend import TensorSpec


def _describe(dtype: np.dtype[Any], shape: Sequence[object]) -> str:
    dims = ",".join("?" if d is None else str(d) for d in shape)
    return f"{dtype}[{dims}]"


def check_feeds(
    feeds: Mapping[str, object], inputs: Sequence[TensorSpec], *, allow_nan: bool = False
) -> dict[str, np.ndarray]:
    """Return ``feeds`` as C-contiguous arrays, or raise :class:`InputError` saying why
    (``allow_nan``: NaN is a value the model reads, not a mistake)."""
    if not isinstance(feeds, Mapping):
        names = ", ".join(repr(s.name) for s in inputs)
        raise InputError(
            f"run() takes a dict from input name to array, got {type(feeds).__name__}; "
            f"this model's inputs are {names}. For a single image use predict()"
        )
    expected = {spec.name for spec in inputs}
    unknown = [name for name in feeds if name not in expected]
    missing = [spec.name for spec in inputs if spec.name not in feeds]
    if unknown or missing:
        raise InputError(
            "feeds do not match the model inputs: "
            + "; ".join(
                part
                for part in (
                    f"unknown {', '.join(map(repr, unknown))}" if unknown else "",
                    f"missing {', '.join(map(repr, missing))}" if missing else "",
                )
                if part
            )
            + f". The model expects: {', '.join(str(s) for s in inputs)}"
        )
    bound: dict[str, tuple[int, str]] = {}  # named dim -> (size, input that fixed it)
    arrays = {}
    for spec in inputs:
        # asarray(order='C'), not ascontiguousarray, which turns scalars (rank 0) into rank 1.
        try:
            array = np.asarray(feeds[spec.name], order="C")
        except (ValueError, TypeError) as exc:  # ragged nested lists, objects numpy cannot hold
            raise InputError(
                f"input {spec.name!r} is not an array numpy can build ({exc}); pass a numpy "
                f"array of {_describe(spec.dtype, spec.shape)}"
            ) from exc
        if spec.dtype.kind == "O" and array.dtype.kind == "U":
            array = array.astype(object)  # string inputs: numpy's str arrays are what users have
        _check_one(spec, array, bound, isinstance(feeds[spec.name], np.ndarray), allow_nan)
        arrays[spec.name] = array
    return arrays


def _transposition(dims: Sequence[object], shape: Sequence[int]) -> tuple[int, ...] | None:
    """The axis order that makes ``shape`` fit ``dims`` (a dynamic dim fits any size), moving
    the fewest leading axes; None when only the identity or nothing fits. A reshape would
    scramble such an array without an error, so the hint must say transpose."""
    if len(shape) > 6:  # no image layout; the permutations would be many
        return None
    for order in itertools.permutations(range(len(shape))):
        if all(not isinstance(d, int) or d == shape[a] for d, a in zip(dims, order, strict=True)):
            return None if order == tuple(range(len(shape))) else order
    return None


def _fixed_dimension_fix(axis: int, dim: int, rank: int) -> str:
    if axis == 0 and rank > 1:
        return (
            f"this model takes batches of exactly {dim}: pass {dim} per call (x[i:i + {dim}]), or "
            "use a model whose batch dimension is dynamic (built-in models: '?batch=dynamic')"
        )
    return "resize the input to that size (images: Preprocess(size=(height, width)))"


def _check_one(
    spec: TensorSpec,
    array: np.ndarray,
    bound: dict[str, tuple[int, str]],
    given_an_array: bool,
    allow_nan: bool,
) -> None:
    # This runs on every call: messages are only formatted once something is wrong.
    if array.dtype != spec.dtype:
        numpy_type = f"np.{spec.dtype.type.__name__}"
        fix = f"x.astype({numpy_type})" if given_an_array else f"np.asarray(x, dtype={numpy_type})"
        raise InputError(
            f"input {spec.name!r} expects {_expected(spec, array)}; convert it with {fix}"
            + (
                " or pass preprocess=Preprocess(...) to Engine.load for images"
                if array.dtype == np.uint8
                else ""
            )
        )
    if array.ndim != len(spec.shape):
        hint = ""
        if array.ndim + 1 == len(spec.shape):
            order = _transposition(spec.shape[1:], array.shape)
            transpose = f".transpose{order}" if order else ""
            hint = f"; add the batch dimension with x{transpose}[np.newaxis]" + (
                " (the axes are in another order: an HWC image for a CHW model?)" if order else ""
            )
        elif array.ndim == len(spec.shape) + 1 and array.shape[0] == 1:
            hint = "; drop the leading dimension with x[0]"
        raise InputError(
            f"input {spec.name!r} expects rank {len(spec.shape)}: {_expected(spec, array)}{hint}"
        )
    for axis, (dim, size) in enumerate(zip(spec.shape, array.shape, strict=True)):
        if dim is None or dim == size:
            continue
        if isinstance(dim, int):
            order = _transposition(spec.shape, array.shape)
            fix = (
                f"the axes are in another order (NHWC for an NCHW model?): x.transpose{order}"
                if order
                else _fixed_dimension_fix(axis, dim, len(spec.shape))
            )
            raise InputError(
                f"input {spec.name!r} expects {_expected(spec, array)}: dimension {axis} must be "
                f"{dim}; {fix}"
            )
        first = bound.setdefault(dim, (size, spec.name))
        if first[0] != size:
            raise InputError(
                f"dimension {dim!r} is {first[0]} in input {first[1]!r} but {size} in "
                f"input {spec.name!r}; inputs sharing a named dimension must agree"
            )
    # min() propagates NaN without allocating a mask: the common all-finite case stays cheap.
    if not allow_nan and array.dtype.kind == "f" and array.size and np.isnan(array.min()):
        raise InputError(
            f"input {spec.name!r} contains NaN at {int(np.isnan(array).sum())} positions; "
            "the model's outputs would be meaningless. Check how the input was produced, or, "
            "for a model that reads NaN as a missing value, load it with allow_nan=True"
        )


def _expected(spec: TensorSpec, array: np.ndarray) -> str:
    return f"{_describe(spec.dtype, spec.shape)}, got {_describe(array.dtype, array.shape)}"
