"""The pnnx route (ncnn's own ONNX -> ncnn converter, run as its standalone binary) and the choice
of route, on real models: arcface-tiny, a hand-built graph the writer refuses, a third-party model.

Every test that runs pnnx skips when it is not installed (``pip install --no-deps pnnx``; the dev
environment's ``test`` group has it); the tests of a missing pnnx hide the installed one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import ncnn
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from unifer import (
    ConversionMismatchError,
    Engine,
    MissingDependencyError,
    ModelLoadError,
    UnsupportedOptionError,
)
from unifer.backend import SessionOptions
from unifer.testing import thirdparty
from unifer_ncnn import NcnnBackend, _pnnx
from unifer_ncnn._param import read

if TYPE_CHECKING:
    from conftest import Converted

PNNX = _pnnx.find()
needs_pnnx = pytest.mark.skipif(PNNX is None, reason=f"pnnx is not installed: {_pnnx.INSTALL}")
RNG = np.random.default_rng(3)


def f32(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def ncnn_options(converter: str) -> dict[str, dict[str, object]]:
    return {"ncnn": {"converter": converter}}


def save(
    path: Path,
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[tuple[str, list[int | str]]],
    outputs: Sequence[str],
    initializers: dict[str, np.ndarray] | None = None,
) -> Path:
    graph = helper.make_graph(
        list(nodes),
        path.stem,
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [onnx.ValueInfoProto(name=n) for n in outputs],
        [numpy_helper.from_array(v, k) for k, v in (initializers or {}).items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def reference(source: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds), strict=True))


def assert_close(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    """fp32 parity, output by output, in the ONNX order."""
    assert list(got) == list(want)
    for name, value in want.items():
        assert got[name].shape == value.shape, name
        np.testing.assert_allclose(got[name], value, atol=1e-4, rtol=1e-4, err_msg=name)


@pytest.fixture
def branchy(tmp_path: Path) -> Path:
    """Conv, Concat, Softmax, Resize, Transpose (the writer has none but Conv); two inputs; three
    outputs whose ONNX order is not ncnn's production order, one also read inside the graph. The
    file name holds a space and '=' (pnnx parses ``key=value`` arguments)."""
    directory = tmp_path / "user models"
    directory.mkdir()
    nodes = [
        helper.make_node("Conv", ["image", "w", "b"], ["feat"], pads=[1, 1, 1, 1]),
        helper.make_node("Concat", ["feat", "extra"], ["cat"], axis=1),
        helper.make_node("Softmax", ["cat"], ["probs"], axis=1),
        helper.make_node("Resize", ["feat", "", "scales"], ["up"], mode="nearest"),
        helper.make_node("Transpose", ["probs"], ["probs_t"], perm=[0, 2, 3, 1]),
    ]
    return save(
        directory / "branchy v=2.onnx",
        nodes,
        [("image", ["N", 3, 8, 8]), ("extra", ["N", 5, 8, 8])],
        ["up", "probs_t", "feat"],
        {"w": f32(4, 3, 3, 3) * 0.3, "b": f32(4), "scales": np.array([1, 1, 2, 2], np.float32)},
    )


@pytest.fixture
def no_pnnx(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hide the installed pnnx: no package binary, nothing on PATH."""
    monkeypatch.setattr(_pnnx, "_package_binary", lambda: None)
    monkeypatch.setenv("PATH", "")
    assert _pnnx.find() is None


def files_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# -- the pnnx route on real models ----------------------------------------------------------------


