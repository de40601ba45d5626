"""The ONNX Runtime backend for unifer: runs ``.onnx`` and ``.ort`` models with ``onnxruntime``.

Importing this module does not import ``onnxruntime``: :meth:`OnnxRuntimeBackend.probe` and
:meth:`OnnxRuntimeBackend.open` import it when they are called, so ``unifer backends`` and
``backend="auto"`` stay cheap when the backend is not used.

Backend options (``backend_options={"onnxruntime": {...}}``):

``device``
    ``"cpu"`` (default), or ``"cuda"`` / ``"cuda:N"`` with onnxruntime-gpu: shorthand for
    ``providers=[("CUDAExecutionProvider", {"device_id": N}), "CPUExecutionProvider"]``.
``providers``
    Execution providers in priority order, as in ``onnxruntime.InferenceSession``: names, or
    ``(name, {option: value})`` pairs. Default ``["CPUExecutionProvider"]``. Every listed provider
    must really be used by the session, otherwise ``open`` raises (no silent CPU fallback).
``graph_optimization_level``
    ``"disable"``, ``"basic"``, ``"extended"`` or ``"all"`` (default).
``session_config``
    ``{key: value}`` strings passed to ``SessionOptions.add_session_config_entry``.
"""

from __future__ import annotations

import importlib.metadata as metadata
from pathlib import Path
from typing import ClassVar, Final

from unifer._hardware import fingerprint
from unifer.backend import (
    BACKEND_API_VERSION,
    Availability,
    Session,
    SessionOptions,
    reject_precision,
    warn_unknown_options,
)

__all__ = ["OnnxRuntimeBackend"]

KNOWN_OPTIONS: Final = ("device", "providers", "graph_optimization_level", "session_config")

#: Distributions that all install the same ``onnxruntime`` package. With two of them installed
#: the last one installed overwrites the other's files, leaving a mix (onnxruntime#26996).
DISTRIBUTIONS: Final = (
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxruntime-directml",
    "onnxruntime-openvino",
    "onnxruntime-qnn",
)


def installed_distributions() -> list[str]:
    """The onnxruntime distributions installed here, in :data:`DISTRIBUTIONS` order."""
    found = []
    for dist in DISTRIBUTIONS:
        try:
            metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
        found.append(dist)
    return found


class OnnxRuntimeBackend:
    """ONNX Runtime (``onnxruntime``), on CPU by default; other execution providers on request."""

    name: ClassVar[str] = "onnxruntime"
    suffixes: ClassVar[tuple[str, ...]] = (".onnx", ".ort")
    install: ClassVar[str] = 'pip install "unifer[onnxruntime]"'
    api_version: ClassVar[int] = BACKEND_API_VERSION

    def probe(self) -> Availability:
        """Whether onnxruntime imports here, its version, and the devices its build can use."""
        try:
            return self._probe()
        except Exception as exc:  # the contract: probe never raises, it says why
            return Availability(
                ok=False,
                reason=f"checking onnxruntime failed: {type(exc).__name__}: {exc}",
                install=self.install,
            )

    def _probe(self) -> Availability:
        dists = installed_distributions()
        if len(dists) > 1:
            keep = "onnxruntime-gpu" if "onnxruntime-gpu" in dists else dists[-1]
            return Availability(
                ok=False,
                reason=(
                    f"several onnxruntime distributions are installed ({', '.join(dists)}); they "
                    "share one 'onnxruntime' package and overwrite each other's files "
                    "(onnxruntime#26996)"
                ),
                install=f"pip uninstall -y {' '.join(dists)} && pip install {keep}",
            )
        try:
            import onnxruntime as ort
        except ImportError as exc:
            if isinstance(exc, ModuleNotFoundError) and exc.name == "onnxruntime":
                return Availability(
                    ok=False, reason="onnxruntime is not installed", install=self.install
                )
            # Installed but broken: a shared library that fails to load, a missing dependency.
            return Availability(
                ok=False,
                reason=f"onnxruntime is installed but failed to import: {exc}",
                install=f"pip install --force-reinstall {dists[0] if dists else 'onnxruntime'}",
            )
        # The list only says the build contains the CUDA EP; whether its libraries load is known
        # only when a session is created, and open() checks that.
        cuda = "CUDAExecutionProvider" in ort.get_available_providers()
        # backend="auto" measures the CUDA EP only where the kernel shows an NVIDIA GPU, so a
        # GPU build on a machine without one costs it no failed attempt.
        # The fingerprint's GPU list is read once per process (probe runs on every explicit load).
        gpus = fingerprint(runtimes=False)["gpus"] if cuda else []
        on_gpu = any(g["vendor"] == "nvidia" for g in gpus)
        return Availability(
            ok=True,
            version=str(ort.__version__),
            devices=("cpu", "cuda:0") if cuda else ("cpu",),
            accelerators=("cuda:0",) if on_gpu else (),
        )

    def open(self, model: Path, options: SessionOptions, /) -> Session:
        """Open ``model`` with onnxruntime; see the module docstring for backend options."""
        reject_precision(
            self.name,
            options.precision,
            ("fp32",),
            why=(
                "it runs every model at the precision stored in the file and has no switch to "
                "lower it. Quantize or convert the model itself (onnxruntime.quantization, or an "
                "fp16 export) and load that file with precision='fp32' (the default): it runs "
                "quantized as stored, and settings['model_precision'] says so"
            ),
        )
        warn_unknown_options(self.name, options.extra, KNOWN_OPTIONS)
        from ._session import open_session  # imports onnxruntime

        return open_session(model, threads=options.threads, extra=options.extra)
