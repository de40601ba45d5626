"""ncnn backend for unifer: runs ncnn models (``model.param`` with ``model.bin`` beside it).

Importing this module does not import ncnn (``import unifer`` and listing backends stay cheap):
the runtime is imported inside :meth:`NcnnBackend.probe` and :meth:`NcnnBackend.open`, through
``_session``, the one module that imports it at the top. The backend also converts ONNX files into
ncnn's format with its own pure-Python writer (``_onnx2ncnn``, needs the onnx package).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from unifer.backend import BACKEND_API_VERSION, Availability, SessionOptions

if TYPE_CHECKING:
    from unifer.backend import Session

__all__ = ["NcnnBackend"]


class NcnnBackend:
    """The ``ncnn`` backend (CPU). Options (``backend_options={"ncnn": {...}}``):

    - ``winograd``: Winograd convolutions (default True): faster 3x3 convolutions at several
      times the memory for their transformed weights (IResNet100 at 2 threads: ~65-94 vs ~130 ms,
      ~1500 vs 360-535 MiB peak RSS).
    - ``sgemm``: im2col + GEMM convolutions (default True).
    - ``input_shapes``: ``{input: [c, h, w]}``, the shape of one sample for inputs whose
      ``Input`` layer declares none (pnnx writes none).

    ``precision="fp32"`` (default) turns off the fp16/bf16 storage and arithmetic that ncnn enables
    by default; ``"bf16"`` and ``"fp16"`` turn them on. ncnn has no batch dimension: a batch runs
    one sample at a time and the results are stacked.
    """

    name: ClassVar[str] = "ncnn"
    suffixes: ClassVar[tuple[str, ...]] = (".param",)
    install: ClassVar[str] = 'pip install "unifer[ncnn]"'
    api_version: ClassVar[int] = BACKEND_API_VERSION
    #: Source formats :meth:`convert` reads (the optional ``unifer.backend.Converter`` protocol).
    converts_from: ClassVar[tuple[str, ...]] = (".onnx",)

    def probe(self) -> Availability:
        """Report ncnn's version, or why it cannot run; never raises."""
        try:
            from ._session import runtime_version

            version = runtime_version()
        except ImportError as exc:
            return Availability(
                ok=False, reason=f"ncnn cannot be imported: {exc}", install=self.install
            )
        except Exception as exc:  # a broken install (missing shared library) is an answer
            return Availability(
                ok=False,
                reason=f"ncnn is installed but failed to start: {type(exc).__name__}: {exc}",
                install=f"pip install --force-reinstall ncnn  # or: {self.install}",
            )
        return Availability(ok=True, version=version, devices=("cpu",))

    def open(self, model: Path, options: SessionOptions, /) -> Session:
        """Load ``model`` and its ``.bin`` with the options applied; see the class docstring."""
        from ._session import NcnnSession

        return NcnnSession.open(model, options)

    def converter_version(self) -> str:
        """The ONNX -> ncnn writer and its version (part of the conversion cache key)."""
        from ._onnx2ncnn import WRITER_VERSION

        return f"unifer_ncnn.onnx2ncnn/{WRITER_VERSION}"

    def convert(self, source: Path, out_dir: Path, options: SessionOptions, /) -> Path:
        """Write ``<stem>.param`` and ``<stem>.bin`` (fp32 weights) for the ONNX file ``source``.

        The weights are stored as fp32 whatever ``options.precision`` says: precision is applied
        when the model is opened, so one converted model serves every precision.
        """
        from ._onnx2ncnn import convert

        return convert(source, out_dir)
