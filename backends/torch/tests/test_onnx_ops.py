"""The ONNX -> torch converter, one operator at a time, against onnxruntime (the ONNX reference).

Each case is a one- or few-node ONNX graph built here with the attribute values that change the
semantics (asymmetric and ``auto_pad`` padding, strides, groups, dilations, ``ceil_mode``,
broadcasting, opset-dependent forms such as axes given as an attribute or as an input), run by
both runtimes on the same seeded inputs. Plus: what the converter refuses, and how.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

if importlib.util.find_spec("torch") is None:
    pytest.skip(
        "torch is not installed here: the torch backend's tests run in its own environment "
        "(backends/torch/test-env.sh)",
        allow_module_level=True,
    )

import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from unifer import Engine, MissingDependencyError, ModelLoadError

ort = pytest.importorskip("onnxruntime")

CPU = {"torch": {"device": "cpu"}}
BF16_ON_CPU = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
F32 = TensorProto.FLOAT
I64 = TensorProto.INT64
I32 = TensorProto.INT32
I8 = TensorProto.INT8
U8 = TensorProto.UINT8
BOOL = TensorProto.BOOL
RNG = np.random.default_rng(0)


def rand(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def positive(*shape: int) -> np.ndarray:
    return (RNG.random(shape) + 0.1).astype(np.float32)


def ints(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


@dataclass
class Case:
    """A small graph: nodes, inputs fed at run time, constant initializers, the output names and
    ONNX element types, and the opset."""

    nodes: list[Any]
    feeds: dict[str, np.ndarray]
    outputs: Sequence[str] | Mapping[str, int] = ("y",)
    constants: dict[str, np.ndarray] = field(default_factory=dict)
    opset: int = 17

    def save(self, path: Path) -> Path:
        outputs = (
            self.outputs if isinstance(self.outputs, Mapping) else dict.fromkeys(self.outputs, F32)
        )
        graph = helper.make_graph(
            self.nodes,
            path.stem,
            [
                helper.make_tensor_value_info(
                    name, helper.np_dtype_to_tensor_dtype(value.dtype), value.shape
                )
                for name, value in self.feeds.items()
            ],
            [helper.make_tensor_value_info(name, t, None) for name, t in outputs.items()],
            [numpy_helper.from_array(np.asarray(v), k) for k, v in self.constants.items()],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        model.ir_version = 8
        onnx.save_model(model, str(path))
        return path


def node(op: str, inputs: Sequence[str], outputs: Sequence[str] = ("y",), **attrs: Any) -> Any:
    return helper.make_node(op, list(inputs), list(outputs), **attrs)


def with_dim_param(path: Path, axis: int, name: str) -> Path:
    """Make dim ``axis`` of the model's first input symbolic (``name``), so that nothing that
    depends on it is folded at load."""
    model = onnx.load_model(str(path))
    model.graph.input[0].type.tensor_type.shape.dim[axis].dim_param = name
    onnx.save_model(model, str(path))
    return path


def unary(op: str, x: np.ndarray | None = None, **attrs: Any) -> Case:
    return Case([node(op, ["x"], **attrs)], {"x": rand(2, 3, 4) if x is None else x})


def conv_case(**attrs: Any) -> Case:
    group = attrs.get("group", 1)
    rank = len(attrs.pop("kernel", (3, 3)))
    shape = (2, 4, 9, 8, 7)[: 2 + rank]
    weight = rand(6, 4 // group, *([3] * rank))
    return Case(
        [node("Conv", ["x", "w", "b"], **attrs)],
        {"x": rand(*shape)},
        constants={"w": weight, "b": rand(6)},
    )


NOOP_REDUCTIONS = ("ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceMean", "ReduceLogSumExp")

CASES: dict[str, Case] = {
    # -- convolution ------------------------------------------------------------------------
    "conv-pads-symmetric": conv_case(pads=[1, 1, 1, 1]),
    "conv-pads-asymmetric": conv_case(pads=[0, 1, 2, 0], strides=[2, 1]),
    "conv-same-upper-stride2": conv_case(auto_pad="SAME_UPPER", strides=[2, 2]),
    "conv-same-lower-stride2": conv_case(auto_pad="SAME_LOWER", strides=[2, 2]),
    "conv-valid": conv_case(auto_pad="VALID"),
    "conv-group-dilation": conv_case(group=2, dilations=[2, 1], pads=[2, 1, 2, 1]),
    "conv-depthwise": Case(
        [node("Conv", ["x", "w"], group=4, pads=[1, 1, 1, 1])],
        {"x": rand(1, 4, 6, 6)},
        constants={"w": rand(4, 1, 3, 3)},
    ),
    "conv-1d": conv_case(kernel=(3,), pads=[1, 0], strides=[2]),
    "conv-3d": conv_case(kernel=(3, 3, 3), pads=[1, 0, 1, 1, 0, 1]),
    "conv-transpose-stride2": Case(
        [
            node(
                "ConvTranspose",
                ["x", "w", "b"],
                strides=[2, 2],
                pads=[1, 1, 1, 1],
                output_padding=[1, 1],
            )
        ],
        {"x": rand(1, 4, 5, 5)},
        constants={"w": rand(4, 3, 3, 3), "b": rand(3)},
    ),
    "conv-transpose-asymmetric-group": Case(
        [node("ConvTranspose", ["x", "w"], strides=[2, 1], pads=[0, 1, 1, 0], group=2)],
        {"x": rand(1, 4, 5, 5)},
        constants={"w": rand(4, 3, 3, 3)},
    ),
    # -- normalization ----------------------------------------------------------------------
    "batchnorm": Case(
        [node("BatchNormalization", ["x", "s", "b", "m", "v"], epsilon=1e-3)],
        {"x": rand(2, 3, 4, 4)},
        constants={"s": rand(3), "b": rand(3), "m": rand(3), "v": positive(3)},
    ),
    "instancenorm": Case(
        [node("InstanceNormalization", ["x", "s", "b"])],
        {"x": rand(2, 3, 4, 4)},
        constants={"s": rand(3), "b": rand(3)},
    ),
    "layernorm-last": Case(
        [node("LayerNormalization", ["x", "s", "b"])],
        {"x": rand(2, 3, 8)},
        constants={"s": rand(8), "b": rand(8)},
    ),
    "layernorm-axis1": Case(
        [node("LayerNormalization", ["x", "s"], axis=1, epsilon=1e-3)],
        {"x": rand(2, 3, 4)},
        constants={"s": rand(3, 4)},
    ),
    "lrn": Case(
        [node("LRN", ["x"], size=5, alpha=1e-2, beta=0.7, bias=2.0)], {"x": rand(1, 7, 4, 4)}
    ),
    # -- pooling ----------------------------------------------------------------------------
    "maxpool-pads-ceil": Case(
        [
            node(
                "MaxPool",
                ["x"],
                kernel_shape=[3, 3],
                strides=[2, 2],
                pads=[1, 1, 1, 1],
                ceil_mode=1,
            )
        ],
        {"x": rand(1, 2, 8, 9)},
    ),
    "maxpool-asymmetric": Case(
        [node("MaxPool", ["x"], kernel_shape=[2, 3], pads=[0, 2, 1, 0])], {"x": rand(1, 2, 6, 6)}
    ),
    # (SAME_UPPER with dilations is left out: onnxruntime 1.32's kernel returns another shape
    # than the ONNX spec, and than its own shape inference, gives.)
    "maxpool-same-upper": Case(
        [node("MaxPool", ["x"], kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER")],
        {"x": rand(1, 2, 9, 8)},
    ),
    "maxpool-dilated": Case(
        [node("MaxPool", ["x"], kernel_shape=[3, 2], pads=[2, 1, 2, 1], dilations=[2, 2])],
        {"x": rand(1, 2, 9, 8)},
    ),
    "maxpool-1d": Case(
        [node("MaxPool", ["x"], kernel_shape=[3], strides=[2])], {"x": rand(1, 2, 9)}
    ),
    "maxpool-int8-asymmetric": Case(
        # Padded with int8's lowest value: -inf does not fit an int8 tensor.
        [node("MaxPool", ["x"], kernel_shape=[2, 2], pads=[1, 1, 0, 0])],
        {"x": np.arange(-8, 8, dtype=np.int8).reshape(1, 1, 4, 4)},
        outputs={"y": I8},
        opset=12,
    ),
    "avgpool-exclude-pad": Case(
        [node("AveragePool", ["x"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])],
        {"x": rand(1, 2, 7, 7)},
    ),
    "avgpool-include-pad": Case(
        [node("AveragePool", ["x"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1)],
        {"x": rand(1, 2, 6, 6)},
    ),
    "avgpool-asymmetric-exclude-pad": Case(
        [node("AveragePool", ["x"], kernel_shape=[3, 3], pads=[0, 0, 2, 1])],
        {"x": rand(1, 2, 6, 6)},
    ),
    "avgpool-same-lower": Case(
        [node("AveragePool", ["x"], kernel_shape=[2, 2], strides=[2, 2], auto_pad="SAME_LOWER")],
        {"x": rand(1, 2, 7, 7)},
    ),
    "global-avgpool": Case([node("GlobalAveragePool", ["x"])], {"x": rand(2, 3, 5, 4)}),
    "global-maxpool": Case([node("GlobalMaxPool", ["x"])], {"x": rand(2, 3, 5, 4)}),
    # -- linear algebra ---------------------------------------------------------------------
    "gemm-transb-bias": Case(
        [node("Gemm", ["x", "w", "c"], transB=1)],
        {"x": rand(3, 5)},
        constants={"w": rand(4, 5), "c": rand(4)},
    ),
    "gemm-transa-alpha-beta-2d-bias": Case(
        [node("Gemm", ["x", "w", "c"], transA=1, alpha=0.5, beta=2.0)],
        {"x": rand(5, 3)},
        constants={"w": rand(5, 4), "c": rand(3, 4)},
    ),
    "gemm-scalar-bias": Case(
        [node("Gemm", ["x", "w", "c"], transB=1)],
        {"x": rand(3, 5)},
        constants={"w": rand(4, 5), "c": rand(1)},
    ),
    "matmul-batched-broadcast": Case(
        [node("MatMul", ["a", "b"])], {"a": rand(2, 1, 3, 4), "b": rand(3, 4, 5)}
    ),
    "matmul-vector": Case([node("MatMul", ["a", "b"])], {"a": rand(4), "b": rand(2, 4, 3)}),
    "einsum": Case(
        [node("Einsum", ["a", "b"], equation="bij, bjk -> bik")],
        {"a": rand(2, 3, 4), "b": rand(2, 4, 5)},
    ),
    # -- activations ------------------------------------------------------------------------
    **{
        f"unary-{op.lower()}": unary(op)
        for op in (
            "Relu",
            "Sigmoid",
            "Tanh",
            "Exp",
            "Abs",
            "Neg",
            "Floor",
            "Ceil",
            "Erf",
            "Sin",
            "Cos",
            "Atan",
            "Sign",
            "Softsign",
            "Softplus",
            "HardSwish",
            "Identity",
        )
    },
    "unary-log": unary("Log", positive(2, 3)),
    "unary-sqrt": unary("Sqrt", positive(2, 3)),
    "unary-reciprocal": unary("Reciprocal", positive(2, 3)),
    "unary-round-half-even": unary(
        "Round", np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.4], np.float32)
    ),
    "mish": Case([node("Mish", ["x"])], {"x": rand(2, 3)}, opset=18),
    "leakyrelu": unary("LeakyRelu", alpha=0.2),
    "elu": unary("Elu", alpha=0.7),
    "selu": unary("Selu"),
    "celu": unary("Celu", alpha=1.5),
    "hardsigmoid": unary("HardSigmoid", alpha=0.3, beta=0.4),
    "thresholdedrelu": unary("ThresholdedRelu", alpha=0.5),
    "gelu-tanh": Case([node("Gelu", ["x"], approximate="tanh")], {"x": rand(2, 5)}, opset=20),
    "prelu-channel": Case(
        [node("PRelu", ["x", "s"])], {"x": rand(2, 3, 4, 4)}, constants={"s": rand(3, 1, 1)}
    ),
    "prelu-last-dim": Case(
        [node("PRelu", ["x", "s"])], {"x": rand(2, 3, 4)}, constants={"s": rand(4)}
    ),
    "prelu-scalar": Case([node("PRelu", ["x", "s"])], {"x": rand(2, 3)}, constants={"s": rand(1)}),
    "clip-inputs": Case(
        [node("Clip", ["x", "lo", ""])], {"x": rand(3, 4)}, constants={"lo": np.float32(-0.2)}
    ),
    "clip-both-inputs": Case(
        [node("Clip", ["x", "lo", "hi"])],
        {"x": rand(3, 4)},
        constants={"lo": np.float32(-0.2), "hi": np.float32(0.3)},
    ),
    "clip-attrs-opset9": Case(
        [node("Clip", ["x"], min=-0.5, max=0.25)], {"x": rand(3, 4)}, opset=9
    ),
    "softmax-opset13-axis1": Case([node("Softmax", ["x"], axis=1)], {"x": rand(2, 3, 4)}),
    "softmax-opset11-coerced": Case(
        [node("Softmax", ["x"], axis=1)], {"x": rand(2, 3, 4)}, opset=11
    ),
    "logsoftmax-default": Case([node("LogSoftmax", ["x"])], {"x": rand(2, 3, 4)}),
    "hardmax": Case([node("Hardmax", ["x"], axis=1)], {"x": rand(2, 3, 4)}),
    # -- elementwise binary -----------------------------------------------------------------
    **{
        f"binary-{op.lower()}": Case([node(op, ["a", "b"])], {"a": rand(2, 3, 4), "b": rand(3, 1)})
        for op in ("Add", "Sub", "Mul", "Div")
    },
    **{
        f"compare-{op.lower()}": Case(
            [node(op, ["a", "b"])], {"a": rand(2, 3), "b": rand(3)}, outputs={"y": BOOL}
        )
        for op in ("Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual")
    },
    "pow": Case([node("Pow", ["a", "b"])], {"a": positive(2, 3), "b": rand(3)}),
    "div-int-truncates": Case(
        [node("Div", ["a", "b"])],
        {"a": ints(-7, 7, -8, 9), "b": ints(2, -2, 3, 4)},
        outputs={"y": I64},
    ),
    "mod-int": Case(
        [node("Mod", ["a", "b"])],
        {"a": ints(-7, 7, -8, 9), "b": ints(2, -2, 3, -4)},
        outputs={"y": I64},
    ),
    "mod-fmod": Case([node("Mod", ["a", "b"], fmod=1)], {"a": rand(5), "b": positive(5)}),
    "where-and-not": Case(
        [
            node("Greater", ["a", "b"], ["g"]),
            node("Not", ["g"], ["n"]),
            node("And", ["g", "c"], ["gc"]),
            node("Where", ["n", "a", "b"], ["y"]),
            node("Or", ["gc", "n"], ["z"]),
        ],
        {"a": rand(3, 4), "b": rand(4), "c": RNG.random((3, 4)) > 0.5},
        outputs={"y": F32, "z": BOOL},
    ),
    "variadic": Case(
        [
            node("Sum", ["a", "b", "c"], ["s"]),
            node("Mean", ["a", "b", "c"], ["m"]),
            node("Max", ["a", "b"], ["hi"]),
            node("Min", ["a", "b", "c"], ["lo"]),
        ],
        {"a": rand(2, 3), "b": rand(3), "c": rand(2, 1)},
        outputs=("s", "m", "hi", "lo"),
    ),
    # -- shapes -----------------------------------------------------------------------------
    "reshape-zero-minus-one": Case(
        [node("Reshape", ["x", "s"])], {"x": rand(2, 3, 4)}, constants={"s": ints(0, -1)}
    ),
    "flatten-axis2": Case([node("Flatten", ["x"], axis=2)], {"x": rand(2, 3, 4, 5)}),
    "flatten-axis0": Case([node("Flatten", ["x"], axis=0)], {"x": rand(2, 3, 4)}),
    "transpose-default": Case([node("Transpose", ["x"])], {"x": rand(2, 3, 4)}),
    "transpose-perm": Case([node("Transpose", ["x"], perm=[0, 2, 3, 1])], {"x": rand(1, 3, 4, 5)}),
    "squeeze-unsqueeze-opset13": Case(
        [node("Squeeze", ["x", "a"], ["s"]), node("Unsqueeze", ["s", "b"], ["y"])],
        {"x": rand(1, 3, 1, 4)},
        constants={"a": ints(0, -2), "b": ints(-1, 0)},
    ),
    "squeeze-unsqueeze-opset11": Case(
        [node("Squeeze", ["x"], ["s"], axes=[2]), node("Unsqueeze", ["s"], ["y"], axes=[1, 3])],
        {"x": rand(2, 3, 1, 4)},
        opset=11,
    ),
    "squeeze-all": Case([node("Squeeze", ["x"])], {"x": rand(1, 3, 1, 4)}),
    "concat": Case([node("Concat", ["a", "b"], axis=-1)], {"a": rand(2, 3), "b": rand(2, 5)}),
    "split-sizes-input": Case(
        [node("Split", ["x", "s"], ["p", "q"], axis=1)],
        {"x": rand(2, 7)},
        outputs=("p", "q"),
        constants={"s": ints(3, 4)},
    ),
    "split-even-opset11": Case(
        [node("Split", ["x"], ["p", "q", "r"])],
        {"x": rand(6, 2)},
        outputs=("p", "q", "r"),
        opset=11,
    ),
    "split-num-outputs-uneven": Case(
        [node("Split", ["x"], ["p", "q", "r"], axis=1, num_outputs=3)],
        {"x": rand(2, 7)},
        outputs=("p", "q", "r"),
        opset=18,
    ),
    "slice-steps-negative-clamped": Case(
        [node("Slice", ["x", "st", "en", "ax", "sp"])],
        {"x": rand(5, 6, 7)},
        constants={
            "st": ints(-1, 1, 100),
            "en": ints(-(2**63), 1000, 0),
            "ax": ints(0, 1, 2),
            "sp": ints(-2, 2, -3),
        },
    ),
    "slice-opset9-attrs": Case(
        [node("Slice", ["x"], starts=[1, 0], ends=[3, -1], axes=[0, 2])],
        {"x": rand(4, 3, 5)},
        opset=9,
    ),
    "gather-negative-indices": Case(
        [node("Gather", ["x", "i"], axis=1)], {"x": rand(2, 5, 3)}, constants={"i": ints(-1, 0, 3)}
    ),
    "gather-2d-indices": Case(
        [node("Gather", ["x", "i"])],
        {"x": rand(5, 3)},
        constants={"i": np.array([[0, 4], [-2, 1]], np.int64)},
    ),
    "gather-scalar-index": Case(
        [node("Gather", ["x", "i"], axis=0)], {"x": rand(4, 3)}, constants={"i": np.int64(2)}
    ),
    "gather-elements": Case(
        [node("GatherElements", ["x", "i"], axis=1)],
        {"x": rand(3, 4)},
        constants={"i": np.array([[0, -1], [2, 1], [3, 3]], np.int64)},
    ),
    "expand-bidirectional": Case(
        [node("Expand", ["x", "s"])], {"x": rand(3, 1)}, constants={"s": ints(2, 1, 4)}
    ),
    "tile": Case([node("Tile", ["x", "r"])], {"x": rand(2, 3)}, constants={"r": ints(2, 3)}),
    "dynamic-shape-arithmetic": Case(
        # Shape -> Gather -> Unsqueeze -> Concat -> Reshape, as exporters write a Flatten with a
        # dynamic batch; the batch is only known at run time.
        [
            node("Shape", ["x"], ["shape"]),
            node("Gather", ["shape", "zero"], ["n"], axis=0),
            node("Unsqueeze", ["n", "axes"], ["n1"]),
            node("Concat", ["n1", "minus_one"], ["target"], axis=0),
            node("Reshape", ["x", "target"], ["y"]),
            node(
                "ConstantOfShape", ["shape"], ["z"], value=helper.make_tensor("v", F32, [1], [2.5])
            ),
            node("Shape", ["x"], ["tail"], start=-2),
        ],
        {"x": rand(3, 2, 4)},
        outputs={"y": F32, "z": F32, "tail": I64},
        constants={"zero": np.int64(0), "axes": ints(0), "minus_one": ints(-1)},
    ),
    "range-and-cast": Case(
        [
            node("Range", ["start", "limit", "delta"], ["r"]),
            node("Cast", ["r"], ["y"], to=F32),
            node("CastLike", ["x", "r"], ["z"]),
        ],
        {"x": np.array([1.7, -2.2], np.float32), "limit": np.array(9, np.int64)},
        outputs={"y": F32, "z": I64},
        constants={"start": np.int64(1), "delta": np.int64(3)},
    ),
    "constants": Case(
        [
            node("Constant", [], ["c"], value_floats=[1.0, 2.0, 3.0]),
            node("Constant", [], ["k"], value=numpy_helper.from_array(rand(3), "k")),
            node("Add", ["x", "c"], ["s"]),
            node("Mul", ["s", "k"], ["y"]),
        ],
        {"x": rand(2, 3)},
    ),
    "pad-constant-negative": Case(
        [node("Pad", ["x", "p", "v"])],
        {"x": rand(1, 2, 4, 5)},
        constants={"p": ints(0, 0, 1, -1, 0, 1, 2, 0), "v": np.float32(1.5)},
    ),
    "pad-reflect": Case(
        [node("Pad", ["x", "p"], mode="reflect")],
        {"x": rand(1, 2, 4, 5)},
        constants={"p": ints(0, 0, 1, 2, 0, 0, 3, 1)},
    ),
    "pad-edge-axes": Case(
        [node("Pad", ["x", "p", "", "a"], mode="edge")],
        {"x": rand(1, 2, 4, 5)},
        constants={"p": ints(2, 1, 0, 3), "a": ints(2, 3)},
        opset=18,
    ),
    # F.pad's reflect/replicate/circular modes pad only the last 1-3 axes of a 2-D..5-D tensor.
    "pad-reflect-1d": Case(
        [node("Pad", ["x", "p"], mode="reflect")], {"x": rand(6)}, constants={"p": ints(2, 3)}
    ),
    "pad-edge-2d-both-axes": Case(
        [node("Pad", ["x", "p"], mode="edge")], {"x": rand(4, 5)}, constants={"p": ints(1, 2, 3, 0)}
    ),
    "pad-edge-batch-axis": Case(
        [node("Pad", ["x", "p"], mode="edge")],
        {"x": rand(2, 3, 4, 5)},
        constants={"p": ints(1, 0, 0, 0, 0, 0, 0, 2)},
    ),
    "pad-reflect-channel-axis-3d": Case(
        [node("Pad", ["x", "p"], mode="reflect")],
        {"x": rand(2, 4, 5)},
        constants={"p": ints(0, 1, 0, 0, 2, 0)},
    ),
    "pad-reflect-crop": Case(
        [node("Pad", ["x", "p"], mode="reflect")],
        {"x": rand(1, 2, 6, 5)},
        constants={"p": ints(0, 0, -1, 2, 0, 0, 1, -1)},
    ),
    "pad-wrap-5d": Case(
        [node("Pad", ["x", "p"], mode="wrap")],
        {"x": rand(1, 2, 3, 4, 5)},
        constants={"p": ints(0, 1, 1, 2, 0, 0, 0, 1, 0, 3)},
        opset=19,
    ),
    "pad-opset9-attrs": Case(
        [node("Pad", ["x"], pads=[0, 1, 0, 2], value=-1.0)], {"x": rand(3, 4)}, opset=9
    ),
    "depth-to-space-dcr": Case([node("DepthToSpace", ["x"], blocksize=2)], {"x": rand(1, 8, 2, 3)}),
    "depth-to-space-crd": Case(
        [node("DepthToSpace", ["x"], blocksize=2, mode="CRD")], {"x": rand(1, 8, 2, 3)}
    ),
    "space-to-depth": Case([node("SpaceToDepth", ["x"], blocksize=2)], {"x": rand(1, 2, 4, 6)}),
    # -- resizing ---------------------------------------------------------------------------
    "resize-nearest-asymmetric-floor-scales": Case(
        [
            node(
                "Resize",
                ["x", "", "s"],
                mode="nearest",
                coordinate_transformation_mode="asymmetric",
                nearest_mode="floor",
            )
        ],
        {"x": rand(1, 2, 3, 4)},
        constants={"s": np.array([1, 1, 2, 2], np.float32)},
    ),
    "resize-nearest-half-pixel-sizes": Case(
        [node("Resize", ["x", "", "", "z"], mode="nearest")],
        {"x": rand(1, 2, 5, 4)},
        constants={"z": ints(1, 2, 7, 9)},
    ),
    "resize-linear-half-pixel": Case(
        [node("Resize", ["x", "", "s"], mode="linear")],
        {"x": rand(1, 2, 3, 4)},
        constants={"s": np.array([1, 1, 2.0, 1.5], np.float32)},
    ),
    "resize-linear-align-corners": Case(
        [
            node(
                "Resize",
                ["x", "", "", "z"],
                mode="linear",
                coordinate_transformation_mode="align_corners",
            )
        ],
        {"x": rand(1, 2, 3, 4)},
        constants={"z": ints(1, 2, 7, 5)},
    ),
    "resize-linear-pytorch-half-pixel-down": Case(
        [
            node(
                "Resize",
                ["x", "", "", "z"],
                mode="linear",
                coordinate_transformation_mode="pytorch_half_pixel",
            )
        ],
        {"x": rand(1, 2, 9, 8)},
        constants={"z": ints(1, 2, 4, 3)},
    ),
    # Resize-10 has no nearest_mode: onnxruntime truncates upsampling and rounds downsampling up.
    "resize10-nearest-up3": Case(
        [node("Resize", ["x", "s"], mode="nearest")],
        {"x": rand(1, 1, 2, 4)},
        constants={"s": np.array([1, 1, 3, 3], np.float32)},
        opset=10,
    ),
    "resize10-nearest-down": Case(
        [node("Resize", ["x", "s"], mode="nearest")],
        {"x": rand(1, 1, 6, 6)},
        constants={"s": np.array([1, 1, 0.5, 0.6], np.float32)},
        opset=10,
    ),
    "resize-nearest-batch-axis": Case(
        [node("Resize", ["x", "", "s"], mode="nearest")],
        {"x": rand(2, 1, 5, 7)},
        constants={"s": np.array([2, 1, 1, 1], np.float32)},
    ),
    **{
        f"resize-linear-{np.dtype(dtype).name}": Case(
            # Weights of 1/4 and 3/4 are exact in float32, so onnxruntime's truncation and this
            # converter's agree to the unit.
            [node("Resize", ["x", "", "s"], mode="linear")],
            {"x": RNG.integers(low, 256, (1, 2, 4, 5)).astype(dtype)},
            outputs={"y": onnx_type},
            constants={"s": np.array([1, 1, 2, 2], np.float32)},
        )
        for dtype, onnx_type, low in ((np.uint8, U8, 0), (np.int32, I32, -256))
    },
    "upsample-opset9": Case(
        [node("Upsample", ["x", "s"], mode="nearest")],
        {"x": rand(1, 2, 3, 3)},
        constants={"s": np.array([1, 1, 2, 3], np.float32)},
        opset=9,
    ),
    # -- reductions -------------------------------------------------------------------------
    "reducemean-attr-axes": Case([node("ReduceMean", ["x"], axes=[1, -1])], {"x": rand(2, 3, 4)}),
    "reducesum-input-axes-no-keepdims": Case(
        [node("ReduceSum", ["x", "a"], keepdims=0)], {"x": rand(2, 3, 4)}, constants={"a": ints(1)}
    ),
    "reducesum-all": Case([node("ReduceSum", ["x"])], {"x": rand(2, 3, 4)}),
    "reducemax-opset18": Case(
        [node("ReduceMax", ["x", "a"])],
        {"x": rand(2, 3, 4)},
        constants={"a": ints(0, 2)},
        opset=18,
    ),
    "reduce-others": Case(
        [
            node("ReduceMin", ["x"], ["a"], axes=[0]),
            node("ReduceProd", ["x"], ["b"], axes=[1, 2], keepdims=0),
            node("ReduceL1", ["x"], ["c"], axes=[2]),
            node("ReduceL2", ["x"], ["d"], axes=[1]),
            node("ReduceSumSquare", ["x"], ["e"], axes=[0]),
            node("ReduceLogSumExp", ["x"], ["f"], axes=[2]),
        ],
        {"x": rand(2, 3, 4)},
        outputs=("a", "b", "c", "d", "e", "f"),
    ),
    "reduce-noop-with-empty-axes": Case(
        # No axes input, and an empty one: the elementwise part still applies (|x|, x*x, ...).
        [
            node(op, ["x", *axes], [f"{op}{len(axes)}"], noop_with_empty_axes=1)
            for op in NOOP_REDUCTIONS
            for axes in ([], ["none"])
        ],
        {"x": rand(2, 3, 4)},
        outputs=[f"{op}{n}" for op in NOOP_REDUCTIONS for n in (0, 1)],
        constants={"none": np.zeros(0, np.int64)},
        opset=18,
    ),
    "reducemean-int32-truncates": Case(
        [node("ReduceMean", ["x"], axes=[1])],
        {"x": np.array([[-3, 0, 1], [1, 2, 2], [7, -7, 5]], np.int32)},
        outputs={"y": I32},
    ),
    "argmax-last-index": Case(
        [
            node("ArgMax", ["x"], axis=1, select_last_index=1),
            node("ArgMin", ["x"], ["z"], keepdims=0),
        ],
        {"x": np.array([[1, 3, 3, 0], [2, 2, 1, 2]], np.float32)},
        outputs={"y": I64, "z": I64},
    ),
    "cumsum-exclusive-reverse": Case(
        [node("CumSum", ["x", "a"], exclusive=1, reverse=1)],
        {"x": rand(3, 4)},
        constants={"a": np.int64(1)},
    ),
    "dropout-with-mask": Case(
        [node("Dropout", ["x"], ["y", "mask"])], {"x": rand(2, 3)}, outputs={"y": F32, "mask": BOOL}
    ),
}


@pytest.mark.parametrize("case_id", list(CASES))
def test_matches_onnxruntime(case_id: str, tmp_path: Path) -> None:
    case = CASES[case_id]
    path = case.save(tmp_path / f"{case_id.replace('-', '_')}.onnx")
    raw = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want = raw.run(None, case.feeds)
    with Engine.load(path, backend="torch", backend_options=CPU) as engine:
        got = engine.run(case.feeds)
    assert list(got) == [o.name for o in raw.get_outputs()]
    for (name, value), expected in zip(got.items(), want, strict=True):
        assert value.dtype == expected.dtype, name
        assert value.shape == expected.shape, name
        np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-5, err_msg=name)


def test_dynamic_batch_through_shape_arithmetic(tmp_path: Path) -> None:
    """A symbolic batch: the Shape subgraph runs at every call instead of being folded."""
    case = CASES["dynamic-shape-arithmetic"]
    path = with_dim_param(case.save(tmp_path / "dynamic.onnx"), 0, "N")
    raw = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with Engine.load(path, backend="torch", backend_options=CPU) as engine:
        assert engine.inputs[0].shape == ("N", 2, 4)
        assert engine.settings["nodes_folded_at_load"] == 0
        for batch in (1, 5):
            feeds = {"x": rand(batch, 2, 4)}
            for got, want in zip(engine.run(feeds).values(), raw.run(None, feeds), strict=True):
                np.testing.assert_array_equal(got, want)


def test_static_shape_arithmetic_is_folded_at_load(tmp_path: Path) -> None:
    path = CASES["dynamic-shape-arithmetic"].save(tmp_path / "static.onnx")
    with Engine.load(path, backend="torch", backend_options=CPU) as engine:
        # Everything but the Reshape of the input depends on its (static) shape only.
        assert engine.settings["nodes_folded_at_load"] == 6


def parity(case: Case, path: Path, precision: str, atol: float) -> np.ndarray:
    """Run ``path`` (``case`` saved) with torch at ``precision`` and onnxruntime (fp32); check that
    the shapes agree and the values within ``atol``; return torch's output."""
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, case.feeds)
    with Engine.load(path, backend="torch", precision=precision, backend_options=CPU) as engine:
        (got,) = engine.run(case.feeds).values()
    assert got.shape == want[0].shape
    np.testing.assert_allclose(got, want[0], atol=atol)
    return got


