"""The ONNX -> ncnn writer: each supported operator against onnxruntime, and clear refusals."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from unifer import MissingDependencyError, ModelLoadError
from unifer.backend import Converter, SessionOptions
from unifer_ncnn import NcnnBackend
from unifer_ncnn._param import read

RNG = np.random.default_rng(0)


def f32(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def save(
    directory: Path,
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[tuple[str, list[int | str]]],
    outputs: Sequence[str],
    initializers: dict[str, np.ndarray] | None = None,
    *,
    name: str = "model",
) -> Path:
    """An opset-17 ONNX file; output shapes are left to shape inference."""
    graph = helper.make_graph(
        list(nodes),
        name,
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [onnx.ValueInfoProto(name=n) for n in outputs],
        [numpy_helper.from_array(v, k) for k, v in (initializers or {}).items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)  # types the outputs
    onnx.checker.check_model(model)
    path = directory / f"{name}.onnx"
    onnx.save(model, str(path))
    return path


#: These tests are about unifer's own writer: the "auto" route would hand what it refuses to pnnx.
WRITER = SessionOptions(extra={"converter": "unifer"})


def convert(source: Path) -> Path:
    out = source.parent / f"{source.stem}-ncnn"
    out.mkdir()
    return NcnnBackend().convert(source, out, WRITER)


def assert_parity(source: Path, feeds: dict[str, np.ndarray], atol: float = 1e-5) -> Path:
    """Convert ``source``, run both, and compare every output; returns the .param."""
    ort = pytest.importorskip("onnxruntime")
    reference = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    names = [o.name for o in reference.get_outputs()]
    want = dict(zip(names, reference.run(None, feeds), strict=True))
    param = convert(source)
    session = NcnnBackend().open(param, SessionOptions(threads=1))
    try:
        got = session.run(feeds)
        assert [s.name for s in session.outputs] == names
        for name in names:
            assert got[name].shape == want[name].shape, name
            np.testing.assert_allclose(got[name], want[name], atol=atol, rtol=1e-5, err_msg=name)
    finally:
        session.close()
    return param


# -- the protocol and the files -------------------------------------------------------------------


def test_backend_is_a_converter() -> None:
    backend = NcnnBackend()
    assert isinstance(backend, Converter)
    assert backend.converts_from == (".onnx",)
    assert backend.converter_version(WRITER).startswith("unifer_ncnn.onnx2ncnn/")


def test_writes_param_and_bin_into_out_dir_only(tmp_path: Path) -> None:
    source = save(tmp_path, [helper.make_node("Relu", ["x"], ["y"])], [("x", ["N", 4])], ["y"])
    param = convert(source)
    assert param == tmp_path / "model-ncnn" / "model.param"
    assert sorted(p.name for p in param.parent.iterdir()) == [
        "model.bin",
        "model.converter.json",  # which route wrote it
        "model.param",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model-ncnn", "model.onnx"]


def test_weights_are_fp32_with_the_storage_tag(tmp_path: Path) -> None:
    """The .bin is exactly: tag 0 + fp32 weight, raw fp32 bias (ncnn's model file layout)."""
    w, b = f32(3, 2), f32(3)
    source = save(
        tmp_path,
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)],
        [("x", ["N", 2])],
        ["y"],
        {"w": w, "b": b},
    )
    param = convert(source)
    data = param.with_suffix(".bin").read_bytes()
    assert data == b"\0\0\0\0" + w.astype("<f4").tobytes() + b.astype("<f4").tobytes()


def test_arcface_tiny_layers(arcface_tiny: object) -> None:
    graph = read(arcface_tiny.param)  # type: ignore[attr-defined]
    assert graph.inputs == (("input.1", (3, 112, 112)),)
    assert graph.outputs == ("embedding",)
    types = {layer.type for layer in graph.layers}
    assert types == {
        "Input", "Convolution", "BatchNorm", "PReLU", "BinaryOp", "Split", "Flatten",
        "InnerProduct",
    }  # fmt: skip


