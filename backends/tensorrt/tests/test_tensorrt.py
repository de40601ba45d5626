"""The TensorRT plugin against real TensorRT on an NVIDIA GPU (every test here is ``gpu``).

Outputs are compared with onnxruntime on CPU running the same ONNX file (the fp32 reference),
on the built-in arcface-tiny model and on small models built here with onnx.helper. Where TensorRT
cannot run these tests skip, saying why; see the plugin README for what has run where.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper, save_model

from unifer import Engine, InputError, ModelLoadError, UniferWarning, UnsupportedOptionError
from unifer import models as builtin
from unifer.testing import models

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("requires_tensorrt")]

ARCFACE_INPUT = "input.1"
ARCFACE_OUTPUT = "embedding"


def reference(model: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def assert_faithful(got: np.ndarray, want: np.ndarray, tolerance: float = 1e-4) -> None:
    """Within ``tolerance`` of the output's scale (the project's fp32 promise)."""
    scale = float(np.abs(want).max())
    error = float(np.abs(got - want).max())
    assert error <= tolerance * scale, f"max abs error {error:.3g} vs scale {scale:.3g}"


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def images(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, 112, 112)).astype(np.float32)


def save(
    path: Path,
    nodes: Sequence[Any],
    inputs: Sequence[Any],
    outputs: Sequence[Any],
    initializers: Sequence[Any] = (),
) -> Path:
    graph = helper.make_graph(list(nodes), path.stem, list(inputs), list(outputs), initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    save_model(model, str(path))
    return path


@pytest.fixture
def arcface(tmp_path: Path) -> Path:
    """arcface-tiny (fixed batch 1) copied to a directory of its own."""
    target = tmp_path / "arcface-tiny.onnx"
    shutil.copyfile(builtin.path("arcface-tiny"), target)
    return target


# -- parity ----------------------------------------------------------------------------------------


def test_arcface_tiny_matches_onnxruntime_at_fp32(arcface: Path) -> None:
    x = images(1)
    with Engine.load(arcface, backend="tensorrt") as engine:
        got = engine.run({ARCFACE_INPUT: x})[ARCFACE_OUTPUT]
        settings = dict(engine.settings)
    want = reference(arcface, {ARCFACE_INPUT: x})[ARCFACE_OUTPUT]
    assert got.shape == want.shape == (1, 512)
    assert_faithful(got, want)
    assert cosine(got, want) > 0.99999
    assert settings["precision"] == "fp32"
    assert settings["tf32"] is False
    assert settings["strongly_typed"] is True
    assert settings["device"] == "cuda:0"
    assert settings["compute_capability"]


def test_arcface_tiny_dynamic_batch(tmp_path: Path) -> None:
    model = tmp_path / "arcface-tiny-dynamic.onnx"
    shutil.copyfile(builtin.path("arcface-tiny", dynamic_batch=True), model)
    options = {"tensorrt": {"max_batch": 8}}
    with Engine.load(model, backend="tensorrt", backend_options=options) as engine:
        assert engine.inputs[0].shape[0] is None
        assert engine.settings["profiles"] == {
            ARCFACE_INPUT: {
                "min": [1, 3, 112, 112],
                "opt": [1, 3, 112, 112],
                "max": [8, 3, 112, 112],
            }
        }
        for batch in (1, 5, 8):
            x = images(batch, seed=batch)
            got = engine.run({ARCFACE_INPUT: x})[ARCFACE_OUTPUT]
            assert_faithful(got, reference(model, {ARCFACE_INPUT: x})[ARCFACE_OUTPUT])
        for outside in (0, 9):  # a shape outside the profile is the caller's to change
            with pytest.raises(InputError) as info:
                engine.run({ARCFACE_INPUT: images(outside)})
            message = str(info.value)
            assert "from [1, 3, 112, 112] to [8, 3, 112, 112]" in message
            assert "max_batch" in message
        # The context is still usable after a refused shape.
        x = images(2)
        assert_faithful(
            engine.run({ARCFACE_INPUT: x})[ARCFACE_OUTPUT],
            reference(model, {ARCFACE_INPUT: x})[ARCFACE_OUTPUT],
        )


def test_reduced_precisions(arcface: Path) -> None:
    x = images(1)
    want = reference(arcface, {ARCFACE_INPUT: x})[ARCFACE_OUTPUT]
    probe = Engine.load(arcface, backend="tensorrt")
    weak_typing = str(probe.settings["runtime_version"]).startswith("10.")
    capability = tuple(int(p) for p in str(probe.settings["compute_capability"]).split("."))
    probe.close()
    for precision in ("fp16", "bf16"):
        possible = weak_typing and (precision == "fp16" or capability >= (8, 0))
        if not possible:
            with pytest.raises(UnsupportedOptionError):
                Engine.load(arcface, backend="tensorrt", precision=precision)
            continue
        with Engine.load(arcface, backend="tensorrt", precision=precision) as engine:
            got = engine.run({ARCFACE_INPUT: x})[ARCFACE_OUTPUT]
            assert engine.settings["precision"] == precision
            assert engine.settings["strongly_typed"] is False
            assert engine.settings["builder_flags"] == [precision.upper()]
        assert cosine(got, want) > 0.999, precision


def test_tf32_is_opt_in(arcface: Path) -> None:
    x = images(1)
    want = reference(arcface, {ARCFACE_INPUT: x})[ARCFACE_OUTPUT]
    options = {"tensorrt": {"tf32": True}}
    with Engine.load(arcface, backend="tensorrt", backend_options=options) as engine:
        got = engine.run({ARCFACE_INPUT: x})[ARCFACE_OUTPUT]
        assert engine.settings["tf32"] is True
    assert cosine(got, want) > 0.9999


def test_int8_needs_a_quantized_model(arcface: Path) -> None:
    with pytest.raises(UnsupportedOptionError, match="no QuantizeLinear/DequantizeLinear"):
        Engine.load(arcface, backend="tensorrt", precision="int8")


def qdq_model(path: Path) -> Path:
    """y = dq(q(x)) @ dq(q(W)): an explicitly quantized (Q/DQ, symmetric int8) MatMul."""
    rng = np.random.default_rng(3)
    weights = rng.standard_normal((64, 32)).astype(np.float32)
    x_scale = np.array(4.0 / 127, np.float32)
    w_scale = np.array(np.abs(weights).max() / 127, np.float32)
    zero = np.array(0, np.int8)
    return save(
        path,
        [
            helper.make_node("QuantizeLinear", ["x", "x_scale", "zero"], ["xq"]),
            helper.make_node("DequantizeLinear", ["xq", "x_scale", "zero"], ["xd"]),
            helper.make_node("QuantizeLinear", ["W", "w_scale", "zero"], ["wq"]),
            helper.make_node("DequantizeLinear", ["wq", "w_scale", "zero"], ["wd"]),
            helper.make_node("MatMul", ["xd", "wd"], ["y"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 32])],
        [
            numpy_helper.from_array(weights, "W"),
            numpy_helper.from_array(x_scale, "x_scale"),
            numpy_helper.from_array(w_scale, "w_scale"),
            numpy_helper.from_array(zero, "zero"),
        ],
    )


def test_int8_from_an_explicitly_quantized_model(tmp_path: Path) -> None:
    model = qdq_model(tmp_path / "qdq.onnx")
    x = np.random.default_rng(4).standard_normal((4, 64)).astype(np.float32)
    with Engine.load(model, backend="tensorrt", precision="int8") as engine:
        got = engine.run({"x": x})["y"]
        assert engine.settings["precision"] == "int8"
        assert engine.settings["quantize_layers"] == 4
    assert_faithful(got, reference(model, {"x": x})["y"], tolerance=1e-3)


# -- the engine cache ------------------------------------------------------------------------------


def test_the_engine_cache_builds_once_and_rebuilds_what_does_not_match(
    arcface: Path, cache_root: Path
) -> None:
    x = images(1)
    with Engine.load(arcface, backend="tensorrt") as engine:
        first = engine.run({ARCFACE_INPUT: x})[ARCFACE_OUTPUT]
        built = dict(engine.settings)
    assert built["loaded_from_cache"] is False
    assert built["cache_miss"] == "no cached engine for this model, GPU and options"
    assert isinstance(built["build_s"], float)
    engine_file = Path(str(built["engine_cache"]))
    record_file = engine_file.with_suffix(".json")
    timing_file = Path(str(built["timing_cache"]))
    assert engine_file.parent.parent == cache_root / "backends" / "tensorrt"
    assert engine_file.stat().st_size > 0 and timing_file.stat().st_size > 0
    record = json.loads(record_file.read_text())
    assert record["key"]["tensorrt_version"] == built["runtime_version"]
    assert record["key"]["gpu_name"] == built["gpu"]
    assert record["key"]["compute_capability"] == built["compute_capability"]
    assert record["key"]["precision"] == "fp32"

    with Engine.load(arcface, backend="tensorrt") as engine:
        np.testing.assert_array_equal(engine.run({ARCFACE_INPUT: x})[ARCFACE_OUTPUT], first)
        assert engine.settings["loaded_from_cache"] is True
        assert engine.settings["cache_miss"] is None

    # A record from another TensorRT version: rebuilt, never loaded, and the record replaced.
    record["key"]["tensorrt_version"] = "9.0.0"
    record_file.write_text(json.dumps(record))
    with Engine.load(arcface, backend="tensorrt") as engine:
        assert engine.settings["loaded_from_cache"] is False
        assert "TensorRT version 9.0.0 and this is" in str(engine.settings["cache_miss"])
    assert (
        json.loads(record_file.read_text())["key"]["tensorrt_version"] == built["runtime_version"]
    )

    # A damaged engine file: rebuilt.
    data = bytearray(engine_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    engine_file.write_bytes(bytes(data))
    with Engine.load(arcface, backend="tensorrt") as engine:
        assert engine.settings["cache_miss"] == (
            "the cached engine file does not match its record (sha256)"
        )
        np.testing.assert_array_equal(engine.run({ARCFACE_INPUT: x})[ARCFACE_OUTPUT], first)
    assert sorted(p.name for p in arcface.parent.iterdir()) == [arcface.name]


def test_cache_false_writes_nothing(arcface: Path, cache_root: Path) -> None:
    options = {"tensorrt": {"cache": False}}
    with Engine.load(arcface, backend="tensorrt", backend_options=options) as engine:
        assert engine.settings["engine_cache"] is None
        assert engine.settings["loaded_from_cache"] is False
    assert not (cache_root / "backends" / "tensorrt" / "engines").exists()


# -- serialized engines ---------------------------------------------------------------------------


def test_engine_and_plan_files_run_as_built(arcface: Path, tmp_path: Path) -> None:
    x = images(1)
    with Engine.load(arcface, backend="tensorrt") as engine:
        want = engine.run({ARCFACE_INPUT: x})[ARCFACE_OUTPUT]
        cached = Path(str(engine.settings["engine_cache"]))
    saved = tmp_path / "saved"
    saved.mkdir()
    for name in ("arcface.engine", "arcface.PLAN"):
        shutil.copyfile(cached, saved / name)
        with Engine.load(saved / name, backend="tensorrt") as engine:
            assert engine.settings["precision"] == "as built"
            assert engine.settings["source"] == "serialized engine"
            assert [s.name for s in engine.inputs] == [ARCFACE_INPUT]
            np.testing.assert_array_equal(engine.run({ARCFACE_INPUT: x})[ARCFACE_OUTPUT], want)
        with pytest.raises(UnsupportedOptionError, match="runs it as built"):
            Engine.load(saved / name, backend="tensorrt", precision="fp16")
    assert sorted(p.name for p in saved.iterdir()) == ["arcface.PLAN", "arcface.engine"]


def test_a_truncated_engine_file_is_a_model_load_error(arcface: Path, tmp_path: Path) -> None:
    with Engine.load(arcface, backend="tensorrt") as engine:
        data = Path(str(engine.settings["engine_cache"])).read_bytes()
    broken = tmp_path / "broken.engine"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError) as info:
        Engine.load(broken, backend="tensorrt")
    assert "broken.engine" in str(info.value)
    assert info.value.__cause__ is not None


# -- profiles, contexts, options -------------------------------------------------------------------


def conv_model(path: Path) -> Path:
    """A 3x3 convolution over an image of any size: dynamic batch, height and width."""
    weights = np.random.default_rng(5).standard_normal((4, 3, 3, 3)).astype(np.float32)
    return save(
        path,
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, "H", "W"])],
        [numpy_helper.from_array(weights, "w")],
    )


def test_dynamic_image_sizes_need_and_use_a_profile(tmp_path: Path) -> None:
    model = conv_model(tmp_path / "conv.onnx")
    with pytest.raises(UnsupportedOptionError, match="axes 2, 3 besides the batch"):
        Engine.load(model, backend="tensorrt")
    profile = {"min": [1, 3, 16, 16], "opt": [1, 3, 64, 64], "max": [2, 3, 128, 128]}
    options = {"tensorrt": {"profiles": {"x": profile}}}
    with Engine.load(model, backend="tensorrt", backend_options=options) as engine:
        assert engine.settings["profiles"] == {"x": profile}
        for shape in ((1, 3, 16, 16), (2, 3, 128, 100), (1, 3, 33, 47)):
            x = np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)
            got = engine.run({"x": x})["y"]
            assert_faithful(got, reference(model, {"x": x})["y"])


def test_more_threads_than_contexts(tmp_path: Path) -> None:
    model = models.mlp()
    path = model.save(tmp_path)
    feeds = [model.feeds(batch=1 + i % 3, seed=i) for i in range(8)]
    options = {"tensorrt": {"max_contexts": 2}}
    with Engine.load(path, backend="tensorrt", backend_options=options) as engine:
        serial = [engine.run(f)["y"] for f in feeds]
        results: list[list[np.ndarray]] = [[] for _ in feeds]
        barrier = threading.Barrier(len(feeds))

        def work(i: int) -> None:
            barrier.wait()
            for _ in range(25):
                results[i].append(engine.run(feeds[i])["y"])

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(feeds))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert engine.settings["max_contexts"] == 2
    for got, want in zip(results, serial, strict=True):
        assert len(got) == 25
        for result in got:
            np.testing.assert_array_equal(result, want)


def test_a_device_that_does_not_exist(arcface: Path) -> None:
    options = {"tensorrt": {"device": 64}}
    with pytest.raises(UnsupportedOptionError, match="'device' is 64, but this process sees"):
        Engine.load(arcface, backend="tensorrt", backend_options=options)


def test_threads_warn(arcface: Path) -> None:
    with (
        pytest.warns(UniferWarning, match="does not apply to TensorRT"),
        Engine.load(arcface, backend="tensorrt", threads=2) as engine,
    ):
        assert engine.settings["threads"] is None
