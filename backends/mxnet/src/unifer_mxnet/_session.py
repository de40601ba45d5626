"""Open an MXNet checkpoint (``-symbol.json`` + ``-NNNN.params``) and run it, one call at a time.

The only module of the plugin that imports mxnet at the top; ``unifer_mxnet`` imports it (through
``_threads``, which applies ``threads=`` first) only when a model is opened.

MXNet binds an executor to fixed input shapes: the session binds one per input-shape signature,
all sharing the same weight arrays, and keeps the most recent few. Executors are not thread-safe,
and neither is MXNet's Python frontend across executors (NDArray copies and engine pushes from
several Python threads), so every bind and run in the process goes through one lock; outputs are
copied out (``asnumpy()``) inside it, so the caller owns them.
"""

from __future__ import annotations

import ast
import contextlib
import difflib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, Final

import mxnet as mx
import numpy as np
from mxnet.base import MXNetError
from mxnet.ndarray.ndarray import _DTYPE_MX_TO_NP

from unifer import InferenceError, ModelLoadError, UnsupportedOptionError
from unifer.backend import SessionOptions, TensorSpec, refuse_empty, translate_errors

from ._checkpoint import Checkpoint
from ._threads import MXNET_LOCK

NAME: Final = "mxnet"
#: Set on nodes by this plugin's ONNX converter: an input's position in the ONNX graph, and the
#: ONNX name of an output (MXNet would call it "<node>_output").
INPUT_INDEX: Final = "__unifer_input__"
OUTPUT_NAME: Final = "__unifer_name__"
#: Bound executors kept per session (one per input-shape signature).
MAX_EXECUTORS: Final = 8

#: One lock for every MXNet call of the process (see the module docstring).
_LOCK: Final = MXNET_LOCK

Shape = tuple[int, ...]


def runtime_version() -> str:
    return str(mx.__version__)


def _dims(text: str | None) -> tuple[int | None, ...] | None:
    """``"(0, 3, 112, 112)"`` -> ``(None, 3, 112, 112)``: MXNet writes 0 for an unknown dim."""
    if text is None:
        return None
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None
    if not isinstance(value, (tuple, list)) or not all(isinstance(d, int) for d in value):
        return None
    return tuple(d if d > 0 else None for d in value)


def _concrete(dims: Sequence[object], fill: int) -> Shape:
    """A shape to bind: each dynamic dimension (None) becomes ``fill``."""
    return tuple(d if isinstance(d, int) else fill for d in dims)


