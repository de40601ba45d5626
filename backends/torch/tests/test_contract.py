"""The torch plugin against unifer's generic backend conformance kit: on CPU, and on CUDA where
torch sees a GPU (``gpu`` marker).

The kit's models are ONNX files, which the plugin converts in memory with its own ONNX -> torch
converter when it opens them; TorchScript and torch.export files are covered in test_torch.py.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import ClassVar

import pytest

from unifer import Engine
from unifer.backend import Backend, Session, SessionOptions
from unifer.testing import BackendContract
from unifer.testing.models import ToyModel
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
    #: The device every engine and session of the kit is opened on (the default, "auto", would
    #: pick a GPU where there is one).
    device: ClassVar[str] = "cpu"

    def open_engine(self, model: ToyModel, directory: Path, **options: object) -> Engine:
        backend_options = options.pop("backend_options", None) or {"torch": {}}
        assert isinstance(backend_options, dict)
        backend_options = {"torch": {"device": self.device, **backend_options["torch"]}}
        return super().open_engine(model, directory, backend_options=backend_options, **options)

    def open_session(self, backend: Backend, model: ToyModel, directory: Path) -> Session:
        path = self.model_file(model, directory)
        options = SessionOptions(
            cache_dir=directory.parent / "cache", extra={"device": self.device}
        )
        return backend.open(path, options)


@pytest.mark.gpu
class TestTorchContractOnCuda(TestTorchContract):
    device: ClassVar[str] = "cuda:0"

    @pytest.fixture(autouse=True)
    def _needs_cuda(self) -> None:
        import torch

        if not torch.cuda.is_available():
            pytest.skip("no CUDA device visible to torch here")
