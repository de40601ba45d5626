"""Run a benchmark: one fresh worker process per configuration, integrity against a reference.

The parent never opens a model itself (its own memory and thread pools would then be in every
figure). It resolves the model once, runs the reference backend's worker for the integrity
outputs, then each configuration's worker in turn, and assembles the records with the machine
fingerprint into a :class:`Result`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np

from .. import _parity, _registry, models
from .._digest import model_digest, model_files
from .._engine import readers, resolve_model
from .._errors import (
    BackendUnavailableError,
    ModelFormatError,
    UniferError,
    UnsupportedOptionError,
)
from .._hardware import fingerprint, fingerprint_digest
from .._preprocess import Preprocess, load_sidecar
from ..backend import Availability, Precision, TensorSpec
from ..models._iresnet import BATCH_DIM
from . import _energy
from ._grid import (
    DEFAULT,
    DEFAULT_MODEL,
    Config,
    Settings,
    check_dims,
    check_variants,
    default_threads,
    needs_conversion,
    plan,
    select_backends,
    split_target,
    without_thread_counts_off_the_cpu,
)
from ._integrity import TOLERANCES, compare
from ._worker import PROGRESS_PREFIX

#: The version of the results.json layout (see docs/bench.md); bumped on incompatible changes.
SCHEMA: Final = "unifer.bench/1"
#: The cache directory of the conversion jobs, beside the workers' own (see _spawn).
SHARED_CACHE: Final = "shared-cache"
#: Environment variables that change thread pools behind a runtime's back; recorded with results.
#: Not UNIFER_NUM_THREADS: the workers never see it (see _spawn).
THREAD_ENV: Final = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
#: The query of a built-in model's variant with a symbolic batch dimension (see unifer.models).
DYNAMIC_BATCH: Final = "?batch=dynamic"


@dataclass(frozen=True, slots=True)
class Progress:
    """One progress event: which configuration (1-based ``index`` of ``total``), doing what.

    ``config`` is None for the reference run. ``record`` is set when a configuration is finished.
    """

    index: int
    total: int
    config: Config | None
    phase: str
    detail: Mapping[str, object] = field(default_factory=dict)
    record: Mapping[str, Any] | None = None


ProgressCallback = Callable[[Progress], None]


@dataclass(slots=True, kw_only=True)
class Result:
    """Everything one benchmark run measured; ``to_dict()`` is the results.json document."""

    model: dict[str, Any]
    settings: dict[str, Any]
    machine: dict[str, Any]
    reference: dict[str, Any]
    records: list[dict[str, Any]]
    skipped: dict[str, str] = field(default_factory=dict)
    conditions: dict[str, Any] = field(default_factory=dict)
    energy: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    unifer_version: str = ""
    command: str | None = None
    schema: str = SCHEMA

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "created": self.created,
            "unifer_version": self.unifer_version,
            "command": self.command,
            "model": self.model,
            "settings": self.settings,
            "machine": self.machine,
            "conditions": self.conditions,
            "energy": self.energy,
            "reference": self.reference,
            "skipped": self.skipped,
            "records": self.records,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Result:
        """Read a results.json document back (same schema major version only)."""
        schema = data.get("schema")
        if not isinstance(schema, str) or schema.split("/")[0] != SCHEMA.split("/")[0]:
            raise UniferError(
                f"this is not a unifer bench results document (schema {schema!r}); pass the "
                "results.json that `unifer bench --out DIR` wrote"
            )
        if schema != SCHEMA:
            raise UniferError(
                f"these results were written with schema {schema!r}, and this unifer reads "
                f"{SCHEMA!r}; read them with the unifer version that wrote them"
            )
        return cls(
            schema=schema,
            created=data.get("created", ""),
            unifer_version=data.get("unifer_version", ""),
            command=data.get("command"),
            model=dict(data["model"]),
            settings=dict(data["settings"]),
            machine=dict(data["machine"]),
            conditions=dict(data.get("conditions", {})),
            energy=dict(data.get("energy", {})),
            reference=dict(data["reference"]),
            skipped=dict(data.get("skipped", {})),
            records=list(data["records"]),
        )

    def ok_records(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["status"] == "ok"]


def run(
    model: str | os.PathLike[str] = DEFAULT_MODEL,
    *,
    backends: Sequence[str] | None = None,
    threads: Sequence[int | None] | None = None,
    batches: Sequence[int] = (1,),
    precisions: Sequence[str] = ("fp32",),
    settings: Settings = DEFAULT,
    reference: str | None = None,
    preprocess: Preprocess | Literal[False] | None = None,
    backend_options: Mapping[str, Mapping[str, object]] | None = None,
    progress: ProgressCallback | None = None,
    command: str | None = None,
    interpreters: Mapping[str, str | os.PathLike[str]] | None = None,
    dims: Mapping[str, int] | None = None,
) -> Result:
    """Measure ``model`` with every configuration; see docs/bench.md for what each figure means.

    Args:
        model: A model file or built-in model spec (default ``builtin:arcface-r100``). A built-in
            model is measured in its dynamic-batch variant when a batch above 1 is asked for.
        backends: Backend names; default every installed backend that reads the model, or
            converts it into its own format, and can run here (the others are listed in
            ``Result.skipped`` with the reason). A converting backend's conversion runs once, in a
            process of its own, and is timed apart (``record["conversion"]["seconds"]``).
        threads: Thread counts, ``None`` meaning the runtime's default; default
            ``1..physical cores`` and ``None``.
        batches: Batch sizes (default ``(1,)``). A model whose batch dimension is fixed gets a
            failed record, saying so, for every other batch.
        precisions: Precisions (default ``("fp32",)``); a backend that cannot honour one gets a
            failed record saying why, the others go on.
        settings: How long to measure each configuration (:data:`DEFAULT`, :data:`QUICK`, ...).
        reference: The backend whose fp32 outputs the integrity check compares with; default
            onnxruntime when available, else the first backend measured.
        preprocess: Preprocessing for ``predict`` (default: the built-in model's own, or the
            model's sidecar; ``False``: none, not even those). Without one, only the model-only
            latency is measured.
        backend_options: Passed to ``Engine.load`` in every worker.
        progress: Called with a :class:`Progress` for every step; runs for minutes otherwise silent.
        command: The command line to record in the results, if any.
        interpreters: Backends installed in another Python environment, by name: that
            environment's python, e.g. ``{"mxnet": "backends/mxnet/.venv/bin/python"}`` (mxnet
            needs numpy < 1.24). Their conversion and measurement workers run there, and they are
            measured by default, there only (once, even when installed here too); the reference,
            the integrity check and the report stay here.
        dims: Sizes of the inputs' named dynamic dimensions besides the batch, e.g.
            ``{"sequence": 128}`` or ``{"H": 224, "W": 224}``; one not given is fed as 1, and
            the records list it (``inputs.defaulted_dims``). Images take the preprocessing's size.

    Raises:
        ModelNotFoundError, ModelFormatError: the model cannot be found, or no backend here reads
            it (the reference runs here).
        BackendNotFoundError, BackendUnavailableError: a named backend is missing or broken.
        UnsupportedOptionError: a bad thread count, batch size, precision or setting.
    """
    started = time.time()
    check_variants(batches, precisions)  # before generating a built-in model (seconds to minutes)
    sizes = check_dims(dims)
    elsewhere = {name: Path(python) for name, python in (interpreters or {}).items()}
    here = None if backends is None else [b for b in backends if _backend(b) not in elsewhere]
    if backends is not None:
        elsewhere = {n: p for n, p in elsewhere.items() if n in map(_backend, backends)}
    for name, python in elsewhere.items():
        if not (python.is_file() and os.access(python, os.X_OK)):
            raise UnsupportedOptionError(
                f"the Python interpreter given for backend {name!r}, {str(python)!r}, does not "
                "exist or is not executable; pass that environment's python (for mxnet: "
                "uv sync --project backends/mxnet, then backends/mxnet/.venv/bin/python)"
            )
    builtin = isinstance(model, str) and model.startswith(models.PREFIX)
    if builtin:  # built-in models are ONNX: find the backends before generating one (seconds)
        names, skipped = _select_here(".onnx", here, backend_options, elsewhere)
    path, preprocess, model_info = _resolve_model(model, preprocess, batches)
    # A quantized model's runs are judged as int8 runs, whatever precision they were asked for.
    model_info["stored_precision"] = _parity.model_precision(path)
    suffix = path.suffix.lower()
    if not builtin:
        names, skipped = _select_here(suffix, here, backend_options, elsewhere)
    # Backends probed in another environment, by name: this one may not have them.
    probes: dict[str, Availability] = {}
    configs = _plan(names, threads, batches, precisions, probes, backend_options)
    ref_name = _reference(names, suffix, reference)
    notify = progress or (lambda _event: None)
    base_job = {
        "model": str(path),
        "preprocess": preprocess.to_dict() if preprocess is not None else None,
        "preprocess_from": model_info.get("preprocess_from"),
        "seed": settings.seed,
        "integrity_samples": settings.integrity_samples,
        "dims": sizes,
        "settings": {"rounds": settings.rounds, "per_round": settings.per_round()},
        "backend_options": {k: dict(v) for k, v in (backend_options or {}).items()},
    }
    load_before = _loadavg()
    records: list[dict[str, Any]] = []
    interrupted: str | None = None
    reference_info: dict[str, Any] = {"backend": ref_name, "precision": "fp32", "threads": None}
    with tempfile.TemporaryDirectory(prefix="unifer-bench-") as tmp:
        root = Path(tmp)
        # By backend: a backend measured on two devices converts once.
        converting = {_backend(n) for n in [*names, ref_name] if needs_conversion(n, suffix)}
        for name, python in elsewhere.items():
            notify(Progress(0, len(configs), None, f"probe {name} in {python}"))
            found = _spawn(
                {**base_job, "backend": name, "mode": "probe"},
                root / f"probe-{name}",
                lambda phase, detail: None,
                settings.worker_timeout_s,
                python=python,
            )
            problem = (
                found.get("error")
                if found["status"] != "ok"
                else f"it has unifer {found['unifer_version']}, this one is {_unifer_version()}; "
                "install the same unifer there"
                if found["unifer_version"] != _unifer_version()
                else None
            )
            if problem is not None:
                if backends is not None:  # asked for by name: that must work, as here
                    raise BackendUnavailableError(f"backend {name!r} in {python}: {problem}")
                skipped[name] = f"{python}: {problem}"
                continue
            names += [b for b in backends if _backend(b) == name] if backends else [name]
            probes[name] = Availability(
                ok=True, version=found["runtime_version"], devices=tuple(found["devices"])
            )
            if found["needs_conversion"]:
                converting.add(name)
            configs = _plan(names, threads, batches, precisions, probes, backend_options)
        total = len(configs)
        # Backends that run the model only after converting it (ncnn, LiteRT from ONNX): convert
        # once, in a process of its own, into the cache whose converted/ every worker shares.
        shared = root / SHARED_CACHE
        conversions: dict[str, dict[str, Any]] = {}
        for name in [n for n in _distinct_backends([*names, ref_name]) if n in converting]:
            notify(Progress(0, total, None, f"convert for {name}"))
            done = _spawn(
                {**base_job, "backend": name, "mode": "convert"},
                root / f"convert-{name}",
                lambda phase, detail: notify(Progress(0, total, None, phase, detail)),
                settings.worker_timeout_s,
                cache=shared,
                python=elsewhere.get(name),
            )
            conversions[name] = (
                done["conversion"]
                if done["status"] == "ok"
                else {"error": f"converting the model for {name} failed: {done['error']}"}
            )
        ref_outputs: dict[int, dict[str, np.ndarray] | str] = {}
        for batch in dict.fromkeys(c.batch for c in configs):
            ref_config = Config(backend=ref_name, threads=None, batch=batch, precision="fp32")
            notify(Progress(0, total, None, f"reference ({ref_config.label})"))
            ref = _spawn(
                {**base_job, **ref_config.to_dict(), "mode": "reference"},
                root / f"reference-{batch}",
                lambda phase, detail: notify(Progress(0, total, None, phase, detail)),
                settings.worker_timeout_s,
            )
            if ref["status"] == "ok":
                ref_outputs[batch] = ref.pop("outputs")
            else:
                ref_outputs[batch] = (
                    f"the reference run ({ref_config.label}) failed: {ref['error']}"
                )
            reference_info.setdefault("runtime_version", ref.get("runtime_version"))
            reference_info.setdefault("runs", []).append(
                {"batch": batch, "status": ref["status"], "error": ref.get("error")}
            )
        try:
            _measure_each(
                configs,
                records,
                conversions,
                ref_outputs,
                model_info["stored_precision"],
                base_job,
                root,
                settings,
                elsewhere,
                notify,
            )
        except KeyboardInterrupt:
            # Ctrl+C (or SIGTERM in the CLI) keeps what was measured: the worker is stopped by
            # _spawn and the report says the run was cut short.
            if not records:
                raise
            interrupted = f"after {len(records)} of {total} configurations"
    finished = time.time()
    machine = fingerprint()
    machine["digest"] = fingerprint_digest()
    return Result(
        created=datetime.datetime.fromtimestamp(started, datetime.timezone.utc).isoformat(
            timespec="seconds"
        ),
        unifer_version=_unifer_version(),
        command=command,
        model=model_info,
        settings={
            **settings.to_dict(),
            "per_round": settings.per_round(),
            "backends": names,
            "interpreters": {n: str(p) for n, p in elsewhere.items() if n in names},
            "backend_options": base_job["backend_options"],
            "threads": list(dict.fromkeys(c.threads for c in configs)),
            "batches": list(dict.fromkeys(batches)),
            "precisions": list(dict.fromkeys(precisions)),
            "dims": sizes,
            "integrity_tolerances": {p: t.to_dict() for p, t in TOLERANCES.items()},
        },
        machine=machine,
        conditions={
            "loadavg_before": load_before,
            "loadavg_after": _loadavg(),
            "wall_s": finished - started,
            "interrupted": interrupted,
            "thread_env": {k: os.environ.get(k) for k in THREAD_ENV},
        },
        energy=_energy.Meter().describe(),
        reference=reference_info,
        skipped=skipped,
        records=records,
    )


def _backend(target: str) -> str:
    """The backend of a bench target (``"ncnn@vulkan"`` -> ``"ncnn"``)."""
    return split_target(target)[0]


def _distinct_backends(targets: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(map(_backend, targets)))


def _select_here(
    suffix: str,
    requested: list[str] | None,
    backend_options: Mapping[str, Mapping[str, object]] | None,
    elsewhere: Collection[str],
) -> tuple[list[str], dict[str, str]]:
    """:func:`select_backends` in this environment, less the backends given another one
    (``elsewhere``): those are measured there only, once. ``[]``: every backend asked for is
    elsewhere."""
    if requested == []:
        return [], {}
    names, skipped = select_backends(suffix, requested, backend_options)
    return (
        [n for n in names if _backend(n) not in elsewhere],
        {n: reason for n, reason in skipped.items() if n not in elsewhere},
    )


def _plan(
    names: Sequence[str],
    threads: Sequence[int | None] | None,
    batches: Sequence[int],
    precisions: Sequence[str],
    probes: Mapping[str, Availability],
    backend_options: Mapping[str, Mapping[str, object]] | None,
) -> list[Config]:
    """:func:`plan`; the default thread sweep (``threads=None``) only on targets on the CPU."""
    if threads is not None:
        return plan(names, threads, batches, precisions)
    configs = plan(names, default_threads(), batches, precisions)
    return without_thread_counts_off_the_cpu(configs, probes, backend_options)


# -- model -----------------------------------------------------------------------------------------


def _resolve_model(
    model: str | os.PathLike[str],
    preprocess: Preprocess | Literal[False] | None,
    batches: Sequence[int],
) -> tuple[Path, Preprocess | None, dict[str, Any]]:
    """The file to measure, its preprocessing, and what the report says about it."""
    spec = os.fspath(model)
    if isinstance(model, str) and model.startswith(models.PREFIX):
        if any(b > 1 for b in batches) and "?" not in model:
            spec = model + DYNAMIC_BATCH  # batch > 1 needs a symbolic batch dimension
        resolved = models.resolve(spec)
        assert resolved is not None  # noqa: S101 - the prefix was checked above
        path, preset = resolved
        info: dict[str, Any] = {"spec": spec, "path": str(path), "builtin": True}
        name = spec[len(models.PREFIX) :].partition("?")[0]
        try:
            described = models.info(name)
        except UniferError:  # counting needs onnx; the file itself is fine without it
            described = None
        if described is not None:
            cached = next((f for f in described.files if f.path == path), None)
            dynamic = spec.endswith(DYNAMIC_BATCH)
            info.update(
                name=name,
                description=described.description,
                params=described.params,
                gflops=round(described.gflops, 3),
                input=str(_variant(described.input, dynamic=dynamic)),
                output=str(_variant(described.output, dynamic=dynamic)),
                sha256=cached.sha256 if cached else None,
            )
        preprocess = preset if preprocess is None else preprocess or None
    else:
        path, _ = resolve_model(spec)  # Engine.load's errors: missing, a directory...
        info = {"spec": spec, "path": str(path.resolve()), "builtin": False}
        if preprocess is None and (preprocess := load_sidecar(path)) is not None:
            info["preprocess_from"] = "sidecar"  # the workers read it as Engine.load does
        preprocess = preprocess or None
    # Every file of the model: an IR's .bin, an ONNX model's external weights.
    files = model_files(path)
    info["files"] = [f.name for f in files]
    info["size_bytes"] = sum(f.stat().st_size for f in files)
    info["preprocess"] = preprocess.to_dict() if preprocess is not None else None
    if not info.get("sha256"):
        info["sha256"] = model_digest(path)
    return path, preprocess, info


def _variant(tensor: TensorSpec, *, dynamic: bool) -> TensorSpec:
    """A built-in model's input or output (``models.info`` describes the static-batch file) as
    the variant measured has it."""
    if not dynamic:
        return tensor
    return dataclasses.replace(tensor, shape=(BATCH_DIM, *tensor.shape[1:]))


def _reference(names: Sequence[str], suffix: str, requested: str | None) -> str:
    """The reference backend: the one asked for, else onnxruntime, else one that reads the file."""
    if requested:
        select_backends(suffix, [requested])  # raises if it cannot serve as the reference
        return requested
    for candidate in (_registry.REFERENCE, *readers(suffix)):
        if candidate in names or candidate == _registry.REFERENCE:
            try:
                select_backends(suffix, [candidate])
            except UniferError:
                continue
            if not needs_conversion(candidate, suffix):
                return candidate
    if not names:  # every backend measured is in another environment, and none here reads it
        raise ModelFormatError(
            f"no backend in this environment reads {suffix!r} models to serve as the integrity "
            'reference; install one here (e.g. pip install "unifer[onnxruntime]") or name one '
            "that is installed here (reference=NAME, --reference NAME)"
        )
    return names[0]


# -- workers ---------------------------------------------------------------------------------------


def _measure_each(
    configs: Sequence[Config],
    records: list[dict[str, Any]],
    conversions: Mapping[str, dict[str, Any]],
    ref_outputs: Mapping[int, dict[str, np.ndarray] | str],
    stored: Precision,
    base_job: Mapping[str, Any],
    root: Path,
    settings: Settings,
    elsewhere: Mapping[str, Path],
    notify: ProgressCallback,
) -> None:
    """Measure each configuration in a worker of its own, appending to ``records`` as each
    finishes (so that an interrupted run keeps those done). ``ref_outputs``: the reference's
    outputs per batch (or why there are none); ``stored``: the precision the model computes in
    by itself, which no record is judged more strictly than."""
    total = len(configs)
    for index, config in enumerate(configs, start=1):
        notify(Progress(index, total, config, "starting"))
        conversion = conversions.get(_backend(config.backend))
        if conversion is not None and "error" in conversion:
            record = _record(config, {"status": "error", "error": conversion["error"]}, "", stored)
            record["conversion"] = conversion
            records.append(record)
            notify(Progress(index, total, config, "done", record=record))
            continue

        def on_phase(phase: str, detail: Mapping[str, object], i: int = index) -> None:
            notify(Progress(i, total, configs[i - 1], phase, detail))

        raw = _spawn(
            {**base_job, **config.to_dict(), "mode": "measure"},
            root / f"config-{index}",
            on_phase,
            settings.worker_timeout_s,
            python=elsewhere.get(_backend(config.backend)),
        )
        reference = ref_outputs.get(config.batch, "no reference run")
        record = _record(config, raw, reference, stored)
        record["conversion"] = conversion
        records.append(record)
        notify(Progress(index, total, config, "done", record=record))


def _spawn(
    job: dict[str, Any],
    workdir: Path,
    on_phase: Callable[[str, Mapping[str, object]], None],
    timeout_s: float,
    *,
    cache: Path | None = None,
    python: Path | None = None,
) -> dict[str, Any]:
    """Run one job in a fresh interpreter (``python``, default this one); the result, with the
    outputs loaded, or an error.

    The worker's cache directory is ``cache`` when given (conversions), else a new empty one whose
    ``converted/`` is the shared conversion cache beside ``workdir``.
    """
    workdir.mkdir(parents=True)
    if cache is None:
        cache = workdir / "cache"
        cache.mkdir()
        shared = workdir.parent / SHARED_CACHE / "converted"
        shared.mkdir(parents=True, exist_ok=True)
        # Without symlinks (Windows without the privilege) the worker converts again, inside its
        # cold load.
        with contextlib.suppress(OSError):
            (cache / "converted").symlink_to(shared, target_is_directory=True)
    job = {
        **job,
        "result_path": str(workdir / "result.json"),
        "outputs_path": str(workdir / "outputs.npz"),
        "parent_pid": os.getpid(),
    }
    job_path = workdir / "job.json"
    job_path.write_text(json.dumps(job))
    env = dict(os.environ)
    # An empty cache directory of its own: the first load really is cold (OpenVINO's compiled
    # model cache lives there), and the second one finds what the first wrote. Only converted
    # models are shared: converting is measured once, by its own job.
    env["UNIFER_CACHE_DIR"] = str(cache)
    # threads=None must mean the runtime's own default, not a value from the user's shell.
    env.pop("UNIFER_NUM_THREADS", None)
    stderr_path = workdir / "stderr.txt"
    other_output: deque[str] = deque(maxlen=20)
    started = time.perf_counter()
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen(
            [str(python or sys.executable), "-m", "unifer.bench._worker", str(job_path)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
            text=True,
            errors="replace",
        )

        def pump() -> None:
            assert proc.stdout is not None  # noqa: S101 - stdout=PIPE above
            for line in proc.stdout:
                if line.startswith(PROGRESS_PREFIX):
                    try:
                        event = json.loads(line[len(PROGRESS_PREFIX) :])
                    except ValueError:
                        continue
                    phase = str(event.pop("phase", "?"))
                    on_phase(phase, event)
                else:
                    other_output.append(line.rstrip())

        reader = threading.Thread(target=pump, daemon=True)
        timed_out = False
        try:
            reader.start()
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            # However the wait ends (the timeout, Ctrl+C, an error here), the worker must not
            # outlive it: an orphan would go on loading the machine that later figures measure.
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        reader.join(timeout=10)
    wall_s = time.perf_counter() - started
    worker = {"exit_code": proc.returncode, "wall_s": wall_s}
    result_path = Path(job["result_path"])
    if timed_out:
        return {
            "status": "error",
            "error": f"the worker ran longer than {timeout_s:.0f} s and was stopped",
            "worker": worker,
        }
    if not result_path.is_file():
        tail = "\n".join([*_tail(stderr_path), *other_output][-12:])
        return {
            "status": "error",
            "error": (
                f"the worker process died with exit code {proc.returncode} before writing a "
                f"result (a crash or the out-of-memory killer?)"
                + (f"; output:\n{tail}" if tail else "")
            ),
            "worker": worker,
        }
    result: dict[str, Any] = json.loads(result_path.read_text())
    worker["pid"] = result.pop("pid", None)
    result["worker"] = worker
    if result["status"] == "ok" and job["mode"] in {"measure", "reference"}:
        with np.load(job["outputs_path"], allow_pickle=False) as archive:
            result["outputs"] = {name: archive[name] for name in archive.files}
    return result


def _tail(path: Path, lines: int = 12) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def _record(
    config: Config,
    raw: dict[str, Any],
    reference: dict[str, np.ndarray] | str,
    stored: Precision,
) -> dict[str, Any]:
    """A results.json record: the configuration, what the worker measured, and the integrity."""
    record: dict[str, Any] = {
        **config.to_dict(),
        "threads_label": config.threads_label,
        "status": raw["status"],
        "error": raw.get("error"),
        "runtime_version": raw.get("runtime_version"),
        "python": raw.get("python"),
    }
    for key in (
        "settings",
        "inputs",
        "load",
        "latency",
        "background",
        "throughput",
        "memory",
        "dependencies",
        "energy",
        "warnings",
    ):
        record[key] = raw.get(key)
    outputs = raw.pop("outputs", None)
    if outputs is None:
        record["integrity"] = None
    elif isinstance(reference, str):
        record["integrity"] = {"ok": None, "problem": reference}
    else:
        tolerance = TOLERANCES[_parity.judged_as(config.precision, stored)]
        record["integrity"] = compare(outputs, reference, tolerance)
    record["worker"] = raw.get("worker")
    if raw.get("traceback"):
        record["traceback"] = raw["traceback"]
    return record


def _loadavg() -> list[float] | None:
    try:
        return list(os.getloadavg())
    except (AttributeError, OSError):
        return None


def _unifer_version() -> str:
    from .. import __version__

    return __version__


def available_backends(model_suffix: str = ".onnx") -> list[str]:
    """The targets a default run would measure for a model with this suffix (may be empty):
    backends, and ``backend@accelerator`` for those with accelerators."""
    try:
        return select_backends(model_suffix, None)[0]
    except UniferError:
        return []


__all__ = ["SCHEMA", "Progress", "ProgressCallback", "Result", "available_backends", "run"]
