"""``unifer.bench``: grid, integrity, libraries, energy and reports; then real runs on arcface-tiny.

The first half needs no inference runtime. The second half runs the real bench (fresh worker
processes, real backends) on the tiny model with a handful of calls per latency, and checks that
every figure is present and sane; it never asserts speed. It is skipped where no backend that reads
ONNX is installed (the core-only CI job) or ``onnx`` is missing to generate the model.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import shutil
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from unifer import (
    BackendNotFoundError,
    BackendUnavailableError,
    ModelFormatError,
    UniferError,
    UnsupportedOptionError,
    _background,
    _registry,
    bench,
    models,
)
from unifer._parity import seeded_feeds
from unifer.backend import Availability, TensorSpec
from unifer.bench import _deps, _energy, _run, _worker
from unifer.bench._grid import (
    default_threads,
    needs_conversion,
    plan,
    select_backends,
    split_target,
    without_thread_counts_off_the_cpu,
)
from unifer.bench._integrity import TOLERANCES, compare, seeded_images
from unifer.bench._report import markdown
from unifer.bench._run import Progress, Result, _spawn
from unifer.cli import main

# Tiny iteration counts: these tests check the machinery, never the speed.
TINY = bench.Settings(warmup=1, min_runs=3, min_time_s=0.0, rounds=1, integrity_samples=2)


# -- the grid --------------------------------------------------------------------------------------


def test_default_threads_are_one_to_physical_cores_then_the_runtime_default():
    threads = bench.default_threads()
    assert threads[0] == 1 and threads[-1] is None
    assert threads[:-1] == list(range(1, len(threads)))


def test_parse_threads():
    assert bench.parse_threads(["1", "2", "default", "2", None]) == [1, 2, None]
    for bad in ("0", "two"):
        with pytest.raises(UnsupportedOptionError):
            bench.parse_threads([bad])


def test_plan_is_grouped_by_backend_and_validated():
    configs = bench.plan(["a", "b"], [1, None], batches=[1, 4], precisions=["fp32"])
    assert len(configs) == 8
    assert [c.backend for c in configs[:4]] == ["a"] * 4
    assert configs[1].label == "a threads=default fp32 batch=1"
    with pytest.raises(UnsupportedOptionError, match="batch"):
        bench.plan(["a"], [1], batches=[0])
    with pytest.raises(UnsupportedOptionError, match="precision"):
        bench.plan(["a"], [1], precisions=["fp64"])


def test_bad_options_are_refused_before_the_model_is_generated(private_cache):
    for bad in ({"precisions": ["fp64"]}, {"batches": [0]}):
        with pytest.raises(UnsupportedOptionError):
            bench.run("builtin:arcface-tiny", **bad)  # type: ignore[arg-type]
    assert not (private_cache / "models").exists()  # generating r100 takes a minute


def test_settings_split_into_rounds_and_validate():
    per_round = bench.Settings(min_runs=5, min_time_s=10, max_time_s=60, rounds=2).per_round()
    assert per_round == {
        "warmup": 3,
        "min_runs": 3,
        "min_time_s": 5.0,
        "max_time_s": 30.0,
        "stable": None,
    }
    with pytest.raises(UnsupportedOptionError):
        bench.Settings(min_runs=0)
    with pytest.raises(UnsupportedOptionError):
        bench.Settings(stable=2.0)


def test_select_backends(fake_backend):
    assert select_backends(".fake", None) == (["fake"], {})
    assert select_backends(".fake", ["fake"]) == (["fake"], {})
    with pytest.raises(BackendNotFoundError):
        select_backends(".fake", ["nosuchbackend"])
    fake_backend.available = False
    with pytest.raises(ModelFormatError, match="fakeruntime is not installed"):
        select_backends(".fake", None)


def test_a_target_is_a_backend_and_maybe_a_device(fake_backend):
    assert split_target("torch@cuda:0") == ("torch", "cuda:0")
    assert split_target("ncnn") == ("ncnn", None)
    for bad in ("ncnn@", "@vulkan"):
        with pytest.raises(UnsupportedOptionError, match="BACKEND@DEVICE"):
            split_target(bad)
    assert select_backends(".fake", ["fake", "fake@gpu:0", "fake"]) == (["fake", "fake@gpu:0"], {})
    with pytest.raises(BackendNotFoundError):
        select_backends(".fake", ["nosuchbackend@gpu:0"])


def test_a_default_run_measures_backends_on_their_accelerators_too(fake_backend, monkeypatch):
    gpu = Availability(ok=True, version="1.0", devices=("cpu", "gpu:0"), accelerators=("gpu:0",))
    monkeypatch.setattr(fake_backend, "probe", lambda self: gpu)
    assert select_backends(".fake", None) == (["fake", "fake@gpu:0"], {})
    # A device the caller chose is kept, as backend="auto" keeps it.
    assert select_backends(".fake", None, {"fake": {"device": "cpu"}}) == (["fake"], {})
    assert select_backends(".fake", ["fake"]) == (["fake"], {})  # named: exactly that


def test_the_default_thread_sweep_is_for_targets_on_the_cpu(fake_backend, monkeypatch):
    gpu = Availability(ok=True, version="1.0", devices=("cuda:0", "cpu"))
    monkeypatch.setattr(fake_backend, "probe", lambda self: gpu)  # on a GPU by default
    _registry.cached_probe.cache_clear()  # the fixture's teardown clears it again
    targets = ["fake", "fake@cpu", "fake@cuda:0"]
    kept = without_thread_counts_off_the_cpu(plan(targets, default_threads(), batches=[1, 4]))
    counts = {t: [(c.batch, c.threads) for c in kept if c.backend == t] for t in targets}
    once = [(1, None), (4, None)]  # the runtime's own thread count, per batch
    sweep = [(n, t) for n in (1, 4) for t in default_threads()]
    assert counts == {"fake": once, "fake@cpu": sweep, "fake@cuda:0": once}

    # A device chosen with --option moves the backend off the CPU (or onto it) just as well.
    configs = plan(["fake"], default_threads())
    on_gpu = without_thread_counts_off_the_cpu(configs, None, {"fake": {"device": "vulkan"}})
    assert [c.threads for c in on_gpu] == [None]
    on_cpu = without_thread_counts_off_the_cpu(configs, None, {"fake": {"device": "CPU"}})
    assert [c.threads for c in on_cpu] == default_threads()


# -- integrity -------------------------------------------------------------------------------------


def test_seeded_inputs_are_deterministic():
    assert np.array_equal(seeded_images(2, 4, 5, seed=3), seeded_images(2, 4, 5, seed=3))
    assert seeded_images(2, 4, 5, seed=3).dtype == np.uint8
    spec = TensorSpec("x", ("N", 3), np.dtype(np.float32))
    feeds = seeded_feeds([spec], batch=2, seed=1)
    assert feeds["x"].shape == (2, 3)
    assert np.array_equal(feeds["x"], seeded_feeds([spec], batch=2, seed=1)["x"])


def test_integrity_verdicts():
    rng = np.random.default_rng(0)
    ref = {"y": rng.standard_normal((4, 512)).astype(np.float32) * 2}
    same = compare(ref, ref, TOLERANCES["fp32"])
    assert same["ok"] is True and same["cosine_min"] == pytest.approx(1.0)
    assert same["max_abs_diff"] == 0.0 and same["samples"] == 4
    close = {"y": ref["y"] + 1e-5}
    assert compare(close, ref, TOLERANCES["fp32"])["ok"] is True
    # bf16-like error: outside the fp32 tolerance, inside the bf16 one.
    rounded = {"y": ref["y"] * (1 + rng.uniform(-4e-3, 4e-3, ref["y"].shape)).astype(np.float32)}
    assert compare(rounded, ref, TOLERANCES["fp32"])["ok"] is False
    assert compare(rounded, ref, TOLERANCES["bf16"])["ok"] is True
    flipped = compare({"y": -ref["y"]}, ref, TOLERANCES["fp32"])
    assert flipped["ok"] is False and flipped["cosine_min"] == pytest.approx(-1.0)
    shape = compare({"y": ref["y"][:2]}, ref, TOLERANCES["fp32"])
    assert shape["ok"] is False and "shape" in shape["problem"]
    nan = compare({"y": np.full_like(ref["y"], np.nan)}, ref, TOLERANCES["fp32"])
    assert nan["ok"] is False and "NaN" in nan["problem"]
    assert "missing" in compare({}, ref, TOLERANCES["fp32"])["problem"]


def test_integrity_of_a_quantized_model_is_judged_at_int8_tolerance():
    """A run of a model stored in int8, at precision fp32, that differs from the reference's by
    5%: what two int8 runtimes differ by (requantization), not a fidelity problem."""
    ref = {"y": np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32)}
    raw = {"status": "ok", "outputs": {"y": ref["y"] * 1.05}}
    config = _run.Config(backend="b", threads=1)
    assert _run._record(config, dict(raw), ref, "fp32")["integrity"]["ok"] is False
    judged = _run._record(config, dict(raw), ref, "int8")["integrity"]
    assert judged["ok"] is True and judged["tolerance"] == TOLERANCES["int8"].to_dict()


def test_integrity_holds_every_output_to_its_own_scale():
    rng = np.random.default_rng(0)
    ref = {
        "scores": rng.standard_normal((4, 8)) * 100,
        "boxes": rng.standard_normal((4, 8)) * 0.01,
    }
    # The small output 50% off (same direction), yet within 1e-4 of the large output's scale.
    off = compare({**ref, "boxes": ref["boxes"] * 1.5}, ref, TOLERANCES["fp32"])
    assert off["max_abs_diff"] < TOLERANCES["fp32"].rtol * off["reference_max_abs"]
    assert off["ok"] is False
    assert off["max_relative_diff"] == pytest.approx(0.5)
    assert off["cosine_min"] == pytest.approx(1.0)
    assert compare(ref, ref, TOLERANCES["fp32"])["ok"] is True


def spec(name: str, *shape: int | str) -> TensorSpec:
    return TensorSpec(name, shape, np.dtype(np.float32))


def test_a_batch_the_inputs_cannot_take_is_refused():
    _worker.check_batch([spec("x", "N", 3)], 8)
    _worker.check_batch([spec("x", 1, 3)], 1)
    with pytest.raises(UnsupportedOptionError, match=r"fixed batch dimension of 1.*dynamic"):
        _worker.check_batch([spec("x", 1, 3)], 2)
    # A batched input need not come first: a scale of shape [1] is fed as it is.
    _worker.check_batch([spec("scale", 1), spec("x", "N", 16)], 4)
    # A vector is no batch of 16: one sample a call (16 would multiply samples/s by 16).
    _worker.check_batch([spec("v", 16)], 1)
    with pytest.raises(UnsupportedOptionError, match=r"no batch dimension \(one sample a call\)"):
        _worker.check_batch([spec("v", 16)], 16)


def test_dims_size_named_dynamic_dimensions_and_the_rest_are_listed():
    inputs = [spec("x", "N", "S", 32), spec("mask", "N", None)]
    assert _worker._check_sizes(inputs, {"S": 128}) == ["mask[1]"]
    assert _worker._check_sizes(inputs, {}) == ["x[1] ('S')", "mask[1]"]
    with pytest.raises(UnsupportedOptionError, match=r"--dim names 'T', which is no dynamic"):
        _worker._check_sizes(inputs, {"T": 5})
    feeds = seeded_feeds(inputs, batch=2, sizes={"S": 128})
    assert {k: v.shape for k, v in feeds.items()} == {"x": (2, 128, 32), "mask": (2, 1)}
    with pytest.raises(UnsupportedOptionError, match=r"'N', the batch dimension.*--batch"):
        _worker._check_sizes(inputs, {"N": 4})
    # S comes first in bias[S] but is no batch: it follows x's S, sized or not.
    bias = [spec("x", "N", "S"), spec("bias", "S")]
    sized = seeded_feeds(bias, batch=4, sizes={"S": 16})
    assert {k: v.shape for k, v in sized.items()} == {"x": (4, 16), "bias": (16,)}
    unsized = seeded_feeds(bias, batch=4)
    assert {k: v.shape for k, v in unsized.items()} == {"x": (4, 1), "bias": (1,)}


# -- runtime libraries and energy ------------------------------------------------------------------

MAPS = """\
7f0000000000-7f0000001000 r--p 00000000 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000001000-7f0000002000 r-xp 00001000 08:01 2 /v/site-packages/openvino/libs/libopenvino.so.2641
7f0000002000-7f0000003000 r--p 00000000 08:01 3 /v/site-packages/numpy.libs/libopenblas.so
7f0000003000-7f0000004000 r--p 00000000 08:01 4 /opt/vendor/lib/libvendor.so (deleted)
7f0000004000-7f0000005000 rw-p 00000000 00:00 0
7f0000005000-7f0000006000 r--p 00000000 08:01 5 /usr/share/fonts/font.ttf
7f0000006000-7f0000007000 r--p 00000000 00:00 0 [heap]
"""


def test_parse_maps_and_classify():
    libraries = _deps.parse_maps(MAPS)
    assert libraries == {
        "/usr/lib/x86_64-linux-gnu/libc.so.6",
        "/v/site-packages/openvino/libs/libopenvino.so.2641",
        "/v/site-packages/numpy.libs/libopenblas.so",
        "/opt/vendor/lib/libvendor.so",
    }
    new = _deps.new_libraries({"/usr/lib/x86_64-linux-gnu/libc.so.6"}, libraries)
    packages = {lib["name"]: (lib["kind"], lib["package"]) for lib in new["non_system"]}
    assert packages == {
        "libopenvino.so.2641": ("package", "openvino"),
        "libopenblas.so": ("package", "numpy"),
        "libvendor.so": ("other", None),
    }
    assert new["system"] == []
    assert _deps.classify("/usr/lib/x86_64-linux-gnu/libm.so.6")["kind"] == "system"


def test_this_process_maps_are_read():
    if not _deps.available():
        pytest.skip("no /proc/self/maps on this OS")
    assert any("libc" in p or "python" in p for p in _deps.loaded_libraries())


def test_background_load_is_the_cpu_time_of_other_processes(tmp_path):
    before = _background.Sample(wall_s=0.0, busy_s=100.0, steal_s=1.0, self_s=10.0)
    # 10 s on 2 CPUs: 20 CPU-seconds; we used 9, everyone together 14, the hypervisor stole 1.
    after = _background.Sample(wall_s=10.0, busy_s=114.0, steal_s=2.0, self_s=19.0)
    load = _background.between(before, after, cpu_count=2)
    assert load["other_cpu"] == pytest.approx(0.25) and load["steal"] == pytest.approx(0.05)
    assert load["own_cpu_cores"] == pytest.approx(0.9)  # 9 s of CPU in 10 s
    assert load["disturbed"] is True
    quiet = _background.Sample(wall_s=10.0, busy_s=109.5, steal_s=1.0, self_s=19.0)
    assert _background.between(before, quiet, cpu_count=2)["disturbed"] is False
    assert _background.between(None, after, 2)["available"] is False
    # 3 ms: one 10 ms tick of another process would read as 3 CPUs' worth: not judged.
    brief = _background.Sample(wall_s=0.003, busy_s=100.01, steal_s=1.0, self_s=10.0)
    short = _background.between(before, brief, cpu_count=2)
    assert short["available"] is False and "too short" in short["reason"]
    stat = tmp_path / "stat"
    stat.write_text("cpu  200 0 100 5000 10 0 0 7 0 0\ncpu0 100 0 50 2500 5 0 0 3 0 0\ncpu1 1\n")
    sample = _background.sample(stat)
    if sample is not None:  # None off Linux-like systems
        tick = os.sysconf("SC_CLK_TCK")
        assert sample.busy_s == pytest.approx(300 / tick) and sample.steal_s == pytest.approx(
            7 / tick
        )
    assert _background.cpus(stat) == 2


def _rapl(root: Path, name: str, energy: int, max_range: int = 1_000_000) -> Path:
    domain = root / name
    domain.mkdir(parents=True)
    (domain / "energy_uj").write_text(f"{energy}\n")
    (domain / "max_energy_range_uj").write_text(f"{max_range}\n")
    return domain


def test_energy_meter_sums_packages_and_handles_wraparound(tmp_path):
    package0 = _rapl(tmp_path, "intel-rapl:0", 900_000)
    _rapl(tmp_path, "intel-rapl:1", 100)
    _rapl(tmp_path, "intel-rapl:0:0", 5)  # the core domain inside package 0: not counted again
    meter = _energy.Meter(tmp_path)
    assert meter.available and [d.name for d in meter.domains] == ["intel-rapl:0", "intel-rapl:1"]
    before = meter.read()
    (package0 / "energy_uj").write_text("100000\n")  # wrapped past max_energy_range_uj
    (tmp_path / "intel-rapl:1" / "energy_uj").write_text("2000100\n")
    assert meter.joules(before, meter.read()) == pytest.approx((200_001 + 2_000_000) / 1e6)
    assert meter.describe()["domains"] == ["intel-rapl:0", "intel-rapl:1"]


def test_energy_is_unavailable_with_a_reason_not_a_number(tmp_path):
    missing = _energy.Meter(tmp_path / "nothing")
    assert not missing.available and "does not exist" in str(missing.reason)
    assert missing.describe() == {"available": False, "reason": missing.reason}
    empty = _energy.Meter(tmp_path)
    assert not empty.available and "no RAPL package domain" in str(empty.reason)
    (tmp_path / "intel-rapl:0" / "energy_uj").mkdir(parents=True)  # unreadable as a number
    broken = _energy.Meter(tmp_path)
    assert not broken.available and "could not be read" in str(broken.reason)


# -- reports from a synthetic result ---------------------------------------------------------------


def _latency(mean: float) -> dict[str, Any]:
    return {
        "n": 100,
        "mean_ms": mean,
        "median_ms": mean * 0.98,
        "p90_ms": mean * 1.1,
        "p99_ms": mean * 1.3,
        "min_ms": mean * 0.9,
        "max_ms": mean * 1.5,
        "stdev_ms": mean * 0.05,
        "median_ci_rel": 0.01,
        "per_sample_median_ms": mean * 0.98,
        "stop": "pooled",
    }


def _record(backend: str, threads: int | None, mean: float) -> dict[str, Any]:
    return {
        "backend": backend,
        "threads": threads,
        "threads_label": "default" if threads is None else str(threads),
        "batch": 1,
        "precision": "fp32",
        "status": "ok",
        "error": None,
        "runtime_version": "1.0",
        "settings": {"threads": threads or 2},
        "load": {
            "runtime_import_s": 0.2,
            "cold_s": 1.5,
            "warm_s": 0.3,
            "first_inference_ms": mean * 2,
            "cold_loaded_from_cache": False,
            "warm_loaded_from_cache": True,
        },
        "latency": {
            "end_to_end": _latency(mean),
            "model_only": _latency(mean - 0.5),
            "preprocess_ms": 0.5,
        },
        "throughput": {
            "inferences_per_s": 1e3 / mean,
            "samples_per_s": 1e3 / mean,
            "model_only_samples_per_s": 1e3 / (mean - 0.5),
        },
        "memory": {
            "baseline_rss_mib": 40.0,
            "loaded_rss_mib": 600.0,
            "peak_rss_mib": 666.0,
            "process_peak_rss_mib": 700.0,
        },
        "integrity": {"ok": True, "cosine_min": 1.0, "max_abs_diff": 2e-5, "problem": None},
        "dependencies": {
            "available": True,
            "non_system": [
                {
                    "path": f"/sp/{backend}/lib{backend}.so",
                    "name": f"lib{backend}.so",
                    "kind": "package",
                    "package": backend,
                    "size": 2**20,
                }
            ],
            "system": [],
            "python": [],
        },
        "energy": {"available": False, "reason": "no RAPL", "joules_per_inference": None},
        "background": {
            "available": True,
            "other_cpu": 0.02,
            "steal": 0.0,
            "disturbed": False,
            "own_cpu_cores": 1.96,
        },
        "worker": {"pid": 123, "exit_code": 0, "wall_s": 30.0},
    }


def synthetic_result() -> Result:
    failed = {
        **_record("beta", 1, 1.0),
        "status": "error",
        "error": "UnsupportedOptionError: nope",
        "latency": None,
        "memory": None,
        "integrity": None,
    }
    busy = _record("alpha", None, 110.0)
    busy["background"] = {"available": True, "other_cpu": 0.4, "steal": 0.0, "disturbed": True}
    return Result(
        created="2026-11-27T00:00:00+00:00",
        unifer_version="0.1.0",
        command="unifer bench --out x",
        model={
            "spec": "m.onnx",
            "path": "/m.onnx",
            "builtin": False,
            "sha256": "ab" * 32,
            "size_bytes": 2**20,
            "preprocess": None,
        },
        settings={
            **bench.DEFAULT.to_dict(),
            "per_round": bench.DEFAULT.per_round(),
            "integrity_tolerances": {p: t.to_dict() for p, t in TOLERANCES.items()},
        },
        machine={
            "cpu": {
                "model": "Test CPU",
                "avx512": True,
                "physical_cores": 2,
                "logical_cores": 2,
                "usable_cpus": 2,
            },
            "memory": {"total_bytes": 2**34},
            "os": {"system": "Linux"},
            "gpus": [],
            "python": {"version": "3.11"},
            "runtimes": {"alpha": {"version": "1.0", "available": True}},
        },
        conditions={"wall_s": 100.0, "loadavg_before": [0.1, 0.1, 0.1]},
        energy={"available": False, "reason": "no RAPL here"},
        reference={"backend": "alpha", "runtime_version": "1.0"},
        skipped={"gamma": "gamma is not installed"},
        records=[_record("alpha", 1, 200.0), busy, failed],
    )


def test_report_says_where_a_backend_ran_and_with_which_options():
    result = synthetic_result()
    plain = markdown(result)
    assert "Ran on" not in plain  # on the CPU with no options: nothing to say
    result.settings["backend_options"] = {"alpha": {"device": "vulkan"}}
    for record in result.records:
        record["settings"] = {**(record.get("settings") or {}), "device": "vulkan:0"}
    assert "Ran on vulkan:0, with backend options device='vulkan'." in markdown(result)


def test_report_files_and_json_schema(tmp_path):
    result = synthetic_result()
    written = bench.write_report(result, tmp_path / "out")
    names = {p.name for p in written["files"]}
    assert {"results.json", "results.csv", "report.md"} <= names
    if importlib.util.find_spec("matplotlib") is None:
        assert "unifer[plot]" in written["plots"]
    else:
        assert written["plots"] == "written"
        for plot in bench.PLOTS:
            assert (tmp_path / "out" / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert data["schema"] == bench.SCHEMA
    for key in (
        "created",
        "unifer_version",
        "model",
        "settings",
        "machine",
        "conditions",
        "energy",
        "reference",
        "skipped",
        "records",
    ):
        assert key in data
    assert bench.read_results(tmp_path / "out" / "results.json").to_dict() == result.to_dict()
    rows = list(csv.DictReader(io.StringIO((tmp_path / "out" / "results.csv").read_text())))
    assert [r["backend"] for r in rows] == ["alpha", "alpha", "beta"]
    assert rows[0]["e2e_mean_ms"] == "200.0" and rows[2]["status"] == "error"
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| threads | average latency (ms) | memory (MiB) |" in report
    assert "| 1 | 200.0 | 666 |" in report and "| default (2) | 110.0 | 666 |" in report
    assert "UnsupportedOptionError: nope" in report
    assert "libalpha.so" in report and "gamma is not installed" in report
    assert "Unavailable: no RAPL here" in report
    assert "| 2% |" in report and "| 40% ! |" in report
    assert "**Disturbed**" in report and "alpha threads=default" in report


def test_results_of_another_schema_are_refused():
    data = synthetic_result().to_dict()
    with pytest.raises(UniferError, match="schema"):
        Result.from_dict({**data, "schema": "unifer.bench/99"})
    with pytest.raises(UniferError, match="not a unifer bench"):
        Result.from_dict({**data, "schema": "something"})


def test_terminal_table():
    table = bench.format_table(synthetic_result())
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["backend", "version", "threads"]
    assert "cpu cores" in lines[0] and "  2.0  " in lines[2]  # the record's own_cpu_cores, 1.96
    assert "default (2)" in table and "failed" in table
    assert "skipped gamma" in table and "FAILED beta threads=1: " in table
    assert "disturbed: alpha threads=default:" in table


def test_a_thread_count_the_runtime_did_not_apply_is_shown_beside_the_request():
    """OpenVINO caps threads at the cores it may use: a row labelled 4 that ran on 2 read as a
    real 4-thread configuration next to 'default (2)'."""
    capped = _record("alpha", 4, 100.0)
    capped["settings"] = {"threads": 2}
    result = synthetic_result()
    result.records.append(capped)
    assert "4 (applied 2)" in bench.format_table(result)
    assert "4 (applied 2)" in markdown(result)


def test_inputs_fed_are_said_per_batch():
    result = synthetic_result()
    for record, batch in zip(result.records[:2], (1, 4), strict=True):
        record["batch"] = batch
        record["inputs"] = {"shapes": {"x": [batch, 3, 8, 8]}, "defaulted_dims": []}
    assert "x [1, 3, 8, 8] (batch 1); x [4, 3, 8, 8] (batch 4)" in markdown(result)


def test_terminal_table_throughput_is_samples_per_second():
    result = synthetic_result()
    record = result.records[0]  # 200 ms per call: 5 inferences/s
    record["batch"] = 4
    record["throughput"] = {"inferences_per_s": 5.0, "samples_per_s": 20.0}
    header, _, row = bench.format_table(result).splitlines()[:3]
    end = header.index("samples/s") + len("samples/s")  # numbers are right-aligned
    assert "inf/s" not in header
    assert row[:end].split()[-1] == "20.0"


def test_terminal_legend_says_what_latency_is():
    result = synthetic_result()
    assert "latency = end-to-end (uint8 RGB" in bench.format_table(result)
    for record in result.records:  # a model without preprocessing: only the model was timed
        if record.get("latency"):
            record["latency"]["end_to_end"] = None
    assert "latency = inference only (no preprocessing" in bench.format_table(result)
    result.model["preprocess"] = {"size": [112, 112]}  # preprocessing, but every run failed
    for record in result.records:
        record.update(status="error", error="InferenceError: boom", latency=None)
    assert "latency = end-to-end (uint8 RGB" in bench.format_table(result)


def test_markdown_of_a_model_without_preprocessing_reports_inference_latency():
    """Without preprocessing only inference was timed: the report must not call it end-to-end,
    and its latency table shows the model-only figures instead of empty end-to-end columns."""
    result = synthetic_result()
    for record in result.records:
        if record.get("latency"):
            record["latency"]["end_to_end"] = None
            record["latency"]["preprocess_ms"] = None
    report = markdown(result)
    assert "end-to-end" not in report
    assert "## Average inference-only latency (ms)" in report
    assert "No preprocessing is attached to this model" in report
    header = next(line for line in report.splitlines() if line.startswith("| threads | mean |"))
    assert "model-only" not in header and "preprocessing" not in header
    rows = [line for line in report.splitlines() if line.startswith("| default (2) | 109.5 |")]
    assert rows  # alpha's model-only mean, where the end-to-end one would be "-"


def test_several_variants_are_named_in_failures_and_disturbances():
    result = synthetic_result()
    result.records[1]["batch"] = 8  # the disturbed one
    result.records[2]["precision"] = "bf16"  # the failed one
    table = bench.format_table(result)
    assert "FAILED beta threads=1 bf16 batch=1: " in table
    assert "disturbed: alpha threads=default fp32 batch=8:" in table
    assert "alpha threads=default fp32 batch=8 ran" in markdown(result)


def test_progress_lines():
    stream = io.StringIO()
    show = bench.TerminalProgress(stream, live=False)
    config = bench.Config(backend="alpha", threads=1)
    show(Progress(1, 2, config, "starting"))
    show(Progress(1, 2, config, "end-to-end", {"round": 1, "rounds": 2}))
    show(Progress(1, 2, config, "done", record=_record("alpha", 1, 200.0)))
    lines = stream.getvalue().splitlines()
    assert "[1/2] alpha threads=1 fp32 batch=1 end-to-end (round 1/2)" in lines[1]
    assert "mean 200.00 ms" in lines[2] and "integrity yes" in lines[2]
    live = io.StringIO()
    bench.TerminalProgress(live, live=True)(Progress(0, 2, None, "cold load"))
    assert live.getvalue().startswith("\r[ref]")


# -- real backends on arcface-tiny -----------------------------------------------------------------


@pytest.fixture(scope="module")
def onnx_backends() -> list[str]:
    if importlib.util.find_spec("onnx") is None:
        pytest.skip("generating the built-in model needs onnx")
    names = bench.available_backends(".onnx")
    if not names:
        pytest.skip("no available backend reads ONNX")
    return names


@pytest.fixture(scope="module")
def module_cache(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One private cache for the module's runs (the autouse one is per test)."""
    path = tmp_path_factory.mktemp("bench-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("UNIFER_CACHE_DIR", str(path))
        yield path


@pytest.fixture(scope="module")
def tiny_run(onnx_backends: list[str], module_cache: Path) -> tuple[Result, list[Progress]]:
    events: list[Progress] = []
    result = bench.run("builtin:arcface-tiny", threads=[1], settings=TINY, progress=events.append)
    return result, events


def test_every_backend_is_measured_with_sane_figures(tiny_run, onnx_backends):
    result, _ = tiny_run
    assert [r["backend"] for r in result.records] == onnx_backends
    for record in result.records:
        assert record["status"] == "ok", record["error"]
        assert record["runtime_version"]
        assert record["settings"]["threads"] in (1, None)  # None: the runtime does not say
        for kind in ("end_to_end", "model_only"):
            latency = record["latency"][kind]
            assert latency["n"] >= TINY.min_runs
            assert 0 < latency["min_ms"] <= latency["median_ms"] <= latency["p99_ms"]
            assert latency["min_ms"] <= latency["mean_ms"] <= latency["max_ms"]
            assert latency["stdev_ms"] >= 0
        load = record["load"]
        assert load["runtime_import_s"] >= 0 and load["cold_s"] > 0 and load["warm_s"] > 0
        assert load["first_inference_ms"] > 0
        # Timed on its own: a difference of two medians was often negative.
        assert 0 < record["latency"]["preprocess_ms"] < record["latency"]["end_to_end"]["median_ms"]
        throughput = record["throughput"]
        assert throughput["samples_per_s"] == pytest.approx(throughput["inferences_per_s"])
        assert throughput["inferences_per_s"] == pytest.approx(
            1e3 / record["latency"]["end_to_end"]["mean_ms"]
        )


def test_converting_backends_convert_once_in_their_own_process(tiny_run):
    result, events = tiny_run
    converting = [n for n in result.settings["backends"] if needs_conversion(n, ".onnx")]
    if not converting:
        pytest.skip("no installed backend runs ONNX through a conversion")
    assert [e.phase for e in events if e.phase.startswith("convert for ")] == [
        f"convert for {n}" for n in converting
    ]
    for record in result.records:
        conversion = record["conversion"]
        if record["backend"] in converting:
            assert conversion["seconds"] > 0 and conversion["check"]["passed"] is True
            # The worker loaded the very conversion the convert job wrote (through its cache).
            used = Path(record["settings"]["conversion"]["path"])
            assert used.parts[-2:] == Path(conversion["path"]).parts[-2:]
        else:
            assert conversion is None


def test_each_configuration_ran_in_its_own_fresh_process(tiny_run):
    result, _ = tiny_run
    pids = [r["worker"]["pid"] for r in result.records]
    assert os.getpid() not in pids and len(set(pids)) == len(pids)
    for record in result.records:
        memory = record["memory"]
        assert 0 < memory["baseline_rss_mib"] < memory["peak_rss_mib"]
        assert memory["peak_rss_mib"] <= memory["process_peak_rss_mib"]


def test_integrity_is_computed_against_the_reference(tiny_run):
    result, _ = tiny_run
    assert result.reference["backend"] in result.settings["backends"]
    assert result.reference["runs"] == [{"batch": 1, "status": "ok", "error": None}]
    for record in result.records:
        integrity = record["integrity"]
        assert integrity["samples"] == TINY.integrity_samples
        assert integrity["ok"] is True, integrity
        assert integrity["cosine_min"] > 0.9999 and integrity["max_abs_diff"] < 1e-3


def test_dependencies_energy_and_fingerprint_are_recorded(tiny_run):
    result, _ = tiny_run
    for record in result.records:
        deps = record["dependencies"]
        if deps["available"]:
            # Every backend loads at least its runtime's own library from a package.
            assert any(lib["kind"] in ("package", "other") for lib in deps["non_system"])
            assert not any(
                lib["package"] == "numpy" for lib in deps["non_system"] if "random" in lib["path"]
            )
        background = record["background"]
        if background["available"]:
            assert background["other_cpu"] >= 0 and background["steal"] >= 0
            # A CPU backend keeps about its threads busy; never more than the machine has.
            assert 0 < background["own_cpu_cores"] <= (os.cpu_count() or 1) + 0.5
        energy = record["energy"]
        if energy["available"]:
            assert energy["joules_per_inference"] > 0 and energy["path"] == "end_to_end"
        else:
            assert energy["joules_per_inference"] is None and energy["reason"]
    # Workers never see UNIFER_NUM_THREADS (threads=None is the runtime's own default).
    assert set(result.conditions["thread_env"]) == {
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
    }
    machine = result.machine
    assert machine["cpu"]["physical_cores"] >= 1 and len(machine["digest"]) == 64
    for target in result.settings["backends"]:  # a backend, or backend@accelerator
        assert machine["runtimes"][split_target(target)[0]]["available"] is True


def test_progress_reports_every_phase(tiny_run):
    result, events = tiny_run
    phases = [e.phase for e in events if e.index == 1]
    for phase in (
        "starting",
        "runtime import",
        "cold load",
        "first inference",
        "integrity",
        "end-to-end",
        "model-only",
        "warm load",
        "done",
    ):
        assert phase in phases
    assert events[-1].record is not None and events[-1].total == len(result.records)


def test_report_of_a_real_run(tiny_run, tmp_path):
    result, _ = tiny_run
    written = bench.write_report(result, tmp_path, plots=False)
    assert written["plots"] == "disabled"
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["schema"] == bench.SCHEMA and len(data["records"]) == len(result.records)
    report = (tmp_path / "report.md").read_text()
    for name in result.settings["backends"]:
        assert f"## {name} " in report
    assert "maintains output integrity" in report


def test_batch_above_one_uses_the_dynamic_model(onnx_backends, module_cache, monkeypatch):
    monkeypatch.setenv("UNIFER_CACHE_DIR", str(module_cache))
    result = bench.run(
        "builtin:arcface-tiny", backends=onnx_backends[:1], threads=[1], batches=[2], settings=TINY
    )
    assert result.model["spec"] == "builtin:arcface-tiny?batch=dynamic"
    # The file measured, not the static one models.info describes.
    assert result.model["input"] == "input.1: float32[N,3,112,112]"
    assert result.model["output"].endswith("[N,512]")
    (record,) = result.records
    assert record["status"] == "ok", record["error"]
    assert record["throughput"]["samples_per_s"] == pytest.approx(
        2 * record["throughput"]["inferences_per_s"]
    )
    assert record["integrity"]["samples"] == 2 * TINY.integrity_samples
    assert record["integrity"]["ok"] is True


def test_a_batch_a_fixed_batch_model_cannot_take_fails_instead_of_running_another(
    onnx_backends, module_cache, monkeypatch, tmp_path
):
    if "onnxruntime" not in onnx_backends:
        pytest.skip("needs onnxruntime, which reports the fixed batch dimension")
    monkeypatch.setenv("UNIFER_CACHE_DIR", str(module_cache))
    static = tmp_path / "tiny.onnx"  # a model file: no preprocessing, batch fixed at 1
    shutil.copy(models.path("arcface-tiny"), static)
    result = bench.run(static, backends=["onnxruntime"], threads=[1], batches=[1, 2], settings=TINY)
    one, two = result.records
    assert one["status"] == "ok" and one["integrity"]["samples"] == TINY.integrity_samples
    assert two["status"] == "error" and two["throughput"] is None
    assert "batch 2 cannot be fed" in two["error"] and "dynamic" in two["error"]


def test_energy_without_preprocessing_is_metered_around_the_model_only_rounds(
    onnx_backends, module_cache, monkeypatch, tmp_path
):
    if "onnxruntime" not in onnx_backends:
        pytest.skip("runs onnxruntime in this process")
    monkeypatch.setenv("UNIFER_CACHE_DIR", str(module_cache))
    _rapl(tmp_path / "powercap", "intel-rapl:0", 1_000)
    monkeypatch.setattr(_energy, "Meter", partial(_energy.Meter, tmp_path / "powercap"))
    job = {
        "mode": "measure",
        "model": str(models.path("arcface-tiny")),
        "backend": "onnxruntime",
        "threads": 1,
        "batch": 1,
        "precision": "fp32",
        "preprocess": None,
        "seed": 0,
        "integrity_samples": 1,
        "settings": {"rounds": 1, "per_round": TINY.per_round()},
        "outputs_path": str(tmp_path / "outputs.npz"),
    }
    result = _worker.measure_job(job)
    assert result["latency"]["end_to_end"] is None
    energy = result["energy"]
    assert energy["available"] is True and energy["path"] == "model_only"
    assert energy["joules_per_inference"] == 0.0  # the fake counter stood still


def test_a_sequence_model_is_fed_the_dims_asked_for(onnx_backends, tmp_path):
    """A dynamic non-batch dimension was silently fed as 1; --dim sizes it, the record shows what
    was fed, and an unsized one is pointed out."""
    from onnx import TensorProto, helper, save_model

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "S", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "S", 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "seq", [x], [y])
    path = tmp_path / "seq.onnx"
    save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    backends = onnx_backends[:1]
    options = {backends[0]: {"speeed": 1}}  # a typo: the worker's warning reaches the report
    sized = bench.run(
        path, backends=backends, threads=[1], settings=TINY, dims={"S": 64}, backend_options=options
    )
    (record,) = sized.records
    assert record["inputs"] == {"shapes": {"x": [1, 64, 4]}, "defaulted_dims": []}
    table = bench.format_table(sized)
    assert "inputs fed: x [1, 64, 4] (batch 1)" in table
    assert f"warning ({backends[0]}): backend option 'speeed' is not understood" in table
    assert "- warning: backend option 'speeed'" in markdown(sized)
    unsized = bench.run(path, backends=backends, threads=[1], settings=TINY)
    assert unsized.records[0]["inputs"]["defaulted_dims"] == ["x[1] ('S')"]
    assert "note: dynamic dimension(s) fed as 1: x[1] ('S')" in bench.format_table(unsized)
    assert "**Note**: dynamic dimension(s) fed as 1" in markdown(unsized)
    with pytest.raises(UnsupportedOptionError, match="positive integer"):
        bench.run(path, backends=backends, dims={"S": 0})


