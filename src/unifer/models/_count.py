"""Count an ONNX graph's parameters and FLOPs by walking it, and import onnx with a clear error.

Parameters are the elements of every initializer (what the file stores: for a model whose post-conv
BatchNorms were folded that is weights, biases, the kept BNs' four vectors and PReLU slopes).
FLOPs are 2 x the multiply-accumulates of ``Conv``, ``Gemm`` and ``MatMul`` per sample, the
convention papers and insightface use; elementwise ops (BN, PReLU, Add) are not counted. Shapes come
from ONNX shape inference run on a weightless copy of the graph, so a 261 MB model is never
serialized for it; a symbolic batch dimension counts as 1.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from .._errors import MissingDependencyError

if TYPE_CHECKING:
    import onnx

INSTALL_HINT = 'pip install "unifer[models]" (or: pip install onnx)'


def import_onnx(purpose: str) -> Any:
    """Return the ``onnx`` module, or raise an ImportError-derived unifer error with the fix."""
    try:
        import onnx
    except ImportError as exc:
        raise MissingDependencyError(
            f"{purpose} needs the onnx package, which is not installed: {INSTALL_HINT}"
        ) from exc
    return onnx


def _dims(value_info: Any) -> tuple[int, ...]:
    """Concrete dims of a value; symbolic or unknown dims (the batch) count as 1."""
    dims = value_info.type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") else 1 for d in dims)


def count(model: onnx.ModelProto) -> tuple[int, int]:
    """Return ``(parameters, flops)`` of ``model``, both computed from its graph.

    Args:
        model: Any ONNX model; its initializers may carry data or only shapes.

    Returns:
        The number of initializer elements, and 2 x the multiply-accumulates of every Conv, Gemm
        and MatMul for one sample (symbolic dimensions count as 1).
    """
    onnx = import_onnx("Counting a model's parameters and FLOPs")
    graph = model.graph
    params = sum(math.prod(t.dims) for t in graph.initializer)

    # Shape inference on a copy whose initializers are declared as shaped inputs: same shapes,
    # none of the weight bytes (infer_shapes serializes its argument to hand it to C++).
    declared = {i.name for i in graph.input}
    weightless = onnx.helper.make_graph(
        list(graph.node),
        graph.name,
        list(graph.input)
        + [
            onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
            for t in graph.initializer
            if t.name not in declared
        ],
        list(graph.output),
    )
    skeleton = onnx.helper.make_model(
        weightless, opset_imports=list(model.opset_import), ir_version=model.ir_version
    )
    inferred = onnx.shape_inference.infer_shapes(skeleton, strict_mode=True).graph
    shapes = {
        vi.name: _dims(vi)
        for vi in list(inferred.input) + list(inferred.value_info) + list(inferred.output)
    }

    macs = 0
    for node in graph.node:
        if node.op_type == "Conv":
            out = shapes[node.output[0]]
            weight = shapes[node.input[1]]  # (C_out, C_in / group, k...): MACs per output element
            macs += math.prod(out) * math.prod(weight[1:])
        elif node.op_type == "Gemm":
            attrs = {a.name: a.i for a in node.attribute}
            a, b = shapes[node.input[0]], shapes[node.input[1]]
            m, k = (a[1], a[0]) if attrs.get("transA", 0) else a
            n = b[0] if attrs.get("transB", 0) else b[1]
            macs += m * k * n
        elif node.op_type == "MatMul":
            k = shapes[node.input[0]][-1]
            macs += math.prod(shapes[node.output[0]]) * k
    return params, 2 * macs
