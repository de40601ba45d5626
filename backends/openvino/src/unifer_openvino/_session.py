"""Compile one model file with OpenVINO and run it thread-safely from a pool of infer requests.

The only module of the plugin that imports openvino at the top: ``unifer_openvino`` imports it
inside ``probe()`` and ``open()``, so importing the plugin never loads the runtime.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import os
import queue
import re
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import openvino as ov

from unifer import InferenceError, ModelLoadError, ModelNotFoundError, UnsupportedOptionError
from unifer._cache import atomic_write_bytes, exclusive
from unifer._digest import model_digest
from unifer._onnx_io import GraphIO, OnnxFormatError, read_graph_io
from unifer.backend import (
    Dim,
    SessionOptions,
    TensorSpec,
    integer_option,
    refuse_int64_beyond_int32,
    reject_precision,
    translate_errors,
    warn_unknown_options,
    warn_user,
)

NAME: Final = "openvino"
OPTIONS: Final = ("cache", "device", "num_requests", "performance_hint")

#: unifer precision -> OpenVINO INFERENCE_PRECISION_HINT, and back.
_HINTS: Final = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
_PRECISIONS: Final = {hint: precision for precision, hint in _HINTS.items()}
#: OPTIMIZATION_CAPABILITIES entry a device must list before a reduced precision is requested.
_CAPABILITIES: Final = {"bf16": "BF16", "fp16": "FP16"}
_PERFORMANCE_HINTS: Final = ("latency", "throughput")
#: unifer device kinds that are hardware accelerators.
_ACCELERATOR_KINDS: Final = ("gpu", "npu")
#: The ONNX frontend names each Result node "<graph output name>/sink_port_0".
_RESULT_SUFFIX: Final = "/sink_port_0"


@functools.cache
def _core() -> ov.Core:
    # One Core per process: creating it loads the device plugins, and compile_model is thread-safe.
    return ov.Core()


def runtime_version() -> str:
    """OpenVINO's release, e.g. ``"2026.4.1"`` (get_version() appends the build and branch)."""
    return str(ov.get_version()).split("-", 1)[0]


def runtime_info() -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """The runtime version, the devices it sees in unifer's names (``"cpu"``, ``"gpu:0"``), the
    default (``"cpu"``) first as ``Availability.devices`` requires, and which are accelerators."""
    devices = [_unifer_device(d) for d in _core().available_devices]
    ordered = tuple(sorted(devices, key=lambda d: d != "cpu"))
    return runtime_version(), ordered, accelerators(ordered)


def accelerators(devices: tuple[str, ...]) -> tuple[str, ...]:
    """The GPUs and NPUs among ``devices``: OpenVINO's GPU and NPU plugins drive Intel hardware
    only (nothing emulated on the CPU), so ``backend="auto"`` measures each of them."""
    return tuple(d for d in devices if d.partition(":")[0] in _ACCELERATOR_KINDS)


def _unifer_device(device: str) -> str:
    """``"CPU"`` -> ``"cpu"``, ``"GPU.1"`` -> ``"gpu:1"``; a bare ``"GPU"`` is OpenVINO's GPU.0."""
    kind, _, index = device.partition(".")
    if kind == "GPU" and not index:
        index = "0"
    return f"{kind.lower()}:{index}" if index else kind.lower()


def _openvino_device(device: object) -> str:
    """Accept OpenVINO's names ("CPU", "GPU.1") and unifer's ("cpu", "gpu:1")."""
    if not isinstance(device, str) or not device:
        raise UnsupportedOptionError(
            f"backend option 'device' must be an OpenVINO device name such as 'CPU' or 'GPU.0', "
            f"got {device!r}"
        )
    match = re.fullmatch(r"([a-z]+)(?::(\d+))?", device)
    if match:
        kind, index = match.groups()
        return f"{kind.upper()}.{index}" if index else kind.upper()
    return device


def _check_files(model: Path) -> None:
    # compile_model reports a missing .bin as an unreadable model; name the missing file instead.
    if model.suffix.lower() == ".xml":
        weights = model.with_suffix(".bin")
        if not weights.is_file():
            raise ModelNotFoundError(
                f"OpenVINO IR {str(model)!r} needs its weights file {str(weights)!r} beside it, "
                "which does not exist; copy the .bin together with the .xml"
            )