@pytest.mark.skipif(not BF16_ON_CPU, reason="oneDNN has no bf16 kernels for this CPU")
def test_shape_arithmetic_stays_float32_in_bf16(tmp_path: Path) -> None:
    """An exporter's dynamic-size arithmetic in float: Cast(H, FLOAT) * 0.7 -> Cast(INT64). In
    bf16, 602 would become 600 and 0.7 0.69921875: a height of 420 instead of 421."""
    case = Case(
        [
            node("Shape", ["x"], ["shape"]),
            node("Gather", ["shape", "two"], ["h"], axis=0),
            node("Cast", ["h"], ["hf"], to=F32),
            node("Mul", ["hf", "factor"], ["scaled"]),
            node("Cast", ["scaled"], ["h2"], to=I64),
            node("Unsqueeze", ["h2", "zero"], ["h2_1d"]),
            node("Concat", ["nc", "h2_1d", "w"], ["sizes"], axis=0),
            node("Resize", ["x", "", "", "sizes"], mode="nearest"),
        ],
        {"x": rand(1, 1, 602, 4)},
        constants={
            "two": np.int64(2),
            "factor": np.float32(0.7),
            "zero": ints(0),
            "nc": ints(1, 1),
            "w": ints(4),
        },
    )
    path = with_dim_param(case.save(tmp_path / "sizes.onnx"), 2, "H")
    assert parity(case, path, "bf16", atol=0.02).shape == (1, 1, 421, 4)


