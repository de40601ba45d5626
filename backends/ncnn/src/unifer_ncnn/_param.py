"""Read the graph structure of an ncnn ``.param`` text file: layers, inputs with shapes, outputs.

ncnn's own loader only answers "0" or "-1" (and prints the reason to stderr), and its Python
binding does not expose the ``Input`` layers' declared shapes, so the plugin parses the text itself:
to name what is wrong with a broken file, and to know each input's shape. Pure Python, no ncnn.

The format (``docs/developer-guide/param-and-model-file-structure.md`` in ncnn)::

    7767517                                   magic
    <layer count> <blob count>
    <type> <name> <#inputs> <#outputs> <input blobs...> <output blobs...> <key=value ...>
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

MAGIC: Final = "7767517"

#: ``Input`` layer parameter ids: 0=w, 1=h, 11=d, 2=c (ncnn's operation-param-weight-table).
_W, _H, _D, _C = 0, 1, 11, 2


@dataclass(frozen=True, slots=True)
class Layer:
    """One layer line."""

    type: str
    name: str
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    params: dict[int, str]
    """Raw ``key=value`` strings, arrays included (``-23300`` keys) as written."""


@dataclass(frozen=True, slots=True)
class Graph:
    """The parsed file; shapes are per sample, outermost first: (c, h, w), (h, w), (w,)..."""

    layers: tuple[Layer, ...]
    inputs: tuple[tuple[str, tuple[int, ...] | None], ...]
    """Each ``Input`` layer's blob and its declared shape, or ``None`` when it declares none."""
    outputs: tuple[str, ...]
    """Blobs that no layer consumes (``Input`` blobs aside), in the order the file produces them."""


def read(path: Path) -> Graph:
    """Parse ``path``; raises ``ValueError`` naming the line for anything ncnn would reject."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(
            "it is not a text file (a binary .param.bin is not supported; use the text .param)"
        ) from exc
    return parse(text)


def parse(text: str) -> Graph:
    """Parse the text of a ``.param`` file; see :func:`read`."""
    lines = [(number, line.split()) for number, line in enumerate(text.splitlines(), 1)]
    lines = [(number, tokens) for number, tokens in lines if tokens]
    if not lines or lines[0][1] != [MAGIC]:
        raise ValueError(f"the first line must be the magic number {MAGIC}")
    if len(lines) < 2 or len(lines[1][1]) != 2 or not all(_is_int(t) for t in lines[1][1]):
        raise ValueError("line 2 must hold the layer count and the blob count")
    layer_count, blob_count = (int(t) for t in lines[1][1])
    body = lines[2:]
    if len(body) != layer_count:
        raise ValueError(
            f"the header declares {layer_count} layers but the file has {len(body)} layer lines "
            "(truncated or edited?)"
        )
    layers = tuple(_layer(number, tokens) for number, tokens in body)

    producer: dict[str, str] = {}
    consumed: set[str] = set()
    names: set[str] = set()
    for layer in layers:
        if layer.name in names:
            raise ValueError(f"layer name {layer.name!r} is used twice")
        names.add(layer.name)
        for blob in layer.bottoms:
            if blob not in producer:
                raise ValueError(
                    f"layer {layer.name!r} reads blob {blob!r} before any layer produces it"
                )
            consumed.add(blob)
        for blob in layer.tops:
            if blob in producer:
                raise ValueError(
                    f"blob {blob!r} is produced by both {producer[blob]!r} and {layer.name!r}"
                )
            producer[blob] = layer.name
    if len(producer) > blob_count:
        raise ValueError(
            f"the header declares {blob_count} blobs but the layers produce {len(producer)}"
        )
    inputs = tuple(
        (layer.tops[0], _input_shape(layer))
        for layer in layers
        if layer.type == "Input" and len(layer.tops) == 1
    )
    # An Input blob nobody reads is an unused input, not an output.
    outputs = tuple(
        blob
        for layer in layers
        if layer.type != "Input"
        for blob in layer.tops
        if blob not in consumed
    )
    return Graph(layers, inputs, outputs)


def _layer(number: int, tokens: list[str]) -> Layer:
    if len(tokens) < 4 or not (_is_int(tokens[2]) and _is_int(tokens[3])):
        raise ValueError(
            f"line {number} is not a layer line (type, name, input count, output count, blobs, "
            f"params): {' '.join(tokens)[:120]!r}"
        )
    n_in, n_out = int(tokens[2]), int(tokens[3])
    end = 4 + n_in + n_out
    if n_in < 0 or n_out < 0 or len(tokens) < end:
        raise ValueError(
            f"line {number} ({tokens[0]} {tokens[1]}) declares {n_in} input and {n_out} output "
            f"blobs but names only {max(len(tokens) - 4, 0)}"
        )
    params: dict[int, str] = {}
    for token in tokens[end:]:
        key, sep, value = token.partition("=")
        if not sep or not _is_int(key) or not value:
            raise ValueError(f"line {number} ({tokens[1]}): {token!r} is not a key=value parameter")
        params[int(key)] = value
    return Layer(
        type=tokens[0],
        name=tokens[1],
        bottoms=tuple(tokens[4 : 4 + n_in]),
        tops=tuple(tokens[4 + n_in : end]),
        params=params,
    )


def _input_shape(layer: Layer) -> tuple[int, ...] | None:
    def dim(key: int) -> int:
        value = layer.params.get(key, "0")
        if not _is_int(value):
            raise ValueError(f"Input layer {layer.name!r} has a non-integer size {key}={value}")
        return int(value)

    w, h, d, c = dim(_W), dim(_H), dim(_D), dim(_C)
    if min(w, h, d, c) < 0:
        raise ValueError(f"Input layer {layer.name!r} declares a negative size")
    if c > 0 and d > 0:
        return (c, d, h, w) if h > 0 and w > 0 else None
    if c > 0:
        return (c, h, w) if h > 0 and w > 0 else None
    if h > 0:
        return (h, w) if w > 0 else None
    if w > 0:
        return (w,)
    return None


def _is_int(token: str) -> bool:
    return token.lstrip("-").isdigit()