def test_a_failing_configuration_is_a_record_not_a_crash(onnx_backends, tmp_path):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"this is not a model")
    result = bench.run(corrupt, backends=onnx_backends[:1], threads=[1], settings=TINY)
    (record,) = result.records
    assert record["status"] == "error"
    assert "ModelLoadError" in record["error"]
    assert result.reference["runs"][0]["status"] == "error"
    assert "failed" in bench.format_table(result)


def test_cli_bench_json_and_out(onnx_backends, module_cache, tmp_path):
    out = tmp_path / "report"
    args = [
        "bench",
        "builtin:arcface-tiny",
        "--backend",
        onnx_backends[0],
        "--threads",
        "1",
        "--warmup",
        "0",
        "--min-runs",
        "2",
        "--min-time",
        "0",
        "--rounds",
        "1",
        "--out",
        str(out),
        "--no-plots",
        "--json",
    ]
    runner = CliRunner()
    result = runner.invoke(main, args, env={"UNIFER_CACHE_DIR": str(module_cache)})
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["schema"] == bench.SCHEMA
    (record,) = data["records"]
    assert record["backend"] == onnx_backends[0] and record["status"] == "ok"
    assert record["latency"]["end_to_end"]["n"] >= 2
    assert (out / "results.json").is_file() and (out / "report.md").is_file()
    assert "cold load" in result.stderr  # the live progress went to stderr
    text = runner.invoke(main, [*args[:-1]], env={"UNIFER_CACHE_DIR": str(module_cache)})
    assert text.exit_code == 0, text.output
    assert "integrity" in text.stdout and onnx_backends[0] in text.stdout


