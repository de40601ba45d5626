"""The TensorRT backend's decisions that need no TensorRT: options, profiles and precision.

``backend_options={"tensorrt": {...}}`` are checked here, the optimisation profile of each dynamic
input is worked out from the model's input shapes and the options, and a requested precision is
turned into a build plan or refused with the reason. Keeping this free of the runtime lets it be
tested on machines without a GPU.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from unifer import UnsupportedOptionError
from unifer.backend import integer_option, reject_precision, warn_unknown_options

NAME: Final = "tensorrt"
OPTIONS: Final = (
    "builder_optimization_level",
    "cache",
    "device",
    "max_batch",
    "max_contexts",
    "profiles",
    "tf32",
    "workspace_mib",
)
#: Options that shape how an engine is built from ONNX; a serialized engine runs as it was built.
BUILD_OPTIONS: Final = (
    "builder_optimization_level",
    "max_batch",
    "profiles",
    "tf32",
    "workspace_mib",
)
#: Serialized engines; ``.onnx`` files are built into one.
ENGINE_SUFFIXES: Final = (".engine", ".plan")
DEFAULT_MAX_BATCH: Final = 32
DEFAULT_MAX_CONTEXTS: Final = 4

Shape = tuple[int, ...]


def model_kind(path: Path) -> Literal["onnx", "engine"]:
    """``"engine"`` for a serialized TensorRT engine (``.engine``/``.plan``, any case)."""
    return "engine" if path.suffix.lower() in ENGINE_SUFFIXES else "onnx"


@dataclass(frozen=True, slots=True)
class Profile:
    """One input's optimisation profile: the engine accepts every shape from ``min`` to ``max``
    and is tuned for ``opt``."""

    min: Shape
    opt: Shape
    max: Shape

    def to_json(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    """``backend_options["tensorrt"]``, checked."""

    device: int = 0
    max_batch: int = DEFAULT_MAX_BATCH
    max_contexts: int = DEFAULT_MAX_CONTEXTS
    profiles: Mapping[str, Profile] = field(default_factory=dict)
    tf32: bool = False
    workspace_mib: int | None = None
    builder_optimization_level: int | None = None
    cache: bool = True

    def build_key(self) -> dict[str, object]:
        """The options that change the built engine (part of the engine cache key)."""
        return {
            "max_batch": self.max_batch,
            "profiles": {name: p.to_json() for name, p in sorted(self.profiles.items())},
            "tf32": self.tf32,
            "workspace_mib": self.workspace_mib,
            "builder_optimization_level": self.builder_optimization_level,
        }


def parse_device(value: object) -> int:
    """A CUDA device index from ``0``, ``"cuda:0"``, ``"gpu:0"`` or ``"0"``."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) >= 0:
        return int(value)
    if isinstance(value, str):
        text = value.strip().lower()
        for prefix in ("cuda:", "gpu:"):
            text = text.removeprefix(prefix)
        if text.isdigit():
            return int(text)
    raise UnsupportedOptionError(
        f"backend option 'device' must be a CUDA device index such as 0 or 'cuda:0', got {value!r}"
    )


def _shape(value: object, where: str) -> Shape:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise UnsupportedOptionError(f"{where} must be a list of integers, got {value!r}")
    if any(isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 0 for d in value):
        raise UnsupportedOptionError(f"{where} must be a list of integers >= 0, got {value!r}")
    return tuple(int(d) for d in value)


def parse_profile(name: str, value: object) -> Profile:
    """``{"min": [...], "opt": [...], "max": [...]}`` or ``[min, opt, max]``, checked for order."""
    where = f"backend option 'profiles' for input {name!r}"
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - {"min", "opt", "max"})
        missing = [k for k in ("min", "opt", "max") if k not in value]
        if unknown or missing:
            raise UnsupportedOptionError(
                f"{where} needs exactly the keys 'min', 'opt' and 'max'"
                + (f"; missing {missing}" if missing else "")
                + (f"; unknown {unknown}" if unknown else "")
            )
        parts = [value["min"], value["opt"], value["max"]]
    elif isinstance(value, Sequence) and not isinstance(value, (str, bytes)) and len(value) == 3:
        parts = list(value)
    else:
        raise UnsupportedOptionError(
            f"{where} must be {{'min': shape, 'opt': shape, 'max': shape}} or [min, opt, max], "
            f"got {value!r}"
        )
    low, opt, high = (
        _shape(p, f"{where} ({k})") for p, k in zip(parts, ("min", "opt", "max"), strict=True)
    )
    if not len(low) == len(opt) == len(high):
        raise UnsupportedOptionError(
            f"{where}: min, opt and max must have the same rank, got {low}, {opt}, {high}"
        )
    if not all(a <= b <= c for a, b, c in zip(low, opt, high, strict=True)):
        raise UnsupportedOptionError(
            f"{where}: every dimension needs min <= opt <= max, got min {list(low)}, "
            f"opt {list(opt)}, max {list(high)}"
        )
    return Profile(low, opt, high)


