"""Small ONNX models with numpy references, built from code for tests (needs the ``onnx`` package).

Each :class:`ToyModel` carries the ONNX graph, a function that makes seeded feeds, and a numpy
implementation of the same computation, so a backend's numbers can be checked without trusting
another runtime.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import onnx

Feeds = dict[str, np.ndarray]

OPSET = 17
IR_VERSION = 8  # the oldest IR that opset 17 allows: readable by every runtime we support


@dataclass(frozen=True)
class ToyModel:
    """A test model: its graph, seeded feeds, and the numpy reference of its outputs."""

    name: str
    proto: onnx.ModelProto
    make_feeds: Callable[[np.random.Generator, int], Feeds]
    reference: Callable[[Feeds], Feeds]

    def save(self, directory: Path) -> Path:
        """Write the model as ``<directory>/<name>.onnx`` and return the path."""
        import onnx

        path = directory / f"{self.name}.onnx"
        onnx.save_model(self.proto, str(path))
        return path

    def feeds(self, batch: int = 1, seed: int = 0) -> Feeds:
        """Seeded inputs with the given batch size."""
        return self.make_feeds(np.random.default_rng(seed), batch)

    @property
    def input_dtypes(self) -> dict[str, np.dtype]:
        """The graph's declared input dtypes by name, in graph order."""
        return _dtypes(self.proto.graph.input)

    @property
    def output_dtypes(self) -> dict[str, np.dtype]:
        """The graph's declared output dtypes by name, in graph order: what a backend must return,
        whatever it advertises."""
        return _dtypes(self.proto.graph.output)


def _dtypes(values: Any) -> dict[str, np.dtype]:
    from onnx import helper

    return {
        v.name: np.dtype(helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type))
        for v in values
    }


def _finish(graph: Any) -> onnx.ModelProto:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def mlp(*, batch: str | int = "N", seed: int = 0) -> ToyModel:
    """``y = relu(x @ w1 + b1) @ w2``: input ``x`` float32 [batch, 8], output ``y`` [batch, 4]."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((8, 16)).astype(np.float32)
    b1 = rng.standard_normal(16).astype(np.float32)
    w2 = rng.standard_normal((16, 4)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h0"]),
            helper.make_node("Add", ["h0", "b1"], ["h1"]),
            helper.make_node("Relu", ["h1"], ["h2"]),
            helper.make_node("MatMul", ["h2", "w2"], ["y"]),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4])],
        initializer=[
            numpy_helper.from_array(w1, "w1"),
            numpy_helper.from_array(b1, "b1"),
            numpy_helper.from_array(w2, "w2"),
        ],
    )

    def make_feeds(rng: np.random.Generator, n: int) -> Feeds:
        return {"x": rng.standard_normal((n, 8)).astype(np.float32)}

    def reference(feeds: Feeds) -> Feeds:
        hidden = np.maximum(feeds["x"] @ w1 + b1, 0)
        return {"y": (hidden @ w2).astype(np.float32)}

    return ToyModel("mlp", _finish(graph), make_feeds, reference)


def int8_weights(*, batch: str | int = "N", seed: int = 0) -> ToyModel:
    """``y = x @ dequantize(w)``: int8 weights with one scale per column and float32 activations
    (weight-only quantization, as compressed exports store weights), ``x`` [batch, 32] -> ``y``
    [batch, 16]. fp32 computes it exactly; a runtime that fuses the DequantizeLinear into an int8
    kernel may quantize ``x`` too (onnxruntime's MatMulNBits and OpenVINO's dynamic quantization
    do by default: ~6e-3 of the output's scale off)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = rng.integers(-127, 128, size=(32, 16)).astype(np.int8)
    scale = (rng.random(16) * 0.01 + 0.001).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("DequantizeLinear", ["w_int8", "scale"], ["w"], axis=1),
            helper.make_node("MatMul", ["x", "w"], ["y"]),
        ],
        "int8_weights",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 16])],
        initializer=[
            numpy_helper.from_array(weights, "w_int8"),
            numpy_helper.from_array(scale, "scale"),
        ],
    )

    def make_feeds(rng: np.random.Generator, n: int) -> Feeds:
        return {"x": rng.standard_normal((n, 32)).astype(np.float32)}

    def reference(feeds: Feeds) -> Feeds:
        exact = feeds["x"].astype(np.float64) @ (weights * scale.astype(np.float64))
        return {"y": exact.astype(np.float32)}

    return ToyModel("int8_weights", _finish(graph), make_feeds, reference)


#: What :func:`multi_io` with ``wide_int64=True`` draws ``k`` from: far beyond int32, within
#: int64 with room for ``k + 1``, and beyond float64's 53-bit integers.
WIDE_INT64 = 2**62