def test_cli_bench_exits_1_when_every_configuration_failed(onnx_backends, tmp_path):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"this is not a model")
    args = ["bench", str(corrupt), "--backend", onnx_backends[0], "--threads", "1", "--json"]
    result = CliRunner().invoke(main, args, env={"UNIFER_CACHE_DIR": str(tmp_path / "cache")})
    assert result.exit_code == 1
    assert json.loads(result.stdout)["records"][0]["status"] == "error"  # still reported
    assert "every configuration failed" in result.stderr


def test_cli_bench_reports_bad_options():
    result = CliRunner().invoke(main, ["bench", "--threads", "zero"])
    assert result.exit_code != 0 and "zero" in result.output


# -- backends in another Python environment ----------------------------------------------------

#: The mxnet plugin's own environment (backends/mxnet/README.md); .ci/run creates it before the
#: main test run.
MXNET_PYTHON = Path(__file__).parents[1] / "backends/mxnet/.venv/bin/python"


def test_a_backend_in_another_environment_is_measured_there(onnx_backends, module_cache):
    if not MXNET_PYTHON.exists():
        pytest.skip(f"no mxnet environment at {MXNET_PYTHON} (uv sync --project backends/mxnet)")
    result = bench.run(
        "builtin:arcface-tiny",
        backends=["onnxruntime", "mxnet"],
        threads=[1],
        settings=TINY,
        interpreters={"mxnet": MXNET_PYTHON},
    )
    records = {r["backend"]: r for r in result.records}
    assert records["mxnet"]["status"] == "ok", records["mxnet"]["error"]
    assert records["mxnet"]["python"] == str(MXNET_PYTHON)
    assert records["mxnet"]["runtime_version"] == "1.9.1"
    assert records["mxnet"]["conversion"]["seconds"] > 0  # converted once, in that environment
    assert records["mxnet"]["integrity"]["ok"] is True
    assert records["onnxruntime"]["python"] == sys.executable
    assert result.settings["interpreters"] == {"mxnet": str(MXNET_PYTHON)}


