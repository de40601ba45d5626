"""unifer: one Python API over the deep-learning inference runtimes people deploy with.

>>> from unifer import Engine
>>> # emb = Engine.load("arcface.onnx", backend="auto").predict(img)

Importing unifer imports no inference runtime; each runtime is a plugin distribution
(``pip install "unifer[openvino]"``) that is imported only when a model is opened with it.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from ._engine import Engine
from ._errors import (
    BackendError,
    BackendNotFoundError,
    BackendUnavailableError,
    CacheError,
    ConversionMismatchError,
    InferenceError,
    InputError,
    MissingDependencyError,
    ModelError,
    ModelFormatError,
    ModelLoadError,
    ModelNotFoundError,
    ModelSignatureError,
    NoBackendAvailableError,
    PluginError,
    PreprocessError,
    UniferError,
    UniferWarning,
    UnsupportedOptionError,
)
from ._preprocess import Preprocess
from ._registry import backend_names, register_backend, unregister_backend
from .backend import TensorSpec

try:
    __version__ = version("unifer")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "BackendError",
    "BackendNotFoundError",
    "BackendUnavailableError",
    "CacheError",
    "ConversionMismatchError",
    "Engine",
    "InferenceError",
    "InputError",
    "MissingDependencyError",
    "ModelError",
    "ModelFormatError",
    "ModelLoadError",
    "ModelNotFoundError",
    "ModelSignatureError",
    "NoBackendAvailableError",
    "PluginError",
    "Preprocess",
    "PreprocessError",
    "TensorSpec",
    "UniferError",
    "UniferWarning",
    "UnsupportedOptionError",
    "__version__",
    "backend_names",
    "register_backend",
    "unregister_backend",
]
