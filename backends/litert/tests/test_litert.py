"""The LiteRT plugin against the real runtime, on .tflite files written here by the plugin's writer.

Models come from two sources, both built in code: small graphs written directly with
``ModelWriter`` (custom operators, metadata, signatures that rename tensors), and unifer's built-in
ArcFace ONNX models converted by the plugin. Reference outputs come from numpy or onnxruntime.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from unifer import (
    Engine,
    InferenceError,
    InputError,
    ModelLoadError,
    UnsupportedOptionError,
    models,
)
from unifer.backend import SessionOptions
from unifer_litert import LiteRTBackend, _session
from unifer_litert._flatbuf import read_facts
from unifer_litert._writer import ModelWriter

F32 = np.float32


# -- models ----------------------------------------------------------------------------------------


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def dense_model(
    path: Path,
    *,
    batch: int = -1,
    tensor_names: tuple[str, str] = ("x", "y"),
    signature: str | None = "serving_default",
    metadata: dict[str, bytes] | None = None,
    seed: int = 0,
) -> tuple[Path, np.ndarray, np.ndarray]:
    """y = relu(x @ w.T + b): x float32 [batch, 64] -> y [batch, 32]; returns (path, w, b)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((32, 64)).astype(F32)
    b = rng.standard_normal(32).astype(F32)
    writer = ModelWriter("dense test model")
    x = writer.tensor(tensor_names[0], [batch, 64], F32)
    y = writer.tensor(tensor_names[1], [batch, 32], F32)
    writer.op(
        "FULLY_CONNECTED",
        [x, writer.constant("w", w), writer.constant("b", b)],
        [y],
        "FullyConnectedOptions",
        fusedActivationFunction=1,  # RELU
    )
    for name, value in (metadata or {}).items():
        writer.metadata(name, value)
    return write(path, writer.finish({"x": x}, {"y": y}, signature=signature)), w, b


