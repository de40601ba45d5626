"""Convert an ONNX model into an ncnn ``.param`` + ``.bin`` pair with fp32 weights (numpy + onnx).

ncnn's own converters are ``onnx2ncnn`` (a C++ tool the pip wheel does not ship) and ``pnnx``
(a standalone binary in the ``pnnx`` wheel, wired in as the second route by ``_pnnx``). This module
covers the operator subset of the CNN and MLP graphs unifer ships and tests (the ArcFace IResNets,
the conformance kit's toy models), writes every weight as fp32 so the runtime's precision flags
alone decide the arithmetic, and refuses anything else with :class:`UnsupportedModel` naming the
operator (the ``"auto"`` route then hands the model to pnnx). Imports onnx lazily (the ``convert``
extra).

ncnn has no batch dimension: one ``Input`` blob holds one sample, so every ONNX tensor's first
dimension is the batch and each layer works on one sample. The supported operators all act on each
sample independently, which makes running sample by sample exact; what would move the batch from
the first axis (a constant of higher rank than the tensor it is added to) is refused, and so are
dynamic sizes beyond the batch (an ``Input`` declares the fixed size of one sample).

Facts of the formats this relies on (ncnn's ``param-and-model-file-structure`` and
``operation-param-weight-table`` docs, checked by loading the result in ncnn):

* a parameter value is read as at most 15 characters, and a float must contain ``.`` or ``e``;
* Convolution / InnerProduct weights start with a 4-byte storage tag (0 = raw fp32); their bias,
  and BatchNorm, PReLU and MemoryData data, are raw fp32 with no tag;
* each blob feeds at most one layer: a blob read by several layers goes through a ``Split``.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from unifer import MissingDependencyError, ModelLoadError

#: Bumped whenever the written files change for the same source; part of the conversion cache key.
WRITER_VERSION: Final = "3"

#: What the writer covers, for the refusal message.
COVERED: Final = (
    "Conv, BatchNormalization, PRelu, Relu, LeakyRelu, Sigmoid, Tanh, Add/Sub/Mul/Div, Flatten, "
    "Gemm, MatMul, MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool, Identity and Dropout on "
    "float32 tensors"
)
ONNX_INSTALL: Final = 'pip install "unifer-ncnn[convert]" (or: pip install onnx)'
#: How to fix input sizes that ncnn needs fixed (beyond the batch); both routes need them.
FIX_SIZES: Final = (
    "Fix those sizes in the ONNX model (e.g. python -m onnxruntime.tools.make_dynamic_shape_fixed "
    "--dim_param NAME --dim_value SIZE in.onnx out.onnx) and convert that file"
)

#: ncnn reads a name with "%255s": no whitespace, at most 255 characters (kept well below).
_NAME_OK: Final = re.compile(r"\S{1,200}")

#: ONNX elementwise binary ops -> ncnn BinaryOp op_type, and the swapped-operand variant.
_BINARY: Final = {"Add": (0, 0), "Sub": (1, 7), "Mul": (2, 2), "Div": (3, 8)}
#: ONNX unary activations -> ncnn layer type.
_UNARY: Final = {"Relu": "ReLU", "Sigmoid": "Sigmoid", "Tanh": "TanH"}

Dim = int | str | None
Param = int | float
F32 = npt.NDArray[np.float32]


@dataclass
class _Layer:
    type: str
    name: str
    bottoms: list[str]
    tops: list[str]
    params: list[tuple[int, Param]] = field(default_factory=list)
    weights: list[tuple[bool, F32]] = field(default_factory=list)
    """(with the 4-byte fp32 storage tag, data) in the order the layer loads them."""


class _Unsupported(Exception):
    """The graph uses something this converter does not translate; becomes UnsupportedModel."""


class _Unconvertible(Exception):
    """The model cannot become an ncnn model by either route (pnnx refuses it too)."""


class UnsupportedModel(ModelLoadError):
    """A valid ONNX model that uses something this writer does not translate.

    ``reason`` names it (operator and node); the backend adds where to go instead (pnnx).
    """

    def __init__(self, source: Path, reason: str) -> None:
        self.reason = reason
        super().__init__(
            f"unifer's ONNX -> ncnn writer cannot convert {source.name}: {reason}. It covers "
            f"{COVERED}"
        )


def convert(source: Path, out_dir: Path) -> Path:
    """Write ``<out_dir>/<source stem>.param`` and ``.bin`` from the ONNX file ``source``.

    Raises:
        MissingDependencyError: the onnx package is not installed.
        UnsupportedModel: the model uses an operator or form this writer does not translate.
        ModelLoadError: the file is not a readable ONNX model.
    """
    try:
        import onnx
    except ImportError as exc:
        raise MissingDependencyError(
            f"converting {source.name} to ncnn needs the onnx package, which is not installed: "
            f"{ONNX_INSTALL}"
        ) from exc
    try:
        model = onnx.load(str(source))
    except Exception as exc:  # onnx raises DecodeError, ValueError, OSError... for a bad file
        raise ModelLoadError(
            f"ncnn's ONNX converter could not read {source}: {type(exc).__name__}: {exc}. Check "
            "that the file is a complete, valid ONNX model"
        ) from exc
    try:
        layers = _Converter(onnx, model).run()
    except _Unsupported as exc:
        raise UnsupportedModel(source, str(exc)) from exc
    except _Unconvertible as exc:
        raise ModelLoadError(f"{source.name} cannot be converted to ncnn: {exc}") from exc
    param = out_dir / f"{source.stem}.param"
    _write(layers, param, param.with_suffix(".bin"))
    return param


def _write(layers: Sequence[_Layer], param: Path, weights: Path) -> None:
    blobs = {top for layer in layers for top in layer.tops}
    lines = ["7767517", f"{len(layers)} {len(blobs)}"]
    with weights.open("wb") as bin_file:
        for layer in layers:
            head = f"{layer.type:<24} {layer.name:<24} {len(layer.bottoms)} {len(layer.tops)}"
            fields = [head, *layer.bottoms, *layer.tops]
            fields += [f"{key}={_format(value)}" for key, value in layer.params]
            lines.append(" ".join(fields))
            for tagged, data in layer.weights:
                if tagged:
                    bin_file.write(b"\0\0\0\0")  # storage tag 0: raw fp32 follows
                bin_file.write(np.ascontiguousarray(data, dtype="<f4").tobytes())
    param.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _format(value: Param) -> str:
    if isinstance(value, float):
        # 9 significant digits round-trip a float32; "-1.23456789e-05" is exactly 15 characters.
        return f"{value:.8e}"
    return str(value)


class _Converter:
    """One conversion: walks the live ONNX nodes in order and emits ncnn layers."""

    def __init__(self, onnx: Any, model: Any) -> None:
        self.onnx = onnx
        # Shapes are a help: an op that needs one it cannot get says so itself.
        with contextlib.suppress(Exception):
            model = onnx.shape_inference.infer_shapes(model)
        self.graph = model.graph
        self.consts: dict[str, np.ndarray] = {
            t.name: onnx.numpy_helper.to_array(t) for t in self.graph.initializer
        }
        self.shapes: dict[str, tuple[Dim, ...]] = {}
        self.dtypes: dict[str, int] = {}
        for info in (*self.graph.input, *self.graph.output, *self.graph.value_info):
            tensor = info.type.tensor_type
            if info.type.HasField("tensor_type"):
                self.dtypes[info.name] = tensor.elem_type
                if tensor.HasField("shape"):
                    self.shapes[info.name] = tuple(_dim(d) for d in tensor.shape.dim)
        self.layers: list[_Layer] = []
        self.blob: dict[str, str] = {}  # ONNX tensor -> ncnn blob holding it
        self.layer_names: set[str] = set()
        self.blob_names: set[str] = set()
        self.readers: dict[str, list[Any]] = {}  # ONNX tensor -> live nodes reading it
        self.fused: set[str] = set()  # first outputs of nodes folded into an earlier layer
        self.graph_inputs: set[str] = set()
        self.graph_outputs: set[str] = set()

    # -- driver ------------------------------------------------------------------------------

    def run(self) -> list[_Layer]:
        graph = self.graph
        inputs = [i for i in graph.input if i.name not in self.consts]
        outputs = [o.name for o in graph.output]
        for name in [i.name for i in inputs] + outputs:
            if not _NAME_OK.fullmatch(name):
                raise _Unsupported(
                    f"input/output name {name!r} cannot be written in ncnn's text format "
                    "(no whitespace, at most 200 characters); rename it in the ONNX model"
                )
        self.graph_inputs = {i.name for i in inputs}
        self.graph_outputs = set(outputs)
        live = self.live_nodes(outputs)
        for node in live:
            for name in node.input:
                self.readers.setdefault(name, []).append(node)
        for info in inputs:
            self.add_input(info.name)
        for node in live:
            if node.output[0] not in self.fused:
                self.convert_node(node)
        for name in outputs:
            if name not in self.blob:
                raise _Unsupported(f"graph output {name!r} is a constant, which ncnn cannot output")
        self.route_outputs(outputs)
        return self.split_shared_blobs()

    def live_nodes(self, outputs: Sequence[str]) -> list[Any]:
        """The nodes the outputs depend on, in graph order (dead branches are not converted)."""
        needed = set(outputs)
        live = []
        for node in reversed(self.graph.node):
            if any(o in needed for o in node.output):
                live.append(node)
                needed.update(i for i in node.input if i)
        return live[::-1]

    def convert_node(self, node: Any) -> None:
        op = node.op_type
        if not node.name and node.output:
            node.name = node.output[0]  # errors name the node; unnamed ones by their output
        if node.domain not in ("", "ai.onnx"):
            raise _Unsupported(f"operator {node.domain}.{op} (node {node.name!r})")
        if op == "Constant":
            self.consts[node.output[0]] = self.constant_value(node)
            return
        handler: Callable[[Any], None] | None = getattr(self, f"op_{op}", None)
        if op in _BINARY:
            handler = self.binary
        elif op in _UNARY:
            handler = self.unary
        if handler is None:
            raise _Unsupported(f"operator {op} (node {node.name!r}) is not supported")
        for name in node.input:
            if name and name not in self.consts:
                self.check_float(name, node)
        handler(node)

    # -- helpers ------------------------------------------------------------------------------

    def attrs(self, node: Any) -> dict[str, Any]:
        return {a.name: self.onnx.helper.get_attribute_value(a) for a in node.attribute}

    def constant_value(self, node: Any) -> np.ndarray:
        attrs = self.attrs(node)
        if "value" in attrs:
            return np.asarray(self.onnx.numpy_helper.to_array(attrs["value"]))
        for key in ("value_float", "value_int"):
            if key in attrs:
                return np.asarray(attrs[key])
        for key in ("value_floats", "value_ints"):
            if key in attrs:
                return np.asarray(list(attrs[key]))
        raise _Unsupported(f"Constant node {node.name!r} with attributes {sorted(attrs)}")

    def check_float(self, name: str, node: Any) -> None:
        dtype = self.dtypes.get(name)
        if dtype is not None and dtype != self.onnx.TensorProto.FLOAT:
            type_name = self.onnx.TensorProto.DataType.Name(dtype).lower()
            raise _Unsupported(
                f"tensor {name!r} (read by {node.op_type} node {node.name!r}) is {type_name}; ncnn "
                "computes in float32 only"
            )

    def const(self, node: Any, index: int, what: str) -> np.ndarray:
        name = node.input[index] if index < len(node.input) else ""
        if name not in self.consts:
            raise _Unsupported(
                f"{node.op_type} node {node.name!r} needs a constant {what}, but {name!r} is "
                "computed at run time"
            )
        return self.consts[name]

    def optional_const(self, node: Any, index: int, what: str) -> np.ndarray | None:
        if index >= len(node.input) or not node.input[index]:
            return None
        return self.const(node, index, what)

    def dynamic(self, node: Any, index: int = 0) -> str:
        name = node.input[index]
        if name in self.consts:
            raise _Unsupported(
                f"{node.op_type} node {node.name!r} has a constant input {name!r} where ncnn "
                "needs a computed tensor"
            )
        if name not in self.blob:
            raise _Unsupported(f"tensor {name!r} read by node {node.name!r} is produced by no node")
        return self.blob[name]

    def shape(self, name: str, node: Any) -> tuple[Dim, ...]:
        shape = self.shapes.get(name)
        if shape is None:
            raise _Unsupported(
                f"the shape of {name!r} (node {node.name!r}) is unknown; ONNX shape inference "
                "could not determine it"
            )
        if len(shape) == 0:
            raise _Unsupported(f"{name!r} (node {node.name!r}) is a scalar; ncnn needs a batch")
        return shape

    def sample_shape(self, name: str, node: Any) -> tuple[int, ...]:
        """The fixed shape of one sample of ``name`` (its dimensions after the batch)."""
        dims = self.shape(name, node)[1:]
        if not all(isinstance(d, int) for d in dims):
            raise _Unsupported(
                f"{node.op_type} node {node.name!r} needs the fixed shape of {name!r}, which is "
                f"{_show(self.shape(name, node))}"
            )
        return tuple(int(d) for d in dims)  # type: ignore[arg-type]

    def rank(self, name: str, node: Any) -> int:
        return len(self.shape(name, node))

    @staticmethod
    def unique(used: set[str], wanted: str, fallback: str) -> str:
        """``wanted`` if ncnn can hold it and it is free in ``used`` (layer or blob names)."""
        name = wanted if _NAME_OK.fullmatch(wanted) else fallback
        base, n = name, 1
        while name in used:
            name, n = f"{base}_{n}", n + 1
        used.add(name)
        return name

    def new_blob(self, wanted: str) -> str:
        return self.unique(self.blob_names, wanted, f"blob{len(self.blob_names)}")

    def new_layer(self, wanted: str) -> str:
        return self.unique(self.layer_names, wanted, f"layer{len(self.layer_names)}")

    def top(self, onnx_name: str) -> str:
        """Allocate the ncnn blob for an ONNX tensor this node produces."""
        blob = self.new_blob(onnx_name)
        self.blob[onnx_name] = blob
        return blob

    def emit(
        self,
        kind: str,
        node: Any,
        bottoms: list[str],
        params: Iterable[tuple[int, Param]] = (),
        weights: Iterable[tuple[bool, np.ndarray]] = (),
        *,
        output: str | None = None,
    ) -> str:
        name = self.new_layer(node.name or f"{node.op_type}_{len(self.layers)}")
        out = output if output is not None else node.output[0]
        top = self.top(out)
        self.layers.append(
            _Layer(
                kind,
                name,
                bottoms,
                [top],
                list(params),
                [(tag, np.asarray(w, dtype=np.float32)) for tag, w in weights],
            )
        )
        return top

    def alias(self, node: Any) -> None:
        """Identity-like nodes: the output is the input blob; no layer is needed."""
        self.blob[node.output[0]] = self.dynamic(node)

    # -- graph ends ---------------------------------------------------------------------------

    def add_input(self, name: str) -> None:
        shape = self.shapes.get(name)
        if self.dtypes.get(name, self.onnx.TensorProto.FLOAT) != self.onnx.TensorProto.FLOAT:
            type_name = self.onnx.TensorProto.DataType.Name(self.dtypes[name]).lower()
            raise _Unsupported(f"input {name!r} is {type_name}; ncnn computes in float32 only")
        if shape is None or not 2 <= len(shape) <= 5:
            raise _Unsupported(
                f"input {name!r} has shape {_show(shape)}; ncnn needs a batch dimension followed "
                "by 1 to 4 sample dimensions"
            )
        sample = [d for d in shape[1:] if isinstance(d, int) and d > 0]
        if len(sample) != len(shape) - 1:
            # An Input without sizes would open only with the input_shapes backend option, while
            # the sizes the conversion assumed would be unknown; pnnx needs them fixed too.
            raise _Unconvertible(
                f"input {name!r} has shape {_show(shape)}, with dynamic sizes beyond the batch "
                f"dimension; ncnn declares the fixed size of one sample. {FIX_SIZES}"
            )
        # ncnn's Input params: 0=w 1=h 11=d 2=c, innermost first.
        keys = {1: (0,), 2: (1, 0), 3: (2, 1, 0), 4: (2, 11, 1, 0)}[len(sample)]
        params: list[tuple[int, Param]] = sorted(zip(keys, sample, strict=True))
        self.blob[name] = self.new_blob(name)  # an I/O name is valid, so it is kept
        self.layers.append(_Layer("Input", self.new_layer(name), [], [name], params))

    def route_outputs(self, outputs: Sequence[str]) -> None:
        """Make every graph output an unconsumed blob named as in ONNX, in the ONNX order.

        ncnn lists as outputs the blobs no layer reads, in the order they are produced. When that
        already gives the ONNX outputs in their order nothing is added; otherwise each output is
        passed through a trailing ``Noop`` layer that carries its name.
        """
        read = {b for layer in self.layers for b in layer.bottoms}
        natural = [
            top
            for layer in self.layers
            if layer.type != "Input"
            for top in layer.tops
            if top not in read
        ]
        if [self.blob[o] for o in outputs] == list(outputs) == natural:
            return
        for output in outputs:
            internal = self.blob[output]
            if output in self.graph_inputs:
                raise _Unsupported(f"graph input {output!r} is also a graph output")
            if internal != output and output in self.blob_names:
                raise _Unsupported(f"output name {output!r} clashes with a generated blob name")
            if internal == output:
                renamed = self.new_blob(f"{output}_ncnn")
                for layer in self.layers:
                    layer.tops = [renamed if t == output else t for t in layer.tops]
                    layer.bottoms = [renamed if b == output else b for b in layer.bottoms]
                for key, value in self.blob.items():
                    if value == output:
                        self.blob[key] = renamed
                internal = renamed
            self.blob_names.add(output)
            self.layers.append(
                _Layer("Noop", self.new_layer(f"{output}_output"), [internal], [output])
            )

    def split_shared_blobs(self) -> list[_Layer]:
        """Insert a ``Split`` after the producer of every blob read by more than one layer."""
        readers: dict[str, int] = {}
        for layer in self.layers:
            for blob in layer.bottoms:
                readers[blob] = readers.get(blob, 0) + 1
        result: list[_Layer] = []
        taken: dict[str, int] = {}
        for layer in self.layers:
            bottoms = []
            for blob in layer.bottoms:
                if readers[blob] > 1:
                    i = taken.get(blob, 0)
                    taken[blob] = i + 1
                    blob = f"{blob}_splitncnn_{i}"
                bottoms.append(blob)
            layer.bottoms = bottoms
            result.append(layer)
            for blob in layer.tops:
                if readers.get(blob, 0) > 1:
                    tops = [f"{blob}_splitncnn_{i}" for i in range(readers[blob])]
                    clash = self.blob_names.intersection(tops)
                    if clash:
                        raise _Unsupported(f"tensor names clash with generated names: {clash}")
                    self.blob_names.update(tops)
                    split = self.new_layer(f"splitncnn_{blob}")
                    result.append(_Layer("Split", split, [blob], tops))
        return result

    # -- operators ----------------------------------------------------------------------------

    def op_Identity(self, node: Any) -> None:
        self.alias(node)

    def op_Dropout(self, node: Any) -> None:
        # Inference: Dropout is the identity (a training_mode input that is set is refused).
        training = self.optional_const(node, 2, "training_mode")
        if training is not None and bool(training):
            raise _Unsupported(f"Dropout node {node.name!r} in training mode")
        if len(node.output) > 1 and node.output[1]:
            raise _Unsupported(f"Dropout node {node.name!r} whose mask output is used")
        self.alias(node)

    def op_Conv(self, node: Any) -> None:
        x = self.dynamic(node)
        weight = self.const(node, 1, "weight")
        bias = self.optional_const(node, 2, "bias")
        attrs = self.attrs(node)
        if weight.ndim != 4:
            raise _Unsupported(
                f"Conv node {node.name!r} is {weight.ndim - 2}-D; only 2-D convolutions convert"
            )
        cout, _, kh, kw = (int(v) for v in weight.shape)
        group = int(attrs.get("group", 1))
        dh, dw = (int(v) for v in attrs.get("dilations", (1, 1)))
        sh, sw = (int(v) for v in attrs.get("strides", (1, 1)))
        params: list[tuple[int, Param]] = [
            (0, cout), (1, kw), (11, kh), (2, dw), (12, dh), (3, sw), (13, sh),
        ]  # fmt: skip
        auto_pad = attrs.get("auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
        if auto_pad == "SAME_UPPER":
            params.append((4, -233))  # ncnn's marker for TensorFlow/ONNX SAME_UPPER padding
        elif auto_pad == "SAME_LOWER":
            params.append((4, -234))
        elif auto_pad == "NOTSET":
            top, left, bottom, right = (int(v) for v in attrs.get("pads", (0, 0, 0, 0)))
            params += [(4, left), (14, top), (15, right), (16, bottom)]
        elif auto_pad != "VALID":
            raise _Unsupported(f"Conv node {node.name!r} has auto_pad={auto_pad}")
        params += [(5, int(bias is not None)), (6, int(weight.size))]
        weights: list[tuple[bool, np.ndarray]] = [(True, weight)]
        if bias is not None:
            weights.append((False, bias.reshape(cout)))
        kind = "Convolution"
        if group != 1:
            kind = "ConvolutionDepthWise"  # ncnn's layer for every grouped convolution
            params.append((7, group))
        self.emit(kind, node, [x], params, weights)

    def op_BatchNormalization(self, node: Any) -> None:
        x = self.dynamic(node)
        attrs = self.attrs(node)
        if attrs.get("training_mode", 0) or (len(node.output) > 1 and any(node.output[1:])):
            raise _Unsupported(f"BatchNormalization node {node.name!r} in training mode")
        scale, bias, mean, var = (
            self.const(node, i, what).reshape(-1)
            for i, what in ((1, "scale"), (2, "bias"), (3, "mean"), (4, "variance"))
        )
        if self.rank(node.input[0], node) < 2:
            raise _Unsupported(f"BatchNormalization node {node.name!r} on a rank-1 tensor")
        epsilon = float(np.float32(attrs.get("epsilon", 1e-5)))
        channels = int(scale.size)
        # ncnn's BatchNorm loads slope, mean, variance, bias (raw fp32) and works on the channel
        # axis of a sample: c for 3-D/4-D samples, h for 2-D, w for 1-D, which is ONNX's axis 1.
        self.emit(
            "BatchNorm",
            node,
            [x],
            [(0, channels), (1, epsilon)],
            [(False, scale), (False, mean), (False, var), (False, bias)],
        )

    def op_PRelu(self, node: Any) -> None:
        x = self.dynamic(node)
        slope = self.const(node, 1, "slope")
        rank = self.rank(node.input[0], node)
        if slope.size == 1:
            slopes = slope.reshape(1)
        else:
            # Only a per-channel slope (ONNX axis 1) maps onto ncnn's PReLU: shape [C, 1, ...]
            # aligned to the trailing axes of a rank-`rank` input, optionally with leading 1s.
            squeezed = slope
            trailing = rank - 1
            while squeezed.ndim > trailing and squeezed.shape[0] == 1:
                squeezed = squeezed.reshape(squeezed.shape[1:])
            if squeezed.ndim != trailing or any(d != 1 for d in squeezed.shape[1:]):
                raise _Unsupported(
                    f"PRelu node {node.name!r} has a slope of shape {list(slope.shape)}; only a "
                    "scalar or per-channel slope converts"
                )
            slopes = squeezed.reshape(-1)
        self.emit("PReLU", node, [x], [(0, int(slopes.size))], [(False, slopes)])

    def unary(self, node: Any) -> None:
        self.emit(_UNARY[node.op_type], node, [self.dynamic(node)])

    def op_LeakyRelu(self, node: Any) -> None:
        alpha = float(np.float32(self.attrs(node).get("alpha", 0.01)))
        self.emit("ReLU", node, [self.dynamic(node)], [(0, alpha)])

    def binary(self, node: Any) -> None:
        op, swapped = _BINARY[node.op_type]
        a, b = node.input[0], node.input[1]
        a_const, b_const = a in self.consts, b in self.consts
        if a_const and b_const:
            raise _Unsupported(f"{node.op_type} node {node.name!r} of two constants")
        if not a_const and not b_const:
            sa, sb = self.shape(a, node), self.shape(b, node)
            # Same rank and the same sample dimensions (equal sizes or equal symbolic names):
            # ncnn's own broadcasting rules differ from ONNX's, so nothing else is converted.
            if len(sa) != len(sb) or sa[1:] != sb[1:] or None in sa[1:]:
                raise _Unsupported(
                    f"{node.op_type} node {node.name!r} combines {_show(sa)} with {_show(sb)}; "
                    "only two tensors of the same shape, or a tensor and a constant, convert"
                )
            self.emit("BinaryOp", node, [self.blob_of(a, node), self.blob_of(b, node)], [(0, op)])
            return
        tensor, constant = (b, self.consts[a]) if a_const else (a, self.consts[b])
        kind = swapped if a_const else op
        x = self.blob_of(tensor, node)
        if constant.ndim > 1 and constant.ndim > self.rank(tensor, node):
            # ONNX's result then has the constant's rank, the batch no longer first: ncnn, one
            # sample at a time, cannot produce it. (Every tensor has rank >= 1: a batch.)
            raise _Unsupported(
                f"{node.op_type} node {node.name!r} combines {tensor!r} of shape "
                f"{_show(self.shape(tensor, node))} with a constant of shape "
                f"{list(constant.shape)}, which puts dimensions in front of the batch (ncnn keeps "
                "the batch first); give the constant at most the tensor's rank"
            )
        if constant.size == 1:
            value = float(np.float32(constant.reshape(())))
            self.emit("BinaryOp", node, [x], [(0, kind), (1, 1), (2, value)])
            return
        sample = self.sample_shape(tensor, node)
        full_rank = len(sample) + 1
        if constant.ndim == full_rank:
            if constant.shape[0] != 1:
                raise _Unsupported(
                    f"{node.op_type} node {node.name!r} has a constant with a batch dimension "
                    f"of {constant.shape[0]}"
                )
            constant = constant.reshape(constant.shape[1:])
        try:
            data = np.broadcast_to(constant, sample)
        except ValueError:
            raise _Unsupported(
                f"{node.op_type} node {node.name!r}: constant of shape {list(constant.shape)} "
                f"does not broadcast to a sample of {list(sample)}"
            ) from None
        memory = self.memory_data(node, data)
        bottoms = [memory, x] if a_const else [x, memory]
        self.emit("BinaryOp", node, bottoms, [(0, op)])

    def blob_of(self, tensor: str, node: Any) -> str:
        if tensor not in self.blob:
            raise _Unsupported(
                f"tensor {tensor!r} read by node {node.name!r} is produced by no node"
            )
        return self.blob[tensor]

    def memory_data(self, node: Any, data: np.ndarray) -> str:
        """A MemoryData layer holding ``data`` (one sample's shape) for a BinaryOp."""
        keys = {1: (0,), 2: (1, 0), 3: (2, 1, 0), 4: (2, 11, 1, 0)}[data.ndim]
        params = sorted(zip(keys, (int(d) for d in data.shape), strict=True))
        name = self.new_layer(f"{node.name or node.op_type}_const")
        top = self.new_blob(f"{node.output[0]}_const")
        self.layers.append(
            _Layer("MemoryData", name, [], [top], list(params), [(False, data.astype(np.float32))])
        )
        return top

    def op_Flatten(self, node: Any) -> None:
        axis = int(self.attrs(node).get("axis", 1))
        rank = self.rank(node.input[0], node)
        if axis < 0:
            axis += rank
        if axis != 1:
            raise _Unsupported(
                f"Flatten node {node.name!r} has axis={axis}; only axis=1 (keep the batch) converts"
            )
        if rank == 2:
            self.alias(node)
        else:
            self.emit("Flatten", node, [self.dynamic(node)])

    def op_Gemm(self, node: Any) -> None:
        attrs = self.attrs(node)
        if attrs.get("transA", 0):
            raise _Unsupported(f"Gemm node {node.name!r} with transA=1")
        if self.rank(node.input[0], node) != 2:
            raise _Unsupported(f"Gemm node {node.name!r} on a tensor that is not 2-D")
        b = self.const(node, 1, "B")
        weight = b if attrs.get("transB", 0) else b.T
        weight = weight * np.float32(attrs.get("alpha", 1.0))
        c = self.optional_const(node, 2, "C")
        bias = None
        if c is not None:
            bias = self.bias_vector(node, c, weight.shape[0]) * np.float32(attrs.get("beta", 1.0))
        self.inner_product(node, self.dynamic(node), weight, bias, node.output[0])

    def op_MatMul(self, node: Any) -> None:
        if self.rank(node.input[0], node) != 2:
            raise _Unsupported(
                f"MatMul node {node.name!r} on a tensor of rank "
                f"{self.rank(node.input[0], node)}; only [batch, K] @ [K, M] converts"
            )
        b = self.const(node, 1, "right-hand side")
        if b.ndim != 2:
            raise _Unsupported(f"MatMul node {node.name!r} with a {b.ndim}-D constant")
        bias, output = None, node.output[0]
        fusion = self.bias_add(node, int(b.shape[1]))
        if fusion is not None:
            # MatMul + Add(constant vector), as exporters write nn.Linear: one InnerProduct.
            add, bias = fusion
            output = add.output[0]
            self.fused.add(output)
        self.inner_product(node, self.dynamic(node), b.T, bias, output)

    def bias_add(self, node: Any, size: int) -> tuple[Any, np.ndarray] | None:
        """The Add node that adds a constant vector to ``node``'s output alone, if there is one."""
        out = node.output[0]
        readers = self.readers.get(out, [])
        if out in self.graph_outputs or len(readers) != 1 or readers[0].op_type != "Add":
            return None
        add = readers[0]
        others = [name for name in add.input if name != out]
        if len(others) != 1 or others[0] not in self.consts:
            return None
        c = self.consts[others[0]]
        # A constant of rank 3 or more would make the Add's result wider than the MatMul's.
        if c.ndim > 2 or c.size != size or c.shape[-1] != size:
            return None
        return add, c.reshape(size).astype(np.float32)

    def bias_vector(self, node: Any, c: np.ndarray, size: int) -> np.ndarray:
        if c.size == 1:
            return np.full(size, c.reshape(()), dtype=np.float32)
        if c.size == size and c.shape[-1] == size:
            return c.reshape(size).astype(np.float32)
        raise _Unsupported(
            f"{node.op_type} node {node.name!r} has a bias of shape {list(c.shape)}; one value "
            f"per output ({size}) is needed"
        )

    def inner_product(
        self, node: Any, x: str, weight: np.ndarray, bias: np.ndarray | None, output: str
    ) -> None:
        out_features = int(weight.shape[0])
        params: list[tuple[int, Param]] = [
            (0, out_features), (1, int(bias is not None)), (2, int(weight.size)),
        ]  # fmt: skip
        weights: list[tuple[bool, np.ndarray]] = [(True, np.ascontiguousarray(weight))]
        if bias is not None:
            weights.append((False, bias))
        self.emit("InnerProduct", node, [x], params, weights, output=output)

    def pool(self, node: Any, kind: int) -> None:
        attrs = self.attrs(node)
        if self.rank(node.input[0], node) != 4:
            raise _Unsupported(f"{node.op_type} node {node.name!r}: only 2-D pooling converts")
        if len(node.output) > 1 and node.output[1]:
            raise _Unsupported(f"MaxPool node {node.name!r} whose indices output is used")
        if attrs.get("ceil_mode", 0):
            raise _Unsupported(f"{node.op_type} node {node.name!r} with ceil_mode=1")
        if any(int(d) != 1 for d in attrs.get("dilations", (1, 1))):
            raise _Unsupported(f"{node.op_type} node {node.name!r} with dilations")
        auto_pad = attrs.get("auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
        if auto_pad not in ("NOTSET", "VALID"):
            raise _Unsupported(f"{node.op_type} node {node.name!r} with auto_pad={auto_pad}")
        kh, kw = (int(v) for v in attrs["kernel_shape"])
        sh, sw = (int(v) for v in attrs.get("strides", (1, 1)))
        top, left, bottom, right = (int(v) for v in attrs.get("pads", (0, 0, 0, 0)))
        params: list[tuple[int, Param]] = [
            (0, kind), (1, kw), (11, kh), (2, sw), (12, sh),
            (3, left), (13, top), (14, right), (15, bottom),
            (5, 1),  # pad_mode 1: "valid", the floor rounding of ONNX's ceil_mode=0
        ]  # fmt: skip
        if kind == 1:
            params.append((6, int(attrs.get("count_include_pad", 0))))
        self.emit("Pooling", node, [self.dynamic(node)], params)

    def op_MaxPool(self, node: Any) -> None:
        self.pool(node, 0)

    def op_AveragePool(self, node: Any) -> None:
        self.pool(node, 1)

    def global_pool(self, node: Any, kind: int) -> None:
        if self.rank(node.input[0], node) != 4:
            raise _Unsupported(f"{node.op_type} node {node.name!r}: only 2-D pooling converts")
        # ncnn's global pooling yields one value per channel as a 1-D blob; ONNX keeps [C, 1, 1].
        pooled = self.emit(
            "Pooling",
            node,
            [self.dynamic(node)],
            [(0, kind), (4, 1)],
            output=f"{node.output[0]}_1d",
        )
        self.emit("Reshape", node, [pooled], [(0, 1), (1, 1), (2, -1)])

    def op_GlobalAveragePool(self, node: Any) -> None:
        self.global_pool(node, 1)

    def op_GlobalMaxPool(self, node: Any) -> None:
        self.global_pool(node, 0)


def _dim(d: Any) -> Dim:
    if d.HasField("dim_value"):
        return int(d.dim_value)
    if d.HasField("dim_param"):
        return str(d.dim_param)
    return None


def _show(shape: Sequence[Dim] | None) -> str:
    if shape is None:
        return "unknown"
    return "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"
