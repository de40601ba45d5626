"""Which ONNX -> ncnn route converts a model, and the record of the route that did.

Two routes write the same kind of result (a ``.param`` + ``.bin`` with fp32 weights, ONNX input and
output names): unifer's own pure-Python writer (``_onnx2ncnn``) and ncnn's ``pnnx`` converter
(``_pnnx``). ``backend_options={"ncnn": {"converter": ...}}`` picks one; ``"auto"`` (the default)
takes the writer when it supports every operator of the model, else pnnx.

A conversion leaves ``<stem>.converter.json`` beside its ``.param`` (inside the conversion's own
directory in unifer's cache), saying which route wrote it. The session reports it in
``settings["converted_by"]``; the conversion cache key names the route
(``NcnnBackend.converter_version``), so a cached conversion by one route never serves another.
Pure Python: no ncnn, no onnx (the source's input shapes are read from its protobuf directly).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Final, Literal

from unifer import UnsupportedOptionError
from unifer._onnx_io import read_graph_io

Route = Literal["auto", "unifer", "pnnx"]
ROUTES: Final[tuple[Route, ...]] = ("auto", "unifer", "pnnx")
OPTION: Final = "converter"
RECORD_SUFFIX: Final = ".converter.json"
#: The record's key for the source's declared input shapes.
INPUTS: Final = "source_inputs"


def route(extra: Mapping[str, object]) -> Route:
    """The route ``backend_options`` asks for; raises UnsupportedOptionError for a bad value."""
    value = extra.get(OPTION, "auto")
    if value not in ROUTES:
        raise UnsupportedOptionError(
            f"backend option {OPTION!r} must be one of {', '.join(map(repr, ROUTES))}, got "
            f"{value!r}: 'unifer' is unifer's own ONNX -> ncnn writer, 'pnnx' is ncnn's pnnx "
            "converter, 'auto' the writer when it supports the model, else pnnx"
        )
    return value


def record_path(param: Path) -> Path:
    """Where the record of the conversion that wrote ``param`` lives: ``<stem>.converter.json``."""
    return param.with_suffix(RECORD_SUFFIX)


def write_record(param: Path, record: Mapping[str, object], source: Path) -> None:
    """Record which route wrote ``param`` (``record`` holds at least ``route`` and ``converter``)
    from the ONNX file ``source``, and the shapes ``source`` declares for its inputs.

    ncnn has no batch dimension and pnnx's ``.param`` declares no input sizes: the session reads
    both back from here (a fixed batch of 1 stays fixed, the sizes need no ``input_shapes``).
    Written into the conversion's private output directory, which the core publishes whole.
    """
    inputs = {info.name: list(info.shape or ()) for info in read_graph_io(source).inputs}
    text = json.dumps({**record, INPUTS: inputs}, indent=2)
    record_path(param).write_text(text + "\n", encoding="utf-8")


def declared_inputs(record: Mapping[str, object] | None) -> dict[str, list[int | str | None]]:
    """The source's input shapes in a conversion ``record`` (none in records of older writers)."""
    inputs = record.get(INPUTS) if record is not None else None
    if not isinstance(inputs, dict):
        return {}
    return {
        str(name): dims
        for name, dims in inputs.items()
        if isinstance(dims, list) and all(d is None or isinstance(d, (int, str)) for d in dims)
    }


def read_record(param: Path) -> dict[str, object] | None:
    """The record beside ``param``, or None for a .param that no unifer conversion wrote."""
    try:
        data = json.loads(record_path(param).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("route") not in ROUTES[1:]:
        return None
    return data
