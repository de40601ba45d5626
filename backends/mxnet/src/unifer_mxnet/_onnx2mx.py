"""Convert an ONNX model into an MXNet checkpoint with ``mxnet.contrib.onnx``.

mxnet 1.9.1's importer predates ONNX opset 14+ exporters, so a copy of the graph is adjusted in
memory first (the source file is only read):

1. initializers become graph inputs too (the importer only knows tensors listed as inputs, which
   ONNX has not required since IR version 4);
2. ``BatchNormalization`` loses its ``training_mode`` attribute (opset 14; the importer passes
   every attribute on to MXNet, which rejects it); ``training_mode=1`` is refused. A missing
   ``epsilon`` is written out as ONNX's default, 1e-5: the importer would leave MXNet's own
   default, 1e-3, which moves outputs by ~3e-3 relative;
3. a ``PRelu`` slope of shape ``[C, 1, 1]`` becomes ``[C]`` (MXNet's ``LeakyReLU(act_type=
   "prelu")`` wants one slope per channel);
4. a ``Conv`` without ``kernel_shape`` gets it from its weight (optional in ONNX, required by the
   importer).

After the import, parameters get back their ONNX dtypes (the importer makes every one float32, so
an int64 constant would lose its type), each input is declared with its ONNX shape, dtype and
position, and each output is named after its ONNX output; ``_session`` reads those back.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from unifer import MissingDependencyError, ModelLoadError, UniferError

if TYPE_CHECKING:
    import onnx

#: Bumped whenever the written files change for the same source; part of the conversion cache key.
FIXES_VERSION: Final = "1"
CONVERT_INSTALL: Final = 'pip install "unifer-mxnet[convert]"'
INPUT_INDEX: Final = "__unifer_input__"
OUTPUT_NAME: Final = "__unifer_name__"


def _require_onnx() -> None:
    if importlib.util.find_spec("onnx") is None:
        raise MissingDependencyError(
            f"converting ONNX to MXNet needs the onnx package, which is not installed: "
            f"{CONVERT_INSTALL}"
        )


def read(source: Path) -> onnx.ModelProto:
    """Load ``source``; a file onnx cannot parse is a ModelLoadError naming it."""
    _require_onnx()
    import onnx

    try:
        model: onnx.ModelProto = onnx.load(str(source))
    except Exception as exc:  # onnx raises DecodeError, ValueError, OSError... for a bad file
        raise ModelLoadError(
            f"could not read {source.name} as an ONNX model: {type(exc).__name__}: {exc}. Check "
            "that the file is a complete ONNX model"
        ) from exc
    return model


def fix_graph(model: onnx.ModelProto, source: Path) -> onnx.ModelProto:
    """A copy of ``model`` with the fixes of the module docstring applied."""
    _require_onnx()
    import onnx
    from onnx import helper, numpy_helper

    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    graph = fixed.graph
    initializers = {t.name: t for t in graph.initializer}
    consumers: dict[str, set[str]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, set()).add(node.op_type)

    for node in graph.node:
        attributes = {a.name: a for a in node.attribute}
        if node.op_type == "BatchNormalization" and "training_mode" in attributes:
            if helper.get_attribute_value(attributes["training_mode"]):
                raise ModelLoadError(
                    f"{source.name}: BatchNormalization node {node.name!r} has training_mode=1 "
                    "(batch statistics), which mxnet.contrib.onnx cannot import; export the model "
                    "for inference (model.eval() before torch.onnx.export)"
                )
            kept = [a for a in node.attribute if a.name != "training_mode"]
            del node.attribute[:]
            node.attribute.extend(kept)
        if node.op_type == "BatchNormalization" and "epsilon" not in attributes:
            node.attribute.append(helper.make_attribute("epsilon", 1e-5))  # ONNX's default
        if node.op_type == "PRelu" and node.input[1] in initializers:
            slope = initializers[node.input[1]]
            value = numpy_helper.to_array(slope)
            if value.ndim > 1 and value.size == max(value.shape):
                flat = numpy_helper.from_array(value.reshape(-1), slope.name)
                if consumers[slope.name] != {"PRelu"}:  # shared with another op: keep its shape
                    flat.name = f"{slope.name}_unifer_prelu_slope"
                    node.input[1] = flat.name
                    graph.initializer.append(flat)
                    initializers[flat.name] = flat
                else:
                    slope.CopyFrom(flat)
        if node.op_type == "Conv" and "kernel_shape" not in attributes:
            weight = initializers.get(node.input[1])
            if weight is not None:
                node.attribute.append(helper.make_attribute("kernel_shape", list(weight.dims[2:])))

    listed = {i.name for i in graph.input}
    for tensor in graph.initializer:
        if tensor.name in listed:  # an input with a default: keep its declaration, refresh shape
            for declared in graph.input:
                if declared.name == tensor.name:
                    declared.CopyFrom(
                        helper.make_tensor_value_info(
                            tensor.name, tensor.data_type, list(tensor.dims)
                        )
                    )
        else:
            graph.input.append(
                helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims))
            )
    return fixed


def convert(model: onnx.ModelProto, source: Path, out_dir: Path) -> Path:
    """Import ``model`` (read from ``source``) and save it as ``<stem>-symbol.json`` + ``-0000``.

    mxnet must already be imported (``unifer_mxnet`` does it with the thread settings applied).
    """
    import mxnet as mx
    from mxnet.contrib.onnx.onnx2mx.import_onnx import GraphProto
    from onnx import helper, numpy_helper

    fixed = fix_graph(model, source)
    graph = fixed.graph
    opset = max((o.version for o in fixed.opset_import if o.domain in ("", "ai.onnx")), default=0)
    initial = {t.name: t for t in graph.initializer}
    data_inputs = [i for i in graph.input if i.name not in initial]
    try:
        symbol, arg_params, aux_params = GraphProto().from_onnx(graph, opset)
    except UniferError:
        raise
    except Exception as exc:  # the importer raises NotImplementedError, KeyError, MXNetError...
        raise ModelLoadError(
            f"mxnet.contrib.onnx (mxnet {mx.__version__}) cannot convert {source.name}: "
            f"{type(exc).__name__}: {exc}. Its importer covers the common CNN operators of "
            "opsets up to ~13; use another backend for this model"
        ) from exc

    heads = [symbol[i] for i in range(len(symbol.list_outputs()))]
    if len(heads) != len(graph.output):
        raise ModelLoadError(
            f"mxnet.contrib.onnx produced {len(heads)} outputs for the {len(graph.output)} of "
            f"{source.name}; this model cannot be converted to MXNet faithfully"
        )
    outputs = mx.sym.Group(
        [
            mx.sym.identity(head, name=f"unifer_output{i}", attr={OUTPUT_NAME: declared.name})
            for i, (head, declared) in enumerate(zip(heads, graph.output, strict=True))
        ]
    )
    arguments = set(outputs.list_arguments())
    variables = {}
    for index, declared in enumerate(data_inputs):
        if declared.name not in arguments:
            continue  # an input no output depends on: MXNet has no use for it
        tensor = declared.type.tensor_type
        dims = tuple(d.dim_value if d.dim_value > 0 else 0 for d in tensor.shape.dim)
        variables[declared.name] = mx.sym.var(
            declared.name,
            shape=dims,
            dtype=helper.tensor_dtype_to_np_dtype(tensor.elem_type),
            attr={INPUT_INDEX: str(index)},
        )
    outputs = outputs(**variables)

    def restore(params: dict[str, Any], keep: set[str]) -> dict[str, Any]:
        restored = {}
        for name, value in params.items():
            if name not in keep:
                continue
            original = initial.get(name)
            if original is not None:
                array = numpy_helper.to_array(original)
                if array.dtype != np.float32 and array.size == value.size:
                    value = mx.nd.array(array.reshape(value.shape), dtype=array.dtype)
            restored[name] = value
        return restored

    arg_params = restore(arg_params, set(outputs.list_arguments()))
    aux_params = restore(aux_params, set(outputs.list_auxiliary_states()))
    prefix = out_dir / source.stem
    mx.model.save_checkpoint(str(prefix), 0, outputs, arg_params, aux_params)
    return out_dir / f"{source.stem}-symbol.json"
