"""Open an ncnn ``.param`` + ``.bin`` model and run it: one shared Net, one Extractor per sample.

The only module of the plugin that imports ncnn at the top: ``unifer_ncnn`` imports it inside
``probe()`` and ``open()``, so importing the plugin never loads the runtime.

ncnn has no batch dimension: an extractor takes one sample per input blob. A batch is run sample by
sample, each on a fresh extractor (the Net is shared and read-only, extractors are per call, which
is what makes ``run`` thread-safe), and the per-sample results are copied into arrays the caller
owns, since an ``ncnn.Mat`` belongs to its extractor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

import ncnn
import numpy as np

from unifer import InferenceError, ModelNotFoundError, UnsupportedOptionError
from unifer._hardware import fingerprint
from unifer.backend import (
    Dim,
    Precision,
    SessionOptions,
    TensorSpec,
    reject_precision,
    translate_errors,
    warn_unknown_options,
)

from . import _fork, _param, _routes, _vulkan

NAME: Final = "ncnn"
OPTIONS: Final = ("converter", "device", "input_shapes", "sgemm", "winograd")
BATCH: Final = "N"

#: The Option fields that decide the arithmetic, per unifer precision. ncnn's own ``Net().opt``
#: turns fp16 storage, packing and arithmetic on (outputs off by ~2e-3 on IResNet100), so fp32 must
#: switch them off explicitly. ``use_int8_inference`` quantizes layers whose .param declares int8
#: scales at load time; a float model has none, and fp32 keeps it off so it can never apply.
_PRECISION_FLAGS: Final[dict[str, dict[str, bool]]] = {
    "fp32": {
        "use_fp16_storage": False,
        "use_fp16_packed": False,
        "use_fp16_arithmetic": False,
        "use_bf16_storage": False,
        "use_bf16_packed": False,
        "use_int8_inference": False,
    },
    "bf16": {
        "use_fp16_storage": False,
        "use_fp16_packed": False,
        "use_fp16_arithmetic": False,
        "use_bf16_storage": True,
        "use_bf16_packed": True,
        "use_int8_inference": False,
    },
    "fp16": {
        "use_fp16_storage": True,
        "use_fp16_packed": True,
        "use_fp16_arithmetic": True,
        "use_bf16_storage": False,
        "use_bf16_packed": False,
        "use_int8_inference": False,
    },
    "int8": {
        "use_fp16_storage": False,
        "use_fp16_packed": False,
        "use_fp16_arithmetic": False,
        "use_bf16_storage": False,
        "use_bf16_packed": False,
        "use_int8_inference": True,
    },
}
#: Every Option field reported in ``settings``, as ncnn names it.
_REPORTED: Final = (
    "use_fp16_storage",
    "use_fp16_packed",
    "use_fp16_arithmetic",
    "use_bf16_storage",
    "use_bf16_packed",
    "use_int8_inference",
    "use_packing_layout",
    "use_winograd_convolution",
    "use_winograd23_convolution",
    "use_winograd43_convolution",
    "use_winograd63_convolution",
    "use_sgemm_convolution",
    "lightmode",
    "use_vulkan_compute",
)
_WINOGRAD: Final = (
    "use_winograd_convolution",
    "use_winograd23_convolution",
    "use_winograd43_convolution",
    "use_winograd63_convolution",
)
#: The layers ncnn2int8 quantizes, and the param id of their ``int8_scale_term``: a layer with it
#: set runs int8 kernels whatever ``use_int8_inference`` says (ncnn's tools/quantize/ncnn2int8.cpp
#: and each layer's load_param).
_INT8_SCALE_TERM: Final = {
    "Convolution": 8,
    "ConvolutionDepthWise": 8,
    "InnerProduct": 8,
    "RNN": 8,
    "LSTM": 8,
    "GRU": 8,
    "Gemm": 18,
    "Embed": 18,
    "MultiHeadAttention": 18,
    "SDPA": 18,
}


def runtime_version() -> str:
    """ncnn's version, e.g. ``"1.0.20261020"``."""
    return str(ncnn.__version__)


def _flag(extra: Mapping[str, object], key: str, default: bool) -> bool:
    value = extra.get(key, default)
    if not isinstance(value, bool):
        raise UnsupportedOptionError(f"backend option {key!r} must be True or False, got {value!r}")
    return value


