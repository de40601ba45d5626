"""The converter's model of the graph being written: ONNX values and their TFLite tensors.

Every ONNX tensor becomes a :class:`Value`: its logical (ONNX) shape, and the TFLite tensor that
holds it stored with a permutation (``logical = physical.transpose(perm)``), so that operators can
work in the layout their kernels want (NHWC) and a TRANSPOSE is written only where a layout must
change. :class:`Graph` holds the values, the writer and the helpers that every operator module
(``_ops_*``) uses; ``_convert._Converter`` combines those modules and drives the conversion.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from ._flatbuf import DIM_NAMES_KEY
from ._writer import ModelWriter

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

F32: Final = np.float32

#: Elementwise TFLite operators whose output is never negative.
NONNEGATIVE: Final = frozenset({"ABS", "EXP", "LOGISTIC", "RELU", "RELU6", "SQRT", "SQUARE"})


class Unsupported(Exception):
    """The model uses something this converter does not handle; the message says what."""


@dataclass(frozen=True, slots=True)
class Value:
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


class Graph:
    """The values of the ONNX graph converted so far, the writer, and the tensor helpers."""

    def __init__(self, model: Any, converter: str) -> None:
        """``model``: the ONNX ModelProto (shapes inferred); ``converter``: what the file records
        as its writer."""
        from onnx import numpy_helper

        self.graph = model.graph
        self.numpy_helper = numpy_helper
        # Other domains an exporter lists (PyTorch's lists its onnxscript function libraries) are
        # harmless until a node uses one: run() refuses such nodes by name.
        self.opset = next(
            (int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), 1
        )
        self.writer = ModelWriter(f"Converted from ONNX by {converter}")
        self.writer.metadata("unifer_converter", converter.encode())
        # TFLite records a dynamic dimension as -1, without its ONNX name: kept here, so the
        # session can name it as onnxruntime does (and `unifer bench --dim NAME=...` reach it).
        names = {
            info.name: [d.dim_param or None for d in info.type.tensor_type.shape.dim]
            for info in (*self.graph.input, *self.graph.output)
        }
        self.writer.metadata(DIM_NAMES_KEY, json.dumps(names).encode())
        self.values: dict[str, Value] = {}
        self.infos: dict[str, tuple[tuple[int, ...], np.dtype[Any]] | str] = {}
        self.layouts: dict[tuple[str, tuple[int, ...]], int] = {}
        for info in (*self.graph.input, *self.graph.value_info, *self.graph.output):
            # Unsupported types are an error only where a tensor of that type must be written:
            # a folded weight subgraph may pass through other types on its way to a constant.
            self.infos[info.name] = type_info(info)

    def info(self, name: str) -> tuple[tuple[int, ...], np.dtype[Any]]:
        if name not in self.infos:
            raise Unsupported(f"onnx could not infer the shape of tensor {name!r}")
        info = self.infos[name]
        if isinstance(info, str):
            raise Unsupported(info)
        return info

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

        if node.op_type == "DequantizeLinear":  # the reference has it from opset 19 on only
            self.values[node.output[0]] = _dequantized(node, self.values)
            return
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
            raise Unsupported(
                f"could not evaluate the constant node {node.name!r} ({node.op_type}): "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        for name, result in zip(node.output, results, strict=True):
            if name:
                array = np.asarray(result)
                self.values[name] = Value(array.shape, array.dtype, const=array)

    def new(self, name: str, perm: tuple[int, ...], *, nonneg: bool = False) -> tuple[int, Value]:
        """A fresh TFLite tensor for the ONNX output ``name``, stored with ``perm``."""
        shape, dtype = self.info(name)
        tensor = self.writer.tensor(name, physical_shape(shape, perm), dtype)
        value = Value(shape, dtype, tensor, perm, nonneg=nonneg)
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
            tensor = self.writer.constant(f"{name}{suffix(perm)}", value.const.transpose(order))
        elif value.tensor is None:  # every value that is not a constant has a tensor
            raise Unsupported(f"tensor {name!r} has no value")
        elif value.perm == perm:
            tensor = value.tensor
        else:
            moves = [value.perm[a] for a in order]
            tensor = self.writer.tensor(
                f"{name}{suffix(perm)}", physical_shape(value.shape, perm), value.dtype
            )
            self.writer.op(
                "TRANSPOSE",
                [value.tensor, self.writer.constant(f"{name}{suffix(perm)}/perm", i32(moves))],
                [tensor],
                "TransposeOptions",
            )
        self.layouts[key] = tensor
        return tensor

    def broadcast_const(self, name: str, array: np.ndarray, like: Value, *, keep: int = 1) -> int:
        """``array`` (logical, broadcasting against ``like``) written in ``like``'s layout.

        Leading 1s are dropped down to rank ``keep``: they broadcast anyway where another operand
        has ``like``'s rank, but where none has, they are what gives the result that rank.
        """
        rank = len(like.shape)
        if array.ndim > rank:
            raise Unsupported(f"constant {name!r} has more dimensions than the tensor it joins")
        aligned = array.reshape((1,) * (rank - array.ndim) + array.shape)
        stored = aligned.transpose(np.argsort(like.perm).tolist())
        while stored.ndim > keep and stored.shape[0] == 1:
            stored = stored[0]  # keep the constant compact
        return self.writer.constant(name, np.ascontiguousarray(stored.astype(like.dtype)))

    def scratch(self, name: str, value: Value, shape: Sequence[int] | None = None) -> int:
        """An intermediate tensor stored like ``value`` (with logical ``shape`` if another)."""
        logical = value.shape if shape is None else shape
        return self.writer.tensor(name, physical_shape(logical, value.perm), value.dtype)

    def fresh(self, name: str) -> str:
        """``name``, made unique among the graph's tensor names (for values the converter adds)."""
        while name in self.values or name in self.infos:
            name += "'"
        return name

    def copy(self, tensor: int, name: str, value: Value) -> int:
        """A copy of ``tensor`` (a graph input reused as an output needs its own tensor)."""
        shape = list(value.shape)
        if sum(d < 0 for d in shape) > 1:
            raise Unsupported(
                f"output {name!r} repeats another tensor and has several dynamic dims"
            )
        out = self.writer.tensor(f"{name}/copy", shape, value.dtype)
        self.writer.op(
            "RESHAPE",
            [tensor, self.writer.constant(f"{name}/shape", i32(shape))],
            [out],
            "ReshapeOptions",
            newShape=shape,
        )
        return out

    def const(self, name: str, role: str) -> np.ndarray:
        value = self.values[name]
        if value.const is None:
            raise Unsupported(f"the {role} {name!r} must be a constant (an initializer)")
        return value.const

    def float_only(self, node: Any, count: int | None = None) -> None:
        """Refuse ``node`` unless its (first ``count``) inputs are float32."""
        for name in node.input[:count]:
            if name and self.values[name].dtype != np.float32:
                raise Unsupported(
                    f"{node.op_type} {node.name!r} on {self.values[name].dtype} tensors is not "
                    "supported (float32 only)"
                )

    def unary(self, node: Any, op: str, options: str | None = None, **fields: object) -> None:
        """An elementwise operator: computed in whatever layout its input is stored in."""
        self.float_only(node)
        value = self.values[node.input[0]]
        source = self.physical(node.input[0], value.perm)
        out, _ = self.new(node.output[0], value.perm, nonneg=op in NONNEGATIVE)
        self.writer.op(op, [source], [out], options, **fields)

    def binary(
        self, names: Sequence[str], output: str, op: str, options: str, *, fused: bool = True
    ) -> None:
        """``output = a op b`` with ONNX broadcasting; ``fused``: the options take an activation.

        Any number of operands broadcast alike (SELECT_V2 takes three); a boolean operand (a
        condition) keeps its type, the others share the first tensor's.
        """
        operands = [self.values[n] for n in names]
        rank = len(self.info(output)[0])
        variables = [v for v in operands if v.const is None and len(v.shape) == rank]
        if len(variables) == sum(v.const is None for v in operands):
            # Every operand is a constant or a tensor of the output's rank: compute in the layout
            # a tensor already has (a conv's NHWC output, say) instead of transposing it back.
            perm = next((v.perm for v in variables if v.perm != identity(rank)), identity(rank))
        else:
            perm = identity(rank)  # mixed ranks: broadcast in ONNX order, as ONNX defines it
        typed = [v for v in operands if v.dtype != np.bool_] or operands
        dtype = next((v.dtype for v in typed if v.const is None), typed[0].dtype)
        # The result has the rank of the widest operand, in TFLite as in ONNX: where no tensor has
        # the output's rank, the constant's leading 1s are what give the result that rank.
        keep = 1 if variables else rank
        inputs = []
        for name, value in zip(names, operands, strict=True):
            if value.const is not None:
                kind = value.dtype if value.dtype == np.bool_ else dtype
                like = Value((0,) * rank, kind, perm=perm)
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

    def stored_last(self, value: Value, axis: int) -> tuple[int, ...]:
        """``value``'s layout, or one with logical ``axis`` stored last (for kernels that work on
        the last axis only: Softmax, TopK)."""
        perm = value.perm
        if perm[axis] == len(perm) - 1:
            return perm
        stored = [a for a in np.argsort(perm).tolist() if a != axis] + [axis]
        return tuple(int(p) for p in np.argsort(stored))

    def reshape(self, node: Any, value: Value, shape: list[int]) -> None:
        # Reshape and Flatten are defined on the ONNX (logical) order, so the data must be in it
        # first — unless the stored order differs only by axes of size 1 (an NHWC [N,1,1,C]), whose
        # elements already lie in logical order.
        stored = [a for a in np.argsort(value.perm).tolist() if value.shape[a] != 1]
        perm = value.perm if stored == sorted(stored) else identity(len(value.shape))
        source = self.physical(node.input[0], perm)
        out, _ = self.new(node.output[0], identity(len(shape)))
        self.writer.op(
            "RESHAPE",
            [source, self.writer.constant(f"{node.output[0]}/shape", i32(shape))],
            [out],
            "ReshapeOptions",
            newShape=shape,
        )

    def reshape_to(self, source: str, target: str, shape: list[int]) -> None:
        """``target = reshape(source, shape)`` for tensors the converter adds (one dim may be
        unknown: -1)."""
        from onnx import helper

        node = helper.make_node("Reshape", [source, ""], [target], name=target)
        self.reshape(node, self.values[source], shape)

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
            out = self.writer.tensor(f"{name}/{op.lower()}", physical_shape(shape, perm), F32)
        self.writer.op(
            op,
            [source, self.writer.constant(f"{name}/axes", i32(stored_axes))],
            [out],
            "ReducerOptions",
            keepDims=keep,
        )
        if after is not None:
            final, _ = self.new(name, perm, nonneg=True)  # SQRT of a sum of squares
            self.writer.op(after, [out], [final])


