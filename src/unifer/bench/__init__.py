"""``unifer.bench``: which runtime, how many threads, how much memory, and is the answer the same.

Reproduces the classic CPU inference-framework study (average latency per thread count, peak
memory, output integrity, runtime libraries) for any installed backend, through the same
:class:`unifer.Engine` users call, and adds load time, throughput, percentiles and energy::

    from unifer import bench

    result = bench.run("builtin:arcface-r100")          # every available backend, 1..N threads
    print(bench.format_table(result))
    bench.write_report(result, "bench-out")             # results.json/.csv, report.md, PNG plots

Every configuration runs in its own fresh process (``python -m unifer.bench._worker``), so memory
and loaded libraries are that backend's alone and the first load is really cold. Timing goes
through :mod:`unifer._timing`, the primitive ``backend="auto"`` shares. See ``docs/bench.md``.
"""

from __future__ import annotations

from ._grid import (
    DEFAULT,
    DEFAULT_MODEL,
    QUICK,
    QUICK_MODEL,
    Config,
    Settings,
    default_threads,
    parse_threads,
    plan,
)
from ._integrity import TOLERANCES, Tolerance
from ._progress import TerminalProgress
from ._report import PLOTS, format_table, read_results, to_csv, to_json, write_report
from ._run import SCHEMA, Progress, ProgressCallback, Result, available_backends, run

__all__ = [
    "DEFAULT",
    "DEFAULT_MODEL",
    "PLOTS",
    "QUICK",
    "QUICK_MODEL",
    "SCHEMA",
    "TOLERANCES",
    "Config",
    "Progress",
    "ProgressCallback",
    "Result",
    "Settings",
    "TerminalProgress",
    "Tolerance",
    "available_backends",
    "default_threads",
    "format_table",
    "parse_threads",
    "plan",
    "read_results",
    "run",
    "to_csv",
    "to_json",
    "write_report",
]