def test_a_missing_interpreter_is_refused_before_any_work(tmp_path):
    with pytest.raises(UnsupportedOptionError, match=r"'mxnet'.*does not exist.*uv sync"):
        bench.run(
            "builtin:arcface-tiny",
            backends=["mxnet"],
            interpreters={"mxnet": tmp_path / "no-such-env/bin/python"},
        )


def test_a_backend_another_environment_cannot_run_is_refused(onnx_backends, module_cache):
    with pytest.raises(BackendUnavailableError, match=r"'elsewhere' in .*no backend named"):
        bench.run(
            "builtin:arcface-tiny",
            backends=["onnxruntime", "elsewhere"],
            threads=[1],
            settings=TINY,
            interpreters={"elsewhere": sys.executable},  # this python has no such backend
        )


def _stub_workers(
    monkeypatch: pytest.MonkeyPatch, devices: tuple[str, ...]
) -> list[dict[str, Any]]:
    """Replace the worker processes: a probe finds the backend on ``devices``, every other job
    fails at once. Returns the jobs, with the interpreter each was given."""
    jobs: list[dict[str, Any]] = []

    def spawn(job: dict[str, Any], *args: object, python: Path | None = None, **kw: object) -> Any:
        jobs.append({**job, "python": python})
        if job["mode"] == "probe":
            return {
                "status": "ok",
                "runtime_version": "1.0",
                "devices": list(devices),
                "unifer_version": _run._unifer_version(),
                "needs_conversion": False,
            }
        return {"status": "error", "error": "a stub: nothing ran"}

    monkeypatch.setattr(_run, "_spawn", spawn)
    return jobs


