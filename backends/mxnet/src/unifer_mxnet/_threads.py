"""Apply ``threads=`` to MXNet, which reads its thread settings once: when mxnet is imported.

MXNet 1.9.1 sizes its OpenMP regions in a static initialiser of ``libmxnet.so``
(``src/engine/openmp.cc``): with ``OMP_NUM_THREADS`` set it uses that; with
``MXNET_OMP_MAX_THREADS`` set it caps at that; otherwise it takes **half** the CPUs on x86 (it
assumes hyper-threading), so a 2-core machine gets 1 thread by default. ``libgomp`` likewise reads
``OMP_NUM_THREADS`` when it is loaded. Nothing can change either afterwards, so this module sets
the variable before the one import, records what MXNet read, and reports later requests it cannot
honour. The variables are process-wide: they also reach other OpenMP libraries loaded later and
child processes.
"""

from __future__ import annotations

import os
import platform
import sys
import threading
import warnings
from dataclasses import dataclass
from typing import Final

from unifer.backend import warn_user

OMP_NUM_THREADS: Final = "OMP_NUM_THREADS"
MAX_THREADS: Final = "MXNET_OMP_MAX_THREADS"
#: Engine worker threads for CPU operators: independent operators run side by side, each with its
#: OpenMP threads. Left at MXNet's default (1), so ``threads=`` is the compute thread count.
WORKERS: Final = "MXNET_CPU_WORKER_NTHREADS"
#: MXNet logs "Subgraph backend MKLDNN is activated" to stderr at every bind unless this is 0.
SUBGRAPH_VERBOSE: Final = "MXNET_SUBGRAPH_VERBOSE"


@dataclass(frozen=True, slots=True)
class ImportState:
    """The environment MXNet read when it was imported, and who imported it."""

    omp_num_threads: str | None
    max_threads: str | None
    workers: str | None
    cpus: int
    x86: bool
    by_unifer: bool
    """False when mxnet was already imported when unifer first needed it."""

    @property
    def threads(self) -> int:
        """The OpenMP threads per operator MXNet uses, by its own rule (``openmp.cc``)."""
        if self.omp_num_threads is not None:
            first = _int(self.omp_num_threads.split(",")[0])
            if first is not None:
                return first
        limit = _int(self.max_threads) if self.max_threads is not None else None
        if limit is not None:
            return max(1, min(limit, self.cpus))
        return max(1, self.cpus >> 1 if self.x86 else self.cpus)

    @property
    def source(self) -> str:
        who = "unifer" if self.by_unifer else "your code (before unifer)"
        if self.omp_num_threads is not None and _int(self.omp_num_threads.split(",")[0]):
            return f"OMP_NUM_THREADS={self.omp_num_threads} when {who} imported mxnet"
        if self.max_threads is not None and _int(self.max_threads) is not None:
            return f"MXNET_OMP_MAX_THREADS={self.max_threads} when {who} imported mxnet"
        half = " (half the CPUs on x86)" if self.x86 else ""
        return f"mxnet's default{half}: OMP_NUM_THREADS was unset when {who} imported mxnet"


_lock = threading.Lock()
_state: ImportState | None = None

#: Held around every use of mxnet in the process (loading, converting, binding, running): MXNet's
#: executors are not thread-safe, and neither is its Python frontend across them.
MXNET_LOCK: Final = threading.Lock()


def _int(value: str | None) -> int | None:
    try:
        number = int(value) if value is not None else None
    except ValueError:
        return None
    return number if number is not None and number > 0 else None


def _snapshot(*, by_unifer: bool) -> ImportState:
    try:
        cpus = len(os.sched_getaffinity(0))  # what omp_get_num_procs() counts
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return ImportState(
        omp_num_threads=os.environ.get(OMP_NUM_THREADS),
        max_threads=os.environ.get(MAX_THREADS),
        workers=os.environ.get(WORKERS),
        cpus=cpus,
        x86=platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"),
        by_unifer=by_unifer,
    )


def import_mxnet(threads: int | None) -> dict[str, object]:
    """Import mxnet (once), with ``OMP_NUM_THREADS=threads`` when given, and report the result.

    Returns the thread entries of a session's ``settings``. Warns (UniferWarning) when mxnet was
    already imported with a different thread count, which can then no longer change.
    """
    global _state
    with _lock:
        if _state is None:
            if "mxnet" in sys.modules:
                _state = _snapshot(by_unifer=False)
            else:
                if threads is not None:
                    os.environ[OMP_NUM_THREADS] = str(threads)
                os.environ.setdefault(SUBGRAPH_VERBOSE, "0")
                state = _snapshot(by_unifer=True)
                with warnings.catch_warnings():
                    # mxnet's import trips numpy's and distutils' DeprecationWarnings (NEP 32
                    # financial functions, LooseVersion): noise nobody can act on any more.
                    warnings.simplefilter("ignore", DeprecationWarning)
                    import mxnet  # noqa: F401  # reads the variables above, once per process

                _state = state
        state = _state
    honoured = threads is None or threads == state.threads
    if not honoured:
        warn_user(
            f"mxnet cannot use threads={threads}: it runs {state.threads} OpenMP thread(s) per "
            f"operator in this process ({state.source}), and MXNet reads that only once, at "
            "import. Open every MXNet model in a process with the same threads=, or set "
            "OMP_NUM_THREADS before mxnet is imported"
        )
    return {
        "threads": state.threads,
        "threads_requested": threads,
        "threads_honoured": honoured,
        "threads_source": state.source,
        "threads_scope": "process",
        "cpu_worker_threads": _int(state.workers) or 1,
    }
