"""A small ctypes binding of NVIDIA's CUDA libraries: device buffers, copies, streams, device facts.

The TensorRT session needs device memory, host<->device copies and a stream per execution context,
and ``probe()`` needs to know whether a driver is there. This module does exactly that over the
CUDA runtime (``libcudart``) and, for the driver check, the driver library (``libcuda``), with no
dependency beyond the standard library and numpy. cuda-python, pycuda or cupy would add a package
(and its own CUDA-version matrix) for a dozen calls; plain ctypes works with whatever libcudart is
installed and can be tested on a GPU machine that has no TensorRT.

``libcudart`` is looked for where its installs put it: NVIDIA's wheels (``nvidia/cu13/lib`` for
CUDA 13, ``nvidia/cuda_runtime/lib`` for CUDA 12) on ``sys.path``, ``$CUDA_HOME`` /
``$CUDA_PATH``, ``/usr/local/cuda``, then the dynamic loader's own search (``LD_LIBRARY_PATH``,
ldconfig). The first one whose CUDA major version the installed driver supports is used.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

__all__ = [
    "CudaError",
    "CudaRuntime",
    "CudaUnavailableError",
    "DeviceBuffer",
    "DriverError",
    "DriverInfo",
    "Stream",
    "cudart",
    "cudart_candidates",
    "driver_info",
    "format_version",
    "load_cudart",
]

#: ``cudaMemcpyKind``.
HOST_TO_DEVICE: Final = 1
DEVICE_TO_HOST: Final = 2
#: ``cudaStreamNonBlocking``: the stream does not synchronise with the legacy default stream, so
#: one caller's work never waits for another library's default-stream work.
_STREAM_NON_BLOCKING: Final = 1
#: ``cudaDevAttrComputeCapabilityMajor`` / ``...Minor``.
_ATTR_CC_MAJOR: Final = 75
_ATTR_CC_MINOR: Final = 76
#: ``cudaDeviceProp`` is about 1 KB and grows between CUDA versions; only ``name`` (char[256] at
#: offset 0 in every version) is read, into a buffer with room for any later layout.
_PROPS_BYTES: Final = 16384
#: Allocations are rounded up to a power of two from this size, so a growing batch reallocates a
#: few times, not on every call.
_MIN_ALLOCATION: Final = 256

Loader = Callable[[str], Any]


class CudaError(RuntimeError):
    """A CUDA call returned an error; ``code`` and ``name`` are CUDA's own."""

    def __init__(self, call: str, code: int, name: str, description: str) -> None:
        self.call = call
        self.code = code
        self.name = name
        super().__init__(f"{call} failed: {name} ({description})")


class CudaUnavailableError(RuntimeError):
    """No usable CUDA runtime library: none found, or none the installed driver supports."""


class DriverError(RuntimeError):
    """The NVIDIA driver's CUDA library is missing or cannot initialise."""


def format_version(version: int) -> str:
    """CUDA's integer versions as text: ``12090`` -> ``"12.9"``, ``0`` -> ``"none"``."""
    if version <= 0:
        return "none"
    return f"{version // 1000}.{version % 1000 // 10}"


# -- finding libcudart ----------------------------------------------------------------------------

#: (folder inside a site-packages directory, file) of NVIDIA's CUDA runtime wheels, newest first.
_WHEEL_LAYOUTS: Final[Mapping[str, tuple[tuple[str, str], ...]]] = {
    "linux": (
        ("nvidia/cu13/lib", "libcudart.so.13"),  # nvidia-cuda-runtime 13.x
        ("nvidia/cuda_runtime/lib", "libcudart.so.12"),  # nvidia-cuda-runtime-cu12
    ),
    # Windows: by analogy with the Linux wheels; never checked against a Windows wheel, never run.
    "win32": (
        ("nvidia/cu13/bin/x86_64", "cudart64_13.dll"),
        ("nvidia/cu13/bin", "cudart64_13.dll"),
        ("nvidia/cuda_runtime/bin", "cudart64_12.dll"),
    ),
}
#: Names the dynamic loader is asked for when no file was found by path.
_SONAMES: Final[Mapping[str, tuple[str, ...]]] = {
    "linux": ("libcudart.so.13", "libcudart.so.12", "libcudart.so"),
    "win32": ("cudart64_13.dll", "cudart64_12.dll"),
}
_TOOLKIT_DIRS: Final[Mapping[str, tuple[str, ...]]] = {
    "linux": ("lib64", "lib", "targets/x86_64-linux/lib"),
    "win32": ("bin", "bin/x64"),
}


def _os(platform: str) -> str:
    return "win32" if platform == "win32" else "linux"


