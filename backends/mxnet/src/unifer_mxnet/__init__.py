"""MXNet backend for unifer (legacy): runs MXNet checkpoints and converts ONNX files into them.

A checkpoint is ``<prefix>-symbol.json`` (the graph) with ``<prefix>-NNNN.params`` (the weights
of epoch NNNN) beside it, as ``mx.model.save_checkpoint`` and ``HybridBlock.export`` write them.

Apache MXNet is retired (Apache Attic, 2023; 1.9.1 is its last release) and needs numpy < 1.24, so
this plugin lives in an environment of its own; see ``README.md``. Importing this module does not
import mxnet, and neither does :meth:`MXNetBackend.probe`: MXNet reads its OpenMP thread count once,
when it is imported, so the import waits for the first ``open`` (or ``convert``), which applies
``threads=`` first (``_threads``). ``_session`` is the one module that imports mxnet at the top.
"""

from __future__ import annotations

import importlib.metadata as metadata
import importlib.util
import re
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Final

import numpy as np

from unifer import BackendUnavailableError, MissingDependencyError
from unifer.backend import (
    BACKEND_API_VERSION,
    Availability,
    SessionOptions,
    reject_precision,
    warn_unknown_options,
    warn_user,
)

from . import _checkpoint

if TYPE_CHECKING:
    from unifer.backend import Session

__all__ = ["MXNetBackend", "numpy_problem"]

NAME: Final = "mxnet"
OPTIONS: Final = ("epoch", "input_shapes", "outputs")
INSTALL: Final = 'pip install "unifer[mxnet]"'
#: mxnet 1.9.1 cannot share an environment with numpy >= 1.24 (and so with most of today's
#: packages): the fix is an environment of its own.
ENV_INSTALL: Final = (
    'python3.11 -m venv .venv-mxnet && .venv-mxnet/bin/pip install "unifer[mxnet]"  '
    "# mxnet 1.9.1 needs numpy<1.24: give it its own environment (in the unifer repo: "
    "uv run --project backends/mxnet ...)"
)
CONVERT_INSTALL: Final = 'pip install "unifer-mxnet[convert]"'
#: The first numpy release mxnet 1.9.1 cannot import with.
NUMPY_LIMIT: Final = (1, 24)

RETIRED: Final = (
    "Apache MXNet is retired: the project moved to the Apache Attic in 2023 and 1.9.1 (2022) is "
    "its last release, with no bug or security fixes to come. unifer runs MXNet models for "
    "existing deployments; for anything new, export the model to ONNX (mxnet.onnx.export_model) "
    "and use a maintained backend such as onnxruntime or openvino. (Shown once per process.)"
)
_retirement_lock = threading.Lock()
_retirement_warned = False


def numpy_problem(numpy_version: str) -> str | None:
    """Why mxnet 1.9.1 cannot run with ``numpy_version``, or None when it can.

    mxnet 1.9.1 uses numpy aliases at import time that numpy 1.24 removed (``np.bool``; numpy 2
    also removed ``np.PZERO``...), so ``import mxnet`` fails with an AttributeError there.
    """
    match = re.match(r"(\d+)\.(\d+)", numpy_version)
    if match is None:
        return None  # an unparsable version: let the import decide
    if (int(match[1]), int(match[2])) < NUMPY_LIMIT:
        return None
    return (
        f"mxnet 1.9.1 needs numpy < 1.24 but this environment has numpy {numpy_version} (numpy "
        "1.24 removed aliases such as np.bool that mxnet uses when it is imported), so mxnet "
        "cannot be imported here; run MXNet models from an environment of their own"
    )


def _mxnet_distribution() -> tuple[str, str] | None:
    """The installed distribution that provides the ``mxnet`` module and its version, if any.

    Without importing it: ``mxnet``, ``mxnet-mkl``, ``mxnet-cu112``... all install the same module.
    """
    if "mxnet" in sys.modules:
        module = sys.modules["mxnet"]
        return "mxnet", str(getattr(module, "__version__", "unknown"))
    if importlib.util.find_spec("mxnet") is None:
        return None
    for dist in metadata.packages_distributions().get("mxnet", ["mxnet"]):
        try:
            return dist, metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return "mxnet", "unknown"


def _warn_retired() -> None:
    global _retirement_warned
    with _retirement_lock:
        if _retirement_warned:
            return
        _retirement_warned = True
    warn_user(RETIRED)


