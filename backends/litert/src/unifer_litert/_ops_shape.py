"""Operators that move, select or reduce data: reductions, Resize and DepthToSpace, Concat,
Split, Slice, Reshape, Pad, Softmax. Each works on a tensor where it is stored (the axes follow the
stored layout) unless its ONNX definition depends on the logical order (Reshape, Flatten).
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np

from ._graph import (
    F32,
    NHWC,
    Graph,
    Unsupported,
    Value,
    i32,
    identity,
    product,
)
from ._resample import resize_flags


class ShapeOps(Graph):
    """Reductions, resampling, and the operators of shapes and layouts."""

    def _op_Identity(self, node: Any, attrs: dict[str, Any]) -> None:
        self.values[node.output[0]] = self.values[node.input[0]]

    def _op_Transpose(self, node: Any, attrs: dict[str, Any]) -> None:
        value = self.values[node.input[0]]
        rank = len(value.shape)
        order = [int(p) for p in attrs.get("perm", reversed(range(rank)))]
        shape = tuple(value.shape[p] for p in order)
        if value.const is not None:
            transposed = value.const.transpose(order)
            self.values[node.output[0]] = Value(shape, value.dtype, const=transposed)
            return
        # No data moves: the output is the same stored tensor, read through one more permutation.
        perm = tuple(value.perm[p] for p in order)
        self.values[node.output[0]] = Value(
            shape, value.dtype, value.tensor, perm, nonneg=value.nonneg
        )

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
                raise Unsupported(f"{node.op_type} {node.name!r} with noop_with_empty_axes=1")
            self.values[node.output[0]] = self.values[node.input[0]]
            return
        axes = sorted({a % rank for a in axes} if axes else set(range(rank)))
        keep = bool(int(attrs.get("keepdims", 1)))
        self.reduction(node, op, axes, keep=keep, before=before, after=after)

    def _op_Resize(self, node: Any, attrs: dict[str, Any]) -> None:
        inputs = [*node.input, "", "", ""]
        if self.opset < 11:  # Resize-10 (as Upsample): scales as input 1, asymmetric, floor
            self.resize(node, attrs, inputs[1], "asymmetric", "floor")
            return
        self.resize(
            node,
            attrs,
            inputs[2],
            attrs.get("coordinate_transformation_mode", "half_pixel"),
            attrs.get("nearest_mode", "round_prefer_floor"),
        )

    def _op_Upsample(self, node: Any, attrs: dict[str, Any]) -> None:
        if "scales" in attrs:  # opset 7-8: an attribute; opset 9: input 1
            scales = np.asarray(attrs["scales"], np.float32)
            name = self.fresh(f"{node.output[0]}/scales")
            self.values[name] = Value(scales.shape, scales.dtype, const=scales)
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
        mode = attrs.get("mode", "nearest")
        axes = sorted(int(a) % 4 for a in attrs.get("axes", (2, 3)))
        if len(value.shape) != 4 or shape[:2] != value.shape[:2] or axes != [2, 3]:
            raise Unsupported(f"Resize {node.name!r} of other axes than the last two of NCHW")
        if mode not in ("nearest", "linear"):
            raise Unsupported(f"Resize {node.name!r} in mode {mode!r} is not supported")
        if any(d < 0 for d in (*value.shape[2:], *shape[2:])):
            raise Unsupported(
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
            raise Unsupported(
                f"Resize {node.name!r} with scales that do not give whole output sizes"
            )
        if int(attrs.get("antialias", 0)) and any(out < size for size, out in spatial):
            raise Unsupported(f"Resize {node.name!r} with antialias when downscaling")
        flags = resize_flags(transform, rounding, mode, spatial)
        if flags is None:
            raise Unsupported(
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
            [source, self.writer.constant(f"{name}/size", i32(shape[2:]))],
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
        if attrs.get("mode", "DCR") == "DCR":  # TensorFlow's channel order
            self.writer.op(
                "DEPTH_TO_SPACE", [source], [out], "DepthToSpaceOptions", blockSize=block
            )
            return
        # CRD (PyTorch's PixelShuffle): channel c * block**2 + i * block + j goes to pixel (i, j)
        # of channel c. As NHWC: [N, H, W, C, i, j] -> [N, H, i, W, j, C], reshaped.
        n, c, h, w = value.shape
        if sum(d < 0 for d in (n, h, w)) > 1 or c < 0:
            raise Unsupported(f"DepthToSpace {node.name!r} (CRD) with several dynamic dims")
        channels = c // block**2
        split = self.writer.tensor(f"{name}/split", [n, h, w, channels, block, block], F32)
        self.writer.op(
            "RESHAPE",
            [
                source,
                self.writer.constant(f"{name}/split/shape", i32([n, h, w, channels, block, block])),
            ],
            [split],
            "ReshapeOptions",
        )
        moved = self.writer.tensor(f"{name}/moved", [n, h, block, w, block, channels], F32)
        self.writer.op(
            "TRANSPOSE",
            [split, self.writer.constant(f"{name}/moved/perm", i32([0, 1, 4, 2, 5, 3]))],
            [moved],
            "TransposeOptions",
        )
        size = [n, -1 if h < 0 else h * block, -1 if w < 0 else w * block, channels]
        self.writer.op(
            "RESHAPE",
            [moved, self.writer.constant(f"{name}/shape", i32(size))],
            [out],
            "ReshapeOptions",
        )

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
            raise Unsupported(f"Split {node.name!r} along a dynamic dimension is not supported")
        source = self.physical(node.input[0], value.perm)
        outputs = [self.new(name, value.perm, nonneg=value.nonneg)[0] for name in node.output]
        name = node.output[0]
        self.writer.op(
            "SPLIT_V",
            [
                source,
                self.writer.constant(f"{name}/sizes", i32(sizes)),
                self.writer.constant(f"{name}/axis", i32(value.perm[axis])),
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
                raise Unsupported(
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
                self.writer.constant(f"{name}/begin", i32(begin)),
                self.writer.constant(f"{name}/end", i32(end)),
                self.writer.constant(f"{name}/strides", i32(stride)),
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
            raise Unsupported(f"Reshape {node.name!r} to an empty tensor is not supported")
        # 0 copies the input's dimension (allowzero=0); -1 is inferred.
        shape = [value.shape[i] if d == 0 else d for i, d in enumerate(requested)]
        inferred = self.info(node.output[0])[0]
        if sum(d < 0 for d in inferred) <= 1:  # [0, -1] of [N, C, H, W]: onnx knew C * H * W
            shape = list(inferred)
        if sum(d < 0 for d in shape) > 1:
            raise Unsupported(
                f"Reshape {node.name!r} has more than one dimension unknown at conversion time"
            )
        self.reshape(node, value, shape)

    def _op_Unsqueeze(self, node: Any, attrs: dict[str, Any]) -> None:
        self.reshape_like_inferred(node)

    def _op_Squeeze(self, node: Any, attrs: dict[str, Any]) -> None:
        self.reshape_like_inferred(node)

    def reshape_like_inferred(self, node: Any) -> None:
        """Unsqueeze and Squeeze (axes in any form): a Reshape to the shape onnx inferred."""
        shape = list(self.info(node.output[0])[0])
        if sum(d < 0 for d in shape) > 1:
            raise Unsupported(
                f"{node.op_type} {node.name!r} of a tensor with several dynamic dimensions"
            )
        self.reshape(node, self.values[node.input[0]], shape)

    def _op_Shape(self, node: Any, attrs: dict[str, Any]) -> None:
        value = self.values[node.input[0]]
        if any(d < 0 for d in value.shape):
            raise Unsupported(
                f"Shape {node.name!r} of tensor {node.input[0]!r} with dynamic dimensions is not "
                "supported (only static shapes become constants)"
            )
        start, end = attrs.get("start", 0), attrs.get("end")
        dims = np.asarray(value.shape, np.int64)[int(start) : None if end is None else int(end)]
        self.values[node.output[0]] = Value(dims.shape, dims.dtype, const=dims)

    def _op_ConstantOfShape(self, node: Any, attrs: dict[str, Any]) -> None:
        raise Unsupported(
            f"ConstantOfShape {node.name!r} has a shape computed at run time; only constant "
            "shapes are supported"
        )

    def _op_Pad(self, node: Any, attrs: dict[str, Any]) -> None:
        mode = attrs.get("mode", "constant")
        if mode != "constant":
            raise Unsupported(f"Pad {node.name!r} in mode {mode!r} is not supported")
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
            raise Unsupported(f"Pad {node.name!r} with negative pads (cropping) is not supported")
        begin, end = [0] * rank, [0] * rank
        for index, axis in enumerate(axes):
            axis = axis + rank if axis < 0 else axis
            begin[axis], end[axis] = pads[index], pads[index + len(axes)]
        # Pad in the stored layout: the widths follow the axes to where they are stored.
        order = np.argsort(value.perm).tolist()
        widths = i32([[begin[a], end[a]] for a in order])
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
            raise Unsupported(
                f"Softmax {node.name!r} over several axes {wide} (opset {self.opset} flattens "
                "them) is not supported"
            )
        perm = self.stored_last(value, wide[0] if wide else axis)
        source = self.physical(node.input[0], perm)
        out, _ = self.new(node.output[0], perm)
        self.writer.op("SOFTMAX", [source], [out], "SoftmaxOptions", beta=1.0)

    def _op_Dropout(self, node: Any, attrs: dict[str, Any]) -> None:
        inputs = [*node.input, "", ""]
        if inputs[2] and bool(self.const(inputs[2], "Dropout training_mode").reshape(())):
            raise Unsupported(f"Dropout {node.name!r} in training mode is not supported")
        value = self.values[node.input[0]]
        self.values[node.output[0]] = value  # inference: the identity
        if len(node.output) > 1 and node.output[1] and all(d >= 0 for d in value.shape):
            mask = np.ones(value.shape, np.bool_)
            self.values[node.output[1]] = Value(mask.shape, mask.dtype, const=mask)

    def _op_Flatten(self, node: Any, attrs: dict[str, Any]) -> None:
        value = self.values[node.input[0]]
        axis = int(attrs.get("axis", 1))
        axis = axis + len(value.shape) if axis < 0 else axis
        shape = [product(value.shape[:axis]), product(value.shape[axis:])]
        if shape.count(-1) > 1:
            raise Unsupported(f"Flatten {node.name!r} has dynamic dimensions on both sides")
        self.reshape(node, value, shape)


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
