"""Format conversion: one model file, every runtime.

A backend that implements :class:`~unifer.backend.Converter` can turn another format (ONNX) into
its own. The core owns everything around the conversion, so every plugin gets the same guarantees:

- It happens only when asked: ``unifer convert``, or naming a backend that cannot read the file.
- The result goes to unifer's cache directory, keyed by the content of every file the source
  consists of (an ONNX model's external-data weights too), the target backend and the converter's
  version; it is built in a temporary directory and moved into place with one rename, so concurrent
  processes never see half a conversion. A published conversion is deleted only as stale: when
  the same source path (absolute) is converted again with other content by the same converter,
  or when the runtime cannot load it any more. Nothing is written next to the user's model.
- The converted model is checked against the source on seeded inputs (output shapes, max abs
  diff, cosine), with another backend that reads the source as the reference, at batch 1 and, for
  a source with a dynamic batch dimension, at a batch of several samples too (where the source can
  run one: else the check's note says it compared batch 1 only). The converted model is opened
  with the caller's options for its backend, at fp32. An output whose shape differs from the
  reference's or from the converted model's own declaration, or a converted model that cannot run
  the feeds the source runs, fails the check. A conversion
  that changes the outputs beyond the fp32 tolerance is refused unless the user accepts it
  explicitly; a source that the reference cannot load is reported as unreadable, and nothing is
  cached.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import math
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from . import _registry
from ._cache import atomic_write_bytes, cache_dir, cache_error
from ._digest import content_digest, model_digest
from ._errors import (
    ConversionMismatchError,
    InferenceError,
    InputError,
    ModelError,
    ModelLoadError,
    UniferError,
)
from ._parity import (
    FP32_MAX_RELATIVE_DIFF,
    Parity,
    compare,
    incomparable,
    seeded_feeds,
    worst,
)
from .backend import Backend, Converter, Session, SessionOptions, warn_user

MANIFEST: Final = "conversion.json"
SCHEMA: Final = 1


@dataclass(frozen=True, slots=True)
class Check:
    """How the converted model compared with the source model on seeded inputs."""

    reference: str | None
    """The backend that ran the source model; None when no backend could."""
    max_abs_diff: float | None = None
    max_relative_diff: float | None = None
    min_cosine: float | None = None
    passed: bool | None = None
    """True within tolerance, False outside it, None when the check could not run."""
    note: str | None = None


@dataclass(frozen=True, slots=True)
class Conversion:
    """A converted model in the cache, and how it was checked."""

    source: str
    source_sha256: str
    target: str
    converter: str
    path: Path
    check: Check
    created: str

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        return data


def can_convert(backend: Backend, suffix: str) -> bool:
    """Whether ``backend`` can produce its own format from files with ``suffix``."""
    return isinstance(backend, Converter) and suffix in backend.converts_from


def converters(suffix: str) -> list[str]:
    """Installed backends that can convert files with ``suffix`` into their own format."""
    names = []
    for name in _registry.backend_names():
        try:
            if can_convert(_registry.get_backend(name), suffix):
                names.append(name)
        except UniferError:
            continue  # a broken plugin converts nothing; `unifer backends` shows why
    return names


def convert(
    backend: Backend, source: Path, options: SessionOptions, *, accept_mismatch: bool = False
) -> Conversion:
    """Return the cached conversion of ``source`` for ``backend``, converting it on a miss.

    Raises:
        ModelFormatError: ``backend`` cannot convert this format.
        MissingDependencyError: the converter is not installed.
        ModelLoadError: the converter cannot convert this model.
        ConversionMismatchError: the converted model's outputs differ from the source's beyond
            tolerance and ``accept_mismatch`` is false.
    """
    return _convert(backend, source, options, accept_mismatch=accept_mismatch)[0]


def _convert(
    backend: Backend, source: Path, options: SessionOptions, *, accept_mismatch: bool
) -> tuple[Conversion, bool]:
    """:func:`convert`, and whether the conversion came from the cache."""
    if not isinstance(backend, Converter):  # callers check can_convert() first
        raise TypeError(f"{backend.name} cannot convert models")
    # Absolute: entries are pruned by their source, and 'model.onnx' names a file per directory.
    source = source.absolute()
    for _ in range(_SOURCE_ATTEMPTS):
        root, final, digest, version = _location(backend, source, options)
        conversion = _find(final)
        if conversion is not None and conversion.path.parent != final:
            conversion = _adopt(conversion, source, root, final)  # converted under another name
        from_cache = conversion is not None
        if conversion is None:
            try:
                conversion = _convert_into(backend, source, options, root, final, digest, version)
            except _SourceChanged:
                continue  # rewritten while converting: convert what is there now
        break
    else:
        raise ModelLoadError(
            f"{source} changed while it was being converted to {backend.name}, "
            f"{_SOURCE_ATTEMPTS} times; load it once it is completely written"
        )
    if conversion.check.passed is False and not accept_mismatch:
        c = conversion.check
        if c.max_abs_diff is not None and math.isfinite(c.max_abs_diff):
            what = (
                f"changed its outputs: max abs diff {c.max_abs_diff:.3g} ({c.max_relative_diff:.3g}"
                f" of the output scale, tolerance {FP32_MAX_RELATIVE_DIFF}), cosine "
                f"{c.min_cosine:.6f} against {c.reference}" + (f": {c.note}" if c.note else "")
            )
        else:  # nothing to compare: other shapes or names, NaN; numbers would only mislead
            what = f"gives outputs that cannot be compared with {c.reference}'s: {c.note}"
        raise ConversionMismatchError(
            f"converting {source.name} to {backend.name} {what}. Use another backend, or accept "
            f"it explicitly: unifer convert {source} --to {backend.name} --accept-mismatch, then "
            "load the converted file"
        )
    return conversion, from_cache


def open_converted(
    backend: Backend, source: Path, options: SessionOptions
) -> tuple[Conversion, Session]:
    """:func:`convert`, then open the converted model with ``options``.

    A cached conversion that the runtime cannot load (damaged on disk, or removed meanwhile by
    ``unifer cache clear``) is dropped and converted again, once: a cache must not keep failing
    the load it was made for.
    """
    conversion, from_cache = _convert(backend, source, options, accept_mismatch=False)
    try:
        return conversion, _registry.open_session(backend, conversion.path, options)
    except ModelError:
        if not from_cache:
            raise
        _drop(conversion.path.parent)
    conversion = convert(backend, source, options)
    return conversion, _registry.open_session(backend, conversion.path, options)


def cached(backend: Backend, source: Path, options: SessionOptions) -> Conversion | None:
    """The conversion of ``source`` for ``backend`` with these options if it is already in the
    cache, else None."""
    if not isinstance(backend, Converter) or source.suffix.lower() not in backend.converts_from:
        return None
    return _find(_location(backend, source, options)[1])


def _location(
    backend: Converter, source: Path, options: SessionOptions
) -> tuple[Path, Path, str, str]:
    """The cache root, the entry's directory, the source file's digest and the converter version.

    The entry is keyed by every file of the source (:func:`model_digest`): a conversion bakes in
    the weights, which may sit in files of their own that change while the source file does not.
    """
    version = _registry.plugin_call(
        backend, "giving its converter version", backend.converter_version, options
    )
    root = cache_dir("converted", backend.name)
    key = _key(model_digest(source), backend.name, version)
    return root, root / f"{source.stem}-{key}", content_digest(source), version


def _key(digest: str, target: str, version: str) -> str:
    import hashlib

    return hashlib.sha256(f"{digest}\0{target}\0{version}".encode()).hexdigest()[:16]


def _find(entry: Path) -> Conversion | None:
    """The conversion cached under ``entry``'s key, whatever the source file was called.

    Entries are named ``<source stem>-<key>`` to be recognisable in the cache, but the key alone
    (content, target, converter) identifies one: a byte-identical copy of a model under another
    name needs no second conversion (:func:`_adopt`).
    """
    key = entry.name.rpartition("-")[2]
    for directory in [entry, *sorted(entry.parent.glob(f"*-{key}"))]:
        if (conversion := _read(directory)) is not None:
            return conversion
    return None


def _adopt(twin: Conversion, source: Path, root: Path, final: Path) -> Conversion:
    """``twin`` (the same model converted under another file name) published as ``source``'s
    conversion: its files hard-linked (copied where links fail) and renamed from the other
    file's stem to this one's, so nothing carries the other name, and a manifest of its own."""
    old, new = Path(twin.source).stem, source.stem
    with _writing_into(root) as work:
        for file in twin.path.parent.iterdir():
            if file.name == MANIFEST:
                continue
            try:
                os.link(file, work / _restem(file.name, old, new))
            except OSError:
                shutil.copy2(file, work / _restem(file.name, old, new))
        path = final / _restem(twin.path.name, old, new)
        adopted = dataclasses.replace(twin, source=str(source), path=path)
        manifest = {
            **adopted.to_dict(),
            "schema": SCHEMA,
            "primary": adopted.path.name,
            "sizes": _sizes(work),
        }
        del manifest["path"]
        _write_manifest(work, manifest)
        if (theirs := _publish(work, final)) is not None:
            return theirs
        _prune(root, final, str(source), twin.converter)
        return adopted


def _restem(name: str, old: str, new: str) -> str:
    """``name`` with the stem ``old`` it starts with (``old.param``, ``old-0000.params``)
    replaced by ``new``."""
    if name.startswith(old) and name[len(old) : len(old) + 1] in (".", "-", "_"):
        return new + name[len(old) :]
    return name


def _read(directory: Path) -> Conversion | None:
    """The conversion stored in ``directory``, or None if absent or unreadable (then rebuilt)."""
    try:
        data = json.loads((directory / MANIFEST).read_text())
        if data.get("schema") != SCHEMA:
            return None
        path = directory / data["primary"]
        if not path.is_file():
            return None
        # A file cut short (a full disk, a crash before this manifest was flushed) or emptied:
        # the entry is rebuilt rather than handed to the runtime.
        for name, size in data.get("sizes", {}).items():
            if (directory / name).stat().st_size != size:
                return None
        return Conversion(
            source=data["source"],
            source_sha256=data["source_sha256"],
            target=data["target"],
            converter=data["converter"],
            path=path,
            check=Check(**data["check"]),
            created=data["created"],
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _convert_into(
    backend: Converter,
    source: Path,
    options: SessionOptions,
    root: Path,
    final: Path,
    digest: str,
    version: str,
) -> Conversion:
    with _writing_into(root) as work:
        # An OSError is the cache directory's (full, read-only): _writing_into says so.
        primary = _registry.plugin_call(
            backend, "converting", backend.convert, source, work, options, passes=(OSError,)
        )
        if primary.parent != work or not primary.is_file():
            raise ModelLoadError(
                f"the {backend.name} converter returned {primary}, which is not a file it wrote "
                f"in the output directory; this is a bug in the plugin"
            )
        check = _check(backend, source, primary, options)
        # The key names the source as it was before converting: a source rewritten since (a
        # deployment replacing the model in place) would file its conversion, or its failed
        # check, under the old content's key. Any write changes the file's ctime, so this
        # hashes again only then.
        if _location(backend, source, options)[1] != final:
            raise _SourceChanged
        created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        manifest = {
            "schema": SCHEMA,
            "source": str(source),
            "source_sha256": digest,
            "target": backend.name,
            "converter": version,
            "primary": primary.name,
            "check": asdict(check),
            "created": created,
            "sizes": _sizes(work),
        }
        _write_manifest(work, manifest)
        if (theirs := _publish(work, final)) is not None:
            return theirs
        _prune(root, final, str(source), version)
        return Conversion(
            str(source), digest, backend.name, version, final / primary.name, check, created
        )


@contextlib.contextmanager
def _writing_into(root: Path) -> Iterator[Path]:
    """A new work directory under ``root`` for building one entry, removed afterwards; failing to
    write there (read-only, full) is a CacheError, not the OS's error."""
    work = None
    try:
        work = _work_dir(root)
        yield work
    except UniferError:
        raise
    except OSError as exc:
        raise cache_error(root, exc) from exc
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)


