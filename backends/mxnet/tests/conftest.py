"""Fixtures for the mxnet plugin tests, which run in the plugin's own environment.

mxnet 1.9.1 needs numpy < 1.24, so it is not installed in the repo's main environment; there the
tests that need it skip (each module says so), and the rest (the probe, checkpoint naming) run
against the plugin's source, which is put on ``sys.path`` because the plugin is not installed
there either. In the mxnet environment (``uv run --project backends/mxnet pytest
backends/mxnet/tests``) everything runs.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).parents[1] / "src"

if importlib.util.find_spec("unifer_mxnet") is None:
    sys.path.insert(0, str(SRC))

# MXNet reads its thread count once, when it is imported. Pin it for this test process so the
# in-process tests see one known value (the conformance kit asks for threads=1); the tests of the
# thread settings themselves run in fresh processes.
if importlib.util.find_spec("mxnet") is not None and "mxnet" not in sys.modules:
    os.environ["OMP_NUM_THREADS"] = "1"


@pytest.fixture(autouse=True)
def cache_root(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private ``$UNIFER_CACHE_DIR``, so no test writes into the user's real cache."""
    root = tmp_path_factory.mktemp("unifer-cache")
    monkeypatch.setenv("UNIFER_CACHE_DIR", str(root))
    return root