@needs_pnnx
def test_arcface_tiny_through_pnnx_keeps_names_and_fp32_parity(
    arcface_tiny: Converted, face: np.ndarray
) -> None:
    source_dir = files_in(arcface_tiny.onnx.parent)
    want = {
        "embedding": np.concatenate(
            [arcface_tiny.reference({"input.1": x[None]})["embedding"] for x in face]
        )
    }
    with Engine.load(
        arcface_tiny.onnx, backend="ncnn", threads=2, backend_options=ncnn_options("pnnx")
    ) as engine:
        assert [str(s) for s in engine.inputs] == ["input.1: float32[N,3,112,112]"]
        assert [str(s) for s in engine.outputs] == ["embedding: float32[N,512]"]
        got = engine.run({"input.1": face})
        settings = dict(engine.settings)
    assert_close(got, want)
    converted_by = settings["converted_by"]
    assert isinstance(converted_by, dict)
    assert converted_by["route"] == "pnnx"
    assert converted_by["pnnx"] == PNNX.version  # type: ignore[union-attr]
    assert "fp16=0" in converted_by["arguments"]  # type: ignore[operator]
    conversion = settings["conversion"]
    assert isinstance(conversion, dict)
    assert conversion["check"]["passed"] is True
    # The cache entry holds the model and its records only (pnnx's intermediates are gone), and
    # nothing was written next to the source.
    entry = Path(conversion["path"]).parent
    assert files_in(entry) == [
        "arcface-tiny.bin",
        "arcface-tiny.converter.json",
        "arcface-tiny.param",
        "conversion.json",
    ]
    assert files_in(arcface_tiny.onnx.parent) == source_dir
    # fp32 weights: the .bin is as large as the writer's (fp16 would halve it).
    written = arcface_tiny.param.with_suffix(".bin").stat().st_size
    assert abs((entry / "arcface-tiny.bin").stat().st_size - written) < 0.01 * written


@needs_pnnx
def test_pnnx_input_layer_declares_the_converted_shape(
    arcface_tiny: Converted, tmp_path: Path
) -> None:
    """pnnx writes ``Input in0 0 1 in0`` with no size; the route names and sizes it."""
    param = NcnnBackend().convert(
        arcface_tiny.onnx, tmp_path, SessionOptions(extra={"converter": "pnnx"})
    )
    graph = read(param)
    assert graph.inputs == (("input.1", (3, 112, 112)),)
    assert graph.outputs == ("embedding",)
    record = json.loads(param.with_suffix(".converter.json").read_text())
    assert record["route"] == "pnnx"
    assert record["converter"] == NcnnBackend().converter_version(
        SessionOptions(extra={"converter": "pnnx"})
    )


@needs_pnnx
def test_auto_hands_what_the_writer_refuses_to_pnnx(branchy: Path) -> None:
    before = files_in(branchy.parent)
    feeds = {"image": f32(2, 3, 8, 8), "extra": f32(2, 5, 8, 8)}
    with Engine.load(branchy, backend="ncnn", threads=1) as engine:  # converter "auto"
        assert [s.name for s in engine.inputs] == ["image", "extra"]
        assert [str(s) for s in engine.outputs] == [
            "up: float32[N,4,16,16]",
            "probs_t: float32[N,8,8,9]",
            "feat: float32[N,4,8,8]",
        ]
        converted_by = engine.settings["converted_by"]
        assert converted_by["route"] == "pnnx"  # type: ignore[index]
        assert "operator Concat" in converted_by["writer_refused"]  # type: ignore[index]
        got = engine.run(feeds)
    assert_close(got, reference(branchy, feeds))
    assert files_in(branchy.parent) == before


@needs_pnnx
def test_auto_keeps_the_writer_for_models_it_supports(arcface_tiny: Converted) -> None:
    with Engine.load(arcface_tiny.onnx, backend="ncnn") as engine:
        assert engine.settings["converted_by"]["route"] == "unifer"  # type: ignore[index]