def _input_shapes(value: object) -> dict[str, tuple[int, ...]]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(
        isinstance(name, str)
        and isinstance(shape, (list, tuple))
        and 1 <= len(shape) <= 4
        and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
        for name, shape in value.items()
    ):
        raise UnsupportedOptionError(
            "backend option 'input_shapes' must map input names to the shape of one sample "
            f"(no batch dimension), e.g. {{'in0': [3, 224, 224]}}; got {value!r}"
        )
    return {name: tuple(shape) for name, shape in value.items()}


def _int8_layer(graph: _param.Graph) -> str | None:
    """The first layer that declares int8 quantization scales, if any."""
    for layer in graph.layers:
        key = _INT8_SCALE_TERM.get(layer.type)
        if key is not None and layer.params.get(key, "0") not in ("0", ""):
            return layer.name
    return None


def _refuse_grouped_bf16(graph: _param.Graph, model: Path) -> None:
    """ncnn 1.0.20261020's bf16 kernels for grouped (not purely depthwise) convolutions return
    NaN or 2.9e38, differently from run to run, or crash the process (a grouped deconvolution):
    refused by name instead of running them."""
    for layer in graph.layers:
        if layer.type not in ("ConvolutionDepthWise", "DeconvolutionDepthWise"):
            continue
        outputs, group = int(layer.params.get(0, "0")), int(layer.params.get(7, "1"))
        kernel_w = int(layer.params.get(1, "0"))
        kernel_h = int(layer.params.get(11, str(kernel_w)))
        weights = int(layer.params.get(6, "0"))
        if group == outputs and weights == outputs * kernel_w * kernel_h:
            continue  # one input channel per output: depthwise, which bf16 runs right
        raise UnsupportedOptionError(
            f"{model.name} has a grouped convolution (layer {layer.name!r}, group {group}), "
            "which ncnn's bf16 kernels compute wrongly (NaN, 2.9e38) or crash on; open it with "
            "precision='fp32' or 'fp16'"
        )


def _check_precision(precision: Precision, int8_layer: str | None) -> None:
    if int8_layer is not None:
        reject_precision(
            NAME,
            precision,
            ("int8",),
            f"the model is quantized to INT8 (layer {int8_layer!r} declares int8 scales), so it "
            "cannot run faithfully at a float precision",
        )
        return
    reject_precision(
        NAME,
        precision,
        ("fp32", "bf16", "fp16"),
        "ncnn runs INT8 only from a model quantized with ncnn2int8 (its .param declares int8 "
        "scales); this model is float",
    )


def _cpu_has_fp16_arithmetic() -> bool:
    """Whether ncnn's CPU layers can compute in fp16 here: ARMv8.2 (asimdhp), or x86 with
    AVX512-FP16 (read from /proc/cpuinfo: the binding does not expose ncnn's own check)."""
    if ncnn.cpu_support_arm_asimdhp():
        return True
    return "avx512_fp16" in fingerprint(runtimes=False)["cpu"]["flags"]