def multi_io(*, wide_int64: bool = False) -> ToyModel:
    """Three inputs (two float32, one int64) sharing a dynamic batch, three outputs.

    ``k`` is drawn from [-1000, 1000) by default. ``wide_int64=True`` draws it from
    [-2**62, 2**62) with its first value beyond the int32 range (and a batch of 2 or more has a
    negative one too), so a runtime that computes int64 in int32 or float64 returns wrong numbers
    instead of passing by luck.
    """
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("Add", ["a", "b"], ["sum"]),
            helper.make_node("Mul", ["a", "b"], ["product"]),
            helper.make_node("Add", ["k", "one"], ["k_plus_one"]),
        ],
        "multi_io",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("k", TensorProto.INT64, ["N"]),
        ],
        [
            helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("product", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("k_plus_one", TensorProto.INT64, ["N"]),
        ],
        initializer=[numpy_helper.from_array(np.array(1, dtype=np.int64), "one")],
    )

    def make_feeds(rng: np.random.Generator, n: int) -> Feeds:
        return {
            "a": rng.standard_normal((n, 3)).astype(np.float32),
            "b": rng.standard_normal((n, 3)).astype(np.float32),
            "k": _int64s(rng, n) if wide_int64 else rng.integers(-1000, 1000, n, dtype=np.int64),
        }

    def reference(feeds: Feeds) -> Feeds:
        return {
            "sum": feeds["a"] + feeds["b"],
            "product": feeds["a"] * feeds["b"],
            "k_plus_one": feeds["k"] + 1,
        }

    return ToyModel("multi_io", _finish(graph), make_feeds, reference)


def _int64s(rng: np.random.Generator, n: int) -> np.ndarray:
    k = rng.integers(-WIDE_INT64, WIDE_INT64, size=n, dtype=np.int64)
    # Whatever the seed: one value beyond int32 and float64's exact integers (int32 would keep its
    # low bits, 3; float64 would round it), and one just beyond int32 on the negative side.
    if n:
        k[0] = 2**60 + 2**40 + 3
    if n > 1:
        k[-1] = -(2**35) - 7
    return k


def passthrough(*, constant_output: bool = True) -> ToyModel:
    """Outputs a runtime may hand back without computing them: ``x`` float32 [batch, 4] in;
    ``same`` (Identity of ``x``), ``constant`` (a Constant node, float32 [4]) and ``scaled``
    (``x * 2``) out. A backend that returns the caller's feed, a cached constant or a reused
    output buffer shows up as shared memory between results and feeds or earlier results.
    ``constant_output=False`` leaves ``constant`` out, for formats that cannot output a constant.
    """
    from onnx import TensorProto, helper, numpy_helper

    constant = np.array([1.5, -2.0, 0.25, 8.0], dtype=np.float32)
    nodes = [
        helper.make_node("Identity", ["x"], ["same"]),
        helper.make_node("Constant", [], ["constant"], value=numpy_helper.from_array(constant)),
        helper.make_node("Mul", ["x", "two"], ["scaled"]),
    ]
    outputs = [
        helper.make_tensor_value_info("same", TensorProto.FLOAT, ["N", 4]),
        helper.make_tensor_value_info("constant", TensorProto.FLOAT, [4]),
        helper.make_tensor_value_info("scaled", TensorProto.FLOAT, ["N", 4]),
    ]
    if not constant_output:
        del nodes[1], outputs[1]
    graph = helper.make_graph(
        nodes,
        "passthrough",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        outputs,
        initializer=[numpy_helper.from_array(np.array(2, dtype=np.float32), "two")],
    )

    def make_feeds(rng: np.random.Generator, n: int) -> Feeds:
        return {"x": rng.standard_normal((n, 4)).astype(np.float32)}

    def reference(feeds: Feeds) -> Feeds:
        want = {"same": feeds["x"].copy(), "constant": constant.copy(), "scaled": feeds["x"] * 2}
        if not constant_output:
            del want["constant"]
        return want

    return ToyModel("passthrough", _finish(graph), make_feeds, reference)


def image_conv(*, size: int = 16, layout: str = "nchw", seed: int = 0) -> ToyModel:
    """A 1x1 convolution over a 3-channel image, like the first layer of a vision model.

    ``layout="nhwc"`` takes ``[1, size, size, 3]`` and transposes inside the graph, as models
    exported from TensorFlow do.
    """
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((4, 3, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["chw", "w"], ["features"])]
    if layout == "nhwc":
        in_shape = [1, size, size, 3]
        nodes.insert(0, helper.make_node("Transpose", ["image"], ["chw"], perm=[0, 3, 1, 2]))
    else:
        in_shape = [1, 3, size, size]
        nodes.insert(0, helper.make_node("Identity", ["image"], ["chw"]))
    graph = helper.make_graph(
        nodes,
        f"image_conv_{layout}",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, 4, size, size])],
        initializer=[numpy_helper.from_array(weight, "w")],
    )

    def make_feeds(rng: np.random.Generator, n: int) -> Feeds:
        return {"image": rng.standard_normal(in_shape).astype(np.float32)}

    def reference(feeds: Feeds) -> Feeds:
        chw = feeds["image"] if layout == "nchw" else feeds["image"].transpose(0, 3, 1, 2)
        out = np.einsum("oc,nchw->nohw", weight[:, :, 0, 0], chw)
        return {"features": out.astype(np.float32)}

    return ToyModel(f"image_conv_{layout}", _finish(graph), make_feeds, reference)
