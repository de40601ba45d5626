"""Engine's overhead over calling each runtime directly: interleaved rounds, ratio of medians.

For each backend, the same model file is opened twice with the same settings: once through
``unifer.Engine`` and once with the runtime's own Python API, configured as the plugin configures
it (same thread count, fp32, same optimisation level). Rounds alternate the two in shuffled order so
machine noise hits both alike; each timed call is "feed in, run, outputs out" (outputs copied to
the caller on both sides, as Engine guarantees). Reports the ratio of pooled medians for a
~100 ms model (ArcFace IResNet100) and the absolute per-call overhead on a tiny model.

    uv run python benchmarks/engine_overhead.py [--rounds 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import random
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

import unifer
from unifer import Engine, models
from unifer._parity import seeded_feeds
from unifer._timing import Stats, measure
from unifer.testing.models import mlp

Call = Callable[[], object]


def raw_onnxruntime(path: Path, feeds: dict[str, np.ndarray], threads: int) -> Call:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda: session.run(None, feeds)  # ORT returns fresh arrays: no copy needed


def raw_openvino(path: Path, feeds: dict[str, np.ndarray], threads: int) -> Call:
    import openvino as ov

    compiled = ov.Core().compile_model(
        str(path),
        "CPU",
        {
            "INFERENCE_NUM_THREADS": threads,
            "INFERENCE_PRECISION_HINT": "f32",
            "PERFORMANCE_HINT": "LATENCY",
        },
    )
    request = compiled.create_infer_request()

    def call() -> object:
        result = request.infer(feeds, share_inputs=True)
        return {port.get_any_name(): value.copy() for port, value in result.items()}

    return call


RAW = {"onnxruntime": raw_onnxruntime, "openvino": raw_openvino}


def compare(
    backend: str,
    path: Path,
    feeds: dict[str, np.ndarray],
    *,
    threads: int,
    rounds: int,
    runs: int,
    min_time_s: float,
) -> dict[str, object]:
    engine = Engine.load(path, backend=backend, threads=threads)
    calls = {"engine": lambda: engine.run(feeds), "raw": RAW[backend](path, feeds, threads)}
    per_round: dict[str, list[Stats]] = {"engine": [], "raw": []}
    order = list(calls)
    for _ in range(rounds):
        random.shuffle(order)
        for name in order:
            per_round[name].append(
                measure(calls[name], warmup=2, min_runs=runs, min_time_s=min_time_s)
            )
    engine.close()
    pooled = {name: Stats.pooled(parts) for name, parts in per_round.items()}
    return {
        "backend": backend,
        "model": path.name,
        "threads": threads,
        "engine": pooled["engine"].summary(),
        "raw": pooled["raw"].summary(),
        "ratio_of_medians": pooled["engine"].median_ms / pooled["raw"].median_ms,
        "overhead_us": (pooled["engine"].median_ms - pooled["raw"].median_ms) * 1e3,
        "round_medians_ms": {n: [p.median_ms for p in parts] for n, parts in per_round.items()},
        "engine_settings": {k: str(v) for k, v in engine.settings.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default="arcface-r100", help="built-in model for the big case")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    big = models.path(args.model)
    big_feeds = seeded_feeds([models.info(args.model).input])
    with tempfile.TemporaryDirectory() as tmp:
        toy = mlp(batch=1)
        tiny = toy.save(Path(tmp))
        results = []
        for backend in ("onnxruntime", "openvino"):
            results.append(
                compare(
                    backend,
                    big,
                    big_feeds,
                    threads=args.threads,
                    rounds=args.rounds,
                    runs=10,
                    min_time_s=0,
                )
            )
            results.append(
                compare(
                    backend,
                    tiny,
                    toy.feeds(),
                    threads=args.threads,
                    rounds=args.rounds,
                    runs=2000,
                    min_time_s=0.5,
                )
            )
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "unifer": unifer.__version__,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "python": platform.python_version(),
        },
        "rounds": args.rounds,
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "engine_overhead.json").write_text(json.dumps(report, indent=2))
    lines = [
        "# Engine overhead over the raw runtime",
        "",
        f"{report['date']}, unifer {report['unifer']}, {args.threads} threads, {args.rounds} "
        "interleaved rounds; medians of pooled per-call times.",
        "",
        "| backend | model | raw median ms | Engine median ms | ratio | overhead µs/call |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['backend']} | {r['model']} | {r['raw']['median_ms']:.4f} | "  # type: ignore[index]
            f"{r['engine']['median_ms']:.4f} | {r['ratio_of_medians']:.4f} | "  # type: ignore[index]
            f"{r['overhead_us']:.1f} |"
        )
    (args.out / "engine_overhead.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
