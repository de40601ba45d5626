"""What to measure: the configurations (backend x threads x batch x precision) and how long.

The defaults reproduce the classic CPU study: every available backend that reads the model, each
thread count from 1 to the physical cores this process may use plus the runtime's own default
(``threads=None``), batch 1, fp32.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final

from .. import _convert, _registry
from .._devices import effective_device
from .._engine import readers
from .._errors import ModelFormatError, UniferError, UnsupportedOptionError
from .._hardware import physical_cores
from .._options import check_precision
from ..backend import Availability, Precision

#: The thread setting that leaves the choice to the runtime, as reports spell it.
DEFAULT_LABEL: Final = "default"
#: Joins a backend and a device in a bench target: ``"ncnn@vulkan"``, ``"torch@cuda:0"``.
DEVICE_SEPARATOR: Final = "@"


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """How long each configuration is measured.

    Each of the two latencies (end-to-end and model-only) is measured in ``rounds`` interleaved
    rounds; each round discards ``warmup`` calls, then runs until ``min_runs / rounds`` calls and
    ``min_time_s / rounds`` seconds are both reached (or, with ``stable``, until the median is
    stable to that fraction), never past ``max_time_s / rounds``.
    """

    warmup: int = 3
    min_runs: int = 100
    min_time_s: float = 20.0
    max_time_s: float | None = 300.0
    stable: float | None = None
    rounds: int = 2
    integrity_samples: int = 4
    """Seeded inputs compared with the reference backend."""
    seed: int = 0
    worker_timeout_s: float = 1800.0
    """A configuration whose process runs longer is stopped and reported as failed."""

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.min_runs < 1 or self.rounds < 1 or self.integrity_samples < 1:
            raise UnsupportedOptionError(
                "bench settings need warmup >= 0, min_runs >= 1, rounds >= 1 and "
                f"integrity_samples >= 1; got {self}"
            )
        if self.min_time_s < 0 or (self.max_time_s is not None and self.max_time_s <= 0):
            raise UnsupportedOptionError(
                f"min_time_s must be >= 0 and max_time_s > 0 (or None); got {self}"
            )
        if self.stable is not None and not 0 < self.stable < 1:
            raise UnsupportedOptionError(
                f"stable must be a fraction between 0 and 1, e.g. 0.01; got {self.stable}"
            )

    def per_round(self) -> dict[str, Any]:
        """The keyword arguments of one round's :func:`unifer._timing.measure` call."""
        return {
            "warmup": self.warmup,
            "min_runs": max(1, -(-self.min_runs // self.rounds)),
            "min_time_s": self.min_time_s / self.rounds,
            "max_time_s": self.max_time_s / self.rounds if self.max_time_s is not None else None,
            "stable": self.stable,
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: The full run: >= 100 calls and >= 20 s per latency, in two interleaved rounds.
DEFAULT: Final = Settings()
#: A smoke test (``--quick``): a few seconds per configuration.
QUICK: Final = Settings(warmup=2, min_runs=10, min_time_s=1.0, max_time_s=10.0)

#: The model ``unifer bench`` measures when none is named, and the one ``--quick`` uses.
DEFAULT_MODEL: Final = "builtin:arcface-r100"
QUICK_MODEL: Final = "builtin:arcface-r18"


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """One measured configuration; each runs in its own fresh process."""

    backend: str
    threads: int | None
    """None: the runtime's own default."""
    batch: int = 1
    precision: Precision = "fp32"

    @property
    def threads_label(self) -> str:
        return DEFAULT_LABEL if self.threads is None else str(self.threads)

    @property
    def label(self) -> str:
        return f"{self.backend} threads={self.threads_label} {self.precision} batch={self.batch}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def split_target(target: str) -> tuple[str, str | None]:
    """A bench target, ``BACKEND`` or ``BACKEND@DEVICE``, as (backend, device or None).

    The same backend on two devices is two targets, measured and reported side by side
    (``torch@cpu`` and ``torch@cuda:0``); the device is opened as ``Engine.load(device=...)``.
    """
    backend, separator, device = target.partition(DEVICE_SEPARATOR)
    if separator and not (backend and device):
        raise UnsupportedOptionError(
            f"a bench target is BACKEND or BACKEND{DEVICE_SEPARATOR}DEVICE, e.g. "
            f"ncnn{DEVICE_SEPARATOR}vulkan or torch{DEVICE_SEPARATOR}cuda:0; got {target!r}"
        )
    return backend, device or None


def default_threads() -> list[int | None]:
    """1 .. the physical cores this process may use, then None (the runtime's default)."""
    return [*range(1, physical_cores(usable=True) + 1), None]


def parse_threads(values: Iterable[str | int | None]) -> list[int | None]:
    """Thread counts from user input: positive integers, or "default"/None for the runtime's own."""
    result: list[int | None] = []
    for value in values:
        if value is None or (isinstance(value, str) and value.strip().lower() == DEFAULT_LABEL):
            parsed: int | None = None
        else:
            try:
                parsed = int(value)
            except ValueError:
                raise UnsupportedOptionError(
                    f"thread count {value!r} is neither a positive integer nor 'default'"
                ) from None
            if parsed < 1:
                raise UnsupportedOptionError(f"thread counts must be at least 1, got {parsed}")
        if parsed not in result:
            result.append(parsed)
    return result


def select_backends(
    suffix: str,
    requested: Sequence[str] | None,
    backend_options: Mapping[str, Mapping[str, object]] | None = None,
) -> tuple[list[str], dict[str, str]]:
    """The backends to measure, and the ones left out with the reason.

    By default every installed backend that reads ``suffix``, or converts it into its own format
    (ncnn, LiteRT from ONNX), and can run here, on its default device and on each accelerator its
    probe names (``ncnn@vulkan:0`` on a machine with a Vulkan GPU), as ``backend="auto"``
    measures them, unless ``backend_options`` sets its device. A backend the user names must
    exist, read or convert the format, and be available, or this raises.
    """
    if requested:
        chosen: list[str] = []
        for name in requested:
            check_backend(name, suffix)
            if name not in chosen:
                chosen.append(name)
        return chosen, {}
    chosen, skipped = [], {}
    candidates = _registry.auto_order(
        sorted(set(readers(suffix)) | set(_convert.converters(suffix)))
    )
    for name in candidates:
        try:
            availability = _registry.require_available(_registry.get_backend(name))
        except UniferError as exc:  # unavailable runtime, or a plugin that fails to import
            skipped[name] = exc.message
            continue
        chosen.append(name)
        if "device" not in (backend_options or {}).get(name, {}):
            chosen += [f"{name}{DEVICE_SEPARATOR}{d}" for d in availability.accelerators]
    if not chosen:
        detail = "; ".join(f"{n}: {r}" for n, r in skipped.items())
        raise ModelFormatError(
            f"no available backend reads {suffix!r} models"
            + (f" ({detail})" if detail else "")
            + '. Install one, e.g.: pip install "unifer[onnxruntime]"'
        )
    return chosen, skipped


def check_backend(name: str, suffix: str) -> Availability:
    """That the backend of target ``name`` is installed, can run here, and reads or converts
    ``suffix`` files.

    Raises:
        BackendNotFoundError, BackendUnavailableError, PluginError: it cannot run here.
        ModelFormatError: it neither reads nor converts the format.
        UnsupportedOptionError: ``name`` is not a target (``BACKEND`` or ``BACKEND@DEVICE``).
    """
    # BackendNotFoundError names the installed ones.
    plugin = _registry.get_backend(split_target(name)[0])
    if suffix not in plugin.suffixes and not _convert.can_convert(plugin, suffix):
        raise ModelFormatError(
            f"backend {name!r} reads {', '.join(plugin.suffixes)} files, not {suffix!r}, "
            f"and cannot convert them; backends that read {suffix!r}: "
            f"{', '.join(readers(suffix)) or 'none'}"
        )
    return _registry.require_available(plugin)


def without_thread_counts_off_the_cpu(
    configs: Sequence[Config],
    probes: Mapping[str, Availability] | None = None,
    backend_options: Mapping[str, Mapping[str, object]] | None = None,
) -> list[Config]:
    """The default sweep less its thread counts on targets off the CPU (``ncnn@vulkan``, torch
    on CUDA, TensorRT): ``threads=`` sizes CPU work, so such a target runs at its runtime's own
    default, once per batch and precision, instead of repeating one figure (or a warning that
    the count does not apply) per count.

    ``probes``: the availability of backends probed in another Python environment, by name (this
    environment may not have them); the others are probed here. ``backend_options``: a
    ``device`` option there (``--option ncnn.device=vulkan``) moves a target off the CPU too.
    """
    options = backend_options or {}
    return [
        c
        for c in configs
        if c.threads is None or _target_on_the_cpu(c.backend, probes or {}, options)
    ]


def _target_on_the_cpu(
    target: str,
    probes: Mapping[str, Availability],
    backend_options: Mapping[str, Mapping[str, object]],
) -> bool:
    backend, device = split_target(target)
    chosen = backend_options.get(backend, {}).get("device")
    if device is None and chosen is not None:
        # The backend's own device name ('vulkan', 'GPU', 'cuda:0', a CUDA index): only its
        # CPU is called so.
        return str(chosen).lower().startswith("cpu")
    availability = probes.get(backend) or _registry.cached_probe(backend)
    return effective_device(availability, device).startswith("cpu")


def needs_conversion(target: str, suffix: str) -> bool:
    """Whether the backend of ``target`` runs a ``suffix`` model only after converting it."""
    return suffix not in _registry.get_backend(split_target(target)[0]).suffixes


def plan(
    backends: Sequence[str],
    threads: Sequence[int | None],
    batches: Sequence[int] = (1,),
    precisions: Sequence[str] = ("fp32",),
) -> list[Config]:
    """Every configuration, grouped by backend, then precision, batch and thread count."""
    checked = check_variants(batches, precisions)
    return [
        Config(backend=b, threads=t, batch=n, precision=p)
        for b in backends
        for p in dict.fromkeys(checked)
        for n in dict.fromkeys(batches)
        for t in dict.fromkeys(threads)
    ]


def check_dims(dims: Mapping[str, int] | None) -> dict[str, int]:
    """``dims`` (dimension name -> size) checked: names are text, sizes positive integers."""
    checked: dict[str, int] = {}
    for name, size in (dims or {}).items():
        if not isinstance(name, str) or not name:
            raise UnsupportedOptionError(f"dimension names are text, got {name!r}")
        if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
            raise UnsupportedOptionError(
                f"dimension {name!r} needs a positive integer size, got {size!r}"
            )
        checked[name] = int(size)
    return checked


def check_variants(batches: Sequence[int], precisions: Sequence[str]) -> list[Precision]:
    """The precisions, checked, after checking that every batch size is a positive integer.

    Raises:
        UnsupportedOptionError: a batch size or precision is not one the bench can measure.
    """
    for batch in batches:
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise UnsupportedOptionError(f"batch sizes must be positive integers, got {batch!r}")
    return [check_precision(p) for p in precisions]