#: Operators whose compiled form OpenVINO (2026.4, CPU) restores wrongly from its model cache: a
#: stacked GRU or LSTM at batch > 1 came back 0.3 off on every load after the first, while the
#: first (compiled) one was right. Models with them are compiled each time, without the cache.
_CACHE_UNSAFE_ONNX: Final = frozenset({"GRU", "LSTM", "RNN"})
_CACHE_UNSAFE_IR: Final = frozenset(
    {"GRUSequence", "LSTMSequence", "RNNSequence", "GRUCell", "LSTMCell", "RNNCell"}
)


def _cache_unsafe_ops(model: Path, graph: GraphIO | None) -> list[str]:
    """The operators of ``model`` (``graph``, for ONNX) that must not be served from OpenVINO's
    model cache."""
    if model.suffix.lower() == ".onnx":
        return sorted(graph.op_types & _CACHE_UNSAFE_ONNX) if graph is not None else []
    try:
        text = model.read_text(encoding="utf-8", errors="replace")  # IR: the layer types
    except OSError:
        return []  # OpenVINO will say what is wrong with the file
    return sorted(set(re.findall(r'\btype="(\w+)"', text)) & _CACHE_UNSAFE_IR)


def _onnx_graph(model: Path) -> GraphIO | None:
    """The graph of an ONNX ``model``, read once for the cache decision and the dimension names;
    ``None`` for IR, or a file OpenVINO will say is not a model."""
    if model.suffix.lower() != ".onnx":
        return None
    try:
        return read_graph_io(model)
    except (OSError, OnnxFormatError):
        return None


def _compiled_cache(root: Path, model: Path) -> Path | None:
    """The CACHE_DIR for this version of ``model``, under this backend's cache directory, or None
    (with a warning) when it cannot be written: a cache must not fail the load it would speed up.

    OpenVINO keys a model compiled from a path by the path, size and modification time in whole
    seconds, which misses a file rewritten within the same second, a copy that keeps its mtime
    (``cp -p``, ``rsync -a``) and an ONNX model's external weights. A directory per version of
    every file the model consists of (their content digest, remembered across processes) closes
    those gaps; older versions of the same path are removed so the cache does not grow, and so
    are the entries of model files that no longer exist (a model loaded from a temporary path).
    """
    resolved = model.resolve()
    path_key = hashlib.sha256(str(resolved).encode()).hexdigest()[:16]
    directory = root / f"{resolved.stem}-{path_key}"
    current = directory / model_digest(model)[:16]
    if directory.is_dir():
        for stale in directory.iterdir():
            if stale.is_dir() and stale != current:
                shutil.rmtree(stale, ignore_errors=True)
    _remove_orphans(root, keep=directory)
    try:
        current.mkdir(parents=True, exist_ok=True)
        if not os.access(current, os.W_OK):
            raise PermissionError(errno.EACCES, "not writable")
        if not (directory / _SOURCE).is_file():
            atomic_write_bytes(directory / _SOURCE, str(resolved).encode())
        os.utime(directory / _SOURCE)  # in use: see _remove_orphans
    except OSError as exc:
        warn_user(
            f"compiled models cannot be cached in {current} ({exc.strerror}); compiling "
            f"{model.name} without the cache. Point $UNIFER_CACHE_DIR at a writable directory"
        )
        return None
    return current


#: In each model path's directory: the path, so entries of deleted model files can be removed.
#: Its modification time is the entry's last use.
_SOURCE: Final = "source.txt"
#: Entries of missing model files are removed once unused for this long: a cache directory
#: shared by containers holds paths that exist only in another container, which keeps using them.
_ORPHAN_AFTER_S: Final = 3600


def _remove_orphans(root: Path, *, keep: Path) -> None:
    """Remove the compiled models of model files that no longer exist, unused for an hour."""
    try:
        entries = [e for e in root.iterdir() if e != keep]
    except OSError:
        return
    now = time.time()
    for entry in entries:
        try:
            record = entry / _SOURCE
            source = Path(record.read_text())
            idle = now - record.stat().st_mtime
        except (OSError, ValueError):
            continue  # being created, or written before source.txt existed: left alone
        if idle > _ORPHAN_AFTER_S and not source.exists():
            shutil.rmtree(entry, ignore_errors=True)


