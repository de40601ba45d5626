"""The conformance kit every unifer backend passes, run against TensorRT.

Three of its checks need no runtime and run everywhere (the class, its registration, importing
the plugin without TensorRT); the rest need TensorRT on an NVIDIA GPU: they are marked ``gpu``
(see conftest.py) and skip where ``probe()`` is not ok.
"""

from __future__ import annotations

from typing import ClassVar

import pytest

from unifer.backend import Backend
from unifer.testing import BackendContract
from unifer_tensorrt import TensorRTBackend

RUNS_WITHOUT_RUNTIME = frozenset(
    {
        "test_class_satisfies_the_protocol",
        "test_registered_under_its_name",
        "test_plugin_module_imports_without_its_runtime",
    }
)
AVAILABILITY = TensorRTBackend().probe()


class TestTensorRTContract(BackendContract):
    backend_class: ClassVar[type[Backend]] = TensorRTBackend
    runtime_modules = ("tensorrt",)
    # A float32 model without Q/DQ nodes cannot run at int8 (no calibration).
    unsupported_precision = "int8"
    # threads= has nothing to map to on the GPU: it warns and settings report None.
    threads_apply = False

    @pytest.fixture(autouse=True)
    def _runtime_needed(self, request: pytest.FixtureRequest) -> None:
        name = getattr(request.node, "originalname", request.node.name)
        if name not in RUNS_WITHOUT_RUNTIME and not AVAILABILITY.ok:
            pytest.skip(f"TensorRT cannot run here: {AVAILABILITY.reason}")
