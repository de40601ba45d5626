"""The live progress display of ``unifer bench``: what is running, for how long, what came out.

On a terminal the current step is redrawn in place on one line and each finished configuration
leaves one summary line; into a file or pipe every step is its own line (no control characters).
It writes to the stream it is given (stderr in the CLI), so stdout stays the table or the JSON.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, TextIO

from ._report import _headline, threads_text
from ._run import Progress


class TerminalProgress:
    """A :data:`~unifer.bench.ProgressCallback` that renders to ``stream``."""

    def __init__(self, stream: TextIO, *, live: bool | None = None) -> None:
        self.stream = stream
        self.live = stream.isatty() if live is None else live
        self.started = time.monotonic()
        self.config_started = self.started
        self._width = 0

    def __call__(self, event: Progress) -> None:
        elapsed = time.monotonic() - self.started
        if event.phase == "starting":
            self.config_started = time.monotonic()
        where = f"[{event.index}/{event.total}]" if event.index else "[ref]"
        what = event.config.label if event.config is not None else ""
        if event.record is not None:
            self._line(f"{where} {what}: {_summary(event.record)}", final=True)
            return
        detail = ""
        if "round" in event.detail:
            detail = f" (round {event.detail['round']}/{event.detail['rounds']})"
        spent = time.monotonic() - self.config_started
        self._line(
            f"{where} {what} {event.phase}{detail}  {spent:5.1f} s  (total {elapsed:5.0f} s)"
        )

    def _line(self, text: str, *, final: bool = False) -> None:
        if self.live:
            padding = " " * max(0, self._width - len(text))
            self.stream.write("\r" + text + padding + ("\n" if final else ""))
            self._width = 0 if final else len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def _summary(record: Mapping[str, Any]) -> str:
    if record["status"] != "ok":
        return f"FAILED: {record['error']}"
    head = _headline(dict(record)) or {}
    integrity = record.get("integrity") or {}
    verdict = integrity.get("ok")
    ok = "n/a" if verdict is None else "yes" if verdict else "NO"
    peak = (record.get("memory") or {}).get("peak_rss_mib")
    return (
        f"threads {threads_text(dict(record))}: mean {head.get('mean_ms', 0):.2f} ms, "
        f"median {head.get('median_ms', 0):.2f} ms (n={head.get('n')}), "
        f"peak RSS {peak:.0f} MiB, integrity {ok}"
        if isinstance(peak, (int, float))
        else f"mean {head.get('mean_ms', 0):.2f} ms, integrity {ok}"
    )
