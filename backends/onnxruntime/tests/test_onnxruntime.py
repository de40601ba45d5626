"""Tests of the onnxruntime backend against the real runtime, on small models built here."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper, save_model

import unifer_onnxruntime
from unifer import (
    Engine,
    InferenceError,
    ModelLoadError,
    UniferWarning,
    UnsupportedOptionError,
)
from unifer import _registry as registry
from unifer.backend import BACKEND_API_VERSION, Backend, Session, SessionOptions
from unifer_onnxruntime import OnnxRuntimeBackend, _session, installed_distributions
from unifer_onnxruntime._session import CPU, CUDA, _requested_providers

RNG = np.random.default_rng(0)
W1 = RNG.standard_normal((4, 8)).astype(np.float32)
B1 = RNG.standard_normal(8).astype(np.float32)
W2 = RNG.standard_normal((8, 3)).astype(np.float32)


def save(
    path: Path,
    nodes: Sequence[Any],
    inputs: Sequence[Any],
    outputs: Sequence[Any],
    initializers: Sequence[Any] = (),
) -> Path:
    graph = helper.make_graph(
        list(nodes), path.stem, list(inputs), list(outputs), list(initializers)
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every onnxruntime this plugin supports
    save_model(model, path)
    return path


def tensor(name: str, elem: int, shape: Sequence[int | str | None] | None) -> Any:
    return helper.make_tensor_value_info(name, elem, shape)


@pytest.fixture
def mlp(tmp_path: Path) -> Path:
    """y = relu(x @ W1 + B1) @ W2 with a symbolic batch dimension."""
    return save(
        tmp_path / "mlp.onnx",
        [
            helper.make_node("MatMul", ["x", "W1"], ["h"]),
            helper.make_node("Add", ["h", "B1"], ["hb"]),
            helper.make_node("Relu", ["hb"], ["r"]),
            helper.make_node("MatMul", ["r", "W2"], ["y"]),
        ],
        [tensor("x", TensorProto.FLOAT, ["batch", 4])],
        [tensor("y", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(a, n) for a, n in ((W1, "W1"), (B1, "B1"), (W2, "W2"))],
    )


def mlp_reference(x: np.ndarray) -> np.ndarray:
    return np.maximum(x @ W1 + B1, 0) @ W2  # type: ignore[no-any-return]


@pytest.fixture
def multi_io(tmp_path: Path) -> Path:
    """Two inputs (float32 and int64), two outputs: scaled = x * 2, shifted = idx + 1."""
    return save(
        tmp_path / "multi.onnx",
        [
            helper.make_node("Mul", ["x", "two"], ["scaled"]),
            helper.make_node("Add", ["idx", "one"], ["shifted"]),
        ],
        [tensor("x", TensorProto.FLOAT, ["n", 3]), tensor("idx", TensorProto.INT64, ["n"])],
        [
            tensor("scaled", TensorProto.FLOAT, ["n", 3]),
            tensor("shifted", TensorProto.INT64, ["n"]),
        ],
        [
            numpy_helper.from_array(np.array(2, np.float32), "two"),
            numpy_helper.from_array(np.array(1, np.int64), "one"),
        ],
    )


def session(model: Path, **options: Any) -> Session:
    return OnnxRuntimeBackend().open(model, SessionOptions(**options))


# --- the plugin itself ----------------------------------------------------------------------------


def test_class_attributes_and_registration() -> None:
    assert OnnxRuntimeBackend.name == "onnxruntime"
    assert OnnxRuntimeBackend.suffixes == (".onnx", ".ort")
    assert OnnxRuntimeBackend.install == 'pip install "unifer[onnxruntime]"'
    assert OnnxRuntimeBackend.api_version == BACKEND_API_VERSION
    assert isinstance(OnnxRuntimeBackend(), Backend)
    assert isinstance(registry.get_backend("onnxruntime"), OnnxRuntimeBackend)


def test_importing_the_plugin_does_not_import_onnxruntime() -> None:
    code = "import sys, unifer_onnxruntime; print('onnxruntime' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_probe_reports_version_and_devices() -> None:
    availability = OnnxRuntimeBackend().probe()
    assert availability.ok, availability.reason
    assert availability.version == ort.__version__
    assert availability.devices[0] == "cpu"
    assert ("cuda:0" in availability.devices) == (
        "CUDAExecutionProvider" in ort.get_available_providers()
    )


@pytest.mark.parametrize(
    ("gpus", "accelerators"), [([{"vendor": "nvidia", "name": "H100"}], ("cuda:0",)), ([], ())]
)
def test_probe_names_the_cuda_ep_an_accelerator_only_beside_an_nvidia_gpu(
    monkeypatch: pytest.MonkeyPatch, gpus: list[dict[str, str]], accelerators: tuple[str, ...]
) -> None:
    # A GPU build lists the CUDA EP on any machine; auto should try it only where a GPU is.
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(unifer_onnxruntime, "fingerprint", lambda runtimes: {"gpus": gpus})
    availability = OnnxRuntimeBackend().probe()
    assert availability.devices == ("cpu", "cuda:0")
    assert availability.accelerators == accelerators


def test_probe_when_onnxruntime_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    availability = OnnxRuntimeBackend().probe()
    assert not availability.ok
    assert availability.reason == "onnxruntime is not installed"
    assert availability.install == 'pip install "unifer[onnxruntime]"'


def test_probe_when_onnxruntime_is_broken(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "onnxruntime"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('libonnxruntime.so: cannot open')\n")
    monkeypatch.delitem(sys.modules, "onnxruntime")
    monkeypatch.syspath_prepend(str(tmp_path))
    availability = OnnxRuntimeBackend().probe()
    assert not availability.ok
    assert availability.reason is not None and "libonnxruntime.so" in availability.reason
    assert availability.install is not None and "--force-reinstall" in availability.install


def test_probe_refuses_two_onnxruntime_distributions(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata as metadata

    def version(dist: str) -> str:
        if dist in ("onnxruntime", "onnxruntime-gpu"):
            return "1.32.0"
        raise metadata.PackageNotFoundError(dist)

    monkeypatch.setattr(metadata, "version", version)
    assert installed_distributions() == ["onnxruntime", "onnxruntime-gpu"]
    availability = OnnxRuntimeBackend().probe()
    assert not availability.ok
    assert availability.reason is not None and "26996" in availability.reason
    assert availability.install == (
        "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu"
    )


def test_probe_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> list[str]:
        raise RuntimeError("driver exploded")

    monkeypatch.setattr(ort, "get_available_providers", boom)
    availability = OnnxRuntimeBackend().probe()
    assert not availability.ok
    assert availability.reason is not None and "driver exploded" in availability.reason


# --- loading and running --------------------------------------------------------------------------


def test_engine_matches_numpy_with_dynamic_batch(mlp: Path) -> None:
    with Engine.load(mlp, backend="onnxruntime") as engine:
        assert engine.backend == "onnxruntime"
        (spec,) = engine.inputs
        assert (spec.name, spec.shape, spec.dtype) == ("x", ("batch", 4), np.dtype(np.float32))
        assert engine.outputs[0].shape == ("batch", 3)
        for batch in (1, 5):
            x = RNG.standard_normal((batch, 4)).astype(np.float32)
            np.testing.assert_allclose(engine.predict(x), mlp_reference(x), rtol=1e-5, atol=1e-5)


def test_session_directly(mlp: Path) -> None:
    sess = session(mlp)
    assert isinstance(sess, Session)
    x = RNG.standard_normal((3, 4)).astype(np.float32)
    out = sess.run({"x": x})
    assert list(out) == ["y"]
    assert out["y"].dtype == np.float32
    np.testing.assert_allclose(out["y"], mlp_reference(x), rtol=1e-5, atol=1e-5)
    sess.close()


def test_multi_input_multi_output_with_int64(multi_io: Path) -> None:
    engine = Engine.load(multi_io, backend="onnxruntime")
    assert [(s.name, s.shape, s.dtype) for s in engine.inputs] == [
        ("x", ("n", 3), np.dtype(np.float32)),
        ("idx", ("n",), np.dtype(np.int64)),
    ]
    assert [(s.name, s.dtype) for s in engine.outputs] == [
        ("scaled", np.dtype(np.float32)),
        ("shifted", np.dtype(np.int64)),
    ]
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    idx = np.array([7, -3], dtype=np.int64)
    out = engine.run({"x": x, "idx": idx})
    assert list(out) == ["scaled", "shifted"]
    np.testing.assert_array_equal(out["scaled"], x * 2)
    np.testing.assert_array_equal(out["shifted"], idx + 1)
    assert out["shifted"].dtype == np.int64


def test_element_types_and_unknown_dims(tmp_path: Path) -> None:
    cases = {
        "f16": (TensorProto.FLOAT16, np.float16),
        "b": (TensorProto.BOOL, np.bool_),
        "s": (TensorProto.STRING, np.object_),
        "i8": (TensorProto.INT8, np.int8),
        "u8": (TensorProto.UINT8, np.uint8),
        "f64": (TensorProto.DOUBLE, np.float64),
        "i32": (TensorProto.INT32, np.int32),
    }
    model = save(
        tmp_path / "types.onnx",
        [helper.make_node("Identity", [n], [f"{n}_out"]) for n in cases],
        [tensor(n, elem, [None, 2]) for n, (elem, _) in cases.items()],
        [tensor(f"{n}_out", elem, [None, 2]) for n, (elem, _) in cases.items()],
    )
    sess = session(model)
    assert [(s.name, s.shape, s.dtype) for s in sess.inputs] == [
        (n, (None, 2), np.dtype(dt)) for n, (_, dt) in cases.items()
    ]
    feeds: dict[str, np.ndarray] = {n: np.ones((1, 2), dtype=dt) for n, (_, dt) in cases.items()}
    feeds["s"] = np.array([["a", "bc"]], dtype=object)
    out = sess.run(feeds)
    for name, array in feeds.items():
        assert out[f"{name}_out"].dtype == array.dtype
        np.testing.assert_array_equal(out[f"{name}_out"], array)


@pytest.fixture
def scalar_model(tmp_path: Path) -> Path:
    """y = x * float(k) with k an int64 scalar (rank 0), like silero-vad's ``sr`` input."""
    return save(
        tmp_path / "scalar.onnx",
        [
            helper.make_node("Cast", ["k"], ["kf"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["x", "kf"], ["y"]),
        ],
        [tensor("x", TensorProto.FLOAT, [3]), tensor("k", TensorProto.INT64, [])],
        [tensor("y", TensorProto.FLOAT, [3])],
    )


SCALAR_FEEDS: dict[str, np.ndarray] = {
    "x": np.arange(3, dtype=np.float32),
    "k": np.array(4, dtype=np.int64),
}


def test_scalar_input_has_empty_shape(scalar_model: Path) -> None:
    sess = session(scalar_model)
    assert sess.inputs[1].shape == ()
    np.testing.assert_array_equal(sess.run(SCALAR_FEEDS)["y"], [0, 4, 8])


def test_scalar_input_through_engine(scalar_model: Path) -> None:
    out = Engine.load(scalar_model, backend="onnxruntime").run(SCALAR_FEEDS)
    np.testing.assert_array_equal(out["y"], [0, 4, 8])


def test_non_tensor_input_is_a_model_load_error(tmp_path: Path) -> None:
    model = save(
        tmp_path / "seq.onnx",
        [helper.make_node("ConcatFromSequence", ["s"], ["y"], axis=0)],
        [helper.make_tensor_sequence_value_info("s", TensorProto.FLOAT, None)],
        [tensor("y", TensorProto.FLOAT, None)],
    )
    with pytest.raises(ModelLoadError, match=r"input 's' of type seq\(tensor\(float\)\).*tensor"):
        Engine.load(model, backend="onnxruntime")


def test_an_input_of_unknown_rank_is_refused_with_the_fix(tmp_path: Path) -> None:
    """onnxruntime reports it as a scalar: 'expects rank 0' met every real feed, with no fix."""
    model = save(
        tmp_path / "norank.onnx",
        [helper.make_node("Relu", ["x"], ["y"])],
        [tensor("x", TensorProto.FLOAT, None)],
        [tensor("y", TensorProto.FLOAT, None)],
    )
    with pytest.raises(ModelLoadError, match=r"declares no shape for input 'x'.*Declare its"):
        Engine.load(model, backend="onnxruntime")


def test_a_classifiers_zipmap_output_names_the_sklearn_onnx_option(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("ZipMap", ["p"], ["probabilities"], domain="ai.onnx.ml",
                          classlabels_int64s=[0, 1])],
        "clf",
        [tensor("p", TensorProto.FLOAT, [None, 2])],
        [helper.make_value_info("probabilities", helper.make_sequence_type_proto(
            helper.make_map_type_proto(TensorProto.INT64, helper.make_tensor_type_proto(
                TensorProto.FLOAT, []))))],
    )  # fmt: skip
    opsets = [helper.make_opsetid("", 13), helper.make_opsetid("ai.onnx.ml", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    save_model(model, tmp_path / "clf.onnx")
    with pytest.raises(ModelLoadError, match=r"options=\{'zipmap': False\}"):
        Engine.load(tmp_path / "clf.onnx", backend="onnxruntime")


@pytest.mark.parametrize(("opset", "ir"), [(40, 10), (17, 20)])
def test_a_model_for_a_newer_onnx_says_upgrade_not_redownload(
    tmp_path: Path, opset: int, ir: int
) -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "new",
        [tensor("x", TensorProto.FLOAT, [1])],
        [tensor("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir
    save_model(model, tmp_path / "new.onnx")
    with pytest.raises(ModelLoadError, match="newer ONNX than this onnxruntime reads") as info:
        Engine.load(tmp_path / "new.onnx", backend="onnxruntime")
    assert "pip install -U" in str(info.value) and "re-download" not in str(info.value)


def test_ort_format_model_loads(mlp: Path, tmp_path: Path) -> None:
    ort_model = tmp_path / "mlp.ort"
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(ort_model)
    options.add_session_config_entry("session.save_model_format", "ORT")
    ort.InferenceSession(str(mlp), options, providers=["CPUExecutionProvider"])
    x = RNG.standard_normal((2, 4)).astype(np.float32)
    out = Engine.load(ort_model, backend="onnxruntime").predict(x)
    np.testing.assert_allclose(out, mlp_reference(x), rtol=1e-5, atol=1e-5)


# --- options and settings -------------------------------------------------------------------------


def test_default_settings(mlp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UNIFER_NUM_THREADS", raising=False)
    settings = Engine.load(mlp, backend="onnxruntime").settings
    assert settings == {
        "device": "cpu",
        "threads": None,  # intra_op_num_threads=0: onnxruntime picks
        "inter_op_threads": 1,
        "execution_mode": "sequential",
        "graph_optimization_level": "all",
        "providers": ("CPUExecutionProvider",),
        # int8-weight MatMuls keep fp32 activations (see test_contract's int8_weights test).
        "session_config": {"session.qdq_matmulnbits_accuracy_level": "1"},
        "precision": "fp32",
        "runtime_version": ort.__version__,
    }


def test_threads_are_mapped_to_intra_op_threads(mlp: Path) -> None:
    engine = Engine.load(mlp, backend="onnxruntime", threads=3)
    assert engine.settings["threads"] == 3
    assert engine.settings["inter_op_threads"] == 1


def test_graph_optimization_level_and_session_config(mlp: Path) -> None:
    engine = Engine.load(
        mlp,
        backend="onnxruntime",
        backend_options={
            "onnxruntime": {
                "graph_optimization_level": "basic",
                "session_config": {"session.intra_op.allow_spinning": "0"},
            }
        },
    )
    assert engine.settings["graph_optimization_level"] == "basic"
    assert engine.settings["session_config"] == {
        "session.qdq_matmulnbits_accuracy_level": "1",
        "session.intra_op.allow_spinning": "0",
    }
    x = RNG.standard_normal((2, 4)).astype(np.float32)
    np.testing.assert_allclose(engine.predict(x), mlp_reference(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "providers",
    [["CPUExecutionProvider"], [("CPUExecutionProvider", {"arena_extend_strategy": 1})]],
)
def test_explicit_cpu_provider(mlp: Path, providers: list[object]) -> None:
    engine = Engine.load(
        mlp, backend="onnxruntime", backend_options={"onnxruntime": {"providers": providers}}
    )
    assert engine.settings["providers"] == ("CPUExecutionProvider",)
    assert engine.settings["device"] == "cpu"


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(), reason="this build has CUDA"
)
def test_missing_provider_is_refused_not_dropped(mlp: Path) -> None:
    with pytest.raises(UnsupportedOptionError) as info:
        Engine.load(
            mlp,
            backend="onnxruntime",
            backend_options={"onnxruntime": {"providers": ["CUDAExecutionProvider"]}},
        )
    message = str(info.value)
    assert "CUDAExecutionProvider" in message
    assert "CPUExecutionProvider" in message  # what is available
    assert "pip install onnxruntime-gpu" in message


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider':UserWarning")
def test_listed_provider_that_fails_to_load_is_refused(
    mlp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A build that lists the CUDA EP but cannot load it (no CUDA libraries) creates a CPU-only
    # session; simulate that by making the listing claim CUDA on a CPU build.
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this build has CUDA")
    listed = [*ort.get_available_providers(), "CUDAExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: listed)
    with pytest.raises(UnsupportedOptionError, match="could not use it"):
        session(mlp, extra={"providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]})


def test_device_is_shorthand_for_the_providers() -> None:
    assert _requested_providers({}) == [(CPU, {})]
    assert _requested_providers({"device": "cpu"}) == [(CPU, {})]
    on_gpu_1 = [(CUDA, {"device_id": "1", "use_tf32": "0"}), (CPU, {})]
    assert _requested_providers({"device": "cuda:1"}) == on_gpu_1
    assert _requested_providers({"device": "cuda"})[0] == (
        CUDA,
        {"device_id": "0", "use_tf32": "0"},
    )


def test_the_cuda_ep_computes_fp32_in_fp32_unless_told_otherwise() -> None:
    # ORT's CUDA EP uses TF32 for float matmuls and convolutions by default (use_tf32=true).
    assert _requested_providers({"providers": [CUDA]}) == [(CUDA, {"use_tf32": "0"})]
    opted_in = {"providers": [(CUDA, {"use_tf32": 1})]}
    assert _requested_providers(opted_in) == [(CUDA, {"use_tf32": "1"})]


def test_device_cpu_opens_on_the_cpu(mlp: Path) -> None:
    engine = Engine.load(
        mlp, backend="onnxruntime", backend_options={"onnxruntime": {"device": "cpu"}}
    )
    assert engine.settings["device"] == "cpu"
    assert engine.settings["providers"] == ("CPUExecutionProvider",)


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider':UserWarning")
def test_device_cuda_runs_on_cuda_or_says_why_never_on_the_cpu(
    mlp: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Engine.load(device="cuda:0") reaches the plugin as its 'device' option: before the option
    # existed it was an unknown key, warned about, and the model ran on the CPU.
    if CUDA in ort.get_available_providers():
        pytest.skip("this build has CUDA")
    with pytest.raises(UnsupportedOptionError, match="'onnxruntime' cannot run on device 'cuda:0'"):
        Engine.load(mlp, backend="onnxruntime", device="cuda:0")  # a CPU build lists no cuda:0
    with pytest.raises(UnsupportedOptionError, match="pip install onnxruntime-gpu"):
        session(mlp, extra={"device": "cuda:0"})
    # A GPU build whose CUDA libraries are missing: ORT's preload_dlls() prints what it could not
    # load, which belongs in the error, not on the caller's stdout.
    listed = [*ort.get_available_providers(), CUDA]
    monkeypatch.setattr(ort, "get_available_providers", lambda: listed)

    def preload_dlls() -> None:  # prints as ORT's does
        print("Failed to load libcublasLt.so.13: no such file")  # noqa: T201

    monkeypatch.setattr(ort, "preload_dlls", preload_dlls)
    _session._preload_cuda_libraries.cache_clear()
    registry.cached_probe.cache_clear()
    try:
        with pytest.raises(UnsupportedOptionError) as info:
            Engine.load(mlp, backend="onnxruntime", device="cuda:0")
    finally:
        registry.cached_probe.cache_clear()
        _session._preload_cuda_libraries.cache_clear()
    message = str(info.value)
    assert "could not use it" in message
    assert "preload_dlls() said: Failed to load libcublasLt.so.13: no such file." in message
    assert 'pip install "onnxruntime-gpu[cuda,cudnn]"' in message
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"device": "gpu:0"}, "must be 'cpu', 'cuda' or 'cuda:N'"),
        ({"device": 0}, "must be 'cpu', 'cuda' or 'cuda:N'"),
        ({"device": "cpu", "providers": [CPU]}, "both 'device' and 'providers'"),
        ({"providers": "CPUExecutionProvider"}, "non-empty list"),
        ({"providers": []}, "non-empty list"),
        ({"providers": [1]}, "name or a"),
        ({"providers": [("CPUExecutionProvider", "fast")]}, "name or a"),
        ({"providers": ["CPUExecutionProvider", "CPUExecutionProvider"]}, "listed twice"),
        ({"providers": ["NoSuchExecutionProvider"]}, "has no NoSuchExecutionProvider"),
        ({"graph_optimization_level": "max"}, "must be one of"),
        ({"graph_optimization_level": 99}, "must be one of"),
        ({"session_config": {"session.intra_op.allow_spinning": 0}}, "string values"),
        ({"session_config": ["a"]}, "string values"),
        ({"session_config": {"": "1"}}, "rejected session_config entry"),
    ],
)
def test_invalid_backend_options(mlp: Path, extra: dict[str, object], match: str) -> None:
    with pytest.raises(UnsupportedOptionError, match=match):
        session(mlp, extra=extra)


def test_unknown_option_warns(mlp: Path) -> None:
    with pytest.warns(UniferWarning, match="'turbo' is not understood by onnxruntime"):
        engine = Engine.load(
            mlp, backend="onnxruntime", backend_options={"onnxruntime": {"turbo": True}}
        )
    assert engine.settings["providers"] == ("CPUExecutionProvider",)


@pytest.mark.parametrize("precision", ["bf16", "fp16", "int8"])
def test_reduced_precision_is_refused(mlp: Path, precision: str) -> None:
    with pytest.raises(UnsupportedOptionError, match=f"precision='{precision}'.*[Qq]uantize"):
        Engine.load(mlp, backend="onnxruntime", precision=precision)


# --- bad files and runtime failures ---------------------------------------------------------------


def _random_bytes(path: Path, _: Path) -> None:
    path.write_bytes(np.random.default_rng(1).bytes(4096))


def _truncated(path: Path, good: Path) -> None:
    data = good.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _empty(path: Path, _: Path) -> None:
    path.write_bytes(b"")


@pytest.mark.parametrize("make", [_random_bytes, _truncated, _empty])
def test_corrupt_file_is_a_model_load_error(mlp: Path, tmp_path: Path, make: Any) -> None:
    bad = tmp_path / "bad.onnx"
    make(bad, mlp)
    with pytest.raises(ModelLoadError) as info:
        Engine.load(bad, backend="onnxruntime")
    assert str(bad) in str(info.value)
    assert info.value.__cause__ is not None
    assert type(info.value.__cause__).__module__.startswith("onnxruntime")


def test_native_failure_in_run_is_an_inference_error(tmp_path: Path) -> None:
    model = save(
        tmp_path / "reshape.onnx",
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        [tensor("x", TensorProto.FLOAT, [2, 3]), tensor("shape", TensorProto.INT64, [2])],
        [tensor("y", TensorProto.FLOAT, None)],
    )
    engine = Engine.load(model, backend="onnxruntime")
    with pytest.raises(InferenceError) as info:
        engine.run({"x": np.ones((2, 3), np.float32), "shape": np.array([4, 4], np.int64)})
    assert info.value.__cause__ is not None
    assert info.value.backend == "onnxruntime"


# --- concurrency, ownership, lifecycle ----------------------------------------------------------


def test_concurrent_runs_match_serial(mlp: Path) -> None:
    engine = Engine.load(mlp, backend="onnxruntime", threads=2)
    xs = [RNG.standard_normal((64, 4)).astype(np.float32) for _ in range(32)]
    serial = [engine.run({"x": x})["y"] for x in xs]
    start = threading.Barrier(8)

    def work(i: int) -> list[np.ndarray]:
        start.wait()
        return [engine.run({"x": xs[j]})["y"] for j in range(i, len(xs), 8)]

    with ThreadPoolExecutor(8) as pool:
        chunks = list(pool.map(work, range(8)))
    for i, chunk in enumerate(chunks):
        for j, got in zip(range(i, len(xs), 8), chunk, strict=True):
            np.testing.assert_array_equal(got, serial[j])


def test_outputs_are_fresh_arrays(tmp_path: Path) -> None:
    # Identity and constant outputs are where a runtime is most tempted to hand back a buffer it
    # keeps (the feed itself, or the stored constant).
    model = save(
        tmp_path / "alias.onnx",
        [
            helper.make_node("Identity", ["x"], ["same"]),
            helper.make_node(
                "Constant", [], ["const"], value=numpy_helper.from_array(np.full(3, 7, np.float32))
            ),
            helper.make_node("Relu", ["x"], ["relu"]),
        ],
        [tensor("x", TensorProto.FLOAT, [3])],
        [tensor(n, TensorProto.FLOAT, [3]) for n in ("same", "const", "relu")],
    )
    engine = Engine.load(model, backend="onnxruntime")
    x = np.array([1, -2, 3], np.float32)
    first = engine.run({"x": x})
    kept = {name: array.copy() for name, array in first.items()}
    for array in first.values():
        assert not np.shares_memory(array, x)
        array[...] = -99  # the caller owns it: writing must not reach the model
    second = engine.run({"x": x})
    for name in first:
        assert not np.shares_memory(first[name], second[name])
        np.testing.assert_array_equal(second[name], kept[name])
    np.testing.assert_array_equal(x, [1, -2, 3])


def test_close_is_idempotent_and_run_after_close_fails(mlp: Path) -> None:
    sess = session(mlp)
    sess.close()
    sess.close()
    with pytest.raises(InferenceError, match="closed"):
        sess.run({"x": np.ones((1, 4), np.float32)})
    engine = Engine.load(mlp, backend="onnxruntime")
    engine.close()
    engine.close()


def test_nothing_is_written_next_to_the_model(mlp: Path) -> None:
    before = sorted(p.name for p in mlp.parent.iterdir())
    with Engine.load(mlp, backend="onnxruntime", threads=1) as engine:
        engine.predict(np.ones((2, 4), np.float32))
    assert sorted(p.name for p in mlp.parent.iterdir()) == before