# -- operators against onnxruntime ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("pads", "strides", "group", "dilations", "size"),
    [
        ((1, 1, 1, 1), (1, 1), 1, (1, 1), 7),
        ((0, 1, 2, 1), (2, 2), 1, (1, 1), 9),  # asymmetric padding, stride 2
        ((1, 1, 1, 1), (1, 1), 4, (1, 1), 6),  # grouped
        ((1, 1, 1, 1), (1, 1), 8, (1, 1), 5),  # depthwise
        ((2, 2, 2, 2), (1, 1), 1, (2, 2), 8),  # dilated
    ],
)
def test_conv(
    tmp_path: Path,
    pads: tuple[int, ...],
    strides: tuple[int, int],
    group: int,
    dilations: tuple[int, int],
    size: int,
) -> None:
    source = save(
        tmp_path,
        [
            helper.make_node(
                "Conv",
                ["x", "w", "b"],
                ["y"],
                kernel_shape=[3, 3],
                pads=list(pads),
                strides=list(strides),
                group=group,
                dilations=list(dilations),
            )
        ],
        [("x", ["N", 8, size, size])],
        ["y"],
        {"w": f32(8, 8 // group, 3, 3), "b": f32(8)},
    )
    assert_parity(source, {"x": f32(2, 8, size, size)})


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
def test_conv_auto_pad_without_bias(tmp_path: Path, auto_pad: str) -> None:
    source = save(
        tmp_path,
        [
            helper.make_node(
                "Conv", ["x", "w"], ["y"], kernel_shape=[2, 2], strides=[2, 2], auto_pad=auto_pad
            )
        ],
        [("x", ["N", 3, 7, 7])],
        ["y"],
        {"w": f32(4, 3, 2, 2)},
    )
    assert_parity(source, {"x": f32(1, 3, 7, 7)})


@pytest.mark.parametrize("shape", [["N", 6], ["N", 6, 5], ["N", 6, 5, 3]])
def test_batchnorm_prelu_on_every_rank(tmp_path: Path, shape: list[int | str]) -> None:
    slope_shape = (6,) + (1,) * (len(shape) - 2)
    source = save(
        tmp_path,
        [
            helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["n"], epsilon=1e-3),
            helper.make_node("PRelu", ["n", "s"], ["y"]),
        ],
        [("x", shape)],
        ["y"],
        {
            "g": f32(6),
            "b": f32(6),
            "m": f32(6),
            "v": RNG.uniform(0.5, 2, 6).astype(np.float32),
            "s": RNG.uniform(0, 0.5, slope_shape).astype(np.float32),
        },
    )
    assert_parity(source, {"x": f32(3, *[int(d) for d in shape[1:]])})


@pytest.mark.parametrize(
    "node",
    [
        helper.make_node("Relu", ["x"], ["y"]),
        helper.make_node("LeakyRelu", ["x"], ["y"], alpha=0.2),
        helper.make_node("Sigmoid", ["x"], ["y"]),
        helper.make_node("Tanh", ["x"], ["y"]),
        helper.make_node("Identity", ["x"], ["y"]),
        helper.make_node("Dropout", ["x"], ["y"]),
        helper.make_node("PRelu", ["x", "one"], ["y"]),
    ],
    ids=lambda n: n.op_type + ("-scalar" if len(n.input) > 1 else ""),
)
def test_unary(tmp_path: Path, node: onnx.NodeProto) -> None:
    initializers = {"one": np.array([0.3], np.float32)} if "one" in node.input else None
    source = save(tmp_path, [node], [("x", ["N", 2, 3, 4])], ["y"], initializers)
    assert_parity(source, {"x": f32(2, 2, 3, 4)})


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
def test_binary_of_two_tensors(tmp_path: Path, op: str) -> None:
    node = helper.make_node(op, ["a", "b"], ["y"])
    source = save(tmp_path, [node], [("a", ["N", 3, 4, 5]), ("b", ["N", 3, 4, 5])], ["y"])
    assert_parity(source, {"a": f32(2, 3, 4, 5), "b": f32(2, 3, 4, 5) + 3.0})


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize(
    "constant",
    [np.float32(1.5), f32(5), f32(1, 3, 1, 1), f32(4, 5)],
    ids=["scalar", "last-axis", "channel", "plane"],
)
@pytest.mark.parametrize("constant_first", [False, True], ids=["x-op-c", "c-op-x"])
def test_binary_with_a_constant(
    tmp_path: Path, op: str, constant: np.ndarray, constant_first: bool
) -> None:
    if op == "Div":
        constant = np.abs(constant) + 1.0
    operands = ["c", "a"] if constant_first else ["a", "c"]
    source = save(
        tmp_path,
        [helper.make_node(op, operands, ["y"])],
        [("a", ["N", 3, 4, 5])],
        ["y"],
        {"c": np.asarray(constant, np.float32)},
    )
    assert_parity(source, {"a": f32(2, 3, 4, 5)})


@pytest.mark.parametrize(
    ("alpha", "beta", "trans_b", "bias_shape"),
    [(1.0, 1.0, 1, (5,)), (0.5, 2.0, 0, (1, 5)), (1.0, 1.0, 0, None), (1.0, 0.5, 1, ())],
)
def test_gemm(
    tmp_path: Path,
    alpha: float,
    beta: float,
    trans_b: int,
    bias_shape: tuple[int, ...] | None,
) -> None:
    inputs = ["x", "w"] + (["c"] if bias_shape is not None else [])
    initializers = {"w": f32(5, 7) if trans_b else f32(7, 5)}
    if bias_shape is not None:
        initializers["c"] = RNG.standard_normal(bias_shape).astype(np.float32)
    source = save(
        tmp_path,
        [helper.make_node("Gemm", inputs, ["y"], alpha=alpha, beta=beta, transB=trans_b)],
        [("x", ["N", 7])],
        ["y"],
        initializers,
    )
    assert_parity(source, {"x": f32(3, 7)})


def test_matmul_add_becomes_one_inner_product(tmp_path: Path) -> None:
    source = save(
        tmp_path,
        [
            helper.make_node("MatMul", ["x", "w"], ["h"]),
            helper.make_node("Add", ["b", "h"], ["y"]),
        ],
        [("x", ["N", 6])],
        ["y"],
        {"w": f32(6, 4), "b": f32(4)},
    )
    param = assert_parity(source, {"x": f32(2, 6)})
    assert [layer.type for layer in read(param).layers] == ["Input", "InnerProduct"]


def test_flatten_and_matmul_without_bias(tmp_path: Path) -> None:
    source = save(
        tmp_path,
        [
            helper.make_node("Flatten", ["x"], ["f"], axis=1),
            helper.make_node("MatMul", ["f", "w"], ["y"]),
        ],
        [("x", ["N", 2, 3, 5])],
        ["y"],
        {"w": f32(30, 4)},
    )
    assert_parity(source, {"x": f32(2, 2, 3, 5)})


@pytest.mark.parametrize(
    "node",
    [
        helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2]),
        helper.make_node(
            "MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]
        ),
        helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node(
            "AveragePool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]
        ),
        helper.make_node(
            "AveragePool",
            ["x"],
            ["y"],
            kernel_shape=[3, 3],
            strides=[2, 2],
            pads=[1, 1, 1, 1],
            count_include_pad=1,
        ),
        helper.make_node("GlobalAveragePool", ["x"], ["y"]),
        helper.make_node("GlobalMaxPool", ["x"], ["y"]),
    ],
    ids=["max", "max-pad", "avg", "avg-pad", "avg-pad-include", "global-avg", "global-max"],
)
def test_pooling(tmp_path: Path, node: onnx.NodeProto) -> None:
    source = save(tmp_path, [node], [("x", ["N", 4, 9, 9])], ["y"])
    assert_parity(source, {"x": f32(2, 4, 9, 9)})