@pytest.mark.skipif(not BF16_ON_CPU, reason="oneDNN has no bf16 kernels for this CPU")
def test_an_integer_input_cast_to_float_is_computed_in_bf16(tmp_path: Path) -> None:
    """Only values that feed integers stay float32: a uint8 image cast to float feeds a Conv whose
    weights are bf16, which takes bf16 input only."""
    case = Case(
        [
            node("Cast", ["x"], ["xf"], to=F32),
            node("Sub", ["xf", "mean"], ["centred"]),
            node("Conv", ["centred", "w"]),
        ],
        {"x": RNG.integers(0, 256, (1, 3, 8, 8)).astype(np.uint8)},
        constants={"mean": np.float32(127.5), "w": rand(4, 3, 3, 3) / 64},
    )
    parity(case, case.save(tmp_path / "uint8.onnx"), "bf16", atol=0.05)


@pytest.mark.parametrize(
    ("op", "attrs", "match"),
    [
        ("Concat", {}, r"has no 'axis' attribute, which Concat requires"),
        ("Cast", {}, r"has no 'to' attribute"),
        ("LRN", {}, r"has no 'size' attribute"),
        ("MaxPool", {}, r"has no 'kernel_shape' attribute"),
        ("Cast", {"to": "float"}, r"has an invalid attribute: invalid literal for int"),
    ],
)
def test_a_malformed_node_is_a_load_error_naming_it(
    tmp_path: Path, op: str, attrs: dict[str, Any], match: str
) -> None:
    case = Case([node(op, ["x"], name="bad", **attrs)], {"x": rand(1, 2, 3, 3)})
    with pytest.raises(ModelLoadError, match=rf"node 'bad' \({op}\) {match}") as info:
        Engine.load(case.save(tmp_path / "bad.onnx"), backend="torch", backend_options=CPU)
    assert "onnx.checker.check_model" in str(info.value)