def test_a_backend_given_another_environment_is_measured_there_once(
    fake_backend, fake_model, monkeypatch
):
    jobs = _stub_workers(monkeypatch, devices=("cpu",))
    # Installed here too, and not named: a default run would otherwise measure it twice.
    result = bench.run(
        fake_model, threads=[1], reference="fake", interpreters={"fake": sys.executable}
    )
    assert [r["backend"] for r in result.records] == ["fake"]
    assert result.settings["backends"] == ["fake"]
    measured = [j for j in jobs if j["mode"] == "measure"]
    assert [j["python"] for j in measured] == [Path(sys.executable)]


def test_the_default_thread_sweep_skips_targets_another_environment_runs_off_the_cpu(
    fake_backend, fake_model, monkeypatch
):
    _stub_workers(monkeypatch, devices=("gpu:0", "cpu"))  # here, fake runs on the CPU
    result = bench.run(
        fake_model, backends=["fake"], reference="fake", interpreters={"fake": sys.executable}
    )
    assert [r["threads"] for r in result.records] == [None]


@pytest.mark.skipif(sys.platform == "win32", reason="the stand-in worker is a shell script")
def test_an_interrupted_run_leaves_no_worker_behind(tmp_path, monkeypatch):
    slow = tmp_path / "python"  # a worker that would run for a minute
    slow.write_text("#!/bin/sh\nexec sleep 60\n")
    slow.chmod(0o755)
    waiting: list[subprocess.Popen[str]] = []
    wait = subprocess.Popen.wait

    def interrupted(self: subprocess.Popen[str], timeout: float | None = None) -> int:
        if timeout is None:
            return wait(self)
        waiting.append(self)
        raise KeyboardInterrupt  # Ctrl+C while the parent waits for its worker

    monkeypatch.setattr(subprocess.Popen, "wait", interrupted)
    try:
        with pytest.raises(KeyboardInterrupt):
            _spawn({"mode": "measure"}, tmp_path / "job", lambda *_: None, 600, python=slow)
        (worker,) = waiting
        assert worker.returncode == -signal.SIGKILL  # killed and reaped, not orphaned
    finally:
        for proc in waiting:
            if proc.poll() is None:
                proc.kill()
                wait(proc)


