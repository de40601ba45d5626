"""The one exception hierarchy of unifer.

Everything unifer raises on purpose derives from :class:`UniferError`. Each class also derives
from the builtin a caller would naturally catch (``except ImportError`` keeps working for a
missing runtime, ``except ValueError`` for bad input), and every message says what went wrong,
why, and how to fix it, ending with a pointer into ``docs/errors.md``::

    UniferError(Exception)
    ├── BackendError
    │   ├── BackendNotFoundError(BackendError, LookupError)      no plugin by that name
    │   ├── BackendUnavailableError(BackendError, ImportError)   runtime missing or broken
    │   ├── NoBackendAvailableError(BackendError)                auto: nothing could open it
    │   └── PluginError(BackendError, TypeError)                 a plugin broke the contract
    ├── ModelError
    │   ├── ModelNotFoundError(ModelError, FileNotFoundError)    the model file does not exist
    │   ├── ModelFormatError(ModelError, ValueError)             no backend reads this format
    │   ├── ModelLoadError(ModelError, ValueError)               corrupt, truncated or not a model
    │   │   └── ConversionMismatchError(ModelLoadError)           a conversion changed the outputs
    │   └── ModelSignatureError(ModelError, ValueError)          predict() on multi-I/O models
    ├── MissingDependencyError(UniferError, ImportError)         an optional package is missing
    ├── InputError(UniferError, ValueError)                      bad feeds: name, shape, dtype, NaN
    ├── UnsupportedOptionError(UniferError, ValueError)          an option the runtime cannot honour
    ├── PreprocessError(UniferError, ValueError)                 bad Preprocess spec or image
    └── InferenceError(UniferError, RuntimeError)                the runtime failed while running
    UniferWarning(UserWarning)                                   an option a backend ignores
"""

from __future__ import annotations

from typing import ClassVar

DOCS_URL = "docs/errors.md"


class UniferError(Exception):
    """Root of every error unifer raises on purpose."""

    code: ClassVar[str] = "unifer-error"

    def __init__(self, message: str) -> None:
        self.message = message
        # args hold the bare message: pickling (errors coming back from worker processes) and
        # copying rebuild the error from args, which must not add the docs pointer twice.
        super().__init__(message)

    def __str__(self) -> str:
        return f"{self.message} (see {DOCS_URL}#{self.code})"


class BackendError(UniferError):
    """A backend could not be found, loaded or used."""

    code = "backend-error"


class BackendNotFoundError(BackendError, LookupError):
    """Raised when no installed plugin registers the requested backend name."""

    code = "backend-not-found"


class BackendUnavailableError(BackendError, ImportError):
    """Raised when the plugin is installed but its runtime is missing or broken."""

    code = "backend-unavailable"


class NoBackendAvailableError(BackendError):
    """Raised by ``backend="auto"`` when no candidate backend could open the model.

    ``reasons`` maps each candidate backend name to why it was not used.
    """

    code = "no-backend-available"

    def __init__(self, message: str, *, reasons: dict[str, str] | None = None) -> None:
        self.reasons = dict(reasons or {})
        super().__init__(message)


class PluginError(BackendError, TypeError):
    """Raised when a plugin breaks the backend contract (wrong name, API version, shape)."""

    code = "plugin-error"


class ModelError(UniferError):
    """The model file could not be used."""

    code = "model-error"


class ModelNotFoundError(ModelError, FileNotFoundError):
    """Raised when the model path (or a file it needs, like an IR ``.bin``) does not exist."""

    code = "model-not-found"


class ModelFormatError(ModelError, ValueError):
    """Raised when no installed backend reads the model's format."""

    code = "model-format"


class ModelLoadError(ModelError, ValueError):
    """Raised when a runtime rejects the model file: corrupt, truncated or not a model."""

    code = "model-load"


class ConversionMismatchError(ModelLoadError):
    """Raised when a converted model's outputs differ from the source model's beyond tolerance."""

    code = "conversion-mismatch"


class ModelSignatureError(ModelError, ValueError):
    """Raised when a call does not fit the model's signature (``predict`` on multi-I/O models)."""

    code = "model-signature"


class MissingDependencyError(UniferError, ImportError):
    """Raised when a feature needs an optional package that is not installed (e.g. ``onnx``)."""

    code = "missing-dependency"


class InputError(UniferError, ValueError):
    """Raised when the feeds do not match the model inputs: name, rank, shape, dtype or NaN."""

    code = "input-error"


class UnsupportedOptionError(UniferError, ValueError):
    """Raised when the runtime cannot honour a requested option (precision, provider, ...)."""

    code = "unsupported-option"


class PreprocessError(UniferError, ValueError):
    """Raised for an invalid ``Preprocess`` spec or an image it cannot process."""

    code = "preprocess-error"


class CacheError(UniferError, OSError):
    """Raised when work that needs unifer's cache directory (a conversion, a built-in model)
    cannot write there: not writable, not creatable, or full. Loads that only read from the
    cache go on without it."""

    code = "cache-error"


class InferenceError(UniferError, RuntimeError):
    """Raised when the runtime fails while opening or running a model; ``__cause__`` is native."""

    code = "inference-error"

    def __init__(self, message: str, *, backend: str | None = None) -> None:
        self.backend = backend
        super().__init__(message)


class UniferWarning(UserWarning):
    """Warned when an option is ignored by a backend, or a setting is process-wide."""
