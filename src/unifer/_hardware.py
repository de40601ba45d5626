"""The machine fingerprint: what this computer is, as far as inference speed is concerned.

One job: describe the CPU (model, the instruction-set flags that decide which kernels a runtime
picks, physical and logical cores, the CPUs this process may use), memory, OS, Python, the GPUs and
every installed backend's runtime version, as a JSON-ready dict. ``unifer bench`` stores it in every
result; ``backend="auto"`` keys its decision cache by :func:`fingerprint_digest`, so only stable
facts are in it (no clock speed, load or free memory, nothing personal such as the host name).

Everything is read from the OS (``/proc``, ``/sys``, ``os.sched_getaffinity``) without running
external tools; a fact that cannot be read is ``None``, never guessed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import platform
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

#: Bumped when the fingerprint's fields change meaning, so old cache keys stop matching.
FINGERPRINT_VERSION: Final = 1

#: CPU flags (as /proc/cpuinfo spells them) that change which kernels runtimes use. Only these are
#: recorded: the full list also carries hypervisor and vulnerability bits that say nothing about
#: speed and would make the fingerprint change for no reason.
ISA_FLAGS: Final[tuple[str, ...]] = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx_vnni",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512dq",
    "avx512cd",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx512ifma",
    "avx512vbmi",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "amx_fp16",
    # Arm (the "Features" line of /proc/cpuinfo on aarch64).
    "asimd",
    "asimdhp",
    "asimddp",
    "sve",
    "sve2",
    "bf16",
    "i8mm",
    "sme",
)

#: PCI vendor ids of GPU makers (``/sys/class/drm/card*/device/vendor``).
_GPU_VENDORS: Final = {"0x10de": "nvidia", "0x1002": "amd", "0x8086": "intel"}


def fingerprint(*, runtimes: bool = True) -> dict[str, Any]:
    """This machine as a JSON-ready dict: ``cpu``, ``memory``, ``os``, ``python``, ``gpus`` and,
    with ``runtimes``, ``runtimes`` (each installed backend's runtime version, from its probe).

    Stable across calls and processes on an unchanged machine; probing the runtimes imports them,
    so pass ``runtimes=False`` where that cost matters and the versions are not needed.
    """
    machine = _machine()
    # What this process may use is read each time: sched_setaffinity can change it in-process.
    cpu = {**machine["cpu"], **_usable()}
    data: dict[str, Any] = {"version": FINGERPRINT_VERSION, **machine, "cpu": cpu}
    if runtimes:
        data["runtimes"] = runtime_versions()
    return data


def fingerprint_digest(*, runtimes: bool = True) -> str:
    """sha256 (hex) of :func:`fingerprint`'s canonical JSON: a cache key for this machine."""
    canonical = json.dumps(fingerprint(runtimes=runtimes), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def runtime_versions() -> dict[str, dict[str, Any]]:
    """Every installed backend: its runtime version, whether it can run here, and its plugin."""
    from . import _registry  # the registry imports the plugin contract, not any runtime

    result: dict[str, dict[str, Any]] = {}
    for info in _registry.describe_backends():
        result[info.name] = {
            "version": info.availability.version,
            "available": info.availability.ok,
            "plugin": info.distribution,
            "plugin_version": info.distribution_version,
        }
    return result


def physical_cores(*, usable: bool = True) -> int:
    """Physical cores of this machine, or (``usable``) those with a CPU this process may run on,
    within its cgroup's CPU quota (a container limited to 1.5 CPUs has 2).

    Falls back to the logical CPU count where the topology cannot be read.
    """
    topology = _core_topology()
    allowed = _affinity()
    count = os.cpu_count() or 1
    if topology:
        cpus = [c for c in topology if not usable or allowed is None or c in allowed]
        cores = {topology[c] for c in cpus}
        if cores:
            count = len(cores)
    elif usable and allowed is not None:
        count = len(allowed)
    quota = _cpu_quota() if usable else None
    return min(count, max(1, math.ceil(quota))) if quota is not None else count


def _usable() -> dict[str, Any]:
    allowed = _affinity()
    return {
        "usable_cpus": len(allowed) if allowed is not None else os.cpu_count(),
        "usable_physical_cores": physical_cores(usable=True),
        "cpu_quota": _cpu_quota(),
    }


def _cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPUs this process's cgroup may use (its CFS quota over period), or None if unlimited
    or unreadable: cgroup v2 ``cpu.max``, else v1 ``cpu.cfs_quota_us``/``cpu.cfs_period_us``."""
    own = next(
        (line[3:] for line in (_read("/proc/self/cgroup") or "").splitlines() if line[:3] == "0::"),
        "/",
    )
    try:
        for directory in dict.fromkeys([root / own.lstrip("/"), root]):
            text = _read(directory / "cpu.max")
            if text is not None:
                quota, _, period = text.strip().partition(" ")
                return None if quota == "max" or not period else int(quota) / int(period)
        quota_us = _read(root / "cpu" / "cpu.cfs_quota_us")
        period_us = _read(root / "cpu" / "cpu.cfs_period_us")
        if quota_us is None or period_us is None or int(quota_us) <= 0:
            return None
        return int(quota_us) / int(period_us)
    except (ValueError, ZeroDivisionError):  # a file of another format: no limit known
        return None


# -- the machine (cached: it does not change while a process runs) --------------------------------


@functools.cache
def _machine() -> dict[str, Any]:
    return {
        "cpu": _cpu(),
        "memory": {"total_bytes": _memory_total()},
        "os": _os(),
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "numpy": _numpy_version(),
        },
        "gpus": gpus(),
    }


def _cpu() -> dict[str, Any]:
    info = parse_cpuinfo(_read("/proc/cpuinfo") or "")
    flags = set(info.get("flags", "").split()) | set(info.get("features", "").split())
    model = info.get("model name") or info.get("cpu model") or _sysctl_brand() or None
    present = [f for f in ISA_FLAGS if f in flags]
    return {
        "arch": platform.machine(),
        "vendor": info.get("vendor_id") or info.get("cpu implementer"),
        "model": model.strip() if model else (platform.processor() or None),
        "family": info.get("cpu family"),
        "model_id": info.get("model"),
        "flags": present,
        "avx512": "avx512f" in flags,
        "vnni": "avx512_vnni" in flags or "avx_vnni" in flags,
        "bf16": "avx512_bf16" in flags or "amx_bf16" in flags or "bf16" in flags,
        "amx": any(f.startswith("amx") for f in flags),
        "physical_cores": physical_cores(usable=False),
        "logical_cores": os.cpu_count(),
    }


def parse_cpuinfo(text: str) -> dict[str, str]:
    """The first processor's ``key: value`` lines of ``/proc/cpuinfo`` text, keys lower-cased."""
    result: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if result.get("processor") is not None and "flags" in result:
                break  # one processor's block is enough: the flags are the same on each
            continue
        key, sep, value = line.partition(":")
        if sep:
            result.setdefault(key.strip().lower(), value.strip())
    return result


@functools.cache
def _core_topology(root: Path = Path("/sys/devices/system/cpu")) -> dict[int, tuple[str, str]]:
    """Logical CPU number -> (package id, core id), from sysfs; empty where unreadable."""
    topology: dict[int, tuple[str, str]] = {}
    for entry in root.glob("cpu[0-9]*/topology"):
        match = re.fullmatch(r"cpu(\d+)", entry.parent.name)
        package = _read(entry / "physical_package_id")
        core = _read(entry / "core_id")
        if match and package is not None and core is not None:
            topology[int(match.group(1))] = (package.strip(), core.strip())
    return topology


def _affinity() -> set[int] | None:
    getter = getattr(os, "sched_getaffinity", None)
    if getter is None:  # macOS, Windows
        return None
    try:
        return set(getter(0))
    except OSError:
        return None


def _memory_total() -> int | None:
    meminfo = _read("/proc/meminfo")
    if meminfo:
        match = re.search(r"^MemTotal:\s+(\d+)\s*kB", meminfo, re.MULTILINE)
        if match:
            return int(match.group(1)) * 1024
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def _os() -> dict[str, Any]:
    release = _read("/etc/os-release") or ""
    match = re.search(r'^PRETTY_NAME="?([^"\n]*)"?', release, re.MULTILINE)
    libc, libc_version = platform.libc_ver()
    return {
        "system": platform.system(),
        "release": platform.release(),
        "distribution": match.group(1) if match else None,
        "libc": f"{libc} {libc_version}".strip() or None,
    }


def _numpy_version() -> str | None:
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("numpy")
    except PackageNotFoundError:
        return None


def _sysctl_brand() -> str | None:
    """The CPU name on macOS, where there is no /proc (read through sysctl without a subprocess)."""
    if sys.platform != "darwin":
        return None
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        size = ctypes.c_size_t(256)
        buffer = ctypes.create_string_buffer(size.value)
        if libc.sysctlbyname(b"machdep.cpu.brand_string", buffer, ctypes.byref(size), None, 0):
            return None
        return buffer.value.decode(errors="replace") or None
    except (OSError, AttributeError):
        return None


# -- GPUs ------------------------------------------------------------------------------------------


def gpus(
    proc: Path = Path("/proc"),
    sys_root: Path = Path("/sys"),
    dev: Path = Path("/dev"),
    nvml: Callable[[], list[dict[str, Any]]] | None = None,
) -> list[dict[str, Any]]:
    """GPUs the kernel knows about: NVIDIA's driver files, else each DRM card's PCI ids.

    No external tool (nvidia-smi, lspci) is run; the list is sorted by PCI address. GPU
    containers often expose ``/dev/nvidia0`` and the driver's NVML library without
    ``/proc/driver/nvidia``: there NVML (``nvml``, default :func:`nvml_gpus`) names them.
    """
    found: dict[str, dict[str, Any]] = {}
    for info in sorted((proc / "driver/nvidia/gpus").glob("*/information")):
        fields = parse_cpuinfo(_read(info) or "")
        address = info.parent.name.lower()
        found[address] = {
            "vendor": "nvidia",
            "name": fields.get("model"),
            "pci": address,
            "driver": _nvidia_driver_version(proc),
        }
    if not found and (dev / "nvidia0").exists():
        found.update((g["pci"], g) for g in (nvml or nvml_gpus)())
    # The driver listed its GPUs: their DRM cards are the same devices (NVML's are named nvml:N,
    # not by PCI address, so the address check below would not catch them).
    nvidia_listed = bool(found)
    for card in sorted((sys_root / "class/drm").glob("card[0-9]*")):
        if "-" in card.name:  # card0-HDMI-A-1 and the like are connectors, not devices
            continue
        device = card / "device"
        vendor = (_read(device / "vendor") or "").strip().lower()
        if vendor not in _GPU_VENDORS or (nvidia_listed and _GPU_VENDORS[vendor] == "nvidia"):
            continue
        try:
            address = device.resolve().name.lower()
        except OSError:
            address = card.name
        if address in found:
            continue
        product = _read(device / "product_name")  # amdgpu exposes a marketing name here
        found[address] = {
            "vendor": _GPU_VENDORS[vendor],
            "name": product.strip() if product else None,
            "pci": address,
            "pci_id": f"{vendor[2:]}:{(_read(device / 'device') or '').strip().lower()[2:]}",
            "driver": _driver_name(device),
        }
    return [found[k] for k in sorted(found)]


def nvml_gpus(library: str = "libnvidia-ml.so.1") -> list[dict[str, Any]]:
    """NVIDIA GPUs as NVML (the driver's management library) lists them; ``[]`` without it."""
    import ctypes

    try:
        nvml = ctypes.CDLL(library)
        if nvml.nvmlInit_v2() != 0:
            return []
    except (OSError, AttributeError):
        return []
    try:
        text = ctypes.create_string_buffer(96)
        driver = text.value.decode() if nvml.nvmlSystemGetDriverVersion(text, 96) == 0 else None
        count = ctypes.c_uint(0)
        if nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) != 0:
            return []
        found = []
        for index in range(count.value):
            handle = ctypes.c_void_p()
            if nvml.nvmlDeviceGetHandleByIndex_v2(index, ctypes.byref(handle)) != 0:
                continue
            name = text.value.decode() if nvml.nvmlDeviceGetName(handle, text, 96) == 0 else None
            found.append(
                {"vendor": "nvidia", "name": name, "pci": f"nvml:{index}", "driver": driver}
            )
        return found
    finally:
        nvml.nvmlShutdown()


def _nvidia_driver_version(proc: Path) -> str | None:
    match = re.search(r"Kernel Module\s+([0-9.]+)", _read(proc / "driver/nvidia/version") or "")
    return match.group(1) if match else None


def _driver_name(device: Path) -> str | None:
    try:
        return (device / "driver").resolve(strict=True).name
    except OSError:
        return None


def _read(path: str | Path) -> str | None:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return None
