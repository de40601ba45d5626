"""One configuration, measured in a fresh process: ``python -m unifer.bench._worker JOB.json``.

Jobs: ``"probe"`` (can this environment run the backend? for backends installed in another
Python environment, see ``interpreters`` in :func:`unifer.bench.run`), ``"convert"``,
``"reference"`` and ``"measure"``.

A fresh process per (backend, configuration) keeps backends from polluting each other's memory
figures, loaded libraries and thread pools, and makes the "cold" load really the first one. The
parent writes the job as JSON; this process writes the result as JSON to ``job["result_path"]`` and
the integrity outputs as ``.npz`` to ``job["outputs_path"]``, and reports its progress as lines on
stdout that start with :data:`PROGRESS_PREFIX` (a runtime printing to stdout cannot be mistaken for
one). The backend is driven only through :class:`unifer.Engine`, and every timing goes through
:mod:`unifer._timing`.

Order of work, so that each figure means one thing:

1. memory and loaded libraries before the backend (Python, numpy and unifer only);
2. runtime import (the backend's probe, which imports the runtime), timed;
3. cold load: the first ``Engine.load`` in this process, with an empty cache directory (except
   for models converted beforehand by a ``"convert"`` job), timed;
4. first inference, timed; then the libraries the backend brought in;
5. the seeded integrity inputs, outputs saved for the parent to compare;
6. end-to-end and model-only latency in interleaved rounds (package energy around the headline
   path: end-to-end, or model-only for a model without preprocessing; and the CPU time other
   processes used meanwhile), then preprocessing alone;
7. peak RSS, then the engine is closed;
8. warm load: a second ``Engine.load`` of the same configuration (compiled-model caches now
   populated), timed and closed.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import numpy.random  # loaded before the library snapshot: the seeded inputs use it

from .. import _background, _convert, _registry
from .._cache import cache_dir
from .._engine import Engine
from .._errors import PreprocessError, UniferError, UniferWarning, UnsupportedOptionError
from .._npz import write_npz
from .._parity import inner_names, is_batch, seeded_feeds
from .._preprocess import Preprocess
from .._timing import Stats, measure, time_once
from ..backend import SessionOptions, TensorSpec
from . import _deps, _energy
from ._grid import split_target
from ._integrity import seeded_images

PROGRESS_PREFIX: Final = "@@unifer-bench "
_MIB: Final = 1024 * 1024

#: The timed paths, as results.json names them: ``engine.predict`` on an image, ``engine.run`` on
#: the prepared tensor.
TimedPath = Literal["end_to_end", "model_only"]


def progress(phase: str, **detail: object) -> None:
    """Tell the parent what this worker is doing (one protocol line on stdout)."""
    sys.stdout.write(PROGRESS_PREFIX + json.dumps({"phase": phase, **detail}) + "\n")
    sys.stdout.flush()


def memory_mib() -> dict[str, float | None]:
    """Current and peak resident set size of this process, in MiB (None where unreadable)."""
    current = peak = None
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        status = ""
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            mib = int(value.split()[0]) / 1024  # the kernel reports kB
            current, peak = (mib, peak) if key == "VmRSS" else (current, mib)
    if peak is None:
        try:
            import resource

            maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            # Linux reports KiB, macOS bytes.
            peak = maxrss / _MIB if sys.platform == "darwin" else maxrss / 1024
        except (ImportError, OSError):
            peak = None
    return {"rss_mib": current, "peak_rss_mib": peak}


class Inputs:
    """The timed inputs and the integrity cases of one job, the same in every process."""

    def __init__(self, engine: Engine, job: Mapping[str, Any]) -> None:
        self.batch = int(job["batch"])
        check_batch(engine.inputs, self.batch)
        seed = int(job["seed"])
        count = int(job["integrity_samples"])
        sizes: dict[str, int] = dict(job.get("dims") or {})
        self.preprocess = engine.preprocess
        self.input_name = engine.inputs[0].name
        self.defaulted: list[str] = []
        """Dynamic dimensions (besides the batch) that no ``dims`` entry sized: fed as 1."""
        if self.preprocess is not None:
            height, width = _image_size(engine, self.preprocess)
            images = seeded_images(count * self.batch, height, width, seed)
            # One HxWx3 image for batch 1 (what a user passes), NxHxWx3 otherwise.
            self.cases: list[Any] = [
                images[i * self.batch : (i + 1) * self.batch] if self.batch > 1 else images[i]
                for i in range(count)
            ]
            self.image = self.cases[0]
            self.feeds = {self.input_name: self.preprocess(self.image)}
        else:
            self.defaulted = _check_sizes(engine.inputs, sizes)
            self.cases = [
                seeded_feeds(engine.inputs, batch=self.batch, seed=seed + i, sizes=sizes)
                for i in range(count)
            ]
            self.image = None
            self.feeds = self.cases[0]

    def describe(self) -> dict[str, Any]:
        """The record's ``inputs``: the shape of each tensor fed to the model, and the dynamic
        dimensions fed as 1 for want of a size."""
        return {
            "shapes": {name: list(array.shape) for name, array in self.feeds.items()},
            "defaulted_dims": self.defaulted,
        }

    def end_to_end(self, engine: Engine) -> Callable[[], object]:
        """uint8 RGB image -> preprocessing -> inference -> output, as ``engine.predict`` does."""
        image = self.image
        return lambda: engine.predict(image)

    def preprocessing(self) -> Callable[[], object]:
        """The uint8 image -> the model's input tensor: what end-to-end adds to model-only."""
        preprocess, image = self.preprocess, self.image
        if preprocess is None:
            raise ValueError("this model has no preprocessing to time")
        return lambda: preprocess(image)

    def model_only(self, engine: Engine) -> Callable[[], object]:
        """The prepared input tensor -> inference -> outputs, as ``engine.run`` does."""
        feeds = self.feeds
        return lambda: engine.run(feeds)

    @property
    def headline(self) -> TimedPath:
        """The path reports lead with: end-to-end, or model-only without preprocessing."""
        return "end_to_end" if self.image is not None else "model_only"

    def call(self, engine: Engine, path: TimedPath) -> Callable[[], object]:
        return self.end_to_end(engine) if path == "end_to_end" else self.model_only(engine)

    def outputs(self, engine: Engine) -> dict[str, np.ndarray]:
        """Every integrity case's outputs, stacked along the first axis."""
        per_case: list[dict[str, np.ndarray]] = []
        for case in self.cases:
            if self.preprocess is not None:
                per_case.append({engine.outputs[0].name: engine.predict(case)})
            else:
                per_case.append(engine.run(case))
        return {
            name: np.concatenate([np.atleast_1d(c[name]) for c in per_case]) for name in per_case[0]
        }


