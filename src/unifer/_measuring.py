"""One auto measurement per decision key at a time across processes, and the candidates that
crashed one.

Processes started together (a server's workers) would each measure while the others do: every
measurement slowed down, and the workers could end up on different backends. The first takes a
lock file; the others wait for it, then find its decision in the cache.

Measuring runs each candidate in this process: a runtime that crashes it (a segfault, an abort)
would crash every later load too, each measuring again. So the candidate being measured is
written down first; a process that finds that record under the lock knows its writer died while
measuring that candidate. A process can also die from outside (SIGKILL, a worker timeout), so one
death is only counted: a candidate that took :data:`DEATHS` measurements down with it is passed
over (and listed as such) until the key changes (another runtime or unifer version), or the
record is cleared (``unifer cache clear``). A measurement that gets past a candidate forgets its
deaths.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any, Final

from ._cache import atomic_write_bytes, cache_dir, cache_root, exclusive

logger = logging.getLogger("unifer.auto")

#: Seconds a process waits for another's measurement before measuring anyway (a hung runtime
#: must not hang every later load).
LOCK_WAIT_S: Final = 120.0
#: Measurements a candidate must have died in to be passed over.
DEATHS: Final = 2


class Record:
    """What is being measured for one key, and what crashed earlier measurements of it."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        data = _read(path) if path is not None else {}
        deaths = data.get("deaths", {})
        self._deaths: dict[str, list[str]] = {
            str(k): [str(t) for t in v]
            for k, v in (deaths.items() if isinstance(deaths, dict) else ())
            if isinstance(v, list)
        }
        running = data.get("measuring")
        if isinstance(running, dict) and isinstance(running.get("candidate"), str):
            # Its writer held the lock we hold now, and never finished: it died measuring it.
            self._deaths.setdefault(running["candidate"], []).append(
                str(running.get("started", "?"))
            )
            self._write(None)

    @property
    def crashed(self) -> dict[str, str]:
        """Candidates (as ``str(candidate)``) to pass over -> when they last took one down."""
        return {c: times[-1] for c, times in self._deaths.items() if len(times) >= DEATHS}

    def now(self, candidate: str | None) -> None:
        """Note that ``candidate`` is about to be opened and measured (None: done)."""
        self._write(candidate)

    def survived(self, candidates: Iterable[str]) -> None:
        """Forget the deaths of ``candidates``: this measurement got past them."""
        for candidate in candidates:
            self._deaths.pop(candidate, None)
        self._write(None)

    def _write(self, candidate: str | None) -> None:
        if self._path is None:
            return
        if candidate is None and not self._deaths:
            self._path.unlink(missing_ok=True)
            return
        data: dict[str, Any] = {"deaths": self._deaths}
        if candidate is not None:
            started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            data["measuring"] = {"candidate": candidate, "pid": os.getpid(), "started": started}
        with contextlib.suppress(OSError):  # a record that cannot be written only costs memory
            atomic_write_bytes(self._path, json.dumps(data).encode())


@contextlib.contextmanager
def measuring(key: str) -> Iterator[Record]:
    """Hold the lock for ``key`` while measuring, and the record of what is measured: the
    threads of this process take turns, then the processes; together they wait at most
    :data:`LOCK_WAIT_S`. Best effort: without a writable cache directory (or ``fcntl``) only the
    threads take turns, and nothing is recorded."""
    deadline = time.monotonic() + LOCK_WAIT_S
    with _threads_turn(key, deadline):
        try:
            directory = cache_dir("locks")
            lock = (directory / f"auto-{key}.lock").open("a")
        except OSError:
            yield Record(None)
            return
        with lock:
            yield from _holding(lock, directory, key, deadline)


def _holding(lock: IO[str], directory: Path, key: str, deadline: float) -> Iterator[Record]:
    with exclusive(lock, deadline) as locked:
        if locked is False:  # None: no flock here (Windows), each process measures for itself
            logger.warning(
                "another process has been measuring for %s for over %.0f s; measuring "
                "without waiting for it",
                key,
                LOCK_WAIT_S,
            )
        # Unlocked, the record may be a live process's: neither read nor written.
        record = Record(directory / f"auto-{key}.json" if locked else None)
        try:
            yield record
        finally:
            record.now(None)


#: One lock per key for the threads of this process (a plain dict: keys are few).
_thread_locks: dict[str, threading.Lock] = {}
_thread_locks_guard = threading.Lock()


@contextlib.contextmanager
def _threads_turn(key: str, deadline: float) -> Iterator[None]:
    with _thread_locks_guard:
        lock = _thread_locks.setdefault(key, threading.Lock())
    taken = lock.acquire(timeout=max(0.0, deadline - time.monotonic()))
    if not taken:
        logger.warning(
            "another thread has been measuring for %s for over %.0f s; measuring without "
            "waiting for it",
            key,
            LOCK_WAIT_S,
        )
    try:
        yield
    finally:
        if taken:
            lock.release()


def _forget_thread_locks() -> None:
    """In a forked child: a lock some thread of the parent held at the fork would stay held
    forever (that thread does not exist here), and every load of its key would wait for it."""
    global _thread_locks_guard
    _thread_locks.clear()
    _thread_locks_guard = threading.Lock()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_forget_thread_locks)


def clear() -> int:
    """Forget every record of candidates that died measuring; returns how many keys had one."""
    try:
        records = list(cache_root().joinpath("locks").glob("auto-*.json"))
    except OSError:
        return 0
    for record in records:
        record.unlink(missing_ok=True)
    return len(records)


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
