"""``Engine``: the user's handle on one opened model, whatever runtime runs it.

``Engine.load`` is the only code that knows about plugins: it resolves the model path, picks the
backend (named, or ``"auto"``), validates the options once, and opens a :class:`Session`. The
Engine itself only checks feeds, applies preprocessing and delegates to the session, so tests can
build ``Engine(session, backend=...)`` around any session without a registry.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Final, Literal, NoReturn

import numpy as np
from numpy.typing import ArrayLike

from . import _auto, _convert, _digest, _parity, _registry, _select, models
from ._cache import usable_cache_dir
from ._devices import device_option
from ._errors import (
    InferenceError,
    InputError,
    ModelFormatError,
    ModelNotFoundError,
    ModelSignatureError,
    PluginError,
    PreprocessError,
    UniferError,
    UnsupportedOptionError,
)
from ._feeds import check_feeds
from ._options import resolve_thread_choices, split_backend_options
from ._preprocess import Preprocess, load_sidecar, sidecar_path
from .backend import Backend, Precision, Session, SessionOptions, TensorSpec

if TYPE_CHECKING:
    from typing_extensions import Self

logger = logging.getLogger(__name__)

AUTO = "auto"


#: Every open Engine, for the fork hook below (weakly: the set never keeps one alive).
_live_engines: weakref.WeakSet[Engine] = weakref.WeakSet()


def _mark_engines_forked_mid_run() -> None:
    """In a forked child: an engine another thread was running at the fork holds the runtime's
    locks and pools as that thread left them (taken, with no thread to give them back): runs
    would wait forever (OpenVINO, LiteRT, OpenCV did). Such engines refuse to run instead; the
    others, idle at the fork (a server that loads before forking its workers), go on working."""
    forking = threading.get_ident()  # the one thread the child has
    for engine in list(_live_engines):
        if engine._running - {forking}:
            engine._forked_mid_run = True


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_mark_engines_forked_mid_run)


def _not_an_array_fix(x: object) -> str:
    if x is None:
        return "cv2.imread returns None for a file it cannot read: check the image's path"
    if isinstance(x, Mapping):
        return "for a dict of named inputs use run()"
    return (
        "it takes pixels, not a file name: decode the image first, e.g. "
        "np.asarray(PIL.Image.open(path).convert('RGB')), or cv2.imread(path) with "
        "input_color='bgr'"
    )


class Engine:
    """One opened model. Create it with :meth:`Engine.load`.

    ``predict`` and ``run`` are thread-safe (the backend contract requires it) and return arrays
    the caller owns.
    """

    def __init__(
        self,
        session: Session,
        /,
        *,
        backend: str,
        model: Path | None = None,
        preprocess: Preprocess | None = None,
        selection: _select.Selection | None = None,
        conversion: _convert.Conversion | None = None,
        allow_nan: bool = False,
    ) -> None:
        if not isinstance(session, Session):
            raise PluginError(
                f"backend {backend!r} returned {type(session).__name__}, not a Session"
            )
        self._session = session
        self._backend = backend
        self._model = model
        self._inputs = tuple(session.inputs)
        self._outputs = tuple(session.outputs)
        settings = dict(session.settings)
        if conversion is not None:  # the file the session runs was converted from ``model``
            settings["conversion"] = conversion.to_dict()
        if model is not None and (stored := _parity.model_precision(model)) != "fp32":
            # "precision" is what the runtime was let add; a quantized model is int8 anyway.
            settings["model_precision"] = stored
        self._settings = MappingProxyType(settings)
        self._selection = selection
        self._closed = False
        self._allow_nan = allow_nan
        # Threads inside run() (set.add/discard are atomic: cheaper than a lock per call), and
        # whether one was when this process forked (see _mark_engines_forked_mid_run).
        self._running: set[int] = set()
        self._forked_mid_run = False
        _live_engines.add(self)
        if preprocess is not None:
            self._single_io("preprocess=")
            preprocess.check_layout(self._inputs[0])
        self._preprocess = preprocess

    @classmethod
    def load(
        cls,
        model: str | os.PathLike[str],
        /,
        *,
        backend: str = AUTO,
        threads: int | Sequence[int] | None = None,
        precision: str | Sequence[str] = "fp32",
        preprocess: Preprocess | Literal[False] | None = None,
        backend_options: Mapping[str, Mapping[str, object]] | None = None,
        objective: str = "latency",
        budget_s: float | None = None,
        allow_conversion: bool = False,
        device: str | None = None,
        allow_nan: bool = False,
        dims: Mapping[str, int] | None = None,
    ) -> Engine:
        """Open ``model`` with one backend.

        Args:
            model: Path to the model file (``.onnx``, an OpenVINO ``.xml``, ...), or a built-in
                model such as ``"builtin:arcface-r100"`` (generated on first use, see
                ``unifer models``), which brings its own preprocessing.
            backend: A backend name (see ``unifer backends``) or ``"auto"``: measure the
                backends that can run the model on this machine and keep the fastest one whose
                outputs match the fp32 reference (cached per machine; see ``docs/auto.md``).
                An explicit name is never replaced by another backend.
            threads: Threads inside one inference, mapped to each runtime's own knob; ``None``
                takes ``$UNIFER_NUM_THREADS``, else the runtime's default (``"auto"``: the
                number of physical cores). With ``backend="auto"`` also a sequence of thread
                counts to sweep, e.g. ``(1, 2, 4)``.
            precision: ``"fp32"`` (faithful, the default), ``"bf16"``, ``"fp16"`` or ``"int8"``;
                a backend that cannot honour it raises. With ``backend="auto"`` also a tuple of
                allowed precisions, or ``"fastest"``: any precision within its tolerance.
            preprocess: Applied by :meth:`predict`. Defaults to a built-in model's own, else to
                the model's ``<stem>.preprocess.json`` sidecar when one exists; ``False``: none
                (``predict`` feeds its argument as the tensor it is).
            backend_options: Per-backend runtime options keyed by backend name, e.g.
                ``{"onnxruntime": {"providers": ["CPUExecutionProvider"]}}``.
            objective: What ``"auto"`` optimises: ``"latency"`` or ``"throughput"``.
            budget_s: Seconds ``"auto"`` may spend measuring (default: proportionate to the
                model, at most 20 s); ``0`` picks from the hardware without measuring.
            allow_conversion: Let ``"auto"`` also try backends that must first convert the model
                into their own format (ONNX to ncnn or TFLite, cached and checked). Without it,
                only backends whose conversion is already cached compete.
            device: Where to run, in unifer's device names (``unifer backends`` lists each
                backend's): ``"cpu"``, ``"cuda:0"``, ``"vulkan:0"``, ``"gpu:0"``, or a kind alone
                (``"cuda"``) for the backend's first device of that kind. Mapped to the
                backend's ``device`` option; a backend that cannot run there raises. With
                ``"auto"``, only the backends that can run there compete. ``None`` (default):
                each backend's default device (``"auto"`` also measures its accelerators).
            allow_nan: Let inputs hold NaN, for models that read it as a missing value
                (scikit-learn imputers). By default a NaN input is refused with ``InputError``.
            dims: Sizes ``"auto"`` measures the model's named dynamic dimensions at besides the
                batch, e.g. ``{"sequence": 512}``: backends rank differently at other sizes.
                Unnamed ones are measured at 32 (1 where the model cannot run at 32), which
                ``engine.selection`` notes.

        Raises:
            ModelNotFoundError: ``model`` does not exist.
            ModelFormatError: no installed backend reads this kind of file.
            ModelLoadError: the runtime rejected the file (corrupt, truncated, not a model).
            ConversionMismatchError: the named backend needed a conversion that changed outputs.
            BackendNotFoundError: ``backend`` names no installed backend.
            BackendUnavailableError: the backend's runtime is missing or broken.
            NoBackendAvailableError: ``"auto"`` found no backend that could open the model.
            UnsupportedOptionError: an option the backend cannot honour, or a ``device`` it
                cannot run on.
            PreprocessError: ``preprocess`` does not fit the model's input.
        """
        _check_arguments(backend, preprocess, budget_s, allow_conversion)
        _check_dims(dims, backend)
        goal = _auto.check_objective(objective)  # whichever backend opens
        path, preset = resolve_model(model)
        thread_counts = resolve_thread_choices(threads)
        precisions = _auto.allowed_precisions(precision)  # checks it whichever backend opens
        options = split_backend_options(backend_options, _registry.backend_names())
        sidecar = None
        if preprocess is False:
            preprocess = None
        elif preprocess is None:
            preprocess = preset or load_sidecar(path)
            if preprocess is not None and preset is None:
                sidecar = sidecar_path(path)

        def session_options(
            plugin: Backend, precision: Precision, threads: int | None, device: str | None = None
        ) -> SessionOptions:
            extra = options.get(plugin.name, {})
            return SessionOptions(
                threads=threads,
                precision=precision,
                cache_dir=usable_cache_dir("backends", plugin.name),
                extra=extra if device is None else {**extra, "device": device},
            )

        if backend == AUTO and _auto.environment_backend() is None:
            conversions: dict[str, _convert.Conversion] = {}

            def open_candidate(candidate: _select.Candidate) -> Session:
                plugin = _registry.get_backend(candidate.backend)
                chosen = session_options(
                    plugin, candidate.precision, candidate.threads, candidate.device
                )
                if _suffix(path) in plugin.suffixes:
                    return _registry.open_session(plugin, path, chosen)
                # A converting candidate.
                conversions[plugin.name], opened = _convert.open_converted(plugin, path, chosen)
                return opened

            selection, session = _auto.open_auto(
                path,
                threads=thread_counts,
                precisions=precisions,
                objective=goal,
                budget_s=budget_s,
                open_candidate=open_candidate,
                backend_options=options,
                allow_conversion=allow_conversion,
                device=device,
                dims=dims,
            )
            conversion = conversions.get(selection.chosen.backend)
            return cls._wrap(
                session,
                path,
                preprocess,
                sidecar,
                selection=selection,
                conversion=conversion,
                allow_nan=allow_nan,
            )

        source: _select.Source = "explicit"
        if backend == AUTO:
            # The environment names the backend "auto" resolves to; the caller's choices of
            # precision and threads narrow to the first (the most faithful precision).
            backend, source = _auto.environment_backend() or backend, "environment"
        elif len(precisions) > 1 or (thread_counts and len(thread_counts) > 1):
            raise UnsupportedOptionError(
                f"precision={precision!r}, threads={threads!r}: choices of precisions or thread "
                f"counts need backend='auto'; with backend={backend!r} pass one of each"
            )
        checked = precisions[0]
        single = thread_counts[0] if thread_counts else None
        plugin = _plugin(backend, source)
        availability = _registry.require_available(plugin)
        where = (
            None
            if device is None
            else device_option(plugin.name, availability, device, options.get(plugin.name, {}))
        )
        chosen = session_options(plugin, checked, single, where)
        conversion = None
        if _suffix(path) not in plugin.suffixes and _convert.can_convert(plugin, _suffix(path)):
            conversion, session = _convert.open_converted(plugin, path, chosen)
        else:
            _check_suffix(plugin, path)
            session = _registry.open_session(plugin, path, chosen)
        selection = _select.Selection(_select.Candidate(backend, single, checked, where), source)
        return cls._wrap(
            session,
            path,
            preprocess,
            sidecar,
            selection=selection,
            conversion=conversion,
            allow_nan=allow_nan,
        )

    @classmethod
    def _wrap(
        cls,
        session: Session,
        path: Path,
        preprocess: Preprocess | None,
        sidecar: Path | None,
        *,
        selection: _select.Selection,
        conversion: _convert.Conversion | None = None,
        allow_nan: bool = False,
    ) -> Engine:
        """The Engine around a freshly opened session, which is closed if that fails.

        ``sidecar`` is the file ``preprocess`` was read from, if any: a spec that does not fit
        the model is then the file's fault, and the error says so.
        """
        try:
            return cls(
                session,
                backend=selection.chosen.backend,
                model=path,
                preprocess=preprocess,
                selection=selection,
                conversion=conversion,
                allow_nan=allow_nan,
            )
        except (PreprocessError, ModelSignatureError) as exc:
            session.close()
            if sidecar is None:
                raise
            raise PreprocessError(
                f"the preprocessing sidecar {str(sidecar)!r} does not fit this model, and "
                f"preprocess=None reads it again: {exc.message}. Fix or delete that file, pass "
                "your own preprocess=Preprocess(...), or preprocess=False for none"
            ) from exc
        except BaseException:
            session.close()
            raise

    @property
    def backend(self) -> str:
        """Name of the backend running the model."""
        return self._backend

    @property
    def model(self) -> Path | None:
        """Path of the model file, when loaded from one."""
        return self._model

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        """The model inputs (name, shape with None or names for dynamic dims, dtype)."""
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        """The model outputs."""
        return self._outputs

    @property
    def settings(self) -> Mapping[str, object]:
        """What the runtime really applied: threads, precision, device, providers/properties."""
        return self._settings

    @property
    def selection(self) -> _select.Selection | None:
        """How the backend was chosen; ``selection.explain()`` renders the table of candidates."""
        return self._selection

    @property
    def preprocess(self) -> Preprocess | None:
        """The preprocessing ``predict`` applies, if any."""
        return self._preprocess

    def predict(self, x: ArrayLike, /) -> np.ndarray:
        """Run a single-input, single-output model on ``x`` and return its one output.

        With a ``preprocess`` spec, ``x`` is an HxWx3 uint8 image or an NxHxWx3 batch; without
        one, it is the model's input tensor.

        Raises:
            ModelSignatureError: the model has several inputs or outputs (use :meth:`run`).
            InputError: ``x`` does not match the model input.
            PreprocessError: ``x`` is not an image the spec can process.
            InferenceError: the runtime failed.
        """
        self._single_io("predict()")
        # An array (the usual call) skips the slower ABC check.
        if not isinstance(x, np.ndarray) and (
            x is None or isinstance(x, (Mapping, str, os.PathLike))
        ):
            raise InputError(
                f"predict() takes one array (the model's input {self._inputs[0]}, or an image "
                f"with a preprocess spec), got {type(x).__name__}; " + _not_an_array_fix(x)
            )
        tensor = self._preprocess(x) if self._preprocess is not None else x
        return self.run({self._inputs[0].name: tensor})[self._outputs[0].name]

    def run(self, feeds: Mapping[str, object], /) -> dict[str, np.ndarray]:
        """Run the model on named inputs (no preprocessing) and return every output by name.

        Raises:
            InputError: a feed is missing, unknown, or has the wrong rank, shape, dtype or NaN.
            InferenceError: the runtime failed.
        """
        if self._closed or self._forked_mid_run:
            raise InferenceError(
                (
                    f"this Engine ({self._backend}) was running the model in another thread when "
                    "this process forked: the runtime's state was copied mid-run and would hang "
                    "here; load the model again in this process (loads after the first are fast)"
                )
                if self._forked_mid_run
                else f"this Engine ({self._backend}) is closed; load the model again to run it",
                backend=self._backend,
            )
        checked = check_feeds(feeds, self._inputs, allow_nan=self._allow_nan)
        thread = threading.get_ident()
        self._running.add(thread)
        try:
            return self._session.run(checked)
        finally:
            self._running.discard(thread)

    def close(self) -> None:
        """Release the runtime's resources. Calling it again does nothing."""
        if not self._closed:
            self._closed = True
            if not self._forked_mid_run:  # its locks may be held by threads not copied here
                self._session.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __reduce__(self) -> NoReturn:
        # Covers pickle, copy.copy and copy.deepcopy. A shallow copy would share the session (one
        # close() would close both), and a runtime session cannot travel to another process.
        raise TypeError(
            f"{self!r} holds a runtime session loaded in this process and cannot be pickled or "
            "copied; call Engine.load() again where another one is needed (in each worker "
            "process, say): loads after the first are fast, from unifer's caches"
        )

    def __repr__(self) -> str:
        model = self._model.name if self._model is not None else "<session>"
        state = ", closed" if self._closed else ""
        return f"Engine({model!r}, backend={self._backend!r}{state})"

    def _single_io(self, what: str) -> None:
        if len(self._inputs) != 1 or len(self._outputs) != 1:
            ins = ", ".join(s.name for s in self._inputs)
            outs = ", ".join(s.name for s in self._outputs)
            raise ModelSignatureError(
                f"{what} needs a model with one input and one output; this one has "
                f"{len(self._inputs)} input(s) ({ins}) and "
                f"{len(self._outputs)} output(s) ({outs}). "
                "Use engine.run({name: array, ...}) instead, which returns every output by name"
            )