def check_batch(inputs: Sequence[TensorSpec], batch: int) -> None:
    """That ``batch`` samples can be fed to the model with ``inputs``.

    The batch is the first dimension of the inputs where it is dynamic (the others, a scale of
    shape [1] say, are fed as they are). Without one, it is the fixed first dimension the inputs
    of rank 2 or more share; a model without that (vectors, scalars) takes one sample a call.

    Raises:
        UnsupportedOptionError: the model takes another number of samples a call. The seeded
            inputs would then hold that many while the record claimed ``batch``.
    """
    inner = inner_names(inputs)
    if any(s.shape and is_batch(s.shape[0], inner) for s in inputs):
        return
    firsts = {d for s in inputs if len(s.shape) >= 2 and isinstance(d := s.shape[0], int)}
    fixed = firsts.pop() if len(firsts) == 1 else None
    if (fixed or 1) == batch:
        return
    listed = ", ".join(map(str, inputs))
    what = (
        f"a fixed batch dimension of {fixed}"
        if fixed is not None
        else "no batch dimension (one sample a call)"
    )
    raise UnsupportedOptionError(
        f"batch {batch} cannot be fed to this model: its inputs ({listed}) have {what}. Measure "
        f"batch {fixed or 1}, or a model whose batch dimension is dynamic (symbolic): a built-in "
        "model's builtin:NAME?batch=dynamic variant (the bench picks it itself for "
        "builtin:NAME), or a model exported with a dynamic first axis"
    )


