"""The ncnn plugin against real ncnn, on arcface-tiny converted by the plugin and small models."""

from __future__ import annotations

import shutil
import struct
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import ncnn
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from unifer import (
    Engine,
    InferenceError,
    ModelLoadError,
    ModelNotFoundError,
    Preprocess,
    UnsupportedOptionError,
)
from unifer.backend import BACKEND_API_VERSION, Backend, SessionOptions
from unifer_ncnn import NcnnBackend

if TYPE_CHECKING:
    from conftest import Converted

OPT_FP16 = ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic")


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def embed(
    model: Converted, x: np.ndarray, **options: object
) -> tuple[np.ndarray, dict[str, object]]:
    with Engine.load(model.param, backend="ncnn", **options) as engine:  # type: ignore[arg-type]
        return engine.run({"input.1": x})["embedding"], dict(engine.settings)


def copy_model(model: Converted, directory: Path) -> Path:
    """The converted model's .param and .bin copied into ``directory`` (to be damaged)."""
    directory.mkdir(exist_ok=True)
    param = Path(shutil.copy(model.param, directory))
    shutil.copy(model.param.with_suffix(".bin"), directory)
    return param


def write_param(directory: Path, text: str, weights: bytes = b"") -> Path:
    param = directory / "hand.param"
    param.write_text(text)
    param.with_suffix(".bin").write_bytes(weights)
    return param


# -- plugin surface -------------------------------------------------------------------------------


def test_backend_class_follows_the_contract() -> None:
    backend = NcnnBackend()
    assert isinstance(backend, Backend)
    assert backend.name == "ncnn"
    assert backend.suffixes == (".param",)
    assert backend.install == 'pip install "unifer[ncnn]"'
    assert backend.api_version == BACKEND_API_VERSION


def test_probe_reports_the_ncnn_version() -> None:
    availability = NcnnBackend().probe()
    assert availability.ok
    assert availability.version == ncnn.__version__
    assert availability.devices[0] == "cpu"  # the default; Vulkan devices follow (test_vulkan.py)


def test_probe_without_ncnn_explains_and_does_not_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "unifer_ncnn._session", raising=False)
    monkeypatch.setitem(sys.modules, "ncnn", None)  # makes `import ncnn` fail
    availability = NcnnBackend().probe()
    assert not availability.ok
    assert "ncnn" in (availability.reason or "")
    assert availability.install == 'pip install "unifer[ncnn]"'


# -- precision ------------------------------------------------------------------------------------


def test_fp32_matches_onnxruntime(arcface_tiny: Converted, face: np.ndarray) -> None:
    want = np.concatenate([arcface_tiny.reference({"input.1": x[None]})["embedding"] for x in face])
    got, settings = embed(arcface_tiny, face)
    assert settings["precision"] == "fp32"
    assert not any(settings[key] for key in (*OPT_FP16, "use_bf16_storage", "use_bf16_packed"))
    assert settings["use_int8_inference"] is False
    assert np.abs(got - want).max() < 1e-4
    assert min(cosine(g, w) for g, w in zip(got, want, strict=True)) > 0.999999


def test_ncnn_defaults_are_not_faithful_but_fp32_is(
    arcface_tiny: Converted, face: np.ndarray
) -> None:
    """ncnn's own Net().opt stores activations in fp16: the flags unifer turns off matter."""
    x = face[:1]
    want = arcface_tiny.reference({"input.1": x})["embedding"]
    net = ncnn.Net()
    assert all(getattr(net.opt, key) for key in OPT_FP16)  # ncnn's defaults on this CPU
    assert net.load_param(str(arcface_tiny.param)) == 0
    assert net.load_model(str(arcface_tiny.param.with_suffix(".bin"))) == 0
    extractor = net.create_extractor()
    extractor.input("input.1", ncnn.Mat(np.ascontiguousarray(x[0])).clone())
    default = np.array(extractor.extract("embedding")[1])[None]
    ours, _ = embed(arcface_tiny, x)
    default_error = np.abs(default - want).max()
    our_error = np.abs(ours - want).max()
    assert default_error > 1e-4  # measured ~1e-3 with fp16 storage
    assert our_error < default_error / 10


