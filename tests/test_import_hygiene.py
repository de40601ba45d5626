"""`import unifer` (and importing a plugin module) must not import any inference runtime."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

RUNTIMES = (
    "onnxruntime",
    "openvino",
    "tensorrt",
    "ai_edge_litert",
    "tflite_runtime",
    "ncnn",
    "mxnet",
    "torch",
    "cv2",
    "PIL",
    "onnx",
    "platformdirs",
)


def loaded_after(statement: str) -> list[str]:
    code = f"import sys; {statement}; print(sorted(m for m in {RUNTIMES!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return eval(out.stdout)  # noqa: S307 - our own subprocess printing a list literal


def test_import_unifer_imports_no_runtime():
    assert loaded_after("import unifer, unifer.backend") == []


@pytest.mark.parametrize("plugin", ["unifer_onnxruntime", "unifer_openvino"])
def test_plugin_modules_import_no_runtime(plugin):
    if importlib.util.find_spec(plugin) is None:
        pytest.skip(f"{plugin} is not installed")
    assert loaded_after(f"import unifer, {plugin}") == []
