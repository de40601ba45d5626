"""ArcFace r100 on a GPU machine: CPU backends against torch on CUDA and ncnn on Vulkan, all
through ``Engine``.

For each configuration (backend, device, precision, batch): load time, median latency of
``engine.run`` (CUDA work is synchronised inside ``run``, so these are wall-clock times of finished
inferences), and the outputs against onnxruntime fp32 on the CPU on the same seeded inputs (max
abs diff, cosine, and whether fp32 stays within the fp32 tolerance). Then what
``backend="auto"`` picks, measured (fresh cache) and static, with its explanation.

    python benchmarks/gpu/compare.py --out DIR      # see benchmarks/gpu/README.md

Runs on a machine without a GPU too: the CUDA rows then say why they were skipped.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from unifer import Engine, UniferError, models
from unifer._hardware import fingerprint, physical_cores
from unifer._parity import FP32_MAX_RELATIVE_DIFF, FP32_MIN_COSINE, compare, seeded_feeds
from unifer._timing import measure

#: (backend, device for Engine.load or None, precision); the first row is the reference.
CONFIGS: tuple[tuple[str, str | None, str], ...] = (
    ("onnxruntime", None, "fp32"),
    ("openvino", None, "fp32"),
    ("torch", "cpu", "fp32"),
    ("torch", "cuda:0", "fp32"),
    ("torch", "cuda:0", "fp16"),
    ("torch", "cuda:0", "bf16"),
    # ncnn converts the ONNX file first; "vulkan" is the Vulkan device ncnn prefers (the GPU,
    # where the container exposes NVIDIA's Vulkan driver).
    ("ncnn", "cpu", "fp32"),
    ("ncnn", "vulkan", "fp32"),
    ("ncnn", "vulkan", "fp16"),
)


def one_config(
    path: Path, backend: str, device: str | None, precision: str, batch: int, seconds: float
) -> tuple[dict[str, Any], dict[str, np.ndarray] | None]:
    row: dict[str, Any] = {
        "backend": backend,
        "device": device or "cpu",
        "precision": precision,
        "batch": batch,
    }
    started = time.perf_counter()
    try:
        engine = Engine.load(
            path,
            backend=backend,
            threads=physical_cores(),
            precision=precision,
            device=device,
        )
    except UniferError as exc:
        return {**row, "status": "skipped", "reason": f"{type(exc).__name__}: {exc.message}"}, None
    row["load_s"] = round(time.perf_counter() - started, 3)
    with engine:
        feeds = seeded_feeds(engine.inputs, batch=batch, seed=0)
        outputs = engine.run(feeds)
        stats = measure(lambda: engine.run(feeds), warmup=5, min_runs=10, min_time_s=seconds)
        row.update(
            status="ok",
            settings={k: str(v) for k, v in engine.settings.items()},
            runs=stats.n,
            median_ms=round(stats.median_ms, 3),
            p90_ms=round(stats.percentile_ms(90), 3),
            per_sample_ms=round(stats.median_ms / batch, 4),
        )
    return row, outputs


def integrity(row: dict[str, Any], got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    parity = compare(want, got)
    row["max_abs_diff"] = parity.max_abs_diff
    row["min_cosine"] = parity.min_cosine
    row["integrity_fp32"] = parity.within(FP32_MAX_RELATIVE_DIFF, FP32_MIN_COSINE)


def auto_choice(path: Path) -> dict[str, Any]:
    """What backend="auto" picks: measured in a fresh cache, and static (no measurement)."""
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="unifer-gpu-auto-") as cache:
        os.environ["UNIFER_CACHE_DIR"] = cache
        for mode, budget in (("measured", None), ("static", 0.0)):
            started = time.perf_counter()
            try:
                with Engine.load(path, budget_s=budget) as engine:
                    selection = engine.selection
                    assert selection is not None
                    result[mode] = {
                        "chosen": str(selection.chosen),
                        "source": selection.source,
                        "seconds": round(time.perf_counter() - started, 2),
                        "explain": selection.explain(),
                        "settings": {k: str(v) for k, v in engine.settings.items()},
                    }
            except UniferError as exc:
                result[mode] = {"error": f"{type(exc).__name__}: {exc.message}"}
        del os.environ["UNIFER_CACHE_DIR"]
    return result


def _verdict(row: dict[str, Any]) -> str:
    """Within fp32 tolerance: the bar for fp32 rows; for reduced precisions only a fact."""
    within = "yes" if row.get("integrity_fp32") else "no"
    precision = row["precision"]
    return within if precision == "fp32" else f"{within} (not expected at {precision})"


def markdown(report: dict[str, Any]) -> str:
    gpus = ", ".join(f"{g.get('name')} (driver {g.get('driver')})" for g in report["gpus"])
    lines = [
        f"# ArcFace {report['model']} on CPU and GPU backends through `Engine`",
        "",
        f"{report['date']}; GPUs: {gpus or 'none'}; CPU: {report['cpu']}, "
        f"{report['threads']} threads for CPU backends; Python {report['python']}; "
        f"{report['versions']}.",
        "Command: `python benchmarks/gpu/compare.py` (benchmarks/gpu/README.md). Latency: median "
        "wall-clock time of `engine.run` (CUDA synchronised), after 5 warm-up calls. Integrity: "
        "against onnxruntime fp32 on the CPU, same seeded inputs.",
        "",
        "| backend | device | precision | batch | median ms | per sample ms | load s | max abs "
        "diff | min cosine | fp32 integrity |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    nan = float("nan")
    for r in report["rows"]:
        if r["status"] != "ok":
            lines.append(
                f"| {r['backend']} | {r['device']} | {r['precision']} | {r['batch']} | "
                f"skipped: {r['reason'][:300]} | | | | | |"
            )
            continue
        lines.append(
            f"| {r['backend']} | {r['device']} | {r['precision']} | {r['batch']} | "
            f"{r['median_ms']:.2f} | {r['per_sample_ms']:.3f} | {r['load_s']:.2f} | "
            f"{r.get('max_abs_diff', nan):.2e} | {r.get('min_cosine', nan):.7f} | "
            f"{_verdict(r)} |"
        )
    lines += ["", '## backend="auto"', ""]
    for mode, choice in report["auto"].items():
        if "error" in choice:
            lines.append(f"- {mode}: {choice['error']}")
        else:
            lines += [
                f"- {mode}: **{choice['chosen']}** (source {choice['source']}, "
                f"{choice['seconds']} s)",
                "",
                "```text",
                choice["explain"],
                "```",
            ]
    return "\n".join(lines) + "\n"


def versions() -> str:
    import importlib.metadata as metadata

    found = []
    for dist in ("unifer", "torch", "onnxruntime", "openvino", "onnx", "numpy"):
        try:
            found.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            continue
    return ", ".join(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default="arcface-r100")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per config")
    args = parser.parse_args()
    static = models.path(args.model)
    dynamic = models.path(args.model, dynamic_batch=True)
    machine = fingerprint()
    report: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": args.model,
        "gpus": machine["gpus"],
        "cpu": machine["cpu"].get("model"),
        "threads": physical_cores(),
        "python": platform.python_version(),
        "versions": versions(),
        "machine": machine,
        "rows": [],
        "auto": {},
    }
    # Written after every step, so that a run cut short by the device's time limit keeps what
    # it measured; auto first, as the GPU check's verdict.
    report["auto"] = auto_choice(static)
    write(report, args.out)
    for batch in (int(b) for b in args.batches.split(",")):
        path = static if batch == 1 else dynamic
        reference: dict[str, np.ndarray] | None = None
        for backend, device, precision in CONFIGS:
            row, outputs = one_config(path, backend, device, precision, batch, args.seconds)
            if reference is None and outputs is not None and backend == "onnxruntime":
                reference = outputs
            if outputs is not None and reference is not None:
                integrity(row, outputs, reference)
            report["rows"].append(row)
            write(report, args.out)
            print(json.dumps(row), flush=True)
    print(markdown(report))


def write(report: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_compare.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / "gpu_compare.md").write_text(markdown(report))


if __name__ == "__main__":
    main()
