"""The ctypes CUDA layer: finding libcudart everywhere, and real device work where there is a GPU.

The first part runs on every machine: where libcudart is looked for, how a candidate is chosen,
and the real libcudart of this environment (the ``nvidia-cuda-runtime-cu12`` wheel the plugin
depends on) loaded through the binding on a machine without a driver, where every device call must
fail with CUDA's own error. The last part allocates, copies and synchronises through the binding
twice: on a CUDA runtime whose device is host memory (``cudart_host_stub.c``, built here with the
machine's C compiler: the ctypes calls, pointers, sizes, streams and errors run for real), and,
marked ``gpu``, on a real device. That needs a GPU and libcudart only, not TensorRT, so it runs on
GPU machines without TensorRT: ``pytest -m gpu backends/tensorrt/tests/test_cuda.py``.
"""

from __future__ import annotations

import ctypes
import importlib.metadata as metadata
import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from unifer_tensorrt import _cuda
from unifer_tensorrt._probe import gpu_evidence

HAS_GPU = bool(gpu_evidence(Path("/proc"), Path("/dev")))


# -- where libcudart is looked for -----------------------------------------------------------------


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    return path


def test_candidates_prefer_wheels_then_toolkits_then_the_loader(tmp_path: Path) -> None:
    site = tmp_path / "site-packages"
    cu13 = touch(site / "nvidia/cu13/lib/libcudart.so.13")
    cu12 = touch(site / "nvidia/cuda_runtime/lib/libcudart.so.12")
    toolkit = touch(tmp_path / "cuda-12.8/lib64/libcudart.so.12")
    candidates = _cuda.cudart_candidates(
        search_path=["", str(tmp_path / "missing"), str(site)],
        environ={"CUDA_HOME": str(tmp_path / "cuda-12.8")},
        platform="linux",
    )
    found = [c for c in candidates if c.startswith(str(tmp_path))]
    assert found == [str(cu13), str(cu12), str(toolkit)]
    assert candidates[-3:] == ["libcudart.so.13", "libcudart.so.12", "libcudart.so"]


def test_candidates_name_each_file_once(tmp_path: Path) -> None:
    """``lib64 -> lib`` and ``libcudart.so -> libcudart.so.13`` links lead to one candidate."""
    root = tmp_path / "cuda"
    real = touch(root / "lib/libcudart.so.13")
    (root / "lib64").symlink_to("lib")
    (root / "lib/libcudart.so").symlink_to("libcudart.so.13")
    candidates = _cuda.cudart_candidates(
        search_path=[], environ={"CUDA_PATH": str(root), "CUDA_HOME": str(root)}, platform="linux"
    )
    files = [c for c in candidates if c.startswith(str(tmp_path))]
    assert len(files) == 1
    assert Path(files[0]).resolve() == real.resolve()


def test_candidates_on_windows(tmp_path: Path) -> None:
    dll = touch(tmp_path / "site/nvidia/cuda_runtime/bin/cudart64_12.dll")
    candidates = _cuda.cudart_candidates(
        search_path=[str(tmp_path / "site")], environ={}, platform="win32"
    )
    assert candidates == [str(dll), "cudart64_13.dll", "cudart64_12.dll"]


def test_format_version() -> None:
    assert _cuda.format_version(12090) == "12.9"
    assert _cuda.format_version(13000) == "13.0"
    assert _cuda.format_version(0) == "none"


# -- choosing a candidate --------------------------------------------------------------------------


class _Function:
    def __init__(self, body: Callable[..., Any]) -> None:
        self.body = body
        self.argtypes: Any = None
        self.restype: Any = None

    def __call__(self, *args: Any) -> Any:
        return self.body(*args)


