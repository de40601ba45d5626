"""Open one ``.tflite`` file with LiteRT's Interpreter and run it thread-safely.

The only module of the plugin that imports the runtime at the top: ``unifer_litert`` imports it
inside ``probe()`` and ``open()``, so importing the plugin never loads the runtime. The runtime is
ai-edge-litert (``ai_edge_litert.interpreter``) when installed, else tflite-runtime
(``tflite_runtime.interpreter``), whose Interpreter has the same API.
"""

from __future__ import annotations

import json
import mmap
import queue
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from unifer import InferenceError, ModelLoadError, UnsupportedOptionError
from unifer.backend import (
    Dim,
    SessionOptions,
    TensorSpec,
    integer_option,
    refuse_empty,
    reject_precision,
    translate_errors,
    warn_unknown_options,
)

from ._flatbuf import DIM_NAMES_KEY, ModelFacts, read_facts

#: The distribution that provides the runtime: "ai-edge-litert" or "tflite-runtime".
DISTRIBUTION: str
try:
    import ai_edge_litert as _package
    from ai_edge_litert import interpreter as _interpreter

    DISTRIBUTION = "ai-edge-litert"
except ImportError as _litert_missing:
    try:
        import tflite_runtime as _package
        from tflite_runtime import interpreter as _interpreter
    except ImportError:
        raise ImportError("neither ai-edge-litert nor tflite-runtime is installed") from (
            _litert_missing
        )
    DISTRIBUTION = "tflite-runtime"

Interpreter: Final = _interpreter.Interpreter
OpResolverType: Final = _interpreter.OpResolverType
VERSION: Final[str] = str(_package.__version__)

NAME: Final = "litert"
OPTIONS: Final = ("num_interpreters", "xnnpack")

#: Custom operators that only the XNNPACK delegate implements (MediaPipe's): a model using them
#: loads only with XNNPACK on.
XNNPACK_ONLY_OPS: Final = frozenset(
    {"Convolution2DTransposeBias", "MaxPoolingWithArgmax2D", "MaxUnpooling2D"}
)

#: Model metadata that lets XNNPACK compute in fp16 (TFLite's ``kTfLiteReducedPrecisionKey``), and
#: the same-length name it is renamed to so that the runtime does not find it.
REDUCED_PRECISION_KEY: Final = "reduced_precision_support"
_DISABLED_KEY: Final = b"reduced_precision_ignored"

#: A complete .tflite model whose output is its input (one float32 tensor of shape [1]), written by
#: ``ModelWriter`` (``_writer.py``): ``probe()`` runs it to prove the runtime really works here.
PROBE_MODEL: Final = bytes.fromhex(
    "0800000054464c33a6ffffff140000002000000044000000c0000000030000000100000008000000"
    "040004000400000023000000756e696665722d6c69746572742070726f62653a206f7574707574"
    "203d20696e70757400010000001400000000000e001800140010000c00080004000e000000140000"
    "001c0000001c0000002000000024000000040000006d61696e000000000000000001000000000000"
    "00010000000000000001000000100000000c000c0008000000000004000c000000080000000c0000"
    "000100000078000000010000000100000000000000"
)


