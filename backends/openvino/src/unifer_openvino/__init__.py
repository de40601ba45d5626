"""OpenVINO backend for unifer: runs ONNX files and OpenVINO IR (``.xml`` + ``.bin``).

Importing this module must not import openvino (``import unifer`` and listing backends stay
cheap); the runtime is imported inside :meth:`OpenVINOBackend.probe` and
:meth:`OpenVINOBackend.open`, through ``_session``, the one module that imports it at the top.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from unifer.backend import BACKEND_API_VERSION, Availability, SessionOptions

if TYPE_CHECKING:
    from unifer.backend import Session

__all__ = ["OpenVINOBackend"]


class OpenVINOBackend:
    """The ``openvino`` backend. Options (``backend_options={"openvino": {...}}``):

    - ``device``: an OpenVINO device, ``"CPU"`` (default), ``"GPU.0"``... (or ``"gpu:0"``); its
      GPUs and NPUs are accelerators, which ``backend="auto"`` measures beside the CPU.
    - ``performance_hint``: ``"latency"`` (default) or ``"throughput"`` (more streams).
    - ``num_requests``: infer requests in the pool, i.e. concurrent ``run`` calls; default is
      the compiled model's OPTIMAL_NUMBER_OF_INFER_REQUESTS.
    - ``cache``: keep compiled models in unifer's cache directory (default True).
    """

    name: ClassVar[str] = "openvino"
    suffixes: ClassVar[tuple[str, ...]] = (".onnx", ".xml")
    install: ClassVar[str] = 'pip install "unifer[openvino]"'
    api_version: ClassVar[int] = BACKEND_API_VERSION

    def probe(self) -> Availability:
        """Report OpenVINO's version and devices, or why it cannot run; never raises."""
        try:
            from ._session import runtime_info

            version, devices, accelerators = runtime_info()
        except ImportError as exc:
            return Availability(
                ok=False, reason=f"openvino cannot be imported: {exc}", install=self.install
            )
        except Exception as exc:  # a broken install (missing library, bad plugin) is an answer
            return Availability(
                ok=False,
                reason=f"openvino is installed but failed to start: {type(exc).__name__}: {exc}",
                install=f"pip install --force-reinstall openvino  # or: {self.install}",
            )
        return Availability(ok=True, version=version, devices=devices, accelerators=accelerators)

    def open(self, model: Path, options: SessionOptions, /) -> Session:
        """Compile ``model`` for the configured device and return a thread-safe session."""
        from ._session import OpenVINOSession

        return OpenVINOSession.open(model, options)
