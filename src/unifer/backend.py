"""The public plugin interface: what a backend distribution implements and nothing more.

A backend plugin is one class registered under the entry-point group ``unifer.backends``
(entry-point name == ``Backend.name``). Its module must import without the runtime: the runtime is
imported inside :meth:`Backend.probe` and :meth:`Backend.open` only. Everything else (preprocessing,
input validation, timing, caching, selection, error wording) belongs to the core, so a plugin stays
small. See ``docs/plugins.md``.
"""

from __future__ import annotations

import itertools
import numbers
import sys
import threading
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Final, Literal, Protocol, runtime_checkable

import numpy as np

from ._errors import (
    InferenceError,
    InputError,
    ModelLoadError,
    UniferError,
    UniferWarning,
    UnsupportedOptionError,
)

__all__ = [
    "Availability",
    "BACKEND_API_VERSION",
    "Backend",
    "Converter",
    "Dim",
    "PRECISIONS",
    "Precision",
    "ProcessWideSetting",
    "Session",
    "SessionOptions",
    "TensorSpec",
    "integer_option",
    "refuse_empty",
    "refuse_int64_beyond_int32",
    "reject_precision",
    "translate_errors",
    "warn_unknown_options",
    "warn_user",
]

#: Bumped when the contract changes incompatibly; the core refuses plugins built for another one.
BACKEND_API_VERSION: Final = 1

Precision = Literal["fp32", "bf16", "fp16", "int8"]
PRECISIONS: Final[tuple[Precision, ...]] = ("fp32", "bf16", "fp16", "int8")

