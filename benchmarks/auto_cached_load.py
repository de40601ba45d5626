"""What does a cached ``backend="auto"`` decision cost a new process? Target: under 50 ms.

A fresh cache directory gets one measured decision; then, in fresh processes, interleaved, the
script times ``Engine.load(model, backend="auto")`` (answered from the cache) against
``Engine.load(model, backend=<the cached choice>, threads=..., precision=...)``, the load a user
who knew the answer would write. Both pay for importing and opening the winner's runtime; the
difference of the paired times is what the cached decision adds. Each auto load is also checked to
have been answered from the cache (``selection.source == "cache"``: nothing measured).

    uv run python benchmarks/auto_cached_load.py [--models arcface-r18,arcface-r100] [--rounds 15]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from unifer import Engine, models
from unifer._hardware import fingerprint

TARGET_MS = 50.0

#: Run in a fresh interpreter: time one load, after the imports every caller pays anyway.
CHILD = """
import json, sys, time
import unifer
kwargs = json.loads(sys.argv[2])
started = time.perf_counter()
engine = unifer.Engine.load(sys.argv[1], **kwargs)
load_s = time.perf_counter() - started
selection = engine.selection
print(json.dumps({"load_s": load_s, "source": selection.source if selection else "explicit"}))
"""


def load_in_new_process(path: Path, kwargs: dict[str, Any]) -> dict[str, Any]:
    # As users run it: with compiled bytecode cached (a shell or sandbox that disables it makes
    # every process compile each module it imports again, which auto, importing more plugin
    # modules, pays for more).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), json.dumps(kwargs)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def one_model(name: str, rounds: int) -> dict[str, Any]:
    path = models.path(name)
    engine = Engine.load(path, allow_conversion=True)
    assert engine.selection is not None
    chosen = engine.selection.chosen
    engine.close()
    auto_kwargs: dict[str, Any] = {"allow_conversion": True}
    explicit_kwargs = {
        "backend": chosen.backend,
        "threads": chosen.threads,
        "precision": chosen.precision,
    }
    load_in_new_process(path, auto_kwargs)  # discarded: writes the bytecode caches
    load_in_new_process(path, explicit_kwargs)
    auto_ms, explicit_ms, sources = [], [], set()
    for _ in range(rounds):  # interleaved, so drift hits both alike
        auto = load_in_new_process(path, auto_kwargs)
        sources.add(auto["source"])
        auto_ms.append(auto["load_s"] * 1e3)
        explicit_ms.append(load_in_new_process(path, explicit_kwargs)["load_s"] * 1e3)
    added = [a - e for a, e in zip(auto_ms, explicit_ms, strict=True)]
    return {
        "model": name,
        "chosen": str(chosen),
        "auto_sources": sorted(sources),
        "auto_load_median_ms": statistics.median(auto_ms),
        "explicit_load_median_ms": statistics.median(explicit_ms),
        "added_median_ms": statistics.median(added),
        "added_ms_per_round": [round(a, 1) for a in added],
        "within_target": sources == {"cache"} and statistics.median(added) < TARGET_MS,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="arcface-r18,arcface-r100")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="unifer-auto-cached-") as cache:
        os.environ["UNIFER_CACHE_DIR"] = cache  # inherited by the child processes
        results = [one_model(name, args.rounds) for name in args.models.split(",")]
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "rounds": args.rounds,
        "target_ms": TARGET_MS,
        "machine": fingerprint(),
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "auto_cached_load.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        '# Cached `backend="auto"` load in a new process',
        "",
        f"{report['date']}, {args.rounds} interleaved rounds of fresh processes; "
        "`uv run python benchmarks/auto_cached_load.py`.",
        "",
        "| model | cached choice | auto load (median) | explicit load (median) | added (median of "
        "pairs) | answered from |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['model']} | {r['chosen']} | {r['auto_load_median_ms']:.1f} ms | "
            f"{r['explicit_load_median_ms']:.1f} ms | {r['added_median_ms']:+.1f} ms | "
            f"{', '.join(r['auto_sources'])} |"
        )
    (args.out / "auto_cached_load.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