def test_shared_tensors_and_outputs_keep_their_onnx_order(tmp_path: Path) -> None:
    """A tensor read by three nodes (a Split), an output also read inside, ONNX output order."""
    source = save(
        tmp_path,
        [
            helper.make_node("Relu", ["x"], ["r"]),
            helper.make_node("Sigmoid", ["r"], ["s"]),
            helper.make_node("Mul", ["r", "s"], ["product"]),
            helper.make_node("Add", ["r", "x"], ["sum"]),
        ],
        [("x", ["N", 3, 4]), ("unused", ["N", 2])],
        ["sum", "r", "product"],
    )
    x = f32(2, 3, 4)
    param = assert_parity(source, {"x": x, "unused": f32(2, 2)})
    graph = read(param)
    assert graph.outputs == ("sum", "r", "product")
    assert [name for name, _ in graph.inputs] == ["x", "unused"]
    assert "Split" in {layer.type for layer in graph.layers}


def test_identity_output_and_two_inputs(tmp_path: Path) -> None:
    source = save(
        tmp_path,
        [
            helper.make_node("Add", ["a", "b"], ["sum"]),
            helper.make_node("Identity", ["sum"], ["copy"]),
            helper.make_node("Mul", ["a", "b"], ["product"]),
        ],
        [("a", ["N", 3]), ("b", ["N", 3])],
        ["copy", "product", "sum"],
    )
    assert_parity(source, {"a": f32(4, 3), "b": f32(4, 3)})


