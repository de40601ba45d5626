"""The PyTorch backend for unifer: runs TorchScript, ``torch.export`` and ONNX models with torch.

Importing this module does not import ``torch``: :meth:`TorchBackend.probe` and
:meth:`TorchBackend.open` import it through ``_session`` (which, with the ONNX converter
``_onnx``, is the only code importing it at the top), so ``import unifer`` and ``unifer backends``
stay cheap.

Formats (the file suffix decides):

- TorchScript archives (``.pt``, ``.pth``, ``.torchscript``), read with ``torch.jit.load``. They do
  not record input shapes or dtypes, so these come from the ``inputs`` option;
- ``torch.export`` programs (``.pt2``), read with ``torch.export.load(...).module()``;
- ONNX models (``.onnx``), converted in memory when opened by the plugin's own ONNX -> torch
  converter (needs ``pip install "unifer-torch[onnx]"``).

Backend options (``backend_options={"torch": {...}}``):

``device``
    ``"auto"`` (default: ``"cuda:0"`` when ``torch.cuda.is_available()``, else ``"cpu"``),
    ``"cpu"``, ``"cuda"`` or ``"cuda:N"``. A device this machine lacks is an
    :class:`~unifer.UnsupportedOptionError` when opening, never a silent fallback.
``allow_tf32``
    ``False`` (default): CUDA float32 matmuls and convolutions run in IEEE fp32 (PyTorch's own
    default lets cuDNN convolutions use TF32). ``True`` allows TF32 on Ampere and newer GPUs.
    Both settings are process-wide in PyTorch; CUDA only.
``inputs``
    TorchScript only: ``{"name": [dims...]}`` or ``{"name": {"shape": [...], "dtype": "float32"}}``
    for every tensor argument of ``forward``; a dim is an int, a name, or ``None`` (dynamic).
"""

from __future__ import annotations

import importlib.metadata as metadata
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Final

from unifer.backend import BACKEND_API_VERSION, Availability, SessionOptions

if TYPE_CHECKING:
    from unifer.backend import Session

__all__ = ["TorchBackend"]

INSTALL: Final = 'pip install "unifer[torch]"'
#: A CPU build without the CUDA libraries (the default "torch" wheel on Linux is a CUDA build).
CPU_INSTALL: Final = "pip install torch --index-url https://download.pytorch.org/whl/cpu"


class TorchBackend:
    """PyTorch (``torch``), on CPU or one CUDA device; see the module docstring for options."""

    name: ClassVar[str] = "torch"
    suffixes: ClassVar[tuple[str, ...]] = (".pt", ".pth", ".torchscript", ".pt2", ".onnx")
    install: ClassVar[str] = INSTALL
    api_version: ClassVar[int] = BACKEND_API_VERSION

    def probe(self) -> Availability:
        """Whether torch imports here, its version, and which devices it can use (and why not
        CUDA); never raises."""
        try:
            return self._probe()
        except Exception as exc:  # the contract: probe never raises, it says why
            return Availability(
                ok=False,
                reason=f"checking torch failed: {type(exc).__name__}: {exc}",
                install=f"pip install --force-reinstall torch  # or {CPU_INSTALL}",
            )

    def _probe(self) -> Availability:
        try:
            from ._session import describe_runtime
        except ImportError as exc:
            if isinstance(exc, ModuleNotFoundError) and exc.name == "torch":
                return Availability(ok=False, reason="torch is not installed", install=INSTALL)
            # Installed but broken: a shared library that fails to load, a mismatched build.
            try:
                version = metadata.version("torch")
            except metadata.PackageNotFoundError:
                version = "unknown version"
            return Availability(
                ok=False,
                reason=f"torch ({version}) is installed but failed to import: {exc}",
                install=f"pip install --force-reinstall torch=={version}"
                if version != "unknown version"
                else INSTALL,
            )
        runtime = describe_runtime()
        return Availability(
            ok=True,
            version=runtime.version,
            devices=runtime.devices,
            # Not an error: says what the device list alone cannot (why there is no CUDA).
            reason=runtime.summary,
        )

    def open(self, model: Path, options: SessionOptions, /) -> Session:
        """Load ``model`` with torch (converting ONNX in memory) and return a thread-safe
        session."""
        from ._session import open_session  # imports torch

        return open_session(model, options)
