"""The OpenCV plugin against real OpenCV DNN, on arcface-tiny and small ONNX models built here."""

from __future__ import annotations

import gc
import subprocess
import sys
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from unifer import (
    Engine,
    InferenceError,
    InputError,
    ModelLoadError,
    UniferWarning,
    UnsupportedOptionError,
    models,
)
from unifer.backend import BACKEND_API_VERSION, Backend, SessionOptions
from unifer.testing import models as toy
from unifer_opencv import OpenCVBackend, _session, installed_distributions

ort = pytest.importorskip("onnxruntime")

ARCFACE = "arcface-tiny"
ARCFACE_INPUT = "input.1"

# -- models ---------------------------------------------------------------------------------------


def save(
    path: Path,
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[onnx.ValueInfoProto],
    outputs: Sequence[onnx.ValueInfoProto],
    initializers: Sequence[onnx.TensorProto] = (),
    *,
    check: bool = True,
) -> Path:
    graph = helper.make_graph(list(nodes), path.stem, list(inputs), list(outputs), initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if check:
        onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def tensor(name: str, elem: int, shape: Sequence[int | str] | None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


@pytest.fixture(scope="module")
def arcface(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """arcface-tiny (static batch 1), built from code into a private directory."""
    path = tmp_path_factory.mktemp("arcface") / f"{ARCFACE}.onnx"
    onnx.save(models.build(ARCFACE), path)
    return path


@pytest.fixture(scope="module")
def arcface_dynamic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("arcface") / f"{ARCFACE}-dynamic.onnx"
    onnx.save(models.build(ARCFACE, dynamic_batch=True), path)
    return path


def faces(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, 112, 112)).astype(np.float32)


def onnxruntime_reference(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds), strict=True))


def open_opencv(path: Path, **options: Any) -> Engine:
    return Engine.load(path, backend="opencv", **options)


# -- plugin surface -------------------------------------------------------------------------------


def test_backend_class_follows_the_contract() -> None:
    backend = OpenCVBackend()
    assert isinstance(backend, Backend)
    assert backend.name == "opencv"
    assert backend.suffixes == (".onnx",)
    assert backend.install == 'pip install "unifer[opencv]"'
    assert backend.api_version == BACKEND_API_VERSION


def test_importing_the_plugin_does_not_import_cv2() -> None:
    code = "import sys, unifer_opencv; assert 'cv2' not in sys.modules, 'cv2 loaded'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_probe_reports_the_cv2_version_and_the_cpu() -> None:
    availability = OpenCVBackend().probe()
    assert availability.ok, availability.reason
    assert availability.version == cv2.__version__
    assert availability.devices == ("cpu",)


def test_installed_opencv_distributions_are_listed() -> None:
    # The dev environment installs the one this plugin depends on.
    found = [d for d in installed_distributions() if d.startswith("opencv-python-headless ")]
    assert len(found) == 1
    assert found[0].split()[1].startswith(cv2.__version__)


def test_probe_without_cv2_explains_and_does_not_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "unifer_opencv._session", raising=False)
    monkeypatch.setitem(sys.modules, "cv2", None)  # makes `import cv2` fail
    availability = OpenCVBackend().probe()
    assert not availability.ok
    assert "not installed" in (availability.reason or "")
    assert availability.install == 'pip install "unifer[opencv]"'


def test_probe_on_a_build_without_dnn_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    # OpenCV can be built without its dnn module; the real cv2, minus that module, stands for one.
    monkeypatch.delattr(cv2, "dnn")
    availability = OpenCVBackend().probe()
    assert not availability.ok
    assert availability.version == cv2.__version__
    assert "without the dnn module" in (availability.reason or "")
    assert "opencv-python-headless" in (availability.install or "")


