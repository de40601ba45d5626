"""Content digests of model files, remembered across processes.

Cache keys (auto-selection decisions, conversions, built-in models) name a model by the sha256 of
its content. Hashing a 260 MB model takes about 0.3 s, which a process loading a model whose
decision is cached should not pay again: digests of large files are remembered in
``digests-v1.json`` in the cache directory, keyed by the file's resolved path and its identity on
disk (size, mtime and ctime in ns, inode, device). Any write to the file changes its ctime, which no
tool can set back, so a changed file is always hashed again.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Final

from ._cache import atomic_write_bytes, cache_dir, sha256_file

MEMO_FILE: Final = "digests-v1.json"
#: Smaller files are hashed faster than the memo file is read and written.
REMEMBER_FROM_BYTES: Final = 1 << 20
#: Oldest entries are dropped beyond this many, so the memo stays small.
MAX_ENTRIES: Final = 256

_in_process: dict[tuple[str, tuple[int, ...]], str] = {}


def content_digest(path: Path) -> str:
    """The sha256 of ``path``'s content, hashed at most once per version of the file."""
    resolved = str(path.resolve())
    stat = path.stat()
    identity = (stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, stat.st_dev)
    key = (resolved, identity)
    if key in _in_process:
        return _in_process[key]
    remembered = stat.st_size >= REMEMBER_FROM_BYTES
    memo = _read_memo() if remembered else {}
    entry = memo.get(resolved)
    if isinstance(entry, dict) and entry.get("identity") == list(identity):
        digest = str(entry["sha256"])
    else:
        digest = sha256_file(path)
        if remembered:
            memo.pop(resolved, None)  # re-inserted last: the dict's order is the age order
            memo[resolved] = {"identity": list(identity), "sha256": digest}
            _write_memo(dict(list(memo.items())[-MAX_ENTRIES:]))
    _in_process[key] = digest
    return digest


def _memo_path() -> Path:
    return cache_dir() / MEMO_FILE


def _read_memo() -> dict[str, object]:
    """The remembered digests; an unreadable or foreign file counts as empty (it is rebuilt)."""
    try:
        data = json.loads(_memo_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_memo(memo: dict[str, object]) -> None:
    # Two processes writing at once: the last one wins and the other's entry is hashed again next
    # time, which costs time, never correctness.
    # A read-only cache directory only costs the hashing.
    with contextlib.suppress(OSError):
        atomic_write_bytes(_memo_path(), json.dumps(memo, indent=0).encode())


__all__ = ["content_digest"]