def dense_reference(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.maximum(x.astype(np.float64) @ w.T.astype(np.float64) + b, 0)


def custom_op_model(path: Path, op: str, options: bytes = b"") -> Path:
    """One custom operator ``op`` from x [1, 4, 4, 3] to y."""
    writer = ModelWriter("custom op test model")
    x = writer.tensor("x", [1, 4, 4, 3], F32)
    y = writer.tensor("y", [1, 4, 4, 3], F32)
    writer.custom_op(op, [x], [y], options)
    return write(path, writer.finish({"x": x}, {"y": y}))


def mediapipe_deconv_model(path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """MediaPipe's ``Convolution2DTransposeBias`` custom op (as in its segmentation models).

    Only the XNNPACK delegate implements it. 2x2 kernel, stride 2, VALID: [1,4,4,3] -> [1,8,8,5].
    Its options are a raw TfLiteTransposeConvParams {padding, stride_w, stride_h, activation}.
    """
    rng = np.random.default_rng(7)
    w = rng.standard_normal((5, 2, 2, 3)).astype(F32)
    b = rng.standard_normal(5).astype(F32)
    writer = ModelWriter("MediaPipe deconvolution")
    x = writer.tensor("x", [1, 4, 4, 3], F32)
    y = writer.tensor("y", [1, 8, 8, 5], F32)
    options = np.array([2, 2, 2, 0], "<i4").tobytes()  # kTfLitePaddingValid, stride 2x2, no act.
    writer.custom_op(
        "Convolution2DTransposeBias",
        [x, writer.constant("w", w), writer.constant("b", b)],
        [y],
        options,
    )
    return write(path, writer.finish({"x": x}, {"y": y})), w, b


def deconv_reference(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.zeros((1, 8, 8, 5))
    for i in range(4):
        for j in range(4):
            out[0, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2] += np.einsum("c,oabc->abo", x[0, i, j], w)
    return out + b


def arcface(tmp_path: Path, *, dynamic: bool) -> tuple[Path, Path]:
    """arcface-tiny as ONNX (the reference) and converted to .tflite by the plugin."""
    onnx_path, _ = models.resolve("builtin:arcface-tiny" + ("?batch=dynamic" if dynamic else ""))
    out = tmp_path / ("dynamic" if dynamic else "static")
    out.mkdir(exist_ok=True)
    return onnx_path, LiteRTBackend().convert(onnx_path, out, SessionOptions())


def faces(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (batch, 3, 112, 112)).astype(F32)


def onnxruntime_reference(onnx_path: Path, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"input.1": x})[0])


def assert_parity(got: np.ndarray, want: np.ndarray) -> None:
    """fp32 parity: max abs diff at the 1e-5 scale of outputs ~3, cosine 1 to 6 digits."""
    assert got.shape == want.shape
    assert np.abs(got - want).max() < 1e-4 * max(1.0, float(np.abs(want).max()))
    cosine = (got * want).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(want, axis=-1)
    assert cosine.min() > 1 - 1e-6


# -- parity, threads, XNNPACK ----------------------------------------------------------------------


@pytest.mark.parametrize("xnnpack", [True, False])
def test_converted_arcface_matches_onnxruntime(tmp_path: Path, xnnpack: bool) -> None:
    onnx_path, tflite = arcface(tmp_path, dynamic=False)
    x = faces(1)
    options = {"litert": {"xnnpack": xnnpack}}
    with Engine.load(tflite, backend="litert", threads=2, backend_options=options) as engine:
        assert [str(s) for s in engine.inputs] == ["input.1: float32[1,3,112,112]"]  # NCHW kept
        assert [str(s) for s in engine.outputs] == ["embedding: float32[1,512]"]
        got = engine.run({"input.1": x})["embedding"]
        settings = engine.settings
    assert_parity(got, onnxruntime_reference(onnx_path, x))
    assert settings["threads"] == 2
    assert settings["precision"] == "fp32"
    assert settings["xnnpack"] is xnnpack
    if xnnpack:
        assert settings["op_resolver"] == "BUILTIN"
        assert settings["xnnpack_partitions"] == 1  # the whole graph went to XNNPACK
    else:
        assert settings["op_resolver"] == "BUILTIN_WITHOUT_DEFAULT_DELEGATES"
        assert settings["xnnpack_partitions"] == 0


def test_default_threads_are_reported(tmp_path: Path) -> None:
    path, _, _ = dense_model(tmp_path / "dense.tflite")
    with Engine.load(path, backend="litert") as engine:
        # ai-edge-litert's Interpreter runs 1 thread unless told otherwise.
        expected = 1 if engine.settings["runtime"] == "ai-edge-litert" else None
        assert engine.settings["threads"] == expected
        assert engine.settings["runtime_version"] == LiteRTBackend().probe().version


def test_dynamic_batch_resizes_the_interpreter(tmp_path: Path) -> None:
    onnx_path, tflite = arcface(tmp_path, dynamic=True)
    with Engine.load(tflite, backend="litert", threads=2) as engine:
        # TFLite stores -1; the conversion recorded the ONNX names, as onnxruntime reports them.
        assert engine.inputs[0].shape == ("N", 3, 112, 112)
        assert engine.outputs[0].shape == ("N", 512)
        for batch in (1, 3, 1, 2):  # back and forth: every change re-allocates
            x = faces(batch, seed=batch)
            assert_parity(
                engine.run({"input.1": x})["embedding"], onnxruntime_reference(onnx_path, x)
            )


def test_empty_batch_of_a_convolution_model(tmp_path: Path) -> None:
    """XNNPACK cannot reshape a convolution to batch 0 (it fails, or in some processes returns
    an output of garbage shape): the call is refused before it runs, saying what to do, and the
    engine keeps working. Without XNNPACK the builtin kernels return empty outputs."""
    onnx_path, tflite = arcface(tmp_path, dynamic=True)
    empty = faces(0)
    with Engine.load(tflite, backend="litert", threads=1) as engine:
        with pytest.raises(InputError, match=r"'input.1' is empty .*'xnnpack': False"):
            engine.run({"input.1": empty})
        x = faces(2)
        assert_parity(engine.run({"input.1": x})["embedding"], onnxruntime_reference(onnx_path, x))
    options = {"litert": {"xnnpack": False}}
    with Engine.load(tflite, backend="litert", threads=1, backend_options=options) as engine:
        assert engine.run({"input.1": empty})["embedding"].shape == (0, 512)


def test_static_model_refuses_another_batch(tmp_path: Path) -> None:
    path, _, _ = dense_model(tmp_path / "dense.tflite", batch=1)
    with Engine.load(path, backend="litert") as engine:
        assert engine.inputs[0].shape == (1, 64)
        with pytest.raises(InputError):
            engine.run({"x": np.zeros((2, 64), F32)})
    session = LiteRTBackend().open(path, SessionOptions())
    try:
        # Past the core's checks the runtime refuses it too (strict resize), and stays usable.
        with pytest.raises(InferenceError, match="dimension 0"):
            session.run({"x": np.zeros((2, 64), F32)})
        assert session.run({"x": np.ones((1, 64), F32)})["y"].shape == (1, 32)
    finally:
        session.close()


def test_concurrent_runs_with_a_pool_and_mixed_batches(tmp_path: Path) -> None:
    path, w, b = dense_model(tmp_path / "dense.tflite")
    feeds = [
        np.random.default_rng(i).standard_normal((1 + i % 3, 64)).astype(F32) for i in range(8)
    ]
    options = {"litert": {"num_interpreters": np.int64(3)}}  # numpy integers count too
    with Engine.load(path, backend="litert", threads=1, backend_options=options) as engine:
        assert engine.settings["num_interpreters"] == 3
        assert type(engine.settings["num_interpreters"]) is int
        serial = [engine.run({"x": x})["y"] for x in feeds]
        results: list[list[np.ndarray]] = [[] for _ in feeds]
        barrier = threading.Barrier(len(feeds))

        def work(i: int) -> None:
            barrier.wait()
            for _ in range(30):
                results[i].append(engine.run({"x": feeds[i]})["y"])

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(feeds))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for i, x in enumerate(feeds):
        np.testing.assert_allclose(serial[i], dense_reference(x, w, b), rtol=1e-5, atol=1e-4)
        assert len(results[i]) == 30
        for got in results[i]:
            np.testing.assert_array_equal(got, serial[i])


