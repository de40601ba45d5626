"""unifer's one cache directory, and atomic writes into it.

Compiled models, converted models and auto-selection decisions all live under one directory:
``$UNIFER_CACHE_DIR`` when set, else the platform's user cache directory (platformdirs). Nothing is
ever written next to the user's model. Writes go to a temporary file in the same directory and are
moved into place with ``os.replace``, so a reader never sees half a file, even with two writers.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Final

from ._errors import CacheError

CACHE_DIR_ENV: Final = "UNIFER_CACHE_DIR"


def cache_root() -> Path:
    """The cache directory's path (not created)."""
    root = os.environ.get(CACHE_DIR_ENV)
    if root:
        return Path(root).expanduser()
    import platformdirs  # imported here: only needed once something is cached

    return Path(platformdirs.user_cache_dir("unifer", appauthor=False))


def cache_dir(*parts: str) -> Path:
    """Return (and create) the cache directory, or a subdirectory of it.

    Raises:
        CacheError: it cannot be created (a read-only parent, a file in the way, no space).
    """
    path = cache_root().joinpath(*parts)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise cache_error(path, exc) from exc
    return path


def usable_cache_dir(*parts: str) -> Path | None:
    """:func:`cache_dir` when it can be written, else None (caching nothing), said once: a cache
    only speeds work up and must not fail it (a service user without a writable home)."""
    try:
        path = cache_dir(*parts)
    except CacheError as exc:
        problem = exc.message
    else:
        if os.access(path, os.W_OK | os.X_OK):
            return path
        problem = cache_error(path, PermissionError("not writable")).message
    if cache_root() not in _warned:  # once per process: every backend has a directory there
        _warned.add(cache_root())
        from .backend import warn_user  # the backend module imports this one

        warn_user(f"{problem}; going on without caching there")
    return None


_warned: set[Path] = set()


def cache_error(path: Path, exc: OSError) -> CacheError:
    """The error for a cache location ``path`` that ``exc`` says cannot be written."""
    return CacheError(
        f"unifer's cache directory cannot be used at {path} ({type(exc).__name__}: {exc}). Make "
        f"it writable, free space there, or point ${CACHE_DIR_ENV} at a writable directory"
    )


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old or the new file, whole.

    Raises OSError when the directory is not writable or (Windows) a reader holds ``path``; the
    temporary file is removed then. Callers whose file is only a shortcut (the digest memo, auto
    decisions) catch it: a cache that cannot be written must not fail the work it would speed up.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not mkstemp: its 0600 mode would survive the rename, hiding the file from the other users
    # of a shared cache directory; 0666 less the umask is what an ordinary write gives.
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def exclusive(file: IO[str], deadline: float) -> Iterator[bool | None]:
    """Hold an exclusive ``flock`` on ``file`` (across processes, and across the threads of one
    that opened it separately), waiting until ``deadline`` (``time.monotonic()``) at most; yields
    True when held, False when the wait ran out, None where the OS has no ``flock`` (Windows)."""
    try:
        import fcntl
    except ImportError:
        yield None
        return
    while True:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                yield False
                return
            time.sleep(0.05)
    try:
        yield True
    finally:
        fcntl.flock(file, fcntl.LOCK_UN)


def sha256_file(path: Path) -> str:
    """The sha256 of a file's content, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
