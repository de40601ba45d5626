"""ncnn's Vulkan path (``backend_options={"ncnn": {"device": "vulkan"}}``), on real Vulkan.

Here that is Mesa's lavapipe, Vulkan on the CPU (``apt-get install libvulkan1
mesa-vulkan-drivers``; .ci/run installs it): the same ncnn Vulkan code, shaders and device memory
as on a GPU, only slower. On a machine with a GPU and its Vulkan driver the same tests run there.
The tests that need a device skip where ncnn finds none, saying why; those about having none run
everywhere, in a child process whose Vulkan loader is pointed at no driver. The conformance kit on
Vulkan is in test_contract.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

pytest.importorskip("ncnn")

from unifer import Engine, UnsupportedOptionError, register_backend, unregister_backend
from unifer._parity import compare
from unifer.backend import Availability
from unifer_ncnn import NcnnBackend, _vulkan

if TYPE_CHECKING:
    from conftest import Converted

FOUND = _vulkan.enumerate_devices()
needs_vulkan = pytest.mark.skipif(
    not FOUND.devices,
    reason=f"ncnn finds no Vulkan device here ({FOUND.why_none}); {_vulkan.INSTALL_HINT}",
)


def on(device: object) -> dict[str, dict[str, object]]:
    return {"ncnn": {"device": device}}


def embed(model: Converted, x: np.ndarray, **options: object) -> tuple[np.ndarray, dict]:
    with Engine.load(model.param, backend="ncnn", **options) as engine:  # type: ignore[arg-type]
        return engine.run({"input.1": x})["embedding"], dict(engine.settings)


@needs_vulkan
def test_probe_lists_the_vulkan_devices_after_the_cpu() -> None:
    availability = NcnnBackend().probe()
    assert sorted(availability.devices[1:]) == sorted(f"vulkan:{d.index}" for d in FOUND.devices)
    assert availability.devices[:2] == ("cpu", f"vulkan:{FOUND.default}")  # ncnn's choice first
    assert availability.reason is not None
    assert availability.reason.startswith("Vulkan: vulkan:0 = ")


@needs_vulkan
def test_fp32_on_vulkan_matches_the_cpu(arcface_tiny: Converted, face: np.ndarray) -> None:
    on_cpu, cpu_settings = embed(arcface_tiny, face)
    on_vulkan, settings = embed(arcface_tiny, face, backend_options=on("vulkan"))
    np.testing.assert_allclose(on_vulkan, on_cpu, atol=1e-5, rtol=1e-4)
    assert cpu_settings["device"] == "cpu" and cpu_settings["use_vulkan_compute"] is False
    default = FOUND.devices[FOUND.default or 0]
    assert settings["device"] == default.device
    assert settings["vulkan_device"] == f"{default.name} ({default.kind})"
    assert settings["use_vulkan_compute"] is True
    assert not any(settings[flag] for flag in ("use_fp16_storage", "use_bf16_storage"))


@needs_vulkan
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_reduced_precision_on_vulkan_is_close_but_not_exact(
    arcface_tiny: Converted, face: np.ndarray, precision: str
) -> None:
    exact, _ = embed(arcface_tiny, face)
    reduced, settings = embed(
        arcface_tiny, face, precision=precision, backend_options=on("vulkan:0")
    )
    assert settings["device"] == "vulkan:0" and settings["precision"] == precision
    # ncnn turns off what the device lacks (lavapipe: bf16 storage, keeping bf16 packing); the
    # settings say what stayed on, and something did.
    flags = [k for k in settings if k.startswith(f"use_{precision}_")]
    assert flags and any(settings[k] for k in flags)
    parity = compare({"embedding": exact}, {"embedding": reduced})
    assert parity.max_abs_diff > 0 and parity.min_cosine > 0.999


@needs_vulkan
def test_a_device_this_machine_lacks_lists_the_ones_it_has(arcface_tiny: Converted) -> None:
    with pytest.raises(UnsupportedOptionError, match=r"device='vulkan:99'.*vulkan:0 = "):
        Engine.load(
            arcface_tiny.param, backend="ncnn", backend_options={"ncnn": {"device": "vulkan:99"}}
        )


@pytest.mark.parametrize("device", ["gpu", "cuda:0", "vulkan:x", 0])
def test_a_malformed_device_is_refused(arcface_tiny: Converted, device: object) -> None:
    with pytest.raises(UnsupportedOptionError, match="'cpu', 'vulkan' or 'vulkan:N'"):
        Engine.load(
            arcface_tiny.param, backend="ncnn", backend_options={"ncnn": {"device": device}}
        )


def child(code: str, **environ: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh Python with ``environ`` added to this environment."""
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **environ},
        capture_output=True,
        text=True,
        check=True,
    )