def _check_sizes(inputs: Sequence[TensorSpec], sizes: Mapping[str, int]) -> list[str]:
    """The dynamic dimensions besides the batch that ``sizes`` leaves at 1, as ``input[axis]``
    (with the name if it has one); a name in ``sizes`` that no input has is refused."""
    inner = inner_names(inputs)
    batch = {
        d for s in inputs if s.shape and isinstance(d := s.shape[0], str) and is_batch(d, inner)
    }
    if taken := sorted(set(sizes) & batch):
        raise UnsupportedOptionError(
            f"--dim names {', '.join(map(repr, taken))}, the batch dimension of this model "
            f"({', '.join(map(str, inputs))}): give batch sizes with --batch"
        )
    named = {d for s in inputs for d in s.shape if isinstance(d, str)}
    if unknown := sorted(set(sizes) - named):
        raise UnsupportedOptionError(
            f"--dim names {', '.join(map(repr, unknown))}, which is no dynamic dimension of this "
            f"model here; its inputs are {', '.join(map(str, inputs))}"
        )
    return [
        f"{s.name}[{axis}]" + (f" ({d!r})" if isinstance(d, str) else "")
        for s in inputs
        for axis, d in enumerate(s.shape)
        if axis > 0 and not isinstance(d, int) and d not in sizes
    ]


class EnergyTally:
    """Package energy (see :mod:`._energy`) over the timed rounds of one path, and its calls."""

    def __init__(self, path: TimedPath) -> None:
        self.path = path
        self.meter = _energy.Meter()
        self.joules = 0.0
        self.seconds = 0.0
        self.calls = 0

    def measure(self, call: Callable[[], object], per_round: Mapping[str, Any]) -> Stats:
        """One timed round of ``call``; metered when the counters can be read."""
        if not self.meter.available:
            return measure(call, **per_round)
        before = self.meter.read()
        stats, seconds = time_once(partial(measure, call, **per_round))
        self.joules += self.meter.joules(before, self.meter.read())
        self.seconds += seconds
        self.calls += stats.n + int(per_round["warmup"])  # the warm-up calls drew energy too
        return stats

    def result(self, batch: int) -> dict[str, Any]:
        """The record's ``energy``: the figures, or why there are none."""
        if not self.meter.available:
            return {**self.meter.describe(), "joules_per_inference": None}
        return {
            **self.meter.describe(),
            "path": self.path,
            "joules_per_inference": self.joules / self.calls,
            "joules_per_sample": self.joules / self.calls / batch,
            "average_watts": self.joules / self.seconds if self.seconds > 0 else None,
        }


def _image_size(engine: Engine, preprocess: Preprocess) -> tuple[int, int]:
    if preprocess.size is not None:
        return preprocess.size
    shape = engine.inputs[0].shape
    dims = shape[2:4] if preprocess.layout == "nchw" else shape[1:3]
    if len(dims) == 2 and all(isinstance(d, int) for d in dims):
        return int(dims[0]), int(dims[1])  # type: ignore[arg-type]
    raise PreprocessError(
        f"cannot tell the image size for input {engine.inputs[0]}: give the preprocessing a "
        "size (Preprocess(size=(h, w), ...))"
    )


def _json_safe(value: object) -> Any:
    """``engine.settings`` as JSON: nested mappings and sequences kept, anything else as str."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return str(value)


def _max(a: float | None, b: float | None) -> float | None:
    return max(a, b) if a is not None and b is not None else a if b is None else b


def _latency(parts: list[Stats], batch: int) -> dict[str, Any]:
    """The pooled statistics of the rounds, plus each round's median (their spread shows noise)."""
    stats = Stats.pooled(parts)
    return {
        "n": stats.n,
        "mean_ms": stats.mean_ms,
        "median_ms": stats.median_ms,
        "p90_ms": stats.percentile_ms(90),
        "p99_ms": stats.percentile_ms(99),
        "min_ms": stats.min_ms,
        "max_ms": max(stats.samples_ms),
        "stdev_ms": stats.stdev_ms,
        "median_ci_rel": stats.median_ci_rel if stats.n > 1 else None,
        "per_sample_median_ms": stats.median_ms / batch,
        "round_medians_ms": [p.median_ms for p in parts],
        "stop": "/".join(dict.fromkeys(p.stop for p in parts)),
    }


