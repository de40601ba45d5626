"""Fixtures for the torch plugin tests, which run in the plugin's own environment (.venv-torch).

torch is not installed in the repo's main environment (uv would resolve it to a multi-GB CUDA
build), and neither is this plugin. There the tests that need torch skip (each module says so),
and the rest (the probe without torch, option parsing that needs no torch) run against the plugin's
source, which is put on ``sys.path`` for that. In the torch environment
(``backends/torch/test-env.sh``) everything runs; CUDA tests (``@pytest.mark.gpu``) run only where
torch sees a GPU.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).parents[1] / "src"
HAS_TORCH = importlib.util.find_spec("torch") is not None
NO_TORCH_REASON = (
    "torch is not installed here: the torch backend's tests run in its own environment "
    "(backends/torch/test-env.sh)"
)

if importlib.util.find_spec("unifer_torch") is None:
    sys.path.insert(0, str(SRC))


@pytest.fixture(autouse=True)
def cache_root(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private ``$UNIFER_CACHE_DIR``, so no test writes into the user's real cache."""
    root = tmp_path_factory.mktemp("unifer-cache")
    monkeypatch.setenv("UNIFER_CACHE_DIR", str(root))
    return root


@pytest.fixture(autouse=True)
def _restore_torch_threads() -> Iterator[None]:
    """``threads=`` changes PyTorch's thread count for the whole process: put it back."""
    if not HAS_TORCH:
        yield
        return
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)
