"""Real third-party ONNX models that installed packages ship, for parity tests.

Models unifer did not write: Silero VAD (``silero-vad``: If subgraphs, an int64 scalar input,
recurrent state) and the ``light_*`` architectures in the ``onnx`` wheel's backend test data
(weights as Constant nodes). Each helper skips the calling test when the file is not installed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

__all__ = ["light", "package_dir", "silero"]


def package_dir(name: str) -> Path:
    """The installed package's directory, found without importing it, or skip the test."""
    # find_spec does not import: `import silero_vad` needs torch, which the test environment
    # deliberately lacks (only the ONNX files are used).
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{name} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def silero(filename: str) -> Path:
    """A model file shipped by silero-vad, e.g. ``silero_vad.onnx``."""
    path = package_dir("silero_vad") / "data" / filename
    if not path.is_file():
        pytest.skip(f"this silero-vad release does not ship {filename}")
    return path


def light(name: str) -> Path:
    """``light_<name>.onnx`` from the onnx wheel's backend test data, e.g. ``densenet121``."""
    path = package_dir("onnx") / "backend" / "test" / "data" / "light" / f"light_{name}.onnx"
    if not path.is_file():
        pytest.skip(f"this onnx release does not ship {path.name}")
    return path