def parse_options(extra: Mapping[str, object]) -> Options:
    """Check ``backend_options["tensorrt"]``; unknown keys warn, bad values raise."""
    warn_unknown_options(NAME, extra, OPTIONS)
    profiles_value = extra.get("profiles", {})
    if not isinstance(profiles_value, Mapping) or not all(
        isinstance(k, str) for k in profiles_value
    ):
        raise UnsupportedOptionError(
            "backend option 'profiles' must map input names to {'min': shape, 'opt': shape, "
            f"'max': shape}}, got {profiles_value!r}"
        )
    for key in ("tf32", "cache"):
        if key in extra and not isinstance(extra[key], bool):
            raise UnsupportedOptionError(
                f"backend option {key!r} must be True or False, got {extra[key]!r}"
            )
    workspace = extra.get("workspace_mib")
    level = extra.get("builder_optimization_level")
    return Options(
        device=parse_device(extra.get("device", 0)),
        max_batch=integer_option(
            "max_batch",
            extra.get("max_batch", DEFAULT_MAX_BATCH),
            "the largest batch the engine accepts",
        ),
        max_contexts=integer_option(
            "max_contexts",
            extra.get("max_contexts", DEFAULT_MAX_CONTEXTS),
            "execution contexts, i.e. run() calls on the GPU at once",
        ),
        profiles={str(k): parse_profile(str(k), v) for k, v in profiles_value.items()},
        tf32=bool(extra.get("tf32", False)),
        workspace_mib=None
        if workspace is None
        else integer_option("workspace_mib", workspace, "TensorRT's workspace pool in MiB"),
        builder_optimization_level=None
        if level is None
        else integer_option(
            "builder_optimization_level",
            level,
            "TensorRT's build effort; its default is 3",
            minimum=0,
            maximum=5,
        ),
        cache=bool(extra.get("cache", True)),
    )


def _dims(shape: Shape) -> str:
    return "[" + ", ".join("?" if d < 0 else str(d) for d in shape) + "]"


def resolve_profiles(inputs: Sequence[tuple[str, Shape]], options: Options) -> dict[str, Profile]:
    """The optimisation profile of every input with dynamic (``-1``) dimensions.

    A dynamic first dimension is the batch: ``1 .. max_batch``, tuned for 1. Any other dynamic
    dimension (image size, sequence length) has no safe default and needs a ``profiles`` entry.
    A ``profiles`` entry must match the input's rank and fixed dimensions.
    """
    names = [name for name, _ in inputs]
    unknown = sorted(set(options.profiles) - set(names))
    if unknown:
        raise UnsupportedOptionError(
            f"backend option 'profiles' names {', '.join(map(repr, unknown))}, which the model "
            f"does not have as inputs; its inputs are {', '.join(map(repr, names))}"
        )
    resolved: dict[str, Profile] = {}
    for name, shape in inputs:
        given = options.profiles.get(name)
        dynamic = [axis for axis, d in enumerate(shape) if d < 0]
        if given is not None:
            _check_given(name, shape, given)
            if dynamic:
                resolved[name] = given
            continue
        if not dynamic:
            continue
        if dynamic != [0]:
            raise UnsupportedOptionError(
                f"input {name!r} {_dims(shape)} has dynamic dimensions at axes "
                f"{', '.join(str(a) for a in dynamic if a)} besides the batch; TensorRT needs "
                "their range. Pass backend_options={'tensorrt': {'profiles': {"
                f"{name!r}: {{'min': [...], 'opt': [...], 'max': [...]}}}}}}}}"
            )
        rest = shape[1:]
        resolved[name] = Profile((1, *rest), (1, *rest), (options.max_batch, *rest))
    return resolved


