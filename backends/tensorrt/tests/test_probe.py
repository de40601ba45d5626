"""probe(): each reason TensorRT cannot run, told apart precisely. No GPU needed.

Each branch gets a :class:`Host` whose files, libraries and modules are those of the machine it
stands for: an empty ``/proc`` for a machine without a GPU, a loader that fails like
``dlopen("libcuda.so.1")`` for one without a driver, and so on. The messages of the broken
TensorRT install are the ones a real install gives (``tensorrt-cu13`` 11.4.0.106 and its bindings
wheel without the ``-libs`` wheel, imported on this machine). The last tests probe this machine
itself through the registry and the CLI.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest
from click.testing import CliRunner

import unifer_tensorrt
from unifer import BackendUnavailableError, Engine
from unifer.cli import main
from unifer_tensorrt import TensorRTBackend, _cuda
from unifer_tensorrt._probe import (
    INSTALL,
    LIBRARIES_NOTE,
    Host,
    diagnose,
    gpu_evidence,
    tensorrt_distribution,
)

#: What ``import tensorrt`` raises when the tensorrt-cu13 11.4.0.106 package and its bindings are
#: installed without the tensorrt-cu13-libs wheel (seen on this machine).
MISSING_LIBRARIES = (
    "libnvonnxparser.so.11: cannot open shared object file: No such file or directory"
)


# -- stand-ins for the machine ---------------------------------------------------------------------


def machine(tmp_path: Path, *, gpus: int = 1, device_nodes: bool = True) -> tuple[Path, Path]:
    """A ``/proc`` and ``/dev`` with ``gpus`` NVIDIA GPUs."""
    proc, dev = tmp_path / "proc", tmp_path / "dev"
    (proc / "driver/nvidia/gpus").mkdir(parents=True)
    dev.mkdir()
    for i in range(gpus):
        (proc / f"driver/nvidia/gpus/0000:0{i + 1}:00.0").mkdir()
        if device_nodes:
            (dev / f"nvidia{i}").touch()
    if device_nodes:
        (dev / "nvidiactl").touch()
    return proc, dev


class _Function:
    """A C function as ctypes exposes it: settable restype, called with ctypes arguments."""

    def __init__(self, body: Callable[..., int]) -> None:
        self.body = body
        self.restype: Any = None

    def __call__(self, *args: Any) -> int:
        return self.body(*args)


def _out(ref: Any, value: object) -> int:
    ref._obj.value = value  # a ctypes.byref() argument: write through it, as C would
    return 0


class FakeDriver:
    """libcuda.so.1's driver API: ``cuInit`` returns ``init`` (0, or a CUresult)."""

    NAMES: ClassVar[dict[int, bytes]] = {100: b"CUDA_ERROR_NO_DEVICE", 999: b"CUDA_ERROR_UNKNOWN"}

    def __init__(self, *, init: int = 0, version: int = 13000, count: int = 1) -> None:
        self.cuInit = _Function(lambda flags: init)
        self.cuDriverGetVersion = _Function(lambda ref: _out(ref, version))
        self.cuDeviceGetCount = _Function(lambda ref: _out(ref, count))
        self.cuGetErrorName = _Function(lambda code, ref: _out(ref, self.NAMES.get(code)))


def loader(driver: FakeDriver | None) -> Callable[[str], Any]:
    def load(name: str) -> Any:
        assert name == "libcuda.so.1"
        if driver is None:
            raise OSError("libcuda.so.1: cannot open shared object file: No such file or directory")
        return driver

    return load


class FakeCudart:
    def __init__(self, count: int = 1) -> None:
        self.count = count

    def device_count(self) -> int:
        return self.count