@pytest.mark.parametrize(
    ("precision", "flag"), [("bf16", "use_bf16_storage"), ("fp16", "use_fp16_storage")]
)
def test_reduced_precision_is_opt_in_reported_and_measurably_different(
    arcface_tiny: Converted, face: np.ndarray, precision: str, flag: str
) -> None:
    want = arcface_tiny.reference({"input.1": face[:1]})["embedding"]
    got, settings = embed(arcface_tiny, face[:1], precision=precision)
    assert settings["precision"] == precision
    assert settings[flag] is True
    error = np.abs(got - want).max()
    assert error > 1e-4  # measured: bf16 ~3e-2, fp16 ~1e-3 (embedding values up to ~3)
    assert cosine(got, want) > 0.999


def test_fp16_arithmetic_is_reported_only_where_the_cpu_has_it(
    arcface_tiny: Converted, face: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ncnn keeps use_fp16_arithmetic as asked and skips it on a CPU without fp16 arithmetic
    (x86 without AVX512-FP16): settings say what runs."""
    from unifer_ncnn import _session

    for capable in (False, True):
        monkeypatch.setattr(_session, "_cpu_has_fp16_arithmetic", lambda capable=capable: capable)
        _, settings = embed(arcface_tiny, face[:1], precision="fp16")
        assert settings["use_fp16_storage"] is True
        assert settings["use_fp16_arithmetic"] is capable


def test_int8_is_refused_for_a_float_model(arcface_tiny: Converted) -> None:
    with pytest.raises(UnsupportedOptionError, match="ncnn2int8"):
        Engine.load(arcface_tiny.param, backend="ncnn", precision="int8")


def int8_model(directory: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """A 3x3 convolution whose .param declares int8 scales: ncnn quantizes it when it loads.

    The .bin holds fp32 weights and bias, then the per-output-channel weight scales and the input
    scale (what ncnn2int8 writes next to them). Returns the model, an input, and the fp32 result.
    """
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    x = rng.uniform(-1, 1, (1, 3, 8, 8)).astype(np.float32)
    weight_scales = (127 / np.abs(w.reshape(4, -1)).max(axis=1)).astype(np.float32)
    input_scale = np.array([127 / np.abs(x).max()], np.float32)
    text = (
        "7767517\n2 2\nInput x 0 1 x 0=8 1=8 2=3\n"
        "Convolution conv 1 1 x y 0=4 1=3 11=3 4=1 5=1 6=108 8=1\n"
    )
    weights = b"\0\0\0\0" + b"".join(a.tobytes() for a in (w, b, weight_scales, input_scale))
    padded = np.pad(x[0], ((0, 0), (1, 1), (1, 1)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(1, 2))
    exact = np.einsum("chwij,ocij->ohw", windows, w) + b[:, None, None]
    return write_param(directory, text, weights), x, exact[None].astype(np.float32)


def test_an_int8_model_runs_only_at_int8(tmp_path: Path) -> None:
    param, x, exact = int8_model(tmp_path)
    # At fp32 ncnn would feed the int8-declared layer float weights unquantized: NaN here.
    with pytest.raises(UnsupportedOptionError, match="quantized to INT8.*'conv'"):
        Engine.load(param, backend="ncnn")
    with Engine.load(param, backend="ncnn", precision="int8") as engine:
        assert engine.settings["precision"] == "int8"
        assert engine.settings["use_int8_inference"] is True
        y = engine.run({"x": x})["y"]
    assert 1e-3 < np.abs(y - exact).max() < 0.05 * np.abs(exact).max()


def test_an_int8_gemm_is_seen_as_int8_too(tmp_path: Path) -> None:
    # ncnn2int8 also quantizes Gemm (int8_scale_term at param 18): it runs int8 kernels whatever
    # use_int8_inference says, so at "fp32" it would be int8 in disguise.
    text = (
        "7767517\n2 2\nInput in 0 1 in 0=4 1=1\nGemm g 1 1 in out 3=1 5=1 6=1 8=2 9=4 10=4 18=1\n"
    )
    b = np.array([[1, 2, 3, 4], [-1, 0, 1, 2]], np.int8)
    weights = (
        struct.pack("<I", 0x000D4B38)  # ncnn's tag for int8 weight data
        + b.tobytes()
        + struct.pack("<I", 0)
        + np.array([0.5, -0.25], np.float32).tobytes()
        + np.array([10], np.float32).tobytes()  # B's scale
    )
    param = write_param(tmp_path, text, weights)
    with pytest.raises(UnsupportedOptionError, match="quantized to INT8.*'g'"):
        Engine.load(param, backend="ncnn")
    with Engine.load(param, backend="ncnn", precision="int8") as engine:
        y = engine.run({"in": np.array([[[0.1, 0.2, 0.3, 0.4]]], np.float32)})["out"]
    np.testing.assert_allclose(y.ravel(), [0.8, -0.15], atol=1e-3)  # dequantized B: B / 10


def test_engine_converts_an_onnx_file_when_ncnn_is_named(
    arcface_tiny: Converted, face: np.ndarray
) -> None:
    """The core's conversion path: convert with this plugin, check, cache, then run."""
    want = np.concatenate([arcface_tiny.reference({"input.1": x[None]})["embedding"] for x in face])
    with Engine.load(arcface_tiny.onnx, backend="ncnn") as engine:
        conversion = engine.settings["conversion"]
        got = engine.run({"input.1": face})["embedding"]
    assert isinstance(conversion, dict)
    assert conversion["converter"] == NcnnBackend().converter_version(SessionOptions())
    assert conversion["check"]["passed"] is True
    assert np.abs(got - want).max() < 1e-4


# -- options --------------------------------------------------------------------------------------


def test_threads_map_to_num_threads(arcface_tiny: Converted) -> None:
    with Engine.load(arcface_tiny.param, backend="ncnn", threads=1) as engine:
        assert engine.settings["threads"] == 1
    session = NcnnBackend().open(arcface_tiny.param, SessionOptions())
    assert session.settings["threads"] == ncnn.Net().opt.num_threads  # ncnn's own default
    session.close()


_FORK_CHILD = """
import os, signal, sys
import numpy as np
from unifer import Engine, InferenceError, UnsupportedOptionError

param, x = sys.argv[1], np.zeros((1, 3, 112, 112), np.float32)
parent = Engine.load(param, backend="ncnn", threads=2)
parent.run({"input.1": x})  # libgomp's thread pool now exists in this process
if os.fork() == 0:
    signal.alarm(30)  # a hang is a failure, reported by the parent
    outcome = []
    for attempt in (
        lambda: parent.run({"input.1": x}),
        lambda: Engine.load(param, backend="ncnn", threads=2),
        lambda: Engine.load(param, backend="ncnn"),  # ncnn's default: several threads here
    ):
        try:
            attempt()
            outcome.append("ran")
        except (InferenceError, UnsupportedOptionError) as error:
            outcome.append(type(error).__name__ + (":fork" if "forked" in str(error) else ""))
    one = Engine.load(param, backend="ncnn", threads=1).run({"input.1": x})["embedding"]
    outcome.append(str(one.shape))
    print(" ".join(outcome), flush=True)
    os._exit(0)
_, status = os.wait()
print("child", status)
"""


def test_a_forked_child_is_refused_several_threads_instead_of_hanging(
    arcface_tiny: Converted,
) -> None:
    """GNU libgomp, bundled with ncnn, hangs in a child forked after it ran multi-threaded."""
    import subprocess

    if ncnn.Net().opt.num_threads < 2:
        pytest.skip("ncnn's default is one thread here: the default load would not be refused")
    run = subprocess.run(
        [sys.executable, "-c", _FORK_CHILD, str(arcface_tiny.param)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.stdout.splitlines() == [
        "InferenceError:fork UnsupportedOptionError:fork UnsupportedOptionError:fork (1, 512)",
        "child 0",
    ], run.stderr


def test_winograd_and_sgemm_switches(arcface_tiny: Converted, face: np.ndarray) -> None:
    want, default = embed(arcface_tiny, face[:1])
    assert default["winograd"] is True and default["use_winograd_convolution"] is True
    assert default["sgemm"] is True and default["use_sgemm_convolution"] is True
    options = {"ncnn": {"winograd": False, "sgemm": False}}
    got, settings = embed(arcface_tiny, face[:1], backend_options=options)
    assert settings["winograd"] is False and settings["sgemm"] is False
    assert not any(settings[k] for k in settings if str(k).startswith("use_winograd"))
    assert settings["use_sgemm_convolution"] is False
    np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.parametrize(
    "options",
    [{"winograd": "no"}, {"sgemm": 0}, {"input_shapes": [3, 112, 112]}],
    ids=["winograd", "sgemm", "input_shapes"],
)
def test_bad_option_values_are_refused(arcface_tiny: Converted, options: dict[str, object]) -> None:
    with pytest.raises(UnsupportedOptionError, match=next(iter(options))):
        Engine.load(arcface_tiny.param, backend="ncnn", backend_options={"ncnn": options})


def test_input_shapes_fills_in_an_undeclared_shape(arcface_tiny: Converted, tmp_path: Path) -> None:
    """pnnx writes ``Input in0 0 1 in0`` with no sizes: the user names the sample shape."""
    param = copy_model(arcface_tiny, tmp_path / "noshape")
    param.write_text(param.read_text().replace(" 0=112 1=112 2=3", "", 1))
    with pytest.raises(UnsupportedOptionError, match="declares no shape.*input_shapes"):
        Engine.load(param, backend="ncnn")
    shapes = {"ncnn": {"input_shapes": {"input.1": [3, 112, 112]}}}
    with Engine.load(param, backend="ncnn", backend_options=shapes) as engine:
        assert engine.inputs[0].shape == ("N", 3, 112, 112)
        assert engine.settings["input_shapes"] == {"input.1": [3, 112, 112]}
    with pytest.raises(UnsupportedOptionError, match="declares the sample shape"):
        Engine.load(
            arcface_tiny.param,
            backend="ncnn",
            backend_options={"ncnn": {"input_shapes": {"input.1": [3, 96, 96]}}},
        )
    with pytest.raises(UnsupportedOptionError, match="'nope'"):
        Engine.load(
            param, backend="ncnn", backend_options={"ncnn": {"input_shapes": {"nope": [3]}}}
        )


# -- shapes and batches ---------------------------------------------------------------------------


def test_specs_come_from_the_param_file(arcface_tiny: Converted) -> None:
    with Engine.load(arcface_tiny.param, backend="ncnn") as engine:
        assert [str(s) for s in engine.inputs] == ["input.1: float32[N,3,112,112]"]
        assert [str(s) for s in engine.outputs] == ["embedding: float32[N,512]"]
        assert engine.settings["batch"] == "per-sample"


def test_a_batch_runs_per_sample_and_is_stacked(arcface_tiny: Converted) -> None:
    x = np.random.default_rng(3).uniform(-1, 1, (3, 3, 112, 112)).astype(np.float32)
    with Engine.load(arcface_tiny.param, backend="ncnn", threads=1) as engine:
        batch = engine.run({"input.1": x})["embedding"]
        singles = [engine.run({"input.1": x[i : i + 1]})["embedding"] for i in range(3)]
        empty = engine.run({"input.1": x[:0]})["embedding"]
    assert batch.shape == (3, 512) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch, np.concatenate(singles))
    assert empty.shape == (0, 512)


def test_float_multi_io_specs_and_outputs(tmp_path: Path) -> None:
    """What the kit's int64 multi_io checks, on a float model ncnn can run."""
    info = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 3]) for n in "ab"]
    outputs = [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 3])
        for n in ("sum", "product", "relu")
    ]
    nodes = [
        helper.make_node("Add", ["a", "b"], ["sum"]),
        helper.make_node("Mul", ["a", "b"], ["product"]),
        helper.make_node("Relu", ["a"], ["relu"]),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "float_multi_io", info, outputs),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    source = tmp_path / "float_multi_io.onnx"
    onnx.save(model, str(source))
    out = tmp_path / "ncnn"
    out.mkdir()
    param = NcnnBackend().convert(source, out, SessionOptions())
    rng = np.random.default_rng(1)
    a, b = (rng.standard_normal((2, 3)).astype(np.float32) for _ in range(2))
    with Engine.load(param, backend="ncnn") as engine:
        assert [str(s) for s in engine.inputs] == ["a: float32[N,3]", "b: float32[N,3]"]
        assert [s.name for s in engine.outputs] == ["sum", "product", "relu"]
        got = engine.run({"a": a, "b": b})
    np.testing.assert_allclose(got["sum"], a + b, atol=1e-6)
    np.testing.assert_allclose(got["product"], a * b, atol=1e-6)
    np.testing.assert_array_equal(got["relu"], np.maximum(a, 0))