class FakeRuntimeLibrary:
    """Just enough of a libcudart for :func:`load_cudart` to read its versions."""

    def __init__(self, runtime: int, driver: int) -> None:
        def write(value: int) -> Callable[[Any], int]:
            def call(ref: Any) -> int:
                ref._obj.value = value
                return 0

            return call

        for name in _cuda._SIGNATURES:
            setattr(self, name, _Function(lambda *args: 0))
        self.cudaRuntimeGetVersion = _Function(write(runtime))
        self.cudaDriverGetVersion = _Function(write(driver))
        self.cudaGetErrorName = _Function(lambda code: b"cudaErrorUnknown")
        self.cudaGetErrorString = _Function(lambda code: b"unknown error")
        self.cudaGetDeviceProperties = _Function(lambda *args: 0)


def test_the_first_runtime_the_driver_supports_is_chosen() -> None:
    libraries = {
        "missing.so": None,
        "cuda13.so": FakeRuntimeLibrary(runtime=13000, driver=12080),
        "cuda12.so": FakeRuntimeLibrary(runtime=12090, driver=12080),
    }

    def load(name: str) -> Any:
        library = libraries[name]
        if library is None:
            raise OSError(f"{name}: cannot open shared object file")
        return library

    runtime = _cuda.load_cudart(list(libraries), loader=load)
    # 12.9 on a 12.8 driver is fine (minor-version compatibility); 13.0 is not.
    assert runtime.path == "cuda12.so"
    assert runtime.runtime_version == 12090


def test_no_usable_runtime_lists_why(tmp_path: Path) -> None:
    def load(name: str) -> Any:
        if name == "old-driver.so":
            return FakeRuntimeLibrary(runtime=13000, driver=12020)
        if name == "not-cuda.so":
            return object()
        raise OSError(f"{name}: cannot open shared object file")

    with pytest.raises(_cuda.CudaUnavailableError) as info:
        _cuda.load_cudart(["libcudart.so.13", "old-driver.so", "not-cuda.so"], loader=load)
    message = str(info.value)
    assert "libcudart.so.13: libcudart.so.13: cannot open shared object file" in message
    assert (
        "old-driver.so: CUDA 13.0 needs a newer driver than this one (it supports CUDA 12.2)"
        in message
    )
    assert "not-cuda.so: not a usable CUDA runtime" in message
    assert message.endswith("Install one with: pip install nvidia-cuda-runtime-cu12")


def test_no_driver_stops_the_search() -> None:
    with pytest.raises(_cuda.CudaUnavailableError, match="finds no NVIDIA driver"):
        _cuda.load_cudart(["a.so"], loader=lambda name: FakeRuntimeLibrary(12090, 0))


def test_driver_library_missing() -> None:
    def load(name: str) -> Any:
        raise OSError(f"{name}: cannot open shared object file: No such file or directory")

    with pytest.raises(_cuda.DriverError, match="libcuda.so.1 cannot be loaded"):
        _cuda.driver_info(loader=load, platform="linux")
    with pytest.raises(_cuda.DriverError, match="nvcuda.dll cannot be loaded"):
        _cuda.driver_info(loader=load, platform="win32")


# -- the real libcudart, on a machine without a driver ---------------------------------------------


def installed_cudarts() -> list[str]:
    """Every libcudart file this environment has (the plugin's wheel, a toolkit if any)."""
    return [c for c in _cuda.cudart_candidates() if "/" in c]


no_driver_here = pytest.mark.skipif(HAS_GPU, reason="this machine has an NVIDIA GPU and driver")


@no_driver_here
def test_this_environment_has_the_cuda_12_runtime_wheel() -> None:
    try:
        metadata.version("nvidia-cuda-runtime-cu12")
    except metadata.PackageNotFoundError:
        pytest.skip("installed without its dependencies (benchmarks/gpu/run.sh does that)")
    assert any(c.endswith("nvidia/cuda_runtime/lib/libcudart.so.12") for c in installed_cudarts())


