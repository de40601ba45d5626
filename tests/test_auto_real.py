"""backend="auto" on real runtimes: it measures onnxruntime and openvino and keeps a faithful one.

Skipped where the plugins are not installed (the core-only CI environment).
"""

from __future__ import annotations

import importlib.metadata as metadata

import numpy as np
import pytest

from unifer import Engine, UnsupportedOptionError, _registry, models

pytest.importorskip("unifer_onnxruntime")
pytest.importorskip("unifer_openvino")
pytest.importorskip("onnx")


def test_auto_measures_real_backends_and_caches(monkeypatch):
    monkeypatch.setenv("UNIFER_DISABLE_BACKENDS", "ncnn,litert,opencv,mxnet")  # keep it short
    engine = Engine.load("builtin:arcface-tiny", threads=1, budget_s=0.5)
    selection = engine.selection
    assert selection.source == "measured"
    measured = {t.candidate.backend: t for t in selection.trials if t.status == "measured"}
    assert set(measured) == {"onnxruntime", "openvino"}
    assert measured["onnxruntime"].reason == "fp32 reference"
    assert measured["openvino"].cosine > 0.99999  # fp32 pinned: faithful to the reference
    assert all(t.median_ms > 0 and t.runs >= 5 for t in measured.values())
    image = np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    embedding = engine.predict(image)
    with Engine.load("builtin:arcface-tiny", backend="onnxruntime", threads=1) as reference:
        np.testing.assert_allclose(embedding, reference.predict(image), atol=1e-4)

    again = Engine.load("builtin:arcface-tiny", threads=1, budget_s=0.5)
    assert again.selection.source == "cache"
    assert again.backend == engine.backend


def test_a_cached_decision_probes_only_the_winner(monkeypatch):
    """Probing imports a runtime; a cached load keys on package metadata and probes no loser."""
    monkeypatch.setenv("UNIFER_DISABLE_BACKENDS", "ncnn,litert,opencv,mxnet")
    chosen = Engine.load("builtin:arcface-tiny", threads=1, budget_s=0.5).backend
    _registry.cached_probe.cache_clear()  # as in a new process
    probed = []
    real_probe = _registry.probe
    monkeypatch.setattr(_registry, "probe", lambda b: probed.append(b.name) or real_probe(b))
    again = Engine.load("builtin:arcface-tiny", threads=1, budget_s=0.5)
    assert again.selection.source == "cache"
    assert not set(probed) - {chosen}, probed


def test_installed_versions_come_from_package_metadata():
    versions = _registry.installed_versions("onnxruntime")
    assert versions["unifer-onnxruntime"] == metadata.version("unifer-onnxruntime")
    assert versions["onnxruntime"] == metadata.version("onnxruntime")


def test_auto_with_bf16_allowed_reports_its_accuracy(monkeypatch):
    monkeypatch.setenv("UNIFER_DISABLE_BACKENDS", "onnxruntime,ncnn,litert,opencv,mxnet")
    engine = Engine.load(
        "builtin:arcface-tiny", threads=1, precision=("fp32", "bf16"), budget_s=0.5
    )
    trials = {
        t.candidate.precision: t
        for t in engine.selection.trials
        if t.candidate.backend == "openvino"  # not the unavailable ones (tensorrt without a GPU)
    }
    assert trials["fp32"].status == "measured"
    bf16 = trials["bf16"]
    assert bf16.status in {"measured", "rejected", "failed"}  # "failed": the CPU lacks BF16
    if bf16.status == "measured":
        assert bf16.cosine >= 0.999  # within the bf16 tolerance...
        assert bf16.max_abs_diff > 0  # ...and not silently fp32


def test_a_changed_external_weights_file_is_measured_again(monkeypatch, tmp_path):
    """The .onnx file stays byte-identical when only its external weights change: the decision
    key covers every file the model consists of, so the stale decision is not served."""
    import onnx

    from unifer.testing.models import mlp

    monkeypatch.setenv("UNIFER_DISABLE_BACKENDS", "ncnn,litert,opencv,mxnet")
    path = tmp_path / "mlp.onnx"

    def save(seed: int) -> None:
        (tmp_path / "mlp.weights").unlink(missing_ok=True)  # onnx refuses to overwrite it
        onnx.save_model(
            mlp(seed=seed).proto,
            str(path),
            save_as_external_data=True,
            location="mlp.weights",
            size_threshold=0,
        )

    save(seed=0)
    assert Engine.load(path, threads=1, budget_s=0.2).selection.source == "measured"
    assert Engine.load(path, threads=1, budget_s=0.2).selection.source == "cache"
    graph = path.read_bytes()
    save(seed=1)
    assert path.read_bytes() == graph
    assert Engine.load(path, threads=1, budget_s=0.2).selection.source == "measured"


