"""Run an ONNX graph with PyTorch: a small pure-Python ONNX -> ``torch.nn.Module`` converter.

One job: turn an ONNX model into an :class:`OnnxModule` whose ``forward`` executes the graph's
nodes in their (topological) order with torch operations, following ONNX semantics (pads and
``auto_pad``, strides, groups, dilations, numpy broadcasting, opset-dependent attributes).
Initializers and ``Constant`` nodes become buffers, so ``module.to(device)`` moves the whole model.

Why not ``onnx2torch``: it imports ``torchvision`` at import time (for two detection operators),
and torchvision wheels are tied to one torch build each; a CPU torch from a local wheel store, or a
newer torch than the newest torchvision, cannot import it. This converter needs only ``onnx`` (to
parse the file) and ``torch``.

Coverage is the operators of CNN-style models (see :data:`SUPPORTED`; ``docs`` in the plugin's
README). Everything is checked while loading: an operator (or an attribute value) outside that set
is a :class:`~unifer.ModelLoadError` naming every such operator and node, before anything runs.
Nodes whose inputs are all constants are evaluated once at load time (constant folding), which
also turns shape arithmetic on static shapes into constants.

Imported only by ``_session`` (it imports torch at the top); ``onnx`` is imported when a model is
read, so a missing ``onnx`` is a :class:`~unifer.MissingDependencyError` with the install line.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeAlias

import numpy as np
import torch
import torch.nn.functional as F

from unifer import MissingDependencyError, ModelLoadError

__all__ = [
    "CONVERTER_VERSION",
    "ONNX_INSTALL",
    "SUPPORTED",
    "GraphIO",
    "OnnxModule",
    "load",
]

#: Identifies this converter's behaviour; reported in ``settings["converter"]``.
CONVERTER_VERSION: Final = "2"
ONNX_INSTALL: Final = 'pip install "unifer-torch[onnx]"'
#: Default-domain opsets older than this use the pre-numpy broadcasting rules (``broadcast`` and
#: ``axis`` attributes), which this converter does not implement.
MIN_OPSET: Final = 7

#: ONNX ``TensorProto.DataType`` -> torch dtype (what a Cast or a tensor can hold here).
TORCH_DTYPES: Final[dict[int, torch.dtype]] = {
    1: torch.float32,
    2: torch.uint8,
    3: torch.int8,
    5: torch.int16,
    6: torch.int32,
    7: torch.int64,
    9: torch.bool,
    10: torch.float16,
    11: torch.float64,
    14: torch.complex64,
    15: torch.complex128,
    16: torch.bfloat16,
}
#: ONNX element types a model input or output may have: those numpy can hold too.
NUMPY_DTYPES: Final[dict[int, np.dtype[Any]]] = {
    k: np.dtype(v)
    for k, v in {
        1: np.float32,
        2: np.uint8,
        3: np.int8,
        5: np.int16,
        6: np.int32,
        7: np.int64,
        9: np.bool_,
        10: np.float16,
        11: np.float64,
        14: np.complex64,
        15: np.complex128,
    }.items()
}
ONNX_TYPE_NAMES: Final = {
    0: "undefined",
    1: "float",
    2: "uint8",
    3: "int8",
    4: "uint16",
    5: "int16",
    6: "int32",
    7: "int64",
    8: "string",
    9: "bool",
    10: "float16",
    11: "double",
    12: "uint32",
    13: "uint64",
    14: "complex64",
    15: "complex128",
    16: "bfloat16",
}

#: A torch tensor. Typed Any: mypy runs in the repo's main environment, where torch is not
#: installed, so torch's own types are Any there anyway.
Tensor: TypeAlias = Any
OpFn = Callable[..., Any]
"""A node at run time: called with the node's input tensors (``None`` for an omitted optional
input); returns one tensor or a tuple with one tensor per node output."""


class Unsupported(Exception):
    """Raised by a builder for an attribute value (or input form) this converter cannot run."""


class GraphError(Exception):
    """The graph itself is malformed: a missing tensor, a cycle, a bad attribute."""


# -- the module ---------------------------------------------------------------------------------


@dataclass
class Context:
    """State shared by the nodes of one module, fixed before the first run.

    ``float_dtype`` is what ONNX ``float`` (float32) means inside the graph: float32 normally, the
    compute dtype (bfloat16/float16) when the session runs the model at reduced precision, so a
    ``Cast(to=FLOAT)`` or a ``ConstantOfShape`` of floats does not bring float32 back midway;
    except where ``exact``: values that only feed integers (:func:`_feeding_integers`).
    """

    float_dtype: torch.dtype = torch.float32

    def dtype(self, onnx_type: int, exact: bool = False) -> torch.dtype:
        dtype = TORCH_DTYPES[onnx_type]
        return self.float_dtype if dtype == torch.float32 and not exact else dtype


@dataclass(frozen=True)
class Step:
    """One node ready to run: the callable, where its inputs come from and its outputs go."""

    fn: OpFn
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    release: tuple[str, ...]
    """Values no later step or graph output needs: dropped after this step to free memory."""


class OnnxModule(torch.nn.Module):  # type: ignore[misc]  # torch is untyped where mypy runs
    """An ONNX graph as a ``torch.nn.Module``: ``forward(*inputs)`` returns a tuple of outputs.

    It holds no state that a call changes (each call keeps its values in a local dict), so one
    module can run from many threads at once.
    """

    def __init__(
        self,
        constants: dict[str, Tensor],
        steps: Sequence[Step],
        inputs: Sequence[str],
        outputs: Sequence[str],
        context: Context,
        exact: Collection[str] = (),
    ) -> None:
        super().__init__()
        self._constant_buffers: list[tuple[str, str]] = []
        self._exact_keys: set[str] = set()
        """Constants that stay float32 at reduced precision (they only feed integers)."""
        for index, (name, value) in enumerate(constants.items()):
            key = f"c{index}"
            self.register_buffer(key, value, persistent=False)
            self._constant_buffers.append((name, key))
            if name in exact:
                self._exact_keys.add(key)
        self._steps = tuple(steps)
        self._input_names = tuple(inputs)
        self._output_names = tuple(outputs)
        self.context = context

    def set_float_dtype(self, dtype: torch.dtype) -> OnnxModule:
        """Run the graph's float32 arithmetic in ``dtype``: casts the floating constants too (except
        those of shape arithmetic)."""
        self.context.float_dtype = dtype
        for _, key in self._constant_buffers:
            value = self._buffers[key]
            if value is not None and value.dtype == torch.float32 and key not in self._exact_keys:
                self._buffers[key] = value.to(dtype)
        return self

    def forward(self, *args: Tensor) -> tuple[Tensor, ...]:
        buffers = self._buffers
        env: dict[str, Any] = {name: buffers[key] for name, key in self._constant_buffers}
        env.update(zip(self._input_names, args, strict=True))
        for step in self._steps:
            result = step.fn(*[env[name] if name else None for name in step.inputs])
            if len(step.outputs) == 1:
                env[step.outputs[0]] = result
            else:
                for name, value in zip(step.outputs, result, strict=False):
                    if name:
                        env[name] = value
            for name in step.release:
                del env[name]
        return tuple(env[name] for name in self._output_names)


# -- reading the file -----------------------------------------------------------------------------


@dataclass(frozen=True)
class IOSpec:
    """A graph input or output as declared in the file."""

    name: str
    elem_type: int
    shape: tuple[int | str | None, ...] | None
    """``None`` when the file declares no shape (unknown rank)."""
    kind: str = "tensor"


@dataclass(frozen=True)
class GraphIO:
    """The converted module and the graph's declared inputs and outputs."""

    module: OnnxModule
    inputs: tuple[IOSpec, ...]
    outputs: tuple[IOSpec, ...]
    opset: int
    folded: int
    """How many nodes were evaluated once at load time (constant folding)."""
    producer: str = ""


def require_onnx() -> None:
    """Raise :class:`MissingDependencyError` with the install line when ``onnx`` is missing."""
    try:
        import onnx  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(
            "running .onnx models with the torch backend needs the onnx package (to read the "
            f"file), which is not installed: {ONNX_INSTALL}. TorchScript (.pt) and torch.export "
            "(.pt2) files do not need it"
        ) from exc


