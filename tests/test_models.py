"""Tests for unifer.models: the generated IResNet family, its counts, cache and ``builtin:`` specs.

Only ``arcface-tiny`` is generated with weights here (under 0.1 s); the big models are checked on
their graph-only build (same graph code, empty initializers), so the whole file runs in seconds.
Runtimes are used directly (not through unifer's plugins) and skipped when not installed.
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from unifer import models
from unifer._errors import MissingDependencyError, ModelNotFoundError
from unifer._preprocess import Preprocess

TINY = "arcface-tiny"

# (params counted from the graph, FLOPs = 2 x MACs of Conv + Gemm); the folded graph stores each
# post-conv BN as one conv bias instead of four BN vectors, hence r100's 65,156,288 vs 65,225,792.
EXPECTED = {
    "arcface-r18": (24_025_728, 5_219_909_632),
    "arcface-r34": (34_139_456, 8_919_285_760),
    "arcface-r50": (43_590_976, 12_618_661_888),
    "arcface-r100": (65_156_288, 24_179_212_288),
    "arcface-tiny": (1_709_272, 74_661_888),
}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (112, 112, 3), dtype=np.uint8)


# -- import hygiene and registry -------------------------------------------------------------------


def test_import_models_does_not_import_onnx():
    code = "import sys, unifer.models; print('onnx' in sys.modules, 'platformdirs' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_registry_lists_the_family():
    pytest.importorskip("onnx")
    infos = models.list_models()
    assert [m.name for m in infos] == list(EXPECTED) == models.names()
    for m in infos:
        assert m.spec == f"builtin:{m.name}"
        assert (m.input.name, m.input.shape, str(m.input.dtype)) == (
            "input.1",
            (1, 3, 112, 112),
            "float32",
        )
        assert (m.output.name, m.output.shape) == ("embedding", (1, 512))
        assert m.preprocess == Preprocess.arcface()
        assert m.preprocess_name == "arcface"
        assert m.files == () and m.size is None  # nothing generated in this test's cache


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ModelNotFoundError) as err:
        models.path("arcface-r101")
    assert isinstance(err.value, FileNotFoundError)
    for name in EXPECTED:
        assert name in str(err.value)


# -- graph and counts ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(EXPECTED))
def test_counts_from_the_graph(name: str):
    pytest.importorskip("onnx")
    params, flops = models.count(models.build(name, weights=False))
    assert (params, flops) == EXPECTED[name]
    m = models.info(name)
    assert (m.params, m.gflops) == (params, flops / 1e9)


def test_r100_matches_the_baseline_model():
    """BASELINE.md: 65,225,792 parameters, 24.18 GFLOPs, exporter's node census."""
    pytest.importorskip("onnx")
    model = models.build("arcface-r100", weights=False)
    params, flops = models.count(model)
    assert abs(params - 65_225_792) / 65_225_792 < 0.005
    assert abs(flops / 1e9 - 24.18) / 24.18 < 0.02
    census = collections.Counter(n.op_type for n in model.graph.node)
    assert census == {
        "Conv": 103,
        "BatchNormalization": 51,
        "PRelu": 50,
        "Add": 49,
        "Flatten": 1,
        "Gemm": 1,
    }


def test_r18_matches_the_baseline_model():
    pytest.importorskip("onnx")
    params, flops = models.count(models.build("arcface-r18", weights=False))
    assert round(params / 1e6, 1) == 24.0
    assert round(flops / 1e9, 2) == 5.22


def test_graph_only_build_is_the_same_graph():
    pytest.importorskip("onnx")
    full, bare = models.build(TINY), models.build(TINY, weights=False)
    assert full.graph.node == bare.graph.node
    assert [(t.name, list(t.dims)) for t in full.graph.initializer] == [
        (t.name, list(t.dims)) for t in bare.graph.initializer
    ]
    assert all(t.raw_data for t in full.graph.initializer)
    assert not any(t.raw_data for t in bare.graph.initializer)
    assert len(full.SerializeToString()) > 4 * EXPECTED[TINY][0] > len(bare.SerializeToString())


def test_tiny_is_a_valid_opset17_model():
    onnx = pytest.importorskip("onnx")
    model = models.build(TINY)
    onnx.checker.check_model(model, full_check=True)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    assert model.ir_version == 8