@pytest.mark.parametrize("budget_s", [None, 0], ids=["measured", "static"])
def test_a_missing_weights_file_is_file_not_found_under_auto(tmp_path, budget_s):
    """Every candidate fails for the same missing file: that error, a FileNotFoundError as the
    docs promise, not a list of runtimes that could not open the model."""
    import openvino as ov

    from unifer.testing.models import mlp

    xml = tmp_path / "ir" / "mlp.xml"
    ov.save_model(ov.Core().read_model(mlp().save(tmp_path)), xml, compress_to_fp16=False)
    xml.with_suffix(".bin").unlink()
    with pytest.raises(FileNotFoundError, match="mlp.bin"):
        Engine.load(xml, threads=1, budget_s=budget_s)


def valid_conv_model(path):
    """[1, 3, H, W] through an unpadded 3x3 convolution: it cannot run at H = W = 1."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])],
        "valid",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, "H2", "W2"])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_dynamic_sizes_are_measured_at_32_or_those_asked_for(monkeypatch, tmp_path):
    """Fed at 1, a valid model failed on every faithful backend (and an unfaithful one that
    returned zeros became the reference); measured at 32 it loads, and says so."""
    monkeypatch.setenv("UNIFER_DISABLE_BACKENDS", "ncnn,litert,opencv,mxnet")
    model = valid_conv_model(tmp_path / "valid.onnx")
    engine = Engine.load(model, threads=1, budget_s=0.3)
    assert engine.selection.source == "measured"
    assert any("measured at H=32, W=32" in note for note in engine.selection.notes)
    assert engine.run({"x": np.ones((1, 3, 64, 64), np.float32)})["y"].shape == (1, 4, 62, 62)
    sized = Engine.load(model, threads=1, budget_s=0.3, dims={"H": 64, "W": 48})
    assert sized.selection.source == "measured"  # another key: measured at those sizes
    assert not sized.selection.notes
    with pytest.raises(UnsupportedOptionError, match="dims= sizes what backend='auto' measures"):
        Engine.load(model, backend="onnxruntime", dims={"H": 64})


def test_string_inputs_are_chosen_without_measuring_and_take_str_arrays(monkeypatch, tmp_path):
    """No test values can be made for strings: auto chose nothing at all ("pass real inputs"),
    though onnxruntime runs the model; now the static order chooses, and says why."""
    import onnx
    from onnx import TensorProto, helper

    monkeypatch.setenv("UNIFER_CACHE_DIR", str(tmp_path / "cache"))
    graph = helper.make_graph(
        [helper.make_node("Identity", ["s"], ["y"])],
        "strings",
        [helper.make_tensor_value_info("s", TensorProto.STRING, [2])],
        [helper.make_tensor_value_info("y", TensorProto.STRING, [2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "strings.onnx")
    engine = Engine.load(tmp_path / "strings.onnx", threads=1)
    assert engine.backend == "onnxruntime" and engine.selection.source == "static"
    assert "not measured (unifer cannot make test values for input s" in engine.selection.explain()
    assert list(engine.run({"s": np.array(["a", "bc"])})["y"]) == ["a", "bc"]  # a str array


def test_a_quantized_model_says_it_computes_in_int8(monkeypatch, tmp_path):
    """precision= is what a runtime may reduce beyond the model: a QDQ model runs int8 at the
    default fp32, which settings and auto's notes say."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    monkeypatch.setenv("UNIFER_CACHE_DIR", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    weights = rng.integers(-127, 128, (16, 8)).astype(np.int8)
    graph = helper.make_graph(
        [
            helper.make_node("QuantizeLinear", ["x", "s"], ["x_q"]),
            helper.make_node("DequantizeLinear", ["x_q", "s"], ["x_dq"]),
            helper.make_node("DequantizeLinear", ["w_q", "ws"], ["w"]),
            helper.make_node("MatMul", ["x_dq", "w"], ["y"]),
        ],
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        [
            numpy_helper.from_array(weights, "w_q"),
            numpy_helper.from_array(np.array(0.02, np.float32), "s"),
            numpy_helper.from_array(np.array(0.01, np.float32), "ws"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "qdq.onnx")
    for name in ("onnxruntime", "openvino"):
        engine = Engine.load(tmp_path / "qdq.onnx", backend=name, threads=1)
        assert engine.settings["precision"] == "fp32"
        assert engine.settings["model_precision"] == "int8"
    auto = Engine.load(tmp_path / "qdq.onnx", threads=1, budget_s=0.2)
    assert "the model computes in int8 by itself" in auto.selection.explain()
    plain = Engine.load(models.path("arcface-tiny"), backend="onnxruntime")
    assert "model_precision" not in plain.settings
