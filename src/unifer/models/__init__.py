"""Built-in reference models: the ArcFace IResNet family, generated from code, never downloaded.

The one job of this package is to hand out ONNX files of known architectures, so benchmarks, tests
and examples run on a realistic model with nothing to download::

    from unifer import models

    models.list_models()                     # the registry: params, GFLOPs, I/O, cached files
    onnx_path = models.path("arcface-r100")  # generated into the cache on first use (~261 MB)
    models.resolve("builtin:arcface-r100?batch=dynamic")  # -> (Path, Preprocess.arcface())

Weights are random (fixed seed) but scaled like a trained network's, so runtimes see the real
compute, memory traffic and value ranges; the embeddings mean nothing. Generating needs the
``onnx`` package (``pip install "unifer[models]"``); ``import unifer.models`` does not import it,
and a file that is already cached is served without it. Each generated file is written atomically
with a small JSON manifest beside it holding its sha256; :func:`path` re-hashes the file on every
call and regenerates it when it does not match. See ``docs/models.md``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from .._cache import atomic_write_bytes, cache_dir
from .._digest import content_digest
from .._errors import ModelNotFoundError
from .._preprocess import Preprocess
from ..backend import TensorSpec
from . import _iresnet
from ._count import count, import_onnx
from ._iresnet import Arch

if TYPE_CHECKING:
    import onnx

__all__ = [
    "PREFIX",
    "CachedFile",
    "ModelInfo",
    "build",
    "count",
    "info",
    "list_models",
    "model_rows",
    "names",
    "path",
    "resolve",
]

#: Model specs that start with this name a built-in model: ``"builtin:arcface-r100"``.
PREFIX: Final = "builtin:"
_DYNAMIC_QUERY: Final = "?batch=dynamic"
_STATIC_QUERY: Final = "?batch=1"

_ARCHS: Final[dict[str, Arch]] = {
    a.name: a
    for a in (
        Arch(
            name="arcface-r18",
            layers=(2, 2, 2, 2),
            description="insightface IResNet18 (ArcFace face embedding), random weights",
        ),
        Arch(
            name="arcface-r34",
            layers=(3, 4, 6, 3),
            description="insightface IResNet34 (ArcFace face embedding), random weights",
        ),
        Arch(
            name="arcface-r50",
            layers=(3, 4, 14, 3),
            description="insightface IResNet50 (ArcFace face embedding), random weights",
        ),
        Arch(
            name="arcface-r100",
            layers=(3, 13, 30, 3),
            description="insightface IResNet100 (ArcFace face embedding), random weights",
        ),
        Arch(
            name="arcface-tiny",
            layers=(1, 2, 2, 1),
            widths=(8, 16, 32, 64),
            description="IResNet-shaped test model: same units and I/O, widths 8-64, 6 units",
        ),
    )
}

# The cache file names carry a digest of everything that decides the bytes, so a new generator
# never picks up an old file (and two versions can share one cache directory).
_TAG: Final = hashlib.sha256(
    f"iresnet/{_iresnet.GENERATOR_VERSION}/opset{_iresnet.OPSET}/ir{_iresnet.IR_VERSION}".encode()
).hexdigest()[:8]


@dataclass(frozen=True, slots=True, kw_only=True)
class CachedFile:
    """One generated model file in the cache, as its manifest describes it."""

    spec: str
    """What to pass to ``Engine.load``: ``"builtin:arcface-r100"`` or ``...?batch=dynamic``."""
    path: Path
    size: int
    """File size in bytes."""
    sha256: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelInfo:
    """A built-in model: what it is, what it costs, how to feed it, and what is cached."""

    name: str
    description: str
    params: int
    """Initializer elements, counted from the graph (folded BNs: 65,156,288 for arcface-r100)."""
    gflops: float
    """2 x multiply-accumulates of Conv and Gemm per image, counted from the graph, / 1e9."""
    input: TensorSpec
    output: TensorSpec
    preprocess: Preprocess
    preprocess_name: str
    """The ``Preprocess`` preset ``preprocess`` was made by: ``"arcface"``."""
    files: tuple[CachedFile, ...] = ()
    """The variants generated so far (static first), from their manifests; empty until then."""

    @property
    def spec(self) -> str:
        """``"builtin:<name>"``: what to pass to ``Engine.load``."""
        return PREFIX + self.name

    @property
    def size(self) -> int | None:
        """Size in bytes of the generated static-batch file, or None until it is generated."""
        for f in self.files:
            if f.spec == self.spec:
                return f.size
        return None


# -- registry --------------------------------------------------------------------------------------


def names() -> list[str]:
    """The built-in model names, e.g. ``"arcface-r100"``."""
    return list(_ARCHS)


def _arch(name: str) -> Arch:
    try:
        return _ARCHS[name]
    except KeyError:
        raise ModelNotFoundError(
            f"there is no built-in model named {name!r}; the built-in models are: "
            f"{', '.join(_ARCHS)} (run `unifer models` to list them)"
        ) from None


@cache
def _counts(name: str) -> tuple[int, int]:
    # Counted on the graph-only build: the same graph code, no 65 M random numbers to draw.
    return count(build(name, weights=False))


def info(name: str) -> ModelInfo:
    """Describe one built-in model, including its cached files.

    Raises:
        ModelNotFoundError: ``name`` is not a built-in model (the message lists them).
        MissingDependencyError: the ``onnx`` package, needed to count from the graph, is missing.
    """
    arch = _arch(name)
    params, flops = _counts(name)
    side = _iresnet.INPUT_SIZE
    return ModelInfo(
        name=name,
        description=arch.description,
        params=params,
        gflops=flops / 1e9,
        input=TensorSpec(_iresnet.INPUT_NAME, (1, 3, side, side), np.dtype(np.float32)),
        output=TensorSpec(_iresnet.OUTPUT_NAME, (1, arch.embedding), np.dtype(np.float32)),
        preprocess=Preprocess.arcface(),
        preprocess_name="arcface",
        files=tuple(
            f for dynamic in (False, True) if (f := _cached(name, dynamic=dynamic)) is not None
        ),
    )


def list_models() -> list[ModelInfo]:
    """Every built-in model, in registry order (see :func:`info`)."""
    return [info(name) for name in _ARCHS]


def model_rows() -> list[dict[str, Any]]:
    """One JSON-ready row per built-in model, for ``unifer models [--json]``.

    Keys: ``name``, ``spec``, ``description``, ``params``, ``gflops``, ``input`` / ``output``
    (``"input.1: float32[1,3,112,112]"``), ``preprocess`` (the preset name), and ``size``,
    ``path``, ``sha256`` of the static-batch file (None until generated) plus ``files``: every
    generated variant as ``{"spec", "path", "size", "sha256"}``.
    """
    rows: list[dict[str, Any]] = []
    for m in list_models():
        files = [
            {"spec": f.spec, "path": str(f.path), "size": f.size, "sha256": f.sha256}
            for f in m.files
        ]
        static = next((f for f in files if f["spec"] == m.spec), None)
        rows.append(
            {
                "name": m.name,
                "spec": m.spec,
                "description": m.description,
                "params": m.params,
                "gflops": round(m.gflops, 3),
                "input": str(m.input),
                "output": str(m.output),
                "preprocess": m.preprocess_name,
                "size": static["size"] if static else None,
                "path": static["path"] if static else None,
                "sha256": static["sha256"] if static else None,
                "files": files,
            }
        )
    return rows


# -- building and caching --------------------------------------------------------------------------


def build(name: str, *, dynamic_batch: bool = False, weights: bool = True) -> onnx.ModelProto:
    """Build a built-in model in memory; pure: no cache, no file, same bytes every time.

    Args:
        name: A built-in model name (see :func:`names`).
        dynamic_batch: Make the batch dimension of the input and output symbolic (``"N"``).
        weights: ``False`` gives the same graph with empty initializers (names and shapes only):
            cheap to build, fine for :func:`count` or inspection, not runnable.

    Raises:
        ModelNotFoundError: ``name`` is not a built-in model.
        MissingDependencyError: the ``onnx`` package is not installed.
    """
    arch = _arch(name)
    import_onnx(f"Generating the built-in model {name!r}")
    return _iresnet.build(arch, dynamic_batch=dynamic_batch, weights=weights)


def _file(name: str, *, dynamic: bool) -> Path:
    variant = "-dynamic" if dynamic else ""
    return cache_dir("models") / f"{name}{variant}-{_TAG}.onnx"


def _manifest(file: Path) -> Path:
    return file.with_suffix(".json")


def _read_manifest(file: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(_manifest(file).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _cached(name: str, *, dynamic: bool) -> CachedFile | None:
    """The cached variant as its manifest describes it, if the file exists with that size.

    A cheap check for listing (no hashing of 261 MB); :func:`path` does the full sha256 check.
    """
    file = _file(name, dynamic=dynamic)
    manifest = _read_manifest(file)
    if manifest is None or not file.is_file():
        return None
    size, digest = manifest.get("size"), manifest.get("sha256")
    if not isinstance(size, int) or not isinstance(digest, str) or file.stat().st_size != size:
        return None
    query = _DYNAMIC_QUERY if dynamic else ""
    return CachedFile(spec=PREFIX + name + query, path=file, size=size, sha256=digest)


def path(name: str, *, dynamic_batch: bool = False) -> Path:
    """Return the cached ONNX file of a built-in model, generating it first if missing or invalid.

    The file lives in ``cache_dir("models")`` (``$UNIFER_CACHE_DIR/models`` when that is set) as
    ``<name>[-dynamic]-<generator tag>.onnx``, with ``<same>.json`` holding its sha256 and size.
    A missing, truncated or altered file is regenerated; the file is hashed once per version on
    disk (:func:`unifer._digest.content_digest`), so the check costs nothing after the first.

    Raises:
        ModelNotFoundError: ``name`` is not a built-in model.
        MissingDependencyError: the file must be generated and ``onnx`` is not installed.
    """
    _arch(name)
    file = _file(name, dynamic=dynamic_batch)
    manifest = _read_manifest(file)
    if manifest is not None and file.is_file() and manifest.get("sha256") == content_digest(file):
        return file
    data = build(name, dynamic_batch=dynamic_batch).SerializeToString()
    digest = hashlib.sha256(data).hexdigest()
    # File first, manifest second: a reader that sees the new manifest also sees the new file,
    # and one that sees a stale pair just regenerates the same bytes.
    atomic_write_bytes(file, data)
    record = {
        "name": name,
        "dynamic_batch": dynamic_batch,
        "generator": _iresnet.GENERATOR_VERSION,
        "size": len(data),
        "sha256": digest,
    }
    atomic_write_bytes(_manifest(file), (json.dumps(record, indent=2) + "\n").encode())
    return file


def resolve(spec: str) -> tuple[Path, Preprocess] | None:
    """Turn ``"builtin:<name>[?batch=dynamic|1]"`` into the cached file and its preprocessing.

    Returns None for any string that does not start with ``"builtin:"`` (a path, say), so a loader
    can try this first. The file is generated on first use (see :func:`path`).

    Raises:
        ModelNotFoundError: the name, or the ``?batch=`` option, is not one this package knows.
        MissingDependencyError: the file must be generated and ``onnx`` is not installed.
    """
    if not spec.startswith(PREFIX):
        return None
    name, sep, query = spec[len(PREFIX) :].partition("?")
    dynamic = False
    if sep:
        if "?" + query == _DYNAMIC_QUERY:
            dynamic = True
        elif "?" + query != _STATIC_QUERY:
            raise ModelNotFoundError(
                f"unknown option {query!r} in {spec!r}: built-in models take "
                f"{_DYNAMIC_QUERY!r} (symbolic batch dimension) or {_STATIC_QUERY!r} (the default)"
            )
    return path(name, dynamic_batch=dynamic), Preprocess.arcface()