class NcnnSession:
    """A loaded ncnn Net; ``run`` creates one extractor per sample, so it is thread-safe."""

    def __init__(
        self,
        net: ncnn.Net,
        inputs: Sequence[tuple[str, tuple[int, ...]]],
        outputs: Sequence[str],
        settings: Mapping[str, object],
        batch: Dim = BATCH,
    ) -> None:
        """``batch``: the batch dimension of every input and output (the source model's, for a
        conversion: a fixed 1 stays 1, so another batch is refused as on the other backends)."""
        self._net: ncnn.Net | None = net
        self._threads = int(net.opt.num_threads)
        self._input_shapes = tuple(inputs)
        self._output_names = tuple(outputs)
        self._inputs = tuple(
            TensorSpec(name, (batch, *shape), np.dtype(np.float32)) for name, shape in inputs
        )
        # ncnn reports no output shapes: run one sample of zeros and read them off the results.
        sample = self._run_sample(net, [np.zeros(shape, np.float32) for _, shape in inputs])
        self._output_shapes = tuple(value.shape for value in sample)
        self._outputs = tuple(
            TensorSpec(name, (batch, *shape), np.dtype(np.float32))
            for name, shape in zip(outputs, self._output_shapes, strict=True)
        )
        self._settings = dict(settings)

    @classmethod
    def open(cls, model: Path, options: SessionOptions) -> NcnnSession:
        """Load ``model`` (a ``.param`` with its ``.bin`` beside it) with ``options`` applied."""
        extra = options.extra
        warn_unknown_options(NAME, extra, OPTIONS)
        winograd = _flag(extra, "winograd", True)
        sgemm = _flag(extra, "sgemm", True)
        shapes = _input_shapes(extra.get("input_shapes"))
        vulkan = _vulkan.resolve(extra.get("device", "cpu"))
        _routes.route(extra)  # a bad value is an error here too, not only when converting
        converted_by = _routes.read_record(model)
        weights = model.with_suffix(".bin")
        if not weights.is_file():
            raise ModelNotFoundError(
                f"ncnn model {str(model)!r} needs its weights file {str(weights)!r} beside it, "
                "which does not exist; copy the .bin together with the .param"
            )
        with translate_errors(NAME, ValueError, model=model):
            graph = _param.read(model)
        int8_layer = _int8_layer(graph)
        _check_precision(options.precision, int8_layer)
        if options.precision == "bf16" and vulkan is None:
            _refuse_grouped_bf16(graph, model)
        if int8_layer is not None and vulkan is not None:
            # ncnn's int8 Vulkan shaders fail to compile on some drivers and the process then
            # dies (SIGSEGV on lavapipe); its int8 layers are CPU kernels anyway.
            raise UnsupportedOptionError(
                f"{model.name} is quantized with ncnn2int8 (layer {int8_layer!r}), and ncnn's int8 "
                "path on Vulkan can crash the process; open it with device='cpu'"
            )
        source_inputs = _routes.declared_inputs(converted_by)
        inputs = _resolve_inputs(model, graph, shapes, source_inputs)
        if not graph.outputs:
            with translate_errors(NAME, ValueError, model=model):
                raise ValueError("no blob is left unconsumed, so the model has no output")

        net = ncnn.Net()
        opt = net.opt
        for key, value in _PRECISION_FLAGS[options.precision].items():
            setattr(opt, key, value)
        for key in _WINOGRAD:
            setattr(opt, key, winograd)
        opt.use_sgemm_convolution = sgemm
        opt.use_vulkan_compute = vulkan is not None
        if options.threads is not None:
            opt.num_threads = options.threads  # on Vulkan too: for the layers that run on the CPU
        _fork.check_load(int(opt.num_threads))  # loading already runs OpenMP (weight packing)
        net.opt = opt  # layers read the options while loading, so they are set first
        if vulkan is not None:
            net.set_vulkan_device(vulkan.index)
        with translate_errors(NAME, RuntimeError, model=model):
            # Both return -1 and print ncnn's reason to stderr; there is no exception to chain.
            if net.load_param(str(model)) != 0:
                raise RuntimeError("ncnn.Net.load_param failed (ncnn printed why on stderr)")
            if net.load_model(str(weights)) != 0:
                raise RuntimeError(
                    f"ncnn.Net.load_model failed on {weights.name}: the weights file is shorter "
                    "than the .param needs, or belongs to another model"
                )
            applied = net.opt
            settings: dict[str, object] = {
                "device": "cpu" if vulkan is None else vulkan.device,
                "threads": int(applied.num_threads),
                "precision": options.precision,
                "batch": "per-sample",
                "winograd": winograd,
                "sgemm": sgemm,
                **{key: bool(getattr(applied, key)) for key in _REPORTED},
                "runtime_version": runtime_version(),
            }
            if vulkan is None and not _cpu_has_fp16_arithmetic():
                # ncnn keeps the flag as asked and its layers skip fp16 arithmetic where the CPU
                # lacks it (x86 without AVX512-FP16): report what runs.
                settings["use_fp16_arithmetic"] = False
            if vulkan is not None:
                settings["vulkan_device"] = f"{vulkan.name} ({vulkan.kind})"
            if shapes:
                settings["input_shapes"] = {name: list(shape) for name, shape in shapes.items()}
            if converted_by is not None:
                settings["converted_by"] = converted_by
            # runs one sample
            session = cls(net, inputs, graph.outputs, settings, _batch_dim(source_inputs))
            _fork.note_run(session._threads)
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
        net = self._net  # a local reference keeps the Net alive if close() runs meanwhile
        if net is None:
            raise InferenceError(
                "this ncnn session is closed; open the model again to run it", backend=NAME
            )
        _fork.check_run(self._threads)
        arrays = [feeds[name] for name, _ in self._input_shapes]
        with translate_errors(NAME, ValueError, RuntimeError):
            batch = self._check(arrays)
            results = {
                name: np.empty((batch, *shape), np.float32)
                for name, shape in zip(self._output_names, self._output_shapes, strict=True)
            }
            for i in range(batch):
                sample = self._run_sample(net, [a[i] for a in arrays])
                for (name, out), value in zip(results.items(), sample, strict=True):
                    if value.shape != out.shape[1:]:
                        raise RuntimeError(
                            f"output {name!r} of sample {i} has shape {value.shape}, not "
                            f"{out.shape[1:]} as for the other samples"
                        )
                    out[i] = value  # the copy into the caller's array
        return results

    def _check(self, arrays: Sequence[np.ndarray]) -> int:
        """The batch size; raises ValueError for feeds ncnn would read out of bounds.

        The core validates feeds before ``run``, but ncnn itself checks nothing: an ``Input`` blob
        of the wrong size makes the next layer read past its end. A direct caller gets an error.
        """
        batch = None
        for array, (name, shape) in zip(arrays, self._input_shapes, strict=True):
            if array.dtype != np.float32 or array.shape[1:] != shape or array.ndim == 0:
                raise ValueError(
                    f"input {name!r} must be float32 of shape (N, {', '.join(map(str, shape))}), "
                    f"got {array.dtype}{list(array.shape)}"
                )
            if batch is not None and array.shape[0] != batch:
                raise ValueError(
                    f"inputs disagree on the batch size ({batch} and {array.shape[0]})"
                )
            batch = array.shape[0]
        return int(batch or 0)

    def _run_sample(self, net: ncnn.Net, samples: Sequence[np.ndarray]) -> list[np.ndarray]:
        """One sample through a fresh extractor; returns views of its output Mats (copy them)."""
        extractor = net.create_extractor()
        for (name, _), sample in zip(self._input_shapes, samples, strict=True):
            # ncnn.Mat(array) wraps the array's memory without holding a reference to it, and an
            # in-place first layer (ReLU, BatchNorm...) then writes into the caller's array or
            # crashes (ncnn 1.0.20261020). clone() gives ncnn a buffer of its own, made while
            # `array` is still referenced here.
            array = np.ascontiguousarray(sample)
            if extractor.input(name, ncnn.Mat(array).clone()) != 0:
                raise RuntimeError(f"ncnn has no input blob {name!r}")
        results = []
        for name in self._output_names:
            ret, mat = extractor.extract(name)
            if ret != 0:
                raise RuntimeError(f"ncnn failed to compute output {name!r} (ncnn error {ret})")
            # A copy here: the Mat's memory belongs to the extractor.
            results.append(np.array(mat, dtype=np.float32, copy=True))
        return results

    def close(self) -> None:
        # Dropping the Net frees its weights once no run() holds it any more.
        self._net = None


