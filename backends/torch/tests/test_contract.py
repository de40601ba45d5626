"""The torch plugin against unifer's generic backend conformance kit: on CPU, and on CUDA where
torch sees a GPU (``gpu`` marker).

The kit's models are ONNX files, which the plugin converts in memory with its own ONNX -> torch
converter when it opens them; TorchScript and torch.export files are covered in test_torch.py.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from typing import Any, ClassVar

import pytest

from unifer.backend import Backend
from unifer.testing import BackendContract
from unifer_torch import TorchBackend

if importlib.util.find_spec("torch") is None:
    pytest.skip(
        "torch is not installed here: the torch backend's tests run in its own environment "
        "(backends/torch/test-env.sh)",
        allow_module_level=True,
    )


class TestTorchContract(BackendContract):
    backend_class: ClassVar[type[Backend]] = TorchBackend
    runtime_modules = ("torch",)
    dynamic_batch = True
    unsupported_precision = "int8"
    # The kit opens every engine and session on this device (the default, "auto", would pick a GPU
    # where there is one).
    backend_options: ClassVar[Mapping[str, object]] = {"device": "cpu"}

    def runtime_threads(self, session: Any) -> int | None:
        import torch

        return int(torch.get_num_threads())  # process-wide in PyTorch


@pytest.mark.gpu
class TestTorchContractOnCuda(TestTorchContract):
    backend_options: ClassVar[Mapping[str, object]] = {"device": "cuda:0"}

    @pytest.fixture(autouse=True)
    def _needs_cuda(self) -> None:
        import torch

        if not torch.cuda.is_available():
            pytest.skip("no CUDA device visible to torch here")
