"""One ONNX Runtime ``InferenceSession`` behind unifer's Session contract.

This is the only module of the plugin that imports ``onnxruntime``; the package ``__init__``
imports it lazily from ``open()``, so ``import unifer_onnxruntime`` stays free of the runtime.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import build_and_package_info as _build_info
from onnxruntime.capi import onnxruntime_pybind11_state as _native

from unifer._errors import InferenceError, ModelLoadError, UnsupportedOptionError
from unifer._onnx_io import OnnxFormatError, read_graph_io
from unifer.backend import TensorSpec, translate_errors

NAME: Final = "onnxruntime"
CPU: Final = "CPUExecutionProvider"
CUDA: Final = "CUDAExecutionProvider"
TENSORRT: Final = "TensorrtExecutionProvider"
#: Providers that need the CUDA and cuDNN libraries (onnxruntime-gpu's [cuda,cudnn] extras).
CUDA_PROVIDERS: Final = (CUDA, TENSORRT)

logger = logging.getLogger("unifer.onnxruntime")

#: What ORT raises. Its pybind status exceptions (InvalidProtobuf, InvalidArgument, Fail, ...)
#: derive from ``Exception``, not ``RuntimeError``, so they are collected from the native module
#: (new ones appear across releases); pybind turns other C++ exceptions into ``RuntimeError``.
NATIVE_ERRORS: Final[tuple[type[BaseException], ...]] = (
    RuntimeError,
    *(
        obj
        for obj in vars(_native).values()
        if isinstance(obj, type) and issubclass(obj, Exception)
    ),
)

OPTIMIZATION_LEVELS: Final = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
EXECUTION_MODES: Final = {
    ort.ExecutionMode.ORT_SEQUENTIAL: "sequential",
    ort.ExecutionMode.ORT_PARALLEL: "parallel",
}

#: ORT element type strings -> numpy. Strings come back from ORT as object arrays of ``str``.
#: bfloat16, float8 and int4 are absent: numpy has no such dtype to feed or return them with.
DTYPES: Final[dict[str, np.dtype[Any]]] = {
    f"tensor({ort_name})": np.dtype(np_name)
    for ort_name, np_name in {
        "float": "float32",
        "double": "float64",
        "float16": "float16",
        "int8": "int8",
        "int16": "int16",
        "int32": "int32",
        "int64": "int64",
        "uint8": "uint8",
        "uint16": "uint16",
        "uint32": "uint32",
        "uint64": "uint64",
        "bool": "bool",
        "string": "object",
        "complex64": "complex64",
        "complex128": "complex128",
    }.items()
}

#: Which pip distribution ships an execution provider the installed build lacks.
EP_DISTRIBUTIONS: Final = {
    CUDA: "onnxruntime-gpu",
    TENSORRT: "onnxruntime-gpu",
    "DmlExecutionProvider": "onnxruntime-directml",
    "OpenVINOExecutionProvider": "onnxruntime-openvino",
    "QNNExecutionProvider": "onnxruntime-qnn",
}

ProviderRequest = tuple[str, dict[str, str]]


class OrtSession:
    """An opened model.

    ORT's ``InferenceSession.run`` is thread-safe, and this class adds no mutable state besides
    the handle that ``close`` drops, so ``run`` stays thread-safe.
    """

    def __init__(self, session: Any, model: Path, config_keys: Sequence[str] = ()) -> None:
        self._session: Any = session
        self._inputs = tuple(_spec(model, "input", arg) for arg in session.get_inputs())
        if any(not spec.shape for spec in self._inputs):
            _refuse_unknown_ranks(model)
        self._outputs = tuple(_spec(model, "output", arg) for arg in session.get_outputs())
        self._output_names = tuple(spec.name for spec in self._outputs)
        self._settings = MappingProxyType(_settings(session, config_keys))

    @property
    def inputs(self) -> Sequence[TensorSpec]:
        return self._inputs

    @property
    def outputs(self) -> Sequence[TensorSpec]:
        return self._outputs

    @property
    def settings(self) -> Mapping[str, object]:
        return self._settings

    def run(self, feeds: Mapping[str, np.ndarray], /) -> dict[str, np.ndarray]:
        session = self._session  # a local reference keeps it alive if close() races with us
        if session is None:
            raise InferenceError(
                "this onnxruntime session is closed; open the model again to run it", backend=NAME
            )
        with translate_errors(NAME, *NATIVE_ERRORS):
            # ORT allocates every output anew per call and copies even Identity and constant
            # outputs, so the arrays are the caller's and never alias the feeds or a later call.
            values = session.run(None, dict(feeds))
        return dict(zip(self._output_names, values, strict=True))

    def close(self) -> None:
        # ORT has no explicit release: dropping the last reference frees the session.
        self._session = None


#: How onnxruntime says a model is stamped with an opset or IR version newer than it reads.
_NEWER_ONNX: Final = re.compile(
    r"Opset \d+ is under development|Unsupported model IR version: \d+, max supported IR version: "
    r"\d+|official support for domain \S+ is till opset \d+"
)

_MATMULNBITS_ACCURACY: Final = "session.qdq_matmulnbits_accuracy_level"


def open_session(model: Path, *, threads: int | None, extra: Mapping[str, object]) -> OrtSession:
    """Create the InferenceSession for ``model`` with unifer's options applied, or raise."""
    providers = _requested_providers(extra)
    level = _optimization_level(extra.get("graph_optimization_level", "all"))
    # At level "all" ORT fuses int8 weights and their DequantizeLinear into MatMulNBits, whose
    # default accuracy level 4 quantizes the activations to int8 too: 6.7e-3 off on a weight-only
    # int8 MatMul that fp32 computes exactly. Level 1 keeps the activations fp32.
    config = {_MATMULNBITS_ACCURACY: "1", **_session_config(extra.get("session_config", {}))}
    _require_available(providers)
    preloaded = ""
    if any(name in CUDA_PROVIDERS for name, _ in providers):
        preloaded = _preload_cuda_libraries()

    options = ort.SessionOptions()
    # 0 = ORT's default: one per physical core, ignoring the CPU affinity mask (see README).
    options.intra_op_num_threads = threads or 0
    # Nodes run one after another, so the inter-op pool would stay idle: don't create threads.
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = level
    for key, value in config.items():
        try:
            options.add_session_config_entry(key, value)
        except NATIVE_ERRORS as exc:
            raise UnsupportedOptionError(
                f"onnxruntime rejected session_config entry {key!r}: {exc}"
            ) from exc
    # optimized_model_filepath stays unset: ORT would write the optimized model to disk.

    try:
        with translate_errors(NAME, *NATIVE_ERRORS, model=model):
            # enable_fallback=0: on an EP failure ORT's Python wrapper would otherwise print to
            # stdout and silently retry on CPU, both at creation and inside run().
            session = ort.InferenceSession(
                os.fspath(model), options, providers=providers, enable_fallback=0
            )
    except ModelLoadError as exc:
        said = _NEWER_ONNX.findall(str(exc.__cause__))
        if said:  # not a damaged file: an older onnxruntime
            raise ModelLoadError(
                f"onnxruntime {ort.__version__} cannot load {model}: it was saved for a newer ONNX "
                f"than this onnxruntime reads ({'; '.join(said)}). "
                'Upgrade it (pip install -U "unifer[onnxruntime]"), or export the model at a '
                "lower opset"
            ) from exc.__cause__
        raise
    try:
        _check_applied(session, providers, preloaded)
        return OrtSession(session, model, tuple(config))
    except BaseException:
        del session  # release the native session now, not when the traceback is collected
        raise