# -- refusals -------------------------------------------------------------------------------------


def test_unsupported_operator_names_it_and_the_pnnx_route(tmp_path: Path) -> None:
    source = save(
        tmp_path,
        [helper.make_node("Softmax", ["x"], ["y"], name="probabilities")],
        [("x", ["N", 4])],
        ["y"],
    )
    with pytest.raises(ModelLoadError, match=r"operator Softmax \(node 'probabilities'\)") as info:
        convert(source)
    assert "{'converter': 'auto'}} (or 'pnnx')" in str(info.value)
    assert info.value.__cause__ is not None


def test_int64_tensors_are_refused(tmp_path: Path) -> None:
    from unifer.testing import models

    source = models.multi_io().save(tmp_path)
    with pytest.raises(ModelLoadError, match="'k' is int64; ncnn computes in float32 only"):
        convert(source)


@pytest.mark.parametrize(
    ("node", "initializers", "match"),
    [
        (
            helper.make_node("Add", ["x", "big"], ["y"]),
            {"big": f32(2, 1, 4)},
            "batch dimension of 2",
        ),
        (
            helper.make_node("Flatten", ["x"], ["y"], axis=2),
            None,
            "axis=2",
        ),
        (
            helper.make_node("MatMul", ["x", "w"], ["y"]),
            {"w": f32(4, 2)},
            "rank 3",
        ),
    ],
    ids=["batched-constant", "flatten-axis", "matmul-rank"],
)
def test_unsupported_forms_are_explained(
    tmp_path: Path, node: onnx.NodeProto, initializers: dict[str, np.ndarray] | None, match: str
) -> None:
    source = save(tmp_path, [node], [("x", ["N", 3, 4])], ["y"], initializers)
    with pytest.raises(ModelLoadError, match=match):
        convert(source)


@pytest.mark.parametrize(
    ("nodes", "initializers"),
    [
        ([helper.make_node("Add", ["x", "c"], ["y"])], {"c": f32(1, 1, 6)}),
        ([helper.make_node("Mul", ["c", "x"], ["y"])], {"c": f32(1, 1, 1)}),
        (
            [
                helper.make_node("MatMul", ["x", "w"], ["m"]),
                helper.make_node("Add", ["m", "c"], ["y"]),
            ],
            {"w": f32(6, 5), "c": f32(1, 1, 5)},
        ),
    ],
    ids=["vector", "scalar", "matmul-bias"],
)
def test_a_constant_that_adds_leading_dimensions_is_refused(
    tmp_path: Path, nodes: list[onnx.NodeProto], initializers: dict[str, np.ndarray]
) -> None:
    """[N, 6] + [1, 1, 6] is [1, N, 6] in ONNX: the batch is no longer first, which ncnn (one
    sample at a time) cannot produce; written anyway, the result would be [N, 6]."""
    source = save(tmp_path, nodes, [("x", ["N", 6])], ["y"], initializers)
    with pytest.raises(ModelLoadError, match=r"puts dimensions in front of the batch"):
        convert(source)


@pytest.mark.parametrize("converter", ["unifer", "auto"])
def test_dynamic_sizes_beyond_the_batch_are_refused_with_the_fix(
    tmp_path: Path, converter: str
) -> None:
    """No route converts them (pnnx resolves shapes at conversion), so the message says how to fix
    the model rather than to try pnnx."""
    source = save(
        tmp_path,
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
        [("x", ["N", 4, "H", "W"])],
        ["y"],
        {"w": f32(4, 4, 3, 3)},
    )
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ModelLoadError) as info:
        NcnnBackend().convert(source, out, SessionOptions(extra={"converter": converter}))
    message = str(info.value)
    assert "input 'x' has shape [N,4,H,W], with dynamic sizes beyond the batch" in message
    assert "make_dynamic_shape_fixed" in message and "pip install" not in message


