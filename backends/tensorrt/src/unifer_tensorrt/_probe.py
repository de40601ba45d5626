"""Why TensorRT can or cannot run here, in the order a user would have to fix it.

1. an NVIDIA GPU (the kernel driver's ``/proc/driver/nvidia/gpus/*`` or ``/dev/nvidia0``),
2. the driver's CUDA library (``libcuda.so.1``) loads and initialises,
3. the ``tensorrt`` package is installed,
4. it imports, i.e. its libraries (``libnvinfer``, from the ``tensorrt-cu12-libs`` wheel that pip
   downloads from pypi.nvidia.com) load,
5. a CUDA runtime library (``libcudart``) the driver supports is there, and sees the GPU.

Every check takes its inputs from a :class:`Host`, so tests cover each answer on a machine that has
none of these. Importing this module imports no CUDA library and no TensorRT.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.metadata
import importlib.util
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from unifer.backend import Availability

from . import _cuda

INSTALL: Final = 'pip install "unifer[tensorrt]"'
#: Appended to install lines: where TensorRT's libraries come from, which surprises people behind
#: proxies or mirrors that only serve pypi.org.
LIBRARIES_NOTE: Final = (
    "TensorRT's libraries are downloaded from pypi.nvidia.com during the install"
)
#: The distribution pip installs for the runtime extra; its libraries are "<it>-libs".
DEFAULT_DISTRIBUTION: Final = "tensorrt-cu12"
#: TensorRT releases this plugin is written for (the TensorRT 10 API; 11 removed weak typing).
SUPPORTED_MAJORS: Final = (10, 11)


def _default_cudart() -> _cuda.CudaRuntime:
    return _cuda.cudart()


@dataclass(frozen=True)
class Host:
    """Where :func:`diagnose` looks. The defaults are this machine; tests pass their own."""

    proc: Path = Path("/proc")
    dev: Path = Path("/dev")
    platform: str = sys.platform
    load_library: Callable[[str], Any] = ctypes.CDLL
    find_spec: Callable[[str], object | None] = importlib.util.find_spec
    import_module: Callable[[str], Any] = importlib.import_module
    distributions: Callable[[], Mapping[str, Sequence[str]]] = field(
        default=importlib.metadata.packages_distributions
    )
    load_cudart: Callable[[], _cuda.CudaRuntime] = _default_cudart


def gpu_evidence(proc: Path, dev: Path) -> list[str]:
    """Files that show an NVIDIA GPU to the kernel: one per GPU in ``/proc``, or device nodes."""
    found = sorted(str(p) for p in (proc / "driver/nvidia/gpus").glob("*"))
    # Containers often get the device nodes without the driver's /proc entries.
    found += sorted(str(p) for p in dev.glob("nvidia[0-9]*"))
    return found


def tensorrt_distribution(distributions: Mapping[str, Sequence[str]]) -> str:
    """The installed distribution that provides the ``tensorrt`` module (``tensorrt-cu12``...)."""
    names = [d for d in distributions.get("tensorrt", ()) if d.lower() != "tensorrt"]
    names = names or list(distributions.get("tensorrt", ()))
    if not names:
        return DEFAULT_DISTRIBUTION
    return names[0].lower().replace("_", "-")


def diagnose(host: Host | None = None) -> Availability:
    """TensorRT's availability here: ok with its version and devices, or the first thing missing."""
    host = host or Host()
    linux = host.platform.startswith("linux")
    if host.platform == "darwin":
        return _no(
            "TensorRT does not run on macOS: it needs an NVIDIA GPU with Linux or Windows",
            "use a Linux or Windows machine with an NVIDIA GPU",
        )
    if linux and not gpu_evidence(host.proc, host.dev):
        return _no(
            f"no NVIDIA GPU found: {host.proc}/driver/nvidia/gpus has no entries and there is no "
            f"{host.dev}/nvidia0; TensorRT runs only on NVIDIA GPUs",
            "run on a machine with an NVIDIA GPU and its driver (TensorRT has no CPU mode)",
        )
    try:
        driver = _cuda.driver_info(loader=host.load_library, platform=host.platform)
    except _cuda.DriverError as exc:
        return _no(f"an NVIDIA GPU is present but {exc}", "install or repair the NVIDIA driver")
    if driver.device_count == 0:
        return _no(
            "the NVIDIA driver sees no GPU this process may use (cuDeviceGetCount returned 0; "
            "check CUDA_VISIBLE_DEVICES)",
            "unset or correct CUDA_VISIBLE_DEVICES",
        )
    if host.find_spec("tensorrt") is None:
        return _no("the tensorrt package is not installed", f"{INSTALL}  # {LIBRARIES_NOTE}")
    try:
        trt = host.import_module("tensorrt")
    except (ImportError, OSError) as exc:
        return _broken_import(exc, host)
    except Exception as exc:  # a broken install is an answer, not a crash
        return _no(
            f"tensorrt is installed but failed to import: {type(exc).__name__}: {exc}",
            f"pip install --force-reinstall {tensorrt_distribution(host.distributions())}",
        )
    version = str(getattr(trt, "__version__", "unknown"))
    major = version.split(".", 1)[0]
    if not major.isdigit() or int(major) not in SUPPORTED_MAJORS:
        return _no(
            f"tensorrt {version} is installed, but unifer-tensorrt supports TensorRT "
            f"{' and '.join(map(str, SUPPORTED_MAJORS))}",
            f"pip install 'tensorrt-cu12>=10,<12'  # {LIBRARIES_NOTE}",
            version=version,
        )
    try:
        cuda = host.load_cudart()
        count = cuda.device_count()
    except (_cuda.CudaUnavailableError, _cuda.CudaError) as exc:
        return _no(
            f"tensorrt {version} imports, but the CUDA runtime is not usable: {exc}",
            "pip install nvidia-cuda-runtime-cu12",
            version=version,
        )
    return Availability(ok=True, version=version, devices=tuple(f"cuda:{i}" for i in range(count)))


def _broken_import(exc: BaseException, host: Host) -> Availability:
    """``import tensorrt`` failed: name the missing library and the wheel that carries it."""
    message = str(exc).strip() or type(exc).__name__
    dist = tensorrt_distribution(host.distributions())
    libraries = any(
        marker in message
        for marker in ("libnvinfer", "libnvonnxparser", "nvinfer", "shared object")
    )
    if libraries:
        return _no(
            f"the tensorrt package is installed but its libraries cannot be loaded ({message}); "
            f"they come in the {dist}-libs wheel from pypi.nvidia.com",
            f"pip install --force-reinstall {dist} {dist}-libs  # {LIBRARIES_NOTE}",
        )
    return _no(
        f"tensorrt is installed but cannot be imported: {type(exc).__name__}: {message}",
        f"pip install --force-reinstall {dist}  # {LIBRARIES_NOTE}",
    )


def _no(reason: str, install: str, *, version: str | None = None) -> Availability:
    return Availability(ok=False, reason=reason, install=install, version=version)
