"""The wire-level ONNX reader (inputs, outputs, operator types) against the onnx package's own
parser, on varied graphs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from unifer import models
from unifer._onnx_io import OnnxFormatError, ValueInfo, read_graph_io, stored_precision

_KINDS = {
    "tensor_type": "tensor",
    "sequence_type": "sequence",
    "map_type": "map",
    "sparse_tensor_type": "sparse_tensor",
    "optional_type": "optional",
}


def expected(value: onnx.ValueInfoProto) -> ValueInfo:
    """What the reader must return, computed with onnx's protobuf classes."""
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        return ValueInfo(value.name, _KINDS.get(str(kind), "undeclared"), 0, None)
    tensor = value.type.tensor_type
    shape = None
    if tensor.HasField("shape"):
        dims: list[int | str | None] = []
        for dim in tensor.shape.dim:
            if dim.HasField("dim_value"):
                dims.append(dim.dim_value if dim.dim_value >= 0 else None)
            else:
                dims.append(dim.dim_param or None)
        shape = tuple(dims)
    return ValueInfo(value.name, "tensor", tensor.elem_type, shape)


def assert_reads_like_onnx(path: Path) -> None:
    model = onnx.load(str(path), load_external_data=False)
    initializers = {t.name for t in model.graph.initializer}
    got = read_graph_io(path)
    assert got.inputs == tuple(expected(v) for v in model.graph.input if v.name not in initializers)
    assert got.outputs == tuple(expected(v) for v in model.graph.output)


def save(path: Path, graph: onnx.GraphProto, **kwargs: object) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path), **kwargs)  # type: ignore[arg-type]
    return path


def test_arcface_with_hundreds_of_initializers(tmp_path: Path) -> None:
    path = tmp_path / "arcface.onnx"
    onnx.save(models.build("arcface-tiny", dynamic_batch=True), path)
    assert_reads_like_onnx(path)
    io = read_graph_io(path)
    assert io.inputs == (ValueInfo("input.1", "tensor", TensorProto.FLOAT, ("N", 3, 112, 112)),)
    assert io.outputs == (ValueInfo("embedding", "tensor", TensorProto.FLOAT, ("N", 512)),)


def test_every_kind_of_dimension_type_and_value(tmp_path: Path) -> None:
    unknown = helper.make_tensor_value_info("unknown_dims", TensorProto.INT64, [None, 2])
    minus_one = helper.make_tensor_value_info("minus_one", TensorProto.FLOAT, [1, 1])
    minus_one.type.tensor_type.shape.dim[0].dim_value = -1  # some exporters write -1 for unknown
    big = helper.make_tensor_value_info("big", TensorProto.UINT8, [2**40, 3])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "dims",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["batch", 3, "h", 7]),
            helper.make_tensor_value_info("scalar", TensorProto.BOOL, []),
            helper.make_tensor_value_info("no_shape", TensorProto.DOUBLE, None),
            unknown,
            minus_one,
            big,
            helper.make_tensor_sequence_value_info("seq", TensorProto.FLOAT, [2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["batch", 3, "h", 7])],
    )
    path = save(tmp_path / "dims.onnx", graph)
    assert_reads_like_onnx(path)
    io = read_graph_io(path)
    shapes = {v.name: v.shape for v in io.inputs}
    assert shapes == {
        "x": ("batch", 3, "h", 7),
        "scalar": (),
        "no_shape": None,
        "unknown_dims": (None, 2),
        "minus_one": (None, 1),
        "big": (2**40, 3),
        "seq": None,
    }
    assert [v.kind for v in io.inputs][-1] == "sequence"


def test_initializers_listed_as_inputs_and_external_data(tmp_path: Path) -> None:
    weights = np.ones((64, 64), np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "ir3",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64]),
            helper.make_tensor_value_info("w", TensorProto.FLOAT, [64, 64]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
        [numpy_helper.from_array(weights, "w")],
    )
    inline = save(tmp_path / "inline.onnx", graph)
    external = save(
        tmp_path / "external.onnx",
        graph,
        save_as_external_data=True,
        location="external.bin",
        size_threshold=0,
    )
    for path in (inline, external):
        assert_reads_like_onnx(path)
        assert [v.name for v in read_graph_io(path).inputs] == ["x"]


