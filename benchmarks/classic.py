"""The classic CPU study, run with ``unifer.bench`` and compared with the raw-runtime baseline.

ArcFace IResNet100 on every installed backend that reads ONNX, for each thread count from 1 to the
physical cores plus the runtime default: average latency and peak memory per thread count, output
integrity against onnxruntime, the runtime libraries, load time, throughput and energy. It is
exactly ``unifer bench --out DIR`` (same code, same report files), plus mxnet from its own
environment when ``backends/mxnet/.venv`` exists (``unifer bench --python mxnet=...``). After the
run it writes ``baseline_comparison.md``, which sets the medians measured through ``Engine``
beside the raw-runtime medians that the design notes (``shared/design/BASELINE.md``) recorded on
the development machine.

    uv run python benchmarks/classic.py                     # full run, ~15 min on 2 cores
    uv run python benchmarks/classic.py --compare-only      # redo the comparison from results.json
    uv run python benchmarks/classic.py --quick --out /tmp/classic-quick   # smoke test, r18
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path
from typing import Any

from unifer import bench

OUT = Path(__file__).parent / "results" / "classic"
#: mxnet needs numpy < 1.24, so it runs in its own environment: `uv sync --project backends/mxnet`.
MXNET_PYTHON = Path(__file__).parents[1] / "backends" / "mxnet" / ".venv" / "bin" / "python"

#: Raw-runtime medians (ms) of IResNet100, batch 1, fp32, from BASELINE.md (measured 2026-11 on
#: the development machine: fresh process per config, 3 rounds x 20 runs, "copy in, run, copy out").
#: Keyed by unifer backend name; thread count -> median ms. Only faithful-fp32 rows are listed.
BASELINE_MS: dict[str, dict[int, float]] = {
    "openvino": {1: 226, 2: 118},
    "onnxruntime": {1: 257, 2: 140},
    "opencv": {1: 255, 2: 138},
    "ncnn": {1: 175, 2: 92},  # fp32 with Winograd on (ncnn's default convolution choice)
    "litert": {1: 258, 2: 136},  # LiteRT CompiledModel (XNNPACK)
    "mxnet": {1: 269, 2: 141},
}
BASELINE_RSS_2T_MIB: dict[str, float] = {
    "openvino": 666,
    "onnxruntime": 765,
    "ncnn": 1500,
    "litert": 566,
    "mxnet": 894,
}


def comparison(result: bench.Result) -> str:
    """Markdown: the measured medians beside BASELINE.md's raw-runtime medians, per thread count."""
    lines = [
        "# Classic study vs the raw-runtime baseline",
        "",
        "Measured with `unifer bench` on the same machine that BASELINE.md was measured on. The",
        "baseline calls each runtime directly (copy in, run, copy out). The comparable figure is",
        "therefore the **model-only** median through `Engine.run`. The end-to-end median adds",
        "preprocessing (uint8 RGB -> normalised NCHW float32, about 0.1 ms). The machine is shared",
        "and noisy (BASELINE.md: per-round medians of one configuration moved by up to ~40%), so",
        "ratios within about 0.9-1.1 are ties.",
        "",
        "| backend | threads | baseline median ms | model-only median ms | ratio | "
        "end-to-end median ms | peak RSS MiB (baseline 2T) |",
        "|---|---|---|---|---|---|---|",
    ]
    if result.model.get("name") != "arcface-r100":
        lines[2:] = [
            f"BASELINE.md has raw-runtime numbers for arcface-r100 only; this run measured "
            f"{result.model.get('spec')}, so there is nothing to compare.",
            "",
        ]
        return "\n".join(lines)
    for record in result.ok_records():
        base = BASELINE_MS.get(record["backend"], {})
        applied = record["settings"].get("threads")
        threads = record["threads"] if record["threads"] is not None else applied
        reference = base.get(threads) if isinstance(threads, int) else None
        model = record["latency"]["model_only"]["median_ms"]
        e2e = (record["latency"].get("end_to_end") or {}).get("median_ms")
        label = record["threads_label"] + (
            f" ({applied})" if record["threads"] is None and applied else ""
        )
        rss_base = BASELINE_RSS_2T_MIB.get(record["backend"])
        lines.append(
            f"| {record['backend']} | {label} | {reference if reference else '-'} | "
            f"{model:.1f} | {f'{model / reference:.2f}' if reference else '-'} | "
            f"{f'{e2e:.1f}' if e2e else '-'} | {record['memory']['peak_rss_mib']:.0f}"
            f"{f' ({rss_base:.0f})' if rss_base else ''} |"
        )
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--model", default=bench.DEFAULT_MODEL)
    parser.add_argument("--quick", action="store_true", help="arcface-r18 and short runs")
    parser.add_argument("--compare-only", action="store_true", help="reuse OUT/results.json")
    parser.add_argument("--min-runs", type=int)
    parser.add_argument("--min-time", type=float)
    parser.add_argument(
        "--mxnet-python",
        type=Path,
        default=MXNET_PYTHON if MXNET_PYTHON.exists() else None,
        help="python of the mxnet environment (default: backends/mxnet/.venv, when it exists)",
    )
    args = parser.parse_args()

    if args.compare_only:
        result = bench.read_results(args.out / "results.json")
    else:
        settings = bench.QUICK if args.quick else bench.DEFAULT
        overrides: dict[str, Any] = {}
        if args.min_runs is not None:
            overrides["min_runs"] = args.min_runs
        if args.min_time is not None:
            overrides["min_time_s"] = args.min_time
        settings = dataclasses.replace(settings, **overrides)
        model = args.model
        if args.quick and model == bench.DEFAULT_MODEL:
            model = bench.QUICK_MODEL
        result = bench.run(
            model,
            settings=settings,
            progress=bench.TerminalProgress(sys.stderr),
            command=shlex.join(["python", "benchmarks/classic.py", *sys.argv[1:]]),
            interpreters={"mxnet": args.mxnet_python} if args.mxnet_python else None,
        )
        written = bench.write_report(result, args.out)
        print(bench.format_table(result))
        print(f"\nreport: {args.out}/report.md; plots: {written['plots']}")
    text = comparison(result)
    (args.out / "baseline_comparison.md").write_text(text)
    print()
    print(text)


if __name__ == "__main__":
    main()
