"""Fixtures for the OpenCV plugin tests: a private unifer cache, and OpenCV's process-wide thread
count restored after each test (``threads=`` changes it for the whole process)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import pytest


@pytest.fixture(autouse=True)
def cache_root(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private ``$UNIFER_CACHE_DIR``, so no test writes into the user's real cache."""
    root = tmp_path_factory.mktemp("unifer-cache")
    monkeypatch.setenv("UNIFER_CACHE_DIR", str(root))
    return root


@pytest.fixture(autouse=True)
def _restore_opencv_threads() -> Iterator[None]:
    before = cv2.getNumThreads()
    yield
    cv2.setNumThreads(before)
