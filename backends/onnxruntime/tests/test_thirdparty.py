"""Parity with raw onnxruntime on real third-party models.

unifer must return what ``onnxruntime.InferenceSession`` returns for the same feeds. The models
come from installed wheels, never downloaded: silero-vad's VAD models (If subgraphs, a recurrent
state, an int64 scalar input) and the ``light_*`` CNNs the onnx wheel ships for its backend tests
(real architectures whose weights are ConstantOfShape nodes).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from unifer import Engine
from unifer.backend import SessionOptions
from unifer.testing.thirdparty import light, silero
from unifer_onnxruntime import OnnxRuntimeBackend

TOLERANCE = 1e-5
SR_16K = np.array(16000, dtype=np.int64)


def reference(model: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])


def assert_same(got: Mapping[str, np.ndarray], want: list[np.ndarray], names: list[str]) -> None:
    assert list(got) == names
    for name, expected in zip(names, want, strict=True):
        assert got[name].dtype == expected.dtype, name
        assert got[name].shape == expected.shape, name
        diff = float(np.max(np.abs(got[name] - expected))) if expected.size else 0.0
        assert diff <= TOLERANCE, f"{name}: max abs diff {diff}"


def vad_chunks(n: int = 3) -> list[np.ndarray]:
    """Audio-like 512-sample chunks at 16 kHz: a tone in noise, so the VAD state really moves."""
    rng = np.random.default_rng(0)
    t = np.arange(512 * n) / 16000
    audio = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.size)
    return [c[np.newaxis].astype(np.float32) for c in np.split(audio, n)]


SILERO_16K = ["silero_vad.onnx", "silero_vad_16k_op15.onnx"]


Runner = Callable[[dict[str, np.ndarray]], Mapping[str, np.ndarray]]


def run_vad(model: Path, run: Runner) -> None:
    """Feed chunks through both runners, carrying each one's own state, and compare every step."""
    raw = reference(model)
    names = [o.name for o in raw.get_outputs()]
    ours_state = raw_state = np.zeros((2, 1, 128), np.float32)
    for chunk in vad_chunks():
        want = raw.run(None, {"input": chunk, "state": raw_state, "sr": SR_16K})
        got = run({"input": chunk, "state": ours_state, "sr": SR_16K})
        assert_same(got, want, names)
        assert 0.0 <= float(got["output"][0, 0]) <= 1.0
        ours_state, raw_state = got["stateN"], want[1]


@pytest.mark.parametrize("filename", SILERO_16K)
def test_silero_vad_session_matches_onnxruntime(filename: str) -> None:
    model = silero(filename)
    sess = OnnxRuntimeBackend().open(model, SessionOptions())
    specs = {s.name: s for s in sess.inputs}
    assert specs["sr"].shape == () and specs["sr"].dtype == np.int64
    assert specs["state"].shape[0::2] == (2, 128)
    run_vad(model, sess.run)
    sess.close()


@pytest.mark.parametrize("filename", SILERO_16K)
def test_silero_vad_engine_matches_onnxruntime(filename: str) -> None:
    model = silero(filename)
    with Engine.load(model, backend="onnxruntime") as engine:
        run_vad(model, engine.run)


@pytest.mark.parametrize("name", ["densenet121", "resnet50", "squeezenet"])
def test_light_cnn_matches_onnxruntime(name: str) -> None:
    model = light(name)
    raw = reference(model)
    (spec,) = raw.get_inputs()
    x = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    want = raw.run(None, {spec.name: x})
    with Engine.load(model, backend="onnxruntime") as engine:
        assert [(s.name, s.shape) for s in engine.inputs] == [(spec.name, (1, 3, 224, 224))]
        got = engine.run({spec.name: x})
    assert_same(got, want, [o.name for o in raw.get_outputs()])
