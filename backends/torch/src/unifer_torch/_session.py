"""Run one PyTorch model (TorchScript, ``torch.export`` or converted ONNX) behind unifer's Session.

With the ONNX converter ``_onnx``, the only code of the plugin that imports ``torch`` at the top:
``unifer_torch`` imports this module inside ``probe()`` and ``open()``, so importing the plugin
never loads torch.

What is process-wide in PyTorch, and therefore kept with ``unifer.backend.ProcessWideSetting`` (as
the opencv plugin does for ``cv2.setNumThreads``): the intra-op thread count
(``torch.set_num_threads``) and the float32 math mode of cuBLAS/cuDNN (TF32) and oneDNN. A session
that changes one of them while another live session asked for a different value warns.
"""

from __future__ import annotations

import re
import weakref
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import numpy as np
import torch

from unifer import (
    InferenceError,
    ModelLoadError,
    UnsupportedOptionError,
)
from unifer.backend import (
    ProcessWideSetting,
    SessionOptions,
    TensorSpec,
    reject_precision,
    translate_errors,
    warn_unknown_options,
    warn_user,
)

from . import _onnx

NAME: Final = "torch"
OPTIONS: Final = ("device", "allow_tf32", "inputs")
TORCHSCRIPT_SUFFIXES: Final = (".pt", ".pth", ".torchscript")

#: What torch raises for a bad file or a failing forward. torch.jit and torch.export raise
#: RuntimeError subclasses mostly; export's input checks and the Python frontends also raise
#: ValueError, TypeError, IndexError or AssertionError (export guards).
NATIVE_ERRORS: Final[tuple[type[BaseException], ...]] = (
    RuntimeError,
    ValueError,
    TypeError,
    IndexError,
    KeyError,
    AssertionError,
)
LOAD_ERRORS: Final[tuple[type[BaseException], ...]] = (
    *NATIVE_ERRORS,
    OSError,
    EOFError,
    zipfile.BadZipFile,
)

#: torch dtype <-> numpy dtype for tensors crossing the session boundary.
NUMPY_OF: Final[dict[torch.dtype, np.dtype[Any]]] = {
    torch.float32: np.dtype(np.float32),
    torch.float64: np.dtype(np.float64),
    torch.float16: np.dtype(np.float16),
    torch.uint8: np.dtype(np.uint8),
    torch.int8: np.dtype(np.int8),
    torch.int16: np.dtype(np.int16),
    torch.int32: np.dtype(np.int32),
    torch.int64: np.dtype(np.int64),
    torch.bool: np.dtype(np.bool_),
    torch.complex64: np.dtype(np.complex64),
    torch.complex128: np.dtype(np.complex128),
}
TORCH_OF: Final[dict[np.dtype[Any], torch.dtype]] = {v: k for k, v in NUMPY_OF.items()}
COMPUTE_DTYPES: Final[dict[str, torch.dtype]] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
_LOW: Final = (torch.bfloat16, torch.float16)


# -- what is installed --------------------------------------------------------------------------


@dataclass(frozen=True)
class Runtime:
    """What ``probe()`` reports: the version, usable devices, and one sentence about CUDA."""

    version: str
    devices: tuple[str, ...]
    summary: str


def describe_runtime() -> Runtime:
    """Describe torch's build and the devices it can use here, saying why CUDA is not usable."""
    version = str(torch.__version__)
    cuda = torch.version.cuda
    hip = getattr(torch.version, "hip", None)
    capability = _cpu_capability()
    cpu = f"CPU ({capability} kernels)" if capability else "CPU"
    if cuda is None and hip is None:
        return Runtime(
            version,
            ("cpu",),
            f"{cpu} only: torch {version} is a CPU-only build (torch.version.cuda is None); "
            "install a CUDA build of torch for GPUs",
        )
    build = f"CUDA {cuda}" if cuda is not None else f"ROCm {hip}"
    if not torch.cuda.is_available():
        return Runtime(
            version, ("cpu",), f"{cpu} only: torch {version} is built for {build}, but {_no_gpu()}"
        )
    count = torch.cuda.device_count()
    names = [f"cuda:{i} ({_gpu_name(i)})" for i in range(count)]
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return Runtime(
        version,
        # The default device first: device="auto" opens on cuda:0 where there is a GPU.
        (*(f"cuda:{i}" for i in range(count)), "cpu"),
        f"{cpu} and {count} GPU(s): {', '.join(names)}; {build}"
        + (f", cuDNN {cudnn}" if cudnn else ""),
    )


def _cpu_capability() -> str | None:
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):
        return None