@needs_pnnx
def test_a_third_party_model_with_weights_listed_as_inputs() -> None:
    """ONNX-zoo ShuffleNet (opset 9, IR 3: its 281 weights are graph inputs too, which pnnx would
    take for the image input; the route hands pnnx a copy listing the real input only). Reshape,
    Transpose, Concat, Sum and Softmax: the writer has none of them."""
    source = thirdparty.light("shufflenet")
    feeds = {"gpu_0/data_0": f32(1, 3, 224, 224)}
    with Engine.load(source, backend="ncnn", backend_options=ncnn_options("auto")) as engine:
        assert engine.settings["converted_by"]["route"] == "pnnx"  # type: ignore[index]
        assert [s.name for s in engine.outputs] == ["gpu_0/softmax_1"]
        got = engine.run(feeds)
    assert_close(got, reference(source, feeds))


@pytest.mark.skipif(
    PNNX is None or PNNX.version != _pnnx.TESTED, reason=f"needs pnnx {_pnnx.TESTED}"
)
def test_a_wrong_pnnx_conversion_is_caught_by_the_check(tmp_path: Path) -> None:
    """ONNX-zoo SqueezeNet: pnnx 20261020 turns its opset-9 Softmax over [N, 1000, 1, 1] into a
    Reshape + Softmax over a size-1 axis (every output 1.0, raw ncnn on pnnx's own file agrees).
    The core's check against the source refuses the conversion instead of serving it."""
    with pytest.raises(ConversionMismatchError, match="against"):
        Engine.load(thirdparty.light("squeezenet"), backend="ncnn")


@needs_pnnx
def test_an_operator_across_the_batch_is_caught_by_the_check_at_batch_3(tmp_path: Path) -> None:
    """x + x[0:1] adds the first sample to every sample. pnnx converts at batch 1, where the slice
    is the sample itself, and ncnn runs a batch sample by sample: right at batch 1 only, so the
    check runs a batch of 3 as well."""
    nodes = [
        helper.make_node("Slice", ["x", "zero", "one", "zero"], ["first"]),
        helper.make_node("Add", ["x", "first"], ["y"]),
    ]
    one, zero = np.array([1], np.int64), np.array([0], np.int64)
    source = save(
        tmp_path / "first.onnx", nodes, [("x", ["N", 4, 6, 6])], ["y"], {"zero": zero, "one": one}
    )
    with pytest.raises(ConversionMismatchError, match=r"at batch 3 \(batch 1 matches\)"):
        Engine.load(source, backend="ncnn")