class _SourceChanged(Exception):
    """The source file was rewritten while it was being converted."""


#: Conversions of a source that keeps being rewritten, before giving up.
_SOURCE_ATTEMPTS: Final = 3
#: Leftovers of conversions that a killed process never finished are removed after this long.
_STALE_S: Final = 24 * 3600


def _work_dir(root: Path) -> Path:
    """A new private-named directory under ``root`` for building one entry; not mkdtemp's 0700,
    which would survive the rename and hide the entry from the other users of a shared cache."""
    work = root / f".tmp-{uuid.uuid4().hex}"
    work.mkdir(mode=0o777)  # less the umask, as an ordinary mkdir
    return work


def _files(directory: Path) -> list[Path]:
    """The entry's files (a converter may write subdirectories), its manifest excepted."""
    return [f for f in directory.rglob("*") if f.is_file() and f.name != MANIFEST]


def _sizes(directory: Path) -> dict[str, int]:
    return {str(f.relative_to(directory)): f.stat().st_size for f in _files(directory)}


def _write_manifest(directory: Path, manifest: Mapping[str, object]) -> None:
    # Flushed to disk with the files it describes, before the rename publishes them: after a
    # power loss an entry is whole or absent.
    for file in _files(directory):
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    atomic_write_bytes(directory / MANIFEST, json.dumps(manifest, indent=2).encode())