def _no_gpu() -> str:
    """Why ``torch.cuda.is_available()`` is False on a CUDA build, in torch's own words."""
    try:
        torch.cuda.init()
    except Exception as exc:  # the reason is all that is wanted here
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"no GPU is usable: {detail}"
    return "torch.cuda.is_available() is False (no GPU visible; check CUDA_VISIBLE_DEVICES)"


def _gpu_name(index: int) -> str:
    props = torch.cuda.get_device_properties(index)
    return f"{props.name}, compute capability {props.major}.{props.minor}"


# -- process-wide settings ------------------------------------------------------------------------


_THREADS = ProcessWideSetting(lambda n: torch.set_num_threads(n))
_TF32 = ProcessWideSetting(lambda allow: _set_cuda_fp32_math(allow))


def _align_thread_count() -> None:
    """Give the calling thread the intra-op thread count that open sessions asked for.

    ``torch.set_num_threads`` sets it for the calling thread and threads started later (OpenMP
    keeps one count per thread): a pool thread that ran torch before the engine was opened keeps
    its old count. ``torch.get_num_threads`` is a cheap read, so each run checks.
    """
    wanted = _THREADS.in_force
    if isinstance(wanted, int) and torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)


def _request_threads(threads: int, model: Path) -> int:
    key, others = _THREADS.request(threads)
    if others:
        warn_user(
            f"PyTorch's thread count is process-wide (torch.set_num_threads): threads={threads} "
            f"for {model.name} now also applies to the other open torch engine(s) that asked for "
            f"threads={', '.join(map(str, others))}. Open every torch engine with the same "
            "threads= to avoid this"
        )
    return key


#: Where PyTorch (2.9+) keeps each float32 precision knob: (backend, op) -> the object whose
#: ``fp32_precision`` attribute it is. "none" on an op means: inherit the backend's "all", which
#: inherits the generic one; "none" everywhere means IEEE fp32.
def _knob(backend: str, op: str) -> Any:
    backends = torch.backends
    table: dict[tuple[str, str], Callable[[], Any]] = {
        ("cuda", "matmul"): lambda: backends.cuda.matmul,
        ("cuda", "conv"): lambda: backends.cudnn.conv,
        ("cuda", "rnn"): lambda: backends.cudnn.rnn,
        ("cuda", "all"): lambda: backends.cudnn,
        ("mkldnn", "matmul"): lambda: backends.mkldnn.matmul,
        ("mkldnn", "conv"): lambda: backends.mkldnn.conv,
        ("mkldnn", "rnn"): lambda: backends.mkldnn.rnn,
        ("mkldnn", "all"): lambda: backends.mkldnn,
        ("generic", "all"): lambda: backends,
    }
    return table[(backend, op)]()


def _has_fp32_precision_api() -> bool:
    try:
        return isinstance(_knob("cuda", "conv").fp32_precision, str)
    except (AttributeError, RuntimeError):
        return False


def _effective(backend: str, op: str) -> str:
    for b, o in ((backend, op), (backend, "all"), ("generic", "all")):
        value = str(_knob(b, o).fp32_precision)
        if value != "none":
            return value
    return "ieee"


_OPS: Final = ("matmul", "conv", "rnn")


def _set_cuda_fp32_math(allow_tf32: bool) -> None:
    """Set cuBLAS matmuls and cuDNN convolutions/RNNs to IEEE fp32, or allow TF32.

    The legacy switches go first: they leave both APIs reading consistently (setting only the
    new per-op values makes ``torch.backends.cudnn.allow_tf32`` raise "mix of the legacy and new
    APIs"). Where an earlier setting of the new API still wins over them (a generic or
    backend-wide "tf32"), the op's own value is set too.
    """
    torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    torch.backends.cudnn.allow_tf32 = allow_tf32
    if not _has_fp32_precision_api():
        return
    want = "tf32" if allow_tf32 else "ieee"
    for op in _OPS:
        if _effective("cuda", op) != want:
            _knob("cuda", op).fp32_precision = want


def _cuda_fp32_math() -> dict[str, str]:
    if _has_fp32_precision_api():
        return {op: _effective("cuda", op) for op in _OPS}
    matmul = "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"
    cudnn = "tf32" if torch.backends.cudnn.allow_tf32 else "ieee"
    return {"matmul": matmul, "conv": cudnn, "rnn": cudnn}


def _pin_cpu_fp32_math() -> tuple[dict[str, str], dict[str, str]]:
    """Make oneDNN's float32 ops IEEE fp32 if something lowered them (``torch.backends.
    fp32_precision = "bf16"``, ...). Returns (what applies now, what was changed from)."""
    if not _has_fp32_precision_api():
        return {op: "ieee" for op in _OPS}, {}
    changed = {}
    for op in _OPS:
        value = _effective("mkldnn", op)
        if value != "ieee":
            changed[op] = value
            _knob("mkldnn", op).fp32_precision = "ieee"
    return {op: _effective("mkldnn", op) for op in _OPS}, changed