def test_an_in_place_first_layer_leaves_the_input_alone(tmp_path: Path) -> None:
    """ncnn.Mat(array) shares the array; a ReLU reading it directly must not write into it."""
    param = write_param(tmp_path, "7767517\n2 2\nInput x 0 1 x 0=5 1=3 2=2\nReLU relu 1 1 x y\n")
    x = np.random.default_rng(0).standard_normal((2, 2, 3, 5)).astype(np.float32)
    kept = x.copy()
    with Engine.load(param, backend="ncnn") as engine:
        y = engine.run({"x": x})["y"]
    np.testing.assert_array_equal(x, kept)
    np.testing.assert_array_equal(y, np.maximum(kept, 0))


def test_predict_with_arcface_preprocessing(arcface_tiny: Converted) -> None:
    image = np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    with Engine.load(arcface_tiny.param, backend="ncnn", preprocess=Preprocess.arcface()) as engine:
        embedding = engine.predict(image)
        tensor = Preprocess.arcface()(image)
    want = arcface_tiny.reference({"input.1": tensor})["embedding"]
    assert embedding.shape == (1, 512)
    assert np.abs(embedding - want).max() < 1e-4


# -- threads --------------------------------------------------------------------------------------


def test_eight_threads_share_one_net(arcface_tiny: Converted) -> None:
    rng = np.random.default_rng(5)
    feeds = [rng.uniform(-1, 1, (1, 3, 112, 112)).astype(np.float32) for _ in range(8)]
    with Engine.load(arcface_tiny.param, backend="ncnn", threads=1) as engine:
        serial = [engine.run({"input.1": x})["embedding"] for x in feeds]
        results: list[list[np.ndarray]] = [[] for _ in feeds]
        barrier = threading.Barrier(len(feeds))

        def work(i: int) -> None:
            barrier.wait()
            for _ in range(3):
                results[i].append(engine.run({"input.1": feeds[i]})["embedding"])

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(feeds))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for got, want in zip(results, serial, strict=True):
        assert len(got) == 3
        for value in got:
            np.testing.assert_array_equal(value, want)