def load(path: Path) -> GraphIO:
    """Read the ONNX file at ``path`` and convert it, or raise :class:`ModelLoadError`."""
    require_onnx()
    import onnx

    try:
        # External data (weights in side files) is read from the model's own directory.
        proto = onnx.load(str(path))
    except Exception as exc:  # protobuf's DecodeError, OSError, ...: all mean "not readable"
        raise ModelLoadError(
            f"torch could not read {path} as an ONNX model: {exc or type(exc).__name__}. Check "
            "that the file is a complete, valid ONNX model (re-export or re-download it)"
        ) from exc
    try:
        return convert(proto, path)
    except GraphError as exc:
        raise ModelLoadError(
            f"torch could not convert {path}: {exc}. Check that the file is a complete, valid "
            "ONNX model (onnx.checker.check_model names the problem)"
        ) from exc


def convert(proto: Any, path: Path) -> GraphIO:
    """Convert a loaded ``onnx.ModelProto`` (``path`` is only used in messages)."""
    from onnx import numpy_helper

    graph = proto.graph
    opset = _default_opset(proto)
    if opset < MIN_OPSET:
        raise ModelLoadError(
            f"{path} uses ONNX opset {opset}; the torch backend's converter reads opset "
            f"{MIN_OPSET} and newer. Upgrade the model (onnx.version_converter.convert_version) "
            "or use backend='onnxruntime'"
        )
    if len(graph.sparse_initializer):
        raise ModelLoadError(
            f"{path} stores sparse initializers, which the torch backend's converter does not "
            "read. Use backend='onnxruntime'"
        )

    constants: dict[str, Tensor] = {}
    for init in graph.initializer:
        constants[init.name] = _to_tensor(numpy_helper.to_array(init), init.data_type)
    inputs = tuple(_io(v) for v in graph.input if v.name not in constants)
    outputs = tuple(_io(v) for v in graph.output)
    static_shapes = {
        spec.name: spec.shape
        for spec in inputs
        if spec.shape is not None and all(isinstance(d, int) for d in spec.shape)
    }

    context = Context()
    nodes = [_Node.parse(n, i, opset, context) for i, n in enumerate(graph.node)]
    problems = [f"{node.label} ({node.qualified_op})" for node in nodes if node.builder is None]
    if problems:
        unsupported = sorted({n.qualified_op for n in nodes if n.builder is None})
        raise ModelLoadError(
            f"the torch backend cannot run {path}: its ONNX converter does not support the "
            f"operator(s) {', '.join(unsupported)}, used by node(s) {_first(problems)}. Use "
            "another backend for this model, e.g. backend='onnxruntime'"
        )

    exact = _feeding_integers(nodes, constants, {s.name for s in outputs})
    known: set[str] = {*constants, *(s.name for s in inputs)}
    fns: list[tuple[_Node, OpFn]] = []
    unsupported_variants: list[str] = []
    for node in nodes:
        missing = [name for name in node.inputs if name and name not in known]
        if missing:
            raise GraphError(
                f"node {node.label} ({node.op_type}) reads {', '.join(map(repr, missing))}, which "
                "no graph input, initializer or earlier node produces (the nodes must be in "
                "topological order)"
            )
        node.constants = {
            i: constants[name] for i, name in enumerate(node.inputs) if name in constants
        }
        node.static_shapes = static_shapes
        node.exact = all(name in exact for name in node.outputs if name)
        builder = node.builder
        if builder is None:  # listed in `problems` above, which raised
            continue
        try:
            fn = builder(node)
        except Unsupported as exc:
            unsupported_variants.append(f"{node.label} ({node.op_type}): {exc}")
            known.update(node.outputs)
            continue
        except (TypeError, ValueError, KeyError, IndexError) as exc:
            # An attribute of the wrong type or shape (a string where ints belong, ...).
            raise GraphError(
                f"node {node.label} ({node.op_type}) has an invalid attribute: "
                f"{exc or type(exc).__name__}"
            ) from exc
        if _foldable(node):
            # Every input is a constant (or the shape of a static input): evaluate once, now.
            if node.op_type == "Shape" and node.inputs[0] not in constants:
                args: list[Tensor | None] = [torch.empty(static_shapes[node.inputs[0]])]
            else:
                args = [constants[name] if name else None for name in node.inputs]
            try:
                with torch.inference_mode(False), torch.no_grad():
                    result = fn(*args)
            except (RuntimeError, ValueError, IndexError, TypeError) as exc:
                raise GraphError(
                    f"evaluating constant node {node.label} ({node.op_type}) failed: {exc}"
                ) from exc
            values = (result,) if len(node.outputs) == 1 else tuple(result)
            for name, value in zip(node.outputs, values, strict=False):
                if name:
                    constants[name] = value.contiguous()
            known.update(node.outputs)
            continue
        fns.append((node, fn))
        known.update(node.outputs)
    if unsupported_variants:
        raise ModelLoadError(
            f"the torch backend cannot run {path}: its ONNX converter does not support "
            f"{_first(unsupported_variants, 8)}. Use another backend for this model, e.g. "
            "backend='onnxruntime'"
        )
    missing_outputs = [s.name for s in outputs if s.name not in known]
    if missing_outputs:
        raise GraphError(
            f"graph output(s) {', '.join(map(repr, missing_outputs))} are produced by no node"
        )

    steps = _schedule(fns, [s.name for s in outputs])
    used = {name for step in steps for name in step.inputs} | {s.name for s in outputs}
    kept = {name: value for name, value in constants.items() if name in used}
    module = OnnxModule(
        kept, steps, [s.name for s in inputs], [s.name for s in outputs], context, exact
    )
    module.eval()
    return GraphIO(
        module=module,
        inputs=inputs,
        outputs=outputs,
        opset=opset,
        folded=len(nodes) - len(fns),
        producer=f"{proto.producer_name} {proto.producer_version}".strip(),
    )