def _request_tf32(allow: bool, model: Path) -> int:
    key, others = _TF32.request(allow)
    if others:
        now = "allowed" if allow else "turned off"
        warn_user(
            f"TF32 is process-wide in PyTorch: opening {model.name} with allow_tf32={allow} "
            f"{now} TF32 for every CUDA float32 matmul and convolution in this process, including "
            f"the other open torch engine(s) that asked for allow_tf32={others[0]}. Open every "
            "fp32 torch engine on CUDA with the same allow_tf32 to avoid this"
        )
    return key


# -- options ----------------------------------------------------------------------------------


def resolve_device(value: object) -> torch.device:
    """The device named by the ``device`` option, or raise if this machine lacks it."""
    if value is None or value == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    match = re.fullmatch(r"cpu|cuda(?::(\d+))?", value) if isinstance(value, str) else None
    if match is None:
        raise UnsupportedOptionError(
            f"backend option 'device' must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {value!r}"
        )
    if value == "cpu":
        return torch.device("cpu")
    index = int(match.group(1) or 0)
    if not torch.cuda.is_available():
        raise UnsupportedOptionError(
            f"backend option device={value!r} asks for a CUDA device, but this machine has none "
            f"that torch can use: {describe_runtime().summary}. Use device='cpu' (or 'auto')"
        )
    count = torch.cuda.device_count()
    if index >= count:
        devices = ", ".join(f"cuda:{i} ({_gpu_name(i)})" for i in range(count))
        raise UnsupportedOptionError(
            f"backend option device={value!r}: this machine has {count} CUDA device(s): "
            f"{devices}. Pick one of them"
        )
    return torch.device("cuda", index)


def check_precision(precision: str, device: torch.device) -> torch.dtype:
    """The compute dtype for ``precision`` on ``device``, or raise UnsupportedOptionError."""
    if precision == "int8":
        reject_precision(
            NAME,
            precision,
            ("fp32",),
            "PyTorch runs int8 only in models quantized for it (torch.ao.quantization); load "
            "such a TorchScript or torch.export file with precision='fp32'",
        )
    supported = ["fp32"]
    reasons = {}
    if device.type == "cuda":
        if _cuda_native_bf16():
            supported.append("bf16")
        else:
            reasons["bf16"] = f"{_gpu_name(device.index or 0)} has no native bf16 arithmetic"
        supported.append("fp16")
    else:
        if _mkldnn_supports("bf16"):
            supported.append("bf16")
        else:
            reasons["bf16"] = (
                "PyTorch's CPU kernels (oneDNN) have no bf16 support on this CPU; it would be "
                "emulated, slower than fp32"
            )
        if _mkldnn_supports("fp16"):
            supported.append("fp16")
        else:
            reasons["fp16"] = (
                "this CPU has no native fp16 arithmetic (AVX512-FP16 or AMX-FP16), so PyTorch "
                "computes fp16 in slow reference kernels (measured 2.8x slower than fp32 on an "
                "AVX-512 Zen 4 CPU, and less accurate); use precision='bf16' on CPUs that have it"
            )
    reject_precision(NAME, precision, supported, reasons.get(precision, ""))
    return COMPUTE_DTYPES[precision]


def _cuda_native_bf16() -> bool:
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # torch < 2.3 has no including_emulation (and did not emulate)
        return bool(torch.cuda.is_bf16_supported())


def _mkldnn_supports(kind: str) -> bool:
    # The checks oneDNN itself uses to pick native bf16/fp16 kernels; absent in old torch.
    check = getattr(torch.ops.mkldnn, f"_is_mkldnn_{kind}_supported", None)
    try:
        return bool(check()) if check is not None else False
    except RuntimeError:
        return False


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise UnsupportedOptionError(
            f"backend option {name!r} must be True or False, got {value!r}"
        )
    return value


# -- loading ----------------------------------------------------------------------------------


@dataclass
class Loaded:
    """A model read from disk: the callable module and its declared inputs and outputs."""

    module: Any
    kind: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...] | None
    """``None`` until known (TorchScript: learned by running the model once)."""
    flatten: Callable[[Any], list[Any]]
    details: dict[str, object] | None = None


