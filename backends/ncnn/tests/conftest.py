"""Fixtures for the ncnn plugin tests: a private unifer cache, and ArcFace-tiny as ONNX and ncnn."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest

from unifer import models
from unifer_ncnn._onnx2ncnn import convert


@pytest.fixture(autouse=True)
def cache_root(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private ``$UNIFER_CACHE_DIR``, so no test writes into the user's real cache."""
    root = tmp_path_factory.mktemp("unifer-cache")
    monkeypatch.setenv("UNIFER_CACHE_DIR", str(root))
    return root


@dataclass(frozen=True)
class Converted:
    """An ONNX model and its ncnn conversion (``param`` with its ``.bin`` beside it)."""

    onnx: Path
    param: Path

    def reference(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The ONNX model's outputs from onnxruntime, the reference for parity."""
        ort = pytest.importorskip("onnxruntime")
        session = ort.InferenceSession(str(self.onnx), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(None, feeds), strict=True))


@pytest.fixture(scope="session")
def arcface_tiny(tmp_path_factory: pytest.TempPathFactory) -> Converted:
    """The built-in arcface-tiny (dynamic batch) as ONNX, converted once for the whole session."""
    root = tmp_path_factory.mktemp("arcface-tiny")
    source = root / "arcface-tiny.onnx"
    onnx.save(models.build("arcface-tiny", dynamic_batch=True), str(source))
    out = root / "ncnn"
    out.mkdir()
    return Converted(source, convert(source, out))


@pytest.fixture
def face() -> np.ndarray:
    """Two arcface-preprocessed images: float32 [2, 3, 112, 112] in [-1, 1]."""
    return np.random.default_rng(7).uniform(-1, 1, (2, 3, 112, 112)).astype(np.float32)