def test_count_walks_any_graph():
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])
    w1 = helper.make_tensor("w1", TensorProto.FLOAT, [4, 5], np.zeros(20, np.float32))
    w2 = helper.make_tensor("w2", TensorProto.FLOAT, [3, 5], np.zeros(15, np.float32))
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("Gemm", ["r", "w2"], ["y"], transB=1),
        ],
        "g",
        [x],
        [y],
        initializer=[w1, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    assert models.count(model) == (35, 2 * (4 * 5 + 5 * 3))


# -- determinism and variants ----------------------------------------------------------------------


def test_generation_is_deterministic():
    pytest.importorskip("onnx")
    first = models.build(TINY).SerializeToString()
    again = models.build(TINY).SerializeToString()
    assert sha256(first) == sha256(again)


def test_each_model_has_its_own_seed():
    pytest.importorskip("onnx")
    seeds = set()
    for name in EXPECTED:
        props = {p.key: p.value for p in models.build(name, weights=False).metadata_props}
        assert props["unifer.model"] == name and props["unifer.preprocess"] == "arcface"
        seeds.add(props["unifer.seed"])
    assert len(seeds) == len(EXPECTED)


def test_dynamic_batch_variant():
    pytest.importorskip("onnx")
    static, dynamic = models.build(TINY), models.build(TINY, dynamic_batch=True)
    for graph in (dynamic.graph.input[0], dynamic.graph.output[0]):
        dim = graph.type.tensor_type.shape.dim[0]
        assert dim.dim_param == "N" and not dim.HasField("dim_value")
    assert static.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    # Same weights: a dynamic-batch row equals the static model's output for that image.
    assert list(static.graph.initializer) == list(dynamic.graph.initializer)
    assert models.count(static) == models.count(dynamic)


# -- cache -----------------------------------------------------------------------------------------


def test_path_generates_into_the_cache_dir(private_cache: Path):
    pytest.importorskip("onnx")
    file = models.path(TINY)
    assert file.parent == private_cache / "models"
    assert file.name.startswith(f"{TINY}-") and file.suffix == ".onnx"
    manifest = json.loads(file.with_suffix(".json").read_text())
    data = file.read_bytes()
    assert manifest["sha256"] == sha256(data) == sha256(models.build(TINY).SerializeToString())
    assert manifest["size"] == len(data)
    # Atomic writes leave nothing behind but the file and its manifest.
    assert sorted(p.name for p in file.parent.iterdir()) == sorted(
        [file.name, file.with_suffix(".json").name]
    )


def test_valid_cache_is_reused(monkeypatch: pytest.MonkeyPatch):
    pytest.importorskip("onnx")
    file = models.path(TINY)

    def no_build(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a valid cached file was regenerated")

    monkeypatch.setattr(models, "build", no_build)
    assert models.path(TINY) == file


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "manifest", "bad-json"])
def test_damaged_cache_is_regenerated(damage: str):
    pytest.importorskip("onnx")
    file = models.path(TINY)
    good = file.read_bytes()
    manifest = file.with_suffix(".json")
    if damage == "flip":
        data = bytearray(good)
        data[len(data) // 2] ^= 0xFF  # same size: only the hash can tell
        file.write_bytes(bytes(data))
    elif damage == "truncate":
        file.write_bytes(good[: len(good) // 2])
    elif damage == "delete":
        file.unlink()
    elif damage == "manifest":
        manifest.unlink()
    else:
        manifest.write_text("{not json")
    assert models.path(TINY) == file
    assert file.read_bytes() == good
    assert json.loads(manifest.read_text())["sha256"] == sha256(good)
    assert not [p for p in file.parent.iterdir() if p.name.endswith(".tmp")]


def test_info_and_rows_report_cached_files():
    pytest.importorskip("onnx")
    static, dynamic = models.path(TINY), models.path(TINY, dynamic_batch=True)
    assert static != dynamic and dynamic.name.startswith(f"{TINY}-dynamic-")
    m = models.info(TINY)
    assert [(f.spec, f.path) for f in m.files] == [
        (f"builtin:{TINY}", static),
        (f"builtin:{TINY}?batch=dynamic", dynamic),
    ]
    assert m.size == static.stat().st_size
    rows = {r["name"]: r for r in json.loads(json.dumps(models.model_rows()))}
    assert set(rows) == set(EXPECTED)
    tiny = rows[TINY]
    assert tiny["path"] == str(static) and tiny["sha256"] == sha256(static.read_bytes())
    assert tiny["params"] == EXPECTED[TINY][0]
    assert tiny["input"] == "input.1: float32[1,3,112,112]"
    assert tiny["preprocess"] == "arcface"
    assert len(tiny["files"]) == 2
    r100 = rows["arcface-r100"]
    assert (r100["path"], r100["size"], r100["sha256"], r100["files"]) == (None, None, None, [])
    assert r100["gflops"] == pytest.approx(24.18, rel=0.02)


def test_missing_onnx_says_how_to_install(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # makes `import onnx` raise ImportError
    with pytest.raises(MissingDependencyError) as err:
        models.path(TINY)
    assert isinstance(err.value, ImportError)
    assert "pip install" in str(err.value) and "onnx" in str(err.value)


# -- builtin: specs --------------------------------------------------------------------------------


def test_resolve_builtin_specs():
    pytest.importorskip("onnx")
    file, pre = models.resolve(f"builtin:{TINY}") or (None, None)
    assert file == models.path(TINY) and pre == Preprocess.arcface()
    assert models.resolve(f"builtin:{TINY}?batch=1") == (file, pre)
    dynamic = models.resolve(f"builtin:{TINY}?batch=dynamic")
    assert dynamic == (models.path(TINY, dynamic_batch=True), pre)


@pytest.mark.parametrize("spec", ["arcface.onnx", "models/arcface-r100.onnx", "arcface-r100", ""])
def test_resolve_ignores_other_strings(spec: str):
    assert models.resolve(spec) is None


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("builtin:arcface-r101", ["arcface-r100", "arcface-tiny"]),
        ("builtin:", ["arcface-r18"]),
        (f"builtin:{TINY}?batch=7", ["batch=7", "?batch=dynamic"]),
        (f"builtin:{TINY}?dynamic", ["?batch=dynamic"]),
    ],
)
def test_resolve_rejects_unknown_names_and_options(spec: str, words: list[str]):
    with pytest.raises(ModelNotFoundError) as err:
        models.resolve(spec)
    for word in words:
        assert word in str(err.value)


# -- running it ------------------------------------------------------------------------------------


def run_ort(file: Path, x: np.ndarray) -> np.ndarray:
    ort = pytest.importorskip("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
    (y,) = session.run(["embedding"], {"input.1": x})
    return np.asarray(y)


def test_tiny_runs_in_onnxruntime_with_sane_outputs():
    pytest.importorskip("onnx")
    file, pre = models.resolve(f"builtin:{TINY}") or (Path(), Preprocess.arcface())
    a, b = run_ort(file, pre(image(0))), run_ort(file, pre(image(1)))
    assert a.shape == (1, 512) and a.dtype == np.float32
    assert np.isfinite(a).all()
    # A trained ArcFace gives values up to ~5 and norms ~20; neither exploded nor vanished.
    assert 0.3 < float(np.sqrt(np.mean(a**2))) < 3.0
    assert 1.0 < float(np.abs(a).max()) < 10.0
    # The embedding depends on the face, not only on the network.
    cos = float((a * b).sum() / math.sqrt(float((a * a).sum() * (b * b).sum())))
    assert cos < 0.95


def test_dynamic_batch_runs_batched_in_onnxruntime():
    pytest.importorskip("onnx")
    pre = Preprocess.arcface()
    batch = pre(np.stack([image(0), image(1), image(2)]))
    y = run_ort(models.path(TINY, dynamic_batch=True), batch)
    assert y.shape == (3, 512)
    one = run_ort(models.path(TINY), batch[1:2])
    np.testing.assert_allclose(y[1:2], one, rtol=1e-4, atol=1e-5)


def test_openvino_f32_agrees_with_onnxruntime():
    pytest.importorskip("onnx")
    ov = pytest.importorskip("openvino")
    file = models.path(TINY)
    x = Preprocess.arcface()(image(3))
    ref = run_ort(file, x)
    compiled = ov.Core().compile_model(
        str(file), "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1}
    )
    got = np.asarray(compiled({"input.1": x})[0])
    assert np.abs(got - ref).max() < 1e-4 * max(1.0, float(np.abs(ref).max()))