# -- bad files and calls --------------------------------------------------------------------------


def test_missing_bin_is_named(arcface_tiny: Converted, tmp_path: Path) -> None:
    param = copy_model(arcface_tiny, tmp_path / "m")
    param.with_suffix(".bin").unlink()
    with pytest.raises(ModelNotFoundError, match=r"arcface-tiny\.bin"):
        Engine.load(param, backend="ncnn")


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda text: text.replace("7767517", "7767518", 1), "magic number"),
        (lambda text: text[: len(text) // 2], "declares 47 layers"),
        (
            lambda text: text.replace("prelu_splitncnn_1", "ghost", 1),
            "reads blob 'prelu_splitncnn_1' before any layer",
        ),
        (lambda text: text.replace("0=8 1=3", "0=8 x 1=3", 1), "not a key=value"),
    ],
    ids=["magic", "truncated", "undefined-blob", "bad-param"],
)
def test_corrupt_param_is_a_model_load_error(
    arcface_tiny: Converted, tmp_path: Path, damage: object, match: str
) -> None:
    param = copy_model(arcface_tiny, tmp_path / "m")
    param.write_text(damage(param.read_text()))  # type: ignore[operator]
    with pytest.raises(ModelLoadError, match=match) as info:
        Engine.load(param, backend="ncnn")
    assert "arcface-tiny.param" in str(info.value)
    assert info.value.__cause__ is not None