def _first(items: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _default_opset(proto: Any) -> int:
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 1


def _io(value: Any) -> IOSpec:
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        return IOSpec(value.name, 0, None, kind=str(kind).removesuffix("_type"))
    tensor_type = value.type.tensor_type
    shape: tuple[int | str | None, ...] | None = None
    if tensor_type.HasField("shape"):
        dims: list[int | str | None] = []
        for dim in tensor_type.shape.dim:
            which = dim.WhichOneof("value")
            dims.append(
                int(dim.dim_value)
                if which == "dim_value"
                else (dim.dim_param or None)
                if which == "dim_param"
                else None
            )
        shape = tuple(dims)
    return IOSpec(value.name, int(tensor_type.elem_type), shape)


def _to_tensor(array: np.ndarray, onnx_type: int | None = None) -> Tensor:
    """A torch tensor owning a copy of ``array`` (ONNX bfloat16 arrives as uint16 or ml_dtypes)."""
    if onnx_type == 16 or array.dtype.name == "bfloat16":
        bits = np.ascontiguousarray(array).view(np.uint16).astype(np.int32) << 16
        return torch.from_numpy(bits).view(torch.float32).to(torch.bfloat16)
    if array.dtype == np.uint16 or array.dtype == np.uint32 or array.dtype == np.uint64:
        raise GraphError(f"tensors of type {array.dtype} are not supported by torch arithmetic")
    if array.dtype == object:
        raise GraphError("string tensors are not supported")
    return torch.from_numpy(np.array(array, copy=True, order="C"))


def _foldable(node: _Node) -> bool:
    if node.op_type in _NOT_FOLDED or not node.outputs:
        return False
    if node.op_type == "Shape" and node.inputs[0] in node.static_shapes:
        return True
    return all(i in node.constants or not name for i, name in enumerate(node.inputs))


#: ONNX integer and bool element types (uint8, int8, int16, int32, int64, bool).
_INTEGER_TYPES: Final = frozenset({2, 3, 5, 6, 7, 9})
#: Ops whose outputs are computed from their inputs value by value, or move values around: what
#: they read feeds integers when everything they produce does.
_PASS_THROUGH: Final = frozenset(
    {
        "Abs", "Add", "Ceil", "Clip", "Concat", "Div", "Expand", "Floor", "Gather", "Identity",
        "Max", "Min", "Mod", "Mul", "Neg", "Pow", "Reshape", "Round", "Slice", "Sqrt", "Squeeze",
        "Sub", "Unsqueeze",
    }
)  # fmt: skip
_COMPARISONS: Final = frozenset({"Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual"})
#: Float inputs that only decide an output's shape: Resize's roi, scales and sizes (scales at 1
#: before opset 11), Upsample's scales.
_SHAPE_INPUTS: Final = {"Resize": frozenset({1, 2, 3}), "Upsample": frozenset({1})}


def _feeding_integers(
    nodes: Sequence[_Node], constants: Iterable[str], graph_outputs: Collection[str]
) -> set[str]:
    """Values that only feed integers: shape arithmetic such as ``Cast(Shape(x)[2], FLOAT) * 0.5
    -> Cast(INT64)``, or a Resize's scales. They stay float32 when the graph runs in bf16/fp16,
    whose 8- or 11-bit mantissa would change the integers (a height of 301 would become 300)."""
    readers: dict[str, list[tuple[_Node, int]]] = {}
    for node in nodes:
        for index, name in enumerate(node.inputs):
            if name:
                readers.setdefault(name, []).append((node, index))
    found: set[str] = set()

    def integer_read(node: _Node, index: int) -> bool:
        if node.op_type == "Cast":  # (a malformed `to` is reported when the Cast is built)
            return node.attr("to") in _INTEGER_TYPES
        if node.op_type in _COMPARISONS or index in _SHAPE_INPUTS.get(node.op_type, ()):
            return True
        return node.op_type in _PASS_THROUGH and all(n in found for n in node.outputs if n)

    # A value's readers come after its producer: walking the nodes backwards decides them first.
    names = [name for node in reversed(nodes) for name in node.outputs if name]
    for name in [*names, *constants]:
        reads = readers.get(name)
        if reads and name not in graph_outputs and all(integer_read(n, i) for n, i in reads):
            found.add(name)
    return found


def _schedule(fns: Sequence[tuple[_Node, OpFn]], graph_outputs: Sequence[str]) -> list[Step]:
    """Steps in graph order, each with the values that can be dropped once it has run."""
    last_use: dict[str, int] = {}
    for index, (node, _) in enumerate(fns):
        for name in node.inputs:
            if name:
                last_use[name] = index
    keep = set(graph_outputs)
    release: dict[int, list[str]] = {}
    for name, index in last_use.items():
        if name not in keep:
            release.setdefault(index, []).append(name)
    steps = []
    for index, (node, fn) in enumerate(fns):
        # A value produced here and never read (an unused optional output) is dropped at once.
        unused = [n for n in node.outputs if n and n not in last_use and n not in keep]
        steps.append(
            Step(
                fn=fn,
                inputs=tuple(node.inputs),
                outputs=tuple(node.outputs),
                release=tuple(sorted(set(release.get(index, [])) | set(unused))),
            )
        )
    return steps


# -- nodes --------------------------------------------------------------------------------------

Builder = Callable[["_Node"], OpFn]
_BUILDERS: dict[str, Builder] = {}
#: Ops never evaluated at load time even with constant inputs.
_NOT_FOLDED: Final = frozenset({"Dropout"})


def _op(*names: str) -> Callable[[Builder], Builder]:
    def register(builder: Builder) -> Builder:
        for name in names:
            _BUILDERS[name] = builder
        return builder

    return register


@dataclass
class _Node:
    op_type: str
    domain: str
    name: str
    index: int
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any]
    opset: int
    context: Context
    constants: dict[int, Tensor] = field(default_factory=dict)
    static_shapes: dict[str, Any] = field(default_factory=dict)
    exact: bool = False
    """The node's outputs only feed integers: a float result stays float32 (see Context)."""

    @classmethod
    def parse(cls, proto: Any, index: int, opset: int, context: Context) -> _Node:
        from onnx import helper, numpy_helper

        attrs: dict[str, Any] = {}
        for attr in proto.attribute:
            value = helper.get_attribute_value(attr)
            if isinstance(value, bytes):
                value = value.decode()
            elif hasattr(value, "data_type") and hasattr(value, "dims"):  # a TensorProto
                value = _to_tensor(numpy_helper.to_array(value), value.data_type)
            attrs[attr.name] = value
        return cls(
            op_type=proto.op_type,
            domain=proto.domain,
            name=proto.name,
            index=index,
            inputs=list(proto.input),
            outputs=list(proto.output),
            attrs=attrs,
            opset=opset,
            context=context,
        )

    @property
    def label(self) -> str:
        return repr(self.name) if self.name else f"#{self.index}"

    @property
    def qualified_op(self) -> str:
        return self.op_type if self.domain in ("", "ai.onnx") else f"{self.domain}.{self.op_type}"

    @property
    def builder(self) -> Builder | None:
        if self.domain not in ("", "ai.onnx"):
            return None
        return _BUILDERS.get(self.op_type)

    def attr(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)

    def required(self, name: str) -> Any:
        """Attribute ``name``, which the operator requires: a file without it is malformed."""
        if name not in self.attrs:
            raise GraphError(
                f"node {self.label} ({self.op_type}) has no {name!r} attribute, which "
                f"{self.op_type} requires"
            )
        return self.attrs[name]

    def const(self, index: int) -> Tensor | None:
        """Input ``index`` when it is a constant known at load time, else None."""
        return self.constants.get(index)

    def const_ints(self, index: int) -> list[int] | None:
        value = self.const(index)
        return None if value is None else [int(v) for v in value.reshape(-1).tolist()]

    def has_input(self, index: int) -> bool:
        return index < len(self.inputs) and bool(self.inputs[index])

    def n_outputs(self) -> int:
        """How many outputs the node really produces (trailing omitted ones do not count)."""
        count = len(self.outputs)
        while count and not self.outputs[count - 1]:
            count -= 1
        return count

    def only_first_output(self) -> None:
        if any(self.outputs[1:]):
            raise Unsupported("only the first output is supported (the others are for training)")


def _ints(value: Tensor | None) -> list[int]:
    return [] if value is None else [int(v) for v in value.reshape(-1).tolist()]


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


# -- elementwise ----------------------------------------------------------------------------------

_UNARY: Final[dict[str, Callable[[Tensor], Tensor]]] = {
    "Relu": torch.relu,
    "Sigmoid": torch.sigmoid,
    "Tanh": torch.tanh,
    "Exp": torch.exp,
    "Log": torch.log,
    "Sqrt": torch.sqrt,
    "Abs": torch.abs,
    "Neg": torch.neg,
    "Reciprocal": torch.reciprocal,
    "Floor": torch.floor,
    "Ceil": torch.ceil,
    "Round": torch.round,  # round half to even, as ONNX
    "Erf": torch.erf,
    "Sin": torch.sin,
    "Cos": torch.cos,
    "Tan": torch.tan,
    "Asin": torch.asin,
    "Acos": torch.acos,
    "Atan": torch.atan,
    "Sinh": torch.sinh,
    "Cosh": torch.cosh,
    "Asinh": torch.asinh,
    "Acosh": torch.acosh,
    "Atanh": torch.atanh,
    "Sign": torch.sign,
    "Not": torch.logical_not,
    "IsNaN": torch.isnan,
    "Softsign": F.softsign,
    "HardSwish": F.hardswish,
    "Mish": F.mish,
}


@_op(*_UNARY)
def _unary(node: _Node) -> OpFn:
    return _UNARY[node.op_type]


@_op("Identity")
def _identity(node: _Node) -> OpFn:
    return lambda x: x


@_op("Softplus")
def _softplus(node: _Node) -> OpFn:
    # torch's softplus is linear above threshold=20, where log1p(exp(x)) == x in float32 anyway.
    return lambda x: F.softplus(x)


@_op("LeakyRelu")
def _leaky_relu(node: _Node) -> OpFn:
    alpha = float(node.attr("alpha", 0.01))
    return lambda x: F.leaky_relu(x, alpha)


@_op("Elu")
def _elu(node: _Node) -> OpFn:
    alpha = float(node.attr("alpha", 1.0))
    return lambda x: F.elu(x, alpha)


@_op("Celu")
def _celu(node: _Node) -> OpFn:
    alpha = float(node.attr("alpha", 1.0))
    return lambda x: F.celu(x, alpha)