def cudart_candidates(
    *,
    search_path: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    platform: str | None = None,
) -> list[str]:
    """Where libcudart may be, most preferred first: existing files by path, then bare sonames.

    ``search_path`` defaults to ``sys.path`` (where pip puts NVIDIA's wheels) and ``environ`` to
    ``os.environ`` (``CUDA_HOME``, ``CUDA_PATH``); injectable for tests.
    """
    system = _os(platform or sys.platform)
    search_path = sys.path if search_path is None else search_path
    environ = os.environ if environ is None else environ
    found: list[str] = []
    seen: set[str] = set()  # resolved: lib64 -> lib and libcudart.so -> .so.13 are one file

    def add(path: Path) -> None:
        if path.is_file() and (real := os.path.realpath(path)) not in seen:
            seen.add(real)
            found.append(str(path))

    for entry in search_path:
        if not entry:
            continue
        for folder, file in _WHEEL_LAYOUTS[system]:
            add(Path(entry, folder, file))
    roots = [environ.get(var) for var in ("CUDA_HOME", "CUDA_PATH")]
    if system == "linux":
        roots.append("/usr/local/cuda")
    for root in roots:
        if not root:
            continue
        for sub in _TOOLKIT_DIRS[system]:
            directory = Path(root, sub)
            for soname in _SONAMES[system]:
                add(directory / soname)
    return found + [name for name in _SONAMES[system] if name not in found]


# -- the runtime ----------------------------------------------------------------------------------

_c_int_p = ctypes.POINTER(ctypes.c_int)
_c_void_pp = ctypes.POINTER(ctypes.c_void_p)

#: name -> argtypes of every function used; each returns ``cudaError_t`` (int).
_SIGNATURES: Final[Mapping[str, tuple[Any, ...]]] = {
    "cudaRuntimeGetVersion": (_c_int_p,),
    "cudaDriverGetVersion": (_c_int_p,),
    "cudaGetDeviceCount": (_c_int_p,),
    "cudaSetDevice": (ctypes.c_int,),
    "cudaDeviceGetAttribute": (_c_int_p, ctypes.c_int, ctypes.c_int),
    "cudaMalloc": (_c_void_pp, ctypes.c_size_t),
    "cudaFree": (ctypes.c_void_p,),
    "cudaMemcpyAsync": (
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_void_p,
    ),
    "cudaStreamCreateWithFlags": (_c_void_pp, ctypes.c_uint),
    "cudaStreamDestroy": (ctypes.c_void_p,),
    "cudaStreamSynchronize": (ctypes.c_void_p,),
}