class MXNetSession:
    """One loaded checkpoint; ``run`` binds (or reuses) the executor for the feeds' shapes."""

    def __init__(
        self,
        symbol: mx.sym.Symbol,
        arg_params: dict[str, mx.nd.NDArray],
        aux_params: dict[str, mx.nd.NDArray],
        inputs: tuple[TensorSpec, ...],
        outputs: tuple[TensorSpec, ...],
        settings: Mapping[str, object],
    ) -> None:
        self._symbol: mx.sym.Symbol | None = symbol
        self._args = arg_params
        self._aux = aux_params
        self._inputs = inputs
        self._outputs = outputs
        self._input_names = tuple(s.name for s in inputs)
        self._output_names = tuple(s.name for s in outputs)
        self._settings = dict(settings)
        self._executors: OrderedDict[tuple[Shape, ...], Any] = OrderedDict()

    @classmethod
    def open(
        cls, checkpoint: Checkpoint, options: SessionOptions, threads: Mapping[str, object]
    ) -> MXNetSession:
        """Load the checkpoint, work out its inputs and outputs, and bind it once."""
        with _LOCK:  # loading goes through the same frontend as running (module docstring)
            return cls._open(checkpoint, options, threads)

    @classmethod
    def _open(
        cls, checkpoint: Checkpoint, options: SessionOptions, threads: Mapping[str, object]
    ) -> MXNetSession:
        with translate_errors(NAME, MXNetError, ValueError, OSError, model=checkpoint.symbol):
            symbol = mx.sym.load(str(checkpoint.symbol))
        with translate_errors(NAME, MXNetError, ValueError, OSError, model=checkpoint.params):
            saved = mx.nd.load(str(checkpoint.params))
        if isinstance(saved, list) and not saved:
            saved = {}  # a model without parameters: MXNet loads its empty file as an empty list
        if not isinstance(saved, dict):
            raise ModelLoadError(
                f"{checkpoint.params.name} holds a list of unnamed arrays, not the named "
                "parameters of a checkpoint; save it with mx.model.save_checkpoint or "
                "HybridBlock.export"
            )
        symbol = _select_outputs(symbol, options.extra.get("outputs"))
        arg_params, aux_params = _split_params(symbol, saved)
        given = options.extra.get("input_shapes")
        specs = _input_specs(symbol, arg_params, checkpoint, given)
        with translate_errors(NAME, MXNetError, model=checkpoint.symbol):
            try:
                outputs = _output_specs(symbol, specs, arg_params, aux_params)
            except MXNetError as exc:
                if given is None:
                    raise
                # The shapes the caller gave are the likelier culprit than the file.
                raise UnsupportedOptionError(
                    f"MXNet cannot run {checkpoint.symbol.name} with backend option input_shapes="
                    f"{given!r}: {_mxnet_reason(exc)}. Check those shapes (the full shape of each "
                    "input, batch first, None for a dynamic dimension)"
                ) from exc
        settings: dict[str, object] = {
            "device": "cpu",
            "precision": "fp32",
            **threads,
            "epoch": checkpoint.epoch,
            "params": checkpoint.params.name,
            "epochs_available": list(checkpoint.epochs),
            "mkldnn": bool(mx.runtime.Features().is_enabled("MKLDNN")),
            "concurrency": "one run at a time per process (MXNet's API is not thread-safe)",
            "runtime_version": runtime_version(),
        }
        session = cls(symbol, arg_params, aux_params, specs, outputs, settings)
        # Bind once now (dynamic dimensions at 1), so a graph MXNet cannot execute fails at load.
        with translate_errors(NAME, MXNetError, model=checkpoint.symbol):
            session._executor(symbol, tuple(_concrete(s.shape, 1) for s in specs))
        return session

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
        for name in self._input_names:
            refuse_empty("MXNet", name, feeds[name], "its shapes read a 0 as unknown")
        with _LOCK:
            symbol = self._symbol
            if symbol is None:
                raise InferenceError(
                    "this MXNet session is closed; open the model again to run it", backend=NAME
                )
            with translate_errors(NAME, MXNetError):
                shapes = tuple(feeds[n].shape for n in self._input_names)
                executor = self._executor(symbol, shapes)
                for name in self._input_names:
                    executor.arg_dict[name][:] = feeds[name]  # a synchronous copy in
                executor.forward(is_train=False)
                # asnumpy() waits for the result and copies it: the caller owns what it gets.
                results = [output.asnumpy() for output in executor.outputs]
        return dict(zip(self._output_names, results, strict=True))

    def close(self) -> None:
        with _LOCK:
            self._symbol = None
            self._executors.clear()
            self._args = {}
            self._aux = {}

    def _executor(self, symbol: mx.sym.Symbol, shapes: tuple[Shape, ...]) -> Any:
        """The executor bound to ``shapes`` (caller holds the lock), binding it on first use."""
        executor = self._executors.get(shapes)
        if executor is not None:
            self._executors.move_to_end(shapes)
            return executor
        args = dict(self._args)
        for spec, shape in zip(self._inputs, shapes, strict=True):
            args[spec.name] = mx.nd.zeros(shape, dtype=spec.dtype)
        # The weight arrays are shared by every executor; grad_req="null" allocates no gradients.
        executor = symbol.bind(mx.cpu(), args=args, aux_states=self._aux, grad_req="null")
        self._executors[shapes] = executor
        if len(self._executors) > MAX_EXECUTORS:
            self._executors.popitem(last=False)
        return executor


