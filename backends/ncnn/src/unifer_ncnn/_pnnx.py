"""Convert an ONNX model to ncnn with pnnx, ncnn's own converter, run as a standalone binary.

The ``pnnx`` wheel ships a static executable, ``<site-packages>/pnnx/pnnx``, that converts ONNX
files without torch (``pnnx model.onnx inputshape=[1,3,112,112]f32 fp16=0``). Its Python package,
and the console script pip installs for it, import torch (which the wheel declares as a
dependency, only for its PyTorch API): this module never imports ``pnnx`` and never runs that
script. It finds the binary with ``importlib.util.find_spec`` (no import), or a ``pnnx``
executable on ``PATH``, and runs it as a subprocess.

pnnx writes its results (and several 1x-model-sized intermediates) next to its input, so it runs in
a private working directory inside the conversion's output directory, on a copy of the model;
nothing is written next to the user's file. The result is then made to look like the writer's:

- ``fp16=0``: fp32 weights (pnnx stores fp16 by default), so precision is decided when the model
  is opened and one conversion serves every precision;
- pnnx names the blobs ``in0``, ``in1``... and ``out0``, ``out1``... in the ONNX input and output
  order: they are renamed to the ONNX names (an internal blob that would clash is renamed too),
  and outputs are routed through trailing ``Noop`` layers when ncnn's output order (unconsumed
  blobs, in production order) differs from the ONNX order;
- pnnx's ``Input`` layers declare no size: the per-sample shape the model was converted at is
  written into them, so the model opens without ``input_shapes``;
- pnnx leaves an operator it cannot convert in the ``.param`` under its ONNX name and still
  exits 0: a layer type ncnn does not know is refused here, with pnnx's notes about it.

ncnn has no batch dimension: pnnx traces the model at batch 1 and drops that axis, and the session
runs a batch sample by sample. An operator across the batch axis is therefore right at batch 1
only; the core's check, which also runs a batch of several samples, refuses such a conversion.
Other dimensions must be fixed in the ONNX model: pnnx resolves shapes at conversion time.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from unifer import MissingDependencyError, ModelLoadError

from . import _param
from ._onnx2ncnn import FIX_SIZES, ONNX_INSTALL

#: Bumped whenever what this module does to pnnx's output changes; part of the cache key.
GLUE_VERSION: Final = "3"
#: The pnnx release this module was written and tested against (the test dependency group pins it).
TESTED: Final = "20261020"
INSTALL: Final = "pip install --no-deps pnnx"
INSTALL_WHY: Final = (
    f"{INSTALL}  (--no-deps: pnnx declares torch, which only its PyTorch API needs; the ONNX "
    f"converter is a standalone binary in the wheel, 29 MB; tested with pnnx=={TESTED})"
)
#: Seconds pnnx may run. IResNet100 (261 MB of weights) takes 4-7 s here; the limit only stops a
#: hung process.
TIMEOUT_S: Final = 600
#: Lines of pnnx's output quoted in an error.
TAIL_LINES: Final = 12

_EXE: Final = "pnnx.exe" if sys.platform == "win32" else "pnnx"
#: The copy pnnx converts. A fixed name: pnnx parses ``key=value`` arguments, and its output names
#: derive from the input's, so the user's file name (which may hold ``=`` or spaces) is not used.
_MODEL: Final = "model.onnx"
_ANSI: Final = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
#: ncnn ``Input`` parameter ids per sample rank (innermost first): 0=w 1=h 11=d 2=c.
_INPUT_KEYS: Final = {1: (0,), 2: (1, 0), 3: (2, 1, 0), 4: (2, 11, 1, 0)}
_INPUT_SIZE_KEYS: Final = frozenset({"0", "1", "2", "11"})
#: ncnn reads a blob or layer name with "%255s": no whitespace, at most 255 characters.
_NAME_OK: Final = re.compile(r"\S{1,200}")


@dataclass(frozen=True, slots=True)
class Pnnx:
    """A pnnx binary found on this machine."""

    path: Path
    version: str
    """The ``pnnx`` distribution's version, or ``binary-<sha256 prefix>`` for one on PATH."""


