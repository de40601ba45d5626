"""Run one ONNX model with OpenCV's DNN module (``cv2.dnn``) behind unifer's Session contract.

The only module of the plugin that imports ``cv2`` at the top: ``unifer_opencv`` imports it inside
``probe()`` and ``open()``, so importing the plugin never loads OpenCV.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import cv2
import numpy as np

from unifer import InferenceError, ModelLoadError, UnsupportedOptionError
from unifer._onnx_io import OnnxFormatError, ValueInfo, read_graph_io
from unifer.backend import (
    ProcessWideSetting,
    SessionOptions,
    TensorSpec,
    refuse_empty,
    refuse_int64_beyond_int32,
    reject_precision,
    translate_errors,
    warn_unknown_options,
    warn_user,
)

NAME: Final = "opencv"
OPTIONS: Final = ("engine",)
ENGINES: Final = ("new", "classic")

#: ONNX ``TensorProto.DataType`` -> numpy, for the element types cv2.dnn takes and returns
#: (checked on OpenCV 5.0.0 with both engines). float16 tensors are computed in float32 and
#: returned as float32, so outputs are cast back to the declared type. The new engine silently
#: drops uint32 and uint64 inputs ("Requested blob not found") and the classic one turns them into
#: float32, so those two are refused like string, complex and the 8-bit float types. float64 is
#: computed in float32 and returned as float64 (1e300 comes back as inf): refused with its reason.
DTYPES: Final[dict[int, np.dtype[Any]]] = {
    1: np.dtype(np.float32),
    2: np.dtype(np.uint8),
    3: np.dtype(np.int8),
    4: np.dtype(np.uint16),
    5: np.dtype(np.int16),
    6: np.dtype(np.int32),
    7: np.dtype(np.int64),
    9: np.dtype(np.bool_),
    10: np.dtype(np.float16),
}
_ONNX_TYPE_NAMES: Final = {
    0: "undefined",
    8: "string",
    12: "uint32",
    13: "uint64",
    14: "complex64",
    15: "complex128",
    16: "bfloat16",
    17: "float8e4m3fn",
    18: "float8e4m3fnuz",
    19: "float8e5m2",
    20: "float8e5m2fnuz",
    21: "uint4",
    22: "int4",
    23: "float4e2m1",
}

# -- the process-wide thread count -----------------------------------------------------------------

#: cv2.setNumThreads sets one pool for the whole process, shared by every session that asks.
_THREADS = ProcessWideSetting(cv2.setNumThreads)


# -- probe ----------------------------------------------------------------------------------------


def runtime_info() -> tuple[str, bool, bool]:
    """cv2's version, whether this build has the DNN module with its ONNX reader, and whether that
    module has OpenCV 5's new engine (``cv2.dnn.ENGINE_NEW``)."""
    dnn = getattr(cv2, "dnn", None)
    return str(cv2.__version__), hasattr(dnn, "readNetFromONNX"), hasattr(dnn, "ENGINE_NEW")


# -- the session ----------------------------------------------------------------------------------


class OpenCVSession:
    """One ``cv2.dnn.Net``. A Net keeps its inputs and intermediate blobs inside itself, so it is
    not reentrant: ``run`` holds a lock around ``setInput`` + ``forward``, and concurrent callers
    take turns (each call still uses the whole OpenCV thread pool)."""

    def __init__(
        self,
        net: cv2.dnn.Net,
        *,
        inputs: tuple[TensorSpec, ...],
        outputs: tuple[TensorSpec, ...],
        settings: Mapping[str, object],
        thread_request: int | None,
    ) -> None:
        self._net: cv2.dnn.Net | None = net
        self._lock = threading.Lock()
        self._inputs = inputs
        self._outputs = outputs
        self._input_names = tuple(s.name for s in inputs)
        self._output_names = [s.name for s in outputs]
        self._int64_inputs = tuple(s.name for s in inputs if s.dtype == np.int64)
        self._settings = MappingProxyType(dict(settings))
        # Forget this session's thread request when it is closed or garbage-collected unclosed.
        self._release = (
            weakref.finalize(self, _THREADS.release, thread_request)
            if thread_request is not None
            else None
        )

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
        net = self._net  # a local reference keeps the Net alive if close() races with us
        if net is None:
            raise InferenceError(
                "this opencv session is closed; open the model again to run it", backend=NAME
            )
        for name in self._input_names:
            refuse_empty("OpenCV DNN", name, feeds[name], "its new engine crashes the process")
        for name in self._int64_inputs:
            refuse_int64_beyond_int32("OpenCV DNN", name, feeds[name])
        with self._lock, translate_errors(NAME, cv2.error):
            for name in self._input_names:
                net.setInput(feeds[name], name)  # copies the array into the Net's own blob
            # The binding converts each output Mat into a new numpy array, so the results are the
            # caller's: a later forward() cannot overwrite them (tests/test_opencv.py checks).
            values = net.forward(self._output_names)
        return {
            spec.name: value if value.dtype == spec.dtype else value.astype(spec.dtype)
            for spec, value in zip(self._outputs, values, strict=True)
        }

    def close(self) -> None:
        self._net = None  # the Net is freed when the last run() holding it returns
        if self._release is not None:
            self._release()  # a finalize runs once, so a second close() does nothing


# -- opening --------------------------------------------------------------------------------------