@needs_pnnx
def test_a_kept_batch_axis_that_crashes_ncnn_is_refused_not_a_crash(tmp_path: Path) -> None:
    """Without a convolution pnnx cannot tell the batch axis of x [1, 4, 8] and keeps it; its
    Concat then counts axes with it, and ncnn fed one sample without it read out of bounds
    (SIGSEGV, the whole process). Run in a subprocess, so a regression fails, not crashes."""
    import subprocess
    import sys

    source = save(
        tmp_path / "cat_last.onnx",
        [
            helper.make_node("Mul", ["x", "two"], ["a"]),
            helper.make_node("Add", ["x", "two"], ["b"]),
            helper.make_node("Concat", ["a", "b"], ["y"], axis=-1),
        ],
        [("x", [1, 4, 8])],
        ["y"],
        {"two": np.array(2.0, np.float32)},
    )
    script = (
        "import sys; from unifer import Engine, ModelLoadError\n"
        "try:\n    Engine.load(sys.argv[1], backend='ncnn')\n"
        "except ModelLoadError as e:\n    print(e)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script, str(source)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert "pnnx could not tell the batch axis of 'x', 'y'" in run.stdout
    assert "which the Concat layers there count with" in run.stdout


@needs_pnnx
def test_a_kept_batch_axis_that_does_not_matter_converts(tmp_path: Path) -> None:
    """pnnx keeps the batch axis of a vector through a Mul (and of an MLP's Gemm and Softmax):
    element by element, flattened or over a whole vector, the results are the same, and the
    check says so; an image through a convolution beside it is no reason to refuse either."""
    source = save(
        tmp_path / "two_paths.onnx",
        [
            helper.make_node("Conv", ["img", "w"], ["c"]),
            helper.make_node("Mul", ["v", "two"], ["y2"]),
        ],
        [("img", [1, 3, 8, 8]), ("v", [1, 4, 8])],
        ["c", "y2"],
        {"w": f32(2, 3, 3, 3), "two": np.array(2.0, np.float32)},
    )
    options = {"ncnn": {"converter": "pnnx"}}
    with Engine.load(source, backend="ncnn", backend_options=options) as engine:
        assert engine.settings["conversion"]["check"]["passed"] is True
    mlp = save(
        tmp_path / "mlp.onnx",
        [
            helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("Gemm", ["r", "w2", "b2"], ["logits"], transB=1),
            helper.make_node("Softmax", ["logits"], ["p"], axis=-1),
        ],
        [("x", [1, 20])],
        ["p"],
        {"w1": f32(16, 20), "b1": f32(16), "w2": f32(10, 16), "b2": f32(10)},
    )
    with Engine.load(mlp, backend="ncnn", backend_options=options) as engine:
        assert engine.settings["conversion"]["check"]["passed"] is True


@needs_pnnx
def test_onnx_names_that_clash_with_pnnx_blob_names(tmp_path: Path) -> None:
    """The input is called ``out0``, the outputs ``in0`` and ``1``: pnnx's own blob names."""
    source = save(
        tmp_path / "clash.onnx",
        [
            helper.make_node("Conv", ["out0", "w"], ["c"]),
            helper.make_node("Relu", ["c"], ["in0"]),
            helper.make_node("Softmax", ["c"], ["1"], axis=1),
        ],
        [("out0", ["N", 2, 6, 6])],
        ["in0", "1"],
        {"w": f32(3, 2, 1, 1)},
    )
    feeds = {"out0": f32(2, 2, 6, 6)}
    with Engine.load(source, backend="ncnn", backend_options=ncnn_options("pnnx")) as engine:
        got = engine.run(feeds)
    assert_close(got, reference(source, feeds))


@needs_pnnx
def test_external_weights_are_copied_for_pnnx(tmp_path: Path) -> None:
    from unifer import models

    source = tmp_path / "arcface-tiny-external.onnx"
    onnx.save(
        models.build("arcface-tiny"),
        str(source),
        save_as_external_data=True,
        location="weights.data",
    )
    before = files_in(tmp_path)
    x = f32(1, 3, 112, 112)
    with Engine.load(source, backend="ncnn", backend_options=ncnn_options("pnnx")) as engine:
        got = engine.run({"input.1": x})
    assert_close(got, reference(source, {"input.1": x}))
    assert files_in(tmp_path) == before


# -- refusals and failures ------------------------------------------------------------------------


@needs_pnnx
def test_an_operator_pnnx_leaves_is_refused_with_its_notes(tmp_path: Path) -> None:
    """Asymmetric AveragePool padding: pnnx keeps the ONNX op in the .param and exits 0."""
    source = save(
        tmp_path / "pool.onnx",
        [helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], pads=[0, 0, 1, 1])],
        [("x", ["N", 3, 8, 8])],
        ["y"],
    )
    with pytest.raises(ModelLoadError, match="it left AveragePool, which ncnn cannot run") as info:
        NcnnBackend().convert(source, tmp_path, SessionOptions(extra={"converter": "pnnx"}))
    assert "ignore AveragePool" in str(info.value)
    assert files_in(tmp_path) == ["pool.onnx"]  # the work directory is gone