def _flat(obj: Any) -> list[Any]:
    """The leaves of a model's return value (tensors, in a tuple/list/dict tree), in order."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [leaf for value in obj.values() for leaf in _flat(value)]
    if isinstance(obj, (tuple, list)):
        return [leaf for value in obj for leaf in _flat(value)]
    return [obj]


def _named(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """``_flat`` with a name per leaf: ``output`` for a single tensor, ``output0``... for a tuple,
    the key for a dict, and dotted paths below the top level (``boxes.0``)."""
    if isinstance(obj, dict):
        return [
            leaf
            for key, value in obj.items()
            for leaf in _named(value, f"{prefix}.{key}" if prefix else str(key))
        ]
    if isinstance(obj, (tuple, list)):
        return [
            leaf
            for i, value in enumerate(obj)
            for leaf in _named(value, f"{prefix}.{i}" if prefix else f"output{i}")
        ]
    return [(prefix or "output", obj)]


def _load_onnx(path: Path) -> Loaded:
    graph = _onnx.load(path)
    inputs = tuple(_onnx_spec(path, "input", s) for s in graph.inputs)
    outputs = tuple(_onnx_spec(path, "output", s) for s in graph.outputs)
    from importlib.metadata import version

    details: dict[str, object] = {
        "converter": f"unifer_torch._onnx/{_onnx.CONVERTER_VERSION} (onnx {version('onnx')})",
        "opset": graph.opset,
        "nodes_folded_at_load": graph.folded,
    }
    return Loaded(graph.module, "onnx", inputs, outputs, _flat, details=details)


def _onnx_spec(path: Path, kind: str, spec: _onnx.IOSpec) -> TensorSpec:
    if spec.kind != "tensor":
        raise ModelLoadError(
            f"{path} has {kind} {spec.name!r} of type {spec.kind}; unifer handles tensor inputs "
            "and outputs only. Re-export the model with plain tensors"
        )
    dtype = _onnx.NUMPY_DTYPES.get(spec.elem_type)
    if dtype is None:
        type_name = _onnx.ONNX_TYPE_NAMES.get(spec.elem_type, f"ONNX type {spec.elem_type}")
        raise ModelLoadError(
            f"{path} has {kind} {spec.name!r} of element type {type_name}, which the torch "
            "backend cannot exchange with numpy. Use another backend, e.g. backend='onnxruntime'"
        )
    return TensorSpec(spec.name, spec.shape or (), dtype)


def _load_export(path: Path, device: torch.device) -> Loaded:
    from torch.utils import _pytree as pytree

    with translate_errors(NAME, *LOAD_ERRORS, model=path):
        program = torch.export.load(str(path))
    passes = getattr(torch.export, "passes", None)
    move = getattr(passes, "move_to_device_pass", None)
    with translate_errors(NAME, *LOAD_ERRORS, model=path):
        if move is not None:
            # Rewrites device arguments inside the graph too (torch.ones(..., device="cpu")),
            # which module().to(device) would leave behind.
            program = move(program, device)
        module = program.module()
        if move is None:
            module = module.to(device)

    signature = program.graph_signature
    nodes = {node.name: node for node in program.graph.nodes}
    user_inputs = [nodes[name] for name in signature.user_inputs]
    structure = pytree.tree_unflatten(list(range(len(user_inputs))), program.call_spec.in_spec)
    args, kwargs = structure if isinstance(structure, tuple) and len(structure) == 2 else ((), {})
    if kwargs or list(args) != list(range(len(user_inputs))):
        raise ModelLoadError(
            f"{path} takes keyword or nested inputs ({structure}); unifer passes tensors "
            "positionally. Export the model with a forward(self, x, y, ...) of plain tensors"
        )
    call_graph = program.module_call_graph
    arg_names = list(getattr(call_graph[0].signature, "forward_arg_names", None) or [])
    if len(arg_names) != len(user_inputs):
        arg_names = [node.name for node in user_inputs]
    inputs = tuple(
        _export_spec(path, "input", name, node.meta.get("val"))
        for name, node in zip(arg_names, user_inputs, strict=True)
    )

    output_vals = [
        nodes[name].meta.get("val") if name in nodes else None for name in signature.user_outputs
    ]
    out_structure = pytree.tree_unflatten(list(range(len(output_vals))), program.call_spec.out_spec)
    named = _named(out_structure)
    if [index for _, index in named] == list(range(len(output_vals))):
        names = [name for name, _ in named]
    else:  # a pytree node type of its own (a dataclass, ...): fall back to positions
        names = [f"output{i}" for i in range(len(output_vals))]
    outputs = tuple(
        _export_spec(path, "output", name, val)
        for name, val in zip(names, output_vals, strict=True)
    )
    return Loaded(module, "torch.export", inputs, outputs, pytree.tree_leaves)


def _export_spec(path: Path, kind: str, name: str, val: Any) -> TensorSpec:
    if not isinstance(val, torch.Tensor):
        raise ModelLoadError(
            f"{path} has {kind} {name!r} that is not a tensor ({type(val).__name__}); unifer "
            "exchanges tensors only. Export the model with tensor inputs and outputs"
        )
    dtype = NUMPY_OF.get(val.dtype)
    if dtype is None:
        raise ModelLoadError(
            f"{path} has {kind} {name!r} of dtype {val.dtype}, which numpy cannot hold. Convert "
            "it inside the model (e.g. return x.float())"
        )
    dims: list[int | str | None] = []
    for dim in val.shape:
        if isinstance(dim, int):
            dims.append(dim)
            continue
        expr = getattr(getattr(dim, "node", None), "expr", None)
        # A plain symbol (s0) names a dynamic dimension that inputs share; an expression (2*s0)
        # is reported as dynamic.
        dims.append(str(expr) if getattr(expr, "is_Symbol", False) else None)
    return TensorSpec(name, tuple(dims), dtype)


def _load_torchscript(path: Path, device: torch.device, declared: object) -> Loaded:
    try:
        module = torch.jit.load(str(path), map_location=device)
    except LOAD_ERRORS as exc:
        raise ModelLoadError(
            f"torch could not load {path} as TorchScript: {_first_line(exc)}. "
            + _not_torchscript_hint(path)
        ) from exc
    module.eval()
    schema = module.forward.schema
    arguments = [
        arg
        for arg in schema.arguments[1:]
        if not arg.has_default_value()  # [0] is self
    ]
    for arg in arguments:
        if str(arg.type) != "Tensor":
            raise ModelLoadError(
                f"{path}: forward() takes {arg.name}: {arg.type}; unifer feeds tensors only. "
                "Wrap the model so that forward takes tensors (or give the argument a default)"
            )
    names = [arg.name for arg in arguments]
    inputs = _declared_inputs(path, names, declared)
    return Loaded(module, "torchscript", inputs, None, _flat)


def _not_torchscript_hint(path: Path) -> str:
    """Say what the file is when it is not TorchScript, if it can be told cheaply."""
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        try:
            with path.open("rb") as file:
                head = file.read(2)
        except OSError:
            head = b""
        if head[:1] == b"\x80":
            return (
                "It is a pickle (torch.save of a module or state_dict with the legacy format), "
                "not TorchScript: unifer does not unpickle files, which runs arbitrary code. "
                "Export the model with torch.jit.script/trace + torch.jit.save, or torch.export"
            )
        return "Check that the file is a complete TorchScript archive (re-export it)"
    if any(
        name.endswith(("archive_format", "serialized_exported_program.json")) for name in entries
    ):
        return "It is a torch.export program: give it the .pt2 suffix"
    if any(name.endswith("data.pkl") for name in entries) and not any(
        "/code/" in name or name.endswith("constants.pkl") for name in entries
    ):
        return (
            "It is a torch.save checkpoint (a pickled module or state_dict), not TorchScript: "
            "rebuilding it needs the model's Python code, and unifer does not unpickle files "
            "(which runs arbitrary code). Export the model with torch.jit.script/trace + "
            "torch.jit.save, or with torch.export (.pt2)"
        )
    return "Check that the file is a complete TorchScript archive (re-export it)"


def _declared_inputs(path: Path, names: list[str], declared: object) -> tuple[TensorSpec, ...]:
    example = ", ".join(f"{n!r}: [...]" for n in names)
    how = (
        "TorchScript files do not record input shapes or dtypes; declare them with "
        f"backend_options={{'torch': {{'inputs': {{{example}}}}}}}, each a list of dims (an int, a "
        "name, or None for a dynamic dim) for a float32 input, or {'shape': [...], 'dtype': "
        "'int64'} for another dtype"
    )
    if declared is None:
        raise UnsupportedOptionError(f"{path.name}: {how}")
    if not isinstance(declared, Mapping):
        raise UnsupportedOptionError(f"backend option 'inputs' must be a dict. {how}")
    unknown = [n for n in declared if n not in names]
    missing = [n for n in names if n not in declared]
    if unknown or missing:
        raise UnsupportedOptionError(
            f"backend option 'inputs' must name exactly forward()'s tensor arguments "
            f"({', '.join(map(repr, names))})"
            + (f"; unknown: {', '.join(map(repr, unknown))}" if unknown else "")
            + (f"; missing: {', '.join(map(repr, missing))}" if missing else "")
        )
    specs = []
    for name in names:
        entry = declared[name]
        shape, dtype_name = (
            (entry.get("shape"), entry.get("dtype", "float32"))
            if isinstance(entry, Mapping)
            else (entry, "float32")
        )
        if not isinstance(shape, (list, tuple)) or not all(
            d is None
            or (isinstance(d, int) and not isinstance(d, bool) and d >= 0)
            or (isinstance(d, str) and d)
            for d in shape
        ):
            raise UnsupportedOptionError(
                f"backend option 'inputs' for {name!r}: the shape must be a list of ints, names "
                f"or None, got {shape!r}. {how}"
            )
        try:
            dtype = np.dtype(dtype_name)
        except TypeError as exc:
            raise UnsupportedOptionError(
                f"backend option 'inputs' for {name!r}: {dtype_name!r} is not a dtype"
            ) from exc
        if dtype not in TORCH_OF:
            raise UnsupportedOptionError(
                f"backend option 'inputs' for {name!r}: dtype {dtype} cannot be fed to torch "
                f"(use one of {', '.join(sorted(str(d) for d in TORCH_OF))})"
            )
        specs.append(TensorSpec(name, tuple(shape), dtype))
    return tuple(specs)


# -- the session ----------------------------------------------------------------------------------


class TorchSession:
    """One loaded module on one device.

    ``run`` calls ``forward`` under ``torch.inference_mode`` (thread-local, so concurrent callers
    do not interfere) with tensors made from the feeds; the session keeps no per-call state, so
    calls from many threads run concurrently. Outputs are copied into new numpy arrays, which the
    caller owns (a model may return an input or a weight as an output).
    """

    def __init__(
        self,
        module: Any,
        *,
        device: torch.device,
        inputs: tuple[TensorSpec, ...],
        outputs: tuple[TensorSpec, ...],
        flatten: Callable[[Any], list[Any]],
        compute_dtype: torch.dtype,
        copy_inputs: bool,
        settings: Mapping[str, object],
        releases: Sequence[tuple[ProcessWideSetting, int]],
    ) -> None:
        self._module: Any = module
        self._device = device
        self._cuda = device.type == "cuda"
        self._inputs = inputs
        self._outputs = outputs
        self._flatten = flatten
        low = compute_dtype in _LOW
        # Each input: (name, dtype to cast to or None). Float32 inputs take the compute dtype.
        self._feed_plan = tuple(
            (s.name, compute_dtype if low and s.dtype == np.float32 else None) for s in inputs
        )
        self._output_plan = tuple((s.name, s.dtype) for s in outputs)
        self._copy_inputs = copy_inputs
        self._settings = MappingProxyType(dict(settings))
        self._finalizers: list[weakref.finalize[..., object]] = [
            weakref.finalize(self, registry.release, key) for registry, key in releases
        ]
        if self._cuda:
            self._finalizers.append(weakref.finalize(self, _release_cuda_cache))

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
        module = self._module  # a local reference keeps it alive if close() races with us
        if module is None:
            raise InferenceError(
                "this torch session is closed; open the model again to run it", backend=NAME
            )
        _align_thread_count()
        with translate_errors(NAME, *NATIVE_ERRORS), torch.inference_mode():
            args = [self._tensor(feeds[name], cast) for name, cast in self._feed_plan]
            leaves = self._flatten(module(*args))
            if len(leaves) != len(self._output_plan):
                raise InferenceError(
                    f"the model returned {len(leaves)} output(s) where it returned "
                    f"{len(self._output_plan)} when it was opened; unifer needs a fixed set of "
                    "outputs",
                    backend=NAME,
                )
            results = {}
            for (name, dtype), value in zip(self._output_plan, leaves, strict=True):
                results[name] = self._array(name, value, dtype)
            if self._cuda:
                # .cpu() already waited for the copies; this also covers work on other streams
                # the copies did not depend on, so nothing of this call is still running.
                torch.cuda.current_stream(self._device).synchronize()
        return results

    def _tensor(self, array: np.ndarray, cast: torch.dtype | None) -> torch.Tensor:
        if self._cuda:  # the copy to the GPU is the model's own
            host = torch.from_numpy(array if array.flags.writeable else array.copy())
            return host.to(device=self._device, dtype=cast)
        if cast is not None:  # a new tensor in the compute dtype either way
            if not array.flags.writeable:
                return torch.tensor(array, dtype=cast)
            return torch.from_numpy(array).to(dtype=cast)
        # Shared with the caller's array only when the module is known not to write into its
        # inputs (the ONNX converter's ops are all out-of-place): TorchScript or torch.export code
        # may run x.add_(1), which must not reach the caller. torch.tensor() copies (and, unlike
        # from_numpy, does not warn about read-only arrays).
        if self._copy_inputs or not array.flags.writeable:
            return torch.tensor(array)
        return torch.from_numpy(array)

    def _array(self, name: str, value: Any, dtype: np.dtype[Any]) -> np.ndarray:
        if not isinstance(value, torch.Tensor):
            raise InferenceError(
                f"output {name!r} is a {type(value).__name__}, not a tensor", backend=NAME
            )
        value = value.detach()  # a returned parameter would still require grad
        if value.dtype in _LOW and dtype == np.float32:
            value = value.float()  # reduced precision inside, float32 outside
        if value.device.type != "cpu":
            array: np.ndarray = value.cpu().numpy()  # a fresh host copy: the caller's alone
        else:
            array = np.array(value.numpy(), copy=True)
        return array if array.dtype == dtype else array.astype(dtype)

    def close(self) -> None:
        self._module = None  # freed when the last run() holding it returns
        for finalizer in self._finalizers:
            finalizer()  # a finalize runs once, so a second close() does nothing


def _release_cuda_cache() -> None:
    # Hand the closed model's GPU memory back to the driver (PyTorch keeps freed blocks cached for
    # reuse), so memory figures and other processes see it free.
    torch.cuda.empty_cache()


# -- opening --------------------------------------------------------------------------------------


def open_session(model: Path, options: SessionOptions) -> TorchSession:
    """Load ``model`` with torch, apply ``options`` and return a ready session, or raise."""
    warn_unknown_options(NAME, options.extra, OPTIONS)
    extra = options.extra
    device = resolve_device(extra.get("device", "auto"))
    compute_dtype = check_precision(options.precision, device)
    allow_tf32 = _check_bool("allow_tf32", extra.get("allow_tf32", False))
    if allow_tf32 and device.type != "cuda":
        raise UnsupportedOptionError(
            "backend option allow_tf32=True applies to CUDA devices only (TF32 is a tensor-core "
            f"mode of NVIDIA GPUs); this model runs on {device}. Leave allow_tf32 out"
        )
    if allow_tf32 and options.precision != "fp32":
        raise UnsupportedOptionError(
            f"backend option allow_tf32=True applies to precision='fp32' only; with "
            f"precision={options.precision!r} there is no float32 math to run in TF32"
        )
    suffix = model.suffix.lower()
    if "inputs" in extra and suffix not in TORCHSCRIPT_SUFFIXES:
        raise UnsupportedOptionError(
            f"backend option 'inputs' is for TorchScript files only; {model.name} declares its "
            "own inputs. Leave the option out"
        )

    if suffix == ".onnx":
        loaded = _load_onnx(model)
        with translate_errors(NAME, *LOAD_ERRORS, model=model):
            loaded.module.to(device)
            if compute_dtype != torch.float32:
                loaded.module.set_float_dtype(compute_dtype)
    elif suffix == ".pt2":
        loaded = _load_export(model, device)
    elif suffix in TORCHSCRIPT_SUFFIXES:
        loaded = _load_torchscript(model, device, extra.get("inputs"))
    else:  # the core only opens files with one of the backend's suffixes
        raise ModelLoadError(f"the torch backend does not read {model.suffix!r} files")

    if loaded.kind != "onnx" and compute_dtype != torch.float32:
        with translate_errors(NAME, *LOAD_ERRORS, model=model):
            loaded.module = loaded.module.to(compute_dtype)
    if loaded.outputs is None:
        # TorchScript does not declare its outputs: run the model once to learn them.
        loaded.outputs = _outputs_by_running(model, loaded, device, compute_dtype)
    elif loaded.kind != "onnx" and compute_dtype != torch.float32:
        # A model cast to bf16/fp16 may not run (float32 constants baked into its code): fail
        # here rather than on the first call.
        _run_on_zeros(model, loaded, device, compute_dtype, size=1)

    releases: list[tuple[ProcessWideSetting, int]] = []
    try:
        if options.threads is not None:
            releases.append((_THREADS, _request_threads(options.threads, model)))
        math_settings: dict[str, object]
        if device.type == "cuda" and compute_dtype == torch.float32:
            releases.append((_TF32, _request_tf32(allow_tf32, model)))
            math_settings = {"fp32_math": _cuda_fp32_math(), "tf32": allow_tf32}
        elif device.type == "cpu" and compute_dtype == torch.float32:
            applied, changed = _pin_cpu_fp32_math()
            math_settings = {"fp32_math": applied, "tf32": False}
            if changed:
                math_settings["fp32_math_pinned_from"] = changed
        else:
            math_settings = {"tf32": False}
        settings = _settings(model, loaded, device, options, compute_dtype, math_settings)
        return TorchSession(
            loaded.module,
            device=device,
            inputs=loaded.inputs,
            outputs=loaded.outputs,
            flatten=loaded.flatten,
            compute_dtype=compute_dtype,
            copy_inputs=loaded.kind != "onnx",
            settings=settings,
            releases=releases,
        )
    except BaseException:
        for registry, key in releases:
            registry.release(key)
        raise


def _run_on_zeros(
    path: Path, loaded: Loaded, device: torch.device, compute_dtype: torch.dtype, *, size: int
) -> list[tuple[str, Any]]:
    """Run the model once on zeros (dynamic dims = ``size``); return its named outputs."""
    args = []
    for spec in loaded.inputs:
        shape = [d if isinstance(d, int) else size for d in spec.shape]
        dtype = TORCH_OF[spec.dtype]
        args.append(
            torch.zeros(
                shape, dtype=compute_dtype if dtype == torch.float32 else dtype, device=device
            )
        )
    try:
        with torch.inference_mode():
            return _named(loaded.module(*args))
    except NATIVE_ERRORS as exc:
        shapes = ", ".join(
            f"{s.name}: {list(a.shape)}" for s, a in zip(loaded.inputs, args, strict=True)
        )
        low = compute_dtype != torch.float32
        raise ModelLoadError(
            f"torch loaded {path}, but running it once on zeros ({shapes})"
            + (f" in {str(compute_dtype).removeprefix('torch.')}" if low else "")
            + f" failed: {_first_line(exc)}. "
            + (
                "The model cannot run at this precision: use precision='fp32'"
                if low
                else "Check the declared inputs (backend option 'inputs')"
            )
        ) from exc


def _first_line(exc: BaseException) -> str:
    """The native message's first line, without torch's generic advice about corrupt zips; for a
    TorchScript interpreter failure, its last line, the reason (the first is a generic header
    over the TorchScript traceback)."""
    lines = str(exc).strip().splitlines()
    if not lines:
        return type(exc).__name__
    line = lines[-1] if lines[0].startswith(_TORCHSCRIPT_HEADER) else lines[0]
    return line.split(" This is an internal miniz error")[0].rstrip(". ")


_TORCHSCRIPT_HEADER: Final = "The following operation failed in the TorchScript interpreter"


def _outputs_by_running(
    path: Path, loaded: Loaded, device: torch.device, compute_dtype: torch.dtype
) -> tuple[TensorSpec, ...]:
    """Describe what the model returns by running it on zeros: dynamic input dims set to 1, and
    then to 2 to tell which output dims follow them (those are reported as dynamic, ``None``)."""
    dynamic = any(not isinstance(d, int) for s in loaded.inputs for d in s.shape)
    first = _run_on_zeros(path, loaded, device, compute_dtype, size=1)
    second: list[tuple[str, Any]] | None = None
    if dynamic:
        try:
            second = _run_on_zeros(path, loaded, device, compute_dtype, size=2)
        except ModelLoadError:
            second = None  # the model only takes size 1 there; every output dim is then dynamic
    specs = []
    for i, (name, value) in enumerate(first):
        if not isinstance(value, torch.Tensor):
            raise ModelLoadError(
                f"{path}: output {name!r} is a {type(value).__name__}, not a tensor; unifer "
                "exchanges tensors only. Wrap the model so that it returns tensors"
            )
        low = compute_dtype in _LOW and value.dtype == compute_dtype
        dtype = torch.float32 if low else value.dtype
        numpy_dtype = NUMPY_OF.get(dtype)
        if numpy_dtype is None:
            raise ModelLoadError(
                f"{path}: output {name!r} has dtype {value.dtype}, which numpy cannot hold. "
                "Convert it inside the model (e.g. return x.float())"
            )
        dims: list[int | str | None] = list(value.shape)
        if dynamic:
            other = second[i][1] if second is not None and i < len(second) else None
            other_shape = list(other.shape) if isinstance(other, torch.Tensor) else []
            dims = [
                d if j < len(other_shape) and other_shape[j] == d else None
                for j, d in enumerate(dims)
            ]
        specs.append(TensorSpec(name, tuple(dims), numpy_dtype))
    return tuple(specs)


def _settings(
    model: Path,
    loaded: Loaded,
    device: torch.device,
    options: SessionOptions,
    compute_dtype: torch.dtype,
    math_settings: Mapping[str, object],
) -> dict[str, object]:
    settings: dict[str, object] = {
        "device": str(device),
        "device_name": _gpu_name(device.index or 0)
        if device.type == "cuda"
        else f"CPU ({_cpu_capability() or 'default'} kernels)",
        # Read back, not echoed: with threads=None this is PyTorch's current setting.
        "threads": torch.get_num_threads(),
        "threads_scope": "process",
        "interop_threads": torch.get_num_interop_threads(),
        "precision": options.precision,
        "compute_dtype": str(compute_dtype).removeprefix("torch."),
        **math_settings,
        "fp32_math_scope": "process",
        "format": loaded.kind,
        "runtime_version": str(torch.__version__),
        "concurrency": "concurrent (forward under inference_mode, no shared state)",
    }
    if compute_dtype in _LOW:
        settings["outputs"] = (
            f"computed in {settings['compute_dtype']}, returned as float32; float32 inputs are "
            f"cast to {settings['compute_dtype']}"
        )
    if device.type == "cuda":
        settings["cuda_version"] = torch.version.cuda
        settings["cudnn_version"] = (
            torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        )
    if loaded.details:
        settings.update(loaded.details)
    return settings
