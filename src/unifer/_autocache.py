"""The per-machine cache of ``backend="auto"`` decisions: one JSON file in the cache directory.

Each entry maps a key (model digest, input shapes, objective, precisions, threads, runtime versions,
unifer version, hardware fingerprint) to the measured ranking. Writers take an exclusive lock on a
side file, re-read, merge and replace the file atomically, so two processes measuring at once both
land their entries. A corrupt file is reported once (logged) and rebuilt; it is never fatal, and
neither is a decision that cannot be written (read-only cache directory, a Windows reader holding
the file): it is logged, and measured again next time.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from ._cache import CACHE_DIR_ENV, atomic_write_bytes, cache_dir, cache_root

logger = logging.getLogger(__name__)

FILE_NAME: Final = "autoselect-v1.json"
SCHEMA: Final = 1
#: Decisions kept; each load parses the file (1,000 entries: ~2 MiB, ~16 ms).
MAX_ENTRIES: Final = 256


def cache_file() -> Path:
    """Where the decisions live (inside ``$UNIFER_CACHE_DIR`` or the user cache directory); not
    created by asking: reading a decision must work, and fail nothing, without a writable cache."""
    return cache_root() / FILE_NAME


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError):  # none yet, or no cache directory at all
        return {}
    except (OSError, ValueError) as exc:
        logger.warning("auto cache %s is unreadable (%s); rebuilding it", path, exc)
        return {}
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        logger.warning("auto cache %s has an unknown schema; rebuilding it", path)
        return {}
    entries = data.get("entries")
    return entries if isinstance(entries, dict) else {}


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # Windows: the atomic replace still keeps the file whole
        yield
        return
    with path.with_suffix(".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def entries() -> dict[str, Any]:
    """Every cached decision, by key."""
    return _read(cache_file())


def lookup(key: str) -> dict[str, Any] | None:
    """The cached decision for ``key``, if any."""
    entry = _read(cache_file()).get(key)
    return entry if isinstance(entry, dict) else None


def store(key: str, entry: dict[str, Any]) -> None:
    """Add or replace one decision, keeping what other processes wrote meanwhile.

    Never raises for the file system: the decision is only a shortcut for the next load, and the
    caller holds the measured winner's open session, which a failure here would lose.
    """
    try:
        path = cache_dir() / FILE_NAME
        with _locked(path):
            current = _read(path)
            current.pop(key, None)
            current[key] = entry  # last: the file's order is the age order
            # Every load reads the whole file: the oldest decisions go beyond MAX_ENTRIES.
            kept = dict(list(current.items())[-MAX_ENTRIES:])
            payload = {"schema": SCHEMA, "entries": kept}
            atomic_write_bytes(path, json.dumps(payload, indent=1).encode())
    except OSError as exc:
        logger.warning(
            "the auto decision could not be cached (%s: %s); the model loads anyway, and the next "
            "load measures again. Make the cache directory writable, or point $%s at one that is",
            type(exc).__name__,
            exc,
            CACHE_DIR_ENV,
        )


def clear() -> int:
    """Delete every decision; returns how many there were."""
    path = cache_file()
    if not path.parent.is_dir():
        return 0
    with _locked(path):
        count = len(_read(path))
        path.unlink(missing_ok=True)
    return count