@needs_pnnx
def test_a_layer_this_ncnn_build_lacks_is_refused_by_name(tmp_path: Path) -> None:
    """pnnx writes an ArgMax layer, which ncnn registers but this build does not implement:
    ncnn's load_param failed, reported as a corrupt temporary file to 're-download'."""
    if ncnn.create_layer("ArgMax") is not None:
        pytest.skip("this ncnn build implements ArgMax")
    source = save(
        tmp_path / "argmax.onnx",
        [helper.make_node("ArgMax", ["x"], ["y"], axis=1, keepdims=0)],
        [("x", ["N", 3, 8, 8])],
        ["y"],
    )
    with pytest.raises(ModelLoadError, match="it left ArgMax, which ncnn cannot run"):
        NcnnBackend().convert(source, tmp_path, SessionOptions(extra={"converter": "pnnx"}))


def custom_op_model(path: Path, ir_version: int) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Foo", ["x"], ["y"], domain="com.example")],
        "custom",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]
    )
    model.ir_version = ir_version
    onnx.save(model, str(path))
    return path


@needs_pnnx
def test_a_crashing_pnnx_is_reported_with_its_last_words(tmp_path: Path) -> None:
    """A custom-domain operator makes pnnx's embedded onnxruntime fail, and pnnx crash."""
    source = custom_op_model(tmp_path / "custom.onnx", ir_version=8)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ModelLoadError, match=r"pnnx (was killed by signal|failed)") as info:
        NcnnBackend().convert(source, out, SessionOptions())  # auto: the writer refuses Foo
    assert "com.example:Foo" in str(info.value)  # pnnx's own output is quoted
    assert "writer cannot convert it either: operator com.example.Foo" in str(info.value)
    assert files_in(out) == []


@needs_pnnx
def test_an_ir_version_newer_than_pnnx_reads_is_explained(tmp_path: Path) -> None:
    """pnnx 20261020's embedded onnxruntime stops at IR 13; the onnx package writes IR 14."""
    source = custom_op_model(tmp_path / "new.onnx", ir_version=14)
    with pytest.raises(ModelLoadError, match="Unsupported model IR version: 14") as info:
        NcnnBackend().convert(source, tmp_path, SessionOptions(extra={"converter": "pnnx"}))
    assert "model.ir_version = N" in str(info.value)


@needs_pnnx
def test_a_hung_pnnx_is_stopped(
    arcface_tiny: Converted, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_pnnx, "TIMEOUT_S", 0.01)
    with pytest.raises(ModelLoadError, match="did not finish .* within 0.01 s"):
        NcnnBackend().convert(
            arcface_tiny.onnx, tmp_path, SessionOptions(extra={"converter": "pnnx"})
        )


@needs_pnnx
@pytest.mark.parametrize(
    ("inputs", "match"),
    [
        ([("x", ["N", 3, "H", "W"])], r"dynamic sizes beyond the batch.*make_dynamic_shape_fixed"),
        ([("x", ["N"])], "ncnn needs a batch dimension followed by 1 to 4"),
    ],
    ids=["dynamic-size", "rank-1"],
)
def test_shapes_pnnx_cannot_take(
    tmp_path: Path, inputs: list[tuple[str, list[int | str]]], match: str
) -> None:
    source = save(tmp_path / "m.onnx", [helper.make_node("Softmax", ["x"], ["y"])], inputs, ["y"])
    with pytest.raises(ModelLoadError, match=match):
        NcnnBackend().convert(source, tmp_path, SessionOptions(extra={"converter": "pnnx"}))


@needs_pnnx
def test_integer_inputs_are_refused(tmp_path: Path) -> None:
    from unifer.testing import models

    source = models.multi_io().save(tmp_path)
    with pytest.raises(ModelLoadError, match="'k' is int64; ncnn takes float32 inputs only"):
        NcnnBackend().convert(source, tmp_path, SessionOptions(extra={"converter": "pnnx"}))


@pytest.mark.usefixtures("no_pnnx")
def test_forced_pnnx_when_missing_gives_the_install_line(arcface_tiny: Converted) -> None:
    with pytest.raises(MissingDependencyError, match="pip install --no-deps pnnx") as info:
        Engine.load(arcface_tiny.onnx, backend="ncnn", backend_options=ncnn_options("pnnx"))
    assert "torch" in str(info.value)  # why --no-deps


