"""Convert an ONNX model into a ``.tflite`` file, for the operators of plain CNNs.

This is the plugin's half of unifer's conversion (the core decides when to convert, caches the
result and checks it against the source model). It covers the operator subset of models like
unifer's built-in ArcFace IResNets and the conformance kit's toy models — Conv (including
depthwise), BatchNormalization, PRelu, Relu, Add, Mul, Flatten, Gemm, MatMul with constant weights,
Transpose and Identity — and refuses anything else with the list of what it handles. General models
need a full converter (onnx2tf, litert-torch).

The converted model keeps the ONNX model's signature: the same input and output names, shapes
(NCHW stays NCHW) and dynamic dimensions, so it is a drop-in replacement that the core can verify
on the same feeds. Inside, TFLite's kernels want NHWC: every tensor remembers how its stored
(physical) layout maps onto the ONNX (logical) one, and a TRANSPOSE is emitted only where an
operator needs another layout — once after an NCHW input, once before Flatten or an NCHW output.
Per-channel constants (BatchNormalization folded into MUL + ADD, PRelu slopes) are laid out for the
channel's physical axis instead of transposing activations. All arithmetic stays float32: weights
are only rearranged, and a BatchNormalization's scale and shift are computed in float64 once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from unifer import MissingDependencyError, ModelLoadError

from ._writer import ModelWriter

#: Bump whenever the bytes written for the same ONNX file change: it is part of the cache key.
WRITER_VERSION: Final = "1"
CONVERTER: Final = f"unifer-litert onnx->tflite {WRITER_VERSION}"

SUPPORTED_OPS: Final = (
    "Add",
    "BatchNormalization",
    "Constant",
    "Conv",
    "Flatten",
    "Gemm",
    "Identity",
    "MatMul",
    "Mul",
    "PRelu",
    "Relu",
    "Transpose",
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
            f"cannot convert {source} to TFLite: {exc}. unifer's converter handles plain CNNs "
            f"({', '.join(SUPPORTED_OPS)}); convert other models with onnx2tf or litert-torch and "
            "load the .tflite file they write"
        ) from exc
    destination.write_bytes(data)
    return destination


class _Converter:
    def __init__(self, model: Any) -> None:
        from onnx import numpy_helper

        self.graph = model.graph
        self.numpy_helper = numpy_helper
        for opset in model.opset_import:
            if opset.domain not in ("", "ai.onnx"):
                raise _Unsupported(f"operators of domain {opset.domain!r} are not supported")
        self.writer = ModelWriter(f"Converted from ONNX by {CONVERTER}")
        self.writer.metadata("unifer_converter", CONVERTER.encode())
        self.values: dict[str, _Value] = {}
        self.infos: dict[str, tuple[tuple[int, ...], np.dtype[Any]]] = {}
        self.layouts: dict[tuple[str, tuple[int, ...]], int] = {}
        for info in (*self.graph.input, *self.graph.value_info, *self.graph.output):
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
            shape, dtype = self.infos[info.name]
            tensor = self.writer.tensor(info.name, shape, dtype)
            self.values[info.name] = _Value(shape, dtype, tensor, identity(len(shape)))
            inputs[info.name] = tensor
        for node in self.graph.node:
            handler = getattr(self, f"_op_{node.op_type}", None)
            if handler is None or node.domain not in ("", "ai.onnx"):
                raise _Unsupported(f"operator {node.op_type} (node {node.name!r}) is not supported")
            handler(node, _attributes(node))
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
        return self.infos[name]

    def new(self, name: str, perm: tuple[int, ...]) -> tuple[int, _Value]:
        """A fresh TFLite tensor for the ONNX output ``name``, stored with ``perm``."""
        shape, dtype = self.info(name)
        tensor = self.writer.tensor(name, _physical_shape(shape, perm), dtype)
        value = _Value(shape, dtype, tensor, perm)
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

    def broadcast_const(self, name: str, array: np.ndarray, like: _Value) -> int:
        """``array`` (logical, broadcasting against ``like``) written in ``like``'s layout."""
        rank = len(like.shape)
        if array.ndim > rank:
            raise _Unsupported(f"constant {name!r} has more dimensions than the tensor it joins")
        aligned = array.reshape((1,) * (rank - array.ndim) + array.shape)
        stored = aligned.transpose(np.argsort(like.perm).tolist())
        while stored.ndim > 1 and stored.shape[0] == 1:
            stored = stored[0]  # leading 1s broadcast anyway; keep the constant compact
        return self.writer.constant(name, np.ascontiguousarray(stored.astype(like.dtype)))

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

    def _op_Constant(self, node: Any, attrs: dict[str, Any]) -> None:
        if "value" not in attrs:
            raise _Unsupported("Constant is supported only with a 'value' tensor")
        array = attrs["value"]
        self.values[node.output[0]] = _Value(array.shape, array.dtype, const=array)

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
        self.values[node.output[0]] = _Value(shape, value.dtype, value.tensor, perm)

    def _op_Relu(self, node: Any, attrs: dict[str, Any]) -> None:
        value = self.values[node.input[0]]
        source = self.physical(node.input[0], value.perm)
        out, _ = self.new(node.output[0], value.perm)
        self.writer.op("RELU", [source], [out])

    def _op_Add(self, node: Any, attrs: dict[str, Any]) -> None:
        self.binary(node, "ADD", "AddOptions", np.add)

    def _op_Mul(self, node: Any, attrs: dict[str, Any]) -> None:
        self.binary(node, "MUL", "MulOptions", np.multiply)

    def binary(self, node: Any, op: str, options: str, fold: Any) -> None:
        a, b = (self.values[n] for n in node.input)
        if a.const is not None and b.const is not None:
            result = np.asarray(fold(a.const, b.const)).astype(a.dtype)
            self.values[node.output[0]] = _Value(result.shape, result.dtype, const=result)
            return
        rank = len(self.info(node.output[0])[0])
        variables = [v for v in (a, b) if v.const is None and len(v.shape) == rank]
        if len(variables) == 2 - sum(v.const is not None for v in (a, b)):
            # Every operand is a constant or a tensor of the output's rank: compute in the layout
            # a tensor already has (a conv's NHWC output, say) instead of transposing it back.
            perm = next((v.perm for v in variables if v.perm != identity(rank)), identity(rank))
        else:
            perm = identity(rank)  # mixed ranks: broadcast in ONNX order, as ONNX defines it
        like = _Value((0,) * rank, a.dtype if a.const is None else b.dtype, perm=perm)
        inputs = []
        for name, value in zip(node.input, (a, b), strict=True):
            if value.const is not None:
                inputs.append(self.broadcast_const(f"{node.output[0]}/{name}", value.const, like))
            elif len(value.shape) == rank:
                inputs.append(self.physical(name, perm))
            else:
                inputs.append(self.physical(name, identity(len(value.shape))))
        out, _ = self.new(node.output[0], perm)
        self.writer.op(op, inputs, [out], options, fusedActivationFunction=0)

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
        scaled = self.writer.tensor(
            f"{name}/scaled", _physical_shape(value.shape, value.perm), value.dtype
        )
        self.writer.op("MUL", [source, mul], [scaled], "MulOptions", fusedActivationFunction=0)
        out, _ = self.new(name, value.perm)
        self.writer.op("ADD", [scaled, add], [out], "AddOptions", fusedActivationFunction=0)

    def _op_Conv(self, node: Any, attrs: dict[str, Any]) -> None:
        value = self.values[node.input[0]]
        weight = self.const(node.input[1], "Conv weight").astype(np.float32)
        if len(value.shape) != 4 or weight.ndim != 4:
            raise _Unsupported(f"Conv {node.name!r} is not a 2-D convolution")
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
        if group == 1:
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
        elif group == cin and cin_per_group == 1 and cout % cin == 0:
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
            raise _Unsupported(f"grouped Conv {node.name!r} (group={group}) is not supported")

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
            raise _Unsupported(f"Conv auto_pad={auto} is not supported")
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

    def pad(self, node: Any, source: int, value: _Value, pads: list[int]) -> int:
        """An explicit PAD (NHWC) for ONNX pads that TFLite's SAME does not reproduce."""
        n, c, h, w = value.shape
        top, left, bottom, right = pads
        shape = [n, h + top + bottom if h >= 0 else -1, w + left + right if w >= 0 else -1, c]
        padded = self.writer.tensor(f"{node.output[0]}/padded", shape, value.dtype)
        widths = _i32([[0, 0], [top, bottom], [left, right], [0, 0]])
        self.writer.op(
            "PAD",
            [source, self.writer.constant(f"{node.output[0]}/pads", widths)],
            [padded],
            "PadOptions",
        )
        return padded

    def _op_Flatten(self, node: Any, attrs: dict[str, Any]) -> None:
        value = self.values[node.input[0]]
        axis = int(attrs.get("axis", 1))
        axis = axis + len(value.shape) if axis < 0 else axis
        shape = [_product(value.shape[:axis]), _product(value.shape[axis:])]
        if shape.count(-1) > 1:
            raise _Unsupported(f"Flatten {node.name!r} has dynamic dimensions on both sides")
        self.reshape(node, value, shape)

    def reshape(self, node: Any, value: _Value, shape: list[int]) -> None:
        # Flatten is defined on the ONNX (logical) order, so the data must be in it first.
        source = self.physical(node.input[0], identity(len(value.shape)))
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


def _type_info(info: Any) -> tuple[tuple[int, ...], np.dtype[Any]]:
    tensor_type = info.type.tensor_type
    elem = tensor_type.elem_type
    if elem not in _ONNX_DTYPES:
        raise _Unsupported(
            f"tensor {info.name!r} has ONNX element type {elem}; the converter writes float32, "
            "int32, int64 and bool tensors"
        )
    if not tensor_type.HasField("shape"):
        raise _Unsupported(f"onnx could not infer the rank of tensor {info.name!r}")
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


def _i32(values: Any) -> np.ndarray:
    return np.asarray(values, dtype=np.int32)
