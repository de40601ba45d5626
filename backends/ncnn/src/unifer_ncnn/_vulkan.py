"""ncnn's Vulkan devices: which this machine has, and the ``device`` option that picks one.

The ncnn wheel on PyPI is built with Vulkan. Its first GPU call loads the Vulkan loader
(``libvulkan.so.1``) and the drivers the loader finds (an NVIDIA, AMD or Intel GPU's, or Mesa's
lavapipe, a Vulkan implementation that runs on the CPU), and prints what it found -- or why it found
nothing -- to the process's stderr from C++. :func:`enumerate_devices` captures those lines: they
are logged at debug level, and when there is no device they are the reason ``probe()`` gives.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final

import ncnn

from unifer import UnsupportedOptionError

logger = logging.getLogger("unifer.ncnn")

#: Serialises the first enumeration: two redirections of fd 2 at once could leave it redirected.
_ENUMERATING: Final = threading.Lock()
#: ``ncnn.GpuInfo.type()`` (ncnn's order, not Vulkan's VkPhysicalDeviceType).
_KINDS: Final = {0: "discrete GPU", 1: "integrated GPU", 2: "virtual GPU", 3: "CPU"}
#: What makes a Vulkan device appear where there is none (Debian/Ubuntu package names).
INSTALL_HINT: Final = (
    "install the Vulkan loader and a driver: your GPU vendor's (NVIDIA's driver ships its Vulkan "
    "driver; in a container it needs NVIDIA_DRIVER_CAPABILITIES to include 'graphics'), or, to run "
    "Vulkan on the CPU, Mesa's lavapipe: apt-get install libvulkan1 mesa-vulkan-drivers"
)


@dataclass(frozen=True)
class VulkanDevice:
    index: int
    name: str
    kind: str
    """``"discrete GPU"``, ``"integrated GPU"``, ``"virtual GPU"``, ``"CPU"`` or ``"other"``."""

    @property
    def is_gpu(self) -> bool:
        return self.kind.endswith("GPU")

    @property
    def device(self) -> str:
        """unifer's name for it: ``"vulkan:<index>"``."""
        return f"vulkan:{self.index}"

    def describe(self) -> str:
        return f"{self.device} = {self.name} ({self.kind})"


@dataclass(frozen=True)
class VulkanDevices:
    devices: tuple[VulkanDevice, ...]
    default: int | None
    """The index ncnn picks for ``device="vulkan"`` (a discrete GPU before others)."""
    why_none: str
    """Why there is no device (ncnn's own words where it gave any); empty when there is one."""


@functools.cache
def enumerate_devices() -> VulkanDevices:
    """The Vulkan devices ncnn sees; the first call initializes ncnn's Vulkan instance."""
    if not hasattr(ncnn, "get_gpu_count"):
        return VulkanDevices((), None, "this ncnn build has no Vulkan support")
    with _ENUMERATING, _captured_stderr() as captured:
        count = int(ncnn.get_gpu_count())
        devices = tuple(_device(i) for i in range(count))
        default = int(ncnn.get_default_gpu_index()) if count else None
    lines = _distinct_lines("".join(captured))
    for line in lines:
        logger.debug("ncnn: %s", line)
    why_none = "" if devices else "; ".join(map(_explain, lines)) or "the loader reports no device"
    return VulkanDevices(devices, default, why_none)


def resolve(value: object) -> VulkanDevice | None:
    """The Vulkan device the ``device`` option names (``None`` for ``"cpu"``), or raise."""
    if value == "cpu":
        return None
    match = re.fullmatch(r"vulkan(?::(\d+))?", value) if isinstance(value, str) else None
    if match is None:
        raise UnsupportedOptionError(
            f"backend option 'device' must be 'cpu', 'vulkan' or 'vulkan:N', got {value!r}"
        )
    found = enumerate_devices()
    if not found.devices:
        raise UnsupportedOptionError(
            f"backend option device={value!r} asks for ncnn's Vulkan path, but ncnn finds no "
            f"Vulkan device here ({found.why_none}). Use device='cpu', or {INSTALL_HINT}"
        )
    index = found.default if match[1] is None else int(match[1])
    for device in found.devices:
        if device.index == index:
            return device
    raise UnsupportedOptionError(
        f"backend option device={value!r}: ncnn's Vulkan devices here are "
        f"{_listing(found.devices)}. Pick one of them"
    )


def _listing(devices: Sequence[VulkanDevice]) -> str:
    return ", ".join(d.describe() for d in devices)


def _device(index: int) -> VulkanDevice:
    info = ncnn.get_gpu_info(index)
    return VulkanDevice(index, str(info.device_name()), _KINDS.get(int(info.type()), "other"))


def _explain(line: str) -> str:
    """ncnn's line, with the meaning of the Vulkan error code it most often prints."""
    if line.endswith("failed -9"):  # VK_ERROR_INCOMPATIBLE_DRIVER
        return f"{line} (VK_ERROR_INCOMPATIBLE_DRIVER: the Vulkan loader found no driver)"
    return line


def _distinct_lines(text: str) -> list[str]:
    """Non-empty lines, each once, in order (ncnn repeats its dlopen failure per library name)."""
    return list(dict.fromkeys(line.strip() for line in text.splitlines() if line.strip()))


@contextlib.contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """Redirect file descriptor 2 (where ncnn's C++ writes) into a temporary file meanwhile; the
    yielded list holds what was written once the block is left.

    Process-wide: another thread's stderr output during the call lands there too (and is logged
    at debug level with ncnn's). The call is made once per process.
    """
    text: list[str] = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no fd 2 (a daemon) or no sys.stderr
        yield text  # nothing to capture, nothing to protect
        return
    with tempfile.TemporaryFile() as captured:
        try:
            os.dup2(captured.fileno(), 2)
            yield text
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text.append(captured.read().decode(errors="replace"))
