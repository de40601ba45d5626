"""Operators that index, select, compare and repeat: Gather, ArgMax/ArgMin, TopK, CumSum,
comparisons, logic and Where, Cast, Expand and Tile — what transformer blocks, embeddings, masks
and segmentation heads add to a CNN's operators.

TFLite's kernels index from 0 only, where ONNX also counts from the end: constant indices are
resolved here, indices computed at run time get the same rule as operators of their own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import numpy as np

from ._graph import (
    Graph,
    Unsupported,
    i32,
    identity,
    physical_shape,
)

#: ONNX comparison and logic operators -> TFLite's operator and its options table.
COMPARISONS: Final = {
    "Equal": ("EQUAL", "EqualOptions"),
    "Greater": ("GREATER", "GreaterOptions"),
    "GreaterOrEqual": ("GREATER_EQUAL", "GreaterEqualOptions"),
    "Less": ("LESS", "LessOptions"),
    "LessOrEqual": ("LESS_EQUAL", "LessEqualOptions"),
    "And": ("LOGICAL_AND", "LogicalAndOptions"),
    "Or": ("LOGICAL_OR", "LogicalOrOptions"),
    "Xor": ("NOT_EQUAL", "NotEqualOptions"),  # on booleans, exclusive or is inequality
}

_INDEX_TYPES: Final = (np.dtype(np.int32), np.dtype(np.int64))


class IndexOps(Graph):
    """Gather, ArgMax/ArgMin, TopK, CumSum, comparisons and Where, Cast, Expand and Tile."""

    def compare(self, node: Any, attrs: dict[str, Any]) -> None:
        op, options = COMPARISONS[node.op_type]
        self.binary(node.input, node.output[0], op, options, fused=False)

    def _op_Not(self, node: Any, attrs: dict[str, Any]) -> None:
        value = self.values[node.input[0]]
        out, _ = self.new(node.output[0], value.perm)
        self.writer.op("LOGICAL_NOT", [self.physical(node.input[0], value.perm)], [out])

    def _op_Where(self, node: Any, attrs: dict[str, Any]) -> None:
        self.binary(node.input, node.output[0], "SELECT_V2", "SelectV2Options", fused=False)

    def _op_Cast(self, node: Any, attrs: dict[str, Any]) -> None:
        value = self.values[node.input[0]]
        target = self.info(node.output[0])[1]  # refuses the types the converter cannot write
        if value.dtype == target:
            self.values[node.output[0]] = value
            return
        out, _ = self.new(node.output[0], value.perm)
        self.writer.op(
            "CAST",
            [self.physical(node.input[0], value.perm)],
            [out],
            "CastOptions",
            inDataType=self.writer.type_code(value.dtype),
            outDataType=self.writer.type_code(target),
        )

    def _op_Gather(self, node: Any, attrs: dict[str, Any]) -> None:
        data, indices = (self.values[n] for n in node.input)
        rank = len(data.shape)
        axis = int(attrs.get("axis", 0)) % rank
        size = data.shape[axis]
        if indices.dtype not in _INDEX_TYPES:
            raise Unsupported(f"Gather {node.name!r} with {indices.dtype} indices")
        if indices.const is not None:
            positions = indices.const.astype(np.int64)
            if size >= 0:
                positions = np.where(positions < 0, positions + size, positions)
            if (positions < 0).any() or (size >= 0 and (positions >= size).any()):
                raise Unsupported(
                    f"Gather {node.name!r} has indices outside an axis of size {size} (or "
                    "negative ones along a dynamic axis)"
                )
            index = self.writer.constant(f"{node.output[0]}/indices", i32(positions))
        else:
            index = self.from_the_end(node.input[1], size, f"Gather {node.name!r}")
        out, _ = self.new(node.output[0], identity(len(self.info(node.output[0])[0])))
        self.writer.op(
            "GATHER",
            [self.physical(node.input[0], identity(rank)), index],
            [out],
            "GatherOptions",
            axis=axis,
            batchDims=0,
        )

    def from_the_end(self, name: str, size: int, what: str) -> int:
        """Run-time indices ``name`` into an axis of ``size``, negative ones counted from its end
        as ONNX does: ``i < 0 ? i + size : i``."""
        if size < 0:
            raise Unsupported(f"{what} of indices computed at run time along a dynamic axis")
        value = self.values[name]
        source = self.physical(name, identity(len(value.shape)))
        negative = self.writer.tensor(f"{name}/negative", value.shape, np.bool_)
        zero = self.writer.constant(f"{name}/zero", np.zeros((), value.dtype))
        self.writer.op("LESS", [source, zero], [negative], "LessOptions")
        shifted = self.writer.tensor(f"{name}/shifted", value.shape, value.dtype)
        length = self.writer.constant(f"{name}/size", np.full((), size, value.dtype))
        self.writer.op("ADD", [source, length], [shifted], "AddOptions", fusedActivationFunction=0)
        resolved = self.writer.tensor(f"{name}/resolved", value.shape, value.dtype)
        self.writer.op("SELECT_V2", [negative, shifted, source], [resolved], "SelectV2Options")
        return resolved

    def _op_ArgMax(self, node: Any, attrs: dict[str, Any]) -> None:
        self.arg_extreme(node, attrs, "ARG_MAX", "ArgMaxOptions")

    def _op_ArgMin(self, node: Any, attrs: dict[str, Any]) -> None:
        self.arg_extreme(node, attrs, "ARG_MIN", "ArgMinOptions")

    def arg_extreme(self, node: Any, attrs: dict[str, Any], op: str, options: str) -> None:
        """ArgMax/ArgMin along an axis where it is stored; keepdims puts the axis back."""
        if int(attrs.get("select_last_index", 0)):
            raise Unsupported(
                f"{node.op_type} {node.name!r} with select_last_index=1 (TFLite returns the "
                "first of equal values)"
            )
        value = self.values[node.input[0]]
        rank = len(value.shape)
        axis = int(attrs.get("axis", 0)) % rank
        stored = value.perm[axis]
        name = node.output[0]
        source = self.physical(node.input[0], value.perm)
        axis_tensor = self.writer.constant(f"{name}/axis", i32([stored]))
        fields = {"outputType": self.writer.type_code(np.int64)}
        if not int(attrs.get("keepdims", 1)):
            kept = [a for a in range(rank) if a != axis]
            perm = tuple(int(p) for p in np.argsort(np.argsort([value.perm[a] for a in kept])))
            out, _ = self.new(name, perm)
            self.writer.op(op, [source, axis_tensor], [out], options, **fields)
            return
        physical = physical_shape(value.shape, value.perm)
        del physical[stored]
        reduced = self.writer.tensor(f"{name}/reduced", physical, np.int64)
        self.writer.op(op, [source, axis_tensor], [reduced], options, **fields)
        out, _ = self.new(name, value.perm)
        self.writer.op(
            "EXPAND_DIMS",
            [reduced, self.writer.constant(f"{name}/expanded", i32(stored))],
            [out],
            "ExpandDimsOptions",
        )

    def _op_TopK(self, node: Any, attrs: dict[str, Any]) -> None:
        """The k largest (or smallest: of the negated input) along an axis stored last, sorted,
        the first of equal values first, as ONNX's TopK; TFLite's indices are int32: cast."""
        self.float_only(node, count=1)
        value = self.values[node.input[0]]
        rank = len(value.shape)
        axis = int(attrs.get("axis", -1)) % rank
        k = int(self.const(node.input[1], "TopK k").reshape(()))
        perm = self.stored_last(value, axis)
        source = self.physical(node.input[0], perm)
        values_name, indices_name = [*node.output, ""][:2]
        label = next(n for n in node.output if n)
        shape = list(value.shape)
        shape[axis] = k
        largest = bool(int(attrs.get("largest", 1)))
        if not largest:
            stored_shape = physical_shape(value.shape, perm)
            negated = self.writer.tensor(f"{label}/negated", stored_shape, value.dtype)
            self.writer.op("NEG", [source], [negated])
            source = negated
        if values_name and largest:
            top, _ = self.new(values_name, perm)
        else:
            top = self.writer.tensor(f"{label}/top", physical_shape(shape, perm), value.dtype)
        positions = self.writer.tensor(f"{label}/positions", physical_shape(shape, perm), np.int32)
        k_tensor = self.writer.constant(f"{label}/k", i32(k))
        self.writer.op("TOPK_V2", [source, k_tensor], [top, positions], "TopKV2Options")
        if values_name and not largest:
            out, _ = self.new(values_name, perm)
            self.writer.op("NEG", [top], [out])
        if indices_name:
            out, _ = self.new(indices_name, perm)
            self.writer.op(
                "CAST",
                [positions],
                [out],
                "CastOptions",
                inDataType=self.writer.type_code(np.int32),
                outDataType=self.writer.type_code(np.int64),
            )

    def _op_CumSum(self, node: Any, attrs: dict[str, Any]) -> None:
        value = self.values[node.input[0]]
        rank = len(value.shape)
        axis = int(self.const(node.input[1], "CumSum axis").reshape(())) % rank
        name = node.output[0]
        out, _ = self.new(name, value.perm)
        self.writer.op(
            "CUMSUM",
            [
                self.physical(node.input[0], value.perm),
                self.writer.constant(f"{name}/axis", i32(value.perm[axis])),
            ],
            [out],
            "CumsumOptions",
            exclusive=bool(int(attrs.get("exclusive", 0))),
            reverse=bool(int(attrs.get("reverse", 0))),
        )

    def _op_Expand(self, node: Any, attrs: dict[str, Any]) -> None:
        value = self.values[node.input[0]]
        shape = self.info(node.output[0])[0]
        requested = self.values[node.input[1]].const
        if requested is not None and any(d < 0 for d in shape):
            # onnx infers nothing from a shape that only folding made constant (PyTorch's
            # expand_as writes Shape -> Expand): broadcast it here, for this node and the next.
            shape = _broadcast(value.shape, [int(d) for d in requested.reshape(-1)])
            self.infos[node.output[0]] = (shape, value.dtype)
        if any(d < 0 for d in shape):
            raise Unsupported(
                f"Expand {node.name!r} to a shape unknown at conversion time is not supported"
            )
        if len(value.shape) == len(shape):
            perm = value.perm
            source = self.physical(node.input[0], perm)
        else:  # fewer axes: they align with the last ones of the target in ONNX order
            perm = identity(len(shape))
            source = self.physical(node.input[0], identity(len(value.shape)))
        name = node.output[0]
        out, _ = self.new(name, perm, nonneg=value.nonneg)
        target = self.writer.constant(f"{name}/shape", i32(physical_shape(shape, perm)))
        self.writer.op("BROADCAST_TO", [source, target], [out], "BroadcastToOptions")

    def _op_Tile(self, node: Any, attrs: dict[str, Any]) -> None:
        value = self.values[node.input[0]]
        repeats = self.const(node.input[1], "Tile repeats").reshape(-1)
        name = node.output[0]
        out, _ = self.new(name, value.perm, nonneg=value.nonneg)
        stored = i32([repeats[a] for a in np.argsort(value.perm).tolist()])
        self.writer.op(
            "TILE",
            [
                self.physical(node.input[0], value.perm),
                self.writer.constant(f"{name}/reps", stored),
            ],
            [out],
            "TileOptions",
        )


def _broadcast(shape: Sequence[int], target: Sequence[int]) -> tuple[int, ...]:
    """ONNX Expand's output shape: ``shape`` and ``target`` broadcast both ways; a dynamic
    dimension (-1) stays dynamic only where the target's is 1."""
    rank = max(len(shape), len(target))
    padded = [1] * (rank - len(shape)) + list(shape)
    wanted = [1] * (rank - len(target)) + list(target)
    return tuple(
        w if d == 1 or (d < 0 and w != 1) else d for d, w in zip(padded, wanted, strict=True)
    )
