"""Which files a model consists of, and their content digests, remembered across processes.

Cache keys (auto-selection decisions, conversions, built-in models) name a model by the sha256 of
its content, :func:`model_digest`: the content of every file it consists of (:func:`model_files`),
because a model's weights may sit in a file of their own (ONNX external data, an IR ``.bin``) that
changes while the file the user names stays byte-identical.

Hashing a 260 MB model takes about 0.3 s, and walking its ONNX graph for external-data files a few
ms, which a process loading a model whose decision is cached should not pay again: both are
remembered for large files in ``digests-v1.json`` in the cache directory, keyed by the file's
resolved path and its identity on disk (size, mtime and ctime in ns, inode, device). Any write to
the file changes its ctime, which no tool can set back, so a changed file is always read again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import mmap
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final, TypeGuard, TypeVar

from ._cache import atomic_write_bytes, cache_root, sha256_file
from ._protowire import LEN, fields

MEMO_FILE: Final = "digests-v1.json"
#: Smaller files are read faster than the memo file is read and written.
REMEMBER_FROM_BYTES: Final = 1 << 20
#: Oldest entries are dropped beyond this many, so the memo (on disk and in memory) stays small.
MAX_ENTRIES: Final = 256

_T = TypeVar("_T")
_in_process: dict[tuple[str, tuple[int, ...], str], object] = {}
_in_process_lock = threading.Lock()
_MISSING: Final = object()


def content_digest(path: Path) -> str:
    """The sha256 of ``path``'s content, hashed at most once per version of the file."""
    return remembered(path, "sha256", sha256_file, is_str)


def model_digest(path: Path) -> str:
    """The digest that names the model at ``path`` in cache keys: the sha256 of its content when it
    is one file, else the sha256 of the name and content digest of each of its files, so a change
    to any of them (an ONNX model's external weights, an IR ``.bin``) makes a new key."""
    files = model_files(path)
    if len(files) == 1:
        return content_digest(path)
    parts = "\0".join(f"{f.name}\0{content_digest(f)}" for f in files)
    return hashlib.sha256(parts.encode()).hexdigest()


def model_files(path: Path) -> list[Path]:
    """Every file the model at ``path`` consists of: ``path`` first, then the existing files that
    loading it reads besides (a file it names that does not exist fails the load itself).

    - ``.onnx``: the external-data files its tensors reference, read from the protobuf wire format
      without the ``onnx`` package and without reading the weights; a file that is not a
      well-formed ModelProto names only itself (no runtime can read it, and each says why).
    - ``.xml`` (OpenVINO IR) and ``.param`` (ncnn): the ``.bin`` of the same stem.
    - ``<prefix>-symbol.json`` (MXNet): every ``<prefix>-NNNN.params`` beside it, since the
      ``epoch`` backend option picks one of them (the newest by default).
    """
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        extra = _onnx_external_files(path)
    elif suffix in (".xml", ".param"):
        extra = [path.with_suffix(".bin")]
    elif path.name.lower().endswith(_MXNET_SYMBOL):
        extra = _mxnet_params(path)
    else:
        extra = []
    return [path, *(f for f in extra if f.is_file() and f != path)]


def missing_external_data(path: Path) -> list[Path]:
    """The external-data files an ONNX model at ``path`` names that do not exist (every
    runtime would fail to load it, each in its own words)."""
    if path.suffix.lower() != ".onnx":
        return []
    return [f for f in _onnx_external_files(path) if not f.is_file()]


def is_str(value: object) -> TypeGuard[str]:
    return isinstance(value, str)


