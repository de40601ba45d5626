"""The mxnet plugin against unifer's generic backend conformance kit.

MXNet does not read ONNX, so :meth:`model_file` converts each kit model with the plugin's own
converter (``mxnet.contrib.onnx`` plus its graph fixes); the ONNX source goes to a sibling
directory, so the model directory holds only the ``-symbol.json`` and ``-0000.params`` opened.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import ClassVar

import pytest

from unifer import ModelLoadError
from unifer.backend import Backend, SessionOptions
from unifer.testing import BackendContract
from unifer.testing.models import ToyModel
from unifer_mxnet import MXNetBackend

if importlib.util.find_spec("mxnet") is None:
    pytest.skip(
        "mxnet is not installed here: it needs numpy < 1.24, so its tests run in the plugin's own "
        "environment (uv run --project backends/mxnet pytest backends/mxnet/tests)",
        allow_module_level=True,
    )


class TestMXNetContract(BackendContract):
    backend_class: ClassVar[type[Backend]] = MXNetBackend
    runtime_modules = ("mxnet",)
    # Executors are bound per input shape, so the batch dimension stays dynamic.
    dynamic_batch = True
    unsupported_precision = "int8"

    @pytest.mark.xfail(
        strict=True,
        raises=ModelLoadError,
        reason="mxnet.contrib.onnx imports an Identity of a graph input as a new variable without "
        "a shape ('identity1_data'), so the passthrough model cannot load; the plugin says so "
        "with ModelLoadError (README, known limits)",
    )
    def test_results_belong_to_the_caller(self, model_dir: Path) -> None:
        super().test_results_belong_to_the_caller(model_dir)

    def model_file(self, model: ToyModel, directory: Path) -> Path:
        source_dir = directory.parent / f"{directory.name}-onnx"
        source_dir.mkdir(exist_ok=True)
        source = model.save(source_dir)
        return MXNetBackend().convert(source, directory, SessionOptions())