def test_unsupported_operators_are_named_at_load(tmp_path: Path) -> None:
    case = Case(
        [
            node("TopK", ["x", "k"], ["values", "indices"], name="top"),
            node("Relu", ["values"], ["r"], name="relu"),
            node("NonZero", ["r"], ["y"], name="nz1"),
            helper.make_node("FusedConv", ["r"], ["z"], name="ms", domain="com.microsoft"),
        ],
        {"x": rand(2, 5)},
        outputs={"y": I64, "z": F32, "indices": I64},
        constants={"k": ints(3)},
    )
    path = case.save(tmp_path / "unsupported.onnx")
    with pytest.raises(ModelLoadError) as info:
        Engine.load(path, backend="torch", backend_options=CPU)
    message = str(info.value)
    for part in ("NonZero", "TopK", "com.microsoft.FusedConv", "'top'", "'nz1'", "'ms'"):
        assert part in message
    assert "'relu'" not in message
    assert "backend='onnxruntime'" in message


def test_unsupported_attribute_values_are_named_at_load(tmp_path: Path) -> None:
    case = Case(
        [
            node("Resize", ["x", "", "s"], ["r"], mode="cubic", name="up"),
            node("LRN", ["r"], size=4, name="norm"),
        ],
        {"x": rand(1, 2, 3, 3)},
        constants={"s": np.array([1, 1, 2, 2], np.float32)},
    )
    with pytest.raises(ModelLoadError, match=r"'up' \(Resize\): mode='cubic'.*'norm' \(LRN\)"):
        Engine.load(case.save(tmp_path / "variants.onnx"), backend="torch", backend_options=CPU)