def host(
    tmp_path: Path,
    *,
    driver: FakeDriver | None = None,
    installed: bool = True,
    module: Callable[[], Any] | None = None,
    cudart: Callable[[], Any] | None = None,
    distributions: dict[str, list[str]] | None = None,
    gpus: int = 1,
) -> Host:
    proc, dev = machine(tmp_path, gpus=gpus)

    def import_module(name: str) -> Any:
        assert name == "tensorrt"
        return (module or (lambda: types.SimpleNamespace(__version__="11.4.0.106")))()

    return Host(
        proc=proc,
        dev=dev,
        platform="linux",
        load_library=loader(driver if driver is not None else FakeDriver()),
        find_spec=lambda name: object() if installed else None,
        import_module=import_module,
        distributions=lambda: distributions or {"tensorrt": ["tensorrt_cu12"]},
        load_cudart=cudart or (lambda: FakeCudart()),
    )


# -- each answer -----------------------------------------------------------------------------------


def test_no_nvidia_gpu(tmp_path: Path) -> None:
    proc, dev = tmp_path / "proc", tmp_path / "dev"
    proc.mkdir()
    dev.mkdir()
    (dev / "null").touch()

    def must_not_load(name: str) -> Any:
        raise AssertionError(f"loaded {name} on a machine without a GPU")

    availability = diagnose(Host(proc=proc, dev=dev, platform="linux", load_library=must_not_load))
    assert not availability.ok
    assert availability.reason == (
        f"no NVIDIA GPU found: {proc}/driver/nvidia/gpus has no entries and there is no "
        f"{dev}/nvidia0; TensorRT runs only on NVIDIA GPUs"
    )
    assert availability.install is not None
    assert "NVIDIA GPU" in availability.install
    assert "pip install" not in availability.install  # nothing to install fixes this


def test_gpu_evidence_from_proc_or_device_nodes(tmp_path: Path) -> None:
    proc, dev = machine(tmp_path, gpus=2)
    assert gpu_evidence(proc, dev) == [
        f"{proc}/driver/nvidia/gpus/0000:01:00.0",
        f"{proc}/driver/nvidia/gpus/0000:02:00.0",
        f"{dev}/nvidia0",
        f"{dev}/nvidia1",
    ]
    # A container often gets /dev/nvidia0 without the driver's /proc entries: still a GPU.
    container = tmp_path / "container"
    (container / "proc").mkdir(parents=True)
    (container / "dev").mkdir()
    (container / "dev/nvidia0").touch()
    assert gpu_evidence(container / "proc", container / "dev") == [f"{container}/dev/nvidia0"]
    # nvidiactl and nvidia-uvm alone are not a GPU.
    (container / "dev/nvidia0").unlink()
    (container / "dev/nvidiactl").touch()
    (container / "dev/nvidia-uvm").touch()
    assert gpu_evidence(container / "proc", container / "dev") == []


def test_no_driver(tmp_path: Path) -> None:
    proc, dev = machine(tmp_path)
    availability = diagnose(Host(proc=proc, dev=dev, platform="linux", load_library=loader(None)))
    assert not availability.ok
    assert availability.reason is not None
    assert availability.reason.startswith(
        "an NVIDIA GPU is present but the NVIDIA driver's CUDA library libcuda.so.1 cannot be "
        "loaded (libcuda.so.1: cannot open shared object file"
    )
    assert "--gpus all" in availability.reason
    assert availability.install == "install or repair the NVIDIA driver"


def test_driver_that_cannot_initialise(tmp_path: Path) -> None:
    availability = diagnose(host(tmp_path, driver=FakeDriver(init=999)))
    assert not availability.ok
    assert availability.reason is not None
    assert "cuInit returned CUDA_ERROR_UNKNOWN" in availability.reason


def test_driver_that_sees_no_gpu(tmp_path: Path) -> None:
    availability = diagnose(host(tmp_path, driver=FakeDriver(count=0)))
    assert not availability.ok
    assert availability.reason is not None
    assert "sees no GPU this process may use" in availability.reason
    assert "CUDA_VISIBLE_DEVICES" in availability.reason


def test_cuinit_without_a_visible_device_points_at_cuda_visible_devices(tmp_path: Path) -> None:
    # With CUDA_VISIBLE_DEVICES hiding every GPU, cuInit itself returns CUDA_ERROR_NO_DEVICE.
    availability = diagnose(host(tmp_path, driver=FakeDriver(init=100)))
    assert not availability.ok
    assert (
        availability.reason is not None
        and "sees no GPU this process may use" in availability.reason
    )
    assert availability.install == "unset or correct CUDA_VISIBLE_DEVICES"


