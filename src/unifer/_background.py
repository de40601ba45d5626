"""How busy the rest of the machine was while something was being timed (a bench configuration,
auto's measurement).

On a shared machine another job can take a core for a minute and double one configuration's
latency. The bench worker (and auto) reads the system-wide CPU counters (``/proc/stat``) and its
own CPU time before and after its timed rounds; the difference is the CPU time everyone else used.
Reported as a fraction of the machine's capacity over that interval, with the hypervisor's steal
time apart, so a report can say which figures were disturbed instead of leaving the reader to
guess. The worker's own CPU time over the same interval, in cores kept busy, says what the
configuration costs the CPU: about its thread count for a CPU backend, far less for one that
computes on a GPU.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

_STAT: Final = Path("/proc/stat")
#: Above this fraction of the machine used by other processes, a figure is marked as disturbed.
DISTURBED: Final = 0.10
#: Shorter timed windows are not judged: /proc/stat's tick granularity swamps them.
MIN_WINDOW_S: Final = 0.5


@dataclass(frozen=True, slots=True)
class Sample:
    wall_s: float
    busy_s: float
    """CPU time of every process on every CPU (user, nice, system, irq, softirq), in seconds."""
    steal_s: float
    self_s: float
    """This process's own user + system CPU time, and its exited children's."""


def sample(stat: Path = _STAT) -> Sample | None:
    """The counters now, or None where ``/proc/stat`` cannot be read (not Linux)."""
    try:
        import resource  # Unix only, like /proc/stat

        first = stat.read_text().splitlines()[0].split()
        tick = os.sysconf("SC_CLK_TCK")
    except (ImportError, OSError, IndexError, ValueError, AttributeError):
        return None
    if first[0] != "cpu" or len(first) < 8:
        return None
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in first[1:8])
    steal = int(first[8]) if len(first) > 8 else 0
    # This process's and its children's (a converter run as a subprocess, once it has exited).
    own = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return Sample(
        wall_s=time.monotonic(),
        busy_s=(user + nice + system + irq + softirq) / tick,
        steal_s=steal / tick,
        self_s=sum(usage.ru_utime + usage.ru_stime for usage in own),
    )


def cpus(stat: Path = _STAT) -> int:
    """The CPUs ``/proc/stat`` counts in its aggregate line."""
    try:
        lines = stat.read_text().splitlines()
    except OSError:
        return os.cpu_count() or 1
    return sum(1 for line in lines if line[:3] == "cpu" and line[3:4].isdigit()) or 1


def between(before: Sample | None, after: Sample | None, cpu_count: int) -> dict[str, Any]:
    """Other processes' share of the machine between two samples, and this process's own CPU
    use in cores (JSON-ready)."""
    if before is None or after is None:
        return {"available": False, "reason": "no /proc/stat on this OS"}
    wall = after.wall_s - before.wall_s
    if wall <= 0:
        return {"available": False, "reason": "no time elapsed"}
    own = after.self_s - before.self_s  # from getrusage: microseconds, fine at any length
    if wall < MIN_WINDOW_S:
        # /proc/stat counts whole clock ticks (10 ms): over a few ms, one tick of another
        # process reads as several CPUs' worth of load.
        return {
            "available": False,
            "reason": f"timed for {wall * 1e3:.0f} ms, too short to tell (under "
            f"{MIN_WINDOW_S:g} s; /proc/stat counts 10 ms ticks)",
            "own_cpu_cores": own / wall,
        }
    capacity = wall * max(cpu_count, 1)
    other = min(1.0, max(0.0, ((after.busy_s - before.busy_s) - own) / capacity))
    steal = min(1.0, max(0.0, (after.steal_s - before.steal_s) / capacity))
    return {
        "available": True,
        "other_cpu": other,
        "steal": steal,
        "disturbed": other + steal > DISTURBED,
        "own_cpu_cores": own / wall,
    }
