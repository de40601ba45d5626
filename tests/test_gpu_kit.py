"""The prepared GPU run (benchmarks/gpu/compare.py) works, so that a lent GPU machine's few minutes
are not lost to a broken script. Here, without a GPU, its CUDA rows must say why they were skipped.
Nothing is timed against a target: the figures are only checked to be there."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("unifer_onnxruntime")
pytest.importorskip("onnx")

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "gpu" / "compare.py"


def test_compare_runs_and_reports_every_configuration(tmp_path: Path) -> None:
    arguments = ["--out", str(tmp_path), "--model", "arcface-tiny", "--batches", "1,2"]
    subprocess.run(
        [sys.executable, str(SCRIPT), *arguments, "--seconds", "0.05"],
        check=True,
        capture_output=True,
        timeout=600,
    )
    report = json.loads((tmp_path / "gpu_compare.json").read_text())
    rows = {(r["backend"], r["device"], r["precision"], r["batch"]): r for r in report["rows"]}
    for batch in (1, 2):
        reference = rows[("onnxruntime", "cpu", "fp32", batch)]
        assert reference["status"] == "ok" and reference["median_ms"] > 0
        assert reference["integrity_fp32"] is True and reference["max_abs_diff"] == 0.0
        cuda = rows[("torch", "cuda:0", "fp32", batch)]
        if cuda["status"] == "skipped":  # no GPU here, or no torch plugin in this environment
            assert cuda["reason"]
        else:
            assert cuda["integrity_fp32"] is True
        vulkan = rows[("ncnn", "vulkan", "fp32", batch)]
        if vulkan["status"] == "skipped":  # no ncnn, or no Vulkan device here
            assert vulkan["reason"]
        else:
            assert vulkan["integrity_fp32"] is True
            assert vulkan["settings"]["device"].startswith("vulkan:")
    assert "measured" in report["auto"] and "static" in report["auto"]
    assert "| onnxruntime | cpu | fp32 | 1 |" in (tmp_path / "gpu_compare.md").read_text()
