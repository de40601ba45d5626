"""Core test fixtures: the fake backend registered per test, so core tests need no runtime."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from unifer import register_backend, unregister_backend
from unifer.testing.fake import FakeBackend


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