def test_outputs_are_copies(tmp_path: Path) -> None:
    path, _, _ = dense_model(tmp_path / "dense.tflite")
    session = LiteRTBackend().open(path, SessionOptions())
    try:
        first = session.run({"x": np.ones((2, 64), F32)})["y"]
        assert first.flags.owndata and first.flags.writeable
        second = session.run({"x": np.full((2, 64), 2, F32)})["y"]
        assert not np.shares_memory(first, second)
        # Resizing needs no live view into the interpreter: holding outputs must not block it.
        session.run({"x": np.ones((5, 64), F32)})
    finally:
        session.close()


def test_closed_session_refuses_to_run(tmp_path: Path) -> None:
    path, _, _ = dense_model(tmp_path / "dense.tflite")
    session = LiteRTBackend().open(path, SessionOptions())
    session.close()
    with pytest.raises(InferenceError, match="closed"):
        session.run({"x": np.ones((1, 64), F32)})


# -- names and signatures --------------------------------------------------------------------------


def test_signature_names_win_over_tensor_names(tmp_path: Path) -> None:
    # What TensorFlow's converter writes: internal tensor names, the user's names in the signature.
    path, w, b = dense_model(
        tmp_path / "dense.tflite", tensor_names=("serving_default_x:0", "StatefulPartitionedCall:0")
    )
    x = np.random.default_rng(1).standard_normal((2, 64)).astype(F32)
    with Engine.load(path, backend="litert") as engine:
        assert [s.name for s in engine.inputs] == ["x"]
        assert [s.name for s in engine.outputs] == ["y"]
        assert engine.settings["signature"] == "serving_default"
        np.testing.assert_allclose(engine.run({"x": x})["y"], dense_reference(x, w, b), atol=1e-4)


def test_tensor_names_without_a_signature(tmp_path: Path) -> None:
    path, _, _ = dense_model(
        tmp_path / "dense.tflite", tensor_names=("input_1", "dense/Relu"), signature=None
    )
    with Engine.load(path, backend="litert") as engine:
        assert [s.name for s in engine.inputs] == ["input_1"]
        assert [s.name for s in engine.outputs] == ["dense/Relu"]
        assert engine.settings["signature"] is None


def test_outputs_keep_the_graph_order_not_the_signature_order(tmp_path: Path) -> None:
    # Signatures list their names alphabetically; the model's own order is the subgraph's.
    writer = ModelWriter("two outputs")
    x = writer.tensor("x", [1, 4], F32)
    zeta = writer.tensor("zeta", [1, 4], F32)
    alpha = writer.tensor("alpha", [1, 4], F32)
    writer.op("RELU", [x], [zeta])
    writer.op("ABS", [x], [alpha])
    path = write(tmp_path / "two.tflite", writer.finish({"x": x}, {"zeta": zeta, "alpha": alpha}))
    with Engine.load(path, backend="litert") as engine:
        assert [s.name for s in engine.outputs] == ["zeta", "alpha"]
        out = engine.run({"x": np.array([[-1, 2, -3, 4]], F32)})
    np.testing.assert_array_equal(out["zeta"], [[0, 2, 0, 4]])
    np.testing.assert_array_equal(out["alpha"], [[1, 2, 3, 4]])


# -- custom operators ------------------------------------------------------------------------------


def test_xnnpack_only_op_runs_with_xnnpack_and_explains_without(tmp_path: Path) -> None:
    path, w, b = mediapipe_deconv_model(tmp_path / "deconv.tflite")
    x = np.random.default_rng(3).standard_normal((1, 4, 4, 3)).astype(F32)
    with Engine.load(path, backend="litert") as engine:  # XNNPACK is on by default
        np.testing.assert_allclose(engine.run({"x": x})["y"], deconv_reference(x, w, b), atol=1e-4)
    options = {"litert": {"xnnpack": False}}
    with pytest.raises(ModelLoadError) as info:
        Engine.load(path, backend="litert", backend_options=options)
    message = str(info.value)
    assert "Convolution2DTransposeBias" in message
    assert "only by the XNNPACK delegate" in message
    assert "'xnnpack': False" in message
    assert isinstance(info.value.__cause__, RuntimeError)


