"""The machine fingerprint: complete, JSON-ready, stable; parsers checked on synthetic OS files."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from unifer import _hardware
from unifer._hardware import (
    fingerprint,
    fingerprint_digest,
    gpus,
    nvml_gpus,
    parse_cpuinfo,
    physical_cores,
    runtime_versions,
)

X86_CPUINFO = """\
processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC 9R14
flags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512_vnni avx512_bf16 hypervisor

processor\t: 1
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14
flags\t\t: fpu
"""

ARM_CPUINFO = """\
processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd asimddp sve bf16 i8mm
CPU implementer\t: 0x41
"""


def test_fingerprint_is_complete_json_and_stable():
    first = fingerprint()
    assert first == fingerprint()
    assert json.loads(json.dumps(first)) == first
    assert {"version", "cpu", "memory", "os", "python", "gpus", "runtimes"} <= set(first)
    cpu = first["cpu"]
    for key in (
        "arch",
        "model",
        "flags",
        "avx512",
        "vnni",
        "bf16",
        "amx",
        "physical_cores",
        "logical_cores",
        "usable_cpus",
    ):
        assert key in cpu
    assert 1 <= cpu["physical_cores"] <= cpu["logical_cores"]
    assert cpu["usable_physical_cores"] <= cpu["physical_cores"]
    assert isinstance(first["gpus"], list)
    assert "runtimes" not in fingerprint(runtimes=False)


def test_digest_is_stable_hex_and_depends_on_the_runtimes():
    digest = fingerprint_digest()
    assert digest == fingerprint_digest()
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert fingerprint_digest(runtimes=False) == fingerprint_digest(runtimes=False)


def test_runtime_versions_come_from_the_probes(fake_backend):
    versions = runtime_versions()
    assert versions["fake"] == {
        "version": "1.0",
        "available": True,
        "plugin": None,
        "plugin_version": None,
    }
    assert fingerprint()["runtimes"]["fake"]["version"] == "1.0"
    fake_backend.available = False
    assert runtime_versions()["fake"]["available"] is False


def test_parse_cpuinfo_reads_the_first_processor():
    info = parse_cpuinfo(X86_CPUINFO)
    assert info["model name"] == "AMD EPYC 9R14"
    assert "avx512_bf16" in info["flags"].split()
    assert info["cpu family"] == "25"
    arm = parse_cpuinfo(ARM_CPUINFO)
    assert "sve" in arm["features"].split()


def test_cpu_flags_keep_only_the_isa_flags(monkeypatch):
    monkeypatch.setattr(
        _hardware, "_read", lambda path: X86_CPUINFO if "cpuinfo" in str(path) else None
    )
    cpu = _hardware._cpu()
    assert cpu["flags"] == ["sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"]
    assert cpu["avx512"] and cpu["vnni"] and cpu["bf16"] and not cpu["amx"]
    assert cpu["model"] == "AMD EPYC 9R14"


def test_core_topology_counts_smt_siblings_once(tmp_path):
    for cpu, core in ((0, 0), (1, 1), (2, 0), (3, 1)):  # two cores, two threads each
        topology = tmp_path / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        (topology / "physical_package_id").write_text("0\n")
        (topology / "core_id").write_text(f"{core}\n")
    found = _hardware._core_topology(tmp_path)
    assert found == {0: ("0", "0"), 1: ("0", "1"), 2: ("0", "0"), 3: ("0", "1")}
    assert len(set(found.values())) == 2


def test_physical_cores_is_positive():
    assert 1 <= physical_cores(usable=True) <= physical_cores(usable=False) <= (os.cpu_count() or 1)


def test_gpus_from_driver_files(tmp_path):
    proc, sys_root = tmp_path / "proc", tmp_path / "sys"
    nvidia = proc / "driver/nvidia/gpus/0000:17:00.0"
    nvidia.mkdir(parents=True)
    (nvidia / "information").write_text("Model: \t\t NVIDIA H200\nIRQ:   \t\t 42\n")
    (proc / "driver/nvidia/version").write_text(
        "NVRM version: NVIDIA UNIX x86_64 Kernel Module  570.86.15  Thu Jan 1 2026\n"
    )
    devices = tmp_path / "devices"
    for card, address, vendor, product in (
        ("card0", "0000:17:00.0", "0x10de", None),  # the same NVIDIA GPU: listed once
        ("card1", "0000:65:00.0", "0x1002", "AMD Instinct MI300X"),
        ("card2", "0000:00:02.0", "0x1af4", None),  # virtio GPU: not a compute GPU
    ):
        device = devices / address
        device.mkdir(parents=True)
        (device / "vendor").write_text(vendor + "\n")
        (device / "device").write_text("0x74a1\n")
        if product:
            (device / "product_name").write_text(product + "\n")
        (sys_root / "class/drm" / card).mkdir(parents=True)
        (sys_root / "class/drm" / card / "device").symlink_to(device)
    (sys_root / "class/drm/card1-DP-1").mkdir()  # a connector, not a device
    found = gpus(proc, sys_root)
    assert [g["vendor"] for g in found] == ["nvidia", "amd"]
    assert found[0]["name"] == "NVIDIA H200"
    assert found[0]["driver"] == "570.86.15"
    assert found[1]["name"] == "AMD Instinct MI300X"
    assert found[1]["pci_id"] == "1002:74a1"


def test_no_gpus_without_driver_files(tmp_path: Path):
    assert gpus(tmp_path / "proc", tmp_path / "sys", tmp_path / "dev") == []


def test_gpus_from_nvml_in_a_container_without_driver_files(tmp_path: Path):
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev/nvidia0").touch()
    listed = [{"vendor": "nvidia", "name": "NVIDIA H100", "pci": "nvml:0", "driver": "580.1"}]
    found = gpus(tmp_path / "proc", tmp_path / "sys", tmp_path / "dev", nvml=lambda: listed)
    assert found == listed


def test_nvml_without_the_library_lists_nothing():
    assert nvml_gpus("libnvidia-ml-that-does-not-exist.so") == []


#: NVML's entry points as nvml_gpus calls them, returning two GPUs (or failing at ``FAIL``), so the
#: ctypes binding is exercised through a real shared library on machines without NVIDIA's driver.
NVML_STUB = r"""
#include <stdio.h>
#include <string.h>
static int shut = 0;
int nvmlInit_v2(void) { return FAIL == 1 ? 9 : 0; }
int nvmlShutdown(void) { shut += 1; return 0; }
int nvml_stub_shutdowns(void) { return shut; }
int nvmlSystemGetDriverVersion(char *v, unsigned n) { snprintf(v, n, "580.95.05"); return 0; }
int nvmlDeviceGetCount_v2(unsigned *count) { *count = 2; return FAIL == 2 ? 999 : 0; }
int nvmlDeviceGetHandleByIndex_v2(unsigned i, void **handle) {
    *handle = (void *)(unsigned long)(i + 1);
    return 0;
}
int nvmlDeviceGetName(void *handle, char *name, unsigned n) {
    snprintf(name, n, "NVIDIA H200 (%lu)", (unsigned long)handle);
    return 0;
}
"""


def nvml_stub(directory: Path, fail: int = 0) -> Path:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to build the NVML stub")
    source = directory / "nvml_stub.c"
    source.write_text(NVML_STUB)
    library = directory / f"libnvidia-ml-stub{fail}.so"
    subprocess.run(
        [compiler, "-shared", "-fPIC", f"-DFAIL={fail}", "-o", str(library), str(source)],
        check=True,
    )
    return library


def test_nvml_gpus_through_a_real_shared_library(tmp_path: Path):
    library = nvml_stub(tmp_path)
    assert nvml_gpus(str(library)) == [
        {"vendor": "nvidia", "name": "NVIDIA H200 (1)", "pci": "nvml:0", "driver": "580.95.05"},
        {"vendor": "nvidia", "name": "NVIDIA H200 (2)", "pci": "nvml:1", "driver": "580.95.05"},
    ]
    assert ctypes.CDLL(str(library)).nvml_stub_shutdowns() == 1  # NVML is shut down again


def test_nvml_that_fails_lists_nothing(tmp_path: Path):
    assert nvml_gpus(str(nvml_stub(tmp_path, fail=1))) == []  # nvmlInit fails
    assert nvml_gpus(str(nvml_stub(tmp_path, fail=2))) == []  # the device count fails


def test_a_gpu_listed_by_nvml_is_not_listed_again_from_its_drm_card(tmp_path: Path):
    # The usual GPU container: /dev/nvidia0 and NVML, no /proc/driver/nvidia, the card in sysfs.
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev/nvidia0").touch()
    device = tmp_path / "devices/0000:01:00.0"
    device.mkdir(parents=True)
    (device / "vendor").write_text("0x10de\n")
    (tmp_path / "sys/class/drm/card0").mkdir(parents=True)
    (tmp_path / "sys/class/drm/card0/device").symlink_to(device)
    listed = [{"vendor": "nvidia", "name": "NVIDIA H200", "pci": "nvml:0", "driver": "580.1"}]
    found = gpus(tmp_path / "proc", tmp_path / "sys", tmp_path / "dev", nvml=lambda: listed)
    assert found == listed
    # Without NVML's answer the card itself is still listed, each NVIDIA card once.
    second = tmp_path / "devices/0000:02:00.0"
    second.mkdir()
    (second / "vendor").write_text("0x10de\n")
    (tmp_path / "sys/class/drm/card1").mkdir()
    (tmp_path / "sys/class/drm/card1/device").symlink_to(second)
    found = gpus(tmp_path / "proc", tmp_path / "sys", tmp_path / "dev", nvml=lambda: [])
    assert [g["pci"] for g in found] == ["0000:01:00.0", "0000:02:00.0"]


@pytest.mark.parametrize(
    ("files", "quota"),
    [
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "50000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 0.5),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({"cpu.max": "garbage"}, None),
        ({}, None),
    ],
)
def test_the_cgroup_cpu_quota_is_read(tmp_path, files, quota):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert _hardware._cpu_quota(tmp_path) == quota


def test_a_cpu_quota_bounds_the_usable_cores(monkeypatch):
    monkeypatch.setattr(_hardware, "_cpu_quota", lambda: 0.5)
    assert _hardware.physical_cores() == 1
    assert _hardware.fingerprint(runtimes=False)["cpu"]["cpu_quota"] == 0.5


def test_usable_cpus_follow_an_affinity_set_in_the_process():
    """Auto keys its decisions on them: a process pinned to one CPU is another machine."""
    allowed = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(allowed)})
        assert _hardware.fingerprint(runtimes=False)["cpu"]["usable_cpus"] == 1
        assert _hardware.physical_cores() == 1
    finally:
        os.sched_setaffinity(0, allowed)
