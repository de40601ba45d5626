"""The LiteRT plugin against unifer's generic backend conformance kit.

The kit's toy models are ONNX; each is converted to ``.tflite`` by the plugin's own converter, so
every kit check (multi-I/O with an int64 input, dynamic batch, 8 threads, corrupt files) runs on a
real LiteRT interpreter. The ONNX source is written to a scratch directory, so the model directory
holds only the ``.tflite`` file, as the kit's "nothing written next to the model" check expects.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from unifer.backend import SessionOptions
from unifer.testing import BackendContract
from unifer.testing.models import ToyModel
from unifer_litert import LiteRTBackend


class TestLiteRTContract(BackendContract):
    backend_class = LiteRTBackend
    runtime_modules = ("ai_edge_litert", "tflite_runtime")
    # The plugin's ONNX -> TFLite converter refuses a graph output that is a constant.
    constant_outputs = False

    def model_file(self, model: ToyModel, directory: Path) -> Path:
        with tempfile.TemporaryDirectory() as scratch:
            source = model.save(Path(scratch))
            return LiteRTBackend().convert(source, directory, SessionOptions())