def resolve_model(model: str | os.PathLike[str]) -> tuple[Path, Preprocess | None]:
    """The model file to open, and the preprocessing that comes with a built-in model."""
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be a path (str or os.PathLike), got {type(model).__name__}")
    if isinstance(model, str) and (builtin := models.resolve(model)) is not None:
        return builtin
    try:
        path = Path(model).expanduser()
        exists, is_file = path.exists(), path.is_file()
    except (RuntimeError, OSError) as exc:  # "~nouser/m.onnx", a name too long for the OS
        raise ModelNotFoundError(f"model path {str(model)!r} cannot be resolved: {exc}") from exc
    if not exists:
        raise ModelNotFoundError(f"model file {str(path)!r} does not exist; check the path")
    if not is_file:
        raise ModelFormatError(f"{str(path)!r} is not a file; pass the model file itself")
    if missing := _digest.missing_external_data(path):
        names = ", ".join(repr(str(f)) for f in missing)
        raise ModelNotFoundError(
            f"model file {str(path)!r} keeps its weights in {names} (ONNX external data), which "
            "does not exist; copy it beside the model, where ONNX looks for it (its location is "
            "relative to the model's directory)"
        )
    return path, None


def _check_dims(dims: object, backend: str) -> None:
    """``dims`` is a mapping of dimension names to sizes >= 1, and only for ``"auto"``."""
    if dims is None:
        return
    if not isinstance(dims, Mapping) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 1
        for k, v in dims.items()
    ):
        raise UnsupportedOptionError(
            f"dims must map dimension names to sizes >= 1, e.g. {{'sequence': 512}}, got {dims!r}"
        )
    if backend != AUTO:
        raise UnsupportedOptionError(
            f"dims= sizes what backend='auto' measures, and backend={backend!r} measures "
            "nothing; drop dims=, or use backend='auto'"
        )


