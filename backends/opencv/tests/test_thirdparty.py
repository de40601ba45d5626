"""Parity with raw onnxruntime on real third-party models, and OpenCV's refusals on others.

The models come from installed wheels, never downloaded: silero-vad's VAD models (a recurrent
state, an int64 scalar input, ``If`` subgraphs in some files) and the ``light_*`` CNNs the onnx
wheel ships for its backend tests.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest

from unifer import Engine, ModelLoadError
from unifer.testing.thirdparty import light, silero

ort = pytest.importorskip("onnxruntime")

TOLERANCE = 1e-4
SR_16K = np.array(16000, dtype=np.int64)


def assert_same(got: Mapping[str, np.ndarray], want: list[np.ndarray], names: list[str]) -> None:
    assert list(got) == names
    for name, expected in zip(names, want, strict=True):
        assert got[name].dtype == expected.dtype, name
        assert got[name].shape == expected.shape, name
        diff = float(np.max(np.abs(got[name] - expected))) if expected.size else 0.0
        assert diff <= TOLERANCE, f"{name}: max abs diff {diff}"


def audio(samples: int) -> np.ndarray:
    """A tone in noise at 16 kHz, so the VAD state really moves."""
    rng = np.random.default_rng(0)
    t = np.arange(samples) / 16000
    return (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.size)).astype(
        np.float32
    )


@pytest.mark.parametrize(
    "rate",
    [
        8000,
        pytest.param(
            16000,
            marks=pytest.mark.xfail(
                reason="OpenCV 5.0.0 bug: Tanh returns NaN for inputs above ~44 (exp overflow); "
                "the 16 kHz branch's LSTM cell feeds it such values, so stateN turns NaN and "
                "the probability 1.0 (see test_opencv.py::test_tanh_of_large_inputs)",
                strict=True,
            ),
        ),
    ],
)
def test_silero_vad_op18_ifless_matches_onnxruntime(rate: int) -> None:
    """An If on the sample rate, dynamic batch and sequence dims, a recurrent state and an int64
    scalar input."""
    model = silero("silero_vad_op18_ifless.onnx")
    raw = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    names = [o.name for o in raw.get_outputs()]
    sr = np.array(rate, np.int64)
    size = 512 if rate == 16000 else 256
    with Engine.load(model, backend="opencv") as engine:
        specs = {s.name: s for s in engine.inputs}
        assert specs["sr"].shape == () and specs["sr"].dtype == np.int64
        ours_state = raw_state = np.zeros((2, 1, 128), np.float32)
        for chunk in np.split(audio(3 * size), 3):
            feeds = {"input": chunk[np.newaxis]}
            want = raw.run(None, {**feeds, "state": raw_state, "sr": sr})
            got = engine.run({**feeds, "state": ours_state, "sr": sr})
            assert_same(got, want, names)
            ours_state, raw_state = got["stateN"], want[1]


@pytest.mark.parametrize(
    "filename", ["silero_vad_16k_sequence.onnx", "silero_vad_openvino_16k.onnx"]
)
def test_other_silero_vad_models_match_onnxruntime(filename: str) -> None:
    model = silero(filename)
    raw = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    if filename == "silero_vad_16k_sequence.onnx":  # an LSTM over a sequence of windows
        zeros = np.zeros((1, 1, 128), np.float32)
        feeds = {"input": audio(3 * 576).reshape(3, 576), "h": zeros, "c": zeros}
    else:
        feeds = {"input": audio(576)[np.newaxis], "state": np.zeros((2, 1, 128), np.float32)}
    want = raw.run(None, feeds)
    with Engine.load(model, backend="opencv") as engine:
        got = engine.run(feeds)
    assert_same(got, want, [o.name for o in raw.get_outputs()])


@pytest.mark.parametrize(
    "filename", ["silero_vad.onnx", "silero_vad_16k_op15.onnx", "silero_vad_half.onnx"]
)
def test_models_the_new_engine_cannot_build_are_refused_without_crashing(filename: str) -> None:
    """The new engine returns an empty Net for these three (If graphs from the older exporters);
    the classic engine, which OpenCV's ENGINE_AUTO falls back to, segfaults on the last two.
    Opening them must be a ModelLoadError, in this process."""
    with pytest.raises(ModelLoadError, match=r"new DNN engine cannot build"):
        Engine.load(silero(filename), backend="opencv")


@pytest.mark.parametrize("name", ["densenet121", "resnet50", "squeezenet"])
def test_light_cnn_matches_onnxruntime(name: str) -> None:
    model = light(name)
    raw = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    (spec,) = raw.get_inputs()
    x = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    want = raw.run(None, {spec.name: x})
    with Engine.load(model, backend="opencv") as engine:
        assert [(s.name, s.shape) for s in engine.inputs] == [(spec.name, (1, 3, 224, 224))]
        got = engine.run({spec.name: x})
    assert_same(got, want, [o.name for o in raw.get_outputs()])