@no_driver_here
@pytest.mark.parametrize("path", installed_cudarts())
def test_real_libcudart_without_a_driver(path: str) -> None:
    """The binding against a real libcudart: versions read, device calls fail with CUDA's words."""
    runtime = _cuda.CudaRuntime(ctypes.CDLL(path), path)
    assert runtime.runtime_version >= 12000
    assert runtime.driver_version == 0
    with pytest.raises(_cuda.CudaError) as info:
        runtime.device_count()
    error = info.value
    assert error.call == "cudaGetDeviceCount"
    assert error.name == "cudaErrorInsufficientDriver"
    assert error.code == 35
    assert str(error) == (
        "cudaGetDeviceCount failed: cudaErrorInsufficientDriver (CUDA driver version is "
        "insufficient for CUDA runtime version)"
    )
    with pytest.raises(_cuda.CudaUnavailableError, match="finds no NVIDIA driver"):
        _cuda.load_cudart([path])


# -- device work: on the host-memory stub, and on a real GPU ---------------------------------------

STUB_SOURCE = Path(__file__).with_name("cudart_host_stub.c")


@pytest.fixture(scope="module")
def host_stub(tmp_path_factory: pytest.TempPathFactory) -> str:
    """``cudart_host_stub.c`` built into a shared library; its path."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to build the host-memory CUDA stub")
    library = tmp_path_factory.mktemp("cudart") / "libcudart_host_stub.so"
    subprocess.run(
        [compiler, "-shared", "-fPIC", "-O1", "-o", str(library), str(STUB_SOURCE)], check=True
    )
    return str(library)


@pytest.fixture(scope="module", params=["host stub", pytest.param("gpu", marks=pytest.mark.gpu)])
def cuda(request: pytest.FixtureRequest, host_stub: str) -> _cuda.CudaRuntime:
    """The binding on the host-memory stub, then (``gpu``) on this machine's CUDA device."""
    if request.param == "gpu":
        return request.getfixturevalue("real_cuda")  # type: ignore[no-any-return]
    return _cuda.load_cudart([host_stub])


@pytest.fixture(scope="module")
def real_cuda() -> _cuda.CudaRuntime:
    try:
        runtime = _cuda.cudart()
        if runtime.device_count() < 1:
            pytest.skip("the CUDA runtime sees no device")
    except (_cuda.CudaUnavailableError, _cuda.CudaError) as exc:
        pytest.skip(f"no usable CUDA device here: {exc}")
    runtime.set_device(0)
    return runtime


def test_device_facts(cuda: _cuda.CudaRuntime) -> None:
    assert cuda.runtime_version // 1000 <= cuda.driver_version // 1000
    name = cuda.device_name(0)
    assert name and "\0" not in name
    major, minor = cuda.compute_capability(0)
    assert major >= 5 and 0 <= minor <= 9


@pytest.mark.gpu
def test_device_facts_agree_with_torch(real_cuda: _cuda.CudaRuntime) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    assert real_cuda.device_count() == torch.cuda.device_count()
    assert real_cuda.device_name(0) == torch.cuda.get_device_name(0)
    assert real_cuda.compute_capability(0) == tuple(torch.cuda.get_device_capability(0))


