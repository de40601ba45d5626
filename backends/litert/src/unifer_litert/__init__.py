"""LiteRT (TensorFlow Lite) backend for unifer: runs ``.tflite`` models, converts ONNX CNNs to them.

Importing this module must not import the runtime (``import unifer`` and listing backends stay
cheap); ai-edge-litert (or tflite-runtime) is imported inside :meth:`LiteRTBackend.probe` and
:meth:`LiteRTBackend.open`, through ``_session``, the one module that imports it at the top.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Final

from unifer.backend import BACKEND_API_VERSION, Availability, SessionOptions

if TYPE_CHECKING:
    from unifer.backend import Session

__all__ = ["LiteRTBackend"]

#: The fix for tflite-runtime beside numpy 2: its maintained successor, or an older numpy.
_NUMPY_FIX: Final = (
    'pip install ai-edge-litert  # the maintained successor; or: pip install "numpy<2"'
)


class LiteRTBackend:
    """The ``litert`` backend. Options (``backend_options={"litert": {...}}``):

    - ``xnnpack``: apply the XNNPACK delegate, as LiteRT does by default (default True). Some
      models need it: MediaPipe's custom operators exist only there.
    - ``num_interpreters``: interpreters in the pool, i.e. ``run`` calls that proceed at once
      (default 1; each one holds its own copy of the packed weights).

    It also converts ONNX models of plain CNNs (see ``_convert``) when the core asks for it.
    """

    name: ClassVar[str] = "litert"
    suffixes: ClassVar[tuple[str, ...]] = (".tflite",)
    install: ClassVar[str] = 'pip install "unifer[litert]"'
    api_version: ClassVar[int] = BACKEND_API_VERSION
    converts_from: ClassVar[tuple[str, ...]] = (".onnx",)

    def probe(self) -> Availability:
        """Report the runtime's version after running a tiny model, or why it cannot run."""
        try:
            from . import _session
        except ImportError as exc:
            return Availability(
                ok=False,
                reason=f"neither ai-edge-litert nor tflite-runtime can be imported ({exc})",
                install=self.install,
            )
        except Exception as exc:  # a broken install (missing library) is an answer
            return Availability(
                ok=False,
                reason=(
                    f"ai-edge-litert is installed but failed to load: {type(exc).__name__}: {exc}"
                ),
                install=f"pip install --force-reinstall ai-edge-litert  # or: {self.install}",
            )
        # Checked before running anything: the failed import inside tflite-runtime prints numpy's
        # long warning and traceback to stderr.
        mismatch = _session.numpy_mismatch()
        if mismatch is not None:
            return Availability(
                ok=False,
                reason=mismatch,
                install=_NUMPY_FIX,
            )
        try:
            _, version = _session.runtime_info()
        except Exception as exc:
            return Availability(
                ok=False,
                reason=(
                    f"{_session.DISTRIBUTION} {_session.VERSION} is installed but cannot run a "
                    f"model: {type(exc).__name__}: {exc}"
                ),
                install=f"pip install --force-reinstall {_session.DISTRIBUTION}",
            )
        # The version of whichever runtime is installed; settings["runtime"] names which one.
        return Availability(ok=True, version=version, devices=("cpu",))

    def open(self, model: Path, options: SessionOptions, /) -> Session:
        """Build the interpreter(s) for ``model`` and return a thread-safe session."""
        from ._session import LiteRTSession

        return LiteRTSession.open(model, options)

    # -- Converter ---------------------------------------------------------------------------------

    def converter_version(self, options: SessionOptions, /) -> str:
        """The converter's identity (part of the cache key of converted models); no option
        changes what it writes."""
        from ._convert import CONVERTER

        return CONVERTER

    def convert(self, source: Path, out_dir: Path, options: SessionOptions, /) -> Path:
        """Write ``source`` (ONNX) as ``<out_dir>/<stem>.tflite``: same I/O names and shapes."""
        from ._convert import convert_onnx

        return convert_onnx(source, out_dir / f"{source.stem}.tflite")