def _prune(root: Path, kept: Path, source: str, converter: str) -> None:
    """Remove the entries of ``source``'s earlier contents by the same ``converter`` (the file
    was rewritten; a copy elsewhere has entries of its own, and other converter versions may be
    other options in use) and leftovers of killed conversions, so a model updated in place keeps
    one entry, not one per version. Entries in use stay readable where the OS keeps open files
    (POSIX); a load that finds its entry gone converts again."""
    now = time.time()
    for entry in root.iterdir():
        if entry == kept or not entry.is_dir():
            continue
        if entry.name.startswith((".tmp-", ".old-")):
            with contextlib.suppress(OSError):
                if now - entry.stat().st_mtime > _STALE_S:
                    shutil.rmtree(entry, ignore_errors=True)
            continue
        found = _read(entry)
        if found is not None and (found.source, found.converter) == (source, converter):
            _drop(entry)


def _drop(entry: Path) -> None:
    """Remove the entry ``entry``: renamed aside first, so no reader finds it half deleted."""
    aside = entry.with_name(f".old-{uuid.uuid4().hex}")
    try:
        os.rename(entry, aside)
    except OSError:
        return  # gone already, or not ours to remove
    shutil.rmtree(aside, ignore_errors=True)


#: Rounds of "publish, else clear an unreadable leftover" before giving up; more than one is
#: needed only while other processes are replacing the same leftover.
_PUBLISH_ATTEMPTS: Final = 3