def test_probe_on_opencv_4_asks_for_opencv_5(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(cv2.dnn, "ENGINE_NEW")  # what OpenCV 4.x's dnn module looks like
    availability = OpenCVBackend().probe()
    assert not availability.ok
    assert "ENGINE_NEW" in (availability.reason or "")
    assert availability.install == 'pip install -U "opencv-python-headless>=5"'


# -- parity ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["new", "classic"])
def test_arcface_matches_onnxruntime(arcface: Path, engine: str) -> None:
    x = faces(1)
    want = onnxruntime_reference(arcface, {ARCFACE_INPUT: x})["embedding"]
    with open_opencv(arcface, backend_options={"opencv": {"engine": engine}}) as opened:
        assert opened.settings["engine"] == engine
        assert [(s.name, s.shape, s.dtype) for s in opened.inputs] == [
            (ARCFACE_INPUT, (1, 3, 112, 112), np.dtype(np.float32))
        ]
        assert [(s.name, s.shape) for s in opened.outputs] == [("embedding", (1, 512))]
        got = opened.run({ARCFACE_INPUT: x})["embedding"]
    assert got.dtype == np.float32 and got.shape == (1, 512)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


def test_arcface_dynamic_batch_matches_onnxruntime(arcface_dynamic: Path) -> None:
    with open_opencv(arcface_dynamic) as opened:
        assert opened.inputs[0].shape == ("N", 3, 112, 112)
        for batch in (1, 3):
            x = faces(batch, seed=batch)
            want = onnxruntime_reference(arcface_dynamic, {ARCFACE_INPUT: x})["embedding"]
            got = opened.run({ARCFACE_INPUT: x})["embedding"]
            assert got.shape == (batch, 512)
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


@pytest.mark.parametrize("engine", ["new", "classic"])
def test_an_empty_batch_is_refused_not_a_crash(arcface_dynamic: Path, engine: str) -> None:
    # OpenCV's new engine dies of SIGFPE on a zero-size tensor: a crash would end this process.
    with open_opencv(arcface_dynamic, backend_options={"opencv": {"engine": engine}}) as opened:
        with pytest.raises(InputError, match="is empty"):
            opened.run({ARCFACE_INPUT: faces(0)})
        assert opened.run({ARCFACE_INPUT: faces(2)})["embedding"].shape == (2, 512)


# -- settings and precision -----------------------------------------------------------------------


def test_settings_report_what_was_applied(arcface: Path) -> None:
    with open_opencv(arcface, threads=1) as opened:
        assert dict(opened.settings) == {
            "device": "cpu",
            "threads": 1,
            "threads_scope": "process",
            "precision": "fp32",
            "engine": "new",
            "dnn_backend": "DNN_BACKEND_OPENCV",
            "dnn_target": "DNN_TARGET_CPU",
            "runtime_version": cv2.__version__,
        }
        assert cv2.getNumThreads() == 1


def test_threads_none_leaves_opencv_alone_and_reports_it(arcface: Path) -> None:
    cv2.setNumThreads(1)  # as a user might have set it; the conftest fixture restores it
    with open_opencv(arcface, threads=None) as opened:
        assert opened.settings["threads"] == 1
    assert cv2.getNumThreads() == 1
    cv2.setNumThreads(2)
    with open_opencv(arcface, threads=None) as opened:
        assert opened.settings["threads"] == 2


@pytest.mark.parametrize(
    ("precision", "match"),
    [("fp16", "DNN_TARGET_CPU_FP16"), ("bf16", "no bf16"), ("int8", "cannot quantize")],
)
def test_only_fp32_is_accepted(arcface: Path, precision: str, match: str) -> None:
    with pytest.raises(UnsupportedOptionError, match=match):
        open_opencv(arcface, precision=precision)


def test_the_fp16_target_is_not_available_in_this_build() -> None:
    """Why fp16 is rejected: the classic engine's CPU fp16 target is missing from this build, and
    asking for it anyway computes in fp32 (the new engine takes no target at all)."""
    targets = cv2.dnn.getAvailableTargets(cv2.dnn.DNN_BACKEND_OPENCV)
    assert cv2.dnn.DNN_TARGET_CPU_FP16 not in targets


@pytest.mark.parametrize("value", ["auto", "fast", 1])
def test_bad_engine_values_are_rejected(arcface: Path, value: object) -> None:
    with pytest.raises(UnsupportedOptionError, match="'new', 'classic'"):
        open_opencv(arcface, backend_options={"opencv": {"engine": value}})


# -- the process-wide thread count ----------------------------------------------------------------


def test_different_threads_on_two_live_engines_warn(arcface: Path) -> None:
    with open_opencv(arcface, threads=1) as first:
        with pytest.warns(UniferWarning, match=r"process-wide.*threads=2.*threads=1") as record:
            second = open_opencv(arcface, threads=2)
        assert record[0].filename == __file__  # points at the Engine.load call
        with second:
            assert second.settings["threads"] == 2
            assert first.settings["threads"] == 1  # what was applied when it was opened
            assert cv2.getNumThreads() == 2
        # The engine that changed it is gone: the one left runs on what it asked for again.
        assert cv2.getNumThreads() == 1


def test_same_threads_or_none_do_not_warn(arcface: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with (
            open_opencv(arcface, threads=2),
            open_opencv(arcface, threads=2),
            open_opencv(arcface, threads=None) as default,
        ):
            assert default.settings["threads"] == 2
        with open_opencv(arcface, threads=None), open_opencv(arcface, threads=1):
            pass


def test_closed_and_collected_engines_release_their_thread_request(arcface: Path) -> None:
    backend = OpenCVBackend()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        open_opencv(arcface, threads=1).close()
        open_opencv(arcface, threads=2).close()
        unclosed = backend.open(arcface, SessionOptions(threads=3))
        del unclosed
        gc.collect()
        open_opencv(arcface, threads=4).close()
    assert _session._THREADS.in_force is None  # no request is left


# -- thread safety and ownership ------------------------------------------------------------------


def test_eight_threads_match_serial_runs(arcface: Path) -> None:
    inputs = [faces(1, seed=i) for i in range(8)]
    with open_opencv(arcface, threads=2) as opened, open_opencv(arcface) as other:
        serial = [opened.run({ARCFACE_INPUT: x})["embedding"] for x in inputs]
        results: list[list[np.ndarray]] = [[] for _ in inputs]
        barrier = threading.Barrier(len(inputs))

        def work(i: int) -> None:
            engine = opened if i % 2 else other  # two Nets running at once, too
            barrier.wait()
            for _ in range(5):
                results[i].append(engine.run({ARCFACE_INPUT: inputs[i]})["embedding"])

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for got, want in zip(results, serial, strict=True):
        assert len(got) == 5
        for value in got:
            np.testing.assert_array_equal(value, want)


def test_outputs_are_fresh_arrays_the_caller_owns(tmp_path: Path) -> None:
    """Identity outputs, an intermediate that is also an output and a constant output: none may
    alias the feeds, the Net's buffers or another call's results."""
    path = save(
        tmp_path / "aliases.onnx",
        [
            helper.make_node("Identity", ["x"], ["same"]),
            helper.make_node("Relu", ["x"], ["relu"]),
            helper.make_node("Identity", ["relu"], ["relu_again"]),
            helper.make_node("Identity", ["c"], ["constant"]),
        ],
        [tensor("x", TensorProto.FLOAT, [1, 4])],
        [
            tensor("same", TensorProto.FLOAT, [1, 4]),
            tensor("relu", TensorProto.FLOAT, [1, 4]),
            tensor("relu_again", TensorProto.FLOAT, [1, 4]),
            tensor("constant", TensorProto.FLOAT, [4]),
        ],
        [numpy_helper.from_array(np.arange(4, dtype=np.float32), "c")],
    )
    x1 = np.array([[-1, 2, -3, 4]], np.float32)
    x2 = np.array([[5, -6, 7, -8]], np.float32)
    with open_opencv(path) as opened:
        assert [s.name for s in opened.outputs] == ["same", "relu", "relu_again", "constant"]
        first = opened.run({"x": x1})
        for value in first.values():
            assert not np.shares_memory(value, x1)
            value[...] = 99  # writable, and writing into it must not reach the Net
        second = opened.run({"x": x2})
        x2[...] = 0  # the Net copied the feed; the results must not change with it
    np.testing.assert_array_equal(second["same"], [[5, -6, 7, -8]])
    np.testing.assert_array_equal(second["relu"], [[5, 0, 7, 0]])
    np.testing.assert_array_equal(second["relu_again"], [[5, 0, 7, 0]])
    np.testing.assert_array_equal(second["constant"], [0, 1, 2, 3])
    for name in first:
        assert not np.shares_memory(first[name], second[name])


# -- types and shapes -----------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["new", "classic"])
def test_outputs_come_back_in_graph_order_by_name(tmp_path: Path, engine: str) -> None:
    # The classic engine lists its unconnected outputs in another order; forward(names) is used.
    path = save(
        tmp_path / "order.onnx",
        [
            helper.make_node("Neg", ["x"], ["z_neg"]),
            helper.make_node("Relu", ["x"], ["a_relu"]),
            helper.make_node("Abs", ["x"], ["m_abs"]),
        ],
        [tensor("x", TensorProto.FLOAT, ["N", 3])],
        [tensor(n, TensorProto.FLOAT, ["N", 3]) for n in ("z_neg", "a_relu", "m_abs")],
    )
    x = np.array([[-1, 0, 2], [3, -4, 5]], np.float32)
    with open_opencv(path, backend_options={"opencv": {"engine": engine}}) as opened:
        assert [s.name for s in opened.outputs] == ["z_neg", "a_relu", "m_abs"]
        out = opened.run({"x": x})
    assert list(out) == ["z_neg", "a_relu", "m_abs"]
    np.testing.assert_array_equal(out["z_neg"], -x)
    np.testing.assert_array_equal(out["a_relu"], np.maximum(x, 0))
    np.testing.assert_array_equal(out["m_abs"], np.abs(x))


def test_int64_within_int32_is_exact_and_beyond_it_is_refused(tmp_path: Path) -> None:
    model = toy.multi_io()
    with open_opencv(model.save(tmp_path)) as opened:
        feeds = model.feeds(batch=3)
        feeds["k"] = np.array([-(2**31), 0, 2**31 - 2], np.int64)
        got = opened.run(feeds)
        assert got["k_plus_one"].dtype == np.int64
        np.testing.assert_array_equal(got["k_plus_one"], feeds["k"] + 1)
        feeds["k"] = np.array([1, 2**40, 3], np.int64)  # OpenCV would return 1, 1, 4
        with pytest.raises(InputError, match=r"'k'.*int32 range.*onnxruntime"):
            opened.run(feeds)


def test_classic_engine_cannot_compute_int64(tmp_path: Path) -> None:
    """A known limit of the opt-in classic engine: it stores int64 as int32, then refuses to add
    the int32 feed to the int64 constant. The error comes out as an InferenceError."""
    model = toy.multi_io()
    options = {"opencv": {"engine": "classic"}}
    with (
        open_opencv(model.save(tmp_path), backend_options=options) as opened,
        pytest.raises(InferenceError, match="equal types") as info,
    ):
        opened.run(model.feeds())
    assert isinstance(info.value.__cause__, cv2.error)


def test_float16_outputs_keep_their_declared_type(tmp_path: Path) -> None:
    # OpenCV computes float16 tensors in float32 and returns float32; the plugin casts back.
    path = save(
        tmp_path / "half.onnx",
        [helper.make_node("Mul", ["x", "x"], ["y"])],
        [tensor("x", TensorProto.FLOAT16, ["N", 2])],
        [tensor("y", TensorProto.FLOAT16, ["N", 2])],
    )
    x = np.array([[1.5, -2.0], [0.25, 3.0]], np.float16)
    with open_opencv(path) as opened:
        assert opened.outputs[0].dtype == np.float16
        y = opened.run({"x": x})["y"]
    assert y.dtype == np.float16
    np.testing.assert_array_equal(y, x * x)


def test_scalar_inputs_and_outputs(tmp_path: Path) -> None:
    path = save(
        tmp_path / "scalar.onnx",
        [
            helper.make_node("Add", ["s", "x"], ["y"]),
            helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
        ],
        [tensor("s", TensorProto.FLOAT, []), tensor("x", TensorProto.FLOAT, [3])],
        [tensor("y", TensorProto.FLOAT, [3]), tensor("total", TensorProto.FLOAT, [])],
    )
    with open_opencv(path) as opened:
        assert [s.shape for s in opened.inputs] == [(), (3,)]
        out = opened.run({"s": np.array(2, np.float32), "x": np.array([1, 2, 3], np.float32)})
    np.testing.assert_array_equal(out["y"], [3, 4, 5])
    assert out["total"].shape == ()
    assert out["total"] == 6


def test_unsupported_element_types_are_refused_when_opening(tmp_path: Path) -> None:
    # The new engine drops a uint32 input without an error ("Requested blob not found" at run).
    path = save(
        tmp_path / "u32.onnx",
        [helper.make_node("Identity", ["x"], ["y"])],
        [tensor("x", TensorProto.UINT32, [2])],
        [tensor("y", TensorProto.UINT32, [2])],
    )
    with pytest.raises(ModelLoadError, match=r"input 'x' of element type uint32"):
        open_opencv(path)


def test_float64_is_refused_since_opencv_computes_it_in_float32(tmp_path: Path) -> None:
    # Relu of 1e300 came back as inf, of 1 + 1e-12 as 1.0, both labelled float64.
    path = save(
        tmp_path / "f64.onnx",
        [helper.make_node("Relu", ["x"], ["y"])],
        [tensor("x", TensorProto.DOUBLE, [4])],
        [tensor("y", TensorProto.DOUBLE, [4])],
    )
    with pytest.raises(ModelLoadError, match=r"float64 input 'x'.*backend='onnxruntime'"):
        open_opencv(path)


def test_initializers_listed_as_inputs_are_not_inputs(tmp_path: Path) -> None:
    # IR version 3 exporters list every weight among the graph inputs.
    weights = np.arange(6, dtype=np.float32).reshape(3, 2)
    path = save(
        tmp_path / "ir3.onnx",
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        [tensor("x", TensorProto.FLOAT, [1, 3]), tensor("w", TensorProto.FLOAT, [3, 2])],
        [tensor("y", TensorProto.FLOAT, [1, 2])],
        [numpy_helper.from_array(weights, "w")],
    )
    with open_opencv(path) as opened:
        assert [s.name for s in opened.inputs] == ["x"]
        y = opened.run({"x": np.ones((1, 3), np.float32)})["y"]
    np.testing.assert_array_equal(y, np.ones((1, 3), np.float32) @ weights)


# -- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["new", "classic"])
@pytest.mark.parametrize("damage", ["truncated", "not a model", "empty"])
def test_corrupt_model_is_a_model_load_error(
    arcface: Path, tmp_path: Path, engine: str, damage: str
) -> None:
    data = arcface.read_bytes()
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(
        {"truncated": data[: len(data) // 2], "not a model": b"<html>404</html>", "empty": b""}[
            damage
        ]
    )
    with pytest.raises(ModelLoadError) as info:
        open_opencv(broken, backend_options={"opencv": {"engine": engine}})
    assert "broken.onnx" in str(info.value)
    assert isinstance(info.value.__cause__, cv2.error)


def test_unsupported_operator_is_a_model_load_error(tmp_path: Path) -> None:
    # The new engine returns an empty Net instead of raising for operators it lacks.
    path = save(
        tmp_path / "mvn.onnx",
        [helper.make_node("MeanVarianceNormalization", ["x"], ["y"])],
        [tensor("x", TensorProto.FLOAT, [1, 4, 2, 2])],
        [tensor("y", TensorProto.FLOAT, [1, 4, 2, 2])],
    )
    with pytest.raises(
        ModelLoadError, match=r"new DNN engine cannot build a network from .*mvn\.onnx"
    ):
        open_opencv(path)


def test_run_after_close_is_an_inference_error(arcface: Path) -> None:
    session = OpenCVBackend().open(arcface, SessionOptions())
    session.close()
    with pytest.raises(InferenceError, match="closed"):
        session.run({ARCFACE_INPUT: faces(1)})


def test_a_failed_run_leaves_the_session_usable(arcface: Path) -> None:
    session = OpenCVBackend().open(arcface, SessionOptions())
    try:
        with pytest.raises(InferenceError) as info:  # bypasses the Engine's shape check
            session.run({ARCFACE_INPUT: np.zeros((1, 3, 64, 64), np.float32)})
        assert isinstance(info.value.__cause__, cv2.error)
        x = faces(1)
        want = onnxruntime_reference(arcface, {ARCFACE_INPUT: x})["embedding"]
        got = session.run({ARCFACE_INPUT: x})["embedding"]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    finally:
        session.close()


def test_a_graph_output_without_a_shape_is_a_model_load_error(tmp_path: Path) -> None:
    # OpenCV asserts that every graph input and output declares its shape (onnx's checker wants
    # it too, but onnxruntime runs such files).
    path = save(
        tmp_path / "noshape.onnx",
        [helper.make_node("Relu", ["x"], ["y"])],
        [tensor("x", TensorProto.FLOAT, [1, 4])],
        [tensor("y", TensorProto.FLOAT, None)],
        check=False,
    )
    with pytest.raises(ModelLoadError, match=r"noshape\.onnx.*has_shape") as info:
        open_opencv(path)
    assert isinstance(info.value.__cause__, cv2.error)


@pytest.mark.xfail(
    reason="OpenCV 5.0.0 bug, both engines: the vectorized Tanh returns NaN for x > ~44 (exp "
    "overflow); short tensors that take the scalar path are right",
    strict=True,
)
def test_tanh_of_large_inputs(tmp_path: Path) -> None:
    path = save(
        tmp_path / "tanh.onnx",
        [helper.make_node("Tanh", ["x"], ["y"])],
        [tensor("x", TensorProto.FLOAT, [1, 128])],
        [tensor("y", TensorProto.FLOAT, [1, 128])],
    )
    x = np.linspace(-200, 200, 128, dtype=np.float32)[np.newaxis]
    with open_opencv(path) as opened:
        y = opened.run({"x": x})["y"]
    np.testing.assert_allclose(y, np.tanh(x), atol=1e-6)