#: A dimension is an ``int`` when fixed, a ``str`` when the model names it (``"batch"``), or
#: ``None`` when it is dynamic and unnamed.
Dim = int | str | None


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One model input or output as the runtime reports it."""

    name: str
    shape: tuple[Dim, ...]
    dtype: np.dtype[Any]

    def __str__(self) -> str:
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"

    @property
    def is_static(self) -> bool:
        """True when every dimension is a fixed integer."""
        return all(isinstance(d, int) for d in self.shape)


@dataclass(frozen=True, slots=True, kw_only=True)
class Availability:
    """What :meth:`Backend.probe` found: whether the backend can run here, and if not, why."""

    ok: bool
    version: str | None = None
    """Version of the runtime library (not of the plugin)."""
    reason: str | None = None
    """One human sentence when ``ok`` is false; when it is true, an optional note (``unifer
    backends`` shows it), e.g. why a GPU build cannot use the GPU."""
    install: str | None = None
    """What fixes it: the command for a missing runtime, e.g. ``pip install "unifer[openvino]"``,
    or a plain instruction where no install helps (shown after "Fix it with:")."""
    devices: tuple[str, ...] = ()
    """The devices the backend can run on here, the one it uses by default first: ``"cpu"``,
    ``"cuda:0"``, ... ``backend="auto"`` without measuring prefers, on an NVIDIA GPU, the backends
    whose default is a ``cuda`` device."""
    accelerators: tuple[str, ...] = ()
    """Devices among ``devices``, other than the default, that are hardware accelerators (a GPU, an
    NPU): ``backend="auto"`` measures the backend on each of them too, opening it with
    ``backend_options={name: {"device": <device>}}``, unless the caller chose a device there. A
    device emulated on the CPU (Vulkan on Mesa's lavapipe) is not an accelerator."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionOptions:
    """Options the core resolved for one :meth:`Backend.open` call."""

    threads: int | None = None
    """Threads inside one inference; ``None`` keeps the runtime's own default."""
    precision: Precision = "fp32"
    cache_dir: Path | None = None
    """A directory this backend may use for its own caches (compiled models); never the model's.
    ``None`` means: cache nothing."""
    extra: Mapping[str, object] = field(default_factory=dict)
    """``backend_options[<backend name>]`` from the user, passed through untouched."""


@runtime_checkable
class Session(Protocol):
    """An opened model. ``run`` must be thread-safe and return arrays the caller owns."""

    @property
    def inputs(self) -> Sequence[TensorSpec]: ...

    @property
    def outputs(self) -> Sequence[TensorSpec]: ...

    @property
    def settings(self) -> Mapping[str, object]:
        """What the runtime really applied: threads, precision, device, providers/properties."""
        ...

    def run(self, feeds: Mapping[str, np.ndarray], /) -> dict[str, np.ndarray]:
        """Run once. ``feeds`` are already validated against ``inputs`` by the core."""
        ...

    def close(self) -> None:
        """Release the runtime's resources; calling it twice is harmless."""
        ...


@runtime_checkable
class Backend(Protocol):
    """One inference runtime. Instantiated with no arguments by the registry."""

    name: ClassVar[str]
    """The backend id; equals the entry-point name."""
    suffixes: ClassVar[tuple[str, ...]]
    """Suffixes of the primary file of each format it reads, lower-case: ``(".onnx", ".xml")``."""
    install: ClassVar[str]
    """The command that installs this backend, e.g. ``pip install "unifer[openvino]"``."""
    api_version: ClassVar[int]

    def probe(self) -> Availability:
        """Say whether the runtime can run here. Must never raise."""
        ...

    def open(self, model: Path, options: SessionOptions, /) -> Session:
        """Open ``model`` (an existing file with one of ``suffixes``) and return a ready Session."""
        ...


@runtime_checkable
class Converter(Backend, Protocol):
    """A backend that can also produce its own format from another format (optional).

    The core owns everything around a conversion: when it happens (``unifer convert``, or naming
    this backend for a file it cannot read), the cache (keyed by source digest, target and
    :meth:`converter_version`, written atomically), and the check of the converted model's outputs
    against the source model. The plugin only converts.
    """

    converts_from: ClassVar[tuple[str, ...]]
    """Suffixes of the source formats it converts, lower-case: ``(".onnx",)``."""

    def converter_version(self, options: SessionOptions, /) -> str:
        """Identifies the converter, its version and any ``options.extra`` setting that changes
        what it writes (part of the cache key). May import it."""
        ...

    def convert(self, source: Path, out_dir: Path, options: SessionOptions, /) -> Path:
        """Convert ``source`` into files inside the empty directory ``out_dir``.

        Returns the primary file of the result (one of ``suffixes``). Raises
        :class:`~unifer.MissingDependencyError` when the converter is not installed, with the
        install line, and :class:`~unifer.ModelLoadError` when the source cannot be converted.
        """
        ...


class translate_errors:
    """Re-raise the runtime's own exceptions as unifer errors, chaining the native one.

    Inside ``open`` pass ``model=``: a native failure then means the runtime rejected the file, and
    becomes :class:`ModelLoadError` naming it. Otherwise it becomes :class:`InferenceError`.
    unifer's own errors pass through untouched. (A class rather than a generator-based context
    manager: it wraps every ``run`` call, and this costs a fraction of a microsecond.)
    """

    __slots__ = ("_backend", "_model", "_native")

    def __init__(
        self, backend: str, *native: type[BaseException], model: Path | None = None
    ) -> None:
        self._backend = backend
        self._native = native
        self._model = model

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None or isinstance(exc, UniferError) or not isinstance(exc, self._native):
            return
        detail = str(exc).strip() or type(exc).__name__
        if self._model is not None:
            raise ModelLoadError(
                f"{self._backend} could not load {self._model}: {detail}. Either the file is not "
                f"a complete, valid model in a format {self._backend} reads (re-export or "
                f"re-download it), or {self._backend} lacks something it uses (its message above "
                "says which): try another backend"
            ) from exc
        raise InferenceError(
            f"{self._backend} failed while running the model: {detail}", backend=self._backend
        ) from exc


def warn_unknown_options(backend: str, extra: Mapping[str, object], known: Sequence[str]) -> None:
    """Warn once per call about each ``backend_options`` key the backend does not understand."""
    for key in extra:
        if key not in known:
            warn_user(
                f"backend option {key!r} is not understood by {backend} and was ignored; "
                f"known options: {', '.join(sorted(known)) or 'none'}"
            )


class ProcessWideSetting:
    """A runtime setting kept once per process (``cv2.setNumThreads``, ``torch.set_num_threads``),
    and the values that live sessions asked for.

    The last session opened sets it. When a session closes and the sessions still open all asked
    for one value, that value is applied again (closing the engine that changed it gives the
    others back what they asked for); with no session open the setting is left as it is.
    """

    def __init__(self, apply: Callable[[Any], None]) -> None:
        self._apply = apply
        self._lock = threading.Lock()
        self._requests: dict[int, object] = {}
        self._current: object = None
        self._ids = itertools.count()

    def request(self, value: object) -> tuple[int, list[object]]:
        """Apply ``value``; return the request's key (for :meth:`release`) and the values other
        live sessions asked for, which it overrides (for the plugin to warn about)."""
        with self._lock:
            key = next(self._ids)
            others = sorted(_distinct(v for v in self._requests.values() if v != value), key=repr)
            self._apply(value)
            self._requests[key] = value
            self._current = value
        return key, others

    @property
    def in_force(self) -> object:
        """The value applied for the open sessions that asked for one; ``None`` when none is open
        (the setting is then the application's again)."""
        return self._current if self._requests else None

    def release(self, key: int) -> None:
        """Forget request ``key`` (its session closed); re-apply what the others agree on."""
        with self._lock:
            self._requests.pop(key, None)
            remaining = _distinct(self._requests.values())
            if len(remaining) == 1:
                (value,) = remaining
                if value != self._current:
                    self._apply(value)
                    self._current = value


def _distinct(values: Iterable[object]) -> list[object]:
    """``values`` without repeats, by equality: a setting's value need not be hashable."""
    found: list[object] = []
    for value in values:
        if value not in found:
            found.append(value)
    return found


def integer_option(
    key: str, value: object, meaning: str, *, minimum: int = 1, maximum: int | None = None
) -> int:
    """``backend_options[key]`` as an ``int``, or :class:`UnsupportedOptionError`.

    Any integer type counts (numpy's too: a count read from an array or a config file); ``bool``
    and ``3.0`` do not. ``meaning`` says what the number is, for the error.
    """
    number = int(value) if isinstance(value, numbers.Integral) else None
    if (
        isinstance(value, bool)
        or number is None
        or number < minimum
        or (maximum is not None and number > maximum)
    ):
        bounds = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
        raise UnsupportedOptionError(
            f"backend option {key!r} must be an integer {bounds} ({meaning}), got {value!r}"
        )
    return number


def warn_user(message: str) -> None:
    """Warn with a :class:`UniferWarning` attributed to the user's code.

    The warning points at the first caller outside unifer and the installed plugins' packages, so it
    names the user's ``Engine.load`` line however deep the call came (through ``backend="auto"``,
    a conversion, a plugin's helpers), where a fixed ``stacklevel`` would point into unifer.
    """
    level, frame = 2, sys._getframe(1)  # stacklevel 1 is this function, 2 its caller
    while frame.f_back is not None and _in_unifer(frame):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, UniferWarning, stacklevel=level)


