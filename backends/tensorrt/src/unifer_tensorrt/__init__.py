"""TensorRT backend for unifer: builds engines from ONNX on NVIDIA GPUs, and runs saved engines.

Importing this module imports neither ``tensorrt`` nor any CUDA library: :meth:`probe` checks the
machine step by step (GPU, driver, package, libraries; see ``_probe``) and :meth:`open` imports
the runtime through ``_session``, the one module that imports it at the top.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from unifer.backend import BACKEND_API_VERSION, Availability, SessionOptions

from ._probe import INSTALL, diagnose

if TYPE_CHECKING:
    from unifer.backend import Session

__all__ = ["TensorRTBackend"]


class TensorRTBackend:
    """The ``tensorrt`` backend. Options (``backend_options={"tensorrt": {...}}``):

    - ``device``: CUDA device index, ``0`` (default), ``"cuda:1"``...
    - ``max_batch``: largest batch of a model whose first dimension is dynamic (default 32).
    - ``profiles``: ``{input: {"min": shape, "opt": shape, "max": shape}}`` for dynamic inputs;
      needed for dynamic dimensions other than the batch.
    - ``max_contexts``: execution contexts, i.e. ``run()`` calls on the GPU at once (default 4).
    - ``tf32``: allow TF32 in float32 layers (default False: faithful fp32).
    - ``workspace_mib``: limit of TensorRT's workspace memory pool (default: TensorRT's).
    - ``builder_optimization_level``: 0-5 (TensorRT's default is 3).
    - ``cache``: keep built engines and timing caches in unifer's cache directory (default True).
    """

    name: ClassVar[str] = "tensorrt"
    suffixes: ClassVar[tuple[str, ...]] = (".onnx", ".engine", ".plan")
    install: ClassVar[str] = INSTALL
    api_version: ClassVar[int] = BACKEND_API_VERSION

    def probe(self) -> Availability:
        """Whether TensorRT can run here, or the first thing missing; never raises."""
        try:
            return diagnose()
        except Exception as exc:  # the contract: probe never raises, it says why
            return Availability(
                ok=False,
                reason=f"checking TensorRT failed: {type(exc).__name__}: {exc}",
                install=self.install,
            )

    def open(self, model: Path, options: SessionOptions, /) -> Session:
        """Build (or load from the cache) the engine for ``model`` and return a session."""
        from ._session import TensorRTSession

        return TensorRTSession.open(model, options)