def _check_arguments(
    backend: object, preprocess: object, budget_s: object, allow_conversion: object
) -> None:
    """Arguments of any backend's load, checked before any work (auto checks its own too)."""
    if not isinstance(backend, str) or not backend:
        raise UnsupportedOptionError(
            f"backend must be a backend name (unifer backends lists them) or 'auto', got "
            f"{backend!r}"
        )
    if preprocess not in (None, False) and not isinstance(preprocess, Preprocess):
        raise PreprocessError(
            f"preprocess must be a Preprocess (e.g. Preprocess(size=(112, 112)) or "
            f"Preprocess.from_dict({{...}})), None (the model's own, if any) or False (none), "
            f"got {type(preprocess).__name__}"
        )
    if budget_s is not None and (
        isinstance(budget_s, bool) or not isinstance(budget_s, (int, float)) or budget_s < 0
    ):
        raise UnsupportedOptionError(
            f"budget_s must be None (the default budget) or seconds >= 0, got {budget_s!r}"
        )
    if not isinstance(allow_conversion, bool):
        raise UnsupportedOptionError(
            f"allow_conversion must be True or False, got {allow_conversion!r}"
        )


def _plugin(backend: str, source: _select.Source) -> Backend:
    """The named backend; a name from ``$UNIFER_BACKEND`` is said to come from there."""
    try:
        return _registry.get_backend(backend)
    except UniferError as exc:
        if source != "environment":
            raise
        raise type(exc)(f"${_auto.BACKEND_ENV}={backend!r}: {exc.message}") from exc