def test_tensorrt_not_installed(tmp_path: Path) -> None:
    availability = diagnose(host(tmp_path, installed=False))
    assert not availability.ok
    assert availability.reason == "the tensorrt package is not installed"
    assert availability.install == f"{INSTALL}  # {LIBRARIES_NOTE}"
    assert availability.install.startswith('pip install "unifer[tensorrt]"')
    assert "pypi.nvidia.com" in availability.install


def test_tensorrt_libraries_missing(tmp_path: Path) -> None:
    def broken() -> Any:
        raise ImportError(MISSING_LIBRARIES)

    availability = diagnose(
        host(tmp_path, module=broken, distributions={"tensorrt": ["tensorrt_cu13"]})
    )
    assert not availability.ok
    assert availability.reason == (
        f"the tensorrt package is installed but its libraries cannot be loaded "
        f"({MISSING_LIBRARIES}); they come in the tensorrt-cu13-libs wheel from pypi.nvidia.com"
    )
    assert availability.install == (
        f"pip install --force-reinstall tensorrt-cu13 tensorrt-cu13-libs  # {LIBRARIES_NOTE}"
    )


def test_tensorrt_libraries_missing_as_oserror(tmp_path: Path) -> None:
    def broken() -> Any:
        raise OSError("libnvinfer.so.10: cannot open shared object file")

    availability = diagnose(host(tmp_path, module=broken))
    assert availability.reason is not None
    assert "its libraries cannot be loaded (libnvinfer.so.10" in availability.reason
    assert "tensorrt-cu12-libs" in availability.reason


def test_tensorrt_import_fails_otherwise(tmp_path: Path) -> None:
    def broken() -> Any:
        raise ImportError("numpy.core.multiarray failed to import")

    availability = diagnose(host(tmp_path, module=broken))
    assert availability.reason == (
        "tensorrt is installed but cannot be imported: ImportError: numpy.core.multiarray "
        "failed to import"
    )

    def crashing() -> Any:
        raise RuntimeError("CUDA initialization failure with error: 35")

    availability = diagnose(host(tmp_path / "again", module=crashing))
    assert availability.reason == (
        "tensorrt is installed but failed to import: RuntimeError: CUDA initialization failure "
        "with error: 35"
    )
    assert availability.install == "pip install --force-reinstall tensorrt-cu12"


@pytest.mark.parametrize("version", ["8.6.1", "12.0.0", "unknown"])
def test_unsupported_tensorrt_version(tmp_path: Path, version: str) -> None:
    availability = diagnose(
        host(tmp_path, module=lambda: types.SimpleNamespace(__version__=version))
    )
    assert not availability.ok
    assert availability.version == version
    assert availability.reason == (
        f"tensorrt {version} is installed, but unifer-tensorrt supports TensorRT 10 and 11"
    )


def test_cuda_runtime_missing(tmp_path: Path) -> None:
    def missing() -> Any:
        raise _cuda.CudaUnavailableError("no usable CUDA runtime library (libcudart) was found")

    availability = diagnose(host(tmp_path, cudart=missing))
    assert not availability.ok
    assert availability.version == "11.4.0.106"
    assert availability.reason == (
        "tensorrt 11.4.0.106 imports, but the CUDA runtime is not usable: no usable CUDA runtime "
        "library (libcudart) was found"
    )
    assert availability.install == "pip install nvidia-cuda-runtime-cu12"


def test_everything_there(tmp_path: Path) -> None:
    availability = diagnose(host(tmp_path, gpus=2, cudart=lambda: FakeCudart(count=2)))
    assert availability.ok, availability.reason
    assert availability.version == "11.4.0.106"
    assert availability.devices == ("cuda:0", "cuda:1")
    assert availability.reason is None