def without_vulkan_driver(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a child whose Vulkan loader finds no driver (or which has no loader)."""
    nowhere = "/nonexistent/icd.json"  # both names: loaders before 1.3.234 read only the first
    return child(code, VK_ICD_FILENAMES=nowhere, VK_DRIVER_FILES=nowhere)


def test_without_a_vulkan_device_the_probe_says_why_and_stays_quiet() -> None:
    result = without_vulkan_driver(
        "import json; from unifer_ncnn import NcnnBackend; a = NcnnBackend().probe(); "
        "print(json.dumps([a.ok, a.devices, a.reason]))"
    )
    ok, devices, reason = json.loads(result.stdout)
    assert ok and devices == ["cpu"]
    assert reason.startswith("no Vulkan device (") and "failed" in reason
    # ncnn's own lines went into the reason, not onto the user's terminal.
    assert result.stderr == ""


def test_without_a_vulkan_device_asking_for_one_says_how_to_get_one() -> None:
    result = without_vulkan_driver(
        "from unifer_ncnn import _vulkan\n"
        "try:\n    _vulkan.resolve('vulkan')\n"
        "except Exception as exc:\n    print(type(exc).__name__, exc)\n"
    )
    assert result.stdout.startswith("UnsupportedOptionError backend option device='vulkan'")
    assert "finds no Vulkan device here" in result.stdout
    assert "apt-get install libvulkan1 mesa-vulkan-drivers" in result.stdout


@needs_vulkan
def test_vulkan_on_the_cpu_is_not_an_accelerator_auto_measures() -> None:
    availability = NcnnBackend().probe()
    assert availability.accelerators == tuple(d.device for d in FOUND.devices if d.is_gpu)
    assert all(
        f"vulkan:{d.index}" not in availability.accelerators
        for d in FOUND.devices
        if d.kind == "CPU"
    )


class NcnnAllVulkan(NcnnBackend):
    """ncnn that calls every Vulkan device an accelerator, lavapipe included, so that auto's
    measuring of a backend on its accelerators runs here on real Vulkan."""

    name = "ncnnvk"

    def probe(self) -> Availability:
        found = super().probe()
        return dataclasses.replace(found, accelerators=found.devices[1:])


@needs_vulkan
def test_auto_measures_ncnn_on_its_vulkan_devices(
    arcface_tiny: Converted, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UNIFER_DISABLE_BACKENDS", "ncnn")  # only the subclass competes
    register_backend(NcnnAllVulkan)
    try:
        engine = Engine.load(arcface_tiny.param, threads=2, budget_s=1.0)
    finally:
        unregister_backend("ncnnvk")
    with engine:
        trials = {str(t.candidate): t for t in engine.selection.trials}
        on_vulkan = trials[f"ncnnvk/vulkan:{FOUND.devices[0].index}/fp32/threads=2"]
        assert on_vulkan.status == "measured", on_vulkan.reason
        assert on_vulkan.cosine is not None and on_vulkan.cosine > 0.99999
        assert trials["ncnnvk/fp32/threads=2"].status == "measured"
        chosen = engine.selection.chosen
        assert engine.settings["device"] == (chosen.device or "cpu")


@needs_vulkan
def test_bench_measures_ncnn_on_the_cpu_and_on_vulkan_side_by_side() -> None:
    from unifer import bench

    settings = bench.Settings(warmup=1, min_runs=3, min_time_s=0.0, rounds=1, integrity_samples=2)
    events: list[bench.Progress] = []
    result = bench.run(
        "builtin:arcface-tiny",
        backends=["ncnn", "ncnn@vulkan"],
        threads=[2],
        settings=settings,
        progress=events.append,
    )
    records = {r["backend"]: r for r in result.records}
    assert set(records) == {"ncnn", "ncnn@vulkan"}
    assert records["ncnn"]["settings"]["device"] == "cpu"
    assert records["ncnn@vulkan"]["settings"]["device"].startswith("vulkan:")
    for record in records.values():
        assert record["status"] == "ok", record["error"]
        assert record["integrity"]["ok"] is True
    # One conversion serves both devices.
    assert sum(e.phase == "convert for ncnn" for e in events) == 1


def test_probe_works_in_a_process_without_stderr() -> None:
    """A daemon may run with file descriptor 2 closed: the capture is skipped, not fatal."""
    code = (
        "import os; os.close(2); from unifer_ncnn import NcnnBackend; a = NcnnBackend().probe(); "
        "print(a.ok, a.devices[0])"
    )
    assert child(code).stdout.split() == ["True", "cpu"]


@needs_vulkan
def test_engine_device_argument_picks_the_vulkan_device(arcface_tiny: Converted) -> None:
    """``Engine.load(device=...)`` is ncnn's device option under unifer's device names."""
    first = f"vulkan:{FOUND.default}"  # what "vulkan" means to ncnn and to Engine.load
    for device in (first, "vulkan"):
        with Engine.load(arcface_tiny.param, backend="ncnn", device=device) as engine:
            assert engine.settings["device"] == first
    with Engine.load(arcface_tiny.param, backend="ncnn", device="cpu") as engine:
        assert engine.settings["device"] == "cpu"


@needs_vulkan
def test_an_int8_model_is_refused_on_vulkan(tmp_path: Path) -> None:
    # ncnn's int8 Gemm shader failed to compile on lavapipe and the process died (SIGSEGV).
    param = tmp_path / "q.param"
    param.write_text("7767517\n2 2\nInput in 0 1 in 0=4 1=1\nGemm g 1 1 in out 8=2 9=4 10=4 18=1\n")
    param.with_suffix(".bin").write_bytes(b"")
    with pytest.raises(UnsupportedOptionError, match="device='cpu'"):
        Engine.load(param, backend="ncnn", precision="int8", backend_options=on("vulkan"))