#: Seconds a load waits for another process compiling the same model into the cache; then it
#: compiles without the cache (a hung compile must not hang every later load).
COMPILE_WAIT_S: Final = 300.0


@contextlib.contextmanager
def _compiling(cache_dir: Path | None, config: dict[str, Any]) -> Iterator[None]:
    """One compile of a model into its cache directory at a time, across threads and processes.

    OpenVINO 2026.4 writes a compiled model into CACHE_DIR in place while other processes map
    the same file: processes starting together on a cold cache died of SIGBUS (raw OpenVINO, 3
    processes x 3 threads: in 4 runs of 4). The others wait, then load what the first wrote.
    Where no lock can be taken in time, CACHE_DIR is dropped from ``config`` instead.
    """
    if cache_dir is None:
        yield
        return
    try:
        lock = (cache_dir.parent / "compile.lock").open("a")
    except OSError:
        config.pop("CACHE_DIR", None)  # cannot coordinate: compile without the shared file
        yield
        return
    with lock, exclusive(lock, time.monotonic() + COMPILE_WAIT_S) as held:
        if held is False:  # None: no flock here (Windows): OpenVINO's own behaviour
            warn_user(
                f"another process has been compiling into {cache_dir} for over "
                f"{COMPILE_WAIT_S:.0f} s; compiling without the cache"
            )
            config.pop("CACHE_DIR", None)
        yield


def _discard_if_empty(directory: Path | None) -> None:
    """Remove ``directory`` when empty, and its per-path parent when no version is left.

    OpenVINO creates CACHE_DIR even when the model fails to compile; a corrupt file should leave
    nothing behind.
    """
    if directory is None:
        return
    try:
        directory.rmdir()
        if not any(p.is_dir() for p in directory.parent.iterdir()):
            shutil.rmtree(directory.parent, ignore_errors=True)  # its source.txt only
    except OSError:  # not empty (compiled meanwhile, or another version): keep it
        return


def _port_name(port: ov.ConstOutput) -> str:
    """The tensor name the model file (and ONNX Runtime) uses for ``port``.

    After compilation a port may carry several names (an Identity's input and output, a tensor
    inside an If branch) and ``get_any_name()`` can return the internal one; the set also differs
    between a fresh compile and a load from the cache. The frontends name Parameter nodes after the
    input and Result nodes "<output>/sink_port_0", which picks the graph's own name; failing that,
    the shortest name wins (the internal ones carry prefixes like "F0::If_0_then_branch__").
    """
    names = port.get_names()
    node = port.get_node().get_friendly_name()
    for candidate in (node, node.removesuffix(_RESULT_SUFFIX)):
        if candidate in names:
            return str(candidate)
    if names:
        return str(min(names, key=lambda n: (len(n), n)))
    return str(node)


#: OpenVINO element types numpy holds as they are. to_dtype() maps others onto a numpy type of the
#: same width (bf16 -> float16, f8/u4 -> uint8, string -> bytes of length 0): feeding or reading
#: those would silently reinterpret the bits.
_NUMPY_TYPES: Final = frozenset(
    {"f16", "f32", "i8", "i16", "i32", "i64", "u8", "u16", "u32", "u64", "boolean"}
)


def _check_ports(compiled: ov.CompiledModel, model: Path) -> None:
    """Refuse what run() could not return faithfully: element types numpy cannot hold, and
    outputs sharing a name (run() returns them by name, so one would be dropped)."""
    for kind, ports in (("input", compiled.inputs), ("output", compiled.outputs)):
        for port in ports:
            element = port.get_element_type().get_type_name()
            if element == "f64":
                raise ModelLoadError(
                    f"{model} has float64 {kind} {_port_name(port)!r}: OpenVINO computes float64 "
                    "tensors in float32 (1e300 comes back as 3.4e38, 1 + 1e-12 as 1.0) and returns "
                    "them as float64 without a sign. Run this model with backend='onnxruntime' "
                    "(exact in float64), or export it in float32"
                )
            if element not in _NUMPY_TYPES:
                raise ModelLoadError(
                    f"{model} has {kind} {_port_name(port)!r} of element type {element}, which "
                    "numpy cannot hold (OpenVINO would pass it as another type of the same "
                    "width); unifer's openvino backend runs f16/f32, integer and boolean "
                    "tensors. Convert that tensor in the model, or use another backend"
                )
    names = [_port_name(port) for port in compiled.outputs]
    if repeated := sorted({n for n in names if names.count(n) > 1}):
        raise ModelLoadError(
            f"{model} has several outputs named {', '.join(map(repr, repeated))} (one tensor "
            "returned more than once); unifer returns outputs by name, so re-export the model "
            "with each output once or under names of its own"
        )


