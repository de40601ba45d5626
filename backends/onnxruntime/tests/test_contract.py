"""The conformance kit every unifer backend passes, run against onnxruntime."""

from __future__ import annotations

from unifer.testing import BackendContract
from unifer_onnxruntime import OnnxRuntimeBackend


class TestOnnxRuntimeContract(BackendContract):
    backend_class = OnnxRuntimeBackend
    runtime_modules = ("onnxruntime",)