def test_unknown_custom_op_is_named_at_load(tmp_path: Path) -> None:
    path = custom_op_model(tmp_path / "custom.tflite", "MyVendorOp")
    with pytest.raises(ModelLoadError, match="custom operator\\(s\\) MyVendorOp") as info:
        Engine.load(path, backend="litert")
    assert "custom.tflite" in str(info.value)
    assert info.value.__cause__ is not None


def test_flex_op_explains_the_tensorflow_dependency(tmp_path: Path) -> None:
    path = custom_op_model(tmp_path / "flex.tflite", "FlexRFFT")
    with pytest.raises(ModelLoadError, match="FlexRFFT") as info:
        Engine.load(path, backend="litert")
    assert "Flex delegate" in str(info.value)


# -- precision -------------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["fp16", "bf16", "int8"])
def test_reduced_precisions_are_rejected_with_a_reason(tmp_path: Path, precision: str) -> None:
    path, _, _ = dense_model(tmp_path / "dense.tflite")
    with pytest.raises(UnsupportedOptionError, match="exported with") as info:
        Engine.load(path, backend="litert", precision=precision)
    assert "precision='fp32'" in str(info.value)


def test_fp16_metadata_is_disabled_at_fp32(tmp_path: Path) -> None:
    # This metadata lets XNNPACK compute in fp16 on CPUs with fp16 arithmetic (ARM); at fp32 the
    # plugin hides it from the runtime, in memory, without touching the file.
    path, w, b = dense_model(
        tmp_path / "hinted.tflite", metadata={"reduced_precision_support": b"fp16accfp16"}
    )
    before = path.read_bytes()
    x = np.random.default_rng(2).standard_normal((3, 64)).astype(F32)
    with Engine.load(path, backend="litert") as engine:
        assert engine.settings["reduced_precision_metadata"] == "fp16accfp16"
        assert engine.settings["reduced_precision_metadata_disabled"] is True
        np.testing.assert_allclose(engine.run({"x": x})["y"], dense_reference(x, w, b), atol=1e-4)
    assert path.read_bytes() == before
    # Without XNNPACK nothing reads it, so the file is loaded as it is.
    with Engine.load(path, backend="litert", backend_options={"litert": {"xnnpack": False}}) as e:
        assert e.settings["reduced_precision_metadata_disabled"] is False


# -- options, files, probe -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [("xnnpack", "yes"), ("num_interpreters", 0), ("num_interpreters", True)],
)
def test_invalid_options_are_rejected(tmp_path: Path, option: str, value: object) -> None:
    path, _, _ = dense_model(tmp_path / "dense.tflite")
    with pytest.raises(UnsupportedOptionError, match=option):
        Engine.load(path, backend="litert", backend_options={"litert": {option: value}})


@pytest.mark.parametrize(
    "content", [b"", b"not a flatbuffer at all" * 4, b"\x10\x00\x00\x00TFL3" + b"\xff" * 64]
)
def test_unreadable_files_are_model_load_errors(tmp_path: Path, content: bytes) -> None:
    path = write(tmp_path / "broken.tflite", content)
    with pytest.raises(ModelLoadError, match="broken.tflite") as info:
        LiteRTBackend().open(path, SessionOptions())
    assert info.value.__cause__ is not None


def test_probe_runs_a_model() -> None:
    availability = LiteRTBackend().probe()
    assert availability.ok, availability.reason
    assert availability.devices == ("cpu",)
    assert _session.runtime_info() == (_session.DISTRIBUTION, availability.version)
    assert _session.numpy_mismatch() is None  # the dev environment's runtime works with its numpy


def test_probe_model_is_what_the_writer_writes() -> None:
    writer = ModelWriter("unifer-litert probe: output = input")
    x = writer.tensor("x", [1], F32)
    assert writer.finish({"x": x}, {"x": x}, signature=None) == _session.PROBE_MODEL


def test_reader_finds_metadata_and_custom_ops(tmp_path: Path) -> None:
    path, _, _ = dense_model(tmp_path / "meta.tflite", metadata={"k": b"value"})
    facts = read_facts(path.read_bytes())
    assert facts is not None
    assert facts.metadata["k"].value == b"value"
    assert set(facts.metadata) == {"k"}
    data = path.read_bytes()
    offset = facts.metadata["k"].name_offset
    assert data[offset : offset + 1] == b"k"
    deconv, _, _ = mediapipe_deconv_model(tmp_path / "deconv.tflite")
    custom = read_facts(deconv.read_bytes())
    assert custom is not None and custom.custom_ops == ("Convolution2DTransposeBias",)
    assert read_facts(b"") is None
    assert read_facts(data[: len(data) // 3]) is None
    assert read_facts(b"\x10\x00\x00\x00TFL3" + b"\xff" * 64) is None
