"""ncnn backend for unifer: runs ncnn models (``model.param`` with ``model.bin`` beside it).

Importing this module does not import ncnn (``import unifer`` and listing backends stay cheap):
the runtime is imported inside :meth:`NcnnBackend.probe` and :meth:`NcnnBackend.open`, through
``_session``, the one module that imports it at the top. The backend also converts ONNX files into
ncnn's format, by one of two routes (``_routes``): its own pure-Python writer (``_onnx2ncnn``, needs
the onnx package), or ncnn's ``pnnx`` converter binary when it is installed (``_pnnx``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from unifer import ModelLoadError
from unifer.backend import BACKEND_API_VERSION, Availability, SessionOptions

from . import _routes

if TYPE_CHECKING:
    from unifer.backend import Session

__all__ = ["NcnnBackend"]


class NcnnBackend:
    """The ``ncnn`` backend (CPU or Vulkan). Options (``backend_options={"ncnn": {...}}``):

    - ``device``: ``"cpu"`` (default), ``"vulkan"`` (the Vulkan device ncnn prefers: a discrete
      GPU first) or ``"vulkan:N"``; ``unifer backends`` lists them. Layers without a Vulkan
      implementation (and int8 ones) run on the CPU, with ``threads``.

    - ``winograd``: Winograd convolutions (default True): faster 3x3 convolutions at several
      times the memory for their transformed weights (IResNet100 at 2 threads: ~65-94 vs ~130 ms,
      ~1500 vs 360-535 MiB peak RSS).
    - ``sgemm``: im2col + GEMM convolutions (default True).
    - ``input_shapes``: ``{input: [c, h, w]}``, the shape of one sample for inputs whose
      ``Input`` layer declares none (pnnx writes none).
    - ``converter``: how an ONNX file is converted: ``"unifer"`` (the plugin's own writer, a CNN
      operator subset), ``"pnnx"`` (ncnn's converter: ``pip install --no-deps pnnx``) or
      ``"auto"`` (default: the writer when it supports every operator, else pnnx).

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
        """Report ncnn's version and devices (its Vulkan ones after "cpu"), or why it cannot run;
        never raises."""
        try:
            from ._session import runtime_version
            from ._vulkan import enumerate_devices

            version = runtime_version()
            vulkan = enumerate_devices()
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
        # The device ncnn prefers first, so that device="vulkan" means the same to Engine.load as
        # to this backend's own option.
        listed = sorted(vulkan.devices, key=lambda d: d.index != vulkan.default)
        if listed:
            note = "Vulkan: " + ", ".join(d.describe() for d in listed)
        else:
            note = f"no Vulkan device ({vulkan.why_none})"
        return Availability(
            ok=True,
            version=version,
            devices=("cpu", *(d.device for d in listed)),
            # GPUs only: backend="auto" measures ncnn on them too; Vulkan on the CPU (lavapipe)
            # is always slower than ncnn's own CPU path.
            accelerators=tuple(d.device for d in listed if d.is_gpu),
            reason=note,
        )

    def open(self, model: Path, options: SessionOptions, /) -> Session:
        """Load ``model`` and its ``.bin`` with the options applied; see the class docstring."""
        from ._session import NcnnSession

        return NcnnSession.open(model, options)

    def converter_version(self, options: SessionOptions, /) -> str:
        """The ONNX -> ncnn route and its version(s) (part of the conversion cache key).

        ``options`` selects the route (``backend_options`` ``converter``). The auto key names both
        routes' versions, since either may have written a cached result: a new writer or another
        pnnx release (or installing or removing pnnx) never reuses an old conversion.
        """
        route = _routes.route(options.extra)
        if route == "unifer":
            return _writer_version()
        if route == "pnnx":
            return _pnnx_version()
        return f"auto[{_writer_version()}; {_pnnx_version()}]"

    def convert(self, source: Path, out_dir: Path, options: SessionOptions, /) -> Path:
        """Write ``<stem>.param`` and ``<stem>.bin`` (fp32 weights) for the ONNX file ``source``.

        The route comes from ``backend_options`` ``converter`` (see the class docstring). The
        weights are stored as fp32 whatever ``options.precision`` says: precision is applied when
        the model is opened, so one converted model serves every precision.
        ``<stem>.converter.json`` beside the result records the route that ran.
        """
        from . import _onnx2ncnn, _pnnx

        route = _routes.route(options.extra)
        if route == "pnnx":
            return _convert_with_pnnx(source, out_dir)
        try:
            param = _onnx2ncnn.convert(source, out_dir)
        except _onnx2ncnn.UnsupportedModel as exc:
            if route == "auto" and _pnnx.find() is not None:
                try:
                    return _convert_with_pnnx(source, out_dir, writer_refused=exc.reason)
                except ModelLoadError as failed:  # say why the writer was not used either
                    raise ModelLoadError(
                        f"{failed.message}\nunifer's own ONNX -> ncnn writer cannot convert it "
                        f"either: {exc.reason}"
                    ) from failed
            if route == "auto":
                hint = (
                    f"Install pnnx, ncnn's own converter, and load it again (converter 'auto', "
                    f"the default, then uses it): {_pnnx.INSTALL_WHY}. Or run the ONNX file with "
                    "another backend"
                )
            else:
                hint = (
                    "Convert it with pnnx, ncnn's own converter: backend_options={'ncnn': "
                    "{'converter': 'auto'}} (or 'pnnx')"
                    + ("" if _pnnx.find() is not None else f", after {_pnnx.INSTALL}")
                    + ". Or run the ONNX file with another backend"
                )
            raise ModelLoadError(f"{exc.message}. {hint}") from exc
        _routes.write_record(param, {"route": "unifer", "converter": _writer_version()}, source)
        return param


def _writer_version() -> str:
    from ._onnx2ncnn import WRITER_VERSION

    return f"unifer_ncnn.onnx2ncnn/{WRITER_VERSION}"


def _pnnx_version() -> str:
    from ._pnnx import GLUE_VERSION, find

    pnnx = find()
    if pnnx is None:
        return "pnnx/absent"
    return f"pnnx/{pnnx.version}+unifer_ncnn.pnnx/{GLUE_VERSION}"


def _convert_with_pnnx(source: Path, out_dir: Path, *, writer_refused: str | None = None) -> Path:
    """The pnnx route; ``writer_refused`` is why "auto" did not take the writer (recorded)."""
    from . import _pnnx

    pnnx = _pnnx.find()
    if pnnx is None:
        raise _pnnx.missing_error(source)
    result = _pnnx.convert(source, out_dir, pnnx)
    record = {**_pnnx.describe(result, pnnx), "converter": _pnnx_version()}
    if writer_refused is not None:
        record["writer_refused"] = writer_refused
    _routes.write_record(result.param, record, source)
    return result.param