def _check_given(name: str, shape: Shape, profile: Profile) -> None:
    if len(profile.min) != len(shape):
        raise UnsupportedOptionError(
            f"backend option 'profiles' for input {name!r}: the input has rank {len(shape)} "
            f"{_dims(shape)}, the profile rank {len(profile.min)}"
        )
    for axis, dim in enumerate(shape):
        if dim >= 0 and not profile.min[axis] == profile.opt[axis] == profile.max[axis] == dim:
            raise UnsupportedOptionError(
                f"backend option 'profiles' for input {name!r}: dimension {axis} is fixed at "
                f"{dim} in the model {_dims(shape)}, so min, opt and max must all be {dim}"
            )


# -- precision -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BuildPlan:
    """How the network is built for one precision."""

    strongly_typed: bool
    """Every tensor keeps the type the model gives it (TensorRT 11 builds only this way)."""
    flags: tuple[str, ...] = ()
    """``trt.BuilderFlag`` names to set (reduced precisions under TensorRT 10's weak typing)."""


def check_precision(
    precision: str,
    *,
    tensorrt_version: str,
    weak_typing: bool,
    compute_capability: tuple[int, int],
) -> BuildPlan:
    """The build plan for ``precision``, or :class:`UnsupportedOptionError` saying why not.

    - ``fp32``: a strongly typed network, so TensorRT computes in the model's own types (TF32 is
      switched off separately unless the ``tf32`` option asks for it).
    - ``fp16`` / ``bf16``: TensorRT 10's weakly typed network with the FP16/BF16 builder flag,
      which lets TensorRT pick reduced-precision kernels per layer. TensorRT 11 removed weak typing
      and those flags; there a model must carry its own reduced types.
    - ``int8``: only for explicitly quantized models (QuantizeLinear/DequantizeLinear), built
      strongly typed; see :func:`check_int8`. No calibration: TensorRT 10 deprecates implicit
      INT8 calibration and TensorRT 11 removed it.
    """
    supported = ["fp32", "int8"] + (["fp16"] if weak_typing else [])
    bf16_capable = compute_capability >= (8, 0)
    if weak_typing and bf16_capable:
        supported.append("bf16")
    if precision in ("fp16", "bf16") and not weak_typing:
        why = (
            f"TensorRT {tensorrt_version} builds strongly typed networks only (the FP16 and BF16 "
            "builder flags were removed in TensorRT 11), so an engine runs in the model's own "
            f"types. Convert the model to {'float16' if precision == 'fp16' else 'bfloat16'} "
            "first (for fp16 e.g. onnxconverter-common's float16.convert_float_to_float16) and "
            "load it with precision='fp32', or use TensorRT 10"
        )
        reject_precision(NAME, precision, supported, why)
    if precision == "bf16" and not bf16_capable:
        major, minor = compute_capability
        reject_precision(
            NAME,
            precision,
            supported,
            f"bf16 needs a GPU of compute capability 8.0 (Ampere) or newer; this one is "
            f"{major}.{minor}",
        )
    reject_precision(NAME, precision, supported, "it is not a precision TensorRT builds")
    if precision in ("fp16", "bf16"):
        return BuildPlan(strongly_typed=False, flags=(precision.upper(),))
    return BuildPlan(strongly_typed=True)


def check_int8(precision: str, *, quantize_layers: int) -> None:
    """``int8`` is honoured only by a model with Q/DQ layers (TensorRT's explicit quantization)."""
    if precision == "int8" and quantize_layers == 0:
        raise UnsupportedOptionError(
            "tensorrt cannot run precision='int8' for this model: it has no "
            "QuantizeLinear/DequantizeLinear nodes, and unifer builds INT8 engines only from "
            "explicitly quantized models (TensorRT 10 deprecates implicit INT8 calibration and "
            "TensorRT 11 removed it). Quantize the model first (NVIDIA Model Optimizer, or "
            "onnxruntime.quantization.quantize_static with QuantFormat.QDQ) and load that with "
            "precision='int8', or use precision='fp32'"
        )


def check_engine_precision(precision: str) -> None:
    """A serialized engine runs as it was built: only the default ``fp32`` request is accepted."""
    reject_precision(
        NAME,
        precision,
        ["fp32"],
        "a serialized .engine/.plan file was built with its precision fixed; unifer runs it as "
        "built. Load it with the default precision='fp32' (settings['precision'] then says "
        "'as built'), or load the ONNX model to build an engine at another precision",
    )
