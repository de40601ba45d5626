"""Convert an ONNX model into a ``.tflite`` file, for the operators of CNNs.

This is the plugin's half of unifer's conversion (the core decides when to convert, caches the
result and checks it against the source model). It covers the operator subset of CNN classifiers,
detectors and U-Nets like unifer's built-in ArcFace IResNets, ResNet(X)-50, MobileNets, SqueezeNet
and YOLO-style heads — convolutions (dense, grouped, depthwise, transposed), BatchNormalization,
activations (GELU too, as exporters spell it with Erf), pooling, reductions, LayerNorm and
InstanceNorm, Concat/Split/Slice, Reshape, Softmax, Pad, Resize, DepthToSpace, elementwise
arithmetic, Gemm/MatMul with constant weights, 1-D convolutions as one-row 2-D ones — and refuses
anything else by name, with the list of what it handles. General models (recurrent, attention,
dynamic image sizes into Resize) need a full converter (onnx2tf, litert-torch).

Subgraphs that only compute constants (weights made by ConstantOfShape, shapes passed through
Reshape/Concat/Cast, ...) are evaluated once at conversion time by onnx's reference implementation,
so the written model holds their values as plain constant tensors.

The converted model keeps the ONNX model's signature: the same input and output names, shapes
(NCHW stays NCHW) and dynamic dimensions, so it is a drop-in replacement that the core can verify
on the same feeds. Inside, TFLite's kernels want NHWC: every tensor remembers how its stored
(physical) layout maps onto the ONNX (logical) one, and a TRANSPOSE is emitted only where an
operator needs another layout — once after an NCHW input, once before Flatten or an NCHW output.
Per-channel constants (BatchNormalization folded into MUL + ADD, PRelu slopes) are laid out for the
channel's physical axis instead of transposing activations. All arithmetic stays float32: weights
are only rearranged, and a BatchNormalization's scale and shift are computed in float64 once.
An operator is written only where TFLite computes exactly what ONNX defines (pooling pads, Softmax
axes, Reshape order); where it cannot, the converter refuses the node instead of approximating.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from unifer import MissingDependencyError, ModelLoadError

from ._flatbuf import DIM_NAMES_KEY
from ._resample import resize_flags
from ._writer import ModelWriter

#: Bump whenever the bytes written for the same ONNX file change: it is part of the cache key.
WRITER_VERSION: Final = "6"
CONVERTER: Final = f"unifer-litert onnx->tflite {WRITER_VERSION}"

SUPPORTED_OPS: Final = (
    "Abs",
    "Add",
    "AveragePool",
    "BatchNormalization",
    "Ceil",
    "Clip",
    "Concat",
    "Constant",
    "Conv",
    "ConvTranspose",
    "Cos",
    "DepthToSpace",
    "Div",
    "Dropout",
    "Elu",
    "Exp",
    "Flatten",
    "Floor",
    "Gelu",
    "Gemm",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "HardSigmoid",
    "HardSwish",
    "Identity",
    "InstanceNormalization",
    "LayerNormalization",
    "LeakyRelu",
    "Log",
    "MatMul",
    "Max",
    "MaxPool",
    "Min",
    "Mul",
    "Neg",
    "PRelu",
    "Pad",
    "Pow",
    "ReduceL1",
    "ReduceL2",
    "ReduceMax",
    "ReduceMean",
    "ReduceMin",
    "ReduceProd",
    "ReduceSum",
    "ReduceSumSquare",
    "Relu",
    "Reshape",
    "Resize",
    "Shape",
    "Sigmoid",
    "Sin",
    "Slice",
    "Softmax",
    "Split",
    "Sqrt",
    "Sub",
    "Sum",
    "Tanh",
    "Transpose",
    "Upsample",
)

#: Operators never evaluated at conversion time even with constant inputs: their result is random.
_NEVER_FOLD: Final = frozenset(
    {
        "Bernoulli",
        "Multinomial",
        "RandomNormal",
        "RandomNormalLike",
        "RandomUniform",
        "RandomUniformLike",
    }
)

#: ``logical = physical.transpose(perm)``: an NCHW tensor stored as NHWC.
NHWC: Final = (0, 3, 1, 2)

_ONNX_DTYPES: Final = {1: np.float32, 6: np.int32, 7: np.int64, 9: np.bool_}


class _Unsupported(Exception):
    """The model uses something this converter does not handle; the message says what."""


@dataclass(frozen=True, slots=True)
class _Value:
    """An ONNX tensor as it exists in the TFLite graph being written."""

    shape: tuple[int, ...]
    """Logical (ONNX) shape; -1 for a dynamic dimension."""
    dtype: np.dtype[Any]
    tensor: int | None = None
    """The TFLite tensor holding it, stored so that ``logical = physical.transpose(perm)``."""
    perm: tuple[int, ...] = ()
    const: np.ndarray | None = None
    """The logical value of an initializer or constant (written where an operator uses it)."""
    nonneg: bool = False
    """Known to be >= 0 (a Relu's output): a max pool may then pad it with 0 instead of -inf."""


def identity(rank: int) -> tuple[int, ...]:
    return tuple(range(rank))


def convert_onnx(source: Path, destination: Path) -> Path:
    """Write ``source`` (ONNX) as ``destination`` (``.tflite``) and return ``destination``."""
    try:
        import onnx
    except ImportError as exc:
        raise MissingDependencyError(
            'converting ONNX models to .tflite needs the onnx package: pip install "unifer[models]"'
            " (or: pip install onnx)"
        ) from exc
    try:
        model = onnx.load(str(source))
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as exc:  # onnx raises a zoo of types for unreadable or inconsistent files
        raise ModelLoadError(
            f"cannot convert {source} to TFLite: onnx could not read it or infer its shapes "
            f"({type(exc).__name__}: {exc}); check that the file is a complete, valid ONNX model"
        ) from exc
    try:
        data = _Converter(model).run()
    except _Unsupported as exc:
        raise ModelLoadError(
            f"cannot convert {source} to TFLite: {exc}. unifer's converter handles CNNs "
            f"({', '.join(SUPPORTED_OPS)}, and any node whose inputs are all constants); convert "
            "other models with onnx2tf or litert-torch and load the .tflite file they write"
        ) from exc
    destination.write_bytes(data)
    return destination


class _Converter:
    def __init__(self, model: Any) -> None:
        from onnx import numpy_helper

        self.graph = model.graph
        self.numpy_helper = numpy_helper
        # Other domains an exporter lists (PyTorch's lists its onnxscript function libraries) are
        # harmless until a node uses one: run() refuses such nodes by name.
        self.opset = next(
            (int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), 1
        )
        self.writer = ModelWriter(f"Converted from ONNX by {CONVERTER}")
        self.writer.metadata("unifer_converter", CONVERTER.encode())
        # TFLite records a dynamic dimension as -1, without its ONNX name: kept here, so the
        # session can name it as onnxruntime does (and `unifer bench --dim NAME=...` reach it).
        names = {
            info.name: [d.dim_param or None for d in info.type.tensor_type.shape.dim]
            for info in (*self.graph.input, *self.graph.output)
        }
        self.writer.metadata(DIM_NAMES_KEY, json.dumps(names).encode())
        self.values: dict[str, _Value] = {}
        self.infos: dict[str, tuple[tuple[int, ...], np.dtype[Any]] | str] = {}
        self.layouts: dict[tuple[str, tuple[int, ...]], int] = {}
        for info in (*self.graph.input, *self.graph.value_info, *self.graph.output):
            # Unsupported types are an error only where a tensor of that type must be written:
            # a folded weight subgraph may pass through other types on its way to a constant.
            self.infos[info.name] = _type_info(info)

    # -- driver ------------------------------------------------------------------------------------

    def run(self) -> bytes:
        for init in self.graph.initializer:
            array = self.numpy_helper.to_array(init)
            self.values[init.name] = _Value(array.shape, array.dtype, const=array)
        inputs: dict[str, int] = {}
        for info in self.graph.input:
            if info.name in self.values:
                continue  # an initializer that old exporters also list as an input
            shape, dtype = self.info(info.name)
            tensor = self.writer.tensor(info.name, shape, dtype)
            self.values[info.name] = _Value(shape, dtype, tensor, identity(len(shape)))
            inputs[info.name] = tensor
        for node in self.graph.node:
            if not node.name and node.output:
                node.name = node.output[0]  # errors name the node; unnamed ones by their output
        gelus = _erf_gelus(self.graph)
        fused: set[str] = set()
        for node in self.graph.node:
            if node.name in fused:
                continue
            if node.name in gelus:  # x / sqrt(2) -> Erf -> + 1 -> * x -> * 0.5: one GELU
                x, output, chain = gelus[node.name]
                self.gelu(x, output, node.name)
                fused |= chain
                continue
            if node.domain not in ("", "ai.onnx"):
                raise _Unsupported(f"operator {node.op_type} (node {node.name!r}) is not supported")
            if self.foldable(node):
                self.fold(node)
                continue
            handler = getattr(self, f"_op_{node.op_type}", None)
            if handler is None and node.op_type in _ELEMENTWISE:
                handler = self.elementwise
            if handler is None:
                raise _Unsupported(f"operator {node.op_type} (node {node.name!r}) is not supported")
            try:
                handler(node, _attributes(node))
            except KeyError as exc:  # an input no supported node produced (or a missing attribute)
                raise _Unsupported(
                    f"node {node.name!r} ({node.op_type}) needs {exc.args[0]!r}, which is neither "
                    "a tensor with a value in the converted graph nor an attribute it has"
                ) from exc
        outputs: dict[str, int] = {}
        taken = set(inputs.values())
        for info in self.graph.output:
            value = self.values[info.name]
            if value.const is not None:
                raise _Unsupported(f"output {info.name!r} is a constant")
            tensor = self.physical(info.name, identity(len(value.shape)))
            if tensor in taken:
                tensor = self.copy(tensor, info.name, value)
            self.writer.rename(tensor, info.name)
            taken.add(tensor)
            outputs[info.name] = tensor
        return self.writer.finish(inputs, outputs)

    # -- tensors -----------------------------------------------------------------------------------

    def info(self, name: str) -> tuple[tuple[int, ...], np.dtype[Any]]:
        if name not in self.infos:
            raise _Unsupported(f"onnx could not infer the shape of tensor {name!r}")
        info = self.infos[name]
        if isinstance(info, str):
            raise _Unsupported(info)
        return info

    # -- constant folding --------------------------------------------------------------------------

    def foldable(self, node: Any) -> bool:
        """Whether every input of ``node`` is a known constant (and the node is deterministic).

        A node without inputs qualifies: a Constant, in any of its attribute forms.
        """
        names = [n for n in node.input if n]
        return node.op_type not in _NEVER_FOLD and all(
            n in self.values and self.values[n].const is not None for n in names
        )

    def fold(self, node: Any) -> None:
        """Evaluate ``node`` now with onnx's reference implementation (exact ONNX semantics).

        The node runs alone in a one-node model carrying the source's opset, so the operator's
        version (attribute vs. input forms of Unsqueeze, Clip, ...) is the one the model meant.
        """
        from onnx import TensorProto, helper
        from onnx.reference import ReferenceEvaluator

        feeds = {n: self.values[n].const for n in node.input if n}
        graph = helper.make_graph(
            [node],
            "fold",
            [helper.make_tensor_value_info(n, TensorProto.UNDEFINED, None) for n in feeds],
            [helper.make_tensor_value_info(n, TensorProto.UNDEFINED, None) for n in node.output],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        try:
            results = ReferenceEvaluator(model).run(None, feeds)
        except Exception as exc:  # the reference raises whatever numpy raises
            raise _Unsupported(
                f"could not evaluate the constant node {node.name!r} ({node.op_type}): "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        for name, result in zip(node.output, results, strict=True):
            if name:
                array = np.asarray(result)
                self.values[name] = _Value(array.shape, array.dtype, const=array)

    def new(self, name: str, perm: tuple[int, ...], *, nonneg: bool = False) -> tuple[int, _Value]:
        """A fresh TFLite tensor for the ONNX output ``name``, stored with ``perm``."""
        shape, dtype = self.info(name)
        tensor = self.writer.tensor(name, _physical_shape(shape, perm), dtype)
        value = _Value(shape, dtype, tensor, perm, nonneg=nonneg)
        self.values[name] = value
        return tensor, value

    def physical(self, name: str, perm: tuple[int, ...]) -> int:
        """The TFLite tensor holding ``name`` stored with ``perm``, transposing once if needed."""
        value = self.values[name]
        key = (name, perm)
        if key in self.layouts:
            return self.layouts[key]
        order = np.argsort(perm).tolist()
        if value.const is not None:
            tensor = self.writer.constant(f"{name}{_suffix(perm)}", value.const.transpose(order))
        elif value.tensor is None:  # every value that is not a constant has a tensor
            raise _Unsupported(f"tensor {name!r} has no value")
        elif value.perm == perm:
            tensor = value.tensor
        else:
            moves = [value.perm[a] for a in order]
            tensor = self.writer.tensor(
                f"{name}{_suffix(perm)}", _physical_shape(value.shape, perm), value.dtype
            )
            self.writer.op(
                "TRANSPOSE",
                [value.tensor, self.writer.constant(f"{name}{_suffix(perm)}/perm", _i32(moves))],
                [tensor],
                "TransposeOptions",
            )
        self.layouts[key] = tensor
        return tensor

    def broadcast_const(self, name: str, array: np.ndarray, like: _Value, *, keep: int = 1) -> int:
        """``array`` (logical, broadcasting against ``like``) written in ``like``'s layout.

        Leading 1s are dropped down to rank ``keep``: they broadcast anyway where another operand
        has ``like``'s rank, but where none has, they are what gives the result that rank.
        """
        rank = len(like.shape)
        if array.ndim > rank:
            raise _Unsupported(f"constant {name!r} has more dimensions than the tensor it joins")
        aligned = array.reshape((1,) * (rank - array.ndim) + array.shape)
        stored = aligned.transpose(np.argsort(like.perm).tolist())
        while stored.ndim > keep and stored.shape[0] == 1:
            stored = stored[0]  # keep the constant compact
        return self.writer.constant(name, np.ascontiguousarray(stored.astype(like.dtype)))

    def scratch(self, name: str, value: _Value, shape: Sequence[int] | None = None) -> int:
        """An intermediate tensor stored like ``value`` (with logical ``shape`` if another)."""
        logical = value.shape if shape is None else shape
        return self.writer.tensor(name, _physical_shape(logical, value.perm), value.dtype)

    def fresh(self, name: str) -> str:
        """``name``, made unique among the graph's tensor names (for values the converter adds)."""
        while name in self.values or name in self.infos:
            name += "'"
        return name

    def copy(self, tensor: int, name: str, value: _Value) -> int:
        """A copy of ``tensor`` (a graph input reused as an output needs its own tensor)."""
        shape = list(value.shape)
        if sum(d < 0 for d in shape) > 1:
            raise _Unsupported(
                f"output {name!r} repeats another tensor and has several dynamic dims"
            )
        out = self.writer.tensor(f"{name}/copy", shape, value.dtype)
        self.writer.op(
            "RESHAPE",
            [tensor, self.writer.constant(f"{name}/shape", _i32(shape))],
            [out],
            "ReshapeOptions",
            newShape=shape,
        )
        return out

    def const(self, name: str, role: str) -> np.ndarray:
        value = self.values[name]
        if value.const is None:
            raise _Unsupported(f"the {role} {name!r} must be a constant (an initializer)")
        return value.const

    # -- operators ---------------------------------------------------------------------------------

    def _op_Identity(self, node: Any, attrs: dict[str, Any]) -> None:
        self.values[node.output[0]] = self.values[node.input[0]]

    def _op_Transpose(self, node: Any, attrs: dict[str, Any]) -> None:
        value = self.values[node.input[0]]
        rank = len(value.shape)
        order = [int(p) for p in attrs.get("perm", reversed(range(rank)))]
        shape = tuple(value.shape[p] for p in order)
        if value.const is not None:
            transposed = value.const.transpose(order)
            self.values[node.output[0]] = _Value(shape, value.dtype, const=transposed)
            return
        # No data moves: the output is the same stored tensor, read through one more permutation.
        perm = tuple(value.perm[p] for p in order)
        self.values[node.output[0]] = _Value(
            shape, value.dtype, value.tensor, perm, nonneg=value.nonneg
        )

    def unary(self, node: Any, op: str, options: str | None = None, **fields: object) -> None:
        """An elementwise operator: computed in whatever layout its input is stored in."""
        self.float_only(node)
        value = self.values[node.input[0]]
        source = self.physical(node.input[0], value.perm)
        out, _ = self.new(node.output[0], value.perm, nonneg=op in _NONNEGATIVE)
        self.writer.op(op, [source], [out], options, **fields)

    def elementwise(self, node: Any, attrs: dict[str, Any]) -> None:
        self.unary(node, _ELEMENTWISE[node.op_type])

    def _op_Elu(self, node: Any, attrs: dict[str, Any]) -> None:
        if float(attrs.get("alpha", 1.0)) != 1.0:
            raise _Unsupported(f"Elu {node.name!r} with alpha != 1 (TFLite's ELU has alpha 1)")
        self.unary(node, "ELU")

    def _op_Gelu(self, node: Any, attrs: dict[str, Any]) -> None:
        approximate = attrs.get("approximate", b"none")
        approximate = approximate.decode() if isinstance(approximate, bytes) else approximate
        self.unary(node, "GELU", "GeluOptions", approximate=approximate == "tanh")

    def _op_Erf(self, node: Any, attrs: dict[str, Any]) -> None:
        raise _Unsupported(
            f"operator Erf (node {node.name!r}) is supported only within an exact GELU (x / "
            "sqrt(2) -> Erf -> + 1 -> * x -> * 0.5, which becomes TFLite's GELU)"
        )

    def gelu(self, x: str, output: str, name: str) -> None:
        """The exact (erf) GELU of ``x`` as ``output``: what the fused Erf chain computes."""
        from onnx import helper

        self._op_Gelu(helper.make_node("Gelu", [x], [output], name=name), {})

    def _op_HardSigmoid(self, node: Any, attrs: dict[str, Any]) -> None:
        # max(0, min(1, alpha * x + beta)): TFLite has no such operator, so MUL, ADD and a clamp.
        self.float_only(node)
        value = self.values[node.input[0]]
        name = node.output[0]
        steps = [("MUL", "alpha", attrs.get("alpha", 0.2)), ("ADD", "beta", attrs.get("beta", 0.5))]
        source = self.physical(node.input[0], value.perm)
        for op, label, operand in steps:
            out = self.scratch(f"{name}/{label}", value)
            factor = self.writer.constant(f"{name}/{label}/value", _scalar(operand, value))
            self.writer.op(
                op, [source, factor], [out], f"{op.title()}Options", fusedActivationFunction=0
            )
            source = out
        self.clamp(name, source, value, 0.0, 1.0)

    def _op_Pow(self, node: Any, attrs: dict[str, Any]) -> None:
        exponent = self.values[node.input[1]].const
        same_shape = self.values[node.input[0]].shape == self.info(node.output[0])[0]
        if exponent is not None and exponent.size == 1 and same_shape:
            # What exporters write for x**2 and x**0.5: the kernels that compute exactly that.
            power = float(exponent.reshape(-1)[0])
            if power == 1.0:
                self.values[node.output[0]] = self.values[node.input[0]]
                return
            if power in (0.5, 2.0):
                self.unary(node, "SQRT" if power == 0.5 else "SQUARE")
                return
        names = list(node.input)
        if exponent is not None and exponent.dtype != np.float32:
            # ONNX allows an integer exponent; TFLite's POW takes one type.
            exact = exponent.astype(np.float32)
            if not np.array_equal(exact, exponent):
                raise _Unsupported(f"Pow {node.name!r} has an exponent float32 cannot hold")
            names[1] = self.fresh(f"{names[1]}/float32")
            self.values[names[1]] = _Value(exact.shape, exact.dtype, const=exact)
        if any(self.values[n].dtype != np.float32 for n in names):
            raise _Unsupported(f"Pow {node.name!r} on non-float32 tensors is not supported")
        self.binary(names, node.output[0], "POW", "PowOptions", fused=False)

    def _op_Max(self, node: Any, attrs: dict[str, Any]) -> None:
        self.variadic(node, "MAXIMUM", "MaximumMinimumOptions")

    def _op_Min(self, node: Any, attrs: dict[str, Any]) -> None:
        self.variadic(node, "MINIMUM", "MaximumMinimumOptions")

    def _op_LeakyRelu(self, node: Any, attrs: dict[str, Any]) -> None:
        self.unary(node, "LEAKY_RELU", "LeakyReluOptions", alpha=float(attrs.get("alpha", 0.01)))

    def _op_Clip(self, node: Any, attrs: dict[str, Any]) -> None:
        self.float_only(node)
        if self.opset >= 11:  # bounds became optional inputs in opset 11
            names = [*node.input[1:3], "", ""][:2]
            low, high = (
                float(self.const(n, "Clip bound").reshape(())) if n else None for n in names
            )
        else:
            low, high = attrs.get("min"), attrs.get("max")
        low = -math.inf if low is None else float(low)
        high = math.inf if high is None else float(high)
        named = {(0.0, 6.0): "RELU6", (-1.0, 1.0): "RELU_N1_TO_1", (0.0, math.inf): "RELU"}
        if (low, high) in named:
            self.unary(node, named[(low, high)])
            return
        value = self.values[node.input[0]]
        if low == -math.inf and high == math.inf:
            self.values[node.output[0]] = value
            return
        self.clamp(node.output[0], self.physical(node.input[0], value.perm), value, low, high)

    def clamp(self, name: str, source: int, value: _Value, low: float, high: float) -> None:
        """``name = min(max(source, low), high)``, as ONNX's Clip defines it (so low > high gives
        high everywhere); an infinite bound is skipped. ``source`` is stored like ``value``."""
        steps = [(op, b) for op, b in (("MAXIMUM", low), ("MINIMUM", high)) if math.isfinite(b)]
        for index, (op, bound) in enumerate(steps):
            if index == len(steps) - 1:
                out, _ = self.new(name, value.perm, nonneg=low >= 0 and high >= 0)
            else:
                out = self.scratch(f"{name}/{op.lower()}", value)
            limit = self.writer.constant(f"{name}/{op.lower()}/bound", _scalar(bound, value))
            self.writer.op(op, [source, limit], [out], "MaximumMinimumOptions")
            source = out

    def _op_Add(self, node: Any, attrs: dict[str, Any]) -> None:
        self.binary(node.input, node.output[0], "ADD", "AddOptions")

    def _op_Mul(self, node: Any, attrs: dict[str, Any]) -> None:
        self.binary(node.input, node.output[0], "MUL", "MulOptions")

    def _op_Sub(self, node: Any, attrs: dict[str, Any]) -> None:
        self.float_only(node)
        self.binary(node.input, node.output[0], "SUB", "SubOptions")

    def _op_Div(self, node: Any, attrs: dict[str, Any]) -> None:
        # Integer Div truncates in ONNX; TFLite's integer DIV does not promise that: floats only.
        self.float_only(node)
        self.binary(node.input, node.output[0], "DIV", "DivOptions")

    def _op_Sum(self, node: Any, attrs: dict[str, Any]) -> None:
        self.variadic(node, "ADD", "AddOptions")

    def variadic(self, node: Any, op: str, options: str) -> None:
        """Sum, Max or Min of any number of inputs: a chain of the binary ``op``."""
        names = list(node.input)
        output = node.output[0]
        if len(names) == 1:
            self.values[output] = self.values[names[0]]
            return
        if len(names) > 2 and any(
            self.values[n].shape != self.info(output)[0] or self.values[n].const is not None
            for n in names
        ):
            raise _Unsupported(
                f"{node.op_type} {node.name!r} of more than two inputs is supported only for "
                "tensors of one shape (no broadcasting, no constants)"
            )
        # Left to right, as onnxruntime computes; partial results have the output's shape.
        total = names[0]
        for index, name in enumerate(names[1:], start=1):
            step = (
                output if index == len(names) - 1 else self.fresh(f"{output}/{op.lower()}{index}")
            )
            self.infos[step] = self.info(output)
            self.binary([total, name], step, op, options, fused=op == "ADD")
            total = step

    def float_only(self, node: Any, count: int | None = None) -> None:
        """Refuse ``node`` unless its (first ``count``) inputs are float32."""
        for name in node.input[:count]:
            if name and self.values[name].dtype != np.float32:
                raise _Unsupported(
                    f"{node.op_type} {node.name!r} on {self.values[name].dtype} tensors is not "
                    "supported (float32 only)"
                )

    def binary(
        self, names: Sequence[str], output: str, op: str, options: str, *, fused: bool = True
    ) -> None:
        """``output = a op b`` with ONNX broadcasting; ``fused``: the options take an activation."""
        a, b = (self.values[n] for n in names)
        rank = len(self.info(output)[0])
        variables = [v for v in (a, b) if v.const is None and len(v.shape) == rank]
        if len(variables) == 2 - sum(v.const is not None for v in (a, b)):
            # Every operand is a constant or a tensor of the output's rank: compute in the layout
            # a tensor already has (a conv's NHWC output, say) instead of transposing it back.
            perm = next((v.perm for v in variables if v.perm != identity(rank)), identity(rank))
        else:
            perm = identity(rank)  # mixed ranks: broadcast in ONNX order, as ONNX defines it
        like = _Value((0,) * rank, a.dtype if a.const is None else b.dtype, perm=perm)
        # The result has the rank of the widest operand, in TFLite as in ONNX: where no tensor has
        # the output's rank, the constant's leading 1s are what give the result that rank.
        keep = 1 if variables else rank
        inputs = []
        for name, value in zip(names, (a, b), strict=True):
            if value.const is not None:
                inputs.append(
                    self.broadcast_const(f"{output}/{name}", value.const, like, keep=keep)
                )
            elif len(value.shape) == rank:
                inputs.append(self.physical(name, perm))
            else:
                inputs.append(self.physical(name, identity(len(value.shape))))
        out, _ = self.new(output, perm)
        fields = {"fusedActivationFunction": 0} if fused else {}
        self.writer.op(op, inputs, [out], options, **fields)

    def _op_PRelu(self, node: Any, attrs: dict[str, Any]) -> None:
        value = self.values[node.input[0]]
        slope = self.const(node.input[1], "PRelu slope").astype(np.float32)
        source = self.physical(node.input[0], value.perm)
        alpha = self.broadcast_const(f"{node.output[0]}/alpha", slope, value)
        out, _ = self.new(node.output[0], value.perm)
        self.writer.op("PRELU", [source, alpha], [out])

    def _op_BatchNormalization(self, node: Any, attrs: dict[str, Any]) -> None:
        if attrs.get("training_mode", 0) or len(node.output) > 1:
            raise _Unsupported("BatchNormalization in training mode is not supported")
        value = self.values[node.input[0]]
        scale, bias, mean, var = (
            self.const(n, "BatchNormalization parameter").astype(np.float64)
            for n in node.input[1:5]
        )
        # Inference BN is y = x * s + t; fold once in float64 so only the final rounding is fp32.
        s = scale / np.sqrt(var + float(attrs.get("epsilon", 1e-5)))
        t = bias - mean * s
        channel_shape = (-1,) + (1,) * (len(value.shape) - 2)  # the channel axis is 1 in ONNX
        source = self.physical(node.input[0], value.perm)
        name = node.output[0]
        mul = self.broadcast_const(
            f"{name}/scale", s.astype(np.float32).reshape(channel_shape), value
        )
        add = self.broadcast_const(
            f"{name}/shift", t.astype(np.float32).reshape(channel_shape), value
        )
        scaled = self.scratch(f"{name}/scaled", value)
        self.writer.op("MUL", [source, mul], [scaled], "MulOptions", fusedActivationFunction=0)
        out, _ = self.new(name, value.perm)
        self.writer.op("ADD", [scaled, add], [out], "AddOptions", fusedActivationFunction=0)

    def _op_LayerNormalization(self, node: Any, attrs: dict[str, Any]) -> None:
        if any(node.output[1:]):
            raise _Unsupported(f"LayerNormalization {node.name!r} with Mean/InvStdDev outputs")
        rank = len(self.values[node.input[0]].shape)
        axis = int(attrs.get("axis", -1)) % rank
        self.normalize(node, list(range(axis, rank)), float(attrs.get("epsilon", 1e-5)), None)

    def _op_InstanceNormalization(self, node: Any, attrs: dict[str, Any]) -> None:
        rank = len(self.values[node.input[0]].shape)
        if rank < 3:
            raise _Unsupported(f"InstanceNormalization {node.name!r} needs spatial axes")
        # Scale and bias are per channel (axis 1): shaped to broadcast there.
        channel = (-1,) + (1,) * (rank - 2)
        self.normalize(node, list(range(2, rank)), float(attrs.get("epsilon", 1e-5)), channel)

    def normalize(
        self, node: Any, axes: list[int], epsilon: float, param_shape: tuple[int, ...] | None
    ) -> None:
        """``(x - mean) / sqrt(var + epsilon) * scale + bias`` over ``axes``, as LayerNorm and
        InstanceNorm define it: two passes (mean, then the mean of squared deviations), reduced
        where the axes are stored. ``param_shape`` reshapes scale and bias (else they align with
        the trailing axes, ONNX broadcasting)."""
        self.float_only(node)
        value = self.values[node.input[0]]
        name = node.output[0]
        source = self.physical(node.input[0], value.perm)
        reduced = tuple(1 if a in axes else d for a, d in enumerate(value.shape))
        stored_axes = self.writer.constant(
            f"{name}/axes", _i32(sorted(value.perm[a] for a in axes))
        )

        def step(
            op: str, inputs: list[int], label: str, shape: tuple[int, ...], **fields: object
        ) -> int:
            out = self.scratch(f"{name}/{label}", value, shape)
            options = {
                "MEAN": "ReducerOptions",
                "SUB": "SubOptions",
                "MUL": "MulOptions",
                "ADD": "AddOptions",
            }.get(op)
            self.writer.op(op, inputs, [out], options, **fields)
            return out

        mean = step("MEAN", [source, stored_axes], "mean", reduced, keepDims=True)
        centered = step("SUB", [source, mean], "centered", value.shape, fusedActivationFunction=0)
        squared = step("SQUARE", [centered], "squared", value.shape)
        variance = step("MEAN", [squared, stored_axes], "variance", reduced, keepDims=True)
        eps = self.writer.constant(f"{name}/epsilon", _scalar(epsilon, value))
        shifted = step("ADD", [variance, eps], "shifted", reduced, fusedActivationFunction=0)
        inverse = step("RSQRT", [shifted], "rsqrt", reduced)
        normalized = step(
            "MUL", [centered, inverse], "normalized", value.shape, fusedActivationFunction=0
        )
        inputs = [*node.input, "", ""]  # scale is required by both operators, bias by one

        def parameter(input_name: str, label: str) -> int:
            array = self.const(input_name, f"{node.op_type} {label}").astype(np.float32)
            shaped = array.reshape(param_shape) if param_shape is not None else array
            return self.broadcast_const(f"{name}/{label}", shaped, value)

        if not inputs[2]:
            out, _ = self.new(name, value.perm)
            self.writer.op(
                "MUL", [normalized, parameter(inputs[1], "scale")], [out], "MulOptions",
                fusedActivationFunction=0,
            )  # fmt: skip
            return
        scaled = step("MUL", [normalized, parameter(inputs[1], "scale")], "scaled", value.shape,
                      fusedActivationFunction=0)  # fmt: skip
        out, _ = self.new(name, value.perm)
        self.writer.op(
            "ADD", [scaled, parameter(inputs[2], "bias")], [out], "AddOptions",
            fusedActivationFunction=0,
        )  # fmt: skip

    def _op_Conv(self, node: Any, attrs: dict[str, Any]) -> None:
        value = self.values[node.input[0]]
        weight = self.const(node.input[1], "Conv weight").astype(np.float32)
        if len(value.shape) == 3 and weight.ndim == 3:
            self.conv1d(node, attrs, value, weight)
            return
        if len(value.shape) != 4 or weight.ndim != 4:
            raise _Unsupported(f"Conv {node.name!r} is not a 1-D or 2-D convolution")
        cout, cin_per_group, kh, kw = weight.shape
        cin = value.shape[1]
        group = int(attrs.get("group", 1))
        strides = [int(s) for s in attrs.get("strides", (1, 1))]
        dilations = [int(d) for d in attrs.get("dilations", (1, 1))]
        padding, pads = self.conv_padding(node, attrs, value, (kh, kw), strides, dilations)
        if len(node.input) > 2 and node.input[2]:
            bias = self.const(node.input[2], "Conv bias").astype(np.float32)
        else:
            bias = np.zeros(cout, np.float32)
        source = self.physical(node.input[0], NHWC)
        if pads is not None:
            source = self.pad(node, source, value, pads)
        name = node.output[0]
        out, _ = self.new(name, NHWC)
        if group > 1 and group == cin and cin_per_group == 1 and cout % cin == 0:
            filt = self.writer.constant(f"{name}/filter", weight.transpose(1, 2, 3, 0))
            self.writer.op(
                "DEPTHWISE_CONV_2D",
                [source, filt, self.writer.constant(f"{name}/bias", bias)],
                [out],
                "DepthwiseConv2DOptions",
                padding=padding,
                strideH=strides[0],
                strideW=strides[1],
                depthMultiplier=cout // cin,
                dilationHFactor=dilations[0],
                dilationWFactor=dilations[1],
                fusedActivationFunction=0,
            )
        else:
            # TFLite's CONV_2D groups by itself when its filter holds fewer input channels.
            filt = self.writer.constant(f"{name}/filter", weight.transpose(0, 2, 3, 1))
            self.writer.op(
                "CONV_2D",
                [source, filt, self.writer.constant(f"{name}/bias", bias)],
                [out],
                "Conv2DOptions",
                padding=padding,
                strideH=strides[0],
                strideW=strides[1],
                dilationHFactor=dilations[0],
                dilationWFactor=dilations[1],
                fusedActivationFunction=0,
            )

    def _op_ConvTranspose(self, node: Any, attrs: dict[str, Any]) -> None:
        value = self.values[node.input[0]]
        weight = self.const(node.input[1], "ConvTranspose weight").astype(np.float32)
        shape = self.info(node.output[0])[0]
        if len(value.shape) != 4 or weight.ndim != 4:
            raise _Unsupported(f"ConvTranspose {node.name!r} is not a 2-D convolution")
        if int(attrs.get("group", 1)) != 1 or any(int(d) != 1 for d in attrs.get("dilations", ())):
            raise _Unsupported(
                f"ConvTranspose {node.name!r} with groups or dilations is not supported"
            )
        if _text(attrs.get("auto_pad", "NOTSET")) != "NOTSET" or "output_shape" in attrs:
            raise _Unsupported(
                f"ConvTranspose {node.name!r} with auto_pad or output_shape is not supported"
            )
        if any(d < 0 for d in (*value.shape[1:], *shape[1:])):
            raise _Unsupported(
                f"ConvTranspose {node.name!r} of an image whose size is unknown at conversion time"
            )
        cout = weight.shape[1]
        strides = [int(s) for s in attrs.get("strides", (1, 1))]
        top, left = (int(p) for p in attrs.get("pads", (0, 0, 0, 0))[:2])
        extra = [int(p) for p in attrs.get("output_padding", (0, 0))]
        if len(node.input) > 2 and node.input[2]:
            bias = self.const(node.input[2], "ConvTranspose bias").astype(np.float32)
        else:
            bias = np.zeros(cout, np.float32)
        # TFLite's VALID transposed convolution places input pixel i at i * stride, as ONNX does
        # before its pads, and takes an output of ONNX's full extent (output_padding included:
        # less than a stride, which VALID allows, and its rows get only the bias). Computed
        # whole, then cropped to ONNX's pads.
        n, _, height, width = shape
        full_h, full_w = (
            (size - 1) * stride + kernel + pad
            for size, stride, kernel, pad in zip(
                value.shape[2:], strides, weight.shape[2:], extra, strict=True
            )
        )
        name = node.output[0]
        full = [n, full_h, full_w, cout]
        out, _ = self.new(name, NHWC)
        cropped = (full_h, full_w) != (height, width)
        target = self.writer.tensor(f"{name}/full", full, F32) if cropped else out
        self.writer.op(
            "TRANSPOSE_CONV",
            [
                self.output_shape(node, full),
                self.writer.constant(f"{name}/filter", weight.transpose(1, 2, 3, 0)),
                self.physical(node.input[0], NHWC),
                self.writer.constant(f"{name}/bias", bias),
            ],
            [target],
            "TransposeConvOptions",
            padding=1,
            strideH=strides[0],
            strideW=strides[1],
            fusedActivationFunction=0,
        )
        if cropped:
            self.writer.op(
                "SLICE",
                [
                    target,
                    self.writer.constant(f"{name}/begin", _i32([0, top, left, 0])),
                    self.writer.constant(f"{name}/size", _i32([-1, height, width, cout])),
                ],
                [out],
                "SliceOptions",
            )

    def output_shape(self, node: Any, shape: Sequence[int]) -> int:
        """TRANSPOSE_CONV's output-shape input: a constant, or built at run time from the
        input's batch size when that is dynamic."""
        name = node.output[0]
        if shape[0] >= 0:
            return self.writer.constant(f"{name}/output_shape", _i32(shape))
        dims = self.writer.tensor(f"{name}/input_shape", [4], np.int32)
        self.writer.op(
            "SHAPE", [self.physical(node.input[0], NHWC)], [dims], "ShapeOptions", outType=2
        )
        batch = self.writer.tensor(f"{name}/batch", [1], np.int32)
        self.writer.op(
            "SLICE",
            [
                dims,
                self.writer.constant(f"{name}/at0", _i32([0])),
                self.writer.constant(f"{name}/one", _i32([1])),
            ],
            [batch],
            "SliceOptions",
        )
        result = self.writer.tensor(f"{name}/output_shape", [4], np.int32)
        self.writer.op(
            "CONCATENATION",
            [batch, self.writer.constant(f"{name}/output_shape/rest", _i32(shape[1:]))],
            [result],
            "ConcatenationOptions",
            axis=0,
            fusedActivationFunction=0,
        )
        return result

    def conv1d(self, node: Any, attrs: dict[str, Any], value: _Value, weight: np.ndarray) -> None:
        """A 1-D convolution as the 2-D one of a one-row image: [N, C, L] viewed as [N, C, 1, L],
        the kernel as 1 x K, then viewed back."""
        from onnx import helper

        n, _, length = value.shape
        if sum(d < 0 for d in value.shape) > 1:
            raise _Unsupported(f"Conv {node.name!r} (1-D) with several dynamic dimensions")
        out_shape = self.info(node.output[0])[0]
        row, kernel, row_out = (
            self.fresh(f"{node.output[0]}/{label}") for label in ("row", "kernel", "row_out")
        )
        self.infos[row] = ((n, value.shape[1], 1, length), value.dtype)
        self.reshape_to(node.input[0], row, [n, value.shape[1], 1, length])
        kernel_2d = weight[:, :, np.newaxis, :]
        self.values[kernel] = _Value(kernel_2d.shape, kernel_2d.dtype, const=kernel_2d)
        self.infos[row_out] = ((out_shape[0], out_shape[1], 1, out_shape[2]), value.dtype)
        pads = [int(p) for p in attrs.get("pads", (0, 0))]
        attrs_2d = {
            **{k: v for k, v in attrs.items() if k in ("group", "auto_pad")},
            "strides": [1, *attrs.get("strides", (1,))],
            "dilations": [1, *attrs.get("dilations", (1,))],
            "pads": [0, pads[0], 0, pads[1]],
            "kernel_shape": [1, weight.shape[2]],
        }
        conv = helper.make_node(
            "Conv", [row, kernel, *node.input[2:]], [row_out], name=node.name, **attrs_2d
        )
        self._op_Conv(conv, attrs_2d)
        self.reshape_to(row_out, node.output[0], list(out_shape))

    def reshape_to(self, source: str, target: str, shape: list[int]) -> None:
        """``target = reshape(source, shape)`` for tensors the converter adds (one dim may be
        unknown: -1)."""
        from onnx import helper

        node = helper.make_node("Reshape", [source, ""], [target], name=target)
        self.reshape(node, self.values[source], shape)

    def conv_padding(
        self,
        node: Any,
        attrs: dict[str, Any],
        value: _Value,
        kernel: tuple[int, int],
        strides: Sequence[int],
        dilations: Sequence[int],
    ) -> tuple[int, list[int] | None]:
        """TFLite padding (SAME=0, VALID=1) and, when neither matches ONNX's, explicit pads."""
        auto = attrs.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else str(auto)
        if auto == "VALID":
            return 1, None
        if auto == "SAME_UPPER":
            return 0, None  # TensorFlow's SAME puts the odd pixel at the end, like SAME_UPPER
        if auto != "NOTSET":
            raise _Unsupported(f"{node.op_type} auto_pad={auto} is not supported")
        pads = [int(p) for p in attrs.get("pads", (0, 0, 0, 0))]
        if not any(pads):
            return 1, None
        same = True
        for axis in range(2):
            size = value.shape[2 + axis]
            effective = (kernel[axis] - 1) * dilations[axis] + 1
            if size < 0:
                # Unknown size: SAME's pads are size-independent only at stride 1.
                total = effective - 1 if strides[axis] == 1 else -1
            else:
                out = math.ceil(size / strides[axis])
                total = max((out - 1) * strides[axis] + effective - size, 0)
            want = (total // 2, total - total // 2)
            same = same and total >= 0 and (pads[axis], pads[axis + 2]) == want
        return (0, None) if same else (1, pads)

    def pad(self, node: Any, source: int, value: _Value, pads: list[int], fill: float = 0.0) -> int:
        """An explicit PAD (NHWC) for ONNX pads that TFLite's SAME does not reproduce."""
        n, c, h, w = value.shape
        top, left, bottom, right = pads
        shape = [n, h + top + bottom if h >= 0 else -1, w + left + right if w >= 0 else -1, c]
        padded = self.writer.tensor(f"{node.output[0]}/padded", shape, value.dtype)
        widths = _i32([[0, 0], [top, bottom], [left, right], [0, 0]])
        inputs = [source, self.writer.constant(f"{node.output[0]}/pads", widths)]
        if fill == 0.0:
            self.writer.op("PAD", inputs, [padded], "PadOptions")
        else:
            inputs.append(self.writer.constant(f"{node.output[0]}/fill", np.full(1, fill, F32)))
            self.writer.op("PADV2", inputs, [padded], "PadV2Options")
        return padded

    # -- pooling -----------------------------------------------------------------------------------

    def _op_MaxPool(self, node: Any, attrs: dict[str, Any]) -> None:
        self.pool(node, attrs, "MAX_POOL_2D")

    def _op_AveragePool(self, node: Any, attrs: dict[str, Any]) -> None:
        self.pool(node, attrs, "AVERAGE_POOL_2D")

    def pool(self, node: Any, attrs: dict[str, Any], op: str) -> None:
        self.float_only(node)
        value = self.values[node.input[0]]
        if len(value.shape) != 4:
            raise _Unsupported(f"{node.op_type} {node.name!r} is not a 2-D pooling")
        if len(node.output) > 1 and node.output[1]:
            raise _Unsupported(f"{node.op_type} {node.name!r} with an Indices output")
        kh, kw = (int(k) for k in attrs["kernel_shape"])
        kernel = (kh, kw)
        strides = [int(s) for s in attrs.get("strides", (1, 1))]
        if any(int(d) != 1 for d in attrs.get("dilations", (1, 1))):
            raise _Unsupported(f"{node.op_type} {node.name!r} with dilations is not supported")
        self.check_pool_size(node, attrs, value, kernel, strides)
        padding, pads = self.conv_padding(node, attrs, value, kernel, strides, (1, 1))
        source = self.physical(node.input[0], NHWC)
        if op == "MAX_POOL_2D":
            # ONNX pads a max pool with -inf, TFLite's SAME ignores the pad: the same. Other pads
            # become an explicit PAD before a VALID pool: with 0 after a Relu (every window holds
            # a valid pixel >= 0, so the max is unchanged, and XNNPACK takes PAD but not PADV2),
            # else with -inf.
            if pads is not None:
                fill = 0.0 if value.nonneg else -math.inf
                source = self.pad(node, source, value, pads, fill=fill)
        elif int(attrs.get("count_include_pad", 0)):
            # The pads count in the divisor: zero-pad explicitly, then average VALID windows.
            auto = attrs.get("auto_pad", b"NOTSET")
            if (auto.decode() if isinstance(auto, bytes) else str(auto)) not in ("NOTSET", "VALID"):
                raise _Unsupported(
                    f"AveragePool {node.name!r} with auto_pad and count_include_pad=1 is not "
                    "supported"
                )
            explicit = [int(p) for p in attrs.get("pads", (0, 0, 0, 0))]
            if padding == 0 or pads is not None:
                source = self.pad(node, source, value, pads or explicit)
            padding = 1
        elif pads is not None:
            # count_include_pad=0 divides by the valid pixels only, which TFLite does just for the
            # pads of SAME; other pads would be counted.
            raise _Unsupported(
                f"AveragePool {node.name!r} with pads {pads} (count_include_pad=0) is not "
                "supported: TFLite excludes only the pads of SAME padding from the average"
            )
        out, _ = self.new(node.output[0], NHWC, nonneg=value.nonneg)
        self.writer.op(
            op,
            [source],
            [out],
            "Pool2DOptions",
            padding=padding,
            strideH=strides[0],
            strideW=strides[1],
            filterHeight=kernel[0],
            filterWidth=kernel[1],
            fusedActivationFunction=0,
        )

    def check_pool_size(
        self,
        node: Any,
        attrs: dict[str, Any],
        value: _Value,
        kernel: tuple[int, ...],
        strides: Sequence[int],
    ) -> None:
        """ceil_mode is exact only where it gives the floor-mode size (TFLite rounds down)."""
        if not int(attrs.get("ceil_mode", 0)):
            return
        auto = attrs.get("auto_pad", b"NOTSET")
        if (auto.decode() if isinstance(auto, bytes) else str(auto)) != "NOTSET":
            return  # auto_pad fixes the size without ceil_mode's rounding
        pads = [int(p) for p in attrs.get("pads", (0, 0, 0, 0))]
        for axis in range(2):
            size = value.shape[2 + axis]
            span = size + pads[axis] + pads[axis + 2] - kernel[axis]
            if size < 0 or span % strides[axis]:
                raise _Unsupported(
                    f"{node.op_type} {node.name!r} with ceil_mode=1 is not supported where it "
                    "rounds up (TFLite pools round down)"
                )

    def _op_GlobalAveragePool(self, node: Any, attrs: dict[str, Any]) -> None:
        self.global_pool(node, "MEAN")

    def _op_GlobalMaxPool(self, node: Any, attrs: dict[str, Any]) -> None:
        self.global_pool(node, "REDUCE_MAX")

    def global_pool(self, node: Any, op: str) -> None:
        self.float_only(node)
        rank = len(self.values[node.input[0]].shape)
        if rank < 3:
            raise _Unsupported(f"{node.op_type} {node.name!r} needs a tensor with spatial axes")
        self.reduction(node, op, list(range(2, rank)), keep=True)

    # -- reductions --------------------------------------------------------------------------------

    def _op_ReduceMean(self, node: Any, attrs: dict[str, Any]) -> None:
        self.reduce(node, attrs, "MEAN")

    def _op_ReduceSum(self, node: Any, attrs: dict[str, Any]) -> None:
        self.reduce(node, attrs, "SUM")

    def _op_ReduceMax(self, node: Any, attrs: dict[str, Any]) -> None:
        self.reduce(node, attrs, "REDUCE_MAX")

    def _op_ReduceMin(self, node: Any, attrs: dict[str, Any]) -> None:
        self.reduce(node, attrs, "REDUCE_MIN")

    def _op_ReduceProd(self, node: Any, attrs: dict[str, Any]) -> None:
        self.reduce(node, attrs, "REDUCE_PROD")

    def _op_ReduceSumSquare(self, node: Any, attrs: dict[str, Any]) -> None:
        self.reduce(node, attrs, "SUM", before="SQUARE")

    def _op_ReduceL1(self, node: Any, attrs: dict[str, Any]) -> None:
        self.reduce(node, attrs, "SUM", before="ABS")

    def _op_ReduceL2(self, node: Any, attrs: dict[str, Any]) -> None:
        self.reduce(node, attrs, "SUM", before="SQUARE", after="SQRT")

    def reduce(
        self,
        node: Any,
        attrs: dict[str, Any],
        op: str,
        *,
        before: str | None = None,
        after: str | None = None,
    ) -> None:
        """An ONNX Reduce*: ``op`` over the axes, with elementwise ``before``/``after`` steps."""
        self.float_only(node, count=1)
        rank = len(self.values[node.input[0]].shape)
        # The axes moved from an attribute to an optional input (opset 13 for ReduceSum, else 18).
        if len(node.input) > 1 and node.input[1]:
            axes = [int(a) for a in self.const(node.input[1], f"{node.op_type} axes").reshape(-1)]
        else:
            axes = [int(a) for a in attrs.get("axes", ())]
        if not axes and int(attrs.get("noop_with_empty_axes", 0)):
            if before or after:  # what the identity means then is not settled across runtimes
                raise _Unsupported(f"{node.op_type} {node.name!r} with noop_with_empty_axes=1")
            self.values[node.output[0]] = self.values[node.input[0]]
            return
        axes = sorted({a % rank for a in axes} if axes else set(range(rank)))
        keep = bool(int(attrs.get("keepdims", 1)))
        self.reduction(node, op, axes, keep=keep, before=before, after=after)

    def reduction(
        self,
        node: Any,
        op: str,
        axes: Sequence[int],
        *,
        keep: bool,
        before: str | None = None,
        after: str | None = None,
    ) -> None:
        """Reduce the logical ``axes`` where they are stored: no TRANSPOSE is needed."""
        value = self.values[node.input[0]]
        name = node.output[0]
        perm = value.perm
        if not keep:  # the remaining axes keep their stored order
            kept = [a for a in range(len(value.shape)) if a not in axes]
            perm = tuple(int(p) for p in np.argsort(np.argsort([value.perm[a] for a in kept])))
        source = self.physical(node.input[0], value.perm)
        if before is not None:
            elementwise = self.scratch(f"{name}/{before.lower()}", value)
            self.writer.op(before, [source], [elementwise])
            source = elementwise
        stored_axes = sorted(value.perm[a] for a in axes)
        if after is None:
            out, _ = self.new(name, perm, nonneg=value.nonneg or before is not None)
        else:
            shape, _ = self.info(name)
            out = self.writer.tensor(f"{name}/{op.lower()}", _physical_shape(shape, perm), F32)
        self.writer.op(
            op,
            [source, self.writer.constant(f"{name}/axes", _i32(stored_axes))],
            [out],
            "ReducerOptions",
            keepDims=keep,
        )
        if after is not None:
            final, _ = self.new(name, perm, nonneg=True)  # SQRT of a sum of squares
            self.writer.op(after, [out], [final])

    # -- resampling --------------------------------------------------------------------------------

    def _op_Resize(self, node: Any, attrs: dict[str, Any]) -> None:
        inputs = [*node.input, "", "", ""]
        if self.opset < 11:  # Resize-10 (as Upsample): scales as input 1, asymmetric, floor
            self.resize(node, attrs, inputs[1], "asymmetric", "floor")
            return
        self.resize(
            node,
            attrs,
            inputs[2],
            _text(attrs.get("coordinate_transformation_mode", "half_pixel")),
            _text(attrs.get("nearest_mode", "round_prefer_floor")),
        )

    def _op_Upsample(self, node: Any, attrs: dict[str, Any]) -> None:
        if "scales" in attrs:  # opset 7-8: an attribute; opset 9: input 1
            scales = np.asarray(attrs["scales"], np.float32)
            name = self.fresh(f"{node.output[0]}/scales")
            self.values[name] = _Value(scales.shape, scales.dtype, const=scales)
        else:
            name = node.input[1]
        self.resize(node, attrs, name, "asymmetric", "floor")

    def resize(
        self, node: Any, attrs: dict[str, Any], scales_name: str, transform: str, rounding: str
    ) -> None:
        """Resize or Upsample of the last two axes of NCHW, sampling as ``transform`` and
        ``rounding`` (ONNX's coordinate_transformation_mode and nearest_mode) define."""
        self.float_only(node, count=1)
        value = self.values[node.input[0]]
        shape = self.info(node.output[0])[0]
        mode = _text(attrs.get("mode", "nearest"))
        axes = sorted(int(a) % 4 for a in attrs.get("axes", (2, 3)))
        if len(value.shape) != 4 or shape[:2] != value.shape[:2] or axes != [2, 3]:
            raise _Unsupported(f"Resize {node.name!r} of other axes than the last two of NCHW")
        if mode not in ("nearest", "linear"):
            raise _Unsupported(f"Resize {node.name!r} in mode {mode!r} is not supported")
        if any(d < 0 for d in (*value.shape[2:], *shape[2:])):
            raise _Unsupported(
                f"Resize {node.name!r} of an image whose size is unknown at conversion time: "
                "the sampling is checked for fixed sizes"
            )
        scales = self.values[scales_name].const if scales_name else None
        if scales is not None and scales.size == 0:
            scales = None  # opset 11-12 write an empty scales input when sizes are given
        spatial = list(zip(value.shape[2:], shape[2:], strict=True))
        if scales is not None and any(
            size * float(scale) != out
            for (size, out), scale in zip(spatial, scales.reshape(-1)[-2:], strict=True)
        ):
            # ONNX maps coordinates with the given scale, TFLite with the size ratio.
            raise _Unsupported(
                f"Resize {node.name!r} with scales that do not give whole output sizes"
            )
        if int(attrs.get("antialias", 0)) and any(out < size for size, out in spatial):
            raise _Unsupported(f"Resize {node.name!r} with antialias when downscaling")
        flags = resize_flags(transform, rounding, mode, spatial)
        if flags is None:
            raise _Unsupported(
                f"{node.op_type} {node.name!r} ({mode}, coordinate_transformation_mode="
                f"{transform}, nearest_mode={rounding}) samples other pixels than TFLite's "
                "resize can"
            )
        align_corners, half_pixel = flags
        name = node.output[0]
        op, options = (
            ("RESIZE_BILINEAR", "ResizeBilinearOptions")
            if mode == "linear"
            else ("RESIZE_NEAREST_NEIGHBOR", "ResizeNearestNeighborOptions")
        )
        source = self.physical(node.input[0], NHWC)
        out, _ = self.new(name, NHWC, nonneg=value.nonneg)
        self.writer.op(
            op,
            [source, self.writer.constant(f"{name}/size", _i32(shape[2:]))],
            [out],
            options,
            alignCorners=align_corners,
            halfPixelCenters=half_pixel,
        )

    def _op_DepthToSpace(self, node: Any, attrs: dict[str, Any]) -> None:
        value = self.values[node.input[0]]
        block = int(attrs["blocksize"])
        name = node.output[0]
        source = self.physical(node.input[0], NHWC)
        out, _ = self.new(name, NHWC, nonneg=value.nonneg)
        if _text(attrs.get("mode", "DCR")) == "DCR":  # TensorFlow's channel order
            self.writer.op(
                "DEPTH_TO_SPACE", [source], [out], "DepthToSpaceOptions", blockSize=block
            )
            return
        # CRD (PyTorch's PixelShuffle): channel c * block**2 + i * block + j goes to pixel (i, j)
        # of channel c. As NHWC: [N, H, W, C, i, j] -> [N, H, i, W, j, C], reshaped.
        n, c, h, w = value.shape
        if sum(d < 0 for d in (n, h, w)) > 1 or c < 0:
            raise _Unsupported(f"DepthToSpace {node.name!r} (CRD) with several dynamic dims")
        channels = c // block**2
        split = self.writer.tensor(f"{name}/split", [n, h, w, channels, block, block], F32)
        self.writer.op(
            "RESHAPE",
            [
                source,
                self.writer.constant(
                    f"{name}/split/shape", _i32([n, h, w, channels, block, block])
                ),
            ],
            [split],
            "ReshapeOptions",
        )
        moved = self.writer.tensor(f"{name}/moved", [n, h, block, w, block, channels], F32)
        self.writer.op(
            "TRANSPOSE",
            [split, self.writer.constant(f"{name}/moved/perm", _i32([0, 1, 4, 2, 5, 3]))],
            [moved],
            "TransposeOptions",
        )
        size = [n, -1 if h < 0 else h * block, -1 if w < 0 else w * block, channels]
        self.writer.op(
            "RESHAPE",
            [moved, self.writer.constant(f"{name}/shape", _i32(size))],
            [out],
            "ReshapeOptions",
        )

    # -- shapes ------------------------------------------------------------------------------------

    def _op_Concat(self, node: Any, attrs: dict[str, Any]) -> None:
        names = [n for n in node.input if n]
        values = [self.values[n] for n in names]
        rank = len(self.info(node.output[0])[0])
        axis = int(attrs["axis"])
        axis = axis + rank if axis < 0 else axis
        # Concatenate in the layout the tensors share (the channel axis of NHWC conv outputs).
        perms = {v.perm for v in values if v.const is None}
        perm = next(iter(perms)) if len(perms) == 1 else identity(rank)
        inputs = [self.physical(n, perm) for n in names]
        nonneg = all(
            v.nonneg or (v.const is not None and bool((v.const >= 0).all())) for v in values
        )
        out, _ = self.new(node.output[0], perm, nonneg=nonneg)
        self.writer.op(
            "CONCATENATION",
            inputs,
            [out],
            "ConcatenationOptions",
            axis=perm[axis],
            fusedActivationFunction=0,
        )

    def _op_Split(self, node: Any, attrs: dict[str, Any]) -> None:
        value = self.values[node.input[0]]
        rank = len(value.shape)
        axis = int(attrs.get("axis", 0)) % rank
        # Whatever form the sizes take (attribute, input, num_outputs), onnx's shape inference
        # has resolved them into the outputs' shapes.
        sizes = [self.info(name)[0][axis] for name in node.output]
        if any(size < 0 for size in sizes):
            raise _Unsupported(f"Split {node.name!r} along a dynamic dimension is not supported")
        source = self.physical(node.input[0], value.perm)
        outputs = [self.new(name, value.perm, nonneg=value.nonneg)[0] for name in node.output]
        name = node.output[0]
        self.writer.op(
            "SPLIT_V",
            [
                source,
                self.writer.constant(f"{name}/sizes", _i32(sizes)),
                self.writer.constant(f"{name}/axis", _i32(value.perm[axis])),
            ],
            outputs,
            "SplitVOptions",
            numSplits=len(sizes),
        )

    def _op_Slice(self, node: Any, attrs: dict[str, Any]) -> None:
        value = self.values[node.input[0]]
        rank = len(value.shape)
        if self.opset >= 10:  # starts, ends, axes and steps became inputs in opset 10
            inputs = [*node.input, "", ""]
            starts, ends = (
                [int(v) for v in self.const(n, "Slice bound").reshape(-1)] for n in inputs[1:3]
            )
            axes = list(range(len(starts)))
            if inputs[3]:
                axes = [int(a) for a in self.const(inputs[3], "Slice axes").reshape(-1)]
            steps = [1] * len(starts)
            if inputs[4]:
                steps = [int(s) for s in self.const(inputs[4], "Slice steps").reshape(-1)]
        else:
            starts, ends = [int(v) for v in attrs["starts"]], [int(v) for v in attrs["ends"]]
            axes = [int(a) for a in attrs.get("axes", range(len(starts)))]
            steps = [1] * len(starts)
        # TFLite's STRIDED_SLICE reads indices as Python does (negative from the end, clamped to
        # the axis), as ONNX's Slice does for a positive step. For a fixed size the bounds are
        # resolved here as ONNX clamps them; a negative step's "before the first element" must
        # then be the end mask: -1 means the last element to STRIDED_SLICE.
        begin, end, stride = [0] * rank, [0] * rank, [1] * rank
        begin_mask = end_mask = (1 << rank) - 1  # axes not sliced are taken whole
        for axis, start, stop, step in zip(axes, starts, ends, steps, strict=True):
            axis %= rank
            size = value.shape[axis]
            if size >= 0:
                start, stop = _onnx_slice_bounds(start, stop, step, size)
            elif step < 0:
                raise _Unsupported(
                    f"Slice {node.name!r} with a negative step along a dynamic dimension"
                )
            stored = value.perm[axis]
            bit = 1 << stored
            begin[stored], stride[stored] = _clamp_i32(start), step
            begin_mask &= ~bit
            if (step < 0 and stop < 0) or (step > 0 and stop >= _I32_MAX):
                continue  # to the end of the axis
            end[stored] = _clamp_i32(stop)
            end_mask &= ~bit
        source = self.physical(node.input[0], value.perm)
        name = node.output[0]
        out, _ = self.new(name, value.perm, nonneg=value.nonneg)
        self.writer.op(
            "STRIDED_SLICE",
            [
                source,
                self.writer.constant(f"{name}/begin", _i32(begin)),
                self.writer.constant(f"{name}/end", _i32(end)),
                self.writer.constant(f"{name}/strides", _i32(stride)),
            ],
            [out],
            "StridedSliceOptions",
            beginMask=begin_mask,
            endMask=end_mask,
        )

    def _op_Reshape(self, node: Any, attrs: dict[str, Any]) -> None:
        value = self.values[node.input[0]]
        requested = [int(d) for d in self.const(node.input[1], "Reshape shape").reshape(-1)]
        if int(attrs.get("allowzero", 0)) and 0 in requested:
            raise _Unsupported(f"Reshape {node.name!r} to an empty tensor is not supported")
        # 0 copies the input's dimension (allowzero=0); -1 is inferred.
        shape = [value.shape[i] if d == 0 else d for i, d in enumerate(requested)]
        inferred = self.info(node.output[0])[0]
        if sum(d < 0 for d in inferred) <= 1:  # [0, -1] of [N, C, H, W]: onnx knew C * H * W
            shape = list(inferred)
        if sum(d < 0 for d in shape) > 1:
            raise _Unsupported(
                f"Reshape {node.name!r} has more than one dimension unknown at conversion time"
            )
        self.reshape(node, value, shape)

    def _op_Shape(self, node: Any, attrs: dict[str, Any]) -> None:
        value = self.values[node.input[0]]
        if any(d < 0 for d in value.shape):
            raise _Unsupported(
                f"Shape {node.name!r} of tensor {node.input[0]!r} with dynamic dimensions is not "
                "supported (only static shapes become constants)"
            )
        start, end = attrs.get("start", 0), attrs.get("end")
        dims = np.asarray(value.shape, np.int64)[int(start) : None if end is None else int(end)]
        self.values[node.output[0]] = _Value(dims.shape, dims.dtype, const=dims)

    def _op_ConstantOfShape(self, node: Any, attrs: dict[str, Any]) -> None:
        raise _Unsupported(
            f"ConstantOfShape {node.name!r} has a shape computed at run time; only constant "
            "shapes are supported"
        )

    def _op_Pad(self, node: Any, attrs: dict[str, Any]) -> None:
        mode = attrs.get("mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else str(mode)
        if mode != "constant":
            raise _Unsupported(f"Pad {node.name!r} in mode {mode!r} is not supported")
        value = self.values[node.input[0]]
        rank = len(value.shape)
        if self.opset >= 11:  # pads and the fill value became inputs in opset 11
            inputs = [*node.input, "", "", ""]
            pads = [int(p) for p in self.const(inputs[1], "Pad pads").reshape(-1)]
            fill = float(self.const(inputs[2], "Pad value").reshape(())) if inputs[2] else 0.0
            axes = (
                [int(a) for a in self.const(inputs[3], "Pad axes").reshape(-1)]
                if inputs[3]
                else list(range(rank))
            )
        else:
            pads = [int(p) for p in attrs["pads"]]
            fill = float(attrs.get("value", 0.0))
            axes = list(range(rank))
        if any(p < 0 for p in pads):
            raise _Unsupported(f"Pad {node.name!r} with negative pads (cropping) is not supported")
        begin, end = [0] * rank, [0] * rank
        for index, axis in enumerate(axes):
            axis = axis + rank if axis < 0 else axis
            begin[axis], end[axis] = pads[index], pads[index + len(axes)]
        # Pad in the stored layout: the widths follow the axes to where they are stored.
        order = np.argsort(value.perm).tolist()
        widths = _i32([[begin[a], end[a]] for a in order])
        source = self.physical(node.input[0], value.perm)
        name = node.output[0]
        out, _ = self.new(name, value.perm)
        inputs = [source, self.writer.constant(f"{name}/pads", widths)]
        if fill == 0.0:
            self.writer.op("PAD", inputs, [out], "PadOptions")
        else:
            constant = np.full(1, fill, value.dtype)
            inputs.append(self.writer.constant(f"{name}/fill", constant))
            self.writer.op("PADV2", inputs, [out], "PadV2Options")

    def _op_Softmax(self, node: Any, attrs: dict[str, Any]) -> None:
        self.float_only(node)
        value = self.values[node.input[0]]
        rank = len(value.shape)
        axis = int(attrs.get("axis", -1 if self.opset >= 13 else 1))
        axis = axis + rank if axis < 0 else axis
        # Before opset 13 Softmax normalises over all axes from `axis` on (flattened); TFLite's
        # over the last stored one. They agree when at most one of those axes is not 1.
        reduced = [axis] if self.opset >= 13 else list(range(axis, rank))
        wide = [a for a in reduced if value.shape[a] != 1]
        if len(wide) > 1:
            raise _Unsupported(
                f"Softmax {node.name!r} over several axes {wide} (opset {self.opset} flattens "
                "them) is not supported"
            )
        target = wide[0] if wide else axis
        perm = value.perm
        if perm[target] != rank - 1:
            stored = [a for a in np.argsort(perm).tolist() if a != target] + [target]
            perm = tuple(int(p) for p in np.argsort(stored))
        source = self.physical(node.input[0], perm)
        out, _ = self.new(node.output[0], perm)
        self.writer.op("SOFTMAX", [source], [out], "SoftmaxOptions", beta=1.0)

    def _op_Dropout(self, node: Any, attrs: dict[str, Any]) -> None:
        inputs = [*node.input, "", ""]
        if inputs[2] and bool(self.const(inputs[2], "Dropout training_mode").reshape(())):
            raise _Unsupported(f"Dropout {node.name!r} in training mode is not supported")
        value = self.values[node.input[0]]
        self.values[node.output[0]] = value  # inference: the identity
        if len(node.output) > 1 and node.output[1] and all(d >= 0 for d in value.shape):
            mask = np.ones(value.shape, np.bool_)
            self.values[node.output[1]] = _Value(mask.shape, mask.dtype, const=mask)

    def _op_Flatten(self, node: Any, attrs: dict[str, Any]) -> None:
        value = self.values[node.input[0]]
        axis = int(attrs.get("axis", 1))
        axis = axis + len(value.shape) if axis < 0 else axis
        shape = [_product(value.shape[:axis]), _product(value.shape[axis:])]
        if shape.count(-1) > 1:
            raise _Unsupported(f"Flatten {node.name!r} has dynamic dimensions on both sides")
        self.reshape(node, value, shape)

    def reshape(self, node: Any, value: _Value, shape: list[int]) -> None:
        # Reshape and Flatten are defined on the ONNX (logical) order, so the data must be in it
        # first — unless the stored order differs only by axes of size 1 (an NHWC [N,1,1,C]), whose
        # elements already lie in logical order.
        stored = [a for a in np.argsort(value.perm).tolist() if value.shape[a] != 1]
        perm = value.perm if stored == sorted(stored) else identity(len(value.shape))
        source = self.physical(node.input[0], perm)
        out, _ = self.new(node.output[0], identity(len(shape)))
        self.writer.op(
            "RESHAPE",
            [source, self.writer.constant(f"{node.output[0]}/shape", _i32(shape))],
            [out],
            "ReshapeOptions",
            newShape=shape,
        )

    def _op_Gemm(self, node: Any, attrs: dict[str, Any]) -> None:
        if attrs.get("transA", 0):
            raise _Unsupported("Gemm with transA=1 is not supported")
        value = self.values[node.input[0]]
        weight = self.const(node.input[1], "Gemm weight").astype(np.float32)
        if not attrs.get("transB", 0):
            weight = weight.T
        alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
        if alpha != 1.0:
            weight = (weight * np.float32(alpha)).astype(np.float32)
        units = weight.shape[0]
        bias = None
        if len(node.input) > 2 and node.input[2]:
            c = self.const(node.input[2], "Gemm bias").astype(np.float32)
            if c.size not in (1, units) or (c.ndim == 2 and c.shape[0] != 1):
                raise _Unsupported(f"Gemm {node.name!r} has a bias that is not one row")
            bias = np.broadcast_to(c.reshape(-1), (units,)) * np.float32(beta)
        self.fully_connected(node, value, weight, bias, keep_dims=False)

    def _op_MatMul(self, node: Any, attrs: dict[str, Any]) -> None:
        value = self.values[node.input[0]]
        weight = self.const(node.input[1], "MatMul right-hand side")
        if weight.ndim != 2 or len(value.shape) < 2:
            raise _Unsupported(f"MatMul {node.name!r} is not (batch of) rows times a matrix")
        self.fully_connected(node, value, weight.astype(np.float32).T, None, keep_dims=True)

    def fully_connected(
        self,
        node: Any,
        value: _Value,
        weight: np.ndarray,
        bias: np.ndarray | None,
        *,
        keep_dims: bool,
    ) -> None:
        name = node.output[0]
        source = self.physical(node.input[0], identity(len(value.shape)))
        inputs = [source, self.writer.constant(f"{name}/weights", np.ascontiguousarray(weight))]
        inputs.append(-1 if bias is None else self.writer.constant(f"{name}/bias", bias))
        out, _ = self.new(name, identity(len(self.info(name)[0])))
        self.writer.op(
            "FULLY_CONNECTED",
            inputs,
            [out],
            "FullyConnectedOptions",
            fusedActivationFunction=0,
            keepNumDims=keep_dims,
        )


def _attributes(node: Any) -> dict[str, Any]:
    from onnx import helper, numpy_helper

    attrs: dict[str, Any] = {}
    for attr in node.attribute:
        value = helper.get_attribute_value(attr)
        if attr.type == attr.TENSOR:
            value = numpy_helper.to_array(value)
        attrs[attr.name] = value
    return attrs


def _erf_gelus(graph: Any) -> dict[str, tuple[str, str, set[str]]]:
    """The exact GELUs that exporters spell out with Erf (PyTorch's ``nn.GELU()`` before ONNX had
    a Gelu operator): ``Div(x, sqrt 2) -> Erf -> Add 1 -> Mul x -> Mul 0.5``, each operand in
    either order, each intermediate used only by the next node. TFLite has no Erf, but a GELU.

    Returns, by the name of the chain's first node: ``x``, the chain's output, and the names of
    the other nodes (fused into the GELU).
    """
    from onnx import numpy_helper

    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    uses: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            uses.setdefault(name, []).append(node)
    producer = {out: node for node in graph.node for out in node.output}
    outputs = {o.name for o in graph.output}

    def sole_use(name: str, op: str) -> Any:
        found = uses.get(name, [])
        if name in outputs or len(found) != 1 or found[0].op_type != op:
            return None
        return found[0]

    def is_constant(name: str, value: float) -> bool:
        constant = constants.get(name)
        return (
            constant is not None
            and constant.size == 1
            and abs(float(constant.reshape(-1)[0]) - value) <= 1e-6 * abs(value)
        )

    def other_operand(node: Any, value: float) -> str | None:
        """The operand of the commutative ``node`` whose partner is the constant ``value``."""
        a, b = node.input
        return b if is_constant(a, value) else a if is_constant(b, value) else None

    found: dict[str, tuple[str, str, set[str]]] = {}
    for erf in (n for n in graph.node if n.op_type == "Erf"):
        scale = producer.get(erf.input[0])
        if scale is None or sole_use(scale.output[0], "Erf") is None:
            continue
        if scale.op_type == "Div":
            x = scale.input[0] if is_constant(scale.input[1], math.sqrt(2)) else None
        else:
            x = other_operand(scale, math.sqrt(0.5)) if scale.op_type == "Mul" else None
        add = sole_use(erf.output[0], "Add")
        times_x = sole_use(add.output[0], "Mul") if add is not None else None
        half = sole_use(times_x.output[0], "Mul") if times_x is not None else None
        if x is None or add is None or times_x is None or half is None:
            continue
        if (
            other_operand(add, 1.0) != erf.output[0]
            or set(times_x.input) != {x, add.output[0]}
            or other_operand(half, 0.5) != times_x.output[0]
        ):
            continue
        found[scale.name] = (x, half.output[0], {erf.name, add.name, times_x.name, half.name})
    return found


def _text(value: Any) -> str:
    """A string attribute's value (onnx returns bytes)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _type_info(info: Any) -> tuple[tuple[int, ...], np.dtype[Any]] | str:
    """Shape and dtype of a value_info, or why the converter cannot write such a tensor."""
    tensor_type = info.type.tensor_type
    elem = tensor_type.elem_type
    if elem not in _ONNX_DTYPES:
        return (
            f"tensor {info.name!r} has ONNX element type {elem}; the converter writes float32, "
            "int32, int64 and bool tensors"
        )
    if not tensor_type.HasField("shape"):
        return f"onnx could not infer the rank of tensor {info.name!r}"
    dims = tuple(
        int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else -1
        for d in tensor_type.shape.dim
    )
    return dims, np.dtype(_ONNX_DTYPES[elem])


def _physical_shape(shape: Sequence[int], perm: Sequence[int]) -> list[int]:
    return [shape[a] for a in np.argsort(perm).tolist()]


def _suffix(perm: Sequence[int]) -> str:
    return "" if list(perm) == sorted(perm) else "/" + "".join(str(p) for p in perm)


def _product(dims: Sequence[int]) -> int:
    return -1 if any(d < 0 for d in dims) else math.prod(dims)


F32: Final = np.float32

#: ONNX operators that are one TFLite operator on each element, float32 in and out.
_ELEMENTWISE: Final = {
    "Abs": "ABS",
    "Ceil": "CEIL",
    "Cos": "COS",
    "Exp": "EXP",
    "Floor": "FLOOR",
    "HardSwish": "HARD_SWISH",
    "Log": "LOG",
    "Neg": "NEG",
    "Relu": "RELU",
    "Sigmoid": "LOGISTIC",
    "Sin": "SIN",
    "Sqrt": "SQRT",
    "Tanh": "TANH",
}

#: Elementwise TFLite operators whose output is never negative.
_NONNEGATIVE: Final = frozenset({"ABS", "EXP", "LOGISTIC", "RELU", "RELU6", "SQRT", "SQUARE"})


def _scalar(number: float, like: _Value) -> np.ndarray:
    """A float32 constant that broadcasts against ``like`` without raising its rank (a [1]
    operand would turn a rank-0 tensor into [1])."""
    return np.full((1,) if like.shape else (), number, F32)


def _i32(values: Any) -> np.ndarray:
    return np.asarray(values, dtype=np.int32)


_I32_MAX: Final = 2**31 - 1


def _onnx_slice_bounds(start: int, stop: int, step: int, size: int) -> tuple[int, int]:
    """ONNX Slice's start and end on an axis of ``size``: negatives count from the end, then
    clamped to [0, size] (to [0, size - 1] and [-1, size - 1] for a negative step; Python's
    slices differ there: a start before the first element selects nothing)."""
    start += size if start < 0 else 0
    stop += size if stop < 0 else 0
    if step > 0:
        return min(max(start, 0), size), min(max(stop, 0), size)
    return min(max(start, 0), size - 1), min(max(stop, -1), size - 1)


def _clamp_i32(index: int) -> int:
    """An ONNX (int64) index as an int32 one with the same meaning (INT64_MAX: the end)."""
    return max(-_I32_MAX - 1, min(index, _I32_MAX))