def _spec(port: ov.ConstOutput, declared: Mapping[str, Sequence[Dim]]) -> TensorSpec:
    """The port's spec; a dynamic dimension keeps the name the ONNX file gives it (``declared``).

    OpenVINO drops ONNX dimension names. Without them the core cannot check that inputs sharing
    one agree, and OpenVINO's CPU plugin does not always check it either (two inputs [N, 4] fed
    N=2 and N=3 ran and returned an empty result at INFERENCE_NUM_THREADS=1, 2026.4).
    """
    name = _port_name(port)
    shape = port.get_partial_shape()
    dims: tuple[Dim, ...] = ()
    if shape.rank.is_static:
        dims = tuple(int(d.get_length()) if d.is_static else None for d in shape)
        names = declared.get(name)
        if names is not None and len(names) == len(dims):
            dims = tuple(
                n if d is None and isinstance(n, str) else d
                for d, n in zip(dims, names, strict=True)
            )
    return TensorSpec(name, dims, np.dtype(port.get_element_type().to_dtype()))


def _declared_shapes(graph: GraphIO | None) -> dict[str, tuple[Dim, ...]]:
    """Each graph input's and output's shape as the ONNX file declares it; ``{}`` for IR."""
    if graph is None:
        return {}
    return {v.name: v.shape for v in (*graph.inputs, *graph.outputs) if v.shape is not None}


def _get(compiled: ov.CompiledModel, key: str) -> Any:
    """A property of the compiled model, or None where this device does not report it."""
    try:
        return compiled.get_property(key)
    except RuntimeError:
        return None


