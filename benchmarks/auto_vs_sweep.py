"""Is backend="auto" as good as an exhaustive sweep? Its choice against the best measured config.

For each model: ``Engine.load(model, backend="auto", allow_conversion=True)`` chooses in a fresh
cache directory (so it really measures); then ``unifer.bench`` measures every candidate auto had
(same backends, the physical-core thread count, fp32), each in a fresh process, in one run. The
figure of merit is the bench's model-only median of auto's choice over the best median: auto
passes when that ratio is within 5 %.

    uv run python benchmarks/auto_vs_sweep.py [--models arcface-r18,arcface-r100]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from unifer import Engine, bench
from unifer._hardware import fingerprint

TOLERANCE = 0.05


def one_model(name: str, settings: bench.Settings) -> dict[str, Any]:
    spec = f"builtin:{name}"
    started = time.perf_counter()
    engine = Engine.load(spec, allow_conversion=True)
    auto_s = time.perf_counter() - started
    selection = engine.selection
    assert selection is not None
    engine.close()
    pool = sorted({t.candidate.backend for t in selection.trials if t.status == "measured"})
    threads = selection.chosen.threads
    result = bench.run(spec, backends=pool, threads=[threads], settings=settings)
    medians = {
        r["backend"]: r["latency"]["model_only"]["median_ms"]
        for r in result.records
        if r["status"] == "ok"
    }
    best = min(medians, key=medians.__getitem__)
    ratio = medians[selection.chosen.backend] / medians[best]
    return {
        "model": spec,
        "auto_choice": str(selection.chosen),
        "auto_source": selection.source,
        "auto_seconds": round(auto_s, 2),
        "auto_trials": [t.to_dict() for t in selection.trials],
        "sweep_model_only_median_ms": medians,
        "sweep_best": best,
        "ratio_auto_over_best": ratio,
        "within_tolerance": ratio <= 1 + TOLERANCE,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="arcface-r18,arcface-r100")
    parser.add_argument("--min-time", type=float, default=8.0, help="bench seconds per latency")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    settings = bench.Settings(warmup=3, min_runs=30, min_time_s=args.min_time, rounds=2)
    with tempfile.TemporaryDirectory() as cache:
        os.environ["UNIFER_CACHE_DIR"] = cache  # auto must measure, not reuse a decision
        rows = [one_model(name, settings) for name in args.models.split(",")]
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "tolerance": TOLERANCE,
        "machine": fingerprint(),
        "results": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "auto_vs_sweep.json").write_text(json.dumps(report, indent=2, default=str))
    lines = [
        "# backend='auto' against an exhaustive sweep",
        "",
        f"{report['date']}; command: `uv run python benchmarks/auto_vs_sweep.py`. Sweep: "
        "`unifer.bench`, model-only medians, fresh process per backend, same thread count.",
        "",
        "| model | auto chose | auto took s | sweep best | sweep medians ms | auto / best "
        "| within 5 % |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        medians = ", ".join(
            f"{b} {m:.1f}"
            for b, m in sorted(r["sweep_model_only_median_ms"].items(), key=lambda kv: kv[1])
        )
        lines.append(
            f"| {r['model']} | {r['auto_choice']} | {r['auto_seconds']} | {r['sweep_best']} | "
            f"{medians} | {r['ratio_auto_over_best']:.3f} | "
            f"{'yes' if r['within_tolerance'] else 'no'} |"
        )
    (args.out / "auto_vs_sweep.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