def _batch_dim(source_inputs: Mapping[str, list[int | str | None]]) -> Dim:
    """The batch dimension the converted model's source declares for all its inputs (``N``
    where there is no source, or its inputs disagree)."""
    # A size of 0 is some exporters' "unknown", like None.
    batches = {dims[0] if dims and dims[0] else BATCH for dims in source_inputs.values()}
    return batches.pop() if len(batches) == 1 else BATCH


def _resolve_inputs(
    model: Path,
    graph: _param.Graph,
    shapes: Mapping[str, tuple[int, ...]],
    source_inputs: Mapping[str, list[int | str | None]],
) -> list[tuple[str, tuple[int, ...]]]:
    """Each input's per-sample shape: declared by its Input layer, given in ``input_shapes``, or
    declared by the ONNX source of a conversion (pnnx writes no sizes into the .param)."""
    names = [name for name, _ in graph.inputs]
    unknown = sorted(set(shapes) - set(names))
    if unknown:
        raise UnsupportedOptionError(
            f"backend option 'input_shapes' names {', '.join(map(repr, unknown))}, which "
            f"{model.name} does not have; its inputs are {', '.join(map(repr, names))}"
        )
    if not names:
        with translate_errors(NAME, ValueError, model=model):
            raise ValueError("it has no Input layer")
    resolved = []
    for name, declared in graph.inputs:
        given = shapes.get(name)
        if declared is not None and given is not None and given != declared:
            raise UnsupportedOptionError(
                f"input {name!r} of {model.name} declares the sample shape {list(declared)}; "
                f"input_shapes gives {list(given)}. ncnn does not check input sizes, so only a "
                "shape the .param leaves open can be set"
            )
        source = source_inputs.get(name, [])[1:]
        sizes = tuple(d for d in source if isinstance(d, int) and d > 0)
        if given is None and source and len(sizes) == len(source):
            given = sizes
        shape = declared or given
        if shape is None:
            raise UnsupportedOptionError(
                f"input {name!r} of {model.name} declares no shape (pnnx writes none); pass the "
                "shape of one sample, e.g. backend_options={'ncnn': {'input_shapes': "
                f"{{{name!r}: [3, 224, 224]}}}}"
            )
        resolved.append((name, shape))
    return resolved