@functools.cache
def _preload_cuda_libraries() -> str:
    """Load the CUDA and cuDNN libraries of NVIDIA's wheels once per process; what ORT said.

    ``pip install "onnxruntime-gpu[cuda,cudnn]"`` installs them, but the CUDA EP finds them only
    once they are loaded (libcublasLt.so is missing otherwise): ORT's ``preload_dlls`` (1.21+)
    loads them from the wheels or the library path. It prints what it cannot load, so stdout is
    captured (briefly, for this process) and the text goes to the log and any error.
    """
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return ""
    printed = io.StringIO()
    failure = ""
    with contextlib.redirect_stdout(printed):
        try:
            preload()
        except Exception as exc:  # the EP then fails to start, and says why itself
            failure = f" {type(exc).__name__}: {exc}"
    said = " ".join((printed.getvalue() + failure).split()).rstrip(".")
    logger.debug("onnxruntime.preload_dlls(): %s", said or "loaded")
    return said


def _requested_providers(extra: Mapping[str, object]) -> list[ProviderRequest]:
    """The providers of the ``providers`` option, or of the ``device`` shorthand; CPU by default."""
    if "device" not in extra:
        return _providers(extra.get("providers", [CPU]))
    if "providers" in extra:
        raise UnsupportedOptionError(
            "backend_options['onnxruntime'] sets both 'device' and 'providers'; pass one of them "
            "('device': 'cuda:1' is 'providers': [('CUDAExecutionProvider', {'device_id': 1}), "
            "'CPUExecutionProvider'])"
        )
    device = extra["device"]
    if device == "cpu":
        return [(CPU, {})]
    match = re.fullmatch(r"cuda(?::(\d+))?", device) if isinstance(device, str) else None
    if match is None:
        raise UnsupportedOptionError(
            f"backend option 'device' of onnxruntime must be 'cpu', 'cuda' or 'cuda:N' (other "
            f"execution providers go in 'providers'), got {device!r}"
        )
    # The CPU EP runs the nodes the CUDA EP lacks, as ORT's own examples list it.
    return _providers([(CUDA, {"device_id": match.group(1) or "0"}), CPU])