class OpenVINOSession:
    """One compiled model and a pool of infer requests; ``run`` takes a request per call."""

    def __init__(
        self,
        compiled: ov.CompiledModel,
        *,
        num_requests: int | None,
        settings: Mapping[str, object],
        declared: Mapping[str, Sequence[Dim]],
    ) -> None:
        self._compiled: ov.CompiledModel | None = compiled
        self._inputs = tuple(_spec(p, declared) for p in compiled.inputs)
        self._outputs = tuple(_spec(p, declared) for p in compiled.outputs)
        self._input_names = tuple(s.name for s in self._inputs)
        # OpenVINO's CPU plugin computes 64-bit integers in int32 (uint64 too: it wraps).
        self._int64_inputs = tuple(s.name for s in self._inputs if s.dtype in (np.int64, np.uint64))
        self._output_names = tuple(s.name for s in self._outputs)
        size = num_requests or int(_get(compiled, "OPTIMAL_NUMBER_OF_INFER_REQUESTS") or 1)
        # CompiledModel.__call__ reuses one hidden request and blocks concurrent callers; a queue of
        # our own requests lets up to `size` threads infer at once (one per stream is optimal).
        self._pool: queue.SimpleQueue[ov.InferRequest] | None = queue.SimpleQueue()
        for _ in range(size):
            self._pool.put(compiled.create_infer_request())
        self._settings = {**settings, "num_requests": size}

    @classmethod
    def open(cls, model: Path, options: SessionOptions) -> OpenVINOSession:
        """Compile ``model`` (ONNX or IR) with ``options`` and return a ready session."""
        extra = options.extra
        warn_unknown_options(NAME, extra, OPTIONS)
        device = _openvino_device(extra.get("device", "CPU"))
        hint = extra.get("performance_hint", "latency")
        if hint not in _PERFORMANCE_HINTS:
            raise UnsupportedOptionError(
                f"backend option 'performance_hint' must be 'latency' or 'throughput', got {hint!r}"
            )
        requests = extra.get("num_requests")
        num_requests = (
            None
            if requests is None
            else integer_option(
                "num_requests", requests, "infer requests, i.e. concurrent run() calls"
            )
        )
        cache = extra.get("cache", True)
        if not isinstance(cache, bool):
            raise UnsupportedOptionError(
                f"backend option 'cache' must be True or False, got {cache!r}"
            )
        _check_files(model)

        core = _core()
        supported = _device_properties(core, device)
        config: dict[str, Any] = {"PERFORMANCE_HINT": str(hint).upper()}
        config["INFERENCE_PRECISION_HINT"] = _precision_hint(core, device, options, supported)
        if "DYNAMIC_QUANTIZATION_GROUP_SIZE" in supported:
            # By default OpenVINO quantizes the activations of layers with int8 weights to int8
            # (groups of 32): 6.7e-3 off on a weight-only int8 MatMul that fp32 computes exactly.
            config["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = 0
        if options.threads is not None:
            if "INFERENCE_NUM_THREADS" in supported:
                config["INFERENCE_NUM_THREADS"] = options.threads
            else:
                warn_user(
                    f"threads={options.threads} is not supported by OpenVINO device {device}; "
                    "ignored"
                )
        # Only a directory the core reserved for this backend is used for compiled models.
        cache_dir = None
        graph = _onnx_graph(model)
        uncacheable = _cache_unsafe_ops(model, graph) if cache else []
        if cache and options.cache_dir is not None and not uncacheable:
            cache_dir = _compiled_cache(options.cache_dir, model)
        if cache_dir is not None:
            config["CACHE_DIR"] = str(cache_dir)

        with translate_errors(NAME, RuntimeError, model=model), _compiling(cache_dir, config):
            try:
                # From the path, not read_model(): on a cache hit OpenVINO skips parsing the model.
                compiled = core.compile_model(str(model), device, config)
            except RuntimeError:
                _discard_if_empty(cache_dir)
                raise
            applied = _get(compiled, "INFERENCE_PRECISION_HINT")
            applied_hint = applied.get_type_name() if applied is not None else None
            if applied_hint != config["INFERENCE_PRECISION_HINT"]:
                raise UnsupportedOptionError(
                    f"OpenVINO on {device} compiled {model.name} at inference precision "
                    f"{applied_hint} although {options.precision} "
                    f"({config['INFERENCE_PRECISION_HINT']}) was requested"
                )
            _check_ports(compiled, model)
            threads = _get(compiled, "INFERENCE_NUM_THREADS")
            if options.threads is not None and threads is not None and threads != options.threads:
                warn_user(
                    f"OpenVINO on {device} runs {threads} threads, not the {options.threads} "
                    "asked for: its CPU plugin uses at most one per core this process may run "
                    "on (settings['threads'] says what it applied)"
                )
            dynamic_quantization = _get(compiled, "DYNAMIC_QUANTIZATION_GROUP_SIZE")
            streams = _get(compiled, "NUM_STREAMS")
            performance = _get(compiled, "PERFORMANCE_HINT")
            loaded = _get(compiled, "LOADED_FROM_CACHE")
            executing = _get(compiled, "EXECUTION_DEVICES") or [device]
            settings: dict[str, object] = {
                "device": ",".join(_unifer_device(str(d)) for d in executing),
                "threads": int(threads) if threads is not None else None,
                "precision": _PRECISIONS[applied_hint],
                "inference_precision_hint": applied_hint,
                # 0: activations stay at the inference precision, whatever the weights' type.
                "dynamic_quantization_group_size": (
                    int(dynamic_quantization) if dynamic_quantization is not None else None
                ),
                # CPU reports a str, virtual devices a PerformanceMode enum.
                "performance_hint": str(getattr(performance, "name", performance)).lower(),
                "num_streams": int(streams) if streams is not None else None,
                # INFERENCE_NUM_THREADS is the total: the throughput hint splits it over streams.
                "threads_per_inference": (
                    max(1, int(threads) // max(1, int(streams or 1)))
                    if threads is not None
                    else None
                ),
                "cache_dir": config.get("CACHE_DIR"),  # None where it had to go without
                "cache_skipped_for": uncacheable or None,
                "loaded_from_cache": bool(loaded) if loaded is not None else None,
                "runtime_version": runtime_version(),
            }
            return cls(
                compiled,
                num_requests=num_requests,
                settings=settings,
                declared=_declared_shapes(graph),
            )

    @property
    def inputs(self) -> Sequence[TensorSpec]:
        return self._inputs

    @property
    def outputs(self) -> Sequence[TensorSpec]:
        return self._outputs

    @property
    def settings(self) -> Mapping[str, object]:
        return self._settings

    def run(self, feeds: Mapping[str, np.ndarray], /) -> dict[str, np.ndarray]:
        pool = self._pool
        if pool is None:
            raise InferenceError(
                "this OpenVINO session is closed; open the model again to run it", backend=NAME
            )
        for name in self._int64_inputs:
            refuse_int64_beyond_int32("OpenVINO", name, feeds[name])
        request = pool.get()
        try:
            with translate_errors(NAME, RuntimeError):
                # share_inputs: OpenVINO reads the caller's arrays in place (they are held for the
                # call); share_outputs=False copies each output, so the next inference on this
                # request cannot overwrite what the caller was given.
                results = request.infer(
                    {i: feeds[name] for i, name in enumerate(self._input_names)},
                    share_inputs=True,
                    share_outputs=False,
                )
        finally:
            pool.put(request)
        return dict(zip(self._output_names, results.to_tuple(), strict=True))

    def close(self) -> None:
        # Requests hold the compiled model; dropping both frees its memory once no run() is inside.
        self._pool = None
        self._compiled = None


#: Devices that combine others: never listed in available_devices, refused later for another
#: reason (they cannot pin the inference precision).
_VIRTUAL_DEVICES: Final = ("AUTO", "MULTI", "HETERO", "BATCH")


def _device_properties(core: ov.Core, device: str) -> frozenset[str]:
    available = list(core.available_devices)
    kind = device.partition(".")[0].partition(":")[0]
    # A plugin installed without its hardware (NPU on a machine without one) still answers
    # property queries, so availability is checked first, by kind ("GPU" may be listed as "GPU.0").
    listed = kind in _VIRTUAL_DEVICES or any(d.partition(".")[0] == kind for d in available)
    try:
        if listed:
            return frozenset(core.get_property(device, "SUPPORTED_PROPERTIES"))
        cause = None
    except RuntimeError as exc:
        cause = exc
    raise UnsupportedOptionError(
        f"OpenVINO has no usable device {device!r} here (available: {', '.join(available)}); set "
        "backend_options={'openvino': {'device': ...}} to one of them"
    ) from cause


def _precision_hint(
    core: ov.Core, device: str, options: SessionOptions, supported: frozenset[str]
) -> str:
    """The INFERENCE_PRECISION_HINT for ``options.precision``, or raise if the device lacks it."""
    if "INFERENCE_PRECISION_HINT" not in supported:
        # Virtual devices (AUTO, MULTI, HETERO) neither take nor report it, so fp32 could not be
        # guaranteed: OpenVINO's own defaults are bf16 on recent CPUs and f16 on GPUs.
        raise UnsupportedOptionError(
            f"OpenVINO device {device!r} cannot pin the inference precision, so "
            f"precision={options.precision!r} could not be guaranteed; name a concrete device "
            "such as 'CPU' or 'GPU.0'"
        )
    capabilities = frozenset(core.get_property(device, "OPTIMIZATION_CAPABILITIES"))
    available = ["fp32"] + [p for p, cap in _CAPABILITIES.items() if cap in capabilities]
    if options.precision == "int8":
        why = (
            "OpenVINO runs INT8 only from a model that is already quantized (for example with "
            "NNCF); load the quantized model with precision='fp32' (the default): it runs "
            "quantized as stored, and settings['model_precision'] says so"
        )
    else:
        why = (
            f"device {device} does not list {_CAPABILITIES.get(options.precision)} in its "
            f"OPTIMIZATION_CAPABILITIES ({', '.join(sorted(capabilities))})"
        )
    reject_precision(NAME, options.precision, available, why)
    return _HINTS[options.precision]
