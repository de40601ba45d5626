"""Write a TFLite FlatBuffer from tensors and operators: the back end of the ONNX converter.

Uses the schema code that ai-edge-litert ships (``ai_edge_litert.schema_py_generated``, the object
API generated from the runtime's own ``schema.fbs``) and the ``flatbuffers`` builder it depends on,
so the files follow the schema of the runtime that reads them. Importing that module loads the
runtime library, so it is imported when a writer is created, never at import time.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any, Final

import numpy as np

from unifer import MissingDependencyError

#: Alignment of constant data inside the file, as TensorFlow's converter writes it: kernels may read
#: weights in place from the mapped file.
BUFFER_ALIGNMENT: Final = 16

#: numpy dtype -> TensorType name in the schema.
TENSOR_TYPES: Final[Mapping[np.dtype[Any], str]] = {
    np.dtype(np.float32): "FLOAT32",
    np.dtype(np.float16): "FLOAT16",
    np.dtype(np.float64): "FLOAT64",
    np.dtype(np.int8): "INT8",
    np.dtype(np.uint8): "UINT8",
    np.dtype(np.int16): "INT16",
    np.dtype(np.int32): "INT32",
    np.dtype(np.int64): "INT64",
    np.dtype(np.bool_): "BOOL",
}


#: Builtins that the runtime registers from a version above 1 on: it refuses version 1 of them.
_FIRST_VERSIONS: Final[Mapping[str, int]] = {
    "BROADCAST_TO": 2,  # version 1 was TensorFlow's own kernel (Flex), never TFLite's
}


def schema() -> Any:
    """The generated TFLite schema module, or a MissingDependencyError naming the install line."""
    try:
        from ai_edge_litert import schema_py_generated
    except ImportError as exc:
        raise MissingDependencyError(
            "writing .tflite files needs the TFLite schema that ai-edge-litert ships "
            "(tflite-runtime does not include it): pip install ai-edge-litert"
        ) from exc
    return schema_py_generated


class ModelWriter:
    """Collects tensors, constants and operators of one subgraph, then packs a ``.tflite`` file.

    Tensor shapes use ``-1`` for dynamic dimensions: the file stores them as ``shape_signature``
    (with 1 in ``shape``), which is what the interpreter's ``resize_tensor_input`` relies on.
    """

    def __init__(self, description: str) -> None:
        self._s = schema()
        self._description = description
        self._tensors: list[Any] = []
        self._operators: list[Any] = []
        self._opcodes: dict[tuple[int, str | None, int], int] = {}
        # Buffer 0 is the empty sentinel that every non-constant tensor points at.
        self._buffers: list[bytes | None] = [None]
        self._metadata: list[tuple[str, bytes]] = []

    # -- tensors -----------------------------------------------------------------------------------

    def tensor(self, name: str, shape: Sequence[int], dtype: np.dtype[Any] | type) -> int:
        """Add a non-constant tensor; returns its index."""
        return self._add_tensor(name, shape, np.dtype(dtype), buffer=0)

    def rename(self, tensor: int, name: str) -> None:
        """Give ``tensor`` another name (a graph output takes the name of the ONNX output)."""
        self._tensors[tensor].name = name

    def constant(self, name: str, value: np.ndarray) -> int:
        """Add a constant tensor holding ``value`` (stored little-endian, 16-byte aligned)."""
        array = np.asarray(value, order="C")  # not ascontiguousarray: it makes scalars rank 1
        data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        self._buffers.append(data)
        return self._add_tensor(name, array.shape, array.dtype, buffer=len(self._buffers) - 1)

    def _add_tensor(
        self, name: str, shape: Sequence[int], dtype: np.dtype[Any], buffer: int
    ) -> int:
        s = self._s
        if dtype not in TENSOR_TYPES:
            raise TypeError(f"TFLite has no tensor type for {dtype} (tensor {name!r})")
        tensor = s.TensorT()
        tensor.name = name
        tensor.type = getattr(s.TensorType, TENSOR_TYPES[dtype])
        tensor.buffer = buffer
        dims = [int(d) for d in shape]
        tensor.shape = [1 if d < 0 else d for d in dims]
        if any(d < 0 for d in dims):
            tensor.shapeSignature = dims
        self._tensors.append(tensor)
        return len(self._tensors) - 1

    def type_code(self, dtype: np.dtype[Any] | type) -> int:
        """The schema's TensorType number of ``dtype`` (options such as CAST's name types)."""
        return int(getattr(self._s.TensorType, TENSOR_TYPES[np.dtype(dtype)]))

    # -- operators ---------------------------------------------------------------------------------

    def op(
        self,
        builtin: str,
        inputs: Sequence[int],
        outputs: Sequence[int],
        options: str | None = None,
        **fields: object,
    ) -> None:
        """Add a builtin operator, e.g. ``op("CONV_2D", [x, w, b], [y], "Conv2DOptions", ...)``.

        ``fields`` set the options table's fields by their generated (camelCase) names, enums by
        their numbers (:meth:`type_code` for a TensorType). An input of ``-1`` is an omitted
        optional input.
        """
        s = self._s
        operator = s.OperatorT()
        version = _FIRST_VERSIONS.get(builtin, 1)
        operator.opcodeIndex = self._opcode(getattr(s.BuiltinOperator, builtin), None, version)
        operator.inputs = list(inputs)
        operator.outputs = list(outputs)
        if options is not None:
            table = getattr(s, f"{options}T")()
            for key, value in fields.items():
                if not hasattr(table, key):
                    raise AttributeError(f"{options} has no field {key!r}")
                setattr(table, key, value)
            operator.builtinOptionsType = getattr(s.BuiltinOptions, options)
            operator.builtinOptions = table
        self._operators.append(operator)

    def custom_op(
        self, code: str, inputs: Sequence[int], outputs: Sequence[int], options: bytes = b""
    ) -> None:
        """Add a custom operator ``code`` whose options are the raw ``options`` bytes."""
        operator = self._s.OperatorT()
        operator.opcodeIndex = self._opcode(self._s.BuiltinOperator.CUSTOM, code, 1)
        operator.inputs = list(inputs)
        operator.outputs = list(outputs)
        operator.customOptions = list(options)
        self._operators.append(operator)

    def _opcode(self, builtin: int, custom: str | None, version: int) -> int:
        key = (builtin, custom, version)
        if key not in self._opcodes:
            self._opcodes[key] = len(self._opcodes)
        return self._opcodes[key]

    def metadata(self, name: str, value: bytes) -> None:
        """Add a ``Model.metadata`` entry (a named buffer)."""
        self._metadata.append((name, value))

    # -- output ------------------------------------------------------------------------------------

    def finish(
        self,
        inputs: Mapping[str, int],
        outputs: Mapping[str, int],
        *,
        signature: str | None = "serving_default",
    ) -> bytes:
        """Pack the model; ``inputs``/``outputs`` map signature names to tensor indices, in order.

        With ``signature=None`` no SignatureDef is written (as in files from older converters).
        """
        s = self._s
        import flatbuffers  # a dependency of ai-edge-litert, present whenever the schema is

        model = s.ModelT()
        model.version = 3  # the schema version every current runtime reads
        model.description = self._description
        model.operatorCodes = [self._opcode_table(*key) for key in self._opcodes]
        graph = s.SubGraphT()
        graph.name = "main"
        graph.tensors = self._tensors
        graph.operators = self._operators
        graph.inputs = list(inputs.values())
        graph.outputs = list(outputs.values())
        model.subgraphs = [graph]
        buffers = list(self._buffers)
        entries = []
        for name, value in self._metadata:
            buffers.append(value)
            entry = s.MetadataT()
            entry.name = name
            entry.buffer = len(buffers) - 1
            entries.append(entry)
        model.metadata = entries or None
        model.buffers = [_buffer_table(s, data) for data in buffers]
        if signature is not None:
            definition = s.SignatureDefT()
            definition.signatureKey = signature
            definition.subgraphIndex = 0
            definition.inputs = [_tensor_map(s, n, i) for n, i in inputs.items()]
            definition.outputs = [_tensor_map(s, n, i) for n, i in outputs.items()]
            model.signatureDefs = [definition]
        builder = flatbuffers.Builder(1 << 16)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())

    def _opcode_table(self, builtin: int, custom: str | None, version: int) -> Any:
        s = self._s
        code = s.OperatorCodeT()
        code.builtinCode = builtin
        # Codes past 127 do not fit the deprecated int8 field; readers take the larger of the two.
        code.deprecatedBuiltinCode = min(
            builtin, s.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES
        )
        code.version = version
        if custom is not None:
            code.customCode = custom
        return code


def _tensor_map(s: Any, name: str, index: int) -> Any:
    entry = s.TensorMapT()
    entry.name = name
    entry.tensorIndex = index
    return entry


def _buffer_table(s: Any, data: bytes | None) -> Any:
    table = _aligned_buffer_class(s)()
    table.payload = data
    return table


@functools.cache
def _aligned_buffer_class(s: Any) -> type:
    """A BufferT whose data is written 16-byte aligned (the generated Pack aligns to 1 byte)."""

    class AlignedBuffer(s.BufferT):  # type: ignore[misc]
        payload: bytes | None = None

        def Pack(self, builder: Any) -> Any:
            data = self.payload
            vector = None
            if data is not None:
                builder.StartVector(1, len(data), BUFFER_ALIGNMENT)
                builder.head -= len(data)
                builder.Bytes[builder.head : builder.head + len(data)] = data
                vector = builder.EndVector()
            s.BufferStart(builder)
            if vector is not None:
                s.BufferAddData(builder, vector)
            return s.BufferEnd(builder)

    return AlignedBuffer