def qdq_graph(*, activations: bool) -> onnx.GraphProto:
    """``y = x @ dequantize(w)``, with x quantized and dequantized first when ``activations``
    (the QDQ form of a quantize_static model)."""
    weight = numpy_helper.from_array(np.ones((4, 2), np.int8), "w_q")
    nodes = [
        helper.make_node("DequantizeLinear", ["w_q", "s"], ["w"]),
        helper.make_node("MatMul", ["x_dq" if activations else "x", "w"], ["y"]),
    ]
    if activations:
        nodes[:0] = [
            helper.make_node("QuantizeLinear", ["x", "s"], ["x_q"]),
            helper.make_node("DequantizeLinear", ["x_q", "s"], ["x_dq"]),
        ]
    return helper.make_graph(
        nodes,
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [weight, numpy_helper.from_array(np.array(0.1, np.float32), "s")],
    )


def test_stored_precision_tells_quantized_and_half_models(tmp_path: Path) -> None:
    half = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["x16"], to=TensorProto.FLOAT16),
         helper.make_node("MatMul", ["x16", "w"], ["y16"]),
         helper.make_node("Cast", ["y16"], ["y"], to=TensorProto.FLOAT)],
        "half",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [numpy_helper.from_array(np.ones((4, 2), np.float16), "w")],
    )  # fmt: skip
    cases = {
        "qdq": (qdq_graph(activations=True), "int8"),
        # Weights stored in int8 and dequantized: computed in float, as ONNX defines it.
        "weights_only": (qdq_graph(activations=False), "fp32"),
        "half": (half, "fp16"),
        "plain": (helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "plain",
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]), "fp32"),
    }  # fmt: skip
    for name, (graph, precision) in cases.items():
        assert stored_precision(read_graph_io(save(tmp_path / f"{name}.onnx", graph))) == precision


@pytest.mark.parametrize(
    ("data", "match"),
    [(b"", "empty"), (b"<html>404</html>", "not|no graph"), (b"\x3a\xff\xff\xff\x0f", "truncated")],
)
def test_broken_files_raise_onnx_format_error(tmp_path: Path, data: bytes, match: str) -> None:
    path = tmp_path / "broken.onnx"
    path.write_bytes(data)
    with pytest.raises(OnnxFormatError, match=match):
        read_graph_io(path)


def test_truncated_model_raises_onnx_format_error(tmp_path: Path) -> None:
    path = tmp_path / "arcface.onnx"
    onnx.save(models.build("arcface-tiny"), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(OnnxFormatError, match="truncated"):
        read_graph_io(path)


def test_op_types_include_those_of_subgraphs(tmp_path: Path) -> None:
    """Every operator type, as onnx reads them, subgraphs of If (and Loop, Scan) included."""
    branch = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"])],
        "then",
        [],
        [helper.make_tensor_value_info("r", TensorProto.FLOAT, [2])],
    )
    other = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["n"])],
        "else",
        [],
        [helper.make_tensor_value_info("n", TensorProto.FLOAT, [2])],
    )
    graph = helper.make_graph(
        [
            helper.make_node("Greater", ["x", "zero"], ["positive"]),
            helper.make_node("ReduceMin", ["positive_f"], ["any"], keepdims=0),
            helper.make_node("Cast", ["positive"], ["positive_f"], to=TensorProto.FLOAT),
            helper.make_node("Cast", ["any"], ["cond"], to=TensorProto.BOOL),
            helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=other),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        [numpy_helper.from_array(np.zeros(2, np.float32), "zero")],
    )
    path = tmp_path / "if.onnx"
    onnx.save(helper.make_model(graph), path)
    assert read_graph_io(path).op_types == {"Greater", "ReduceMin", "Cast", "If", "Relu", "Neg"}
    arcface = tmp_path / "arcface.onnx"
    onnx.save(models.build("arcface-tiny"), arcface)
    expected = {node.op_type for node in onnx.load(arcface).graph.node}
    assert read_graph_io(arcface).op_types == expected
