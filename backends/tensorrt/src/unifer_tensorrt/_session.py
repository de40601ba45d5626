"""Build (or load) a TensorRT engine and run it from a pool of execution contexts.

The only module of the plugin that imports ``tensorrt`` at the top: ``unifer_tensorrt`` imports it
inside ``open()``, so importing the plugin or probing a machine without a GPU never loads it.

One call to :meth:`TensorRTSession.run` takes an execution context from the pool (created on
demand, up to ``max_contexts``), each with its own CUDA stream and device buffers: TensorRT allows
one engine to run in several contexts at once, but one context serves one call at a time.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, NoReturn

import numpy as np
import tensorrt as trt

from unifer import (
    BackendUnavailableError,
    InferenceError,
    InputError,
    UnsupportedOptionError,
)
from unifer._digest import model_digest  # remembered across processes: no re-hash on a hit
from unifer.backend import SessionOptions, TensorSpec, translate_errors, warn_user

from . import _cuda, _enginecache
from ._options import (
    BUILD_OPTIONS,
    NAME,
    Options,
    Profile,
    check_engine_precision,
    check_int8,
    check_precision,
    model_kind,
    parse_options,
    resolve_profiles,
)

logger = logging.getLogger(__name__)

#: Exceptions TensorRT's bindings and this module's CUDA layer raise for a failed call.
_NATIVE: Final = (RuntimeError, TypeError, ValueError)
#: How long a caller waiting for a free context sleeps between checks that the session is open.
_WAIT_S: Final = 0.1
#: TensorRT's logged errors kept per thread, to explain the next failed call.
_KEEP_ERRORS: Final = 20


class TensorRTError(RuntimeError):
    """A TensorRT call failed; the message carries what TensorRT logged about it."""


class _Logger(trt.ILogger):  # type: ignore[misc]  # tensorrt has no type stubs
    """TensorRT's messages into Python logging; errors are also kept per thread for exceptions.

    TensorRT wants one logger for every builder and runtime in a process.
    """

    def __init__(self) -> None:
        trt.ILogger.__init__(self)
        self._local = threading.local()

    def log(self, severity: Any, msg: str) -> None:
        severities = trt.ILogger.Severity
        if severity in (severities.INTERNAL_ERROR, severities.ERROR):
            errors = self._errors()
            errors.append(msg.strip())
            del errors[:-_KEEP_ERRORS]
            logger.debug("TensorRT error: %s", msg)
        elif severity == severities.WARNING:
            logger.warning("TensorRT: %s", msg)
        else:
            logger.debug("TensorRT: %s", msg)

    def _errors(self) -> list[str]:
        errors: list[str] | None = getattr(self._local, "errors", None)
        if errors is None:
            errors = self._local.errors = []
        return errors

    def clear(self) -> None:
        self._errors().clear()

    def take(self) -> list[str]:
        errors = self._errors()
        taken = list(errors)
        errors.clear()
        return taken


@functools.cache
def _logger() -> _Logger:
    return _Logger()


def _fail(what: str, extra: Sequence[str] = ()) -> NoReturn:
    """Raise :class:`TensorRTError` for a call that returned failure, with what TensorRT logged."""
    details = [*extra, *_logger().take()]
    raise TensorRTError(f"{what}: {'; '.join(details) if details else 'TensorRT gave no reason'}")


def runtime_version() -> str:
    return str(trt.__version__)


def _weak_typing() -> bool:
    """TensorRT 10 still builds weakly typed networks with FP16/BF16 flags; 11 does not."""
    return hasattr(trt.BuilderFlag, "FP16")


def _numpy_dtype(name: str, dtype: Any) -> np.dtype[Any]:
    try:
        numpy_type: type[np.generic] = trt.nptype(dtype)
    except TypeError:
        raise UnsupportedOptionError(
            f"tensor {name!r} has TensorRT type {dtype}, which numpy cannot hold; unifer's "
            "TensorRT backend feeds and returns float32, float16, int8, int32, int64, uint8 and "
            "bool tensors only"
        ) from None
    return np.dtype(numpy_type)


_QUANTIZE_LAYERS: Final = tuple(
    getattr(trt.LayerType, name)
    for name in ("QUANTIZE", "DEQUANTIZE", "DYNAMIC_QUANTIZE")
    if hasattr(trt.LayerType, name)
)


# -- building --------------------------------------------------------------------------------------


def build_engine(
    model: Path,
    precision: str,
    options: Options,
    *,
    timing_cache: Path | None,
    compute_capability: tuple[int, int],
) -> tuple[bytes, dict[str, object]]:
    """Parse ``model`` (ONNX), build a serialized engine, and say how it was built."""
    log = _logger()
    log.clear()
    plan = check_precision(
        precision,
        tensorrt_version=runtime_version(),
        weak_typing=_weak_typing(),
        compute_capability=compute_capability,
    )
    builder = trt.Builder(log)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if plan.strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, log)
    # From the path, so weights stored beside the model (ONNX external data) are found.
    if not parser.parse_from_file(str(model)):
        _fail(
            "TensorRT's ONNX parser rejected the model",
            [str(parser.get_error(i)) for i in range(parser.num_errors)],
        )
    inputs = []
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        if tensor.is_shape_tensor:
            raise UnsupportedOptionError(
                f"model input {tensor.name!r} is a shape tensor (its values set other tensors' "
                "shapes), which unifer's TensorRT backend does not feed; use onnxruntime"
            )
        inputs.append((str(tensor.name), tuple(int(d) for d in tensor.shape)))
    quantize_layers = sum(
        1 for i in range(network.num_layers) if network.get_layer(i).type in _QUANTIZE_LAYERS
    )
    check_int8(precision, quantize_layers=quantize_layers)
    profiles = resolve_profiles(inputs, options)

    config = builder.create_builder_config()
    if not options.tf32:
        # TF32 is on by default and rounds float32 matmul/conv inputs to 10-bit mantissas
        # (errors around 1e-3): not the faithful fp32 unifer promises.
        config.clear_flag(trt.BuilderFlag.TF32)
    for flag in plan.flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if options.workspace_mib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib << 20)
    if options.builder_optimization_level is not None:
        config.builder_optimization_level = options.builder_optimization_level
    if profiles:
        profile = builder.create_optimization_profile()
        for name, shapes in profiles.items():
            profile.set_shape(name, shapes.min, shapes.opt, shapes.max)
        config.add_optimization_profile(profile)
    timing = _load_timing_cache(config, timing_cache)

    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - started
    if serialized is None:
        _fail("TensorRT could not build an engine")
    try:
        _enginecache.write_timing_cache(timing_cache, bytes(timing.serialize()))
    except OSError as exc:  # only later builds get slower
        logger.warning("could not save the TensorRT timing cache %s: %s", timing_cache, exc)
    details: dict[str, object] = {
        "strongly_typed": plan.strongly_typed,
        "builder_flags": list(plan.flags),
        "tf32": options.tf32,
        "quantize_layers": quantize_layers,
        "profiles": {name: p.to_json() for name, p in profiles.items()},
        "build_s": round(seconds, 3),
    }
    return bytes(serialized), details


def _load_timing_cache(config: Any, path: Path | None) -> Any:
    """Start the build from the stored timing cache; a stale or unreadable one starts empty."""
    blob = _enginecache.read_timing_cache(path)
    try:
        cache = config.create_timing_cache(blob)
        if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
            return cache
    except _NATIVE as exc:
        logger.warning("ignoring the TensorRT timing cache %s: %s", path, exc)
    _logger().clear()
    cache = config.create_timing_cache(b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def _deserialize(runtime: Any, data: bytes) -> Any:
    _logger().clear()
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        _fail("TensorRT could not deserialize the engine")
    return engine


# -- running --------------------------------------------------------------------------------------


class _Slot:
    """One execution context with its own stream and device buffers: one run() at a time."""

    def __init__(self, engine: Any, cuda: _cuda.CudaRuntime, device: int) -> None:
        self._engine = engine  # the context must not outlive it
        self._cuda = cuda
        self._device = device
        cuda.set_device(device)
        _logger().clear()
        self.context = engine.create_execution_context()
        if self.context is None:  # not the model's fault: no ModelLoadError advice about the file
            details = "; ".join(_logger().take()) or "TensorRT gave no reason"
            raise InferenceError(
                f"TensorRT could not create an execution context ({details}); the GPU is probably "
                "out of memory. Free GPU memory, or open with backend_options={'tensorrt': "
                "{'max_contexts': 1}} to keep fewer contexts",
                backend=NAME,
            )
        self.stream = _cuda.Stream(cuda)
        self.buffers: dict[str, _cuda.DeviceBuffer] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}

    def _bind(self, name: str, nbytes: int) -> int:
        buffer = self.buffers.get(name)
        if buffer is None:
            buffer = self.buffers[name] = _cuda.DeviceBuffer(self._cuda)
        pointer = buffer.ensure(nbytes)
        if self.addresses.get(name) != pointer:
            if not self.context.set_tensor_address(name, pointer):
                _fail(f"TensorRT did not accept the device address of tensor {name!r}")
            self.addresses[name] = pointer
        return pointer

    def run(
        self,
        feeds: Mapping[str, np.ndarray],
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        profiles: Mapping[str, Profile],
    ) -> dict[str, np.ndarray]:
        cuda, context, stream = self._cuda, self.context, self.stream.handle
        cuda.set_device(self._device)
        _logger().clear()
        for spec in inputs:
            array = feeds[spec.name]
            if array.dtype != spec.dtype:
                # The core checked dtypes; a caller that bypassed it must not make TensorRT read
                # past the buffer.
                _fail(f"input {spec.name!r} is {array.dtype}, the engine expects {spec.dtype}")
            if not array.flags.c_contiguous:
                array = np.ascontiguousarray(array)
            if self.shapes.get(spec.name) != array.shape:
                if not context.set_input_shape(spec.name, array.shape):
                    self.shapes.clear()
                    # The caller's shape is outside what the engine was built for (a batch of 0
                    # or beyond max_batch): their input to change, not a runtime failure.
                    problem = _shape_problem(spec.name, array.shape, profiles.get(spec.name))
                    raise InputError("; ".join([problem, *_logger().take()]))
                self.shapes[spec.name] = array.shape
            cuda.copy_to_device(self._bind(spec.name, array.nbytes), array, stream)
        results: dict[str, np.ndarray] = {}
        for spec in outputs:
            shape = tuple(int(d) for d in context.get_tensor_shape(spec.name))
            if any(d < 0 for d in shape):
                _fail(
                    f"output {spec.name!r} has a data-dependent shape {list(shape)} (NonZero, "
                    "NMS...), which unifer's TensorRT backend does not support"
                )
            results[spec.name] = np.empty(shape, spec.dtype)  # fresh: the caller owns it
            self._bind(spec.name, results[spec.name].nbytes)
        if not context.execute_async_v3(stream):
            _fail("TensorRT failed to enqueue the inference")
        for spec in outputs:
            cuda.copy_to_host(results[spec.name], self.addresses[spec.name], stream)
        self.stream.synchronize()
        return results

    def destroy(self) -> None:
        self._cuda.set_device(self._device)
        self.context = None  # before the memory it was given
        for buffer in self.buffers.values():
            buffer.free()
        self.stream.destroy()


def _destroy(slot: _Slot) -> None:
    """Destroy ``slot``; a CUDA failure is logged, so closing still frees every other context."""
    try:
        slot.destroy()
    except _cuda.CudaError as exc:
        logger.warning("could not release a TensorRT execution context: %s", exc)


def _shape_problem(name: str, shape: tuple[int, ...], profile: Profile | None) -> str:
    if profile is None:
        return f"TensorRT rejected shape {list(shape)} for input {name!r}"
    return (
        f"TensorRT rejected shape {list(shape)} for input {name!r}: the engine accepts shapes "
        f"from {list(profile.min)} to {list(profile.max)} (its optimisation profile). Open an ONNX "
        "model with a larger backend_options={'tensorrt': {'max_batch': N}} or a 'profiles' "
        "entry; a serialized engine must be rebuilt with a larger profile"
    )


class _Pool:
    """Execution contexts made on demand, up to ``limit``; callers beyond it wait for one.

    The fast path (a free context is waiting) takes no Python lock: ``SimpleQueue`` is atomic.
    """

    def __init__(self, make: Callable[[], _Slot], limit: int) -> None:
        self._make = make
        self._limit = limit
        self._free: queue.SimpleQueue[_Slot] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._created = 0
        self.closed = False

    @property
    def created(self) -> int:
        return self._created

    def acquire(self) -> _Slot:
        try:
            return self._free.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            if self._created < self._limit and not self.closed:
                self._created += 1
                try:
                    return self._make()
                except BaseException:
                    self._created -= 1
                    raise
        while True:
            if self.closed:
                raise InferenceError(
                    "this TensorRT session was closed while waiting for a free execution context",
                    backend=NAME,
                )
            try:
                return self._free.get(timeout=_WAIT_S)
            except queue.Empty:
                continue

    def release(self, slot: _Slot) -> None:
        if self.closed:
            _destroy(slot)
        else:
            self._free.put(slot)
            if self.closed:  # closed meanwhile: make sure it is not left behind
                self.drain()

    def drain(self) -> None:
        while True:
            try:
                slot = self._free.get_nowait()
            except queue.Empty:
                return
            _destroy(slot)

    def close(self) -> None:
        self.closed = True
        self.drain()


def _specs(engine: Any) -> tuple[list[TensorSpec], list[TensorSpec], dict[str, Profile]]:
    inputs: list[TensorSpec] = []
    outputs: list[TensorSpec] = []
    profiles: dict[str, Profile] = {}
    for i in range(engine.num_io_tensors):
        name = str(engine.get_tensor_name(i))
        shape = tuple(int(d) for d in engine.get_tensor_shape(name))
        spec = TensorSpec(
            name,
            tuple(d if d >= 0 else None for d in shape),
            _numpy_dtype(name, engine.get_tensor_dtype(name)),
        )
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            if engine.get_tensor_location(name) != trt.TensorLocation.DEVICE:
                raise UnsupportedOptionError(
                    f"engine input {name!r} lives in host memory (a shape tensor), which unifer's "
                    "TensorRT backend does not feed"
                )
            inputs.append(spec)
            if any(d < 0 for d in shape):
                low, opt, high = engine.get_tensor_profile_shape(name, 0)
                profiles[name] = Profile(
                    tuple(int(d) for d in low),
                    tuple(int(d) for d in opt),
                    tuple(int(d) for d in high),
                )
        else:
            outputs.append(spec)
    return inputs, outputs, profiles


class TensorRTSession:
    """A deserialized engine and a pool of execution contexts; ``run`` is thread-safe."""

    def __init__(
        self,
        engine: Any,
        runtime: Any,
        cuda: _cuda.CudaRuntime,
        *,
        device: int,
        max_contexts: int,
        settings: Mapping[str, object],
    ) -> None:
        self._engine = engine
        self._runtime = runtime  # kept alive as long as the engine
        self._inputs, self._outputs, self._profiles = _specs(engine)
        self._pool: _Pool | None = _Pool(lambda: _Slot(engine, cuda, device), max_contexts)
        self._settings = {
            **settings,
            "profiles": {name: p.to_json() for name, p in self._profiles.items()},
        }
        # One context now, so an engine that cannot run here fails at load, not at the first call.
        self._pool.release(self._pool.acquire())

    @classmethod
    def open(cls, model: Path, options: SessionOptions) -> TensorRTSession:
        """Build (or load from the cache) the engine for ``model`` and return a ready session."""
        opts = parse_options(options.extra)
        if options.threads is not None:
            warn_user(
                f"threads={options.threads} does not apply to TensorRT: inference runs on the GPU; "
                "ignored (settings['threads'] is None)"
            )
        try:
            cuda = _cuda.cudart()
            count = cuda.device_count()
        except (_cuda.CudaUnavailableError, _cuda.CudaError) as exc:
            raise BackendUnavailableError(
                f"tensorrt cannot use the GPU: {exc}. `unifer backends` says what is missing"
            ) from exc
        if opts.device >= count:
            raise UnsupportedOptionError(
                f"backend option 'device' is {opts.device}, but this process sees {count} CUDA "
                f"device(s) (cuda:0..cuda:{count - 1}); check CUDA_VISIBLE_DEVICES"
            )
        try:
            cuda.set_device(opts.device)
            gpu = cuda.device_name(opts.device)
            capability = cuda.compute_capability(opts.device)
        except _cuda.CudaError as exc:  # a GPU busy in exclusive-process mode, a lost device
            raise BackendUnavailableError(
                f"tensorrt cannot use cuda:{opts.device}: {exc}. Check that no other process "
                "holds it exclusively (nvidia-smi) and that the driver is healthy"
            ) from exc
        settings: dict[str, object] = {
            "device": f"cuda:{opts.device}",
            "gpu": gpu,
            "compute_capability": f"{capability[0]}.{capability[1]}",
            "threads": None,
            "precision": options.precision,
            "max_contexts": opts.max_contexts,
            "runtime_version": runtime_version(),
            "cuda_runtime": f"{_cuda.format_version(cuda.runtime_version)} ({cuda.path})",
            "engine_cache": None,
            "timing_cache": None,
            "loaded_from_cache": False,
            "cache_miss": None,
        }
        runtime = trt.Runtime(_logger())
        if model_kind(model) == "engine":
            check_engine_precision(options.precision)
            if ignored := [k for k in BUILD_OPTIONS if k in options.extra]:
                warn_user(
                    f"backend options {', '.join(ignored)} shape how TensorRT builds an engine "
                    f"from ONNX; {model.name} is a serialized engine and runs as it was built, "
                    "so they were ignored"
                )
            with translate_errors(NAME, *_NATIVE, model=model):
                engine = _deserialize(runtime, model.read_bytes())
                settings["precision"] = "as built"
                settings["source"] = "serialized engine"
                return cls(
                    engine,
                    runtime,
                    cuda,
                    device=opts.device,
                    max_contexts=opts.max_contexts,
                    settings=settings,
                )

        # Refuse what cannot be built before hashing or parsing anything.
        check_precision(
            options.precision,
            tensorrt_version=runtime_version(),
            weak_typing=_weak_typing(),
            compute_capability=capability,
        )
        root = options.cache_dir if opts.cache else None
        entry = key = timing = None
        engine = None
        if root is not None:
            key = _enginecache.CacheKey(
                model_sha256=model_digest(model),  # every file: external weights too
                gpu_name=gpu,
                compute_capability=capability,
                tensorrt_version=runtime_version(),
                precision=options.precision,
                build=opts.build_key(),
            )
            entry = _enginecache.Entry.for_key(root, key, model.stem)
            timing = _enginecache.timing_cache_path(root, gpu, capability, runtime_version())
            settings["engine_cache"] = str(entry.engine)
            settings["timing_cache"] = str(timing)
            data, reason = _enginecache.check(entry, key)
            if data is not None:
                try:
                    engine = _deserialize(runtime, data)
                except TensorRTError as exc:
                    reason = f"TensorRT could not load the cached engine ({exc})"
                    logger.warning("rebuilding %s: %s", entry.engine, reason)
            if engine is not None:
                settings["loaded_from_cache"] = True
                record = _enginecache.read_record(entry)
                settings.update({k: record.get(k) for k in _RECORDED})
            else:
                settings["cache_miss"] = reason
        with translate_errors(NAME, *_NATIVE, model=model):
            if engine is None:
                data, details = build_engine(
                    model,
                    options.precision,
                    opts,
                    timing_cache=timing,
                    compute_capability=capability,
                )
                engine = _deserialize(runtime, data)
                settings.update({k: details.get(k) for k in _RECORDED})
                if entry is not None and key is not None:
                    try:
                        _enginecache.store(entry, key, data, details)
                    except OSError as exc:  # a full or read-only cache costs the next load a build
                        logger.warning("could not cache the engine in %s: %s", entry.engine, exc)
            return cls(
                engine,
                runtime,
                cuda,
                device=opts.device,
                max_contexts=opts.max_contexts,
                settings=settings,
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
                "this TensorRT session is closed; open the model again to run it", backend=NAME
            )
        with translate_errors(NAME, *_NATIVE):
            slot = pool.acquire()
            try:
                return slot.run(feeds, self._inputs, self._outputs, self._profiles)
            finally:
                pool.release(slot)

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()  # contexts still running are destroyed when their call ends
        # The engine's GPU memory goes once the last context using it is gone.
        self._engine = self._runtime = None


#: Build details copied from the engine's record into the session settings.
_RECORDED: Final = ("strongly_typed", "builder_flags", "tf32", "quantize_layers", "build_s")

__all__ = ["TensorRTError", "TensorRTSession", "build_engine", "runtime_version"]
