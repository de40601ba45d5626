"""Turn a caller's uint8 image into the tensor a model expects, as a ``Preprocess`` spec declares.

:class:`Preprocess` is data: a frozen, serialisable description of colour order, resize, mean/std,
layout and dtype, applied by the core before ``Session.run`` (backends never see it). It applies
one formula in one documented order: colour conversion, resize, cast to float, ``(x - mean) / std``,
layout, batch dimension. The spec can travel with the model as a ``<stem>.preprocess.json``
sidecar, read with ``json`` and :meth:`Preprocess.from_dict` only. Resizing needs OpenCV or Pillow,
both imported lazily, so importing unifer never imports either. See ``docs/preprocessing.md``.
"""

from __future__ import annotations

import functools
import json
import math
import numbers
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, cast, get_args

import numpy as np
import numpy.typing as npt

from ._errors import PreprocessError
from .backend import TensorSpec, warn_user

__all__ = ["LETTERBOX_FILL", "Preprocess", "load_sidecar", "sidecar_path"]

ResizeMode = Literal["stretch", "letterbox", "center_crop"]
Color = Literal["rgb", "bgr"]
Layout = Literal["nchw", "nhwc"]
OutDtype = Literal["float32", "float16", "uint8"]

#: Pixel value (in 0..255, before normalisation) of the border ``resize="letterbox"`` adds.
LETTERBOX_FILL: Final = 0

#: Suffix of the sidecar file next to a model: ``arcface.onnx`` -> ``arcface.preprocess.json``.
SIDECAR_SUFFIX: Final = ".preprocess.json"

_RESIZE_MODES: Final[tuple[str, ...]] = get_args(ResizeMode)
_COLORS: Final[tuple[str, ...]] = get_args(Color)
_LAYOUTS: Final[tuple[str, ...]] = get_args(Layout)
_DTYPES: Final[tuple[str, ...]] = get_args(OutDtype)
_FIELDS: Final = ("size", "resize", "input_color", "color", "mean", "std", "layout", "dtype")