@pytest.mark.parametrize(
    ("dtype", "shape"),
    [
        (np.float32, (1, 3, 112, 112)),
        (np.float16, (7,)),
        (np.int64, (3, 5)),
        (np.uint8, (1,)),
        (np.bool_, (17,)),
        (np.float32, (0, 4)),
        (np.float32, (16, 1024, 1024)),  # 64 MiB
    ],
)
def test_copy_round_trip(cuda: _cuda.CudaRuntime, dtype: type, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    host = (rng.standard_normal(shape) * 100).astype(dtype)
    stream = _cuda.Stream(cuda)
    buffer = _cuda.DeviceBuffer(cuda)
    try:
        cuda.copy_to_device(buffer.ensure(host.nbytes), host, stream.handle)
        back = np.empty_like(host)
        cuda.copy_to_host(back, buffer.pointer, stream.handle)
        stream.synchronize()
        np.testing.assert_array_equal(back, host)
    finally:
        buffer.free()
        stream.destroy()


def test_copies_on_one_stream_run_in_order(cuda: _cuda.CudaRuntime) -> None:
    stream = _cuda.Stream(cuda)
    buffer = _cuda.DeviceBuffer(cuda)
    try:
        pointer = buffer.ensure(4 << 20)
        arrays = [np.full(1 << 20, i, np.float32) for i in range(10)]
        for array in arrays:  # each overwrites the last; only the order makes the result right
            cuda.copy_to_device(pointer, array, stream.handle)
        back = np.empty(1 << 20, np.float32)
        cuda.copy_to_host(back, pointer, stream.handle)
        stream.synchronize()
        assert (back == 9).all()
    finally:
        buffer.free()
        stream.destroy()


def test_threads_with_their_own_streams(cuda: _cuda.CudaRuntime) -> None:
    results: dict[int, bool] = {}
    barrier = threading.Barrier(8)

    def work(i: int) -> None:
        cuda.set_device(0)  # the current device is per thread
        stream = _cuda.Stream(cuda)
        buffer = _cuda.DeviceBuffer(cuda)
        try:
            barrier.wait()
            ok = True
            for round_ in range(20):
                host = np.full(50_000, i * 1000 + round_, np.int64)
                cuda.copy_to_device(buffer.ensure(host.nbytes), host, stream.handle)
                back = np.empty_like(host)
                cuda.copy_to_host(back, buffer.pointer, stream.handle)
                stream.synchronize()
                ok &= bool((back == host).all())
            results[i] = ok
        finally:
            buffer.free()
            stream.destroy()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == dict.fromkeys(range(8), True)


def test_buffers_grow_by_powers_of_two_and_free_once(cuda: _cuda.CudaRuntime) -> None:
    buffer = _cuda.DeviceBuffer(cuda)
    first = buffer.ensure(10)
    assert first and buffer.capacity == 256
    assert buffer.ensure(256) == first  # fits: same memory
    buffer.ensure(300)
    assert buffer.capacity == 512
    buffer.ensure(0)
    assert buffer.capacity == 512
    buffer.free()
    buffer.free()
    assert buffer.pointer == 0 and buffer.capacity == 0
    stream = _cuda.Stream(cuda)
    stream.destroy()
    stream.destroy()


@pytest.mark.gpu
def test_errors_carry_cuda_names_and_leave_the_device_usable(cuda: _cuda.CudaRuntime) -> None:
    with pytest.raises(_cuda.CudaError) as info:
        cuda.malloc(1 << 60)
    assert info.value.call == "cudaMalloc"
    assert info.value.name == "cudaErrorMemoryAllocation"
    with pytest.raises(_cuda.CudaError) as info:
        cuda.set_device(cuda.device_count())
    assert info.value.name == "cudaErrorInvalidDevice"
    cuda.set_device(0)
    pointer = cuda.malloc(1024)  # an allocation failure is not sticky
    cuda.free(pointer)


def test_the_stub_is_chosen_and_its_errors_are_cudas(host_stub: str) -> None:
    runtime = _cuda.load_cudart(["libcudart-that-does-not-exist.so.13", host_stub])
    assert runtime.path == host_stub and runtime.runtime_version == 13000
    assert runtime.device_name(0) == "Host memory stub"
    buffer = _cuda.DeviceBuffer(runtime)
    with pytest.raises(_cuda.CudaError) as info:
        buffer.ensure(2 << 30)  # beyond the stub's 1 GiB "device"
    assert (info.value.call, info.value.name) == ("cudaMalloc", "cudaErrorMemoryAllocation")
    assert str(info.value) == "cudaMalloc failed: cudaErrorMemoryAllocation (out of memory)"
    assert buffer.pointer == 0 and buffer.capacity == 0  # nothing half-allocated is kept
    with pytest.raises(_cuda.CudaError, match="cudaErrorInvalidDevice"):
        runtime.set_device(1)
    # Every stream the tests made was destroyed.
    assert ctypes.CDLL(host_stub).stub_live_streams() == 0