def test_old_opsets_are_refused(tmp_path: Path) -> None:
    case = Case([node("Relu", ["x"])], {"x": rand(2)}, opset=6)
    with pytest.raises(ModelLoadError, match="opset 6"):
        Engine.load(case.save(tmp_path / "old.onnx"), backend="torch", backend_options=CPU)


def test_a_graph_reading_a_missing_tensor_is_a_load_error(tmp_path: Path) -> None:
    path = Case([node("Add", ["x", "nowhere"])], {"x": rand(2)}).save(tmp_path / "broken.onnx")
    with pytest.raises(ModelLoadError, match="'nowhere'") as info:
        Engine.load(path, backend="torch", backend_options=CPU)
    assert info.value.__cause__ is not None


def test_missing_onnx_package_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = Case([node("Relu", ["x"])], {"x": rand(2)}).save(tmp_path / "relu.onnx")
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` now raises ImportError
    with pytest.raises(MissingDependencyError, match=r'pip install "unifer-torch\[onnx\]"'):
        Engine.load(path, backend="torch", backend_options=CPU)


def test_the_source_file_is_not_modified(tmp_path: Path) -> None:
    path = CASES["conv-pads-asymmetric"].save(tmp_path / "conv.onnx")
    before = path.read_bytes()
    with Engine.load(path, backend="torch", backend_options=CPU) as engine:
        engine.run(CASES["conv-pads-asymmetric"].feeds)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conv.onnx"]