def _dequantized(node: Any, values: dict[str, Value]) -> Value:
    """A constant DequantizeLinear (int8 weights of a compressed model): ``(x - zero) * scale``,
    the scale and zero point per tensor or along ``axis``, as ONNX defines it."""
    # foldable(): every input is a constant.
    x, scale, *rest = (np.asarray(values[n].const) for n in node.input if n)
    zero = rest[0] if rest else None
    attrs = attributes(node)
    if int(attrs.get("block_size", 0)):
        raise Unsupported(f"DequantizeLinear {node.name!r} with block_size (blocked scales)")
    shifted = x.astype(np.float64) - (0.0 if zero is None else zero.astype(np.float64))
    if scale.ndim == 1 and scale.size > 1:  # per axis
        axis = int(attrs.get("axis", 1)) % x.ndim
        scale = scale.reshape([-1 if a == axis else 1 for a in range(x.ndim)])
    result = (shifted * scale.astype(np.float64)).astype(scale.dtype)
    return Value(result.shape, result.dtype, const=result)


def attributes(node: Any) -> dict[str, Any]:
    """``node``'s attributes by name: tensors as numpy arrays, strings as ``str`` (onnx gives
    bytes)."""
    from onnx import helper, numpy_helper

    attrs: dict[str, Any] = {}
    for attr in node.attribute:
        value = helper.get_attribute_value(attr)
        if attr.type == attr.TENSOR:
            value = numpy_helper.to_array(value)
        elif attr.type == attr.STRING:
            value = value.decode()
        elif attr.type == attr.STRINGS:
            value = [v.decode() for v in value]
        attrs[attr.name] = value
    return attrs


def type_info(info: Any) -> tuple[tuple[int, ...], np.dtype[Any]] | str:
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


def physical_shape(shape: Sequence[int], perm: Sequence[int]) -> list[int]:
    return [shape[a] for a in np.argsort(perm).tolist()]


def suffix(perm: Sequence[int]) -> str:
    return "" if list(perm) == sorted(perm) else "/" + "".join(str(p) for p in perm)


def product(dims: Sequence[int]) -> int:
    return -1 if any(d < 0 for d in dims) else math.prod(dims)


def scalar(number: float, like: Value) -> np.ndarray:
    """A float32 constant that broadcasts against ``like`` without raising its rank (a [1]
    operand would turn a rank-0 tensor into [1])."""
    return np.full((1,) if like.shape else (), number, F32)


def i32(values: Any) -> np.ndarray:
    return np.asarray(values, dtype=np.int32)
