"""The ``device=`` argument of ``Engine.load``: one device name that every backend understands.

Backends list the devices they can use here in ``Availability.devices``, in unifer's names
(``"cpu"``, ``"cuda:0"``, ``"vulkan:0"``, ``"gpu:0"``), their default first, and run on another
through their ``device`` backend option. ``device="cuda:0"`` therefore means: this backend's own
device option set to ``"cuda:0"``, or nothing at all where that is the backend's default -- so a
backend without a device option (onnxruntime, LiteRT...) still opens on the CPU when asked for
``"cpu"``.
"""

from __future__ import annotations

from collections.abc import Mapping

from ._errors import UnsupportedOptionError
from .backend import Availability

#: What a backend that lists no devices is taken to run on.
DEFAULT_DEVICES = ("cpu",)


def effective_device(availability: Availability, device: str | None) -> str:
    """Where a backend runs: on ``device``, or where it runs by default (``None``)."""
    return device or (availability.devices or DEFAULT_DEVICES)[0]


def device_option(
    backend: str, availability: Availability, device: str, options: Mapping[str, object]
) -> str | None:
    """The ``device`` option that runs ``backend`` on ``device``; ``None`` for its default device.

    ``device`` is one of the backend's device names, or a kind alone (``"cuda"``) for its first
    device of that kind. ``options`` are the caller's ``backend_options`` for this backend.

    Raises:
        UnsupportedOptionError: the backend cannot run on ``device`` here, or ``options`` name
            another device.
    """
    if not isinstance(device, str) or not device:
        raise UnsupportedOptionError(
            f"device must be a device name such as 'cpu' or 'cuda:0', got {device!r}"
        )
    devices = availability.devices or DEFAULT_DEVICES
    match = (
        device
        if device in devices
        else next((d for d in devices if d.partition(":")[0] == device), None)
    )
    if match is None:
        # The probe's note often says why a device is missing ("no GPU is usable: ...").
        note = f". {backend}: {availability.reason}" if availability.reason else ""
        raise UnsupportedOptionError(
            f"backend {backend!r} cannot run on device {device!r} here; its devices here are "
            f"{', '.join(devices)} (unifer backends lists every backend's){note}"
        )
    chosen = options.get("device")
    if chosen is not None and chosen != match:
        raise UnsupportedOptionError(
            f"device={device!r} and backend_options[{backend!r}]['device']={chosen!r} disagree; "
            "pass one of them"
        )
    return None if match == devices[0] else match