def test_binary_garbage_param_is_a_model_load_error(tmp_path: Path) -> None:
    param = write_param(tmp_path, "")
    param.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ModelLoadError, match="hand.param"):
        Engine.load(param, backend="ncnn")


def test_an_unknown_layer_type_is_reported_by_ncnn(tmp_path: Path) -> None:
    param = write_param(tmp_path, "7767517\n2 2\nInput x 0 1 x 0=4\nNoSuchLayer l 1 1 x y\n")
    with pytest.raises(ModelLoadError, match="load_param failed") as info:
        Engine.load(param, backend="ncnn")
    assert info.value.__cause__ is not None


def test_truncated_bin_is_a_model_load_error(arcface_tiny: Converted, tmp_path: Path) -> None:
    param = copy_model(arcface_tiny, tmp_path / "m")
    weights = param.with_suffix(".bin")
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match="load_model failed") as info:
        Engine.load(param, backend="ncnn")
    assert info.value.__cause__ is not None


def test_a_closed_session_says_so(arcface_tiny: Converted) -> None:
    session = NcnnBackend().open(arcface_tiny.param, SessionOptions())
    session.close()
    with pytest.raises(InferenceError, match="closed"):
        session.run({"input.1": np.zeros((1, 3, 112, 112), np.float32)})


def test_a_direct_call_with_a_wrong_dtype_is_an_inference_error(arcface_tiny: Converted) -> None:
    session = NcnnBackend().open(arcface_tiny.param, SessionOptions())
    try:
        with pytest.raises(InferenceError, match="float32") as info:
            session.run({"input.1": np.zeros((1, 3, 112, 112), np.float64)})
        assert info.value.__cause__ is not None
    finally:
        session.close()