def probe_job(job: Mapping[str, Any]) -> dict[str, Any]:
    """Whether this environment can run the job's backend on its model, must convert it, and on
    which devices (its default first)."""
    from .. import __version__
    from ._grid import check_backend, needs_conversion

    suffix = Path(job["model"]).suffix.lower()
    availability = check_backend(str(job["backend"]), suffix)
    return {
        "pid": os.getpid(),
        "status": "ok",
        "runtime_version": availability.version,
        "devices": list(availability.devices),
        "unifer_version": __version__,
        "needs_conversion": needs_conversion(str(job["backend"]), suffix),
    }


def convert_job(job: Mapping[str, Any]) -> dict[str, Any]:
    """Convert the model for a backend that cannot read its format, into the shared cache.

    The core's own conversion (what ``Engine.load`` does on first use: convert, check against
    another backend, cache) in a process of its own, so that neither its time nor its memory, nor
    the reference backend it runs for the check, lands in a configuration's figures.
    """
    backend, _device = split_target(str(job["backend"]))  # converting is the same on any device
    plugin = _registry.get_backend(backend)
    availability = _registry.require_available(plugin)
    options = SessionOptions(
        precision="fp32",
        cache_dir=cache_dir("backends", backend),
        extra=(job.get("backend_options") or {}).get(backend, {}),
    )
    progress("convert")
    conversion, seconds = time_once(lambda: _convert.convert(plugin, Path(job["model"]), options))
    return {
        "pid": os.getpid(),
        "status": "ok",
        "runtime_version": availability.version,
        "conversion": {**conversion.to_dict(), "seconds": seconds},
    }