@_op("Selu")
def _selu(node: _Node) -> OpFn:
    alpha = float(node.attr("alpha", 1.67326319217681884765625))
    gamma = float(node.attr("gamma", 1.05070102214813232421875))
    return lambda x: gamma * torch.where(x > 0, x, alpha * (torch.exp(x) - 1))


@_op("HardSigmoid")
def _hard_sigmoid(node: _Node) -> OpFn:
    alpha = float(node.attr("alpha", 0.2))
    beta = float(node.attr("beta", 0.5))
    return lambda x: torch.clamp(x * alpha + beta, 0, 1)


@_op("ThresholdedRelu")
def _thresholded_relu(node: _Node) -> OpFn:
    alpha = float(node.attr("alpha", 1.0))
    return lambda x: torch.where(x > alpha, x, torch.zeros_like(x))


@_op("Gelu")
def _gelu(node: _Node) -> OpFn:
    approximate = str(node.attr("approximate", "none"))
    if approximate not in ("none", "tanh"):
        raise Unsupported(f"approximate={approximate!r}")
    return lambda x: F.gelu(x, approximate=approximate)


@_op("PRelu")
def _prelu(node: _Node) -> OpFn:
    def prelu(x: Tensor, slope: Tensor) -> Tensor:
        # ONNX broadcasts the slope numpy-style against x. F.prelu (one fused kernel) applies a
        # per-channel slope on dim 1, which is the same thing when the slope is a scalar or has
        # shape [C, 1, ..., 1] (rank x.ndim - 1); anything else takes the general form.
        if slope.numel() == 1 or (
            x.ndim >= 2
            and slope.ndim == x.ndim - 1
            and slope.shape[0] == x.shape[1]
            and all(d == 1 for d in slope.shape[1:])
        ):
            return F.prelu(x, slope.reshape(-1))
        return torch.where(x >= 0, x, x * slope)

    return prelu


@_op("Clip")
def _clip(node: _Node) -> OpFn:
    if node.opset < 11:
        low = float(node.attr("min", -math.inf))
        high = float(node.attr("max", math.inf))
        return lambda x: torch.clamp(x, low, high)

    def clip(x: Tensor, low: Tensor | None = None, high: Tensor | None = None) -> Tensor:
        if low is not None:
            x = torch.maximum(x, low.to(x.dtype))
        if high is not None:
            x = torch.minimum(x, high.to(x.dtype))
        return x

    return clip


def _div(a: Tensor, b: Tensor) -> Tensor:
    if a.is_floating_point() or a.is_complex():
        return a / b
    return torch.div(a, b, rounding_mode="trunc")  # integer Div truncates, as in C


def _pow(a: Tensor, b: Tensor) -> Tensor:
    out = torch.pow(a, b)
    return out if out.dtype == a.dtype else out.to(a.dtype)  # ONNX: the type of the base


_BINARY: Final[dict[str, Callable[[Tensor, Tensor], Tensor]]] = {
    "Add": torch.add,
    "Sub": torch.sub,
    "Mul": torch.mul,
    "Div": _div,
    "Pow": _pow,
    "Equal": torch.eq,
    "Less": torch.lt,
    "LessOrEqual": torch.le,
    "Greater": torch.gt,
    "GreaterOrEqual": torch.ge,
    "And": torch.logical_and,
    "Or": torch.logical_or,
    "Xor": torch.logical_xor,
    "BitwiseAnd": torch.bitwise_and,
    "BitwiseOr": torch.bitwise_or,
    "BitwiseXor": torch.bitwise_xor,
}


@_op(*_BINARY)
def _binary(node: _Node) -> OpFn:
    return _BINARY[node.op_type]


@_op("Mod")
def _mod(node: _Node) -> OpFn:
    # fmod=0: the result takes the divisor's sign (Python %); fmod=1: the dividend's (C fmod).
    fn: OpFn = torch.fmod if int(node.attr("fmod", 0)) else torch.remainder
    return fn


@_op("Sum", "Mean", "Max", "Min")
def _variadic(node: _Node) -> OpFn:
    combine = {"Sum": torch.add, "Mean": torch.add, "Max": torch.maximum, "Min": torch.minimum}[
        node.op_type
    ]
    mean = node.op_type == "Mean"

    def reduce(*xs: Tensor) -> Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = combine(out, x)
        return out / len(xs) if mean else out

    return reduce


@_op("Where")
def _where(node: _Node) -> OpFn:
    fn: OpFn = torch.where
    return fn


@_op("BitShift")
def _bit_shift(node: _Node) -> OpFn:
    left = str(node.required("direction")) == "LEFT"
    fn: OpFn = torch.bitwise_left_shift if left else torch.bitwise_right_shift
    return fn


# -- linear algebra -------------------------------------------------------------------------------


@_op("MatMul")
def _matmul(node: _Node) -> OpFn:
    fn: OpFn = torch.matmul
    return fn


@_op("Gemm")
def _gemm(node: _Node) -> OpFn:
    alpha = float(node.attr("alpha", 1.0))
    beta = float(node.attr("beta", 1.0))
    trans_a = bool(node.attr("transA", 0))
    trans_b = bool(node.attr("transB", 0))

    def gemm(a: Tensor, b: Tensor, c: Tensor | None = None) -> Tensor:
        if trans_a:
            a = a.t()
        if alpha == 1.0 and beta == 1.0 and trans_b and (c is None or c.ndim <= 1):
            # One addmm kernel, the layout torch's own Linear layers use.
            return F.linear(a, b, None if c is None else c.expand(b.shape[0]))
        out = a @ (b.t() if trans_b else b)
        if alpha != 1.0:
            out = out * alpha
        if c is not None:
            out = out + (c * beta if beta != 1.0 else c)
        return out

    return gemm


@_op("Einsum")
def _einsum(node: _Node) -> OpFn:
    equation = str(node.required("equation")).replace(" ", "")
    return lambda *xs: torch.einsum(equation, *xs)


# -- convolution and normalization ----------------------------------------------------------------