class CudaRuntime:
    """One loaded libcudart and the calls the TensorRT session needs.

    Every method raises :class:`CudaError` with CUDA's error name and description. The CUDA runtime
    is thread-safe, and ctypes releases the GIL around each call. The current device is per host
    thread in CUDA: callers ``set_device`` before working on a device other than 0.
    """

    def __init__(self, lib: Any, path: str) -> None:
        """Bind ``lib`` (a loaded libcudart); raises ``AttributeError`` if it is not one."""
        self.path = path
        self._lib = lib
        for name, argtypes in _SIGNATURES.items():
            function = getattr(lib, name)
            function.argtypes = argtypes
            function.restype = ctypes.c_int
        for name in ("cudaGetErrorName", "cudaGetErrorString"):
            function = getattr(lib, name)
            function.argtypes = (ctypes.c_int,)
            function.restype = ctypes.c_char_p
        # CUDA 12 keeps the pre-12 layout under the old name and the current one as _v2; CUDA 13
        # has only the current one, under the plain name. Either way name[256] comes first.
        props = getattr(lib, "cudaGetDeviceProperties_v2", None) or lib.cudaGetDeviceProperties
        props.argtypes = (ctypes.c_void_p, ctypes.c_int)
        props.restype = ctypes.c_int
        self._get_properties = props
        self.runtime_version = self._int("cudaRuntimeGetVersion")
        self.driver_version = self._int("cudaDriverGetVersion")

    def __repr__(self) -> str:
        return f"CudaRuntime({self.path!r}, runtime {format_version(self.runtime_version)})"

    def _check(self, call: str, code: int) -> None:
        if code != 0:
            name = self._lib.cudaGetErrorName(code)
            text = self._lib.cudaGetErrorString(code)
            raise CudaError(
                call,
                code,
                name.decode(errors="replace") if name else f"error {code}",
                text.decode(errors="replace") if text else "no description",
            )

    def _int(self, call: str, *args: object) -> int:
        value = ctypes.c_int()
        self._check(call, getattr(self._lib, call)(ctypes.byref(value), *args))
        return value.value

    # -- devices ----------------------------------------------------------------------------------

    def device_count(self) -> int:
        """The CUDA devices this process sees (after ``CUDA_VISIBLE_DEVICES``)."""
        return self._int("cudaGetDeviceCount")

    def set_device(self, device: int) -> None:
        """Make ``device`` current for the calling host thread."""
        self._check("cudaSetDevice", self._lib.cudaSetDevice(device))

    def device_name(self, device: int) -> str:
        """The device's marketing name, e.g. ``"NVIDIA H100 80GB HBM3"``."""
        buffer = ctypes.create_string_buffer(_PROPS_BYTES)
        self._check("cudaGetDeviceProperties", self._get_properties(buffer, device))
        return buffer.raw[:256].split(b"\0", 1)[0].decode(errors="replace")

    def compute_capability(self, device: int) -> tuple[int, int]:
        """``(major, minor)``, e.g. ``(9, 0)`` for Hopper."""
        major = self._int("cudaDeviceGetAttribute", _ATTR_CC_MAJOR, device)
        minor = self._int("cudaDeviceGetAttribute", _ATTR_CC_MINOR, device)
        return major, minor

    # -- memory -----------------------------------------------------------------------------------

    def malloc(self, nbytes: int) -> int:
        """Allocate ``nbytes`` on the current device; returns the device pointer."""
        pointer = ctypes.c_void_p()
        self._check("cudaMalloc", self._lib.cudaMalloc(ctypes.byref(pointer), nbytes))
        return int(pointer.value or 0)

    def free(self, pointer: int) -> None:
        """Free a pointer from :meth:`malloc` (implicitly waits for work using it)."""
        self._check("cudaFree", self._lib.cudaFree(pointer))

    def copy_to_device(self, pointer: int, array: np.ndarray, stream: int) -> None:
        """Enqueue a copy of the C-contiguous ``array`` into device memory at ``pointer``.

        From pageable memory the call returns once CUDA has staged the data, so ``array`` may be
        reused right after it returns.
        """
        if array.nbytes:
            self._check(
                "cudaMemcpyAsync",
                self._lib.cudaMemcpyAsync(
                    pointer, array.ctypes.data, array.nbytes, HOST_TO_DEVICE, stream
                ),
            )

    def copy_to_host(self, array: np.ndarray, pointer: int, stream: int) -> None:
        """Enqueue a copy from device memory at ``pointer`` into the C-contiguous ``array``.

        ``array`` is complete only once ``stream`` is synchronised.
        """
        if array.nbytes:
            self._check(
                "cudaMemcpyAsync",
                self._lib.cudaMemcpyAsync(
                    array.ctypes.data, pointer, array.nbytes, DEVICE_TO_HOST, stream
                ),
            )

    # -- streams ----------------------------------------------------------------------------------

    def stream_create(self) -> int:
        """A new non-blocking stream on the current device; returns its handle."""
        handle = ctypes.c_void_p()
        self._check(
            "cudaStreamCreateWithFlags",
            self._lib.cudaStreamCreateWithFlags(ctypes.byref(handle), _STREAM_NON_BLOCKING),
        )
        return int(handle.value or 0)

    def stream_synchronize(self, stream: int) -> None:
        """Wait until everything enqueued on ``stream`` has finished."""
        self._check("cudaStreamSynchronize", self._lib.cudaStreamSynchronize(stream))

    def stream_destroy(self, stream: int) -> None:
        """Destroy ``stream`` (pending work still completes)."""
        self._check("cudaStreamDestroy", self._lib.cudaStreamDestroy(stream))


class Stream:
    """A CUDA stream owned by one execution context."""

    def __init__(self, cuda: CudaRuntime) -> None:
        self._cuda = cuda
        self.handle = cuda.stream_create()

    def synchronize(self) -> None:
        self._cuda.stream_synchronize(self.handle)

    def destroy(self) -> None:
        """Destroy the stream; calling it twice is harmless."""
        if self.handle:
            handle, self.handle = self.handle, 0
            self._cuda.stream_destroy(handle)


class DeviceBuffer:
    """Device memory that grows on demand and never shrinks.

    Its owner must make sure no enqueued work still uses the old memory when it grows (the session
    synchronises its stream at the end of every call, so it never does).
    """

    def __init__(self, cuda: CudaRuntime) -> None:
        self._cuda = cuda
        self.pointer = 0
        self.capacity = 0

    def ensure(self, nbytes: int) -> int:
        """A pointer to at least ``nbytes`` (and at least 256 bytes, so never NULL)."""
        if nbytes > self.capacity or not self.pointer:
            size = max(_MIN_ALLOCATION, 1 << (max(nbytes, 1) - 1).bit_length())
            self.free()  # before allocating, so a large tensor never needs twice its size
            self.pointer = self._cuda.malloc(size)
            self.capacity = size
        return self.pointer

    def free(self) -> None:
        """Release the memory; calling it twice is harmless."""
        if self.pointer:
            pointer, self.pointer, self.capacity = self.pointer, 0, 0
            self._cuda.free(pointer)


