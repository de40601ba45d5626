"""ncnn after ``fork()``: its OpenMP runtime does not survive it.

The ncnn wheel bundles GNU libgomp. Once a process has run ncnn on several threads, libgomp's
thread pool exists in that process only; a child forked from it (``gunicorn --preload``,
``multiprocessing`` with the fork start method) that runs ncnn on several threads waits forever
at libgomp's team barrier for threads that were never forked -- with a new ``Net`` too. One
thread needs no team and works. So, in such a child, a multi-threaded load or run is refused
with an error that says so, instead of hanging.
"""

from __future__ import annotations

import os
from typing import Final

from unifer import InferenceError, UnsupportedOptionError

_WHY: Final = (
    "this process was forked from one that had already run ncnn on several threads, and ncnn's "
    "OpenMP runtime (GNU libgomp) hangs forever in such a child"
)
_FIX: Final = (
    "use threads=1 in this process, load ncnn models only after forking (gunicorn without "
    "--preload), or start workers with multiprocessing's 'spawn' or 'forkserver' method"
)

_ran_parallel = False  # this process has started libgomp's thread pool
_inherited = False  # ...or was forked from one that had


def note_run(threads: int) -> None:
    """Record that ncnn ran on ``threads`` threads in this process."""
    global _ran_parallel
    if threads > 1:
        _ran_parallel = True


def check_load(threads: int) -> None:
    """Refuse to load a model that would run multi-threaded in a child that cannot."""
    if _inherited and threads > 1:
        raise UnsupportedOptionError(f"ncnn cannot run on {threads} threads here: {_WHY}; {_FIX}")


def check_run(threads: int) -> None:
    """Refuse to run a session opened before the fork on several threads."""
    if _inherited and threads > 1:
        raise InferenceError(
            f"this ncnn engine runs on {threads} threads, and {_WHY}; load the model again in "
            f"this process with threads=1, or {_FIX.split(', ', 1)[1]}",
            backend="ncnn",
        )


def _after_fork_in_child() -> None:
    global _inherited
    _inherited = _inherited or _ran_parallel


os.register_at_fork(after_in_child=_after_fork_in_child)
