"""The plugin's ONNX -> TFLite converter, checked against onnxruntime on the ONNX source.

Each graph below exercises one path of the layout bookkeeping (NCHW in and out, NHWC inside):
explicit pads that TFLite's SAME cannot express, depthwise convolutions, per-channel constants,
Flatten before a Gemm, a Transpose that only relabels, an input passed through as an output.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from ai_edge_litert.interpreter import Interpreter, OpResolverType
from onnx import TensorProto, helper, numpy_helper

from unifer import Engine, ModelLoadError, models
from unifer.backend import SessionOptions
from unifer_litert import LiteRTBackend
from unifer_litert._convert import SUPPORTED_OPS, WRITER_VERSION

F32 = np.float32
RNG = np.random.default_rng(0)


def weights(*shape: int, scale: float = 0.5) -> np.ndarray:
    return (RNG.standard_normal(shape) * scale).astype(F32)


def save(
    path: Path,
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[onnx.ValueInfoProto],
    outputs: Sequence[onnx.ValueInfoProto],
    initializers: dict[str, np.ndarray],
) -> Path:
    graph = helper.make_graph(
        list(nodes),
        path.stem,
        list(inputs),
        list(outputs),
        [numpy_helper.from_array(v, k) for k, v in initializers.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def f32(name: str, shape: Sequence[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def convert(source: Path) -> Path:
    out = source.parent / "converted"
    out.mkdir(exist_ok=True)
    return LiteRTBackend().convert(source, out, SessionOptions())


def compare(source: Path, feeds: dict[str, np.ndarray], *, xnnpack: bool = True) -> None:
    """The converted model matches onnxruntime on ``feeds``, output by output, by name."""
    want = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"]).run(None, feeds)
    names = [o.name for o in onnx.load(str(source)).graph.output]
    options = {"litert": {"xnnpack": xnnpack}}
    with Engine.load(convert(source), backend="litert", backend_options=options) as engine:
        assert [s.name for s in engine.inputs] == list(feeds)
        assert [s.name for s in engine.outputs] == names
        got = engine.run(feeds)
    for name, expected in zip(names, want, strict=True):
        assert got[name].shape == expected.shape, name
        np.testing.assert_allclose(got[name], expected, rtol=1e-4, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("xnnpack", [True, False])
def test_convolutions_pads_and_per_channel_ops(tmp_path: Path, xnnpack: bool) -> None:
    init = {
        "w1": weights(8, 3, 3, 3),
        "b1": weights(8),
        "slope": RNG.uniform(0.1, 0.3, (8, 1, 1)).astype(F32),
        "w2": weights(8, 1, 3, 3),  # depthwise
        "gamma": RNG.uniform(0.5, 1.5, 8).astype(F32),
        "beta": weights(8),
        "mean": weights(8),
        "var": RNG.uniform(0.5, 2, 8).astype(F32),
        "w3": weights(8, 8, 1, 1),
        "shift": weights(8, 1, 1),
    }
    nodes = [
        # stride 2 with pads 1/1: TFLite's SAME would pad 0/1 here, so an explicit PAD is needed.
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("PRelu", ["c1", "slope"], ["p1"]),
        # stride 1, pads 1: exactly SAME. Depthwise, no bias, dilation 2 with pads 2.
        helper.make_node(
            "Conv", ["p1", "w2"], ["c2"], group=8, pads=[2, 2, 2, 2], dilations=[2, 2]
        ),
        helper.make_node("BatchNormalization", ["c2", "gamma", "beta", "mean", "var"], ["bn"]),
        helper.make_node("Relu", ["bn"], ["r"]),
        helper.make_node("Conv", ["r", "w3"], ["c3"]),  # 1x1, VALID
        helper.make_node("Add", ["c3", "p1"], ["sum"]),  # two NHWC tensors
        helper.make_node("Add", ["sum", "shift"], ["shifted"]),  # an NCHW constant [C,1,1]
        helper.make_node("Mul", ["shifted", "half"], ["y"]),  # a scalar constant
    ]
    init["half"] = np.array(0.5, F32)
    source = save(
        tmp_path / "convs.onnx",
        nodes,
        [f32("x", ["N", 3, 15, 16])],
        [f32("y", ["N", 8, 8, 8])],
        init,
    )
    x = RNG.standard_normal((2, 3, 15, 16)).astype(F32)
    compare(source, {"x": x}, xnnpack=xnnpack)


def test_flatten_gemm_and_matmul(tmp_path: Path) -> None:
    init = {
        "w": weights(4, 2, 1, 1),
        "g": weights(4 * 3 * 3, 6),  # transB=0
        "c": weights(1, 6),
        "m": weights(6, 5),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["conv"]),
        # Flatten is channel-major (C, H, W): the NHWC conv output must be put back first.
        helper.make_node("Flatten", ["conv"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "g", "c"], ["gemm"], alpha=0.5, beta=2.0),
        helper.make_node("MatMul", ["gemm", "m"], ["y"]),
    ]
    source = save(
        tmp_path / "head.onnx", nodes, [f32("x", ["N", 2, 3, 3])], [f32("y", ["N", 5])], init
    )
    compare(source, {"x": RNG.standard_normal((3, 2, 3, 3)).astype(F32)})


def test_transposes_relabel_and_outputs_keep_onnx_layout(tmp_path: Path) -> None:
    nodes = [
        # An NHWC input turned NCHW for the conv, as TensorFlow-exported ONNX models do.
        helper.make_node("Transpose", ["image"], ["chw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["chw", "w"], ["features"]),
        # An NHWC output of an NHWC-stored tensor: no data needs to move at all.
        helper.make_node("Transpose", ["features"], ["nhwc"], perm=[0, 2, 3, 1]),
        helper.make_node("Identity", ["image"], ["echo"]),  # an input passed through
    ]
    source = save(
        tmp_path / "layouts.onnx",
        nodes,
        [f32("image", [1, 5, 6, 3])],
        [f32("features", [1, 4, 5, 6]), f32("nhwc", [1, 5, 6, 4]), f32("echo", [1, 5, 6, 3])],
        {"w": weights(4, 3, 1, 1)},
    )
    compare(source, {"image": RNG.standard_normal((1, 5, 6, 3)).astype(F32)})


def test_arcface_layout_costs_two_transposes(tmp_path: Path) -> None:
    onnx_path, _ = models.resolve("builtin:arcface-tiny")
    tflite = convert_into(tmp_path / "out", onnx_path)
    interpreter = Interpreter(
        model_path=str(tflite),
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    ops = [op["op_name"] for op in interpreter._get_ops_details()]
    # One after the NCHW input, one before Flatten; everything between stays NHWC.
    assert ops.count("TRANSPOSE") == 2
    census = {name: ops.count(name) for name in set(ops)}
    assert census["CONV_2D"] == 17  # arcface-tiny: stem + 6 units x 2 + 4 stride-2 shortcuts
    assert census["PRELU"] == 7
    assert census["FULLY_CONNECTED"] == 1


def convert_into(directory: Path, source: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return LiteRTBackend().convert(source, directory, SessionOptions())


def test_conversion_is_deterministic(tmp_path: Path) -> None:
    onnx_path, _ = models.resolve("builtin:arcface-tiny")
    first = convert_into(tmp_path / "a", onnx_path)
    second = convert_into(tmp_path / "b", onnx_path)
    assert first.read_bytes() == second.read_bytes()
    assert first.name == f"{onnx_path.stem}.tflite"


def test_engine_converts_onnx_when_litert_is_named(tmp_path: Path) -> None:
    onnx_path, _ = models.resolve("builtin:arcface-tiny")
    model = tmp_path / "face.onnx"
    model.write_bytes(onnx_path.read_bytes())
    with Engine.load(model, backend="litert") as engine:
        conversion = engine.settings["conversion"]
        assert isinstance(conversion, dict)
        assert conversion["converter"] == LiteRTBackend().converter_version(SessionOptions())
        assert conversion["check"]["passed"] is True
        # The ONNX project's own runtime is the reference, as for auto and the bench.
        assert conversion["check"]["reference"] == "onnxruntime"
        assert Path(conversion["path"]).suffix == ".tflite"
        assert engine.run({"input.1": np.zeros((1, 3, 112, 112), F32)})["embedding"].shape == (
            1,
            512,
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["face.onnx"]


def test_converter_version_names_the_writer() -> None:
    assert (
        LiteRTBackend()
        .converter_version(SessionOptions())
        .endswith(f"onnx->tflite {WRITER_VERSION}")
    )


def test_unsupported_operator_is_refused_with_the_list(tmp_path: Path) -> None:
    # LRN (AlexNet, ZFNet, Inception v1) has no exact TFLite counterpart for ONNX's definition.
    source = save(
        tmp_path / "lrn.onnx",
        [helper.make_node("LRN", ["x"], ["y"], size=3)],
        [f32("x", [1, 4, 2, 2])],
        [f32("y", [1, 4, 2, 2])],
        {},
    )
    with pytest.raises(ModelLoadError, match="operator LRN") as info:
        convert(source)
    message = str(info.value)
    assert all(op in message for op in SUPPORTED_OPS)
    assert "onnx2tf" in message


def test_unsupported_dtype_and_corrupt_files_are_refused(tmp_path: Path) -> None:
    half = helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 4])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 4])
    source = save(
        tmp_path / "half.onnx", [helper.make_node("Relu", ["x"], ["y"])], [half], [out], {}
    )
    with pytest.raises(ModelLoadError, match="element type 10"):
        convert(source)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x08\x07garbage" * 10)
    with pytest.raises(ModelLoadError, match="broken.onnx") as info:
        convert(broken)
    assert info.value.__cause__ is not None


def test_constants_that_add_leading_dimensions_keep_them(tmp_path: Path) -> None:
    """ONNX broadcasting gives the result the rank of the widest operand, the constant included:
    [N, 6] + [1, 1, 6] is [1, N, 6], which TFLite computes only if the 1s are written."""
    nodes = [
        helper.make_node("Add", ["x", "c3"], ["added"]),
        helper.make_node("Mul", ["x", "scalar3"], ["scaled"]),
        helper.make_node("Sub", ["wide", "x"], ["wider"]),
        # The nn.Linear pattern with a bias of rank 3.
        helper.make_node("MatMul", ["x", "w"], ["m"]),
        helper.make_node("Add", ["m", "b3"], ["linear"]),
    ]
    init = {
        "c3": weights(1, 1, 6),
        "scalar3": weights(1, 1, 1),
        "wide": weights(2, 1, 6),
        "w": weights(6, 5),
        "b3": weights(1, 1, 5),
    }
    outputs = [
        f32("added", [1, "N", 6]),
        f32("scaled", [1, "N", 6]),
        f32("wider", [2, "N", 6]),
        f32("linear", [1, "N", 5]),
    ]
    source = save(tmp_path / "rank_up.onnx", nodes, [f32("x", ["N", 6])], outputs, init)
    compare(source, {"x": RNG.standard_normal((3, 6)).astype(F32)})


def test_every_form_of_constant_is_folded(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("Constant", [], ["target"], value_ints=[-1, 8]),
        helper.make_node("Reshape", ["x", "target"], ["flat"]),
        helper.make_node("Constant", [], ["two"], value_float=2.0),
        helper.make_node("Mul", ["flat", "two"], ["doubled"]),
        helper.make_node("Constant", [], ["ramp"], value_floats=[0.25 * i for i in range(8)]),
        helper.make_node("Add", ["doubled", "ramp"], ["shifted"]),
        helper.make_node("Constant", [], ["three"], value_int=3),
        helper.make_node("Cast", ["three"], ["three_f"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["shifted", "three_f"], ["y"]),
        helper.make_node("Constant", [], ["label"], value_string="unused"),
    ]
    source = save(
        tmp_path / "constants.onnx", nodes, [f32("x", ["N", 2, 2, 2])], [f32("y", ["N", 8])], {}
    )
    compare(source, {"x": RNG.standard_normal((2, 2, 2, 2)).astype(F32)})


def test_other_domains_are_refused_only_where_a_node_uses_one(tmp_path: Path) -> None:
    """PyTorch's dynamo exporter lists its onnxscript libraries (after the default domain, at
    version 1) in plain CNNs whose nodes are all standard; the opset is the default domain's."""
    nodes = [helper.make_node("Clip", ["x", "low", "high"], ["y"])]  # bounds as inputs: opset 11+
    graph = helper.make_graph(
        nodes,
        "clip",
        [f32("x", ["N", 4])],
        [f32("y", ["N", 4])],
        [numpy_helper.from_array(np.array(v, F32), n) for n, v in (("low", -0.5), ("high", 0.3))],
    )
    domains = [helper.make_opsetid("", 18), helper.make_opsetid("pkg.onnxscript.torch_lib", 1)]
    model = helper.make_model(graph, opset_imports=domains)
    model.ir_version = 8
    source = tmp_path / "dynamo.onnx"
    onnx.save(model, source)
    compare(source, {"x": RNG.standard_normal((3, 4)).astype(F32)})

    model.graph.node[0].domain = "pkg.onnxscript.torch_lib"
    onnx.save(model, source)
    with pytest.raises(ModelLoadError, match=r"operator Clip \(node 'y'\) is not supported"):
        convert(source)


def test_a_model_that_cannot_run_at_its_dynamic_sizes_default_says_so(tmp_path: Path) -> None:
    """LiteRT prepares a model at load with each dynamic dimension at 1: a valid 3x3 convolution
    on an image of dynamic H and W fails there. The error says that, not 're-download'."""
    source = save(
        tmp_path / "valid.onnx",
        [helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3])],
        [f32("x", ["N", 3, "H", "W"])],
        [f32("y", ["N", 4, "h", "w"])],
        {"w": weights(4, 3, 3, 3)},
    )
    shown = r"dynamic dimension of its inputs \(x\[\?,3,\?,\?\]\) the size 1"
    with pytest.raises(ModelLoadError, match=shown):
        Engine.load(source, backend="litert")