def _same_pads(
    auto_pad: str,
    sizes: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
) -> list[int]:
    """ONNX ``SAME_UPPER``/``SAME_LOWER`` pads (``[begins..., ends...]``) for these input sizes."""
    begins, ends = [], []
    for size, k, s, d in zip(sizes, kernel, strides, dilations, strict=True):
        out = -(-size // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
        small = total // 2
        begin, end = (small, total - small) if auto_pad == "SAME_UPPER" else (total - small, small)
        begins.append(begin)
        ends.append(end)
    return begins + ends


def _torch_pad(pads: Sequence[int]) -> list[int]:
    """ONNX pads ``[b1, b2, ..., e1, e2, ...]`` -> F.pad's ``[bN, eN, ..., b1, e1]``."""
    n = len(pads) // 2
    out: list[int] = []
    for i in reversed(range(n)):
        out += [pads[i], pads[i + n]]
    return out


def _check_auto_pad(node: _Node) -> str:
    auto_pad = str(node.attr("auto_pad", "NOTSET"))
    if auto_pad not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
        raise Unsupported(f"auto_pad={auto_pad!r}")
    return auto_pad


_CONV: Final = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


@_op("Conv")
def _conv(node: _Node) -> OpFn:
    auto_pad = _check_auto_pad(node)
    group = int(node.attr("group", 1))
    weight = node.const(1)
    kernel = node.attr("kernel_shape") or (list(weight.shape[2:]) if weight is not None else None)
    if kernel is None:
        raise Unsupported("a weight that is not a constant and no kernel_shape attribute")
    rank = len(kernel)
    if rank not in _CONV:
        raise Unsupported(f"{rank}-D convolution")
    conv = _CONV[rank]
    strides = list(node.attr("strides") or [1] * rank)
    dilations = list(node.attr("dilations") or [1] * rank)
    pads = list(node.attr("pads") or [0] * (2 * rank))

    def run(x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            p = _same_pads(auto_pad, x.shape[2:], kernel, strides, dilations)
        elif auto_pad == "VALID":
            p = [0] * (2 * rank)
        else:
            p = pads
        if p[:rank] == p[rank:]:
            return conv(x, w, b, strides, p[:rank], dilations, group)
        return conv(F.pad(x, _torch_pad(p)), w, b, strides, 0, dilations, group)

    return run


_CONV_T: Final = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


@_op("ConvTranspose")
def _conv_transpose(node: _Node) -> OpFn:
    if _check_auto_pad(node) not in ("NOTSET", "VALID"):
        raise Unsupported("auto_pad SAME_UPPER/SAME_LOWER")
    if node.attr("output_shape") is not None:
        raise Unsupported("the output_shape attribute (give pads instead)")
    group = int(node.attr("group", 1))
    weight = node.const(1)
    kernel = node.attr("kernel_shape") or (list(weight.shape[2:]) if weight is not None else None)
    if kernel is None:
        raise Unsupported("a weight that is not a constant and no kernel_shape attribute")
    rank = len(kernel)
    if rank not in _CONV_T:
        raise Unsupported(f"{rank}-D transposed convolution")
    conv_t = _CONV_T[rank]
    strides = list(node.attr("strides") or [1] * rank)
    dilations = list(node.attr("dilations") or [1] * rank)
    pads = list(node.attr("pads") or [0] * (2 * rank))
    output_padding = list(node.attr("output_padding") or [0] * rank)

    def run(x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
        if pads[:rank] == pads[rank:]:
            return conv_t(x, w, b, strides, pads[:rank], output_padding, group, dilations)
        # Asymmetric pads: compute unpadded, then crop each side as ONNX does.
        out = conv_t(x, w, b, strides, 0, output_padding, group, dilations)
        index = [slice(None), slice(None)]
        for i in range(rank):
            index.append(slice(pads[i], out.shape[2 + i] - pads[rank + i]))
        return out[tuple(index)]

    return run


@_op("BatchNormalization")
def _batch_norm(node: _Node) -> OpFn:
    if int(node.attr("training_mode", 0)):
        raise Unsupported("training_mode=1")
    if node.opset < 9 and not int(node.attr("spatial", 1)):
        raise Unsupported("spatial=0")
    node.only_first_output()
    eps = float(node.attr("epsilon", 1e-5))

    def run(x: Tensor, scale: Tensor, bias: Tensor, mean: Tensor, var: Tensor) -> Tensor:
        return F.batch_norm(x, mean, var, scale, bias, False, 0.0, eps)

    return run


@_op("InstanceNormalization")
def _instance_norm(node: _Node) -> OpFn:
    eps = float(node.attr("epsilon", 1e-5))
    return lambda x, scale, bias: F.instance_norm(x, weight=scale, bias=bias, eps=eps)


@_op("LayerNormalization")
def _layer_norm(node: _Node) -> OpFn:
    node.only_first_output()
    axis = int(node.attr("axis", -1))
    eps = float(node.attr("epsilon", 1e-5))

    def run(x: Tensor, scale: Tensor, bias: Tensor | None = None) -> Tensor:
        shape = tuple(x.shape[_axis(axis, x.ndim) :])
        if tuple(scale.shape) == shape and (bias is None or tuple(bias.shape) == shape):
            return F.layer_norm(x, shape, scale, bias, eps)
        out = F.layer_norm(x, shape, None, None, eps) * scale
        return out if bias is None else out + bias

    return run


@_op("LRN")
def _lrn(node: _Node) -> OpFn:
    size = int(node.required("size"))
    if size % 2 == 0:
        # torch centres an even window one channel lower than ONNX does.
        raise Unsupported(f"an even size ({size})")
    alpha = float(node.attr("alpha", 1e-4))
    beta = float(node.attr("beta", 0.75))
    bias = float(node.attr("bias", 1.0))
    return lambda x: F.local_response_norm(x, size, alpha, beta, bias)


# -- pooling --------------------------------------------------------------------------------------

_MAX_POOL: Final = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG_POOL: Final = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def _pool_params(node: _Node) -> tuple[str, list[int], list[int], list[int], list[int], bool]:
    auto_pad = _check_auto_pad(node)
    kernel = list(node.required("kernel_shape"))
    rank = len(kernel)
    if rank not in _MAX_POOL:
        raise Unsupported(f"{rank}-D pooling")
    strides = list(node.attr("strides") or [1] * rank)
    pads = list(node.attr("pads") or [0] * (2 * rank))
    dilations = list(node.attr("dilations") or [1] * rank)
    ceil_mode = bool(node.attr("ceil_mode", 0))
    return auto_pad, kernel, strides, pads, dilations, ceil_mode


def _resolve_pads(
    auto_pad: str,
    x: Tensor,
    kernel: list[int],
    strides: list[int],
    pads: list[int],
    dilations: list[int],
) -> list[int]:
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return _same_pads(auto_pad, x.shape[2:], kernel, strides, dilations)
    if auto_pad == "VALID":
        return [0] * (2 * len(kernel))
    return pads


@_op("MaxPool")
def _max_pool(node: _Node) -> OpFn:
    if node.n_outputs() > 1:
        raise Unsupported("the Indices output")
    if int(node.attr("storage_order", 0)):
        raise Unsupported("storage_order=1")
    auto_pad, kernel, strides, pads, dilations, ceil_mode = _pool_params(node)
    rank = len(kernel)
    pool = _MAX_POOL[rank]

    def run(x: Tensor) -> Tensor:
        p = _resolve_pads(auto_pad, x, kernel, strides, pads, dilations)
        begins, ends = p[:rank], p[rank:]
        if begins == ends and all(2 * b <= k for b, k in zip(begins, kernel, strict=True)):
            return pool(x, kernel, strides, begins, dilations, ceil_mode)
        # Padding torch cannot express: pad with the lowest value (never the max), then pool.
        lowest = -math.inf if x.is_floating_point() else torch.iinfo(x.dtype).min
        padded = F.pad(x, _torch_pad(p), value=lowest)
        return pool(padded, kernel, strides, 0, dilations, ceil_mode)

    return run


@_op("AveragePool")
def _avg_pool(node: _Node) -> OpFn:
    auto_pad, kernel, strides, pads, dilations, ceil_mode = _pool_params(node)
    if any(d != 1 for d in dilations):
        raise Unsupported("dilations other than 1")
    rank = len(kernel)
    pool = _AVG_POOL[rank]
    count_pad = bool(node.attr("count_include_pad", 0))

    def run(x: Tensor) -> Tensor:
        p = _resolve_pads(auto_pad, x, kernel, strides, pads, dilations)
        begins, ends = p[:rank], p[rank:]
        if begins == ends and all(2 * b <= k for b, k in zip(begins, kernel, strict=True)):
            return pool(x, kernel, strides, begins, ceil_mode, count_pad)
        padded = F.pad(x, _torch_pad(p))
        total = pool(padded, kernel, strides, 0, ceil_mode, True)
        if count_pad:
            return total
        # Divide by the number of real (unpadded) elements under each window.
        ones = F.pad(torch.ones_like(x[:1, :1]), _torch_pad(p))
        return total / pool(ones, kernel, strides, 0, ceil_mode, True)

    return run


@_op("GlobalAveragePool")
def _global_avg_pool(node: _Node) -> OpFn:
    return lambda x: x.mean(dim=tuple(range(2, x.ndim)), keepdim=True)


@_op("GlobalMaxPool")
def _global_max_pool(node: _Node) -> OpFn:
    return lambda x: x.amax(dim=tuple(range(2, x.ndim)), keepdim=True)


# -- shapes and indexing --------------------------------------------------------------------------


@_op("Flatten")
def _flatten(node: _Node) -> OpFn:
    axis = int(node.attr("axis", 1))

    def run(x: Tensor) -> Tensor:
        a = _axis(axis, x.ndim)
        return x.reshape(math.prod(x.shape[:a]), math.prod(x.shape[a:]))

    return run


@_op("Reshape")
def _reshape(node: _Node) -> OpFn:
    allow_zero = bool(node.attr("allowzero", 0))
    if node.opset < 5:
        raise Unsupported("opset < 5 (shape as an attribute)")
    baked = node.const_ints(1)

    def run(x: Tensor, shape: Tensor) -> Tensor:
        target = list(baked) if baked is not None else _ints(shape)
        if not allow_zero:
            target = [x.shape[i] if d == 0 else d for i, d in enumerate(target)]
        return x.reshape(target)

    return run


@_op("Transpose")
def _transpose(node: _Node) -> OpFn:
    perm = node.attr("perm")
    return lambda x: x.permute(perm if perm is not None else list(reversed(range(x.ndim))))


def _axes_input(node: _Node, index: int, attr_until: int) -> tuple[list[int] | None, bool]:
    """Axes from the attribute (opset < ``attr_until``) or from input ``index`` (baked when
    constant). Returns (axes or None, whether they must be read from the input at run time)."""
    if node.opset < attr_until:
        axes = node.attr("axes")
        return (list(axes) if axes is not None else None), False
    if not node.has_input(index):
        return None, False
    baked = node.const_ints(index)
    return baked, baked is None


@_op("Squeeze")
def _squeeze(node: _Node) -> OpFn:
    axes, dynamic = _axes_input(node, 1, 13)

    def run(x: Tensor, axes_in: Tensor | None = None) -> Tensor:
        chosen = _ints(axes_in) if dynamic else axes
        if chosen is None:
            return x.squeeze()
        return x.squeeze(tuple(_axis(a, x.ndim) for a in chosen)) if chosen else x

    return run


@_op("Unsqueeze")
def _unsqueeze(node: _Node) -> OpFn:
    axes, dynamic = _axes_input(node, 1, 13)
    if axes is None and not dynamic:
        raise GraphError(f"Unsqueeze node {node.label} has no axes")

    def run(x: Tensor, axes_in: Tensor | None = None) -> Tensor:
        chosen = _ints(axes_in) if dynamic else axes or []
        rank = x.ndim + len(chosen)
        for a in sorted(_axis(a, rank) for a in chosen):
            x = x.unsqueeze(a)
        return x

    return run


@_op("Concat")
def _concat(node: _Node) -> OpFn:
    axis = int(node.required("axis"))
    return lambda *xs: torch.cat(xs, dim=axis)


@_op("Split")
def _split(node: _Node) -> OpFn:
    axis = int(node.attr("axis", 0))
    count = len(node.outputs)
    if node.opset < 13:
        attr = node.attr("split")
        sizes: list[int] | None = list(attr) if attr is not None else None
        dynamic = False
    else:
        sizes = node.const_ints(1) if node.has_input(1) else None
        dynamic = node.has_input(1) and sizes is None
    num_outputs = node.attr("num_outputs")

    def run(x: Tensor, split: Tensor | None = None) -> tuple[Tensor, ...]:
        chosen = _ints(split) if dynamic else sizes
        dim = x.shape[_axis(axis, x.ndim)]
        if chosen is None:
            if num_outputs is not None:  # opset 18: the last chunk may be smaller
                return tuple(torch.split(x, -(-dim // int(num_outputs)), dim=axis))
            return tuple(torch.split(x, dim // count, dim=axis))
        return tuple(torch.split(x, chosen, dim=axis))

    return run


@_op("Slice")
def _slice(node: _Node) -> OpFn:
    if node.opset < 10:
        starts_attr = list(node.required("starts"))
        ends_attr = list(node.required("ends"))
        axes_attr = node.attr("axes")

        def run_attrs(x: Tensor) -> Tensor:
            axes = list(axes_attr) if axes_attr is not None else list(range(len(starts_attr)))
            return _do_slice(x, starts_attr, ends_attr, axes, [1] * len(axes))

        return run_attrs

    baked = [node.const_ints(i) if node.has_input(i) else None for i in range(5)]

    def run(
        x: Tensor,
        starts: Tensor,
        ends: Tensor,
        axes: Tensor | None = None,
        steps: Tensor | None = None,
    ) -> Tensor:
        s = baked[1] if baked[1] is not None else _ints(starts)
        e = baked[2] if baked[2] is not None else _ints(ends)
        a = baked[3] if baked[3] is not None else (_ints(axes) if axes is not None else None)
        st = baked[4] if baked[4] is not None else (_ints(steps) if steps is not None else None)
        a = a if a is not None else list(range(len(s)))
        return _do_slice(x, s, e, a, st if st is not None else [1] * len(s))

    return run


def _do_slice(
    x: Tensor, starts: list[int], ends: list[int], axes: list[int], steps: list[int]
) -> Tensor:
    index: list[slice] = [slice(None)] * x.ndim
    flips = []
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        a = _axis(axis, x.ndim)
        # Python's slice clamping is ONNX's (huge ends, negative starts, negative steps).
        lo, hi, st = slice(start, end, step).indices(x.shape[a])
        if st > 0:
            index[a] = slice(lo, hi, st)
        else:
            flips.append((a, list(range(lo, hi, st))))
    out = x[tuple(index)]
    for a, positions in flips:  # torch slicing has no negative steps
        out = out.index_select(a, torch.tensor(positions, dtype=torch.int64, device=x.device))
    return out


@_op("Gather")
def _gather(node: _Node) -> OpFn:
    axis = int(node.attr("axis", 0))

    def run(x: Tensor, indices: Tensor) -> Tensor:
        a = _axis(axis, x.ndim)
        dim = x.shape[a]
        idx = indices.to(torch.int64)
        idx = torch.where(idx < 0, idx + dim, idx)
        picked = x.index_select(a, idx.reshape(-1))
        return picked.reshape((*x.shape[:a], *indices.shape, *x.shape[a + 1 :]))

    return run


@_op("GatherElements")
def _gather_elements(node: _Node) -> OpFn:
    axis = int(node.attr("axis", 0))

    def run(x: Tensor, indices: Tensor) -> Tensor:
        a = _axis(axis, x.ndim)
        idx = indices.to(torch.int64)
        return torch.gather(x, a, torch.where(idx < 0, idx + x.shape[a], idx))

    return run


@_op("Shape")
def _shape(node: _Node) -> OpFn:
    start = node.attr("start")
    end = node.attr("end")

    def run(x: Tensor) -> Tensor:
        dims = list(x.shape)[slice(start, end)]
        return torch.tensor(dims, dtype=torch.int64, device=x.device)

    return run


@_op("Size")
def _size(node: _Node) -> OpFn:
    return lambda x: torch.tensor(x.numel(), dtype=torch.int64, device=x.device)


@_op("Expand")
def _expand(node: _Node) -> OpFn:
    baked = node.const_ints(1)

    def run(x: Tensor, shape: Tensor) -> Tensor:
        target = baked if baked is not None else _ints(shape)
        # ONNX Expand broadcasts both ways: a target dim of 1 keeps the input's dim.
        return x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(target)))

    return run


@_op("Tile")
def _tile(node: _Node) -> OpFn:
    baked = node.const_ints(1)
    return lambda x, repeats: x.repeat(baked if baked is not None else _ints(repeats))


@_op("ConstantOfShape")
def _constant_of_shape(node: _Node) -> OpFn:
    value = node.attr("value")
    fill = value.reshape(-1)[0].item() if value is not None else 0.0
    onnx_type = _onnx_type_of(value.dtype) if value is not None else 1
    context = node.context
    exact = node.exact

    def run(shape: Tensor) -> Tensor:
        dtype = context.dtype(onnx_type, exact)
        return torch.full(_ints(shape), fill, dtype=dtype, device=shape.device)

    return run


def _onnx_type_of(dtype: torch.dtype) -> int:
    for key, value in TORCH_DTYPES.items():
        if value == dtype:
            return key
    raise Unsupported(f"tensors of type {dtype}")


@_op("Constant")
def _constant(node: _Node) -> OpFn:
    attrs = node.attrs
    if "value" in attrs:
        value = attrs["value"]
    elif "value_float" in attrs:
        value = torch.tensor(float(attrs["value_float"]), dtype=torch.float32)
    elif "value_floats" in attrs:
        value = torch.tensor(list(attrs["value_floats"]), dtype=torch.float32)
    elif "value_int" in attrs:
        value = torch.tensor(int(attrs["value_int"]), dtype=torch.int64)
    elif "value_ints" in attrs:
        value = torch.tensor(list(attrs["value_ints"]), dtype=torch.int64)
    else:
        raise Unsupported(f"a constant given as {', '.join(attrs) or 'nothing'}")
    return lambda: value


@_op("Cast")
def _cast(node: _Node) -> OpFn:
    to = int(node.required("to"))
    if to not in TORCH_DTYPES:
        raise Unsupported(f"casting to {ONNX_TYPE_NAMES.get(to, f'type {to}')}")
    context = node.context
    exact = node.exact
    return lambda x: x.to(context.dtype(to, exact))


@_op("CastLike")
def _cast_like(node: _Node) -> OpFn:
    return lambda x, like: x.to(like.dtype)


@_op("Range")
def _range(node: _Node) -> OpFn:
    def run(start: Tensor, limit: Tensor, delta: Tensor) -> Tensor:
        return torch.arange(
            start.item(), limit.item(), delta.item(), dtype=start.dtype, device=start.device
        )

    return run


_PAD_MODES: Final = ("constant", "reflect", "edge", "wrap")


@_op("Pad")
def _pad(node: _Node) -> OpFn:
    mode = str(node.attr("mode", "constant"))
    if mode not in _PAD_MODES:
        raise Unsupported(f"mode={mode!r}")
    if node.opset < 11:
        pads_attr = list(node.required("pads"))
        value_attr = float(node.attr("value", 0.0))
        return lambda x: _do_pad(x, pads_attr, None, mode, value_attr)
    baked = node.const_ints(1)
    baked_axes = node.const_ints(3) if node.has_input(3) else None

    def run(
        x: Tensor, pads: Tensor, value: Tensor | None = None, axes: Tensor | None = None
    ) -> Tensor:
        p = baked if baked is not None else _ints(pads)
        a = baked_axes if baked_axes is not None else (_ints(axes) if axes is not None else None)
        fill = value.item() if value is not None and value.numel() else 0.0
        return _do_pad(x, p, a, mode, fill)

    return run


def _do_pad(x: Tensor, pads: list[int], axes: list[int] | None, mode: str, value: Any) -> Tensor:
    if axes is not None:  # opset 18: pads for the listed axes only
        full = [0] * (2 * x.ndim)
        for i, a in enumerate(axes):
            a = _axis(a, x.ndim)
            full[a], full[a + x.ndim] = pads[i], pads[i + len(axes)]
        pads = full
    if mode != "constant":
        # F.pad's other modes pad only the last 1-3 axes of a 2-D to 5-D tensor: gather the
        # source position of every output position instead, one axis at a time.
        for axis in range(x.ndim):
            before, after = pads[axis], pads[axis + x.ndim]
            if before or after:
                source = _pad_source(x.shape[axis], before, after, mode)
                x = x.index_select(axis, source.to(x.device))
        return x
    torch_pads = _torch_pad(pads)
    # F.pad wants pairs from the last dim backwards; leading all-zero pairs may be dropped.
    while len(torch_pads) > 2 and torch_pads[-2:] == [0, 0]:
        torch_pads = torch_pads[:-2]
    return F.pad(x, torch_pads, value=value)


def _pad_source(size: int, before: int, after: int, mode: str) -> Tensor:
    """For each output position along an axis of ``size``, the input position it copies in
    ``edge``, ``wrap`` or ``reflect`` mode. Negative pads crop first, as in the spec."""
    start = max(-before, 0)
    kept = size - start - max(-after, 0)
    if kept <= 0 and (before > 0 or after > 0):
        raise ValueError(f"Pad cannot extend an axis with no elements in mode {mode!r}")
    position = torch.arange(-max(before, 0), kept + max(after, 0))
    if mode == "edge":
        source = position.clamp(0, kept - 1)
    elif mode == "wrap":
        source = position.remainder(kept)
    else:  # reflect: mirrored without repeating the border value, so the period is 2 * (kept - 1)
        period = max(2 * (kept - 1), 1)
        folded = position.remainder(period)
        source = torch.where(folded < kept, folded, period - folded)
    return source + start


@_op("DepthToSpace")
def _depth_to_space(node: _Node) -> OpFn:
    block = int(node.required("blocksize"))
    mode = str(node.attr("mode", "DCR"))

    def run(x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        if mode == "CRD":
            return F.pixel_shuffle(x, block)
        y = x.reshape(n, block, block, c // block**2, h, w).permute(0, 3, 4, 1, 5, 2)
        return y.reshape(n, c // block**2, h * block, w * block)

    return run


@_op("SpaceToDepth")
def _space_to_depth(node: _Node) -> OpFn:
    block = int(node.required("blocksize"))

    def run(x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        y = x.reshape(n, c, h // block, block, w // block, block).permute(0, 3, 5, 1, 2, 4)
        return y.reshape(n, c * block**2, h // block, w // block)

    return run


@_op("Dropout")
def _dropout(node: _Node) -> OpFn:
    if node.opset >= 12 and node.has_input(2):
        training = node.const(2)
        if training is None or bool(training.reshape(-1)[0]):
            raise Unsupported("training_mode that is not a constant false")
    with_mask = node.n_outputs() > 1

    def run(x: Tensor, ratio: Tensor | None = None, training: Tensor | None = None) -> Any:
        # Inference: the identity; the optional mask says every element was kept.
        return (x, torch.ones_like(x, dtype=torch.bool)) if with_mask else x

    return run


# -- resizing -------------------------------------------------------------------------------------

_COORDINATE_MODES: Final = (
    "half_pixel",
    "pytorch_half_pixel",
    "align_corners",
    "asymmetric",
    "half_pixel_symmetric",
)
_NEAREST_MODES: Final = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")
#: Resize-10 and Upsample, which have no nearest_mode: onnxruntime truncates the source coordinate
#: when upsampling (so does F.interpolate, whose nearest mode exports as Resize-10) and takes its
#: ceiling when downsampling.
_LEGACY_NEAREST: Final = "legacy"


@_op("Resize", "Upsample")
def _resize(node: _Node) -> OpFn:
    mode = str(node.attr("mode", "nearest"))
    if mode not in ("nearest", "linear", "bilinear", "trilinear"):
        raise Unsupported(f"mode={mode!r} (nearest and linear are supported)")
    linear = mode != "nearest"
    if node.op_type == "Upsample" or node.opset < 11:
        coordinate, nearest_mode = "asymmetric", _LEGACY_NEAREST
    else:
        coordinate = str(node.attr("coordinate_transformation_mode", "half_pixel"))
        nearest_mode = str(node.attr("nearest_mode", "round_prefer_floor"))
        if nearest_mode not in _NEAREST_MODES:
            raise Unsupported(f"nearest_mode={nearest_mode!r}")
    if coordinate not in _COORDINATE_MODES:
        raise Unsupported(f"coordinate_transformation_mode={coordinate!r}")
    if int(node.attr("antialias", 0)):
        raise Unsupported("antialias=1")
    if node.attr("axes") is not None:
        raise Unsupported("the axes attribute")
    if str(node.attr("keep_aspect_ratio_policy", "stretch")) != "stretch":
        raise Unsupported("keep_aspect_ratio_policy other than 'stretch'")
    if int(node.attr("exclude_outside", 0)):
        raise Unsupported("exclude_outside=1")
    if node.op_type == "Upsample" and node.opset < 9:
        scales_attr = [float(s) for s in node.required("scales")]
    else:
        scales_attr = None
    # Input positions: Resize-10 and Upsample-9 (X, scales); Resize-11+ (X, roi, scales, sizes).
    scales_index = 1 if (node.op_type == "Upsample" or node.opset < 11) else 2

    def run(x: Tensor, *rest: Tensor | None) -> Tensor:
        scales_t = rest[scales_index - 1] if len(rest) >= scales_index else None
        sizes_t = rest[2] if scales_index == 2 and len(rest) >= 3 else None
        in_sizes = list(x.shape)
        if scales_attr is not None:
            scales = scales_attr
        elif scales_t is not None and scales_t.numel():
            scales = [float(s) for s in scales_t.reshape(-1).tolist()]
        else:
            scales = []
        if sizes_t is not None and sizes_t.numel():
            out_sizes = _ints(sizes_t)
            scales = [o / i for o, i in zip(out_sizes, in_sizes, strict=True)]
        else:
            out_sizes = [math.floor(i * s) for i, s in zip(in_sizes, scales, strict=True)]
        # Integers are interpolated in float32 (in their own type the weights truncate to 0 and
        # uint8 differences wrap), then truncated back as onnxruntime does (a C cast; the ONNX
        # reference evaluator rounds instead, so it can be 1 higher).
        integer = linear and not (x.is_floating_point() or x.is_complex())
        out = x.float() if integer else x
        for axis in range(x.ndim):  # batch and channel axes too: the spec allows resizing them
            if out_sizes[axis] == in_sizes[axis] and scales[axis] == 1.0:
                continue
            source = _source_coordinates(
                coordinate, in_sizes[axis], out_sizes[axis], scales[axis], out.device
            )
            out = (
                _linear_along(out, axis, source)
                if linear
                else _nearest_along(out, axis, source, nearest_mode, scales[axis])
            )
        return out.to(x.dtype) if integer else out

    return run


def _source_coordinates(
    mode: str, size_in: int, size_out: int, scale: float, device: torch.device
) -> Tensor:
    """Where each output position samples the input, per ONNX's coordinate_transformation_mode
    (computed in float64, then used as float32 weights)."""
    x = torch.arange(size_out, dtype=torch.float64)
    if mode == "half_pixel":
        src = (x + 0.5) / scale - 0.5
    elif mode == "pytorch_half_pixel":
        src = (x + 0.5) / scale - 0.5 if size_out > 1 else torch.zeros_like(x)
    elif mode == "align_corners":
        src = x * ((size_in - 1) / (size_out - 1)) if size_out > 1 else torch.zeros_like(x)
    elif mode == "half_pixel_symmetric":
        adjustment = size_out / (scale * size_in)
        center = size_in / 2
        offset = center * (1 - adjustment)
        src = offset + (x + 0.5) / scale - 0.5
    else:  # asymmetric
        src = x / scale
    return src.to(device)


def _nearest_along(x: Tensor, axis: int, src: Tensor, mode: str, scale: float) -> Tensor:
    if mode == _LEGACY_NEAREST:
        idx = torch.ceil(src) if scale < 1 else torch.floor(src)  # src >= 0: floor truncates
    elif mode == "floor":
        idx = torch.floor(src)
    elif mode == "ceil":
        idx = torch.ceil(src)
    elif mode == "round_prefer_ceil":
        idx = torch.floor(src + 0.5)
    else:  # round_prefer_floor
        idx = torch.ceil(src - 0.5)
    idx = idx.clamp(0, x.shape[axis] - 1).to(torch.int64)
    return x.index_select(axis, idx)


def _linear_along(x: Tensor, axis: int, src: Tensor) -> Tensor:
    size_in = x.shape[axis]
    src = src.clamp(0, size_in - 1)
    lo = torch.floor(src).to(torch.int64)
    hi = torch.clamp(lo + 1, max=size_in - 1)
    shape = [1] * x.ndim
    shape[axis] = -1
    weight = (src - lo.to(src.dtype)).to(x.dtype).reshape(shape)
    a = x.index_select(axis, lo)
    b = x.index_select(axis, hi)
    return a + (b - a) * weight


# -- reductions and softmax -----------------------------------------------------------------------

_REDUCE_AXES_AS_INPUT: Final = {"ReduceSum": 13}  # the others moved axes to an input in opset 18

Elementwise = Callable[[Tensor], Tensor]
Reduction = Callable[[Tensor, tuple[int, ...], bool], Tensor]


def _square(x: Tensor) -> Tensor:
    return x * x


def _sum(x: Tensor, dims: tuple[int, ...], keepdim: bool) -> Tensor:
    # dtype: torch sums integers as int64; ONNX keeps the input's type.
    return x.sum(dim=dims, keepdim=keepdim, dtype=x.dtype)


def _mean(x: Tensor, dims: tuple[int, ...], keepdim: bool) -> Tensor:
    if x.is_floating_point() or x.is_complex():
        return x.mean(dim=dims, keepdim=keepdim)
    # torch has no integer mean: divide the sum and truncate toward zero, as onnxruntime does.
    count = math.prod(x.shape[d] for d in dims)
    total = x.sum(dim=dims, keepdim=keepdim, dtype=torch.int64)
    return torch.div(total, count, rounding_mode="trunc").to(x.dtype)


def _prod(x: Tensor, dims: tuple[int, ...], keepdim: bool) -> Tensor:
    out = x  # torch.prod takes one dim at a time
    for d in sorted(dims, reverse=True):
        out = out.prod(dim=d, keepdim=keepdim, dtype=x.dtype)
    return out


#: Each reduction as (elementwise step before, reduction, elementwise step after). With
#: noop_with_empty_axes=1 and no axes the spec skips the reduction only: ReduceL1 is then |x|.
_REDUCTIONS: Final[dict[str, tuple[Elementwise | None, Reduction, Elementwise | None]]] = {
    "ReduceMean": (None, _mean, None),
    "ReduceSum": (None, _sum, None),
    "ReduceMax": (None, lambda x, dims, keep: x.amax(dim=dims, keepdim=keep), None),
    "ReduceMin": (None, lambda x, dims, keep: x.amin(dim=dims, keepdim=keep), None),
    "ReduceProd": (None, _prod, None),
    "ReduceL1": (torch.abs, _sum, None),
    "ReduceL2": (_square, _sum, torch.sqrt),
    "ReduceSumSquare": (_square, _sum, None),
    "ReduceLogSumExp": (
        None,
        lambda x, dims, keep: torch.logsumexp(x, dim=dims, keepdim=keep),
        None,
    ),
}


@_op(*_REDUCTIONS)
def _reduce(node: _Node) -> OpFn:
    keepdims = bool(node.attr("keepdims", 1))
    noop_empty = bool(node.attr("noop_with_empty_axes", 0))
    axes, dynamic = _axes_input(node, 1, _REDUCE_AXES_AS_INPUT.get(node.op_type, 18))
    before, reduce, after = _REDUCTIONS[node.op_type]

    def run(x: Tensor, axes_in: Tensor | None = None) -> Tensor:
        chosen = _ints(axes_in) if dynamic else axes
        if before is not None:
            x = before(x)
        if chosen or not noop_empty:
            dims = tuple(sorted(_axis(a, x.ndim) for a in chosen or range(x.ndim)))
            x = reduce(x, dims, keepdims)
        return after(x) if after is not None else x

    return run


@_op("ArgMax", "ArgMin")
def _arg(node: _Node) -> OpFn:
    axis = int(node.attr("axis", 0))
    keepdims = bool(node.attr("keepdims", 1))
    last = bool(node.attr("select_last_index", 0))
    pick = torch.argmax if node.op_type == "ArgMax" else torch.argmin

    def run(x: Tensor) -> Tensor:
        a = _axis(axis, x.ndim)
        if not last:
            return pick(x, dim=a, keepdim=keepdims)
        flipped = pick(x.flip(a), dim=a, keepdim=keepdims)
        return x.shape[a] - 1 - flipped

    return run


@_op("Softmax", "LogSoftmax", "Hardmax")
def _softmax(node: _Node) -> OpFn:
    op = node.op_type

    def along(x: Tensor, dim: int) -> Tensor:
        if op == "Softmax":
            return torch.softmax(x, dim)
        if op == "LogSoftmax":
            return torch.log_softmax(x, dim)
        return F.one_hot(x.argmax(dim), x.shape[dim]).movedim(-1, dim).to(x.dtype)

    if node.opset >= 13:
        axis = int(node.attr("axis", -1))
        return lambda x: along(x, axis)
    legacy_axis = int(node.attr("axis", 1))

    def coerced(x: Tensor) -> Tensor:
        # Before opset 13 the input is viewed as 2-D [prod(:axis), prod(axis:)] first.
        a = _axis(legacy_axis, x.ndim)
        flat = x.reshape(math.prod(x.shape[:a]), math.prod(x.shape[a:]))
        return along(flat, 1).reshape(x.shape)

    return coerced


@_op("CumSum")
def _cumsum(node: _Node) -> OpFn:
    exclusive = bool(node.attr("exclusive", 0))
    reverse = bool(node.attr("reverse", 0))

    def run(x: Tensor, axis: Tensor) -> Tensor:
        a = _axis(int(axis.reshape(-1)[0]), x.ndim)
        y = x.flip(a) if reverse else x
        out = torch.cumsum(y, a)
        if exclusive:
            out = out - y
        return out.flip(a) if reverse else out

    return run


#: Every operator the converter reads (default ONNX domain), sorted.
SUPPORTED: Final[tuple[str, ...]] = tuple(sorted(_BUILDERS))