def test_an_output_named_like_a_savez_parameter_is_measured(onnx_backends, module_cache, tmp_path):
    """np.savez takes names as keywords: an output called 'file' failed every configuration."""
    if "onnxruntime" not in onnx_backends:
        pytest.skip("needs onnxruntime")
    from onnx import TensorProto, helper, save_model

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 4]) for n in ("y", "file")]
    nodes = [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Neg", ["x"], ["file"])]
    graph = helper.make_graph(nodes, "two", [x], outputs)
    path = tmp_path / "two.onnx"
    save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    result = bench.run(path, backends=["onnxruntime"], threads=[1], settings=TINY)
    (record,) = result.records
    assert record["status"] == "ok", record.get("error")
    assert record["integrity"]["ok"] is True  # both outputs compared with the reference


def test_an_interrupted_run_keeps_the_configurations_measured(
    onnx_backends, module_cache, monkeypatch
):
    """Ctrl+C (or SIGTERM in the CLI) during the third configuration: the two measured stay."""
    if "onnxruntime" not in onnx_backends:
        pytest.skip("needs onnxruntime")
    real = _run._spawn
    calls = []

    def spawn(job, *args, **kwargs):
        if job.get("mode") == "measure":
            calls.append(job)
            if len(calls) == 3:
                raise KeyboardInterrupt
        return real(job, *args, **kwargs)

    monkeypatch.setattr(_run, "_spawn", spawn)
    result = bench.run(
        "builtin:arcface-tiny", backends=["onnxruntime"], threads=[1, 2], batches=[1, 2],
        settings=TINY,
    )  # fmt: skip
    assert [r["status"] for r in result.records] == ["ok", "ok"]
    assert result.conditions["interrupted"] == "after 2 of 4 configurations"


def test_preprocess_false_measures_a_model_whose_sidecar_does_not_fit(
    onnx_backends, module_cache, tmp_path
):
    """A sidecar that cannot apply (two inputs) failed every configuration, with no way around."""
    if "onnxruntime" not in onnx_backends:
        pytest.skip("needs onnxruntime")
    from onnx import TensorProto, helper, save_model

    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 4]) for n in "ab"]
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "two", inputs, [y])
    path = tmp_path / "two.onnx"
    save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    (tmp_path / "two.preprocess.json").write_text("{}")
    (failed,) = bench.run(path, backends=["onnxruntime"], threads=[1], settings=TINY).records
    assert failed["status"] == "error"
    assert "sidecar" in failed["error"] and "preprocess=False" in failed["error"]  # the way out
    result = bench.run(path, backends=["onnxruntime"], threads=[1], settings=TINY, preprocess=False)
    (record,) = result.records
    assert record["status"] == "ok", record.get("error")