def _in_unifer(frame: Any) -> bool:
    """Whether ``frame`` runs code of unifer or of an installed backend plugin (whatever its
    package is called)."""
    from ._registry import plugin_packages  # the registry imports this module

    module = str(frame.f_globals.get("__name__", ""))
    return module.partition(".")[0].startswith("unifer") or any(
        module == package or module.startswith(f"{package}.") for package in plugin_packages()
    )


_INT32: Final = np.iinfo(np.int32)


def refuse_empty(runtime: str, name: str, array: np.ndarray, why: str) -> None:
    """Raise :class:`InputError` when the feed ``array`` is empty (a batch of 0).

    For runtimes that cannot run a zero-size tensor (``why``): the caller hears it as their
    input to skip, before the runtime fails on it or crashes the process.
    """
    if array.size == 0:
        raise InputError(
            f"input {name!r} is empty (shape {list(array.shape)}); {runtime} cannot run a "
            f"zero-size tensor ({why}). Skip the call, or use another backend, e.g. "
            "backend='onnxruntime'"
        )


def refuse_int64_beyond_int32(runtime: str, name: str, array: np.ndarray) -> None:
    """Raise :class:`InputError` when the 64-bit integer feed ``array`` (int64 or uint64) holds
    values int32 cannot; feeds of any other dtype pass.

    For runtimes that compute 64-bit integer tensors in int32 (OpenCV DNN, OpenVINO's CPU plugin):
    they keep the low 32 bits without any error, so such a feed would give wrong numbers silently.
    """
    if array.dtype not in (np.int64, np.uint64) or not array.size:
        return
    low, high = int(array.min()), int(array.max())
    if low < _INT32.min or high > _INT32.max:
        raise InputError(
            f"input {name!r} holds {array.dtype} values outside the int32 range "
            f"({low} .. {high}); {runtime} computes {array.dtype} tensors in int32 and would "
            "silently wrap them. Use another backend for this model, e.g. "
            "backend='onnxruntime'"
        )


def reject_precision(backend: str, precision: str, supported: Sequence[str], why: str) -> None:
    """Raise :class:`UnsupportedOptionError` unless ``precision`` is one of ``supported``."""
    if precision not in supported:
        raise UnsupportedOptionError(
            f"{backend} cannot run precision={precision!r}: {why}. "
            f"Use precision={supported[0]!r} with {backend}"
            + (f" (supported here: {', '.join(supported)})" if len(supported) > 1 else "")
            + ", or pick a backend that supports it"
        )
