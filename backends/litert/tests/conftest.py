"""Fixtures for the LiteRT plugin tests: every test gets its own unifer cache directory."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def cache_root(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private ``$UNIFER_CACHE_DIR``, so no test writes into the user's real cache."""
    root = tmp_path_factory.mktemp("unifer-cache")
    monkeypatch.setenv("UNIFER_CACHE_DIR", str(root))
    return root