def _publish(work: Path, final: Path) -> Conversion | None:
    """Move the finished conversion ``work`` to ``final`` with one rename; return None when it
    was published, or the conversion another process published there first (use theirs).

    The rename is tried first: it fails while anything occupies ``final``. Only an unreadable
    leftover is cleared, by :func:`_discard`, which never deletes a published conversion.
    """
    for _ in range(_PUBLISH_ATTEMPTS):
        try:
            os.rename(work, final)
            return None
        except OSError as exc:
            failure = exc
        if (theirs := _read(final)) is not None:
            return theirs
        _discard(final)
    raise failure  # the cache directory refuses the rename, or the entry never stayed clear


def _discard(entry: Path) -> None:
    """Delete the unreadable cache entry ``entry``, unless it was replaced meanwhile.

    It is first renamed to a name of its own, atomically, so that no other process can publish
    into it while it is being deleted. Another process may have replaced the leftover between our
    check and the rename; what was moved aside is therefore checked again, and a readable
    conversion is put back (or, if ``entry`` was taken again meanwhile, dropped: an equal
    conversion is there).
    """
    aside = entry.with_name(f".old-{uuid.uuid4().hex}")
    try:
        os.rename(entry, aside)
    except FileNotFoundError:
        return  # another process cleared it first
    if _read(aside) is not None:
        try:
            os.rename(aside, entry)
            return
        except OSError:
            pass
    shutil.rmtree(aside, ignore_errors=True)


#: The batch size the check runs besides 1 when the source's batch dimension is dynamic: operators
#: that mix the samples of a batch, and runtimes that run a batch sample by sample, differ there.
CHECK_BATCH: Final = 3
#: What the check gives a dynamic dimension besides the batch (H, W, a sequence length).
CHECK_SIZE: Final = 32

#: One run of the source: (batch size, feeds, the reference's outputs).
_Run = tuple[int, dict[str, np.ndarray], dict[str, np.ndarray]]


def _check(backend: Converter, source: Path, converted: Path, options: SessionOptions) -> Check:
    """Run source and converted model on the same seeded inputs and compare every output: at
    batch 1, and at :data:`CHECK_BATCH` too when the source takes any batch size."""
    reference = _reference_backend(source.suffix.lower(), exclude=backend.name)
    if reference is None:
        note = "no other installed backend reads the source format"
        if source.suffix.lower() == ".onnx":
            note += ' (pip install "unifer[onnxruntime]" to check conversions of ONNX models)'
        warn_user(
            f"{source.name} was converted to {backend.name} without checking its outputs: {note}"
        )
        return Check(reference=None, note=note)
    ref_session = _open_source(reference, source, backend.name, options)
    try:
        runs = _reference_runs(ref_session, source, backend.name)
        dynamic_batch = any(s.shape and not isinstance(s.shape[0], int) for s in ref_session.inputs)
    finally:
        ref_session.close()
    # The caller's backend_options open the converted model (it may need them to load at all, as
    # an ncnn model with undeclared input sizes does); the precision is fp32, the reference's.
    fp32 = SessionOptions(threads=options.threads, cache_dir=options.cache_dir, extra=options.extra)
    session = _registry.open_session(backend, converted, fp32)
    try:
        parities = [(batch, _compare_run(session, feeds, want)) for batch, feeds, want in runs]
    finally:
        session.close()
    parity = worst(p for _, p in parities)
    return Check(
        reference=reference.name,
        max_abs_diff=parity.max_abs_diff,
        max_relative_diff=parity.max_relative_diff,
        min_cosine=parity.min_cosine,
        passed=parity.within(),
        note=_failure(parities)
        or (
            f"compared at batch 1 only: the source itself cannot run a batch of {CHECK_BATCH}"
            if dynamic_batch and len(runs) == 1
            else None
        ),
    )