def runtime_info() -> tuple[str, str]:
    """The runtime's distribution and version, after running :data:`PROBE_MODEL` once.

    Importing is not proof that the runtime works: tflite-runtime 2.14 imports fine beside numpy 2
    and only fails when an Interpreter is created, because it was built against numpy 1.
    """
    interpreter = Interpreter(
        model_content=PROBE_MODEL,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    interpreter.allocate_tensors()
    interpreter.set_tensor(0, np.array([1.5], np.float32))
    interpreter.invoke()
    if float(interpreter.get_tensor(0)[0]) != 1.5:
        raise RuntimeError("the probe model returned a wrong result")
    return DISTRIBUTION, VERSION


def numpy_mismatch() -> str | None:
    """Why the runtime cannot work with this numpy, when that is the known reason.

    Every tflite-runtime release (the last is 2.14) was built against numpy 1; a later build that
    supports numpy 2 is not refused here, it is tried by :func:`runtime_info`.
    """
    release = tuple(int(p) for p in re.findall(r"\d+", VERSION)[:2])
    if (
        DISTRIBUTION == "tflite-runtime"
        and release <= (2, 14)
        and int(np.__version__.split(".")[0]) >= 2
    ):
        return (
            f"tflite-runtime {VERSION} was built against numpy 1.x and cannot run with numpy "
            f"{np.__version__} (its last release, 2.14, needs numpy < 2)"
        )
    return None


@dataclass(frozen=True, slots=True)
class _Port:
    spec: TensorSpec
    index: int
    """The tensor's index in the main subgraph (what set_tensor / get_tensor take)."""


@dataclass(slots=True)
class _Slot:
    """One interpreter and the input shapes it is currently allocated for."""

    interpreter: Any
    shapes: list[tuple[int, ...] | None]


class LiteRTSession:
    """A pool of interpreters for one model; ``run`` takes one per call.

    An Interpreter is not reentrant (inputs, outputs and scratch memory live inside it), so each
    call holds one exclusively; with the default pool of one, concurrent calls run one at a time.
    """

    def __init__(
        self,
        slots: list[_Slot],
        inputs: Sequence[_Port],
        outputs: Sequence[_Port],
        settings: dict[str, object],
    ) -> None:
        self._inputs = tuple(inputs)
        self._outputs = tuple(outputs)
        self._pool: queue.SimpleQueue[_Slot] | None = queue.SimpleQueue()
        for slot in slots:
            self._pool.put(slot)
        self._settings = settings
        # XNNPACK reshaping a delegated graph to a batch of 0 fails, or in some processes
        # returns an output of garbage shape (uninitialised memory): never let it try.
        self._refuses_empty = bool(settings["xnnpack"]) and settings["xnnpack_partitions"] != 0

    @classmethod
    def open(cls, model: Path, options: SessionOptions) -> LiteRTSession:
        """Build and allocate the interpreters for ``model`` with ``options``."""
        extra = options.extra
        warn_unknown_options(NAME, extra, OPTIONS)
        xnnpack = extra.get("xnnpack", True)
        if not isinstance(xnnpack, bool):
            raise UnsupportedOptionError(
                f"backend option 'xnnpack' must be True or False, got {xnnpack!r}"
            )
        count = integer_option(
            "num_interpreters",
            extra.get("num_interpreters", 1),
            "interpreters in the pool, i.e. run() calls that can proceed at once",
        )
        reject_precision(
            NAME,
            options.precision,
            ("fp32",),
            "LiteRT runs a model at the precision it was exported with (a float model on fp32 "
            "kernels, a quantized model on its own int8 kernels) and has no load-time switch that "
            "lowers a float model's precision; export an fp16 or int8 model instead",
        )

        facts = _read_facts(model)
        content = None
        hint = facts.metadata.get(REDUCED_PRECISION_KEY) if facts is not None else None
        if hint is not None and xnnpack:
            # XNNPACK computes in fp16 when this metadata allows it and the CPU has native fp16
            # arithmetic (ARM; not x86). fp32 was asked for: hide the entry from the runtime by
            # renaming it in a private copy of the file (same length, so nothing else moves).
            data = bytearray(model.read_bytes())
            start = hint.name_offset
            data[start : start + len(_DISABLED_KEY)] = _DISABLED_KEY
            content = bytes(data)

        resolver = (
            OpResolverType.BUILTIN if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        )
        with translate_errors(NAME, ValueError, RuntimeError, model=model):
            try:
                slots = [_create(model, content, options.threads, resolver) for _ in range(count)]
            except RuntimeError as exc:
                _explain_missing_ops(exc, model, facts, xnnpack)
                raise
            interpreter = slots[0].interpreter
            inputs, outputs, signature = _ports(interpreter, _dim_names(facts))
        threads = options.threads
        if threads is None and DISTRIBUTION == "ai-edge-litert":
            threads = 1  # ai-edge-litert's Interpreter passes `num_threads or 1` to the runtime
        settings: dict[str, object] = {
            "device": "cpu",
            "threads": threads,
            "precision": "fp32",
            "xnnpack": xnnpack,
            "xnnpack_partitions": _delegated(interpreter),
            "op_resolver": resolver.name,
            "num_interpreters": count,
            "signature": signature,
            "reduced_precision_metadata": hint.value.decode("utf-8", "replace") if hint else None,
            "reduced_precision_metadata_disabled": content is not None,
            "runtime": DISTRIBUTION,
            "runtime_version": VERSION,
        }
        return cls(slots, inputs, outputs, settings)

    @property
    def inputs(self) -> Sequence[TensorSpec]:
        return tuple(p.spec for p in self._inputs)

    @property
    def outputs(self) -> Sequence[TensorSpec]:
        return tuple(p.spec for p in self._outputs)

    @property
    def settings(self) -> Mapping[str, object]:
        return self._settings

    def run(self, feeds: Mapping[str, np.ndarray], /) -> dict[str, np.ndarray]:
        pool = self._pool
        if pool is None:
            raise InferenceError(
                "this LiteRT session is closed; open the model again to run it", backend=NAME
            )
        if self._refuses_empty:
            for name, array in feeds.items():
                refuse_empty(
                    "LiteRT's XNNPACK delegate",
                    name,
                    array,
                    "it fails, or returns outputs of garbage shape; with "
                    "backend_options={'litert': {'xnnpack': False}} the builtin kernels return "
                    "empty outputs",
                )
        slot = pool.get()
        try:
            with translate_errors(NAME, ValueError, RuntimeError):
                return self._invoke(slot, feeds)
        finally:
            pool.put(slot)

    def _invoke(self, slot: _Slot, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        interpreter = slot.interpreter
        arrays = [feeds[port.spec.name] for port in self._inputs]
        try:
            resized = False
            for k, (port, array) in enumerate(zip(self._inputs, arrays, strict=True)):
                if array.shape != slot.shapes[k]:
                    # strict: only the dimensions the model declares dynamic (-1) may change.
                    interpreter.resize_tensor_input(port.index, array.shape, strict=True)
                    slot.shapes[k] = array.shape
                    resized = True
            if resized:
                interpreter.allocate_tensors()
        except BaseException:
            # The interpreter may be half-resized: make the next call resize and allocate again.
            slot.shapes = [None] * len(slot.shapes)
            raise
        for port, array in zip(self._inputs, arrays, strict=True):
            interpreter.set_tensor(port.index, array)  # copies into the interpreter's buffer
        interpreter.invoke()
        # get_tensor returns a new array (tensor() would be a view that the next invoke rewrites).
        return {port.spec.name: interpreter.get_tensor(port.index) for port in self._outputs}

    def close(self) -> None:
        # Interpreters free their memory once no run() holds one; a later run() is refused.
        self._pool = None


def _read_facts(model: Path) -> ModelFacts | None:
    """Metadata and custom ops, read through a read-only map: large models are not copied."""
    try:
        with model.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as m:
            return read_facts(m)
    except (OSError, ValueError):  # an empty file cannot be mapped; the runtime will say why
        return None


def _create(model: Path, content: bytes | None, threads: int | None, resolver: Any) -> _Slot:
    kwargs: dict[str, Any] = {"num_threads": threads, "experimental_op_resolver_type": resolver}
    if content is None:
        interpreter = Interpreter(model_path=str(model), **kwargs)
    else:
        interpreter = Interpreter(model_content=content, **kwargs)
    # Allocating prepares every node: a missing custom op or a bad shape fails here, at load time.
    try:
        interpreter.allocate_tensors()
    except RuntimeError as exc:
        _explain_dynamic_sizes(exc, model, interpreter)
        raise
    shapes = [tuple(int(n) for n in d["shape"]) for d in interpreter.get_input_details()]
    return _Slot(interpreter, list(shapes))


def _ports(
    interpreter: Any, dim_names: Mapping[str, Sequence[str | None]]
) -> tuple[list[_Port], list[_Port], str | None]:
    """Input and output ports in the model's own order, named by its signature when it has one;
    dynamic dimensions keep the ONNX names a unifer conversion recorded (``dim_names``)."""
    in_details = interpreter.get_input_details()
    out_details = interpreter.get_output_details()
    key, in_names, out_names = _signature_names(
        interpreter, [d["index"] for d in in_details], [d["index"] for d in out_details]
    )
    inputs = [_port(d, in_names, dim_names) for d in in_details]
    outputs = [_port(d, out_names, dim_names) for d in out_details]
    return inputs, outputs, key


def _dim_names(facts: ModelFacts | None) -> dict[str, list[str | None]]:
    """The ONNX dimension names a unifer conversion recorded in the file; ``{}`` for others."""
    entry = facts.metadata.get(DIM_NAMES_KEY) if facts is not None else None
    if entry is None:
        return {}
    try:
        names = json.loads(entry.value)
    except ValueError:
        return {}
    return names if isinstance(names, dict) else {}


def _signature_names(
    interpreter: Any, inputs: list[int], outputs: list[int]
) -> tuple[str | None, dict[int, str], dict[int, str]]:
    """The signature that describes the main subgraph's inputs and outputs, as index -> name.

    Converters name tensors after their internals ("serving_default_input_1:0") and the signature
    after the user's arguments ("input_1"), so the signature names win when one covers exactly the
    main subgraph's tensors. Signatures list names alphabetically, so the order stays the graph's.
    """
    try:
        signatures = interpreter._get_full_signature_list()
    except AttributeError:  # a runtime without signature support: tensor names only
        return None, {}, {}
    matches = []
    for key, definition in signatures.items():
        ins = {int(i): str(n) for n, i in definition.get("inputs", {}).items()}
        outs = {int(i): str(n) for n, i in definition.get("outputs", {}).items()}
        if set(ins) == set(inputs) and set(outs) == set(outputs):
            matches.append((key, ins, outs))
    if not matches:
        return None, {}, {}
    preferred = [m for m in matches if m[0] == "serving_default"]
    key, ins, outs = (preferred or matches)[0]
    return str(key), ins, outs


def _port(
    detail: Mapping[str, Any],
    names: Mapping[int, str],
    dim_names: Mapping[str, Sequence[str | None]],
) -> _Port:
    index = int(detail["index"])
    signature = detail.get("shape_signature")
    dims = signature if signature is not None and len(signature) else detail["shape"]
    shape: tuple[Dim, ...] = tuple(None if int(d) < 0 else int(d) for d in dims)
    name = names.get(index, str(detail["name"]))
    recorded = dim_names.get(name)
    if isinstance(recorded, list) and len(recorded) == len(shape):
        shape = tuple(
            n if d is None and isinstance(n, str) else d
            for d, n in zip(shape, recorded, strict=True)
        )
    return _Port(TensorSpec(name, shape, np.dtype(detail["dtype"])), index)


def _delegated(interpreter: Any) -> int | None:
    """How many partitions of the graph a delegate (XNNPACK here) took; None if unknown."""
    try:
        return sum(1 for op in interpreter._get_ops_details() if op["op_name"] == "DELEGATE")
    except Exception:  # a private API: an answer of "unknown" is better than a failed load
        return None


def _explain_dynamic_sizes(exc: RuntimeError, model: Path, interpreter: Any) -> None:
    """Raise a ModelLoadError if the model failed to prepare at its dynamic dimensions' default.

    The runtime prepares a model at load with each dynamic dimension (-1) at 1: a model that
    cannot run at that size (a 3x3 convolution on a 1x1 image) fails then, whatever it would do
    at the sizes it is meant for.
    """
    signatures = {
        d["name"]: [int(n) for n in d["shape_signature"]] for d in interpreter.get_input_details()
    }
    dynamic = [
        f"{name}[{','.join(str(n) if n >= 0 else '?' for n in dims)}]"
        for name, dims in signatures.items()
        if any(n < 0 for n in dims[1:])
    ]
    if dynamic:
        raise ModelLoadError(
            f"litert could not prepare {model.name} at load: LiteRT gives each dynamic dimension "
            f"of its inputs ({', '.join(dynamic)}) the size 1 then, and the model cannot run at "
            f"that size ({' '.join(str(exc).split())}). Export the model with fixed sizes, or "
            "use another backend for it (onnxruntime, openvino)"
        ) from exc


def _explain_missing_ops(
    exc: RuntimeError, model: Path, facts: ModelFacts | None, xnnpack: bool
) -> None:
    """Raise a ModelLoadError naming the operators the runtime lacks, if that is what failed."""
    message = str(exc)
    flex = "Select TensorFlow op" in message
    found = re.findall(r"unresolved custom op: ([^\s.]+)", message)
    found += [
        op
        for op in re.findall(r"Node number \d+ \(([^)\s]+)\) failed to prepare", message)
        if facts is not None and op in facts.custom_ops
    ]
    missing = list(dict.fromkeys(found))  # runtimes repeat the name once per failed attempt
    if not missing and not flex:
        return
    if not missing and facts is not None:
        missing = [op for op in facts.custom_ops if op.startswith("Flex")]
    names = ", ".join(missing) or "a Select TensorFlow (Flex) operator"
    how = (
        "re-export the model with TFLite builtin operators only, or run it with a runtime that "
        "registers them"
    )
    if any(op in XNNPACK_ONLY_OPS for op in missing) and not xnnpack:
        how = (
            "these operators are implemented only by the XNNPACK delegate: remove "
            "backend_options={'litert': {'xnnpack': False}}"
        )
    elif flex or any(op.startswith("Flex") for op in missing):
        how = (
            "Flex operators are TensorFlow kernels that need the Flex delegate, which only the "
            "full TensorFlow package has (tf.lite.Interpreter); re-export the model with TFLite "
            "builtin operators only"
        )
    raise ModelLoadError(
        f"{NAME} could not load {model}: the model uses the custom operator(s) {names}, which "
        f"{DISTRIBUTION} {VERSION} does not provide; {how}"
    ) from exc