def _is_str_list(value: object) -> TypeGuard[list[str]]:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def remembered(
    path: Path, field: str, compute: Callable[[Path], _T], valid: Callable[[object], TypeGuard[_T]]
) -> _T:
    """``compute(path)``, stored as ``field`` of the file's memo entry: computed at most once per
    version of the file in this process, and for large files once across processes."""
    resolved = str(path.resolve())
    stat = path.stat()
    identity = (stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, stat.st_dev)
    key = (resolved, identity, field)
    found = _in_process.get(key, _MISSING)  # one lookup: another thread may evict it meanwhile
    if found is not _MISSING:
        return found  # type: ignore[return-value]  # stored by this function: a _T
    remembered = stat.st_size >= REMEMBER_FROM_BYTES
    memo = _read_memo() if remembered else {}
    entry = memo.get(resolved)
    if not isinstance(entry, dict) or entry.get("identity") != list(identity):
        entry = {"identity": list(identity)}  # another version of the file: forget all of it
    value = entry.get(field)
    if not valid(value):
        value = compute(path)
        if remembered:
            memo.pop(resolved, None)  # re-inserted last: the dict's order is the age order
            memo[resolved] = {**entry, field: value}
            _write_memo(dict(list(memo.items())[-MAX_ENTRIES:]))
    with _in_process_lock:  # loads in several threads: the eviction iterates the dict
        _in_process[key] = value
        while len(_in_process) > MAX_ENTRIES:  # a long-lived process seeing many file versions
            del _in_process[next(iter(_in_process))]  # the oldest
    return value


def _memo_path() -> Path:
    return cache_root() / MEMO_FILE  # written by atomic_write_bytes, which creates the directory


def _read_memo() -> dict[str, object]:
    """The remembered entries; an unreadable or foreign file counts as empty (it is rebuilt)."""
    try:
        data = json.loads(_memo_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_memo(memo: dict[str, object]) -> None:
    # Two processes writing at once: the last one wins and the other's entry is read again next
    # time, which costs time, never correctness.
    # A read-only cache directory only costs the reading.
    with contextlib.suppress(OSError):
        atomic_write_bytes(_memo_path(), json.dumps(memo, indent=0).encode())


_MXNET_SYMBOL: Final = "-symbol.json"


def _mxnet_params(symbol: Path) -> list[Path]:
    # The naming rule of mx.model.save_checkpoint, as unifer-mxnet reads it.
    pattern = re.compile(re.escape(symbol.name[: -len(_MXNET_SYMBOL)]) + r"-\d{4,}\.params")
    return sorted(p for p in symbol.parent.iterdir() if pattern.fullmatch(p.name))


def _onnx_external_files(path: Path) -> list[Path]:
    """The files named by the ``location`` of every tensor's external data, relative to the
    model's directory as the ONNX spec says."""
    locations = remembered(path, "external_data", _read_locations, _is_str_list)
    return [path.parent / location for location in locations]


def _read_locations(path: Path) -> list[str]:
    if path.stat().st_size == 0:
        return []
    with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        try:
            return list(dict.fromkeys(_locations(buf, 0, len(buf), "model")))
        except (ValueError, RecursionError):
            return []  # not a ModelProto: it names no other file


# How to reach every TensorProto of a ModelProto (field numbers of onnx/onnx.proto, stable since IR
# version 3): the graph's initializers, node attributes (Constant values, also in the subgraphs of
# If/Loop/Scan and in model-local functions), sparse tensors and training graphs. onnx's own
# external-data helper looks at a subset of these.
_CHILDREN: Final[dict[str, dict[int, str]]] = {
    "model": {7: "graph", 20: "training", 25: "function"},
    "training": {1: "graph", 2: "graph"},
    "function": {7: "node"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
    "tensor": {13: "external_data"},
}


def _locations(buf: mmap.mmap, start: int, end: int, message: str) -> Iterator[str]:
    """The external-data locations in the ``message`` that spans ``buf[start:end]``."""
    if message == "external_data":  # StringStringEntryProto: key = 1, value = 2
        entry = {n: buf[a:b] for n, wire, a, b in fields(buf, start, end) if wire == LEN}
        if entry.get(1) == b"location" and entry.get(2):
            yield entry[2].decode("utf-8")
        return
    children = _CHILDREN[message]
    for number, wire, a, b in fields(buf, start, end):
        if wire == LEN and number in children:
            yield from _locations(buf, a, b, children[number])


__all__ = ["content_digest", "model_digest", "model_files"]