def _providers(value: object) -> list[ProviderRequest]:
    example = "e.g. ['CUDAExecutionProvider', 'CPUExecutionProvider']"
    if not isinstance(value, (list, tuple)) or not value:
        raise UnsupportedOptionError(
            f"backend_options['onnxruntime']['providers'] must be a non-empty list of provider "
            f"names or (name, options) pairs, {example}; got {value!r}"
        )
    result: list[ProviderRequest] = []
    for item in value:
        if isinstance(item, str):
            name, provider_options = item, {}
        elif (
            isinstance(item, (tuple, list))
            and len(item) == 2
            and isinstance(item[0], str)
            and isinstance(item[1], Mapping)
            and all(isinstance(k, str) for k in item[1])
        ):
            # ORT passes provider options to the EP as strings; convert them the same way it does.
            name, provider_options = item[0], {k: str(v) for k, v in item[1].items()}
        else:
            raise UnsupportedOptionError(
                f"each onnxruntime provider must be a name or a (name, {{option: value}}) pair, "
                f"{example}; got {item!r}"
            )
        if any(name == seen for seen, _ in result):
            raise UnsupportedOptionError(
                f"onnxruntime provider {name!r} is listed twice; list each provider once"
            )
        if name == CUDA:
            # ORT's CUDA EP computes float matmuls and convolutions in TF32 unless told not to
            # (use_tf32 defaults to true): fp32 stays IEEE fp32 unless the caller opts in.
            provider_options.setdefault("use_tf32", "0")
        result.append((name, provider_options))
    return result


def _optimization_level(value: object) -> ort.GraphOptimizationLevel:
    if not isinstance(value, str) or value not in OPTIMIZATION_LEVELS:
        raise UnsupportedOptionError(
            f"backend_options['onnxruntime']['graph_optimization_level'] must be one of "
            f"{', '.join(map(repr, OPTIMIZATION_LEVELS))}, got {value!r}"
        )
    return OPTIMIZATION_LEVELS[value]


def _session_config(value: object) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise UnsupportedOptionError(
            "backend_options['onnxruntime']['session_config'] must map config keys to string "
            "values, e.g. {'session.intra_op.allow_spinning': '0'}; got " + repr(value)
        )
    return dict(value)


def _require_available(providers: Sequence[ProviderRequest]) -> None:
    """Refuse a provider this build lacks before ORT warns about it and drops it."""
    available = list(ort.get_available_providers())
    for name, _ in providers:
        if name not in available:
            raise UnsupportedOptionError(
                f"onnxruntime {ort.__version__} has no {name} (available: {', '.join(available)}). "
                + _install_hint(name)
            )


def _check_applied(session: Any, providers: Sequence[ProviderRequest], preloaded: str) -> None:
    """ORT skips a listed EP that fails to initialise (missing CUDA/cuDNN libraries, ...) and
    runs on the rest; unifer never falls back silently, so a missing one is an error."""
    applied = list(session.get_providers())
    missing = [name for name, _ in providers if name not in applied]
    if missing:
        said = f" onnxruntime.preload_dlls() said: {preloaded}." if preloaded else ""
        raise UnsupportedOptionError(
            f"onnxruntime lists {', '.join(missing)} but could not use it for this session (it "
            f"runs on {', '.join(applied)}); see onnxruntime's log above for why, usually missing "
            f"or mismatched CUDA/cuDNN libraries or no NVIDIA driver.{said} "
            + _install_hint(missing[0])
        )