def _select_outputs(symbol: mx.sym.Symbol, names: object) -> mx.sym.Symbol:
    """The symbol's heads, or the internal outputs named by backend option ``outputs``."""
    if names is None:
        return symbol
    if (
        isinstance(names, str)
        or not isinstance(names, Sequence)
        or not names
        or not all(isinstance(n, str) for n in names)
    ):
        raise UnsupportedOptionError(
            f"backend option 'outputs' must be a non-empty list of output names such as "
            f"['fc1_output'], got {names!r}"
        )
    internals = symbol.get_internals()
    available = internals.list_outputs()
    selected = []
    for name in names:
        if name not in available:
            close = difflib.get_close_matches(name, available, n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise UnsupportedOptionError(
                f"backend option 'outputs' names {name!r}, which is not an output of any node "
                f"of this symbol{hint} (all of them: symbol.get_internals().list_outputs())"
            )
        selected.append(internals[name])
    return selected[0] if len(selected) == 1 else mx.sym.Group(selected)


def _split_params(
    symbol: mx.sym.Symbol, saved: dict[str, mx.nd.NDArray]
) -> tuple[dict[str, mx.nd.NDArray], dict[str, mx.nd.NDArray]]:
    """Weights by kind, from the ``arg:``/``aux:`` keys checkpoints use (or by the symbol's say)."""
    aux_names = set(symbol.list_auxiliary_states())
    arg_params: dict[str, mx.nd.NDArray] = {}
    aux_params: dict[str, mx.nd.NDArray] = {}
    for key, value in saved.items():
        kind, _, name = key.partition(":")
        if not name:  # saved without the prefixes
            kind, name = ("aux" if key in aux_names else "arg"), key
        (aux_params if kind == "aux" else arg_params)[name] = value
    arguments = set(symbol.list_arguments())
    # Parameters of heads that `outputs` cut away (a loss, say) are not bound.
    arg_params = {k: v for k, v in arg_params.items() if k in arguments}
    aux_params = {k: v for k, v in aux_params.items() if k in aux_names}
    return arg_params, aux_params


def _mxnet_reason(exc: MXNetError) -> str:
    """The line of an MXNet error that says what is wrong, without its C++ traceback."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reasons = [line for line in lines if line.startswith(("Check failed", "MXNetError:"))]
    return (reasons[-1] if reasons else lines[-1] if lines else type(exc).__name__).rstrip(".")


def _input_specs(
    symbol: mx.sym.Symbol,
    arg_params: Mapping[str, mx.nd.NDArray],
    checkpoint: Checkpoint,
    given: object,
) -> tuple[TensorSpec, ...]:
    """The arguments the params file does not provide, with shapes from the symbol or options."""
    attrs = symbol.attr_dict()
    names = [n for n in symbol.list_arguments() if n not in arg_params]
    overrides = _check_input_shapes(given, names)
    # The ONNX converter records each input's ONNX position; MXNet lists arguments depth-first.
    names.sort(key=lambda n: int(attrs.get(n, {}).get(INPUT_INDEX, len(names))))
    specs = []
    unknown = []
    for name in names:
        node = attrs.get(name, {})
        dims = overrides.get(name) or _dims(node.get("__shape__"))
        if dims is None:
            unknown.append(name)
            continue
        flag = node.get("__dtype__")
        dtype = np.dtype(_DTYPE_MX_TO_NP.get(int(flag), np.float32) if flag else np.float32)
        specs.append(TensorSpec(name, dims, dtype))
    if unknown:
        listed = ", ".join(map(repr, unknown))
        labels = [n for n in unknown if n.endswith("_label")]
        raise ModelLoadError(
            f"{checkpoint.symbol.name} does not record the shape of {listed}, and MXNet needs it "
            f"to run the model. If these are inputs, give their full shapes, None for a dynamic "
            f"dimension: backend_options={{'mxnet': {{'input_shapes': {{{unknown[0]!r}: "
            "[None, 3, 112, 112]}}} for a batch of 112x112 RGB images, say."
            + (
                f" {', '.join(map(repr, labels))} is a training label: select the output before "
                "the loss instead, backend_options={'mxnet': {'outputs': ['fc1_output']}} (names: "
                "symbol.get_internals().list_outputs())."
                if labels
                else ""
            )
            + f" If one is a weight, {checkpoint.params.name} lacks it: check that the .params "
            "file belongs to this symbol"
        )
    return tuple(specs)


def _check_input_shapes(given: object, names: Sequence[str]) -> dict[str, tuple[int | None, ...]]:
    if given is None:
        return {}
    example = "{'data': [None, 3, 112, 112]}"
    if not isinstance(given, Mapping):
        raise UnsupportedOptionError(
            f"backend option 'input_shapes' must map input names to shapes, e.g. {example}, "
            f"got {given!r}"
        )
    shapes = {}
    for name, dims in given.items():
        if name not in names:
            raise UnsupportedOptionError(
                f"backend option 'input_shapes' names {name!r}, which is not an input of this "
                f"model; its inputs are {', '.join(map(repr, names))}"
            )
        if (
            isinstance(dims, str)
            or not isinstance(dims, Sequence)
            or not all(
                d is None or (isinstance(d, int) and not isinstance(d, bool) and d > 0)
                for d in dims
            )
        ):
            raise UnsupportedOptionError(
                f"backend option input_shapes[{name!r}] must be a list of positive sizes or None "
                f"(dynamic), e.g. {example}, got {dims!r}"
            )
        shapes[name] = tuple(dims)
    return shapes


def _output_specs(
    symbol: mx.sym.Symbol,
    inputs: Sequence[TensorSpec],
    arg_params: Mapping[str, mx.nd.NDArray],
    aux_params: Mapping[str, mx.nd.NDArray],
) -> tuple[TensorSpec, ...]:
    """Output names, dtypes and shapes; a dimension that follows a dynamic input one is None."""
    known = {k: v.shape for k, v in arg_params.items()} | {
        k: v.shape for k, v in aux_params.items()
    }
    one = symbol.infer_shape(**known, **{s.name: _concrete(s.shape, 1) for s in inputs})[1]
    two = one
    if not all(s.is_static for s in inputs):
        # A model that only runs at 1 reports the shapes of that run.
        with contextlib.suppress(MXNetError):
            two = symbol.infer_shape(**known, **{s.name: _concrete(s.shape, 2) for s in inputs})[1]
    types = {k: v.dtype for k, v in arg_params.items()} | {s.name: s.dtype for s in inputs}
    dtypes = symbol.infer_type(**types)[1]
    specs = []
    for index, name in enumerate(symbol.list_outputs()):
        head = symbol[index]
        shape = tuple(a if a == b else None for a, b in zip(one[index], two[index], strict=True))
        specs.append(TensorSpec(head.attr(OUTPUT_NAME) or name, shape, np.dtype(dtypes[index])))
    return tuple(specs)
