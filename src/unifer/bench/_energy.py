"""Energy counters: Linux powercap/RAPL package energy, or a reason why there is none.

Intel CPUs (and AMD Zen CPUs on kernels with the ``amd_energy``/RAPL powercap driver) expose a
cumulative energy counter per CPU package under ``/sys/class/powercap/intel-rapl:<n>/energy_uj``.
The bench reads the package counters before and after a timed loop and divides by the calls made.
The counter covers the whole package (every core, idle power, other processes), so the figure is
"package energy while this loop ran, per inference", not the inference's energy alone. Where the
counters are missing or unreadable (most VMs; non-root since 2020 on many distributions) the result
says so and carries no number: nothing is estimated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

POWERCAP: Final = Path("/sys/class/powercap")


@dataclass(frozen=True, slots=True)
class Domain:
    """One package-level RAPL counter."""

    name: str
    energy: Path
    max_range_uj: int | None


class Meter:
    """Reads every package-level RAPL domain; ``reason`` says why there are none."""

    def __init__(self, root: Path = POWERCAP) -> None:
        self.domains: list[Domain] = []
        self.reason: str | None = None
        # Package domains are "intel-rapl:<n>" (AMD's driver uses the same names); their children
        # "intel-rapl:<n>:<m>" (core, uncore, dram) are parts of the package and would double count.
        if not root.is_dir():
            self.reason = f"{root} does not exist (no powercap driver, or a VM without RAPL)"
            return
        candidates = sorted(p for p in root.glob("*rapl:*") if re.fullmatch(r".*rapl:\d+", p.name))
        if not candidates:
            self.reason = f"no RAPL package domain under {root}"
            return
        for path in candidates:
            energy = path / "energy_uj"
            try:
                int(energy.read_text())
            except PermissionError:
                self.reason = (
                    f"{energy} is not readable by this user (root only on most kernels since "
                    "2020); run as root or grant read access to measure energy"
                )
                self.domains = []
                return
            except (OSError, ValueError) as exc:
                self.reason = f"{energy} could not be read: {exc}"
                self.domains = []
                return
            self.domains.append(
                Domain(path.name, energy, _int_or_none(path / "max_energy_range_uj"))
            )

    @property
    def available(self) -> bool:
        return bool(self.domains)

    def read(self) -> list[int]:
        """The current counters, in microjoules, one per domain."""
        return [int(d.energy.read_text()) for d in self.domains]

    def joules(self, before: list[int], after: list[int]) -> float:
        """Energy between two readings, summed over domains; counter wrap-around handled."""
        total = 0
        for domain, start, end in zip(self.domains, before, after, strict=True):
            delta = end - start
            if delta < 0 and domain.max_range_uj:
                delta += domain.max_range_uj + 1
            total += max(delta, 0)
        return total / 1e6

    def describe(self) -> dict[str, Any]:
        """What the energy figures (if any) are based on, for the report."""
        if not self.available:
            return {"available": False, "reason": self.reason}
        return {
            "available": True,
            "source": "Linux powercap RAPL package counters (whole package, idle power included)",
            "domains": [d.name for d in self.domains],
        }


def _int_or_none(path: Path) -> int | None:
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return None
