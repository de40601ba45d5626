"""Read the few facts the plugin needs from a ``.tflite`` file, without the runtime.

A ``.tflite`` file is a FlatBuffer of the TFLite schema. Two facts matter before the interpreter is
built, and neither is exposed by its Python API:

- the model's ``metadata`` entries: ``reduced_precision_support`` lets XNNPACK run in fp16, which
  ``precision="fp32"`` must prevent;
- the names of its custom operators, to say which one the runtime lacks when loading fails.

tflite-runtime ships no schema code, so this is a bounds-checked reader of the few tables needed
(field numbers from ``tensorflow/compiler/mlir/lite/schema/schema.fbs``, which only ever appends).
Anything it cannot parse yields ``None``: the runtime then gives its own verdict on the file.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

#: The 4-byte file identifier every TFLite FlatBuffer carries at offset 4.
IDENTIFIER: Final = b"TFL3"

# Field numbers (vtable slots) in the schema.
_MODEL_OPERATOR_CODES: Final = 1
_MODEL_BUFFERS: Final = 4
_MODEL_METADATA: Final = 6
_OPCODE_DEPRECATED_BUILTIN: Final = 0
_OPCODE_CUSTOM_CODE: Final = 1
_OPCODE_BUILTIN: Final = 3
_METADATA_NAME: Final = 0
_METADATA_BUFFER: Final = 1
_BUFFER_DATA: Final = 0
_BUFFER_OFFSET: Final = 1
_BUFFER_SIZE: Final = 2
_CUSTOM: Final = 32  # BuiltinOperator.CUSTOM

Bytes = bytes | bytearray | memoryview | mmap.mmap


class _Malformed(Exception):
    """The bytes do not hold the table the schema promises."""


#: The metadata entry (written by unifer's converter) holding the ONNX names of the graph's input
#: and output dimensions: ``{"x": ["N", null, 8], ...}``.
DIM_NAMES_KEY: Final = "unifer_dim_names"


@dataclass(frozen=True, slots=True)
class Metadata:
    """One ``Model.metadata`` entry."""

    value: bytes
    name_offset: int
    """File offset of the entry's name bytes (for patching the name in a copy of the file)."""


@dataclass(frozen=True, slots=True)
class ModelFacts:
    metadata: dict[str, Metadata] = field(default_factory=dict)
    custom_ops: tuple[str, ...] = ()
    """Custom operator codes the model uses, in file order, without duplicates."""


class _Table:
    """A FlatBuffer table at ``pos`` in ``buf``: each accessor returns None for an absent field."""

    def __init__(self, buf: Bytes, pos: int) -> None:
        self.buf = buf
        self.pos = pos
        self.vtable = pos - _i32(buf, pos)
        self.vtable_size = _u16(buf, self.vtable)

    def _slot(self, index: int) -> int | None:
        entry = 4 + 2 * index
        if entry + 2 > self.vtable_size:
            return None  # written by an older schema: the field did not exist yet
        offset = _u16(self.buf, self.vtable + entry)
        return self.pos + offset if offset else None

    def _target(self, index: int) -> int | None:
        slot = self._slot(index)
        return None if slot is None else slot + _u32(self.buf, slot)

    def uint(self, index: int, fmt: str, default: int = 0) -> int:
        slot = self._slot(index)
        return default if slot is None else int(struct.unpack_from(fmt, self.buf, slot)[0])

    def vector(self, index: int) -> tuple[int, int] | None:
        """``(position of the first element, length)`` of a vector field."""
        start = self._target(index)
        if start is None:
            return None
        length = _u32(self.buf, start)
        if start + 4 + length > len(self.buf):
            raise _Malformed(f"vector at {start} runs past the end of the file")
        return start + 4, length

    def string(self, index: int) -> tuple[int, bytes] | None:
        vec = self.vector(index)
        if vec is None:
            return None
        start, length = vec
        return start, bytes(self.buf[start : start + length])

    def tables(self, index: int) -> Iterator[_Table]:
        vec = self.vector(index)
        if vec is None:
            return
        start, length = vec
        if start + 4 * length > len(self.buf):
            raise _Malformed(f"table vector at {start} runs past the end of the file")
        for k in range(length):
            element = start + 4 * k
            yield _Table(self.buf, element + _u32(self.buf, element))


def _u16(buf: Bytes, pos: int) -> int:
    return int(struct.unpack_from("<H", buf, pos)[0])


def _u32(buf: Bytes, pos: int) -> int:
    return int(struct.unpack_from("<I", buf, pos)[0])


def _i32(buf: Bytes, pos: int) -> int:
    return int(struct.unpack_from("<i", buf, pos)[0])


def read_facts(buf: Bytes) -> ModelFacts | None:
    """The metadata and custom operators of the TFLite model in ``buf``, or None if unreadable."""
    try:
        if len(buf) < 8 or bytes(buf[4:8]) != IDENTIFIER:
            return None
        model = _Table(buf, _u32(buf, 0))
        buffers = list(model.tables(_MODEL_BUFFERS))
        metadata: dict[str, Metadata] = {}
        for entry in model.tables(_MODEL_METADATA):
            name = entry.string(_METADATA_NAME)
            index = entry.uint(_METADATA_BUFFER, "<I")
            if name is None or index >= len(buffers):
                continue
            metadata[name[1].decode("utf-8", "replace")] = Metadata(
                _buffer_bytes(buf, buffers[index]), name[0]
            )
        custom: list[str] = []
        for code in model.tables(_MODEL_OPERATOR_CODES):
            builtin = max(
                code.uint(_OPCODE_DEPRECATED_BUILTIN, "<b"), code.uint(_OPCODE_BUILTIN, "<i")
            )
            text = code.string(_OPCODE_CUSTOM_CODE)
            if builtin == _CUSTOM and text is not None:
                op = text[1].decode("utf-8", "replace")
                if op not in custom:
                    custom.append(op)
        return ModelFacts(metadata=metadata, custom_ops=tuple(custom))
    except (_Malformed, struct.error, IndexError):
        return None


def _buffer_bytes(buf: Bytes, table: _Table) -> bytes:
    """A buffer's bytes: inline, or (models over 2 GB) at an offset after the FlatBuffer."""
    data = table.string(_BUFFER_DATA)
    if data is not None:
        return data[1]
    offset = table.uint(_BUFFER_OFFSET, "<Q")
    size = table.uint(_BUFFER_SIZE, "<Q")
    if offset > 1 and offset + size <= len(buf):
        return bytes(buf[offset : offset + size])
    return b""
