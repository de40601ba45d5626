"""The ``unifer`` command line: a thin layer over the public API, one function per command.

Every command takes ``--json`` for machine-readable output. unifer errors are shown as one clear
message (what, why, how to fix) with exit status 1, not a traceback.
"""

from __future__ import annotations

import ast
import contextlib
import json
import math
import os
import re
import shlex
import shutil
import signal
import tempfile
import threading
import uuid
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Literal, TypeVar, cast

import click
import numpy as np

from . import _autocache, _convert, _digest, _hardware, _measuring, _registry, models
from ._cache import cache_dir, cache_root
from ._engine import Engine, readers, resolve_model
from ._errors import InputError, ModelFormatError, UniferError, UniferWarning
from ._npz import write_npz
from ._preprocess import Preprocess
from ._select import Selection
from .backend import PRECISIONS, SessionOptions, TensorSpec

F = TypeVar("F", bound=Callable[..., Any])

PRESETS: dict[str, Callable[[], Preprocess]] = {
    "arcface": Preprocess.arcface,
    "imagenet": Preprocess.imagenet,
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")(func)


def device_option(func: F) -> F:
    return click.option(
        "--device",
        help="Where to run: cpu, cuda:0, vulkan:0, gpu:0... (unifer backends lists each backend's "
        "devices); with --backend auto only the backends that run there compete.",
    )(func)


def preprocess_option(func: F) -> F:
    return click.option(
        "--preprocess",
        "preprocess_arg",
        metavar="arcface|imagenet|FILE.json|none",
        help="Preprocessing for image inputs: a preset or a spec file (default: a built-in "
        "model's own, or the model's sidecar); none: no preprocessing, not even those.",
    )(func)


def dim_option(func: F) -> F:
    return click.option(
        "--dim",
        "dim_args",
        metavar="NAME=SIZE",
        multiple=True,
        help="Size of a named dynamic input dimension besides the batch, e.g. sequence=128 or "
        "H=224 (repeatable).",
    )(func)


def parse_dims(args: Sequence[str]) -> dict[str, int]:
    """``("sequence=128",)`` -> ``{"sequence": 128}``; sizes are at least 1."""
    dims = {}
    for arg in args:
        name, sep, size = arg.partition("=")
        if not sep or not name.strip() or not size.strip().isdigit() or int(size) < 1:
            raise click.BadParameter(
                f"expected NAME=SIZE with a size of at least 1, got {arg!r}", param_hint="--dim"
            )
        dims[name.strip()] = int(size)
    return dims


def _listed(text: str, option: str) -> list[str]:
    """A comma-separated option's values; a usage error when it lists nothing."""
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values:  # nothing to measure is a mistake, not a pass
        raise click.BadParameter(f"{text!r} lists nothing", param_hint=option)
    return values


def backend_options_option(func: F) -> F:
    return click.option(
        "--option",
        "option_args",
        metavar="BACKEND.KEY=VALUE",
        multiple=True,
        help="A backend option, e.g. ncnn.device=vulkan or torch.device=cuda:0 (repeatable; "
        "VALUE is read as JSON where it parses, e.g. true or 4, else as text).",
    )(func)


def parse_backend_options(args: Sequence[str]) -> dict[str, dict[str, object]]:
    """``("ncnn.device=vulkan", "ncnn.winograd=false")`` -> ``{"ncnn": {"device": "vulkan",
    "winograd": False}}``: the ``backend_options`` argument of ``Engine.load``."""
    options: dict[str, dict[str, object]] = {}
    for arg in args:
        target, sep, text = arg.partition("=")
        backend, dot, key = target.partition(".")
        if not sep or not dot or not backend.strip() or not key.strip():
            raise click.BadParameter(
                f"expected BACKEND.KEY=VALUE, e.g. ncnn.device=vulkan, got {arg!r}",
                param_hint="--option",
            )
        try:
            value: object = json.loads(text)
        except json.JSONDecodeError:
            value = text
        options.setdefault(backend.strip(), {})[key.strip()] = value
    return options


def emit_json(data: object) -> None:
    click.echo(to_json(data, indent=2))


def to_json(data: object, *, indent: int | None = None) -> str:
    """Strict JSON: a non-finite float (a model's NaN or inf output) becomes null, since bare NaN
    and Infinity tokens are not JSON and strict parsers reject them."""
    return json.dumps(_finite(data), indent=indent, default=str, allow_nan=False)


def _finite(data: object) -> object:
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: _finite(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(value) for value in data]
    return data


def spec_dict(spec: TensorSpec) -> dict[str, object]:
    return {"name": spec.name, "shape": list(spec.shape), "dtype": str(spec.dtype)}


class UniferGroup(click.Group):
    """Turns unifer errors into a clean message and exit status 1, and unifer's warnings into a
    plain ``warning: ...`` line."""

    def invoke(self, ctx: click.Context) -> Any:
        with warnings.catch_warnings():  # restores showwarning afterwards
            warnings.showwarning = _show_warning(warnings.showwarning)
            try:
                return super().invoke(ctx)
            except UniferError as exc:
                message = shell_hints(str(exc))
                raise click.ClickException(f"{type(exc).__name__}: {message}") from exc


#: Fixes that errors give in Python, as the CLI spells them (the library's messages name the
#: Python API; at a shell, the same advice must be a flag). ``backend_options=...`` literals are
#: rewritten by :func:`_options_as_flags`.
#: A keyword argument written as a fix, not inside a call shown as code (``Engine.load(m,
#: device='cuda:0')`` stays as it is).
_NOT_IN_A_CALL: Final = r"(?<![(\w])(?<!, )"
_PYTHON_HINTS: Final = (
    # backend_options['ncnn']['device']='vulkan' -> --option ncnn.device=vulkan
    (
        re.compile(r"backend_options\['(\w+)'\]\['(\w+)'\]=('[^']*'|True|False|-?[\d.]+)"),
        lambda m: (
            "--option " + shlex.quote(f"{m[1]}.{m[2]}={_option_value(ast.literal_eval(m[3]))}")
        ),
    ),
    (re.compile(_NOT_IN_A_CALL + r"\ballow_nan=True\b"), lambda m: "--allow-nan"),
    (re.compile(_NOT_IN_A_CALL + r"\ballow_conversion=True\b"), lambda m: "--allow-conversion"),
    (re.compile(_NOT_IN_A_CALL + r"\bpreprocess=False\b"), lambda m: "--preprocess none"),
    (
        re.compile(r"\bpass preprocess=Preprocess\(\.\.\.\) to Engine\.load\b"),
        lambda m: "pass --preprocess arcface|imagenet|FILE.json",
    ),
    (re.compile(_NOT_IN_A_CALL + r"\bprecision='(\w+)'"), lambda m: f"--precision {m[1]}"),
    (
        re.compile(_NOT_IN_A_CALL + r"(?<!option )\bdevice='([\w:]+)'"),
        lambda m: f"--device {m[1]}",
    ),
    (re.compile(_NOT_IN_A_CALL + r"\bbackend='([\w]+)'"), lambda m: f"--backend {m[1]}"),
)


def shell_hints(message: str) -> str:
    """``message`` with the Python spellings of fixes as the CLI's flags."""
    message = _options_as_flags(message)
    for pattern, flag in _PYTHON_HINTS:
        message = pattern.sub(flag, message)
    return message


def _options_as_flags(message: str) -> str:
    """Each ``backend_options={'B': {'K': V, ...}}`` whose V are literals as ``--option B.K=V``."""
    start = message.find("backend_options={")
    while start >= 0:
        literal = message[start + len("backend_options=") :]
        # The shortest prefix that is a Python literal: where the dict closes.
        for end in (i + 1 for i, c in enumerate(literal) if c == "}"):
            try:
                value = ast.literal_eval(literal[:end])
            except (ValueError, SyntaxError):
                continue
            if isinstance(value, dict) and all(isinstance(v, dict) for v in value.values()):
                try:
                    flags = " ".join(
                        "--option " + shlex.quote(f"{backend}.{key}={_option_value(v)}")
                        for backend, options in value.items()
                        for key, v in options.items()
                    )
                except TypeError:  # a value JSON cannot write: left as Python
                    break
                message = message[:start] + flags + literal[end:]
            break
        start = message.find("backend_options={", start + 1)
    return message


def _option_value(value: object) -> str:
    """``value`` as ``--option`` reads it: JSON, a plain string as itself (``...``, a value
    left to the reader, too)."""
    if value is Ellipsis:
        return "..."
    return value if isinstance(value, str) else json.dumps(value)


def _show_warning(default: Callable[..., None]) -> Callable[..., None]:
    """A UniferWarning as one line: the source line it points at (the user's call, for the
    Python API) is click's here, of no use to someone at a shell. Other warnings as usual."""

    def show(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if issubclass(category, UniferWarning):
            click.echo(f"warning: {shell_hints(str(message))}", err=True)
        else:
            default(message, category, *args, **kwargs)

    return show


@click.group(cls=UniferGroup)
@click.version_option(package_name="unifer")
def main() -> None:
    """unifer: one API over ONNX Runtime, OpenVINO and other inference runtimes."""


@main.command()
@json_option
def backends(as_json: bool) -> None:
    """List installed backends: plugin, runtime version, and whether each can run here."""
    infos = _registry.describe_backends()
    rows = [
        {
            "name": info.name,
            "plugin": info.distribution,
            "plugin_version": info.distribution_version,
            "runtime_version": info.availability.version,
            "available": info.availability.ok,
            "reason": info.availability.reason,
            # A broken plugin's reason says how to fix it; installing the extra would not.
            "install": None
            if info.broken
            else info.availability.install or _registry.install_hint(info.name),
            "devices": list(info.availability.devices),
            "accelerators": list(info.availability.accelerators),
        }
        for info in infos
    ]
    installed = {r["name"] for r in rows}
    # Aliases (tflite -> litert) name an extra, not a backend of their own.
    missing = [n for n, extra in _registry.FIRST_PARTY.items() if n == extra and n not in installed]
    machine = _hardware.fingerprint(runtimes=False)
    if as_json:
        emit_json(
            {
                "backends": rows,
                "not_installed": {n: _registry.install_hint(n) for n in missing},
                "machine": machine,
                "machine_digest": _hardware.fingerprint_digest(runtimes=False),
            }
        )
        return
    cpu = machine["cpu"]
    features = [name for name in ("avx512", "vnni", "bf16", "amx") if cpu.get(name)]
    click.echo(
        f"machine: {cpu['model']} ({cpu['arch']}, {cpu['physical_cores']} cores, "
        f"{', '.join(features) or 'no AVX-512'}), {len(machine['gpus'])} GPU(s)"
    )
    if not rows:
        click.echo("No backends installed.")
    for row in rows:
        listed = cast("list[str]", row["devices"])
        devices = f" ({', '.join(listed)})" if listed else ""
        status = f"available{devices}" if row["available"] else f"unavailable: {row['reason']}"
        plugin = f"{row['plugin']} {row['plugin_version']}" if row["plugin"] else "in-process"
        version = row["runtime_version"] or "-"
        click.echo(f"{row['name']:<12} {version:<12} {plugin:<28} {status}")
        if not row["available"] and row["install"]:
            click.echo(f"{'':<12} fix: {row['install']}")
        elif row["available"] and row["reason"]:  # e.g. torch: "CPU only: a CPU-only build"
            click.echo(f"{'':<12} note: {row['reason']}")
        if row["available"] and row["accelerators"]:
            accelerators = ", ".join(cast("list[str]", row["accelerators"]))
            click.echo(f"{'':<12} backend='auto' also measures it on: {accelerators}")
    for name in missing:
        click.echo(f"{name:<12} {'-':<12} {'not installed':<28} {_registry.install_hint(name)}")


@main.command("models")
@json_option
def list_models(as_json: bool) -> None:
    """List the built-in reference models (generated from code on first use, never downloaded)."""
    rows = models.model_rows()
    if as_json:
        emit_json({"models": rows})
        return
    for row in rows:
        click.echo(
            f"{row['spec']:<22} {row['params'] / 1e6:6.1f} M params "
            f"{row['gflops']:6.2f} GFLOPs  {row['input']} -> {row['output']}"
        )
        click.echo(f"{'':<22} {row['description']}")
        for file in row["files"]:
            click.echo(
                f"{'':<22} cached: {file['path']} ({file['size']:,} bytes, "
                f"sha256 {file['sha256'][:16]}...)"
            )


@main.command()
@click.argument("model")
@click.option("--backend", default="auto", show_default=True, help="Backend to open it with.")
@click.option(
    "--auto",
    "measure",
    is_flag=True,
    help="Let backend='auto' measure the candidates and explain its choice.",
)
@click.option(
    "--threads", "threads_arg", metavar="LIST", help="Thread counts (auto: the ones it tries)."
)
@click.option(
    "--precision",
    "precision_arg",
    metavar="LIST",
    default="fp32",
    show_default=True,
    help="Precisions auto may choose among: fp32, bf16, fp16, int8, or 'fastest'.",
)
@click.option(
    "--objective",
    type=click.Choice(["latency", "throughput"]),
    default="latency",
    show_default=True,
    help="What auto optimises.",
)
@click.option(
    "--allow-conversion",
    is_flag=True,
    help="Let auto also try backends that must convert the model first.",
)
@dim_option
@device_option
@backend_options_option
@json_option
def info(
    model: str,
    backend: str,
    measure: bool,
    threads_arg: str | None,
    precision_arg: str,
    objective: str,
    allow_conversion: bool,
    dim_args: tuple[str, ...],
    device: str | None,
    option_args: tuple[str, ...],
    as_json: bool,
) -> None:
    """Show a model's inputs and outputs and which backends can read it.

    MODEL is a model file or a built-in model such as builtin:arcface-r18. Without --auto, "auto"
    opens the model with the static choice (no measuring); the other options are Engine.load's,
    so that --auto explains the decision an application loading with them gets.
    """
    if measure and backend != "auto":
        raise click.BadParameter(
            f"--auto explains what --backend auto chooses; with --backend {backend} nothing is "
            "chosen",
            param_hint="--auto",
        )
    try:
        threads = [int(t) for t in _listed(threads_arg, "--threads")] if threads_arg else None
    except ValueError:
        raise click.BadParameter(
            f"{threads_arg!r} is not a list of integers", param_hint="--threads"
        ) from None
    precisions = _listed(precision_arg, "--precision")
    with Engine.load(
        model,
        backend=backend,
        threads=threads[0] if threads and len(threads) == 1 else threads,
        precision=precisions[0] if len(precisions) == 1 else precisions,
        objective=objective,
        budget_s=None if measure else 0,
        allow_conversion=allow_conversion,
        backend_options=parse_backend_options(option_args),
        device=device,
        dims=parse_dims(dim_args) or None,
    ) as engine:
        path = engine.model
        assert path is not None  # noqa: S101 - Engine.load always records the file it opened
        suffix = path.suffix.lower()
        able = readers(suffix)
        converting = _convert.converters(suffix)
        data = {
            "model": model,
            "path": str(path),
            # Every file of the model: an ONNX file with external data is a few hundred bytes.
            "size_bytes": sum(f.stat().st_size for f in _digest.model_files(path)),
            "opened_with": engine.backend,
            "device": engine.settings.get("device"),
            "inputs": [spec_dict(s) for s in engine.inputs],
            "outputs": [spec_dict(s) for s in engine.outputs],
            "readers": able,
            "converters": converting,
            "preprocess": engine.preprocess.to_dict() if engine.preprocess else None,
            "selection": _selection_dict(engine.selection),
        }
    if as_json:
        emit_json(data)
        return
    where = f" on {data['device']}" if data["device"] else ""
    click.echo(f"{path} ({data['size_bytes']:,} bytes), opened with {engine.backend}{where}")
    for title, specs in (("inputs", engine.inputs), ("outputs", engine.outputs)):
        click.echo(f"{title}:")
        for spec in specs:
            click.echo(f"  {spec}")
    click.echo(
        f"backends that read {suffix}: {', '.join(able) or 'none'}"
        + (f"; that convert it first: {', '.join(converting)}" if converting else "")
    )
    if engine.preprocess is not None:
        click.echo(f"preprocess: {engine.preprocess.to_dict()}")
    if engine.selection is not None:
        click.echo(engine.selection.explain())


def _selection_dict(selection: Selection | None) -> dict[str, object] | None:
    if selection is None:
        return None
    return {
        "chosen": str(selection.chosen),
        "source": selection.source,
        "objective": selection.objective,
        "trials": [t.to_dict() for t in selection.trials],
        "notes": list(selection.notes),
    }


@main.group()
def cache() -> None:
    """Show or clear unifer's cache (auto decisions, compiled and converted models)."""


@cache.command("show")
@json_option
def cache_show(as_json: bool) -> None:
    """List the cache directory's contents and the cached auto decisions."""
    root = cache_root()
    sections = {p.name: _tree_size(p) for p in _sections(root)}
    decisions = _autocache.entries()
    if as_json:
        emit_json({"directory": str(root), "sizes": sections, "auto": decisions})
        return
    click.echo(f"cache directory: {root}")
    for name, size in sections.items():
        click.echo(f"  {name + '/':<12} {size / 2**20:10.1f} MiB")
    click.echo(f"auto decisions: {len(decisions)} ({_autocache.cache_file()})")
    for key, entry in decisions.items():
        click.echo(f"  {key}  {_decision_line(entry)}")


def _decision_line(entry: object) -> str:
    """One cached decision in words; an entry this unifer did not write is flagged, not fatal
    (``backend="auto"`` ignores it and measures again)."""
    ranking = entry.get("ranking") if isinstance(entry, dict) else None
    if not isinstance(entry, dict) or not isinstance(ranking, list) or not ranking:
        return "malformed entry, ignored (unifer cache clear --auto-only removes it)"
    return (
        f"{entry.get('model', '?')}  {entry.get('objective', '?')}: {ranking[0]}  "
        f"({entry.get('created', '?')})"
    )


@cache.command("clear")
@click.option("--auto-only", is_flag=True, help="Only forget the auto decisions.")
@json_option
def cache_clear(auto_only: bool, as_json: bool) -> None:
    """Delete cached auto decisions and (unless --auto-only) compiled and converted models."""
    removed = _autocache.clear()
    _measuring.clear()  # candidates passed over for dying in a measurement are tried again
    freed = 0
    if not auto_only:
        root = cache_root()
        for section in _sections(root, hidden=True):  # leftovers of an interrupted clear too
            freed += _tree_size(section)
            # Renamed aside first: a service loading meanwhile recreates a fresh section instead
            # of finding one half deleted (what it had open converts or compiles again).
            aside = root / f".cleared-{uuid.uuid4().hex}"
            try:
                os.rename(section, aside)
            except FileNotFoundError:
                continue
            shutil.rmtree(aside, ignore_errors=True)
    if as_json:
        emit_json({"auto_decisions": removed, "bytes_freed": freed})
        return
    click.echo(f"forgot {removed} auto decision(s); freed {freed / 2**20:.1f} MiB")


def _sections(root: Path, *, hidden: bool = False) -> list[Path]:
    """The cache's subdirectories (none when it was never created)."""
    if not root.is_dir():
        return []
    return sorted(
        p for p in root.iterdir() if p.is_dir() and (hidden or not p.name.startswith("."))
    )


def _tree_size(path: Path) -> int:
    total = 0
    for file in path.rglob("*"):
        with contextlib.suppress(OSError):  # removed meanwhile (a conversion's temporary files)
            total += file.stat().st_size if file.is_file() else 0
    return total


@main.command()
@click.argument("model")
@click.option("--to", "target", required=True, help="Backend whose format to produce.")
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    help="Also copy the converted files into this directory.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Let --out replace files already there (never the model's own files).",
)
@click.option(
    "--accept-mismatch",
    is_flag=True,
    help="Keep a conversion whose outputs differ from the source beyond tolerance.",
)
@backend_options_option
@json_option
def convert(
    model: str,
    target: str,
    out: Path | None,
    force: bool,
    accept_mismatch: bool,
    option_args: tuple[str, ...],
    as_json: bool,
) -> None:
    """Convert MODEL to the format TARGET reads, check it against MODEL, and cache it.

    The result lives in unifer's cache directory (reused by Engine.load(MODEL, backend=TARGET));
    --out copies it somewhere of your choosing.
    """
    source, _ = resolve_model(model)
    plugin = _registry.get_backend(target)
    _registry.require_available(plugin)
    if source.suffix.lower() in plugin.suffixes:
        raise ModelFormatError(f"{target} reads {source.suffix} files directly; nothing to convert")
    if not _convert.can_convert(plugin, source.suffix.lower()):
        raise ModelFormatError(
            f"{target} cannot convert {source.suffix} files; backends that convert them: "
            f"{', '.join(_convert.converters(source.suffix.lower())) or 'none installed'}"
        )
    result = _convert.convert(
        plugin,
        source,
        SessionOptions(
            cache_dir=cache_dir("backends", target),
            extra=parse_backend_options(option_args).get(target, {}),
        ),
        accept_mismatch=accept_mismatch,
    )
    files = sorted(p for p in result.path.parent.iterdir() if p.name != _convert.MANIFEST)
    if out is not None:
        files = _copy_into(files, out, keep=_digest.model_files(source), force=force)
    if as_json:
        emit_json({**result.to_dict(), "files": [str(f) for f in files]})
        return
    check = result.check
    click.echo(f"{source.name} -> {target} ({result.converter})")
    for file in files:
        click.echo(f"  {file}")
    if check.passed is None:
        click.echo(f"not verified: {check.note}")
    else:
        verdict = "ok" if check.passed else "MISMATCH (accepted)"
        click.echo(
            f"check against {check.reference}: {verdict}, max abs diff "
            f"{check.max_abs_diff:.3g}, cosine {check.min_cosine:.7f}"
            + (f" ({check.note})" if check.note else "")  # why (NaN outputs, other shapes)
        )


@main.command()
@click.argument("model")
@click.argument(
    "input_path", metavar="INPUT", type=click.Path(path_type=Path, exists=True, dir_okay=False)
)
@click.option("--backend", default="auto", show_default=True, help="Backend name or 'auto'.")
@click.option("--threads", type=int, default=None, help="Threads per inference.")
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True)
@preprocess_option
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write outputs to .npy (one output), .npz or .json.",
)
@click.option(
    "--allow-nan", is_flag=True, help="Let the input hold NaN (a model that reads it as missing)."
)
@click.option(
    "--allow-conversion",
    is_flag=True,
    help="Let auto also try backends that must convert the model first.",
)
@device_option
@backend_options_option
@json_option
def predict(
    model: str,
    input_path: Path,
    backend: str,
    threads: int | None,
    precision: str,
    preprocess_arg: str | None,
    out: Path | None,
    allow_nan: bool,
    allow_conversion: bool,
    device: str | None,
    option_args: tuple[str, ...],
    as_json: bool,
) -> None:
    """Run MODEL on INPUT (.npy, .npz with one array per input name, or an image file).

    MODEL is a model file or a built-in model such as builtin:arcface-r18.
    """
    if Path(model).suffix.lower() in (".npy", ".npz", *IMAGE_SUFFIXES):
        raise click.BadParameter(
            f"{model} is an input file, not a model; the arguments are MODEL then INPUT: "
            f"unifer predict model.onnx {model}",
            param_hint="MODEL",
        )
    _check_input(input_path)
    preprocess = _preprocess_from(preprocess_arg)
    if out is not None:
        _check_out(out)
    with Engine.load(
        model,
        backend=backend,
        threads=threads,
        precision=precision,
        preprocess=preprocess,
        backend_options=parse_backend_options(option_args),
        device=device,
        allow_nan=allow_nan,
        allow_conversion=allow_conversion,
    ) as engine:
        feeds = _read_input(input_path, engine)
        if isinstance(feeds, np.ndarray):  # an image: preprocessed
            outputs = {engine.outputs[0].name: engine.predict(feeds)}
        else:
            outputs = engine.run(feeds)
        used = engine.backend
    if out is not None:
        _write_outputs(out, outputs)
    if as_json:
        emit_json(
            {
                "backend": used,
                "outputs": {
                    name: {"shape": list(a.shape), "dtype": str(a.dtype), "values": a.tolist()}
                    for name, a in outputs.items()
                },
                "written_to": str(out) if out else None,
            }
        )
        return
    click.echo(f"backend: {used}")
    for name, array in outputs.items():
        flat = array.ravel()
        stats = (
            f" min {flat.min():.6g} max {flat.max():.6g} mean {flat.mean():.6g}"
            if flat.size and array.dtype.kind in "fiu"
            else ""
        )
        click.echo(f"{name}: {array.dtype}{list(array.shape)}{stats}")
        click.echo(f"  {np.array2string(flat[:8], precision=5)}{' ...' if flat.size > 8 else ''}")
    if out is not None:
        click.echo(f"written to {out}")