def _install_hint(name: str) -> str:
    dist = EP_DISTRIBUTIONS.get(name)
    if dist is None:
        return (
            "Install an onnxruntime build that ships it, or pass providers=['CPUExecutionProvider']"
        )
    if name in CUDA_PROVIDERS and name in ort.get_available_providers():
        # The build has it: what is missing is CUDA, cuDNN or the driver, not another package.
        built_for = getattr(_build_info, "cuda_version", None)  # "13.0" in a GPU build
        cuda = f"CUDA {built_for}" if built_for else "CUDA"
        return (
            f"It needs an NVIDIA GPU with its driver, and {cuda} and cuDNN 9 libraries: "
            f'pip install "{dist}[cuda,cudnn]" installs them as wheels, which unifer loads; or '
            "use device='cpu'"
        )
    return (
        f"It ships with {dist}: pip uninstall -y onnxruntime && pip install {dist} (keep only one "
        "onnxruntime distribution installed), or pass providers=['CPUExecutionProvider']"
    )


def _refuse_unknown_ranks(model: Path) -> None:
    """onnxruntime reports an input that declares no shape as a scalar (shape []): no array but
    a scalar would then pass the engine's checks. Refused with the fix instead."""
    if model.suffix.lower() != ".onnx":
        return
    try:
        graph = read_graph_io(model)
    except OnnxFormatError:  # onnxruntime read it: the wire-level reader missed something
        return
    if unknown := [v.name for v in graph.inputs if v.kind == "tensor" and v.shape is None]:
        raise ModelLoadError(
            f"{model} declares no shape for input {', '.join(map(repr, unknown))} (its rank is "
            "unknown), so unifer cannot check what is fed to it. Declare its shape when "
            "exporting, or in the file: one entry per axis in graph.input[i].type.tensor_type."
            "shape.dim (dim_param 'N' for a dynamic one)"
        )


def _spec(model: Path, kind: str, arg: Any) -> TensorSpec:
    dtype = DTYPES.get(arg.type)
    if dtype is None:
        what = (
            "tensor inputs and outputs only"
            if not str(arg.type).startswith("tensor(")
            else "tensors of numpy element types only"
        )
        zipmap = (
            " (sklearn-onnx writes a list of maps for classifiers' probabilities unless "
            "converted with options={'zipmap': False})"
            if str(arg.type).startswith("seq(map(")
            else ""
        )
        raise ModelLoadError(
            f"{model} has {kind} {arg.name!r} of type {arg.type}; unifer handles {what}. "
            f"Re-export the model with plain tensor inputs and outputs{zipmap}, or use "
            "onnxruntime directly"
        )
    # ORT reports a fixed dim as int, a named one as str, an unknown one as None (older releases
    # and some exporters use negative ints for unknown).
    shape = tuple(
        None if dim is None or (isinstance(dim, int) and dim < 0) else dim for dim in arg.shape
    )
    return TensorSpec(arg.name, shape, dtype)


def _settings(session: Any, config_keys: Sequence[str]) -> dict[str, object]:
    # session_options is read back from the native session (the wrapper replaces ours with it), so
    # it also reflects a config embedded in the model (ORT_LOAD_CONFIG_FROM_MODEL=1).
    options = session.get_session_options()
    providers = tuple(session.get_providers())
    provider_options = session.get_provider_options()
    levels = {level: name for name, level in OPTIMIZATION_LEVELS.items()}
    cuda = {"tf32": provider_options[CUDA].get("use_tf32") == "1"} if CUDA in providers else {}
    return {
        "device": _device(providers[0], provider_options.get(providers[0], {})),
        # 0 means ORT picks (one thread per physical core): report that we did not choose.
        "threads": options.intra_op_num_threads or None,
        "inter_op_threads": options.inter_op_num_threads,
        "execution_mode": EXECUTION_MODES.get(options.execution_mode, str(options.execution_mode)),
        "graph_optimization_level": levels.get(
            options.graph_optimization_level, str(options.graph_optimization_level)
        ),
        "providers": providers,
        "session_config": {key: options.get_session_config_entry(key) for key in config_keys},
        "precision": "fp32",
        **cuda,
        "runtime_version": ort.__version__,
    }


def _device(provider: str, provider_options: Mapping[str, str]) -> str:
    if provider == CPU:
        return "cpu"
    if provider in CUDA_PROVIDERS:
        return f"cuda:{provider_options.get('device_id', '0')}"
    return provider.removesuffix("ExecutionProvider").lower()
