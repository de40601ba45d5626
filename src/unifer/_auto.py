"""The policy around ``backend="auto"``: which candidates, which cache key, measure or not.

Precedence, everywhere: explicit argument > environment > cached decision > measurement > static
default. Environment variables (all optional):

- ``UNIFER_BACKEND=<name>``: what ``"auto"`` resolves to (source ``"environment"``).
- ``UNIFER_DISABLE_BACKENDS=a,b``: never considered by ``"auto"``.
- ``UNIFER_AUTO=measure|static``: ``static`` picks from the detected hardware without measuring
  (also what ``budget_s=0`` does).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import json
import logging
import os
import platform
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from . import _autocache, _background, _convert, _hardware, _measuring, _parity, _registry
from ._devices import device_option, effective_device
from ._digest import model_digest
from ._errors import ModelError, NoBackendAvailableError, UniferError, UnsupportedOptionError
from ._select import (
    Candidate,
    Objective,
    Selection,
    Trial,
    candidates,
    measure_candidates,
    no_candidate_error,
    rank,
    static_rank,
)
from .backend import PRECISIONS, Availability, Precision, Session, SessionOptions, warn_user

logger = logging.getLogger("unifer.auto")

BACKEND_ENV: Final = "UNIFER_BACKEND"
DISABLE_ENV: Final = "UNIFER_DISABLE_BACKENDS"
MODE_ENV: Final = "UNIFER_AUTO"
#: Backends preferred on CPUs other than x86, where OpenVINO's CPU plugin is not the strongest.
NON_X86_ORDER: Final = ("litert", "onnxruntime", "ncnn")


def environment_backend() -> str | None:
    """``$UNIFER_BACKEND`` if set: the backend ``"auto"`` resolves to without choosing.

    Empty or ``auto`` counts as unset, so ``UNIFER_BACKEND=auto`` means what it says.
    """
    name = os.environ.get(BACKEND_ENV, "").strip()
    return None if name in ("", "auto") else name


def check_objective(objective: str) -> Objective:
    if objective == "latency":
        return "latency"
    if objective == "throughput":
        return "throughput"
    raise UnsupportedOptionError(f"objective must be 'latency' or 'throughput', got {objective!r}")


def allowed_precisions(precision: str | Sequence[str]) -> tuple[Precision, ...]:
    """``"fp32"``, a tuple like ``("fp32", "bf16")``, or ``"fastest"`` (every precision)."""
    if precision == "fastest":
        return PRECISIONS
    if isinstance(precision, str):
        requested: tuple[object, ...] = (precision,)
    elif isinstance(precision, Sequence):
        requested = tuple(precision)
    else:
        requested = (precision,)  # None, a number...: reported as unknown below
    unknown = [p for p in requested if p not in PRECISIONS]
    if unknown or not requested:
        raise UnsupportedOptionError(
            f"precision must be one of {', '.join(map(repr, PRECISIONS))}, a tuple of them, or "
            f"'fastest', got {precision!r}"
        )
    return tuple(p for p in PRECISIONS if p in requested)


def open_auto(
    path: Path,
    *,
    threads: Sequence[int] | None,
    precisions: tuple[Precision, ...],
    objective: Objective,
    budget_s: float | None,
    open_candidate: Callable[[Candidate], Session],
    backend_options: Mapping[str, Mapping[str, object]],
    allow_conversion: bool = False,
    device: str | None = None,
    dims: Mapping[str, int] | None = None,
) -> tuple[Selection, Session]:
    """Choose and open a backend for ``path``; see the module docstring for the policy.

    ``open_candidate`` opens the model with one candidate, converting it first when the backend
    does not read the format (only backends whose conversion is cached, or any converting backend
    with ``allow_conversion``, are candidates then). ``device`` keeps the backends that can run
    on it, each opened there; without it each backend runs on its default device and on its
    accelerators.
    """
    # The engine imports this module.
    from ._engine import no_suffix_error, readers, unreadable_format_error

    suffix = path.suffix.lower()
    disabled = _disabled_backends()
    # Backends that would need a conversion compete only when it is already cached (it was asked
    # for once) or the caller allows converting now.
    converting = [
        n
        for n in _convert.converters(suffix)
        if n not in disabled
        and (allow_conversion or _conversion_cached(n, path, backend_options.get(n, {})))
    ]
    names = [n for n in _registry.auto_order([*readers(suffix), *converting]) if n not in disabled]
    if not names:
        if not suffix:
            raise no_suffix_error(path, ".onnx, .xml, .tflite, .param...")
        raise unreadable_format_error(path, disabled)
    # None: the physical cores this process may use (runtime defaults vary and oversubscribe).
    thread_options = list(threads) if threads else [_hardware.physical_cores()]
    mode = os.environ.get(MODE_ENV) or "measure"
    if mode not in {"measure", "static"}:
        raise UnsupportedOptionError(f"${MODE_ENV} must be 'measure' or 'static', got {mode!r}")
    # Converting backends left out (allow_conversion unset, nothing cached): named if nothing
    # else opens the model, since one of them may be the only way to run it (ncnn on Vulkan).
    left_out = [n for n in _convert.converters(suffix) if n not in disabled and n not in converting]
    choose = functools.partial(
        _choosing_or_saying_what_would_convert,
        left_out,
        path,
        names,
        threads=threads,
        thread_options=thread_options,
        precisions=precisions,
        objective=objective,
        budget_s=budget_s,
        open_candidate=open_candidate,
        backend_options=backend_options,
        device=device,
        disabled=disabled,
        dims=dims or {},
    )
    if mode == "static" or budget_s == 0:
        return choose(key=None, record=None)
    # Before any probe: probing imports every candidate runtime, which a cached decision must
    # not pay for. The key names runtimes by their installed distributions instead.
    versions = {name: _registry.installed_versions(name) for name in names}
    # Only the candidates' options: another backend's cannot change this decision.
    options_digest = repr(
        (device, sorted((k, sorted(v.items())) for k, v in backend_options.items() if k in names))
    )
    # The resolved counts: the physical cores this process may use can change while it runs.
    key = _cache_key(
        path, objective, precisions, thread_options, versions, options_digest, dims or {}
    )
    cached = _open_cached(key, objective, open_candidate)
    if cached is not None:
        return cached  # loads of a cached decision do not wait for one another
    # One measurement per key at a time, in this process and across processes: the other
    # callers wait, then take its decision from the cache (measuring at once, each would slow
    # the others down).
    with _measuring.measuring(key) as record:
        cached = _open_cached(key, objective, open_candidate)
        if cached is not None:
            return cached
        return choose(key=key, record=record)


def _choosing_or_saying_what_would_convert(
    left_out: Sequence[str], *args: Any, **kwargs: Any
) -> tuple[Selection, Session]:
    """:func:`_choose`; when no candidate opens, the error names the converting backends that
    were left out, and how to let them in."""
    try:
        return _choose(*args, **kwargs)
    except NoBackendAvailableError as exc:
        if not left_out:
            raise
        raise NoBackendAvailableError(
            f"{exc.message}\n{', '.join(left_out)} could convert the model into its own format "
            "and run it: allow that with allow_conversion=True",
            reasons=exc.reasons,
        ) from exc


def _choose(
    path: Path,
    names: Sequence[str],
    *,
    threads: Sequence[int] | None,
    thread_options: Sequence[int],
    precisions: tuple[Precision, ...],
    objective: Objective,
    budget_s: float | None,
    open_candidate: Callable[[Candidate], Session],
    backend_options: Mapping[str, Mapping[str, object]],
    device: str | None,
    disabled: Collection[str],
    dims: Mapping[str, int],
    key: str | None,
    record: _measuring.Record | None,
) -> tuple[Selection, Session]:
    """Probe, then measure the candidates and store the decision under ``key``; without a key,
    pick from the hardware without measuring."""

    def failed(name: str, reason: str) -> list[Trial]:
        # Listed with the caller's thread counts, if any: auto's own pick (a CPU count) would
        # suggest a configuration that was never tried.
        threads_listed = [*threads] if threads else [None]
        return [
            Trial(Candidate(name, t, p), "failed", reason=reason)
            for p in precisions
            for t in threads_listed
        ]

    # A broken plugin reads nothing, so it is no candidate; said when choosing (not on loads
    # from the cache), and listed in the explanation, since it may hide a backend the user
    # expects (one that registers the reference's name disables onnxruntime).
    broken = {n: m for n, m in _registry.broken_plugins().items() if n not in disabled}
    for name, message in broken.items():
        warn_user(f"backend='auto' passes over backend {name!r}: {message}")
    unavailable = [t for name, message in broken.items() for t in failed(name, message)]
    available: list[str] = []
    availabilities: dict[str, Availability] = {}
    pinned: dict[str, list[str | None]] = {}  # with device=: where each runs (None: its default)
    accelerators: dict[str, list[str | None]] = {}  # without: measured beside the default device
    for name in names:
        availability = _registry.cached_probe(name)
        reason = None if availability.ok else f"unavailable: {availability.reason}"
        if reason is None and device is not None:
            try:
                pinned[name] = [
                    device_option(name, availability, device, backend_options.get(name, {}))
                ]
            except UnsupportedOptionError as exc:
                reason = exc.message
        if reason is not None:
            unavailable += failed(name, reason)
            continue
        available.append(name)
        availabilities[name] = availability
        if "device" not in backend_options.get(name, {}):  # never swap a chosen device
            accelerators[name] = [None, *availability.accelerators]
    if device is not None:
        devices = pinned
    elif key is not None:  # measured: every accelerator competes
        devices = accelerators
    else:  # beside the default device, only an NVIDIA GPU: the static rule puts it first
        devices = {n: [d for d in ds if d is None or _on_cuda(d)] for n, ds in accelerators.items()}

    def where(candidate: Candidate) -> str:
        return effective_device(availabilities[candidate.backend], candidate.device)

    pool = candidates(_registry.reference_first(available), thread_options, precisions, devices)
    if not threads:
        pool = _runtime_threads_off_the_cpu(pool, where)

    def static(pool: Sequence[Candidate], why: str = "not measured") -> tuple[Selection, Session]:
        on_gpu = [c for c in pool if _on_cuda(where(c))]
        return _open_static(pool, unavailable, objective, open_candidate, path, on_gpu, why)

    if key is None:
        return static(pool)
    # Candidates are checked against an fp32 run: without fp32 among the precisions, fp32
    # runs of the same backends come first, as the reference only.
    reference_only: list[Candidate] = []
    if "fp32" not in precisions:
        reference_only = list(dict.fromkeys(dataclasses.replace(c, precision="fp32") for c in pool))
    pool = [*reference_only, *pool]
    crashed = record.crashed if record is not None else {}
    # A candidate that crashed an earlier measurement of this key would crash this one too.
    unavailable += [
        Trial(c, "failed", reason=f"the process measuring it died {_measuring.DEATHS} times "
              f"(last {crashed[str(c)]}); backend={c.backend!r} tries it again, `unifer cache "
              "clear --auto-only` forgets it")
        for c in pool
        if str(c) in crashed
    ]  # fmt: skip
    pool = [c for c in pool if str(c) not in crashed]
    noting_files = _NotingFileErrors(open_candidate)

    def opener(candidate: Candidate) -> Session:
        if record is not None:
            record.now(str(candidate))  # until the next: a crash measuring it is on record
        return noting_files(candidate)

    stored = _parity.model_precision(path)
    before = _background.sample()
    try:
        trials, kept, defaulted = measure_candidates(
            pool,
            open_candidate=opener,
            objective=objective,
            budget_s=budget_s,
            reference_only=reference_only,
            dims=dims,
            stored=stored,
        )
    except _parity.UnseedableInputError as exc:  # string inputs: chosen as without measuring
        why = f"not measured ({exc.message.removesuffix('; pass real inputs for this model')})"
        return static([c for c in pool if c not in reference_only], why)
    background = _background.between(before, _background.sample(), _background.cpus())
    if record is not None:
        record.survived(str(c) for c in pool)
    ranking = rank(trials)
    if not ranking:
        noting_files.raise_if_every_open_failed(len(pool))
        raise no_candidate_error([*unavailable, *trials], path.name)
    winner = ranking[0].candidate
    for candidate, session in kept.items():
        if candidate != winner:
            session.close()
    all_trials = (*_ordered(trials, ranking), *unavailable)
    notes: list[str] = []
    if stored != "fp32":
        notes.append(
            f"the model computes in {stored} by itself: candidates are judged at {stored}'s "
            "tolerance (runtimes faithful to it differ as such runs do)"
        )
    if defaulted:  # the speeds at another size may rank the backends otherwise
        sizes = ", ".join(f"{name}={size}" for name, size in defaulted.items())
        notes.append(
            f"dynamic dimensions measured at {sizes}; pass dims={{NAME: SIZE}} to measure at "
            "the sizes you run"
        )
    if background.get("disturbed"):  # one candidate's figures may be inflated by another job
        busy = f"{background['other_cpu'] + background['steal']:.0%}"
        notes.append(
            f"other processes used {busy} of the CPUs while this was measured; if the choice "
            "looks wrong, measure again when the machine is quieter (unifer cache clear "
            "--auto-only)"
        )
        logger.warning("auto measured %s on a busy machine: %s", path.name, notes[-1])
    _autocache.store(
        key,
        {
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "model": str(path),
            "objective": objective,
            "ranking": [str(t.candidate) for t in ranking],
            "trials": [t.to_dict() for t in all_trials],
            "notes": notes,
            "background": background,
        },
    )
    selection = Selection(winner, "measured", objective, all_trials, key, tuple(notes))
    logger.info(selection.summary())
    return selection, kept[winner]


def _on_cuda(device: str) -> bool:
    return device.startswith("cuda")


def _conversion_cached(name: str, path: Path, options: Mapping[str, object]) -> bool:
    """Whether backend ``name`` has ``path`` converted already; a converter that cannot even
    say its version (its runtime is missing) has nothing usable cached."""
    try:
        plugin = _registry.get_backend(name)
        return _convert.cached(plugin, path, SessionOptions(extra=options)) is not None
    except UniferError:
        return False


def _runtime_threads_off_the_cpu(
    pool: Sequence[Candidate], where: Callable[[Candidate], str]
) -> list[Candidate]:
    """Candidates that run off the CPU (a GPU, an NPU) with their runtime's own thread count.

    ``threads=`` sizes CPU work, and the caller left the count to auto: its pick (the physical
    cores) would only make a GPU-only runtime warn that it ignores it on every load (TensorRT,
    OpenVINO's GPU), or reset torch's process-wide setting for the sake of a CUDA candidate.
    """
    return [c if where(c).startswith("cpu") else dataclasses.replace(c, threads=None) for c in pool]


def _ordered(trials: Sequence[Trial], ranking: Sequence[Trial]) -> list[Trial]:
    """Ranked trials first, then the rejected, failed and skipped ones."""
    return [*ranking, *(t for t in trials if t not in ranking)]


def _cache_key(
    path: Path,
    objective: Objective,
    precisions: Sequence[str],
    threads: Sequence[int],
    versions: Mapping[str, Mapping[str, str]],
    options_digest: str,
    dims: Mapping[str, int],
) -> str:
    from . import __version__

    parts: dict[str, Any] = {
        "model": model_digest(path),  # every file of it: external weights, an IR's .bin
        "objective": objective,
        "precisions": list(precisions),
        "threads": sorted(threads),  # the same candidates in any order
        "dims": sorted(dims.items()),
        "runtimes": versions,
        "unifer": __version__,
        "machine": _hardware.fingerprint_digest(runtimes=False),
        "options": options_digest,
        "environment": _runtime_environment(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


#: Environment variables the runtimes read that change how fast (or in which kernels) they
#: compute: thread pools and instruction-set caps of oneDNN (OpenVINO, onnxruntime), OpenVINO...
_RUNTIME_ENV: Final = ("OMP_", "KMP_", "MKL_", "OPENBLAS_", "ONEDNN_", "DNNL_", "OV_", "ORT_")


def _runtime_environment() -> list[tuple[str, str]]:
    """The variables of :data:`_RUNTIME_ENV` set now: part of the decision's key."""
    return sorted((k, v) for k, v in os.environ.items() if k.startswith(_RUNTIME_ENV))


def _open_cached(
    key: str, objective: Objective, open_candidate: Callable[[Candidate], Session]
) -> tuple[Selection, Session] | None:
    entry = _autocache.lookup(key)
    if entry is None:
        return None
    try:
        trials = tuple(Trial.from_dict(t) for t in entry["trials"])
    except (KeyError, TypeError, ValueError):
        return None  # an entry written by another version: measure again
    stored = entry.get("notes")  # what the measurement said (sizes defaulted, a busy machine)
    notes = [n for n in stored if isinstance(n, str)] if isinstance(stored, list) else []
    for trial in trials:
        if trial.status != "measured":
            continue
        try:
            session = open_candidate(trial.candidate)
        except UniferError as exc:
            notes.append(f"cached choice {trial.candidate} no longer opens: {exc.message}")
            continue
        selection = Selection(trial.candidate, "cache", objective, trials, key, tuple(notes))
        logger.info(selection.summary())
        return selection, session
    return None


def _open_static(
    pool: Sequence[Candidate],
    unavailable: Sequence[Trial],
    objective: Objective,
    open_candidate: Callable[[Candidate], Session],
    path: Path,
    on_gpu: Collection[Candidate] = (),
    why: str = "not measured",
) -> tuple[Selection, Session]:
    """Without measuring: the first candidate in the documented order for this hardware
    (``why``: the note that says so).

    Candidates on an NVIDIA GPU (a backend's default device, or a CUDA accelerator it names) come
    first (a GPU runs a CNN like ArcFace r100 an order of magnitude faster than these CPUs), in
    the static order; then the CPU order.
    """
    x86 = platform.machine().lower() in {"x86_64", "amd64", "i686"}
    if x86:
        order = sorted(pool, key=static_rank)
        rule = "x86 CPU: the static order " + " > ".join(_registry.STATIC_ORDER)
    else:
        order = sorted(
            pool,
            key=lambda c: (
                c.backend not in NON_X86_ORDER,
                NON_X86_ORDER.index(c.backend) if c.backend in NON_X86_ORDER else 0,
                static_rank(c),
            ),
        )
        rule = f"{platform.machine()} CPU: " + " > ".join(NON_X86_ORDER)
    if on_gpu:
        order = sorted(order, key=lambda c: c not in on_gpu)  # stable: keeps the static order
        first = dict.fromkeys(
            f"{c.backend}/{c.device}" if c.device else c.backend for c in order if c in on_gpu
        )
        rule = f"NVIDIA GPU: {' > '.join(first)} first; then {rule}"
    trials = list(unavailable)
    opener = _NotingFileErrors(open_candidate)
    for candidate in order:
        try:
            session = opener(candidate)
        except UniferError as exc:
            trials.append(Trial(candidate, "failed", reason=exc.message))
            continue
        selection = Selection(
            candidate, "static", objective, tuple(trials), None, (f"{why}; {rule}",)
        )
        logger.info(selection.summary())
        return selection, session
    opener.raise_if_every_open_failed(len(order))
    raise no_candidate_error(trials, path.name)


def _disabled_backends() -> set[str]:
    """The names in ``$UNIFER_DISABLE_BACKENDS``; a name no backend has is warned about (a typo
    would otherwise leave the backend it meant silently enabled)."""
    disabled = {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}
    for name in sorted(disabled - {*_registry.backend_names(), *_registry.FIRST_PARTY}):
        close = _registry.closest_name(name)
        warn_user(
            f"${DISABLE_ENV} names {name!r}, which is no backend, so it disables nothing"
            + (f"; did you mean {close!r}?" if close else "")
            + f" (installed: {', '.join(_registry.backend_names()) or 'none'})"
        )
    return disabled


class _NotingFileErrors:
    """``open_candidate``, noting the errors that blame the model file (corrupt, truncated, a
    weights file missing): when every candidate raised one, the file is the problem, and its
    error (a ``FileNotFoundError`` for a missing file) says so better than a list of runtimes."""

    def __init__(self, open_candidate: Callable[[Candidate], Session]) -> None:
        self._open = open_candidate
        self._errors: list[ModelError] = []

    def __call__(self, candidate: Candidate) -> Session:
        try:
            return self._open(candidate)
        except ModelError as exc:
            self._errors.append(exc)
            raise

    def raise_if_every_open_failed(self, attempted: int) -> None:
        if attempted and len(self._errors) == attempted:
            raise self._errors[0]