def _copy_into(files: list[Path], out: Path, *, keep: list[Path], force: bool) -> list[Path]:
    """Copy ``files`` into the directory ``out``; a file already there (``out`` is the cache
    entry itself) is left as it is. Other files of the same names are replaced only with
    ``force``, and never one of ``keep`` (the source model's files: ncnn's ``m.bin`` beside an
    ``m.onnx`` whose weights are ``m.bin``)."""
    targets = [out / file.name for file in files]
    taken = [
        target
        for target, file in zip(targets, files, strict=True)
        if target.exists() and not target.samefile(file)
    ]
    own = [t for t in taken if any(t.samefile(k) for k in keep if k.exists())]
    if own:
        raise click.BadParameter(
            f"{', '.join(str(t) for t in own)} would replace a file of the model being converted; "
            "choose another directory",
            param_hint="--out",
        )
    if taken and not force:
        raise click.BadParameter(
            f"{', '.join(str(t) for t in taken)} already exist; choose another directory, or "
            "pass --force to replace them",
            param_hint="--out",
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        for file, target in zip(files, targets, strict=True):
            if not (target.exists() and target.samefile(file)):
                shutil.copy2(file, target)
    except OSError as exc:
        message = f"cannot write to {out}: {exc.strerror}"
        raise click.BadParameter(message, param_hint="--out") from exc
    return targets


def _preprocess_from(arg: str | None) -> Preprocess | Literal[False] | None:
    if arg is None:
        return None
    if arg == "none":  # not even the model's sidecar
        return False
    if arg in PRESETS:
        return PRESETS[arg]()
    path = Path(arg)
    if not path.is_file():
        raise click.BadParameter(
            f"{arg!r} is neither a preset ({', '.join(PRESETS)}) nor an existing JSON file",
            param_hint="--preprocess",
        )
    return Preprocess.from_json(path)


def _read_input(path: Path, engine: Engine) -> np.ndarray | dict[str, np.ndarray]:
    """An image for predict(), or named feeds for run(): a .npz's arrays, or a .npy as the
    model's single input -- unless it holds uint8 pixels for a model with preprocessing (a
    float32 tensor for a built-in model is its input as it is, not an image)."""
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with _reading_numpy(path), np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    if suffix == ".npy":
        with _reading_numpy(path):
            array = np.load(path, allow_pickle=False)
        if engine.preprocess is not None and array.dtype == np.uint8:
            return array  # type: ignore[no-any-return]
        if len(engine.inputs) != 1:
            raise InputError(
                f"the model has {len(engine.inputs)} inputs "
                f"({', '.join(s.name for s in engine.inputs)}); pass them in a .npz file, one "
                "array per input name: np.savez(path, **{name: array, ...})"
            )
        return {engine.inputs[0].name: array}
    # An image (_check_input let nothing else through).
    if engine.preprocess is None:
        raise InputError(
            f"{path.name} is an image, but no preprocessing is set for this model; pass "
            "--preprocess arcface|imagenet|FILE.json (or add a <model>.preprocess.json)"
        )
    return _read_image(path, engine.preprocess.input_color)


def _check_input(path: Path) -> None:
    """Refuse an INPUT predict cannot read before the model is loaded (auto may measure)."""
    if path.suffix.lower() not in (".npy", ".npz", *IMAGE_SUFFIXES):
        raise click.BadParameter(
            f"cannot read {path.name}: use .npy, .npz or an image ({', '.join(IMAGE_SUFFIXES)})",
            param_hint="INPUT",
        )


@contextlib.contextmanager
def _reading_numpy(path: Path) -> Iterator[None]:
    """numpy's failures to read ``path`` as :class:`InputError`, saying what the file is not."""
    try:
        yield
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        # numpy takes any file without the .npy magic for a pickle, and says allow_pickle=
        # would load it: misleading here, where it is usually not a numpy file at all.
        reason = (
            "it is not a .npy file (numpy would read it as pickled Python objects, which are "
            "never loaded)"
            if "allow_pickle" in str(exc)
            else str(exc)
        )
        raise InputError(
            f"cannot read {path.name} as a numpy {path.suffix.lower()} file: {reason}. Save "
            "inputs with np.save / np.savez (numeric arrays, no Python objects)"
        ) from exc


def _read_image(path: Path, order: str) -> np.ndarray:
    """Decode an image file to HxWx3 uint8 in channel ``order`` ("rgb" or "bgr": the
    preprocessing's input_color), with OpenCV or else Pillow, alike: EXIF orientation applied,
    grayscale repeated, alpha dropped, 16 bits cut to their high 8."""
    try:
        import cv2
    except ImportError:
        rgb = _read_image_with_pillow(path)
        return np.ascontiguousarray(rgb[:, :, ::-1]) if order == "bgr" else rgb
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise InputError(f"could not decode {path} as an image; is the file complete?")
    return bgr if order == "bgr" else np.ascontiguousarray(bgr[:, :, ::-1])


def _read_image_with_pillow(path: Path) -> np.ndarray:
    try:
        from PIL import Image, ImageOps
    except ImportError:
        raise InputError(
            'reading image files needs OpenCV or Pillow: pip install "unifer[image]"'
        ) from None
    with Image.open(path) as opened:
        image = ImageOps.exif_transpose(opened)  # as cv2.imread turns a phone's photo upright
        if image.mode.startswith("I"):  # 16-bit grayscale: convert("RGB") would clip it to 255
            gray = (np.asarray(image).astype(np.uint32) >> 8).astype(np.uint8)
            return np.repeat(gray[:, :, np.newaxis], 3, axis=2)
        return np.asarray(image.convert("RGB"))


OUT_SUFFIXES: Final = (".npy", ".npz", ".json")


def _check_out(out: Path) -> None:
    """Refuse an --out that cannot be written before any model is loaded or run."""
    if out.suffix.lower() not in OUT_SUFFIXES:
        raise click.BadParameter("use a .npy, .npz or .json file name", param_hint="--out")
    if not out.parent.is_dir():
        raise click.BadParameter(f"the directory {out.parent} does not exist", param_hint="--out")


def _write_outputs(out: Path, outputs: Mapping[str, np.ndarray]) -> None:
    # Written through an open file: numpy would append ".npy" to "EMB.NPY" given the name.
    suffix = out.suffix.lower()
    if suffix == ".npy" and len(outputs) != 1:
        raise click.BadParameter(
            f"the model has {len(outputs)} outputs; write them to a .npz or .json file",
            param_hint="--out",
        )
    try:
        with out.open("wb") as file:
            if suffix == ".npy":
                np.save(file, next(iter(outputs.values())))
            elif suffix == ".npz":
                write_npz(file, outputs)
            else:
                file.write(to_json({name: a.tolist() for name, a in outputs.items()}).encode())
    except OSError as exc:
        raise click.BadParameter(f"cannot write {out}: {exc.strerror}", param_hint="--out") from exc


@main.command("bench")
@click.argument("model", required=False)
@click.option(
    "--backend",
    "backend_args",
    multiple=True,
    help="Backend to measure (repeat, or comma-separate), or BACKEND@DEVICE to measure it on a "
    "device, e.g. torch@cuda:0 or ncnn@vulkan (beside torch@cpu, ncnn); default: every available "
    "one that reads the model.",
)
@click.option(
    "--threads",
    "threads_arg",
    metavar="LIST",
    help="Thread counts, e.g. 1,2,default ('default' = the runtime's own); "
    "default: 1..physical cores,default.",
)
@click.option(
    "--batch",
    "batch_arg",
    metavar="LIST",
    default="1",
    show_default=True,
    help="Batch sizes, comma-separated (above 1 needs a dynamic batch dimension).",
)
@dim_option
@preprocess_option
@click.option(
    "--precision",
    "precision_arg",
    metavar="LIST",
    default="fp32",
    show_default=True,
    help="Precisions, comma-separated: fp32, bf16, fp16, int8 (each backend runs those it can).",
)
@click.option(
    "--quick", is_flag=True, help="Smoke test: arcface-r18 (unless MODEL is given), short runs."
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    help="Write results.json, results.csv, report.md and PNG plots into this directory.",
)
@click.option("--warmup", type=click.IntRange(min=0), help="Discarded calls per round.")
@click.option("--min-runs", type=click.IntRange(min=1), help="Calls per latency, at least.")
@click.option("--min-time", type=click.FloatRange(min=0), help="Seconds per latency, at least.")
@click.option("--max-time", type=click.FloatRange(min=0, min_open=True), help="Seconds, at most.")
@click.option("--rounds", type=click.IntRange(min=1), help="Interleaved rounds per latency.")
@click.option("--stable", type=float, help="Stop a latency early once its median is this stable.")
@click.option("--reference", help="Backend for the integrity check (default: onnxruntime).")
@click.option(
    "--python",
    "python_args",
    metavar="BACKEND=PYTHON",
    multiple=True,
    help="Measure BACKEND in another Python environment, e.g. "
    "mxnet=backends/mxnet/.venv/bin/python (repeatable).",
)
@backend_options_option
@click.option("--no-plots", is_flag=True, help="Do not write PNG plots.")
@json_option
def bench(
    model: str | None,
    backend_args: tuple[str, ...],
    threads_arg: str | None,
    batch_arg: str,
    dim_args: tuple[str, ...],
    preprocess_arg: str | None,
    precision_arg: str,
    quick: bool,
    out: Path | None,
    warmup: int | None,
    min_runs: int | None,
    min_time: float | None,
    max_time: float | None,
    rounds: int | None,
    stable: float | None,
    reference: str | None,
    python_args: tuple[str, ...],
    option_args: tuple[str, ...],
    no_plots: bool,
    as_json: bool,
) -> None:
    """Measure MODEL (default builtin:arcface-r100) on every backend, thread count and setting.

    Latency (end-to-end and model-only), load time, throughput, peak memory (a fresh process per
    configuration), output integrity against a reference backend, runtime libraries, energy where
    the machine exposes it, and the machine fingerprint. Progress goes to stderr.
    """
    import dataclasses
    import sys

    from . import bench as benchmark

    base = benchmark.QUICK if quick else benchmark.DEFAULT
    settings = dataclasses.replace(
        base,
        warmup=base.warmup if warmup is None else warmup,
        min_runs=base.min_runs if min_runs is None else min_runs,
        min_time_s=base.min_time_s if min_time is None else min_time,
        max_time_s=base.max_time_s if max_time is None else max_time,
        rounds=base.rounds if rounds is None else rounds,
        stable=base.stable if stable is None else stable,
    )
    try:
        batches = [int(b) for b in _listed(batch_arg, "--batch")]
    except ValueError:
        raise click.BadParameter(
            f"{batch_arg!r} is not a list of integers", param_hint="--batch"
        ) from None
    dims = parse_dims(dim_args)
    try:  # usage errors, before any work
        thread_counts = (
            benchmark.parse_threads(_listed(threads_arg, "--threads")) if threads_arg else None
        )
    except UniferError as exc:
        raise click.BadParameter(exc.message, param_hint="--threads") from exc
    precisions = _listed(precision_arg, "--precision")
    if unknown := [p for p in precisions if p not in PRECISIONS]:
        raise click.BadParameter(
            f"{', '.join(map(repr, unknown))}: the precisions are {', '.join(PRECISIONS)}",
            param_hint="--precision",
        )
    interpreters = {}
    for arg in python_args:
        name, sep, python = arg.partition("=")
        if not sep or not name or not python:
            raise click.BadParameter(f"expected BACKEND=PYTHON, got {arg!r}", param_hint="--python")
        interpreters[name.strip()] = python.strip()
    if out is not None:
        _check_writable_directory(out, "--out")  # before the run, not after minutes of it
    argv0 = Path(sys.argv[0])
    command = (
        shlex.join(["unifer", *sys.argv[1:]])
        if argv0.name == "unifer" or argv0.parent.name == "unifer"
        else None
    )
    # SIGTERM (a CI job cancelled, `timeout`) stops the run as Ctrl+C does: the worker is
    # stopped, its temporary directory removed, and the configurations measured are kept.
    terminated: list[int] = []

    def on_sigterm(signum: int, frame: object) -> None:
        terminated.append(signum)
        raise KeyboardInterrupt

    # (Only the main thread may set handlers: click's test runner may run commands elsewhere.)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, on_sigterm) if main_thread else None
    try:
        result = benchmark.run(
            model or (benchmark.QUICK_MODEL if quick else benchmark.DEFAULT_MODEL),
            backends=[b.strip() for arg in backend_args for b in arg.split(",") if b.strip()]
            or None,
            threads=thread_counts,
            batches=batches,
            precisions=precisions,
            preprocess=_preprocess_from(preprocess_arg),
            settings=settings,
            reference=reference,
            progress=benchmark.TerminalProgress(sys.stderr),
            command=command,
            interpreters=interpreters,
            backend_options=parse_backend_options(option_args),
            dims=dims,
        )
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    if as_json:
        emit_json(result.to_dict())
    else:
        click.echo(shell_hints(benchmark.format_table(result)))  # FAILED lines give fixes
    if out is not None:
        try:
            written = benchmark.write_report(result, out, plots=not no_plots)
        except OSError as exc:  # the results are printed above: nothing measured is lost
            raise click.ClickException(f"could not write the report to {out}: {exc}") from exc
        if not as_json:
            click.echo(f"report written to {out}/ ({', '.join(p.name for p in written['files'])})")
            if written["plots"] != "written":
                click.echo(f"plots: {written['plots']}")
    if result.conditions.get("interrupted"):
        click.echo(f"interrupted {result.conditions['interrupted']}", err=True)
        sys.exit(128 + (terminated[0] if terminated else signal.SIGINT))  # 143, or 130 for Ctrl+C
    if result.records and not result.ok_records():
        # Nothing was measured: a script or CI job must see it (partial failures are listed).
        click.echo("error: every configuration failed (see FAILED above)", err=True)
        sys.exit(1)


def _check_writable_directory(path: Path, option: str) -> None:
    """A usage error unless ``path`` is a directory this process can write, or can create (it is
    not created here: a run that fails leaves nothing behind)."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise click.BadParameter(
            f"cannot create {str(path)!r}: {str(existing)!r} is not a directory", param_hint=option
        )
    try:  # a real write: os.access says yes to root everywhere, /proc included
        probe = tempfile.mkdtemp(prefix=".unifer-probe-", dir=existing)
    except OSError as exc:
        raise click.BadParameter(
            f"cannot write into {str(existing)!r}: {exc.strerror}", param_hint=option
        ) from exc
    os.rmdir(probe)