@pytest.mark.usefixtures("no_pnnx")
def test_auto_without_pnnx_names_the_operator_and_the_install_line(branchy: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"operator Concat") as info:
        Engine.load(branchy, backend="ncnn")
    assert "pip install --no-deps pnnx" in str(info.value)
    assert info.value.__cause__ is not None


@pytest.mark.usefixtures("no_pnnx")
def test_auto_without_pnnx_still_converts_what_the_writer_supports(arcface_tiny: Converted) -> None:
    with Engine.load(arcface_tiny.onnx, backend="ncnn") as engine:
        assert engine.settings["converted_by"]["route"] == "unifer"  # type: ignore[index]


def test_forcing_the_writer_never_runs_pnnx(branchy: Path) -> None:
    with pytest.raises(ModelLoadError, match="operator Concat") as info:
        Engine.load(branchy, backend="ncnn", backend_options=ncnn_options("unifer"))
    assert "'converter': 'auto'" in str(info.value)


# -- the option and the cache key ----------------------------------------------------------------


def test_a_bad_converter_value_is_refused(arcface_tiny: Converted) -> None:
    with pytest.raises(UnsupportedOptionError, match="'converter' must be one of 'auto', 'unifer'"):
        Engine.load(arcface_tiny.onnx, backend="ncnn", backend_options=ncnn_options("onnx2ncnn"))
    with pytest.raises(UnsupportedOptionError, match="'converter'"):
        NcnnBackend().converter_version(SessionOptions(extra={"converter": 1}))


def test_each_route_has_its_own_converter_version() -> None:
    backend = NcnnBackend()
    writer = backend.converter_version(SessionOptions(extra={"converter": "unifer"}))
    pnnx = backend.converter_version(SessionOptions(extra={"converter": "pnnx"}))
    auto = backend.converter_version(SessionOptions())
    assert writer.startswith("unifer_ncnn.onnx2ncnn/")
    assert pnnx.startswith("pnnx/")
    assert len({writer, pnnx, auto}) == 3
    assert writer in auto and pnnx in auto  # either route may have written an auto conversion
    if PNNX is not None:
        assert pnnx == f"pnnx/{PNNX.version}+unifer_ncnn.pnnx/{_pnnx.GLUE_VERSION}"


@pytest.mark.usefixtures("no_pnnx")
def test_installing_pnnx_changes_the_auto_version() -> None:
    assert "pnnx/absent" in NcnnBackend().converter_version(SessionOptions())


@needs_pnnx
def test_a_conversion_cached_by_another_route_is_never_passed_off(arcface_tiny: Converted) -> None:
    """Forcing pnnx after the writer converted the same file converts again, with pnnx: the cache
    key (converter_version) names the route."""
    with Engine.load(arcface_tiny.onnx, backend="ncnn", backend_options=ncnn_options("unifer")):
        pass
    engine = Engine.load(arcface_tiny.onnx, backend="ncnn", backend_options=ncnn_options("pnnx"))
    with engine:
        assert engine.settings["converted_by"]["route"] == "pnnx"  # type: ignore[index]


@needs_pnnx
def test_a_fixed_batch_above_one_is_refused_before_pnnx_runs(tmp_path: Path) -> None:
    """pnnx was handed batch 1 and failed with 'expect [2,4,6,6]f32 but got [1,4,6,6]f32'."""
    source = save(
        tmp_path / "batch2.onnx",
        [helper.make_node("Softmax", ["x"], ["y"], axis=1)],
        [("x", [2, 4, 6, 6])],
        ["y"],
    )
    with pytest.raises(ModelLoadError, match="batch dimension fixed at 2, and ncnn runs one"):
        Engine.load(source, backend="ncnn", backend_options={"ncnn": {"converter": "pnnx"}})
