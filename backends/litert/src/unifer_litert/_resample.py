"""Which of TFLite's resize kernels samples exactly the pixels an ONNX Resize samples.

ONNX's Resize maps each output pixel to a source coordinate by one of five formulas
(``coordinate_transformation_mode``) and rounds it for nearest sampling by one of four rules;
TFLite's RESIZE_NEAREST_NEIGHBOR and RESIZE_BILINEAR know two flags. Rather than a table of
equivalences that holds only for some sizes, the converter computes both sides' coordinates for the
model's fixed sizes and writes the flags that agree on every pixel (or refuses the node).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

import numpy as np

F32: Final = np.float32


def resize_flags(
    transform: str, rounding: str, mode: str, spatial: Sequence[tuple[int, int]]
) -> tuple[bool, bool] | None:
    """TFLite's ``(align_corners, half_pixel_centers)`` sampling exactly the pixels ONNX's Resize
    samples for these sizes, or None.

    Both sides' source coordinates are computed here for every output pixel, in float32 as the
    kernels do (TFLite's reference resize; onnxruntime's), so each combination is checked, not
    assumed, including the ties of nearest rounding.
    """
    for flags in ((False, False), (False, True), (True, False)):
        if all(
            same_sampling(transform, rounding, mode, size, out, *flags) for size, out in spatial
        ):
            return flags
    return None


def same_sampling(
    transform: str,
    rounding: str,
    mode: str,
    size: int,
    out: int,
    align_corners: bool,
    half_pixel: bool,
) -> bool:
    """Whether TFLite with these flags samples, along one axis resized from ``size`` to ``out``,
    the source pixels (nearest) or coordinates (linear) that ONNX's formula gives."""
    x = np.arange(out, dtype=F32)
    ratio = F32(out) / F32(size)
    onnx_coordinates = {
        "half_pixel": (x + F32(0.5)) / ratio - F32(0.5),
        "pytorch_half_pixel": (x + F32(0.5)) / ratio - F32(0.5) if out > 1 else x * F32(0),
        "align_corners": x * F32((size - 1) / (out - 1)) if out > 1 else x * F32(0),
        "asymmetric": x / ratio,
        "tf_half_pixel_for_nn": (x + F32(0.5)) / ratio,
    }
    if transform not in onnx_coordinates:
        return False
    scale = F32((size - 1) / (out - 1)) if align_corners and out > 1 else F32(size) / F32(out)
    offset = F32(0.5) if half_pixel else F32(0)
    tflite = (x + offset) * scale
    if mode == "nearest":
        nearest: dict[str, Callable[[np.ndarray], np.ndarray]] = {
            "round_prefer_floor": lambda v: np.where(v % 1 == 0.5, np.floor(v), np.round(v)),
            "round_prefer_ceil": lambda v: np.floor(v + F32(0.5)),
            "floor": np.floor,
            "ceil": np.ceil,
        }
        if rounding not in nearest:
            return False
        want = np.clip(nearest[rounding](onnx_coordinates[transform]), 0, size - 1)
        # TFLite rounds halves away from zero with align_corners, else floors.
        got = np.floor(tflite + F32(0.5)) if align_corners else np.floor(tflite)
        return bool(np.array_equal(want, np.clip(got, 0, size - 1)))
    if half_pixel:
        tflite = tflite - F32(0.5)
    # Both interpolate between the two neighbours of the clamped coordinate.
    want = np.clip(onnx_coordinates[transform], 0, size - 1)
    return bool(np.allclose(want, np.clip(tflite, 0, size - 1), rtol=0, atol=1e-5))