def _reference_runs(session: Session, source: Path, target: str) -> list[_Run]:
    """The source's runs at each batch size the check compares.

    Dynamic dimensions besides the batch (an image's H and W, a sequence length) are given
    :data:`CHECK_SIZE`, where a 3x3 convolution uses every tap (at 1 only the centre one), or 1
    where the source cannot run at that size.
    """
    fill = CHECK_SIZE
    try:
        runs = [_run(session, 1, fill)]
    except InferenceError as exc:
        if not any(not isinstance(d, int) for s in session.inputs for d in s.shape[1:]):
            raise _unrunnable(source, target, session, exc, "") from exc
        fill = 1
        try:
            runs = [_run(session, 1, fill)]
        except InferenceError as again:
            tried = f"; dynamic sizes at {CHECK_SIZE}, then 1"
            raise _unrunnable(source, target, session, again, tried) from again
    if any(spec.shape and not isinstance(spec.shape[0], int) for spec in session.inputs):
        # A batch dimension declared dynamic that the source itself cannot use (a Reshape fixed
        # to 1) leaves nothing to compare at that size.
        with contextlib.suppress(InferenceError):
            runs.append(_run(session, CHECK_BATCH, fill))
    return runs


def _run(session: Session, batch: int, fill: int) -> _Run:
    feeds = seeded_feeds(session.inputs, batch=batch, fill=fill)
    return batch, feeds, session.run(feeds)


def _unrunnable(
    source: Path, target: str, session: Session, exc: InferenceError, tried: str
) -> ModelLoadError:
    inputs = ", ".join(map(str, session.inputs))
    return ModelLoadError(
        f"the conversion of {source.name} to {target} cannot be checked: the reference could not "
        f"run the source on seeded inputs ({inputs}{tried}): {exc.message}"
    )


def _compare_run(
    session: Session, feeds: dict[str, np.ndarray], want: dict[str, np.ndarray]
) -> Parity:
    """The converted model's outputs on ``feeds`` against the reference's; a converted model that
    cannot run what the source runs (a batch its inputs disagree on) fails the check, saying why,
    rather than the load."""
    try:
        got = session.run(feeds)
    except (InferenceError, InputError) as exc:
        return incomparable(f"the converted model cannot run it: {exc.message}")
    return compare(want, got, declared=session.outputs)


def _failure(parities: list[tuple[int, Parity]]) -> str | None:
    """Why the check failed, naming the batch size when batch 1 alone would have passed."""
    failed = [(batch, parity) for batch, parity in parities if not parity.within()]
    if not failed:
        return None
    batch, parity = failed[0]
    if batch == 1:
        return parity.problem
    return f"at batch {batch} (batch 1 matches): {parity.problem or 'the values differ'}"


def _open_source(reference: Backend, source: Path, target: str, options: SessionOptions) -> Session:
    """Open the source with the reference backend; a source it cannot load is unreadable.

    The converter may have produced something from a file that is no model at all (an empty ONNX
    file parses as an empty graph), so this is where a broken source shows: it must be reported
    as the source's fault, not as a problem of the reference backend the user never asked for.
    """
    try:
        return _registry.open_session(reference, source, SessionOptions(threads=options.threads))
    except ModelLoadError as exc:
        native = exc.__cause__ if exc.__cause__ is not None else exc
        detail = " ".join(str(native).split())  # runtimes' messages span lines
        raise ModelLoadError(
            f"the source model {source} is unreadable: {reference.name}, which checks the "
            f"conversion to {target} against it, could not load it ({detail}). Check that "
            f"{source.name} is a complete, valid model (re-export or re-download it)"
        ) from native


def _reference_backend(suffix: str, *, exclude: str) -> Backend | None:
    from ._engine import readers

    for name in _registry.reference_first(readers(suffix)):
        if name == exclude:
            continue
        if _registry.cached_probe(name).ok:
            return _registry.get_backend(name)
    return None
