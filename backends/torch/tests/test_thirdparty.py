"""Parity with raw onnxruntime on models unifer did not write for this plugin, and refusals.

ArcFace IResNet (``unifer.models``, random weights, built from code), the ``light_*`` CNNs that the
onnx wheel ships for its backend tests (LRN, ceil-mode pooling, Sum, Concat, Reshape/Transpose
channel shuffles, opset 9), and silero-vad's models where installed (If subgraphs and LSTM, which
the converter does not run: they must be refused by name).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

if importlib.util.find_spec("torch") is None:
    pytest.skip(
        "torch is not installed here: the torch backend's tests run in its own environment "
        "(backends/torch/test-env.sh)",
        allow_module_level=True,
    )

import onnx

from unifer import Engine, ModelLoadError
from unifer import models as builtin
from unifer.testing.thirdparty import light, silero

ort = pytest.importorskip("onnxruntime")

CPU = {"torch": {"device": "cpu"}}


@pytest.fixture(scope="module")
def arcface_tiny_dynamic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("arcface") / "arcface-tiny-dynamic.onnx"
    onnx.save(builtin.build("arcface-tiny", dynamic_batch=True), str(path))
    return path


def test_arcface_tiny_matches_onnxruntime(arcface_tiny_dynamic: Path) -> None:
    """Conv, BatchNormalization, PRelu, Add, Flatten, Gemm: the IResNet graph, batch 1 and 3."""
    raw = ort.InferenceSession(str(arcface_tiny_dynamic), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    with Engine.load(arcface_tiny_dynamic, backend="torch", backend_options=CPU) as engine:
        assert engine.inputs[0].shape == ("N", 3, 112, 112)
        assert engine.outputs[0].name == "embedding"
        for batch in (1, 3):
            x = rng.standard_normal((batch, 3, 112, 112)).astype(np.float32)
            (want,) = raw.run(None, {"input.1": x})
            got = engine.run({"input.1": x})["embedding"]
            assert got.shape == want.shape == (batch, 512)
            # fp32 faithful: within 1e-4 of the output scale (embeddings reach ~5).
            np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max(), rtol=0)


def test_arcface_predict_with_its_preprocessing() -> None:
    """builtin:arcface-tiny through predict(): uint8 image -> preprocessing -> embedding."""
    image = np.random.default_rng(1).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    with Engine.load("builtin:arcface-tiny", backend="onnxruntime") as reference:
        want = reference.predict(image)
    with Engine.load("builtin:arcface-tiny", backend="torch", backend_options=CPU) as engine:
        got = engine.predict(image)
    np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max(), rtol=0)


@pytest.mark.parametrize("name", ["squeezenet", "zfnet512", "shufflenet", "resnet50"])
def test_light_cnn_matches_onnxruntime(name: str) -> None:
    model = light(name)
    raw = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    (spec,) = raw.get_inputs()
    x = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    want = raw.run(None, {spec.name: x})
    with Engine.load(model, backend="torch", backend_options=CPU) as engine:
        assert [(s.name, s.shape) for s in engine.inputs] == [(spec.name, (1, 3, 224, 224))]
        got = engine.run({spec.name: x})
    assert list(got) == [o.name for o in raw.get_outputs()]
    for value, expected in zip(got.values(), want, strict=True):
        assert value.dtype == expected.dtype and value.shape == expected.shape
        np.testing.assert_allclose(value, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("filename", "ops"),
    [("silero_vad.onnx", "If"), ("silero_vad_16k_sequence.onnx", "LSTM")],
)
def test_silero_vad_is_refused_naming_its_operators(filename: str, ops: str) -> None:
    with pytest.raises(ModelLoadError, match=rf"does not support the operator\(s\) {ops}"):
        Engine.load(silero(filename), backend="torch", backend_options=CPU)