def open_session(model: Path, options: SessionOptions) -> OpenCVSession:
    """Read ``model`` with cv2.dnn, apply ``options`` and return a ready session, or raise."""
    warn_unknown_options(NAME, options.extra, OPTIONS)
    engine = options.extra.get("engine", "new")
    if not isinstance(engine, str) or engine not in ENGINES:
        raise UnsupportedOptionError(
            f"backend option 'engine' must be one of {', '.join(map(repr, ENGINES))}, "
            f"got {engine!r}"
        )
    _check_precision(options.precision)

    with translate_errors(NAME, cv2.error, model=model):
        net = _read_net(model, engine)
        net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        if engine == "classic":
            # The new engine runs on the CPU only and logs a warning for any target set on it.
            net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    try:
        graph = read_graph_io(model)
    except OnnxFormatError as exc:  # cv2 read the file, so this is unexpected; still say so
        raise ModelLoadError(
            f"opencv read {model} but its graph inputs and outputs could not be decoded: {exc}. "
            "Check that the file is a complete, valid ONNX model (re-export it)"
        ) from exc
    inputs = tuple(_spec(model, "input", v) for v in graph.inputs)
    outputs = tuple(_spec(model, "output", v) for v in graph.outputs)

    thread_request = None
    if options.threads is not None:
        thread_request, others = _THREADS.request(options.threads)
        if others:
            warn_user(
                f"OpenCV's thread count is process-wide (cv2.setNumThreads): threads="
                f"{options.threads} for {model.name} now also applies to the other open opencv "
                f"engine(s) that asked for threads={', '.join(map(str, others))}. Open every "
                "opencv engine with the same threads= to avoid this"
            )
    settings: dict[str, object] = {
        "device": "cpu",
        # Read back, not echoed: with threads=None this is OpenCV's current setting.
        "threads": cv2.getNumThreads(),
        "threads_scope": "process",
        "precision": "fp32",
        "engine": engine,
        "dnn_backend": "DNN_BACKEND_OPENCV",
        "dnn_target": "DNN_TARGET_CPU",
        "runtime_version": str(cv2.__version__),
    }
    return OpenCVSession(
        net, inputs=inputs, outputs=outputs, settings=settings, thread_request=thread_request
    )


def _read_net(model: Path, engine: str) -> cv2.dnn.Net:
    """Read ``model`` with the requested DNN engine, or raise :class:`ModelLoadError`."""
    flag = cv2.dnn.ENGINE_NEW if engine == "new" else cv2.dnn.ENGINE_CLASSIC
    net = cv2.dnn.readNetFromONNX(str(model), flag)
    if net.empty():
        # The new engine does not raise for a model it cannot build: it logs "cannot be loaded with
        # the new parser" (plus "Unsupported operations: ..." when that is why) on stderr and
        # returns an empty Net, which OpenCV's own ENGINE_AUTO then hands to the classic engine.
        # That engine segfaults on some models (silero-vad's If graphs), so unifer never falls
        # back to it on its own.
        raise ModelLoadError(
            f"opencv's {engine} DNN engine cannot build a network from {model}: the model uses "
            "something the engine does not support, usually an operator (OpenCV's log on stderr "
            "names the unsupported operations when it knows them). Use another backend for this "
            "model, e.g. backend='onnxruntime'"
        )
    return net


def _check_precision(precision: str) -> None:
    if precision == "fp32":
        return
    if precision == "fp16":
        targets = cv2.dnn.getAvailableTargets(cv2.dnn.DNN_BACKEND_OPENCV)
        state = (
            "is not available in this build"
            if cv2.dnn.DNN_TARGET_CPU_FP16 not in targets
            else "is not supported by this plugin yet"
        )
        why = (
            "OpenCV's CPU target computes in fp32; its fp16 CPU target (DNN_TARGET_CPU_FP16, "
            f"classic engine only) {state}"
        )
    elif precision == "bf16":
        why = "OpenCV DNN has no bf16 arithmetic on the CPU"
    else:
        why = (
            "OpenCV DNN runs a model at the precision stored in the file and cannot quantize it "
            "while loading; load an already quantized ONNX model with precision='fp32' (the "
            "default): it runs quantized as stored, and settings['model_precision'] says so"
        )
    reject_precision(NAME, precision, ("fp32",), why)


def _spec(model: Path, kind: str, value: ValueInfo) -> TensorSpec:
    if value.kind != "tensor":
        raise ModelLoadError(
            f"{model} has {kind} {value.name!r} of type {value.kind}; unifer handles tensor "
            "inputs and outputs only. Re-export the model with plain tensors"
        )
    if value.elem_type == 11:
        raise ModelLoadError(
            f"{model} has float64 {kind} {value.name!r}: OpenCV DNN computes float64 tensors in "
            "float32 (1e300 comes back as inf, 1 + 1e-12 as 1.0) and returns them as float64 "
            "without a sign. Run this model with backend='onnxruntime' (exact in float64), or "
            "export it in float32"
        )
    dtype = DTYPES.get(value.elem_type)
    if dtype is None:
        type_name = _ONNX_TYPE_NAMES.get(value.elem_type, f"ONNX type {value.elem_type}")
        raise ModelLoadError(
            f"{model} has {kind} {value.name!r} of element type {type_name}, which OpenCV DNN "
            f"cannot {'take' if kind == 'input' else 'return'} (it handles "
            f"{', '.join(sorted({str(d) for d in DTYPES.values()}))}). Use another backend, "
            "e.g. backend='onnxruntime'"
        )
    # No declared shape (unknown rank) is reported as rank 0, as the other backends do.
    return TensorSpec(value.name, value.shape or (), dtype)
