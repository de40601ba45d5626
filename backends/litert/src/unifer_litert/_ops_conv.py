"""Convolutions (1-D, 2-D, grouped, depthwise, transposed), normalizations, pooling and fully
connected layers: the operators that want NHWC, where TFLite's padding rules must be matched to
ONNX's pads exactly or the node refused.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._graph import (
    F32,
    NHWC,
    Graph,
    Unsupported,
    Value,
    i32,
    identity,
    scalar,
)


class ConvolutionOps(Graph):
    """Convolutions, normalizations, pooling, Gemm and MatMul."""

    def _op_BatchNormalization(self, node: Any, attrs: dict[str, Any]) -> None:
        if attrs.get("training_mode", 0) or len(node.output) > 1:
            raise Unsupported("BatchNormalization in training mode is not supported")
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
            raise Unsupported(f"LayerNormalization {node.name!r} with Mean/InvStdDev outputs")
        rank = len(self.values[node.input[0]].shape)
        axis = int(attrs.get("axis", -1)) % rank
        self.normalize(node, list(range(axis, rank)), float(attrs.get("epsilon", 1e-5)), None)

    def _op_InstanceNormalization(self, node: Any, attrs: dict[str, Any]) -> None:
        rank = len(self.values[node.input[0]].shape)
        if rank < 3:
            raise Unsupported(f"InstanceNormalization {node.name!r} needs spatial axes")
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
        stored_axes = self.writer.constant(f"{name}/axes", i32(sorted(value.perm[a] for a in axes)))

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
        eps = self.writer.constant(f"{name}/epsilon", scalar(epsilon, value))
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
            raise Unsupported(f"Conv {node.name!r} is not a 1-D or 2-D convolution")
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
            op, options, order = "DEPTHWISE_CONV_2D", "DepthwiseConv2DOptions", (1, 2, 3, 0)
            fields = {"depthMultiplier": cout // cin}
        else:  # TFLite's CONV_2D groups by itself when its filter holds fewer input channels
            op, options, order, fields = "CONV_2D", "Conv2DOptions", (0, 2, 3, 1), {}
        self.writer.op(
            op,
            [
                source,
                self.writer.constant(f"{name}/filter", weight.transpose(order)),
                self.writer.constant(f"{name}/bias", bias),
            ],
            [out],
            options,
            padding=padding,
            strideH=strides[0],
            strideW=strides[1],
            dilationHFactor=dilations[0],
            dilationWFactor=dilations[1],
            fusedActivationFunction=0,
            **fields,
        )

    def _op_ConvTranspose(self, node: Any, attrs: dict[str, Any]) -> None:
        value = self.values[node.input[0]]
        weight = self.const(node.input[1], "ConvTranspose weight").astype(np.float32)
        shape = self.info(node.output[0])[0]
        if len(value.shape) != 4 or weight.ndim != 4:
            raise Unsupported(f"ConvTranspose {node.name!r} is not a 2-D convolution")
        if int(attrs.get("group", 1)) != 1 or any(int(d) != 1 for d in attrs.get("dilations", ())):
            raise Unsupported(
                f"ConvTranspose {node.name!r} with groups or dilations is not supported"
            )
        if attrs.get("auto_pad", "NOTSET") != "NOTSET" or "output_shape" in attrs:
            raise Unsupported(
                f"ConvTranspose {node.name!r} with auto_pad or output_shape is not supported"
            )
        if any(d < 0 for d in (*value.shape[1:], *shape[1:])):
            raise Unsupported(
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
                    self.writer.constant(f"{name}/begin", i32([0, top, left, 0])),
                    self.writer.constant(f"{name}/size", i32([-1, height, width, cout])),
                ],
                [out],
                "SliceOptions",
            )

    def output_shape(self, node: Any, shape: Sequence[int]) -> int:
        """TRANSPOSE_CONV's output-shape input: a constant, or built at run time from the
        input's batch size when that is dynamic."""
        name = node.output[0]
        if shape[0] >= 0:
            return self.writer.constant(f"{name}/output_shape", i32(shape))
        dims = self.writer.tensor(f"{name}/input_shape", [4], np.int32)
        self.writer.op(
            "SHAPE", [self.physical(node.input[0], NHWC)], [dims], "ShapeOptions", outType=2
        )
        batch = self.writer.tensor(f"{name}/batch", [1], np.int32)
        self.writer.op(
            "SLICE",
            [
                dims,
                self.writer.constant(f"{name}/at0", i32([0])),
                self.writer.constant(f"{name}/one", i32([1])),
            ],
            [batch],
            "SliceOptions",
        )
        result = self.writer.tensor(f"{name}/output_shape", [4], np.int32)
        self.writer.op(
            "CONCATENATION",
            [batch, self.writer.constant(f"{name}/output_shape/rest", i32(shape[1:]))],
            [result],
            "ConcatenationOptions",
            axis=0,
            fusedActivationFunction=0,
        )
        return result

    def conv1d(self, node: Any, attrs: dict[str, Any], value: Value, weight: np.ndarray) -> None:
        """A 1-D convolution as the 2-D one of a one-row image: [N, C, L] viewed as [N, C, 1, L],
        the kernel as 1 x K, then viewed back."""
        from onnx import helper

        n, _, length = value.shape
        if sum(d < 0 for d in value.shape) > 1:
            raise Unsupported(f"Conv {node.name!r} (1-D) with several dynamic dimensions")
        out_shape = self.info(node.output[0])[0]
        row, kernel, row_out = (
            self.fresh(f"{node.output[0]}/{label}") for label in ("row", "kernel", "row_out")
        )
        self.infos[row] = ((n, value.shape[1], 1, length), value.dtype)
        self.reshape_to(node.input[0], row, [n, value.shape[1], 1, length])
        kernel_2d = weight[:, :, np.newaxis, :]
        self.values[kernel] = Value(kernel_2d.shape, kernel_2d.dtype, const=kernel_2d)
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

    def conv_padding(
        self,
        node: Any,
        attrs: dict[str, Any],
        value: Value,
        kernel: tuple[int, int],
        strides: Sequence[int],
        dilations: Sequence[int],
    ) -> tuple[int, list[int] | None]:
        """TFLite padding (SAME=0, VALID=1) and, when neither matches ONNX's, explicit pads."""
        auto = attrs.get("auto_pad", "NOTSET")
        if auto == "VALID":
            return 1, None
        if auto == "SAME_UPPER":
            return 0, None  # TensorFlow's SAME puts the odd pixel at the end, like SAME_UPPER
        if auto != "NOTSET":
            raise Unsupported(f"{node.op_type} auto_pad={auto} is not supported")
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

    def pad(self, node: Any, source: int, value: Value, pads: list[int], fill: float = 0.0) -> int:
        """An explicit PAD (NHWC) for ONNX pads that TFLite's SAME does not reproduce."""
        n, c, h, w = value.shape
        top, left, bottom, right = pads
        shape = [n, h + top + bottom if h >= 0 else -1, w + left + right if w >= 0 else -1, c]
        padded = self.writer.tensor(f"{node.output[0]}/padded", shape, value.dtype)
        widths = i32([[0, 0], [top, bottom], [left, right], [0, 0]])
        inputs = [source, self.writer.constant(f"{node.output[0]}/pads", widths)]
        if fill == 0.0:
            self.writer.op("PAD", inputs, [padded], "PadOptions")
        else:
            inputs.append(self.writer.constant(f"{node.output[0]}/fill", np.full(1, fill, F32)))
            self.writer.op("PADV2", inputs, [padded], "PadV2Options")
        return padded

    def _op_MaxPool(self, node: Any, attrs: dict[str, Any]) -> None:
        self.pool(node, attrs, "MAX_POOL_2D")

    def _op_AveragePool(self, node: Any, attrs: dict[str, Any]) -> None:
        self.pool(node, attrs, "AVERAGE_POOL_2D")

    def pool(self, node: Any, attrs: dict[str, Any], op: str) -> None:
        self.float_only(node)
        value = self.values[node.input[0]]
        if len(value.shape) != 4:
            raise Unsupported(f"{node.op_type} {node.name!r} is not a 2-D pooling")
        if len(node.output) > 1 and node.output[1]:
            raise Unsupported(f"{node.op_type} {node.name!r} with an Indices output")
        kh, kw = (int(k) for k in attrs["kernel_shape"])
        kernel = (kh, kw)
        strides = [int(s) for s in attrs.get("strides", (1, 1))]
        if any(int(d) != 1 for d in attrs.get("dilations", (1, 1))):
            raise Unsupported(f"{node.op_type} {node.name!r} with dilations is not supported")
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
            if attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
                raise Unsupported(
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
            raise Unsupported(
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
        value: Value,
        kernel: tuple[int, ...],
        strides: Sequence[int],
    ) -> None:
        """ceil_mode is exact only where it gives the floor-mode size (TFLite rounds down)."""
        if not int(attrs.get("ceil_mode", 0)):
            return
        if attrs.get("auto_pad", "NOTSET") != "NOTSET":
            return  # auto_pad fixes the size without ceil_mode's rounding
        pads = [int(p) for p in attrs.get("pads", (0, 0, 0, 0))]
        for axis in range(2):
            size = value.shape[2 + axis]
            span = size + pads[axis] + pads[axis + 2] - kernel[axis]
            if size < 0 or span % strides[axis]:
                raise Unsupported(
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
            raise Unsupported(f"{node.op_type} {node.name!r} needs a tensor with spatial axes")
        self.reduction(node, op, list(range(2, rank)), keep=True)

    def _op_Gemm(self, node: Any, attrs: dict[str, Any]) -> None:
        if attrs.get("transA", 0):
            raise Unsupported("Gemm with transA=1 is not supported")
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
                raise Unsupported(f"Gemm {node.name!r} has a bias that is not one row")
            bias = np.broadcast_to(c.reshape(-1), (units,)) * np.float32(beta)
        self.fully_connected(node, value, weight, bias, keep_dims=False)

    def _op_MatMul(self, node: Any, attrs: dict[str, Any]) -> None:
        self.float_only(node)
        value, right = (self.values[n] for n in node.input)
        if len(value.shape) < 2 or len(right.shape) < 2:
            raise Unsupported(f"MatMul {node.name!r} of a vector (rank 1) is not supported")
        if value.const is None and right.const is not None and right.const.ndim == 2:
            # Rows times a weight matrix: the fully connected kernel (and XNNPACK's) is fastest.
            weight = right.const.astype(np.float32).T
            self.fully_connected(node, value, weight, None, keep_dims=True)
            return
        # Attention (Q @ K^T, weights @ V) and batched products: ONNX broadcasts the leading
        # axes as BATCH_MATMUL does. An operand stored with its last two axes swapped (a
        # Transpose of K) is read as it is, with adj_x / adj_y, instead of being transposed.
        inputs, adjoint = [], []
        for name, operand in zip(node.input, (value, right), strict=True):
            rank = len(operand.shape)
            swapped = (*range(rank - 2), rank - 1, rank - 2)
            adjoint.append(operand.const is None and operand.perm == swapped)
            inputs.append(self.physical(name, swapped if adjoint[-1] else identity(rank)))
        out, _ = self.new(node.output[0], identity(len(self.info(node.output[0])[0])))
        self.writer.op(
            "BATCH_MATMUL",
            inputs,
            [out],
            "BatchMatMulOptions",
            adjX=adjoint[0],
            adjY=adjoint[1],
        )

    def fully_connected(
        self,
        node: Any,
        value: Value,
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