def _suffix(path: Path) -> str:
    return path.suffix.lower()


def _check_suffix(plugin: Backend, path: Path) -> None:
    if _suffix(path) not in plugin.suffixes:
        if not _suffix(path):
            raise no_suffix_error(path, f"{plugin.name} reads {', '.join(plugin.suffixes)}")
        able = readers(_suffix(path))
        raise ModelFormatError(
            f"backend {plugin.name!r} reads {', '.join(plugin.suffixes)} files, not {path.name!r}. "
            + (
                f"Backends that read {_suffix(path)!r}: {', '.join(able)}"
                if able
                else f"No installed backend reads {_suffix(path)!r} files"
            )
        )


def no_suffix_error(path: Path, formats: str) -> ModelFormatError:
    """The error for a model file without a suffix; ``formats`` says which suffixes would do."""
    return ModelFormatError(
        f"{path.name!r} has no file suffix, and unifer tells model formats apart by it; rename "
        f"it with the suffix of its format ({formats})"
    )


def readers(suffix: str) -> list[str]:
    """Installed backends whose formats include ``suffix``, in the static auto order."""
    return _registry.auto_order([n for n, suffixes in _suffixes() if suffix in suffixes])


def _suffixes() -> list[tuple[str, tuple[str, ...]]]:
    """Each installed backend and the file suffixes it reads."""
    found = []
    for name in _registry.backend_names():
        try:
            found.append((name, tuple(_registry.get_backend(name).suffixes)))
        except UniferError:
            continue  # a broken plugin reads nothing; `unifer backends` shows why
    return found