def measure_job(job: Mapping[str, Any]) -> dict[str, Any]:
    """Run one job (mode ``"measure"`` or ``"reference"``) and return its JSON-ready result."""
    if job["mode"] == "probe":
        return probe_job(job)
    if job["mode"] == "convert":
        return convert_job(job)
    result: dict[str, Any] = {"pid": os.getpid(), "status": "ok", "python": sys.executable}
    model = Path(job["model"])
    backend, device = split_target(str(job["backend"]))
    preprocess = Preprocess.from_dict(job["preprocess"]) if job.get("preprocess") else None
    reference_only = job["mode"] == "reference"
    memory_before = memory_mib()
    libraries_before = _deps.loaded_libraries()

    progress("runtime import")
    plugin = _registry.get_backend(backend)
    availability, import_s = time_once(lambda: _registry.require_available(plugin))
    result["runtime_version"] = availability.version

    def load() -> Engine:
        return Engine.load(
            model,
            backend=backend,
            threads=job["threads"],
            precision=job["precision"],
            # What the bench decided; a sidecar's read as Engine.load reads it, so that an error
            # names the file.
            preprocess=None if job.get("preprocess_from") == "sidecar" else preprocess or False,
            backend_options=job.get("backend_options") or None,
            device=device,
        )

    progress("cold load")
    engine, cold_s = time_once(load)
    result["settings"] = _json_safe(engine.settings)
    inputs = Inputs(engine, job)
    result["inputs"] = inputs.describe()
    progress("first inference")
    _, first_s = time_once(inputs.call(engine, inputs.headline))
    libraries_after = _deps.loaded_libraries()
    memory_loaded = memory_mib()

    progress("integrity")
    outputs = inputs.outputs(engine)
    write_npz(job["outputs_path"], outputs)  # np.savez fails on an output named 'file'
    if reference_only:
        engine.close()
        return result

    rounds = int(job["settings"]["rounds"])
    per_round = dict(job["settings"]["per_round"])
    has_e2e = inputs.headline == "end_to_end"
    paths: tuple[TimedPath, ...] = ("end_to_end", "model_only") if has_e2e else ("model_only",)
    # Energy per inference of the path the headline figures are for.
    energy = EnergyTally(inputs.headline)
    parts: dict[TimedPath, list[Stats]] = {path: [] for path in paths}
    background_before = _background.sample()
    for index in range(rounds):
        for path in paths:
            progress(path.replace("_", "-"), round=index + 1, rounds=rounds)
            call = inputs.call(engine, path)
            if path == energy.path:
                parts[path].append(energy.measure(call, per_round))
            else:
                parts[path].append(measure(call, **per_round))
    e2e_parts, model_parts = parts.get("end_to_end", []), parts["model_only"]
    # Timed on its own: the difference of the two paths' medians is noise of the model's size
    # (negative in 8 of 15 configurations of an undisturbed --quick run).
    preprocess_stats = (
        measure(inputs.preprocessing(), warmup=3, min_runs=20, min_time_s=0.2, max_runs=2000)
        if has_e2e
        else None
    )
    background = _background.between(background_before, _background.sample(), _background.cpus())
    memory_measured = memory_mib()
    engine.close()

    progress("warm load")
    warm, warm_s = time_once(load)
    warm_settings = dict(warm.settings)
    warm.close()
    memory_end = memory_mib()

    batch = int(job["batch"])
    model_stats = Stats.pooled(model_parts)
    e2e_stats = Stats.pooled(e2e_parts) if has_e2e else None
    headline = e2e_stats or model_stats
    result["load"] = {
        "runtime_import_s": import_s,
        "cold_s": cold_s,
        "warm_s": warm_s,
        "first_inference_ms": first_s * 1e3,
        "cold_loaded_from_cache": engine.settings.get("loaded_from_cache"),
        "warm_loaded_from_cache": warm_settings.get("loaded_from_cache"),
    }
    result["latency"] = {
        "end_to_end": _latency(e2e_parts, batch) if e2e_stats is not None else None,
        "model_only": _latency(model_parts, batch),
        "preprocess_ms": preprocess_stats.median_ms if preprocess_stats is not None else None,
    }
    result["background"] = background
    result["throughput"] = {
        "inferences_per_s": 1e3 / headline.mean_ms,
        "samples_per_s": batch * 1e3 / headline.mean_ms,
        "model_only_samples_per_s": batch * 1e3 / model_stats.mean_ms,
    }
    result["memory"] = {
        "baseline_rss_mib": memory_before["rss_mib"],
        "loaded_rss_mib": memory_loaded["rss_mib"],
        "peak_rss_mib": memory_measured["peak_rss_mib"],
        # The kernel syncs per-thread RSS counters lazily, so a later VmHWM can read a little
        # lower than an earlier one; the process's peak is the larger of the two readings.
        "process_peak_rss_mib": _max(memory_measured["peak_rss_mib"], memory_end["peak_rss_mib"]),
    }
    if _deps.available():
        result["dependencies"] = _deps.new_libraries(libraries_before, libraries_after)
    else:
        result["dependencies"] = _deps.unavailable("this OS has no /proc/self/maps")
    result["energy"] = energy.result(batch)
    return result


def _die_with_parent(parent: object) -> None:
    """On Linux, have the kernel kill this worker when its parent dies (the bench process, pid
    ``parent``, or a wrapper that runs the worker's interpreter), however it dies (SIGKILL, the
    OOM killer): an orphan would go on loading the machine."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if isinstance(parent, int) and not _alive(parent):  # it died before the request
        sys.exit(1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


_PR_SET_PDEATHSIG: Final = 1


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m unifer.bench._worker JOB.json\n")
        return 2
    job = json.loads(Path(args[0]).read_text())
    _die_with_parent(job.get("parent_pid"))
    # unifer's warnings (an option a backend ignored, a process-wide setting) belong in the
    # record: the worker's stderr is not shown.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UniferWarning)
        try:
            result = measure_job(job)
        except UniferError as exc:
            result = {
                "pid": os.getpid(),
                "status": "error",
                "error": f"{type(exc).__name__}: {exc}",
            }
        except Exception as exc:  # a runtime's own exception escaping Engine is still a result
            result = {
                "pid": os.getpid(),
                "status": "error",
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(limit=8),
            }
    found = [str(w.message) for w in caught if issubclass(w.category, UniferWarning)]
    result["warnings"] = list(dict.fromkeys(found))
    tmp = Path(job["result_path"] + ".tmp")
    tmp.write_text(json.dumps(result))
    os.replace(tmp, job["result_path"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
