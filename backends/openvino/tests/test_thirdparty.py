"""Parity on real third-party ONNX models: unifer's OpenVINO backend against raw OpenVINO.

The models are files other projects ship: silero-vad's voice-activity detectors (If subgraphs,
recurrent state, an int64 scalar input) and the ``light_*`` CNNs in the onnx wheel's backend test
data (real architectures whose weights are ConstantOfShape nodes). Raw OpenVINO is compiled with
INFERENCE_PRECISION_HINT=f32, so the two must agree to 1e-4; onnxruntime is a looser sanity check.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import openvino as ov
import pytest

from unifer import Engine, ModelLoadError

ort = pytest.importorskip("onnxruntime")

_SILERO = importlib.util.find_spec("silero_vad")  # importing silero_vad itself needs torch
SILERO_DATA = Path(_SILERO.origin).parent / "data" if _SILERO and _SILERO.origin else None
LIGHT_DATA = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
needs_silero = pytest.mark.skipif(SILERO_DATA is None, reason="silero-vad is not installed")

Feeds = dict[str, np.ndarray]


def _audio(samples: int, rows: int = 1) -> np.ndarray:
    noise = np.random.default_rng(samples).standard_normal((rows, samples))
    return (0.1 * noise).astype(np.float32)


def _vad_feeds() -> Feeds:
    """One 512-sample chunk at 16 kHz, fresh state."""
    return {
        "input": _audio(512),
        "state": np.zeros((2, 1, 128), np.float32),
        "sr": np.array(16000, dtype=np.int64),
    }


SILERO_CASES: dict[str, Feeds] = {
    # The If-free export of silero_vad.onnx: same inputs (including the int64 scalar sr).
    "silero_vad_op18_ifless.onnx": _vad_feeds(),
    # Its compiled "output" port also carries an If-branch tensor name, which get_any_name() picks.
    "silero_vad_openvino_16k.onnx": {
        "input": _audio(576),
        "state": np.zeros((2, 1, 128), np.float32),
    },
    "silero_vad_16k_sequence.onnx": {
        "input": _audio(576, rows=3),
        "h": np.zeros((1, 1, 128), np.float32),
        "c": np.zeros((1, 1, 128), np.float32),
    },
}

#: Models OpenVINO 2026.4.1 cannot convert: inside their If branches the ONNX frontend loses the
#: rank of a Conv/ReduceMean input ("The input data tensor's rank has to be known"), even with the
#: inputs' shapes fixed. onnxruntime runs them; through unifer they must fail as ModelLoadError.
SILERO_UNCONVERTIBLE: dict[str, Feeds] = {
    "silero_vad.onnx": _vad_feeds(),
    "silero_vad_16k_op15.onnx": _vad_feeds(),
}


def _light(tmp_path: Path, name: str) -> Path:
    """A light_* model; its softmax is exposed too when the output would be uniform.

    With all-equal weights every class gets the same logit, so a softmax output is 0.001 for any
    input; the logits feeding it (an extra graph output) are what actually tests the numbers.
    """
    source = LIGHT_DATA / f"light_{name}.onnx"
    model = onnx.load(source)
    last = model.graph.node[-1]
    if last.op_type != "Softmax":
        return source
    model.graph.output.append(
        onnx.helper.make_tensor_value_info(last.input[0], onnx.TensorProto.FLOAT, None)
    )
    path = tmp_path / source.name
    onnx.save(model, path)
    return path


LIGHT_CASES = ("shufflenet", "inception_v1", "densenet121")


def _raw_openvino(path: Path, feeds: Feeds) -> list[np.ndarray]:
    """What a user calling OpenVINO directly gets, with fp32 pinned (outputs in port order)."""
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return list(compiled.create_infer_request().infer(feeds).to_tuple())


def _check_parity(path: Path, feeds: Feeds) -> None:
    with Engine.load(path, backend="openvino") as engine:
        names = [spec.name for spec in engine.outputs]
        got = engine.run(feeds)
    reference = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in engine.inputs] == [i.name for i in reference.get_inputs()]
    assert names == [o.name for o in reference.get_outputs()]
    for name, raw in zip(names, _raw_openvino(path, feeds), strict=True):
        assert got[name].shape == raw.shape
        assert got[name].dtype == raw.dtype
        np.testing.assert_allclose(got[name], raw, rtol=0, atol=1e-4, err_msg=name)
    for name, want in zip(names, reference.run(None, feeds), strict=True):
        scale = max(1.0, float(np.abs(want).max()))
        np.testing.assert_allclose(got[name], want, rtol=1e-4, atol=1e-4 * scale, err_msg=name)


@needs_silero
@pytest.mark.parametrize("model", sorted(SILERO_CASES))
def test_silero_vad_parity(model: str) -> None:
    assert SILERO_DATA is not None
    _check_parity(SILERO_DATA / model, SILERO_CASES[model])


@needs_silero
def test_silero_vad_state_round_trips() -> None:
    """Feeding stateN back in (how the model is used on a stream) matches raw OpenVINO."""
    assert SILERO_DATA is not None
    path = SILERO_DATA / "silero_vad_op18_ifless.onnx"
    feeds = _vad_feeds()
    with Engine.load(path, backend="openvino") as engine:
        for chunk in range(3):
            feeds["input"] = _audio(512 + chunk)[:, :512]
            got = engine.run(feeds)
            raw = _raw_openvino(path, feeds)
            np.testing.assert_allclose(got["output"], raw[0], atol=1e-4)
            np.testing.assert_allclose(got["stateN"], raw[1], atol=1e-4)
            feeds["state"] = got["stateN"]


@needs_silero
@pytest.mark.parametrize("model", sorted(SILERO_UNCONVERTIBLE))
def test_silero_vad_models_openvino_cannot_convert(model: str) -> None:
    assert SILERO_DATA is not None
    path = SILERO_DATA / model
    try:
        _raw_openvino(path, SILERO_UNCONVERTIBLE[model])
    except RuntimeError:
        pass
    else:
        pytest.fail(f"OpenVINO {ov.get_version()} now converts {model}: move it to SILERO_CASES")
    with pytest.raises(ModelLoadError, match=model) as info:
        Engine.load(path, backend="openvino")
    assert isinstance(info.value.__cause__, RuntimeError)
    # onnxruntime runs the same file: the limitation is OpenVINO's, not the model's.
    reference = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert reference.run(None, SILERO_UNCONVERTIBLE[model])[0].shape == (1, 1)


@pytest.mark.parametrize("name", LIGHT_CASES)
def test_light_model_parity(tmp_path: Path, name: str) -> None:
    path = _light(tmp_path, name)
    model = onnx.load(path, load_external_data=False)
    weights = {t.name for t in model.graph.initializer}
    (graph_input,) = [i for i in model.graph.input if i.name not in weights]
    dims = [d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    x = np.random.default_rng(0).standard_normal(dims).astype(np.float32)
    _check_parity(path, {graph_input.name: x})
