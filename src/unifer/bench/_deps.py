"""Which shared libraries a backend brought into the process, read from ``/proc/self/maps``.

The worker takes one snapshot before the backend is loaded and one after its first inference; the
difference is what the runtime needed. Each library is classified by where it lives: ``system``
(the OS's library directories), ``python`` (the interpreter's own installation), ``package`` (a
Python distribution's site-packages folder, named by its top-level folder) or ``other`` (anything
else, e.g. a runtime installed under /opt). ``package`` and ``other`` are the "non-system"
dependencies a report lists: what a deployment has to ship.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path
from typing import Any, Final

#: Directories whose libraries the OS provides (a site-packages folder below them is not).
SYSTEM_DIRS: Final[tuple[str, ...]] = (
    "/lib/",
    "/lib64/",
    "/usr/lib/",
    "/usr/lib64/",
    "/usr/lib32/",
)
_SITE_MARKERS: Final = ("/site-packages/", "/dist-packages/")
_MAPS: Final = Path("/proc/self/maps")


def available() -> bool:
    """Whether this OS exposes the loaded libraries (Linux ``/proc/self/maps``)."""
    return _MAPS.is_file()


def loaded_libraries(maps: Path = _MAPS) -> set[str]:
    """Paths of the shared libraries mapped into this process (empty where unreadable)."""
    try:
        text = maps.read_text()
    except OSError:
        return set()
    return parse_maps(text)


def parse_maps(text: str) -> set[str]:
    """The shared-library paths in ``/proc/<pid>/maps`` text."""
    found: set[str] = set()
    for line in text.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) < 6:
            continue  # an anonymous mapping
        path = parts[5].strip()
        if path.endswith(" (deleted)"):
            path = path[: -len(" (deleted)")]
        name = path.rsplit("/", 1)[-1]
        if path.startswith("/") and (name.endswith(".so") or ".so." in name):
            found.add(path)
    return found


def classify(path: str) -> dict[str, Any]:
    """One library as a report row: ``path``, ``name``, ``kind``, ``package`` and ``size``."""
    kind, package = _kind(path)
    try:
        size: int | None = os.stat(path).st_size
    except OSError:
        size = None
    return {
        "path": path,
        "name": path.rsplit("/", 1)[-1],
        "kind": kind,
        "package": package,
        "size": size,
    }


def new_libraries(before: set[str], after: set[str]) -> dict[str, Any]:
    """The libraries in ``after`` but not ``before``, classified, non-system ones first."""
    rows = sorted(
        (classify(p) for p in after - before),
        key=lambda r: (r["kind"] in ("system", "python"), r["package"] or "", r["path"]),
    )
    non_system = [r for r in rows if r["kind"] in ("package", "other")]
    return {
        "available": True,
        "non_system": non_system,
        "system": [r for r in rows if r["kind"] == "system"],
        "python": [r for r in rows if r["kind"] == "python"],
        "non_system_bytes": sum(r["size"] or 0 for r in non_system),
    }


def unavailable(reason: str) -> dict[str, Any]:
    return {"available": False, "reason": reason, "non_system": [], "system": [], "python": []}


def _kind(path: str) -> tuple[str, str | None]:
    for marker in _SITE_MARKERS:
        if marker in path:
            top = path.split(marker, 1)[1].split("/", 1)[0]
            # auditwheel puts a wheel's vendored libraries in "<name>.libs" beside "<name>".
            return "package", top.removesuffix(".libs")
    if any(path.startswith(p) for p in _python_prefixes()):
        return "python", None
    if path.startswith(SYSTEM_DIRS) or path.startswith("/usr/local/lib/"):
        return "system", None
    return "other", None


def _python_prefixes() -> tuple[str, ...]:
    prefixes = {sys.base_prefix, sys.prefix, sysconfig.get_paths().get("stdlib", "")}
    # A distribution's Python (/usr) must not swallow every system library: only its own folders.
    return tuple(
        p.rstrip("/") + "/" for p in prefixes if p and p.rstrip("/") not in ("/usr", "/usr/local")
    )
