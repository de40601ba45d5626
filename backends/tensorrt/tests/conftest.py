"""Fixtures for the TensorRT plugin's tests, and the ``gpu`` marker on the tests that need one.

Most of the plugin (probe, options, profiles, precision rules, the engine cache, finding the CUDA
runtime) is tested on every machine. The tests that need TensorRT and an NVIDIA GPU are marked
``gpu`` and skip, saying why, where ``TensorRTBackend().probe()`` is not ok; run only them with
``pytest -m gpu backends/tensorrt``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from unifer.backend import Availability
from unifer_tensorrt import TensorRTBackend

AVAILABILITY: Availability = TensorRTBackend().probe()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The conformance kit's tests are inherited, so they cannot be marked one by one: a module
    # that lists the ones needing no runtime (RUNS_WITHOUT_RUNTIME) gets the rest marked "gpu".
    for item in items:
        without = getattr(getattr(item, "module", None), "RUNS_WITHOUT_RUNTIME", None)
        if without is not None and getattr(item, "originalname", item.name) not in without:
            item.add_marker(pytest.mark.gpu)


@pytest.fixture
def requires_tensorrt() -> Availability:
    """Skip the test unless TensorRT can run here."""
    if not AVAILABILITY.ok:
        pytest.skip(f"TensorRT cannot run here: {AVAILABILITY.reason}")
    return AVAILABILITY


@pytest.fixture(autouse=True)
def cache_root(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private ``$UNIFER_CACHE_DIR``, so no test writes into the user's real cache."""
    root = tmp_path_factory.mktemp("unifer-cache")
    monkeypatch.setenv("UNIFER_CACHE_DIR", str(root))
    return root