def test_broadcasting_two_tensors_is_refused(tmp_path: Path) -> None:
    source = save(
        tmp_path,
        [helper.make_node("Add", ["a", "b"], ["y"])],
        [("a", ["N", 3, 4]), ("b", ["N", 1, 4])],
        ["y"],
    )
    with pytest.raises(ModelLoadError, match="only two tensors of the same shape"):
        convert(source)


def test_a_file_that_is_not_onnx(tmp_path: Path) -> None:
    source = tmp_path / "broken.onnx"
    source.write_bytes(b"\x08\x07garbage" * 10)
    with pytest.raises(ModelLoadError, match="could not read") as info:
        convert(source)
    assert info.value.__cause__ is not None


def test_without_onnx_the_install_line_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = save(tmp_path, [helper.make_node("Relu", ["x"], ["y"])], [("x", ["N", 4])], ["y"])
    monkeypatch.setitem(sys.modules, "onnx", None)  # makes `import onnx` fail
    with pytest.raises(MissingDependencyError, match=r'pip install "unifer-ncnn\[convert\]"'):
        convert(source)


@pytest.mark.parametrize(("batch", "fed"), [(1, 2), ("batch", 5)])
def test_the_source_batch_dimension_is_kept(tmp_path: Path, batch: int | str, fed: int) -> None:
    """ncnn has no batch dimension; the source's is recorded with the conversion: a fixed batch
    of 1 refuses another batch as on every other backend, a named one keeps its name."""
    from unifer import Engine, InputError

    source = save(tmp_path, [helper.make_node("Relu", ["x"], ["y"])], [("x", [batch, 3, 4])], ["y"])
    with Engine.load(source, backend="ncnn", backend_options={"ncnn": WRITER.extra}) as engine:
        assert engine.inputs[0].shape == (batch, 3, 4)
        assert engine.outputs[0].shape == (batch, 3, 4)
        x = f32(fed, 3, 4)
        if isinstance(batch, int):
            with pytest.raises(InputError, match="takes batches of exactly 1"):
                engine.run({"x": x})
        else:
            np.testing.assert_array_equal(engine.run({"x": x})["y"], np.maximum(x, 0))


@pytest.mark.parametrize("group", [8, 32])
def test_bf16_refuses_grouped_convolutions_it_computes_wrongly(tmp_path: Path, group: int) -> None:
    """ncnn's bf16 grouped convolution returned NaN or 2.9e38 (run to run); depthwise is right."""
    from unifer import Engine, UnsupportedOptionError

    weight = RNG.standard_normal((32, 32 // group, 3, 3)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], group=group, pads=[1, 1, 1, 1])
    source = save(tmp_path, [node], [("x", ["N", 32, 6, 6])], ["y"], {"w": weight})
    options = {"ncnn": WRITER.extra}
    if group == 32:  # depthwise: bf16 runs it, within bf16's accuracy
        with Engine.load(source, backend="ncnn", precision="bf16", backend_options=options) as e:
            x = f32(1, 32, 6, 6)
            with Engine.load(source, backend="onnxruntime") as reference:
                want = reference.run({"x": x})["y"]
            np.testing.assert_allclose(e.run({"x": x})["y"], want, atol=0.1 * np.abs(want).max())
        return
    with pytest.raises(UnsupportedOptionError, match="grouped convolution .* bf16"):
        Engine.load(source, backend="ncnn", precision="bf16", backend_options=options)
    Engine.load(source, backend="ncnn", precision="fp32", backend_options=options).close()


def test_a_conversion_that_cannot_run_the_check_fails_the_check_not_the_load(
    tmp_path: Path,
) -> None:
    """x[N, 4] + z[1, 4]: ncnn names both batches N, so the check's batch 3 cannot be fed; that
    is the conversion's failure (cached, said), not an InferenceError from the load."""
    from unifer import ConversionMismatchError, Engine

    node = helper.make_node("Add", ["x", "z"], ["y"])
    source = save(tmp_path, [node], [("x", ["N", 4]), ("z", [1, 4])], ["y"])
    options = {"ncnn": WRITER.extra}
    for _ in range(2):  # the failed check is cached: the second load does not convert again
        with pytest.raises(ConversionMismatchError, match="at batch 3.*cannot run it"):
            Engine.load(source, backend="ncnn", backend_options=options)