def test_macos() -> None:
    availability = diagnose(Host(platform="darwin"))
    assert not availability.ok
    assert availability.reason is not None
    assert "does not run on macOS" in availability.reason


def test_tensorrt_distribution_names() -> None:
    assert tensorrt_distribution({"tensorrt": ["tensorrt_cu12"]}) == "tensorrt-cu12"
    assert tensorrt_distribution({"tensorrt": ["tensorrt_cu13"]}) == "tensorrt-cu13"
    # The metapackage installs no module files; the CUDA-specific one does.
    assert tensorrt_distribution({"tensorrt": ["tensorrt", "tensorrt-cu13"]}) == "tensorrt-cu13"
    assert tensorrt_distribution({}) == "tensorrt-cu12"


def test_probe_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(host: Host | None = None) -> Any:
        raise PermissionError("/proc/driver/nvidia: permission denied")

    monkeypatch.setattr(unifer_tensorrt, "diagnose", explode)
    availability = TensorRTBackend().probe()
    assert not availability.ok
    assert availability.reason == (
        "checking TensorRT failed: PermissionError: /proc/driver/nvidia: permission denied"
    )


# -- this machine ----------------------------------------------------------------------------------

THIS_MACHINE_HAS_A_GPU = bool(gpu_evidence(Path("/proc"), Path("/dev")))
no_gpu_here = pytest.mark.skipif(
    THIS_MACHINE_HAS_A_GPU or not sys.platform.startswith("linux"),
    reason="this machine has an NVIDIA GPU (or is not Linux)",
)


@no_gpu_here
def test_probe_here_says_no_gpu() -> None:
    availability = TensorRTBackend().probe()
    assert not availability.ok
    assert availability.reason is not None
    assert availability.reason.startswith("no NVIDIA GPU found")


@no_gpu_here
def test_unifer_backends_lists_tensorrt_as_unavailable() -> None:
    result = CliRunner().invoke(main, ["backends", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)["backends"]}
    row = rows["tensorrt"]
    assert row["plugin"] == "unifer-tensorrt"
    assert row["available"] is False
    assert row["reason"].startswith("no NVIDIA GPU found")
    assert "NVIDIA GPU" in row["install"]

    text = CliRunner().invoke(main, ["backends"]).output
    line = next(line for line in text.splitlines() if line.startswith("tensorrt "))
    assert "unavailable: no NVIDIA GPU found" in line


@no_gpu_here
def test_loading_with_tensorrt_here_says_why_not(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"not opened: the backend is refused first")
    with pytest.raises(BackendUnavailableError) as info:
        Engine.load(model, backend="tensorrt")
    message = str(info.value)
    assert "backend 'tensorrt' is installed but cannot run: no NVIDIA GPU found" in message
    assert "Fix it with: run on a machine with an NVIDIA GPU" in message


def test_probe_does_not_load_cuda_or_tensorrt_without_a_gpu(tmp_path: Path) -> None:
    """On a machine without a GPU, probing stops at the first check (cheap, loads nothing)."""
    proc, dev = tmp_path / "proc", tmp_path / "dev"
    proc.mkdir()
    dev.mkdir()
    loaded: list[str] = []
    imported: list[str] = []
    bare = Host(
        proc=proc,
        dev=dev,
        platform="linux",
        load_library=lambda name: loaded.append(name),
        import_module=lambda name: imported.append(name),
    )
    assert not diagnose(bare).ok
    assert loaded == imported == []


@pytest.mark.gpu
@pytest.mark.skipif(not THIS_MACHINE_HAS_A_GPU, reason="this machine has no NVIDIA GPU")
def test_probe_on_this_gpu_machine() -> None:
    """The real driver checks on real hardware; then TensorRT is there, or said to be missing."""
    driver = _cuda.driver_info()
    assert driver.device_count >= 1
    assert driver.cuda_version >= 12000
    availability = TensorRTBackend().probe()
    if importlib.util.find_spec("tensorrt") is None:
        assert availability.reason == "the tensorrt package is not installed"
    else:
        assert availability.ok, availability.reason
        assert availability.devices[0] == "cuda:0"