class MXNetBackend:
    """The ``mxnet`` backend (CPU, fp32). Options (``backend_options={"mxnet": {...}}``):

    - ``epoch``: which ``<prefix>-NNNN.params`` to load (default: the highest epoch present).
    - ``input_shapes``: ``{input: [dims]}`` for inputs whose shape the symbol does not record
      (checkpoints saved by MXNet itself record none); ``None`` marks a dynamic dimension.
    - ``outputs``: names of internal outputs to return instead of the symbol's heads, e.g.
      ``["fc1_output"]`` for a training checkpoint that ends in a loss.

    ``threads=`` sets ``OMP_NUM_THREADS`` before mxnet is imported: MXNet reads it once per
    process, so the first model opened decides for the whole process, and ``settings`` says
    whether a later request could be honoured.
    """

    name: ClassVar[str] = NAME
    suffixes: ClassVar[tuple[str, ...]] = (".json",)
    install: ClassVar[str] = INSTALL
    api_version: ClassVar[int] = BACKEND_API_VERSION
    #: Source formats :meth:`convert` reads (the optional ``unifer.backend.Converter`` protocol).
    converts_from: ClassVar[tuple[str, ...]] = (".onnx",)

    def probe(self) -> Availability:
        """Say whether mxnet can run here, without importing it (see the module docstring)."""
        found = _mxnet_distribution()
        if found is None:
            return Availability(
                ok=False,
                reason="mxnet is not installed in this environment",
                install=ENV_INSTALL,
            )
        _, version = found
        problem = numpy_problem(np.__version__)
        if problem is not None:
            return Availability(ok=False, version=version, reason=problem, install=ENV_INSTALL)
        return Availability(ok=True, version=version, devices=("cpu",))

    def open(self, model: Path, options: SessionOptions, /) -> Session:
        """Load ``model`` (a ``-symbol.json``) and its ``.params``; see the class docstring."""
        warn_unknown_options(NAME, options.extra, OPTIONS)
        reject_precision(
            NAME,
            options.precision,
            ("fp32",),
            "unifer runs MXNet models in float32 only (mxnet 1.9.1's reduced-precision paths need "
            "a model converted with its AMP or quantization tools, and MXNet is no longer "
            "maintained)",
        )
        checkpoint = _checkpoint.locate(model, options.extra.get("epoch"))
        _warn_retired()
        threads = _import_mxnet(options.threads)
        from ._session import MXNetSession

        return MXNetSession.open(checkpoint, options, threads)

    def converter_version(self, options: SessionOptions, /) -> str:
        """mxnet.contrib.onnx, onnx and the plugin's fixes: part of the conversion cache key (no
        option changes what it writes)."""
        from ._onnx2mx import FIXES_VERSION

        found = _mxnet_distribution()
        if found is None:
            raise MissingDependencyError(
                f"converting ONNX to MXNet needs mxnet, which is not installed: {ENV_INSTALL}"
            )
        try:
            onnx_version = metadata.version("onnx")
        except metadata.PackageNotFoundError:
            onnx_version = "missing"  # convert() raises with the install line
        return (
            f"mxnet.contrib.onnx/{found[1]} onnx/{onnx_version} unifer_mxnet.fixes/{FIXES_VERSION}"
        )

    def convert(self, source: Path, out_dir: Path, options: SessionOptions, /) -> Path:
        """Write ``<stem>-symbol.json`` and ``<stem>-0000.params`` (fp32) for the ONNX ``source``.

        The ONNX graph is adjusted in memory for mxnet's importer first (``_onnx2mx``); the
        source file is only read.
        """
        from . import _onnx2mx
        from ._threads import MXNET_LOCK

        model = _onnx2mx.read(source)  # needs onnx, not mxnet: fails before the import below
        _import_mxnet(options.threads)
        with MXNET_LOCK:
            return _onnx2mx.convert(model, source, out_dir)


def _import_mxnet(threads: int | None) -> dict[str, object]:
    """Import mxnet with ``threads`` applied; a broken install becomes BackendUnavailableError."""
    from . import _threads

    problem = numpy_problem(np.__version__)
    if problem is not None:
        raise BackendUnavailableError(f"{problem}. Fix it with: {ENV_INSTALL}")
    try:
        return _threads.import_mxnet(threads)
    except ImportError as exc:
        raise BackendUnavailableError(
            f"mxnet cannot be imported: {exc}. Fix it with: {ENV_INSTALL}"
        ) from exc
    except Exception as exc:  # a broken install (missing libgomp, bad wheel) fails in many ways
        raise BackendUnavailableError(
            f"mxnet is installed but failed to import: {type(exc).__name__}: {exc}. Reinstall it "
            f"(pip install --force-reinstall mxnet==1.9.1 'numpy<1.24') or: {ENV_INSTALL}"
        ) from exc