def find() -> Pnnx | None:
    """The pnnx converter binary: the installed ``pnnx`` package's, else ``pnnx`` on PATH."""
    package = _package_binary()
    if package is not None:
        try:
            version = importlib.metadata.version("pnnx")
        except importlib.metadata.PackageNotFoundError:  # files without metadata: identify them
            version = _binary_id(package)
        return Pnnx(package, version)
    found = shutil.which(_EXE)
    if found is None or _is_script(Path(found)):
        # A script named pnnx is the pip console script of a pnnx package that find_spec did not
        # see (another environment): it imports torch. Only a real executable is used.
        return None
    path = Path(found).resolve()
    return Pnnx(path, _binary_id(path))


def _package_binary() -> Path | None:
    try:
        # find_spec does not import the package (``import pnnx`` imports torch).
        spec = importlib.util.find_spec("pnnx")
    except (ImportError, ValueError):  # a broken sys.modules entry, an unimportable parent
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / _EXE
        if candidate.is_file():
            return candidate
    return None


def _is_script(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(2) == b"#!"
    except OSError:
        return True  # unreadable: not usable either


def _binary_id(path: Path) -> str:
    stat = path.stat()
    return _hash(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _hash(path: str, size: int, mtime_ns: int) -> str:
    """A short content hash of a binary of unknown version (cached while it is unchanged)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return f"binary-{digest.hexdigest()[:12]}"


def missing_error(source: Path) -> MissingDependencyError:
    return MissingDependencyError(
        f"converting {source.name} to ncnn with pnnx needs pnnx's converter binary, which is not "
        f"installed (no pnnx package, no pnnx executable on PATH): {INSTALL_WHY}"
    )


@dataclass(frozen=True, slots=True)
class Result:
    """What one pnnx conversion wrote and how it ran."""

    param: Path
    arguments: tuple[str, ...]
    """pnnx's arguments after the model path: ``inputshape=...``, ``fp16=0``..."""
    seconds: float


def convert(source: Path, out_dir: Path, pnnx: Pnnx) -> Result:
    """Write ``<out_dir>/<source stem>.param`` and ``.bin`` from the ONNX file ``source`` with pnnx.

    Raises:
        MissingDependencyError: onnx is not installed (it reads the model's input shapes).
        ModelLoadError: the model cannot be handed to pnnx (dynamic sizes, non-float inputs), pnnx
            failed, or it left operators ncnn cannot run; the message quotes pnnx's output.
    """
    model = _load(source)
    inputs, outputs = _signature(source, model)
    shape = ",".join("[1," + ",".join(map(str, sample)) + "]f32" for _, sample in inputs)
    arguments = (
        f"inputshape={shape}",
        "fp16=0",  # pnnx stores fp16 weights by default; unifer's precision is decided at open
        "device=cpu",
        "ncnnparam=model.ncnn.param",
        "ncnnbin=model.ncnn.bin",
    )
    param = out_dir / f"{source.stem}.param"
    with _workdir(out_dir) as work:
        _stage(source, model, work)
        started = time.perf_counter()
        output = _run(source, pnnx, work, arguments)
        seconds = time.perf_counter() - started
        written = work / "model.ncnn.param"
        if not written.is_file() or not (work / "model.ncnn.bin").is_file():
            raise ModelLoadError(
                f"pnnx exited without writing an ncnn model for {source.name}. pnnx said:\n"
                f"{_tail(output)}"
            )
        text = written.read_text(encoding="utf-8", errors="replace")
        unknown = _unknown_layers(text)
        if unknown:
            raise ModelLoadError(
                f"pnnx could not convert every operator of {source.name}: it left "
                f"{', '.join(unknown)}, which ncnn cannot run. pnnx said:\n"
                f"{_notes(output, unknown) or _tail(output)}\nRun the ONNX file with another "
                "backend, or change those operators in the model (e.g. their attributes)"
            )
        _refuse_a_kept_batch_axis(source, text, work / _NCNN_PY, [n for n, _ in inputs], outputs)
        try:
            fixed = _adopt(text, inputs, outputs)
        except ValueError as exc:
            raise ModelLoadError(
                f"pnnx converted {source.name}, but its ncnn model cannot be used: {exc}. pnnx "
                f"said:\n{_tail(output)}"
            ) from exc
        param.write_text(fixed, encoding="utf-8")
        os.replace(work / "model.ncnn.bin", param.with_suffix(".bin"))
    return Result(param, arguments, seconds)


#: The script pnnx writes beside the ncnn model to run it: it shows where pnnx put each blob's
#: batch axis (``ncnn.Mat(in0.numpy(), batch_index=0)``).
_NCNN_PY: Final = "model_ncnn.py"
_BATCH_INDEX: Final = re.compile(r"batch_index=(\d+)")


def _refuse_a_kept_batch_axis(
    source: Path, param: str, script: Path, inputs: Sequence[str], outputs: Sequence[str]
) -> None:
    """Refuse a conversion where pnnx kept a blob's batch axis and a layer on its way copies
    along a numbered axis.

    unifer runs an ncnn model one sample at a time, with the batch axis dropped, as pnnx does when
    an operator (a convolution, say) tells it which axis is the batch. Without one it keeps the
    full shape (its script feeds ``batch_index=233``, "unknown"), and a layer's axis counts from
    it: on a sample fed without it, Concat along the last axis read out of bounds and killed
    the process (SIGSEGV). Layers that only compute wrong numbers that way are left to the core's
    check; those that flatten or work element by element give the same ones (an MLP's
    InnerProduct and Softmax over a vector), so such models still convert.
    """
    try:
        lines = script.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return  # an older pnnx that writes no script: the core's check stays the safeguard
    fed = [_BATCH_INDEX.findall(line) for line in lines if "ex.input(" in line]
    got = [_BATCH_INDEX.findall(line) for line in lines if ".numpy(batch_index=" in line]
    # pnnx's own blob names at this point: in0, in1... and out0, out1... in ONNX order.
    sources = {f"in{i}": n for i, (n, f) in enumerate(zip(inputs, fed, strict=False)) if _kept(f)}
    sinks = {f"out{j}": n for j, (n, f) in enumerate(zip(outputs, got, strict=False)) if _kept(f)}
    copying = sorted(_layers_between(param, set(sources), set(sinks)) & _AXIS_COPYING_LAYERS)
    if copying:
        kept = ", ".join(map(repr, [*sources.values(), *sinks.values()]))
        raise ModelLoadError(
            f"pnnx could not tell the batch axis of {kept} in {source.name} (no operator on its "
            f"way fixes it, as a convolution does) and kept that axis, which the "
            f"{', '.join(copying)} layers there count with: unifer runs ncnn one sample at a "
            "time, without the batch axis, where they would copy out of bounds. Run this model "
            "with another backend (onnxruntime, openvino)"
        )


#: Layers that copy memory along an axis they name: given one beyond the sample's rank, they
#: read out of bounds.
_AXIS_COPYING_LAYERS: Final = frozenset({"Concat", "Slice", "Crop"})


def _kept(found: list[str]) -> bool:
    """Whether pnnx's script feeds or reads a blob with its batch axis in place (not index 0)."""
    return bool(found) and found[0] != "0"


def _layers_between(param: str, sources: set[str], sinks: set[str]) -> set[str]:
    """The types of the layers that consume what ``sources`` feed, or produce ``sinks``."""
    layers: list[tuple[str, set[str], set[str]]] = []
    for line in param.splitlines()[2:]:
        parts = line.split()
        if len(parts) >= 4 and parts[2].isdigit() and parts[3].isdigit():
            count_in, count_out = int(parts[2]), int(parts[3])
            consumed = set(parts[4 : 4 + count_in])
            produced = set(parts[4 + count_in : 4 + count_in + count_out])
            layers.append((parts[0], consumed, produced))
    found: set[str] = set()
    reached = set(sources)
    for kind, ins, outs in layers:
        if ins & reached:
            found.add(kind)
            reached |= outs
    needed = set(sinks)
    for kind, ins, outs in reversed(layers):
        if outs & needed:
            found.add(kind)
            needed |= ins
    return found


def _load(source: Path) -> Any:
    try:
        import onnx
    except ImportError as exc:
        raise MissingDependencyError(
            f"converting {source.name} to ncnn with pnnx needs the onnx package (to read the "
            f"model's input shapes), which is not installed: {ONNX_INSTALL}"
        ) from exc
    try:
        # The graph only, to read shapes: _stage embeds external weights in pnnx's copy.
        return onnx.load(str(source), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, ValueError, OSError... for a bad file
        raise ModelLoadError(
            f"the pnnx route could not read {source}: {type(exc).__name__}: {exc}. Check that the "
            "file is a complete, valid ONNX model"
        ) from exc


def _signature(source: Path, model: Any) -> tuple[list[tuple[str, tuple[int, ...]]], list[str]]:
    """The ONNX inputs with their per-sample shapes, and the output names, in ONNX order."""
    import onnx

    graph = model.graph
    constants = {t.name for t in graph.initializer}
    inputs: list[tuple[str, tuple[int, ...]]] = []
    for info in graph.input:
        if info.name in constants:
            continue
        tensor = info.type.tensor_type
        if not info.type.HasField("tensor_type") or tensor.elem_type != onnx.TensorProto.FLOAT:
            kind = (
                onnx.TensorProto.DataType.Name(tensor.elem_type).lower()
                if info.type.HasField("tensor_type")
                else "not a tensor"
            )
            raise ModelLoadError(
                f"pnnx cannot convert {source.name} for ncnn: input {info.name!r} is {kind}; ncnn "
                "takes float32 inputs only"
            )
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        if not tensor.HasField("shape") or not 2 <= len(dims) <= 5:
            raise ModelLoadError(
                f"pnnx cannot convert {source.name} for ncnn: input {info.name!r} has "
                f"{len(dims) if tensor.HasField('shape') else 'no'} dimensions; ncnn needs a batch "
                "dimension followed by 1 to 4 sample dimensions"
            )
        if dims[0] is not None and dims[0] > 1:
            raise ModelLoadError(
                f"pnnx cannot convert {source.name} for ncnn: input {info.name!r} has a batch "
                f"dimension fixed at {dims[0]}, and ncnn runs one sample at a time (unifer "
                "converts at batch 1). Export the model with a dynamic batch dimension (or batch "
                "1), or use another backend for it"
            )
        sample = dims[1:]
        if any(d is None or d <= 0 for d in sample):
            shown = ",".join("?" if d is None else str(d) for d in dims)
            raise ModelLoadError(
                f"pnnx cannot convert {source.name} for ncnn: input {info.name!r} has shape "
                f"[{shown}], with dynamic sizes beyond the batch dimension; pnnx resolves shapes "
                f"when it converts. {FIX_SIZES}"
            )
        inputs.append((info.name, tuple(int(d) for d in sample if d is not None)))
    outputs = [o.name for o in graph.output]
    names = [name for name, _ in inputs] + outputs
    for name in names:
        if not _NAME_OK.fullmatch(name):
            raise ModelLoadError(
                f"pnnx cannot convert {source.name} for ncnn: the input/output name {name!r} "
                "cannot be written in ncnn's text format (no whitespace, at most 200 characters); "
                "rename it in the ONNX model"
            )
    if not inputs or not outputs or len(set(names)) != len(names):
        raise ModelLoadError(
            f"pnnx cannot convert {source.name} for ncnn: ncnn needs at least one input and one "
            f"output, each name used once (inputs {[n for n, _ in inputs]}, outputs {outputs})"
        )
    return inputs, outputs


@contextlib.contextmanager
def _workdir(out_dir: Path) -> Iterator[Path]:
    """A private directory for pnnx (inside ``out_dir``: same disk as the result), then removed."""
    work = Path(tempfile.mkdtemp(dir=out_dir, prefix=".pnnx-"))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _stage(source: Path, model: Any, work: Path) -> None:
    """Put the model pnnx converts into ``work``: a byte copy, or a rewritten one when needed."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_model, uses_external_data

    graph = model.graph
    constants = {t.name for t in graph.initializer}
    weights_as_inputs = any(i.name in constants for i in graph.input)
    tensors = list(graph.initializer) + [
        attr.t for node in graph.node for attr in node.attribute if attr.HasField("t")
    ]
    external = any(uses_external_data(t) for t in tensors)
    if not weights_as_inputs and not external:
        shutil.copyfile(source, work / _MODEL)
        return
    if weights_as_inputs:
        # IR < 4 models list their weights as graph inputs too; pnnx then takes the first of them
        # for the model's input ("input_shapes[0] expect [16]f32"). The copy lists the real
        # inputs only.
        real = [i for i in graph.input if i.name not in constants]
        del graph.input[:]
        graph.input.extend(real)
    if external:
        # pnnx 20261020 reads no external data: it prints "FATAL ERROR no external data", exits 0
        # and writes NaN weights. The copy embeds them.
        try:
            load_external_data_for_model(model, str(source.parent))
        except (OSError, ValueError) as exc:
            raise ModelLoadError(
                f"the external weights of {source.name} cannot be read: {type(exc).__name__}: "
                f"{exc}. Keep the data files beside the model, as it names them"
            ) from exc
    try:
        onnx.save(model, str(work / _MODEL))
    except ValueError as exc:  # protobuf's 2 GB limit on one file
        raise ModelLoadError(
            f"pnnx cannot convert {source.name}: it reads no ONNX external data, and the weights "
            f"do not fit in one ONNX file ({exc}). Use another backend for this model"
        ) from exc


def _run(source: Path, pnnx: Pnnx, work: Path, arguments: Sequence[str]) -> str:
    """Run pnnx in ``work``; returns its output (stdout and stderr), or raises ModelLoadError."""
    command = [str(pnnx.path), _MODEL, *arguments]
    try:
        done = subprocess.run(
            command,
            cwd=work,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        output = _decode(exc.output)
        raise ModelLoadError(
            f"pnnx did not finish converting {source.name} within {TIMEOUT_S} s and was stopped. "
            f"pnnx said:\n{_tail(output)}"
        ) from exc
    except OSError as exc:  # not executable, wrong architecture, vanished
        raise MissingDependencyError(
            f"pnnx's converter binary {pnnx.path} cannot be run: {exc}. Reinstall it: "
            f"pip install --force-reinstall --no-deps pnnx"
        ) from exc
    output = _decode(done.stdout)
    fatal = [line.strip() for line in output.splitlines() if "FATAL ERROR" in line]
    if fatal and done.returncode == 0:
        # pnnx reports some failures ("FATAL ERROR no external data") and still exits 0, having
        # written a model with garbage in it.
        raise ModelLoadError(
            f"pnnx reported errors converting {source.name} to ncnn (and exited 0): "
            + "; ".join(sorted(set(fatal)))
            + f". pnnx said:\n{_tail(output)}"
        )
    if done.returncode != 0:
        how = (
            f"was killed by signal {-done.returncode}"
            if done.returncode < 0
            else f"failed (exit status {done.returncode})"
        )
        hint = ""
        if "Unsupported model IR version" in output:
            # pnnx checks shapes with an onnxruntime built in, older than the onnx package that
            # may have written the model (onnx 1.23 writes IR 14; pnnx 20261020 reads up to 13).
            hint = (
                "\npnnx's embedded onnxruntime reads older ONNX IR versions only: if the model "
                "uses nothing newer, save it with the maximum IR version named above (onnx: "
                "model.ir_version = N; onnx.save(model, path)) and convert that file"
            )
        raise ModelLoadError(
            f"pnnx {how} converting {source.name} to ncnn. pnnx said:\n{_tail(output)}{hint}"
        )
    return output


def _decode(data: bytes | str | None) -> str:
    if data is None:
        return ""
    text = data if isinstance(data, str) else data.decode("utf-8", errors="replace")
    return _ANSI.sub("", text)


def _tail(output: str) -> str:
    lines = [line.rstrip() for line in output.splitlines() if line.strip()]
    return "\n".join(f"  {line}" for line in lines[-TAIL_LINES:]) or "  (nothing)"


def _notes(output: str, layer_types: Sequence[str]) -> str:
    """pnnx's lines about operators it left: ``todo AveragePool``, ``ignore AveragePool ...``."""
    notes = []
    for line in output.splitlines():
        words = line.split()
        if len(words) > 1 and words[0] in ("todo", "ignore") and words[1] in layer_types:
            notes.append(f"  {line.strip()}")
    return "\n".join(notes[:TAIL_LINES])


def _unknown_layers(text: str) -> list[str]:
    """Layer types in the .param that this ncnn does not implement: kept ONNX/pnnx operators, and
    ncnn layers left out of this build (ArgMax: registered, but no implementation to create)."""
    try:
        import ncnn
    except ImportError:  # then the core's check, which opens the model, reports it
        return []
    types = {line.split()[0] for line in text.splitlines()[2:] if line.split()}
    return sorted(
        kind for kind in types if ncnn.layer_to_index(kind) < 0 or ncnn.create_layer(kind) is None
    )


def _adopt(text: str, inputs: Sequence[tuple[str, tuple[int, ...]]], outputs: Sequence[str]) -> str:
    """pnnx's .param with ONNX blob names, declared input sizes and outputs in ONNX order.

    Raises ValueError when it does not have one ``in<i>`` per ONNX input and ``out<j>`` per output.
    """
    graph = _param.parse(text)
    rename = {f"in{i}": name for i, (name, _) in enumerate(inputs)}
    expected_outputs = {f"out{j}": name for j, name in enumerate(outputs)}
    found_inputs = [blob for blob, _ in graph.inputs]
    if sorted(found_inputs) != sorted(rename):
        raise ValueError(
            f"its inputs are {found_inputs}, not one per ONNX input "
            f"({', '.join(f'{k}={v!r}' for k, v in rename.items())})"
        )
    if sorted(graph.outputs) != sorted(expected_outputs):
        raise ValueError(
            f"its outputs are {list(graph.outputs)}, not one per ONNX output "
            f"({', '.join(f'{k}={v!r}' for k, v in expected_outputs.items())})"
        )
    rename.update(expected_outputs)
    targets = set(rename.values())
    blobs = {blob for layer in graph.layers for blob in layer.tops}
    taken = blobs | targets
    for blob in sorted(blobs - rename.keys()):
        if blob in targets:  # an internal pnnx name ("1", "2"...) equal to an ONNX name
            rename[blob] = _unique(f"{blob}_pnnx", taken)
    shapes = dict(inputs)

    layer_names = {layer.name for layer in graph.layers}
    lines: list[list[str]] = []
    for layer in graph.layers:
        bottoms = [rename.get(b, b) for b in layer.bottoms]
        tops = [rename.get(t, t) for t in layer.tops]
        params = [f"{key}={value}" for key, value in layer.params.items()]
        if layer.type == "Input" and len(tops) == 1:
            # ncnn's Input params are sizes innermost first: 0=w 1=h 11=d 2=c.
            sample = shapes[tops[0]]
            sizes = dict(zip(_INPUT_KEYS[len(sample)], sample, strict=True))
            params = [p for p in params if p.split("=", 1)[0] not in _INPUT_SIZE_KEYS]
            params = [f"{key}={sizes[key]}" for key in sorted(sizes)] + params
        lines.append([layer.type, layer.name, str(len(bottoms)), str(len(tops)), *bottoms, *tops])
        lines[-1] += params

    natural = [rename.get(blob, blob) for blob in graph.outputs]
    added = 0
    if natural != list(outputs):
        # ncnn's outputs are the unconsumed blobs in production order; a trailing Noop per output,
        # in ONNX order, makes that order the ONNX one.
        for name in outputs:
            internal = _unique(f"{name}_pnnx", taken)
            for line in lines:
                count = int(line[2]) + int(line[3])
                line[4 : 4 + count] = [internal if b == name else b for b in line[4 : 4 + count]]
            noop = _unique(f"{name}_output", layer_names)
            lines.append(["Noop", noop, "1", "1", internal, name])
            added += 1
    blob_count = int(text.split(None, 3)[2]) + added
    body = [f"{line[0]:<24} {line[1]:<24} {' '.join(line[2:])}" for line in lines]
    return "\n".join([_param.MAGIC, f"{len(lines)} {blob_count}", *body]) + "\n"


def _unique(wanted: str, taken: set[str]) -> str:
    name, i = wanted, 0
    while name in taken:
        i += 1
        name = f"{wanted}{i}"
    taken.add(name)
    return name


def describe(result: Result, pnnx: Pnnx) -> Mapping[str, object]:
    """The record of a pnnx conversion (see ``_routes.write_record``)."""
    return {
        "route": "pnnx",
        "pnnx": pnnx.version,
        "binary": str(pnnx.path),
        "arguments": list(result.arguments),
        "seconds": round(result.seconds, 3),
    }
