"""Core test fixtures: an in-memory fake backend, so core tests need no inference runtime.

The fake is only evidence that the *core* works (registry, options, feeds, errors, CLI wiring);
that a real runtime works is shown by each plugin's own tests under ``backends/``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from unifer import register_backend, unregister_backend
from unifer.backend import (
    BACKEND_API_VERSION,
    Availability,
    SessionOptions,
    TensorSpec,
    reject_precision,
    translate_errors,
    warn_unknown_options,
)


class FakeSession:
    """Doubles its only input; the model file is JSON naming the input and output specs."""

    def __init__(self, model: Path, options: SessionOptions) -> None:
        with translate_errors("fake", ValueError, KeyError, model=model):
            spec = json.loads(model.read_text())
            self.inputs = [
                TensorSpec(i["name"], tuple(i["shape"]), np.dtype(i["dtype"]))
                for i in spec["inputs"]
            ]
            self.outputs = [
                TensorSpec(o["name"], tuple(o["shape"]), np.dtype(o["dtype"]))
                for o in spec["outputs"]
            ]
        self.options = options
        self.settings = {
            "threads": options.threads,
            "precision": options.precision,
            "device": "cpu",
        }
        self.closed = 0

    def run(self, feeds: Mapping[str, np.ndarray], /) -> dict[str, np.ndarray]:
        first = next(iter(feeds.values()))
        return {o.name: (first * 2).astype(o.dtype) for o in self.outputs}

    def close(self) -> None:
        self.closed += 1


class FakeBackend:
    name: ClassVar[str] = "fake"
    suffixes: ClassVar[tuple[str, ...]] = (".fake",)
    install: ClassVar[str] = "pip install unifer-fake"
    api_version: ClassVar[int] = BACKEND_API_VERSION
    available: ClassVar[bool] = True
    opened: ClassVar[list[FakeSession]] = []

    def probe(self) -> Availability:
        if not self.available:
            return Availability(
                ok=False, reason="fakeruntime is not installed", install=self.install
            )
        return Availability(ok=True, version="1.0")

    def open(self, model: Path, options: SessionOptions, /) -> FakeSession:
        reject_precision("fake", options.precision, ("fp32",), "it only does fp32")
        warn_unknown_options("fake", options.extra, ("mode",))
        session = FakeSession(model, options)
        self.opened.append(session)
        return session


@pytest.fixture(autouse=True)
def private_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Keep every test's caches out of the user's real cache directory."""
    path = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("UNIFER_CACHE_DIR", str(path))
    monkeypatch.delenv("UNIFER_NUM_THREADS", raising=False)
    return path


@pytest.fixture
def fake_backend() -> Iterator[type[FakeBackend]]:
    FakeBackend.available = True
    FakeBackend.opened = []
    register_backend(FakeBackend)
    yield FakeBackend
    unregister_backend("fake")


def write_fake_model(
    path: Path,
    *,
    inputs: list[dict[str, object]] | None = None,
    outputs: list[dict[str, object]] | None = None,
) -> Path:
    spec = {
        "inputs": inputs or [{"name": "x", "shape": ["N", 3], "dtype": "float32"}],
        "outputs": outputs or [{"name": "y", "shape": ["N", 3], "dtype": "float32"}],
    }
    path.write_text(json.dumps(spec))
    return path


@pytest.fixture
def fake_model(tmp_path: Path) -> Path:
    return write_fake_model(tmp_path / "model.fake")


@pytest.fixture
def make_fake_model() -> object:
    """The model writer, for tests that need other input/output specs."""
    return write_fake_model