#: Files that hold a model's weights beside the file that describes it, by suffix.
_WEIGHTS_FILES: Final = {
    ".bin": "an OpenVINO .xml or ncnn .param model",
    ".params": "an MXNet -symbol.json checkpoint",
    ".data": "an ONNX model (external data)",
}


def unreadable_format_error(path: Path, disabled: Collection[str] = ()) -> ModelFormatError:
    """The error for a file whose suffix no installed (and enabled) backend reads."""
    suffix = _suffix(path)
    backends = _suffixes()
    off = sorted(name for name, suffixes in backends if name in disabled and suffix in suffixes)
    if off:
        return ModelFormatError(
            f"the backends that read {suffix!r} files like {path.name!r} ({', '.join(off)}) are "
            f"disabled by ${_auto.DISABLE_ENV}={','.join(sorted(disabled))}; take one out of it, "
            "or name a backend"
        )
    readable = sorted({x for name, suffixes in backends if name not in disabled for x in suffixes})
    message = f"no installed backend reads {suffix!r} files like {path.name!r}"
    if suffix in _WEIGHTS_FILES:
        message += (
            f"; a {suffix} file holds the weights of {_WEIGHTS_FILES[suffix]}: pass the model "
            "file that names it"
        )
    else:
        message += "; pass a model file"
    message += f" (installed backends read {', '.join(readable)})" if readable else ""
    if ".onnx" not in readable:
        message += '. For ONNX models install a backend: pip install "unifer[onnxruntime]"'
    return ModelFormatError(message)