def load_cudart(candidates: Iterable[str], *, loader: Loader = ctypes.CDLL) -> CudaRuntime:
    """The first candidate that loads, is a CUDA runtime, and whose major version the driver runs.

    Raises :class:`CudaUnavailableError` listing every candidate and why it was not used.
    """
    tried: list[str] = []
    for candidate in candidates:
        try:
            lib = loader(candidate)
        except OSError as exc:
            tried.append(f"{candidate}: {exc}")
            continue
        try:
            runtime = CudaRuntime(lib, candidate)
        except (AttributeError, CudaError) as exc:
            tried.append(f"{candidate}: not a usable CUDA runtime ({exc})")
            continue
        if runtime.driver_version == 0:
            raise CudaUnavailableError(
                f"the CUDA runtime {candidate} ({format_version(runtime.runtime_version)}) finds "
                "no NVIDIA driver (cudaDriverGetVersion returned 0); install the NVIDIA driver"
            )
        # Within a major version CUDA's minor-version compatibility lets a newer runtime run on an
        # older driver; across majors it does not.
        if runtime.runtime_version // 1000 > runtime.driver_version // 1000:
            tried.append(
                f"{candidate}: CUDA {format_version(runtime.runtime_version)} needs a newer "
                f"driver than this one (it supports CUDA {format_version(runtime.driver_version)})"
            )
            continue
        return runtime
    detail = "; ".join(tried) if tried else "no candidates"
    raise CudaUnavailableError(
        f"no usable CUDA runtime library (libcudart) was found ({detail}). Install one with: "
        "pip install nvidia-cuda-runtime-cu12"
    )


@functools.cache
def cudart() -> CudaRuntime:
    """This process's CUDA runtime, found once (see the module docstring for where)."""
    return load_cudart(cudart_candidates())


# -- the driver -----------------------------------------------------------------------------------

DRIVER_LIBRARIES: Final[Mapping[str, str]] = {"linux": "libcuda.so.1", "win32": "nvcuda.dll"}


#: ``CUresult`` of a driver API call when no CUDA device is available (or visible).
_CUDA_ERROR_NO_DEVICE: Final = 100


@dataclass(frozen=True, slots=True)
class DriverInfo:
    """What the NVIDIA driver reports."""

    library: str
    cuda_version: int
    """The newest CUDA version the driver supports, as CUDA writes it (``13000`` is 13.0)."""
    device_count: int


def driver_info(*, loader: Loader = ctypes.CDLL, platform: str | None = None) -> DriverInfo:
    """Load the driver's CUDA library and initialise it; raises :class:`DriverError` saying why not.

    Uses the driver API directly (``cuInit``, ``cuDriverGetVersion``, ``cuDeviceGetCount``): it
    needs no CUDA runtime, so a missing driver is told apart from a missing runtime library.
    """
    library = DRIVER_LIBRARIES[_os(platform or sys.platform)]
    try:
        lib = loader(library)
    except OSError as exc:
        raise DriverError(
            f"the NVIDIA driver's CUDA library {library} cannot be loaded ({exc}); install the "
            "NVIDIA driver, or in a container start it with the GPU exposed (e.g. docker run "
            "--gpus all, which needs the NVIDIA Container Toolkit)"
        ) from exc

    def call(name: str, *args: object, allowed: tuple[int, ...] = ()) -> int:
        function = getattr(lib, name)
        function.restype = ctypes.c_int
        code = int(function(*args))
        if code != 0 and code not in allowed:
            error = ctypes.c_char_p()
            get_name = lib.cuGetErrorName
            get_name.restype = ctypes.c_int
            get_name(code, ctypes.byref(error))
            label = error.value.decode(errors="replace") if error.value else f"error {code}"
            raise DriverError(
                f"the NVIDIA driver failed to initialise: {name} returned {label}. Check that "
                "the driver matches the kernel module (nvidia-smi says) and that this process "
                "may use the GPU (CUDA_VISIBLE_DEVICES, container device access)"
            )
        return code

    # cuInit itself fails with CUDA_ERROR_NO_DEVICE when CUDA_VISIBLE_DEVICES hides every GPU:
    # that is "no device visible" (count 0), not a broken driver.
    no_device = call("cuInit", ctypes.c_uint(0), allowed=(_CUDA_ERROR_NO_DEVICE,))
    version, count = ctypes.c_int(), ctypes.c_int()
    call("cuDriverGetVersion", ctypes.byref(version))  # needs no cuInit
    if no_device:
        return DriverInfo(library, version.value, 0)
    call("cuDeviceGetCount", ctypes.byref(count))
    return DriverInfo(library, version.value, count.value)
