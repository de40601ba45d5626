"""Convert an ONNX model into a ``.tflite`` file, for the operators of CNNs.

This is the plugin's half of unifer's conversion (the core decides when to convert, caches the
result and checks it against the source model). It covers the operator subset of CNN classifiers,
detectors and U-Nets like unifer's built-in ArcFace IResNets, ResNet(X)-50, MobileNets, SqueezeNet
and YOLO-style heads — convolutions (dense, grouped, depthwise, transposed), BatchNormalization,
activations (GELU too, as exporters spell it with Erf), pooling, reductions, LayerNorm and
InstanceNorm, Concat/Split/Slice, Reshape, Softmax, Pad, Resize, DepthToSpace, elementwise
arithmetic, Gemm/MatMul, 1-D convolutions as one-row 2-D ones — and what fixed-length transformer
encoders, embeddings and masks add (attention's MatMul of two activations, Gather, ArgMax/TopK,
comparisons and Where, Expand/Tile; ``_ops_index``). It refuses anything else by name, with the list
of what it handles. General models (recurrent, dynamic sequence lengths or image sizes into
Shape/Resize) need a full converter (onnx2tf, litert-torch).

Subgraphs that only compute constants (weights made by ConstantOfShape, shapes passed through
Reshape/Concat/Cast, ...) are evaluated once at conversion time by onnx's reference implementation,
so the written model holds their values as plain constant tensors.

The converted model keeps the ONNX model's signature: the same input and output names, shapes
(NCHW stays NCHW) and dynamic dimensions, so it is a drop-in replacement that the core can verify
on the same feeds. Inside, TFLite's kernels want NHWC: every tensor remembers how its stored
(physical) layout maps onto the ONNX (logical) one, and a TRANSPOSE is emitted only where an
operator needs another layout — once after an NCHW input, once before Flatten or an NCHW output.
Per-channel constants (BatchNormalization folded into MUL + ADD, PRelu slopes) are laid out for the
channel's physical axis instead of transposing activations. All arithmetic stays float32: weights
are only rearranged, and a BatchNormalization's scale and shift are computed in float64 once.
An operator is written only where TFLite computes exactly what ONNX defines (pooling pads, Softmax
axes, Reshape order); where it cannot, the converter refuses the node instead of approximating.

Layout: ``_graph`` (values, layouts and tensor helpers), ``_ops_arith`` (activations, arithmetic),
``_ops_conv`` (convolutions, normalizations, pooling, fully connected), ``_ops_shape``
(reductions, resampling, shapes), ``_ops_index`` (indexing, selection, comparisons),
``_resample`` (Resize's sampling check), ``_writer`` (the FlatBuffer); this module drives them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from unifer import MissingDependencyError, ModelLoadError

from ._graph import Unsupported, Value, attributes, identity
from ._ops_arith import ELEMENTWISE, ArithmeticOps, erf_gelus
from ._ops_conv import ConvolutionOps
from ._ops_index import COMPARISONS, IndexOps
from ._ops_shape import ShapeOps

#: Bump whenever the bytes written for the same ONNX file change: it is part of the cache key.
WRITER_VERSION: Final = "7"

CONVERTER: Final = f"unifer-litert onnx->tflite {WRITER_VERSION}"

SUPPORTED_OPS: Final = (
    "Abs",
    "Add",
    "And",
    "ArgMax",
    "ArgMin",
    "AveragePool",
    "BatchNormalization",
    "Cast",
    "Ceil",
    "Clip",
    "Concat",
    "Constant",
    "Conv",
    "ConvTranspose",
    "Cos",
    "CumSum",
    "DepthToSpace",
    "Div",
    "Dropout",
    "Elu",
    "Equal",
    "Exp",
    "Expand",
    "Flatten",
    "Floor",
    "Gather",
    "Gelu",
    "Gemm",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "Greater",
    "GreaterOrEqual",
    "HardSigmoid",
    "HardSwish",
    "Identity",
    "InstanceNormalization",
    "LayerNormalization",
    "LeakyRelu",
    "Less",
    "LessOrEqual",
    "Log",
    "MatMul",
    "Max",
    "MaxPool",
    "Min",
    "Mul",
    "Neg",
    "Not",
    "Or",
    "PRelu",
    "Pad",
    "Pow",
    "Reciprocal",
    "ReduceL1",
    "ReduceL2",
    "ReduceMax",
    "ReduceMean",
    "ReduceMin",
    "ReduceProd",
    "ReduceSum",
    "ReduceSumSquare",
    "Relu",
    "Reshape",
    "Resize",
    "Shape",
    "Sigmoid",
    "Sin",
    "Slice",
    "Softmax",
    "Softplus",
    "Split",
    "Sqrt",
    "Squeeze",
    "Sub",
    "Sum",
    "Tanh",
    "Tile",
    "TopK",
    "Transpose",
    "Unsqueeze",
    "Upsample",
    "Where",
    "Xor",
)


def convert_onnx(source: Path, destination: Path) -> Path:
    """Write ``source`` (ONNX) as ``destination`` (``.tflite``) and return ``destination``."""
    try:
        import onnx
    except ImportError as exc:
        raise MissingDependencyError(
            'converting ONNX models to .tflite needs the onnx package: pip install "unifer[models]"'
            " (or: pip install onnx)"
        ) from exc
    try:
        model = onnx.load(str(source))
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as exc:  # onnx raises a zoo of types for unreadable or inconsistent files
        raise ModelLoadError(
            f"cannot convert {source} to TFLite: onnx could not read it or infer its shapes "
            f"({type(exc).__name__}: {exc}); check that the file is a complete, valid ONNX model"
        ) from exc
    try:
        data = _Converter(model, CONVERTER).run()
    except Unsupported as exc:
        raise ModelLoadError(
            f"cannot convert {source} to TFLite: {exc}. unifer's converter handles CNNs "
            f"({', '.join(SUPPORTED_OPS)}, and any node whose inputs are all constants); convert "
            "other models with onnx2tf or litert-torch and load the .tflite file they write"
        ) from exc
    destination.write_bytes(data)
    return destination


class _Converter(ArithmeticOps, ConvolutionOps, IndexOps, ShapeOps):
    """Writes the TFLite model of one ONNX graph, node by node (each operator module's
    ``_op_<OnnxType>`` handles that type)."""

    def run(self) -> bytes:
        for init in self.graph.initializer:
            array = self.numpy_helper.to_array(init)
            self.values[init.name] = Value(array.shape, array.dtype, const=array)
        inputs: dict[str, int] = {}
        for info in self.graph.input:
            if info.name in self.values:
                continue  # an initializer that old exporters also list as an input
            shape, dtype = self.info(info.name)
            tensor = self.writer.tensor(info.name, shape, dtype)
            self.values[info.name] = Value(shape, dtype, tensor, identity(len(shape)))
            inputs[info.name] = tensor
        for node in self.graph.node:
            if not node.name and node.output:
                node.name = node.output[0]  # errors name the node; unnamed ones by their output
        gelus = erf_gelus(self.graph)
        fused: set[str] = set()
        for node in self.graph.node:
            if node.name in fused:
                continue
            if node.name in gelus:  # x / sqrt(2) -> Erf -> + 1 -> * x -> * 0.5: one GELU
                x, output, chain = gelus[node.name]
                self.gelu(x, output, node.name)
                fused |= chain
                continue
            if node.domain not in ("", "ai.onnx"):
                raise Unsupported(f"operator {node.op_type} (node {node.name!r}) is not supported")
            if self.foldable(node):
                self.fold(node)
                continue
            handler = getattr(self, f"_op_{node.op_type}", None)
            if handler is None and node.op_type in ELEMENTWISE:
                handler = self.elementwise
            if handler is None and node.op_type in COMPARISONS:
                handler = self.compare
            if handler is None:
                raise Unsupported(f"operator {node.op_type} (node {node.name!r}) is not supported")
            try:
                handler(node, attributes(node))
            except KeyError as exc:  # an input no supported node produced (or a missing attribute)
                raise Unsupported(
                    f"node {node.name!r} ({node.op_type}) needs {exc.args[0]!r}, which is neither "
                    "a tensor with a value in the converted graph nor an attribute it has"
                ) from exc
        outputs: dict[str, int] = {}
        taken = set(inputs.values())
        for info in self.graph.output:
            value = self.values[info.name]
            if value.const is not None:
                raise Unsupported(f"output {info.name!r} is a constant")
            tensor = self.physical(info.name, identity(len(value.shape)))
            if tensor in taken:
                tensor = self.copy(tensor, info.name, value)
            self.writer.rename(tensor, info.name)
            taken.add(tensor)
            outputs[info.name] = tensor
        return self.writer.finish(inputs, outputs)