@dataclass(frozen=True, slots=True, kw_only=True)
class Preprocess:
    """How to turn an ``HxWx3`` (or ``NxHxWx3``) uint8 image into the model's input tensor.

    The steps always run in this order: colour conversion (channels reversed when ``input_color``
    differs from ``color``), resize to ``size``, cast to float, ``(x - mean) / std``, layout, batch
    dimension. ``mean`` and ``std`` are in 0..255 pixel units and in the model's channel order
    (``color``). Change a spec with :func:`dataclasses.replace`.

    Args:
        size: ``(height, width)`` the model takes; ``None`` keeps the image's size.
        resize: How to reach ``size``: ``"stretch"`` ignores the aspect ratio, ``"letterbox"``
            fits the image inside and pads with :data:`LETTERBOX_FILL`, centred, and
            ``"center_crop"`` scales the shorter side to cover and crops the centre.
        input_color: Channel order of the images callers pass (OpenCV images are ``"bgr"``).
        color: Channel order the model was trained on.
        mean: Per-channel value subtracted, in pixel units.
        std: Per-channel divisor, in pixel units; nonzero.
        layout: ``"nchw"`` or ``"nhwc"``; checked against the model by :meth:`check_layout`.
        dtype: Element type of the result. ``"uint8"`` allows no normalisation.

    Raises:
        PreprocessError: A field has a wrong type or value; the message names the field.

    Example:
        >>> import numpy as np
        >>> pre = Preprocess.arcface()
        >>> pre(np.zeros((112, 112, 3), dtype=np.uint8)).shape
        (1, 3, 112, 112)

    .. versionadded:: 0.1
    """

    size: tuple[int, int] | None = None
    resize: ResizeMode = "stretch"
    input_color: Color = "rgb"
    color: Color = "rgb"
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    layout: Layout = "nchw"
    dtype: OutDtype = "float32"

    def __post_init__(self) -> None:
        # object.__setattr__ because the dataclass is frozen: lists (from JSON) become tuples.
        object.__setattr__(self, "size", _check_size(self.size))
        _check_choice("resize", self.resize, _RESIZE_MODES)
        _check_choice("input_color", self.input_color, _COLORS)
        _check_choice("color", self.color, _COLORS)
        _check_choice("layout", self.layout, _LAYOUTS)
        object.__setattr__(self, "dtype", _dtype_name(self.dtype))
        _check_choice("dtype", self.dtype, _DTYPES)
        mean = _check_triple("mean", self.mean)
        std = _check_triple("std", self.std)
        if any(s == 0.0 for s in std):
            raise PreprocessError(
                f"std must be nonzero in every channel, got {std}: the image is divided by it; "
                "use 1.0 for a channel that should not be scaled"
            )
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        if self.dtype == "uint8" and (mean != (0.0, 0.0, 0.0) or std != (1.0, 1.0, 1.0)):
            raise PreprocessError(
                f"dtype='uint8' cannot hold normalised values, but mean={mean} and std={std}; "
                "use dtype='float32' (or 'float16'), or leave mean and std at their defaults"
            )
        _check_representable(mean, std, self.dtype)
        if all(abs(s) < 1.0 for s in std) and all(abs(m) <= 1.0 for m in mean):
            # torchvision's constants are for 0..1 pixels; here they would scale 0..255 pixels to
            # hundreds. No model wants that, but a warning (not an error) leaves the choice.
            warn_user(
                f"Preprocess mean={mean}, std={std} look like 0..1 units (torchvision's), but "
                "unifer applies them to 0..255 pixels: multiply both by 255, e.g. "
                "Preprocess.imagenet() uses mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, "
                "57.375)"
            )

    # -- presets ----------------------------------------------------------------------------------

    @classmethod
    def arcface(cls) -> Preprocess:
        """InsightFace ArcFace: 112x112, RGB, ``(x - 127.5) / 127.5``, NCHW float32."""
        return cls(size=(112, 112), mean=(127.5, 127.5, 127.5), std=(127.5, 127.5, 127.5))

    @classmethod
    def imagenet(cls, size: int = 224) -> Preprocess:
        """ImageNet mean/std (torchvision's), RGB, NCHW float32, centre crop to ``size x size``.

        The shorter side is scaled to ``size`` and the centre cropped. torchvision's evaluation
        transform first resizes to ``size / 0.875`` (256 for 224) and then crops, which keeps a
        smaller centre; resize the image yourself first if a model needs exactly that.

        Args:
            size: Side of the square model input.
        """
        return cls(
            size=(size, size),
            resize="center_crop",
            mean=(123.675, 116.28, 103.53),
            std=(58.395, 57.12, 57.375),
        )

    # -- applying ---------------------------------------------------------------------------------

    def __call__(self, image: npt.ArrayLike, /) -> npt.NDArray[Any]:
        """Return the model tensor for one ``HxWx3`` image or an ``NxHxWx3`` batch of uint8 pixels.

        Args:
            image: uint8 pixels in ``input_color`` order, one image or a batch.

        Returns:
            A new C-contiguous array the caller owns, with a batch dimension (1 for one image),
            in ``layout`` and ``dtype``.

        Raises:
            PreprocessError: The image is not uint8 ``HxWx3``/``NxHxWx3``, or it must be resized
                and neither OpenCV nor Pillow is installed.
        """
        batch = _as_batch(image)
        # Resizing treats each channel alike, so it runs before the channel reversal below: same
        # result as the documented order, and the reversed view is then folded into one copy.
        if self.size is not None and batch.shape[1:3] != self.size:
            batch = _resize_batch(batch, self.size, self.resize)
        if self.input_color != self.color:
            batch = batch[..., ::-1]  # a view; the copy below materialises it
        if self.layout == "nchw":
            batch = batch.transpose(0, 3, 1, 2)  # a view as well
        # Every path below writes into a freshly allocated C-contiguous array, so the result never
        # aliases the caller's image and the transpose/reversal cost one pass, not two.
        if self.dtype == "uint8":
            out_u8 = np.empty(batch.shape, dtype=np.uint8)
            np.copyto(out_u8, batch)
            return out_u8
        scale, offset = _affine(self.mean, self.std, self.layout)
        out = np.empty(batch.shape, dtype=np.float32)
        np.multiply(batch, scale, out=out)
        np.add(out, offset, out=out)
        if self.dtype == "float16":
            # Computed in float32 and rounded once: float16 arithmetic would round twice.
            return out.astype(np.float16)
        return out

    def check_layout(self, spec: TensorSpec) -> None:
        """Check that this spec produces what the model input ``spec`` takes.

        The layout is read from ``spec``, never guessed: a channel dimension of 3 in the wrong
        place is an error that names the layout the model's shape implies.

        Args:
            spec: The model input this preprocessing feeds.

        Raises:
            PreprocessError: The rank, channel position, height/width or dtype do not match.
        """
        shape = spec.shape
        dims = "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"
        where = f"model input '{spec.name}' has shape {dims}"
        if len(shape) != 4:
            raise PreprocessError(
                f"{where} (rank {len(shape)}), but Preprocess produces a rank-4 image batch "
                "(NCHW or NHWC); this model does not take images, so pass preprocess=False and "
                "feed prepared arrays with Engine.run()"
            )
        channels_first, channels_last = shape[1], shape[3]
        if self.layout == "nchw" and not _fits(channels_first, 3):
            if _fits(channels_last, 3):
                raise PreprocessError(
                    f"{where}, which is NHWC, but Preprocess.layout is 'nchw'; "
                    "use Preprocess(..., layout='nhwc')"
                )
            raise PreprocessError(
                f"{where}: {channels_first} channels in NCHW, but Preprocess produces 3; "
                "this model needs its own preprocessing, so pass preprocess=False"
            )
        if self.layout == "nhwc" and not _fits(channels_last, 3):
            if _fits(channels_first, 3):
                raise PreprocessError(
                    f"{where}, which is NCHW, but Preprocess.layout is 'nhwc'; "
                    "use Preprocess(..., layout='nchw')"
                )
            raise PreprocessError(
                f"{where}: {channels_last} channels in NHWC, but Preprocess produces 3; "
                "this model needs its own preprocessing, so pass preprocess=False"
            )
        height, width = (shape[2], shape[3]) if self.layout == "nchw" else (shape[1], shape[2])
        if (
            self.size is not None
            and isinstance(height, int)
            and isinstance(width, int)
            and (height, width) != self.size
        ):
            raise PreprocessError(
                f"{where}, so it takes {height}x{width} images (height x width), but "
                f"Preprocess.size is {self.size}; use Preprocess(..., size=({height}, {width}))"
            )
        model_dtype = np.dtype(spec.dtype)
        if model_dtype != np.dtype(self.dtype):
            if model_dtype.name in _DTYPES:
                raise PreprocessError(
                    f"model input '{spec.name}' is {model_dtype.name}, but Preprocess.dtype is "
                    f"'{self.dtype}'; use Preprocess(..., dtype='{model_dtype.name}')"
                )
            raise PreprocessError(
                f"model input '{spec.name}' is {model_dtype.name}, but Preprocess only produces "
                f"{', '.join(_DTYPES)}; pass preprocess=False and feed the array with Engine.run()"
            )

    # -- serialisation ----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, object]:
        """Return the spec as JSON-ready data (tuples as lists); :meth:`from_dict` reverses it."""
        return {
            "size": None if self.size is None else list(self.size),
            "resize": self.resize,
            "input_color": self.input_color,
            "color": self.color,
            "mean": list(self.mean),
            "std": list(self.std),
            "layout": self.layout,
            "dtype": self.dtype,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Preprocess:
        """Build a spec from :meth:`to_dict` output or parsed JSON; missing keys keep defaults.

        Args:
            data: Field names to values; lists are accepted where tuples are expected.

        Raises:
            PreprocessError: ``data`` is not a mapping, has an unknown key, or a bad value.
        """
        if not isinstance(data, Mapping):
            raise PreprocessError(
                f"a Preprocess spec must be a mapping of field names to values, got "
                f"{type(data).__name__}; write it as a JSON object such as "
                '{"size": [112, 112], "mean": [127.5, 127.5, 127.5]}'
            )
        unknown = sorted(str(k) for k in data if k not in _FIELDS)
        if unknown:
            raise PreprocessError(
                f"unknown Preprocess key(s) {', '.join(map(repr, unknown))}; "
                f"valid keys are {', '.join(_FIELDS)}; remove or rename them"
            )
        # Field names are checked above and every value is type-checked by __post_init__.
        return cls(**cast("dict[str, Any]", dict(data)))

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> Preprocess:
        """Read a spec from a JSON file (a sidecar, or a file passed on the command line).

        Args:
            path: A JSON file holding one object in the :meth:`to_dict` format.

        Raises:
            PreprocessError: The file cannot be read, is not valid UTF-8 JSON, or the spec in it
                is invalid; the message names the file.
            FileNotFoundError: The file does not exist.
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise PreprocessError(
                f"{path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}; "
                "fix the file or delete it (it is read as a Preprocess spec)"
            ) from exc
        except UnicodeDecodeError as exc:
            raise PreprocessError(
                f"{path} is not UTF-8 text ({exc.reason}); save it as UTF-8 JSON"
            ) from exc
        except FileNotFoundError:
            raise
        except OSError as exc:  # a directory of that name, no permission to read it
            raise PreprocessError(
                f"{path} cannot be read as a Preprocess spec ({exc.strerror}); make it a readable "
                "JSON file, or remove it"
            ) from exc
        try:
            return cls.from_dict(data)
        except PreprocessError as exc:
            raise PreprocessError(f"{path}: {exc.message}") from exc


def sidecar_path(model: str | os.PathLike[str]) -> Path:
    """Return where the preprocessing sidecar of ``model`` lives.

    ``models/arcface.onnx`` -> ``models/arcface.preprocess.json``; an OpenVINO ``model.xml`` ->
    ``model.preprocess.json``.
    """
    model = Path(model)
    return model.with_name(model.stem + SIDECAR_SUFFIX)


def load_sidecar(model: str | os.PathLike[str]) -> Preprocess | None:
    """Return the spec from ``model``'s sidecar file, or ``None`` when there is none.

    Raises:
        PreprocessError: The sidecar exists but is not valid JSON or not a valid spec.
    """
    path = sidecar_path(model)
    try:
        return Preprocess.from_json(path)
    except FileNotFoundError:
        return None


# -- validation helpers ----------------------------------------------------------------------------


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise PreprocessError(
            f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}; "
            f"pass Preprocess(..., {name}={choices[0]!r}) or another listed value"
        )


def _dtype_name(value: object) -> object:
    """``np.float32`` or ``np.dtype("float32")`` as ``"float32"``: the spec stores names only, so
    that it hashes and serialises like the equal spec built from strings."""
    if isinstance(value, (np.dtype, type)):
        try:
            return np.dtype(value).name
        except TypeError:
            return value
    return value


def _check_representable(
    mean: tuple[float, float, float], std: tuple[float, float, float], dtype: str
) -> None:
    """Refuse a mean/std whose results over 0..255 overflow ``dtype`` (they would come out inf),
    checked on the scale and offset the conversion itself uses (:func:`_affine`)."""
    if dtype == "uint8":
        return
    with np.errstate(over="ignore", invalid="ignore"):
        scale, offset = _affine(mean, std, "nhwc")
        ends = np.concatenate([offset, np.float32(255.0) * scale + offset])
    peak = float(np.where(np.isnan(ends), np.inf, np.abs(ends)).max())  # 0 x inf = nan: overflow
    limit = float(np.finfo(dtype).max)
    if peak > limit:
        raise PreprocessError(
            f"mean={mean} and std={std} turn pixels 0..255 into values beyond what {dtype} holds "
            f"(|(x - mean) / std| up to {peak:.3g}, the limit is {limit:.3g}); mean and std are "
            "in 0..255 pixel units, e.g. mean=(127.5, 127.5, 127.5), std=(127.5, 127.5, 127.5)"
        )


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_size(size: object) -> tuple[int, int] | None:
    if size is None:
        return None
    if (
        not isinstance(size, (tuple, list))
        or len(size) != 2
        or not all(_is_int(v) and int(v) > 0 for v in size)
    ):
        raise PreprocessError(
            f"size must be None or (height, width) with two positive ints, got {size!r}; "
            "for a square 224 input pass size=(224, 224)"
        )
    return (int(size[0]), int(size[1]))


def _check_triple(name: str, value: object) -> tuple[float, float, float]:
    if isinstance(value, np.ndarray) and value.ndim == 1:
        value = value.tolist()
    if not isinstance(value, (tuple, list)):
        raise PreprocessError(
            f"{name} must be 3 numbers (one per channel, in 0..255 pixel units), got {value!r}; "
            f"for the same value in every channel pass {name}=(v, v, v)"
        )
    if len(value) != 3:
        raise PreprocessError(
            f"{name} must have 3 values, got {len(value)} ({list(value)!r}): one per channel, in "
            f"the model's colour order; for the same value in every channel pass {name}=(v, v, v)"
        )
    if not all(_is_real(v) and math.isfinite(float(v)) for v in value):
        raise PreprocessError(
            f"{name} must be 3 finite numbers in 0..255 pixel units, got {list(value)!r}; "
            "pass numbers such as (127.5, 127.5, 127.5)"
        )
    return (float(value[0]), float(value[1]), float(value[2]))


@functools.lru_cache(maxsize=64)
def _affine(
    mean: tuple[float, float, float], std: tuple[float, float, float], layout: str
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Return ``scale, offset`` with ``(x - mean) / std == x * scale + offset``, per channel.

    One multiply and one add, both in place, instead of a subtract and a (slower) divide; cached
    because predict() calls this on every image and the spec is immutable.
    """
    shape = (3, 1, 1) if layout == "nchw" else (3,)
    scale = np.array([1.0 / s for s in std], dtype=np.float32).reshape(shape)
    offset = np.array([-m / s for m, s in zip(mean, std, strict=True)], dtype=np.float32).reshape(
        shape
    )
    scale.flags.writeable = False  # shared between calls: nobody may change them
    offset.flags.writeable = False
    return scale, offset


def _fits(dim: object, expected: int) -> bool:
    """True when a model dimension is ``expected`` or dynamic (a name or ``None``)."""
    return not isinstance(dim, int) or dim == expected


# -- input and resizing ----------------------------------------------------------------------------


def _as_batch(image: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    """Return ``image`` as an ``NxHxWx3`` uint8 array (a view if possible), or say what is wrong."""
    hint = (
        "pass an HxWx3 uint8 RGB image or an NxHxWx3 batch; "
        "for OpenCV images use Preprocess(..., input_color='bgr')"
    )
    mode = getattr(image, "mode", None)
    if isinstance(mode, str) and hasattr(image, "getbands") and mode != "RGB":
        # A PIL image: its array is palette indices ('P'), K as a 4th channel ('CMYK'), other
        # colour spaces ('YCbCr', 'LAB', 'HSV') or 16-bit values ('I;16'), never RGB pixels.
        raise PreprocessError(
            f"got a PIL image of mode {mode!r}; convert it to RGB pixels first: img.convert('RGB')"
        )
    try:
        arr = np.asarray(image)
    except ValueError as exc:  # a list of images of different sizes
        raise PreprocessError(
            f"cannot make one array of the images given ({exc}); a batch is images of one size: "
            "stack same-size images into an NxHxWx3 array, or call predict() once per image"
        ) from exc
    if arr.dtype != np.uint8:
        raise PreprocessError(
            f"expected uint8 pixels in 0..255, got dtype {arr.dtype} with shape {arr.shape}; "
            f"Preprocess normalises raw pixels itself: {_to_uint8_fix(arr)}, or skip "
            "preprocessing and call Engine.run() with a prepared array"
        )
    if arr.ndim not in (3, 4):
        extra = "; for grayscale use np.repeat(img[..., None], 3, axis=-1)" if arr.ndim == 2 else ""
        raise PreprocessError(
            f"expected an image with 3 or 4 dimensions (HxWx3 or NxHxWx3), got {arr.ndim} "
            f"with shape {arr.shape}; {hint}{extra}"
        )
    if arr.shape[-1] != 3:
        if arr.shape[-1] == 4:
            extra = "; drop the alpha channel with img[..., :3]"
        elif arr.shape[-1] == 1:
            extra = "; for grayscale use np.repeat(img, 3, axis=-1)"
        elif arr.shape[-3] == 3:
            extra = (
                "; this looks channels-first (CHW): use img.transpose(1, 2, 0)"
                if arr.ndim == 3
                else "; this looks channels-first (NCHW): use batch.transpose(0, 2, 3, 1)"
            )
        else:
            extra = ""
        raise PreprocessError(
            f"expected 3 colour channels in the last dimension, got shape {arr.shape}; "
            f"{hint}{extra}"
        )
    if arr.size == 0:
        raise PreprocessError(f"expected a non-empty image, got shape {arr.shape}; {hint}")
    return arr[np.newaxis] if arr.ndim == 3 else arr


def _to_uint8_fix(arr: np.ndarray) -> str:
    """How to turn ``arr`` into 0..255 pixels, judged from its type (its values are not read:
    they may be many)."""
    if arr.dtype.kind == "f":
        return (
            "convert with (img * 255).round().astype(np.uint8) if the values are 0..1, or "
            "img.round().astype(np.uint8) if they are 0..255"
        )
    if arr.dtype in (np.uint16, np.dtype(">u2")):
        return "convert 16-bit pixels with (img >> 8).astype(np.uint8)"
    return "convert with arr.astype(np.uint8) if the values are 0..255"


def _resize_batch(
    batch: npt.NDArray[np.uint8], size: tuple[int, int], mode: str
) -> npt.NDArray[np.uint8]:
    out = np.empty((batch.shape[0], size[0], size[1], 3), dtype=np.uint8)
    for i, image in enumerate(batch):
        out[i] = _resize_one(image, size, mode)
    return out


def _resize_one(
    image: npt.NDArray[np.uint8], size: tuple[int, int], mode: str
) -> npt.NDArray[np.uint8]:
    height, width = size
    src_h, src_w = image.shape[:2]
    if mode == "stretch":
        return _resize_exact(image, height, width)
    if mode == "letterbox":
        scale = min(height / src_h, width / src_w)
        new_h = min(height, max(1, round(src_h * scale)))
        new_w = min(width, max(1, round(src_w * scale)))
        canvas = np.full((height, width, 3), LETTERBOX_FILL, dtype=np.uint8)
        top, left = (height - new_h) // 2, (width - new_w) // 2
        canvas[top : top + new_h, left : left + new_w] = _resize_exact(image, new_h, new_w)
        return canvas
    # center_crop: the shorter side (relative to the target) covers, the longer one is cropped.
    scale = max(height / src_h, width / src_w)
    new_h = max(height, round(src_h * scale))
    new_w = max(width, round(src_w * scale))
    top, left = (new_h - height) // 2, (new_w - width) // 2
    if scale > 1 and new_h * new_w > _ENLARGED_CROP_LIMIT * height * width:
        # A very elongated image enlarged to cover the target (1x40000 -> 224x8960000: 6 GB)
        # would be mostly cropped away: compute only the window that is kept.
        return _enlarged_window(image, (new_h, new_w), (top, left), size)
    resized = _resize_exact(image, new_h, new_w)
    return resized[top : top + height, left : left + width]


#: How much larger than the target an enlarged image may be before only the window is computed.
_ENLARGED_CROP_LIMIT: Final = 4


def _enlarged_window(
    image: npt.NDArray[np.uint8],
    full: tuple[int, int],
    corner: tuple[int, int],
    size: tuple[int, int],
) -> npt.NDArray[np.uint8]:
    """``image`` enlarged bilinearly to ``full`` and cut to ``size`` at ``corner``, computing only
    that window: the same sampling as the full resize (pixel centres aligned), within one level
    of its fixed-point rounding (tests/test_preprocess.py)."""
    (full_h, full_w), (top, left), (height, width) = full, corner, size
    src_h, src_w = image.shape[:2]
    sy, sx = full_h / src_h, full_w / src_w
    try:
        import cv2
    except ImportError:
        image_module = _pillow(image, size)
        box = (left / sx, top / sy, (left + width) / sx, (top + height) / sy)
        pil = image_module.fromarray(np.ascontiguousarray(image))
        cut = pil.resize((width, height), image_module.Resampling.BILINEAR, box=box)
        return np.asarray(cut, dtype=np.uint8)
    # Output pixel (x, y) samples the source at ((x + left + 0.5) / sx - 0.5, ...), as resize does.
    inverse = np.array(
        [[1 / sx, 0, (left + 0.5) / sx - 0.5], [0, 1 / sy, (top + 0.5) / sy - 0.5]], np.float64
    )
    window = cv2.warpAffine(
        np.ascontiguousarray(image),
        inverse,
        (width, height),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REPLICATE,
    )
    return np.asarray(window, dtype=np.uint8)


def _resize_exact(image: npt.NDArray[np.uint8], height: int, width: int) -> npt.NDArray[np.uint8]:
    """Bilinear resize to exactly ``height x width`` with OpenCV, else Pillow."""
    if image.shape[:2] == (height, width):
        return image
    # Imported here, not at module top: importing unifer must not import OpenCV or Pillow, and an
    # image already at the model's size needs neither.
    try:
        import cv2
    except ImportError:
        pass
    else:
        # INTER_AREA averages the source pixels when shrinking (no aliasing); when enlarging it
        # degrades to nearest-neighbour, so bilinear is used there. One call cannot do both: when
        # one axis shrinks and the other grows, the shrinking axis is averaged first, alone.
        source: np.ndarray = np.ascontiguousarray(image)
        src_h, src_w = image.shape[:2]
        if height < src_h and width > src_w:
            source = cv2.resize(source, (src_w, height), interpolation=cv2.INTER_AREA)
        elif width < src_w and height > src_h:
            source = cv2.resize(source, (width, src_h), interpolation=cv2.INTER_AREA)
        shrinking = height <= source.shape[0] and width <= source.shape[1]
        interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
        resized = cv2.resize(source, (width, height), interpolation=interpolation)
        return np.asarray(resized, dtype=np.uint8)
    image_module = _pillow(image, (height, width))
    # Pillow's BILINEAR widens its filter when shrinking, so it antialiases like INTER_AREA.
    pil = image_module.fromarray(np.ascontiguousarray(image))
    resized = pil.resize((width, height), image_module.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)


def _pillow(image: npt.NDArray[np.uint8], size: tuple[int, int]) -> Any:
    """``PIL.Image``, or the error saying that resizing ``image`` to ``size`` needs a library."""
    try:
        from PIL import Image
    except ImportError:
        raise PreprocessError(
            f"the image must be resized from {image.shape[0]}x{image.shape[1]} to "
            f"{size[0]}x{size[1]}, and resizing needs OpenCV or Pillow: "
            'pip install "unifer[image]" (or resize the image yourself before predict())'
        ) from None
    return Image
