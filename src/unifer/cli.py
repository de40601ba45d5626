"""The ``unifer`` command line: a thin layer over the public API, one function per command.

Every command takes ``--json`` for machine-readable output. unifer errors are shown as one clear
message (what, why, how to fix) with exit status 1, not a traceback.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import click
import numpy as np

from . import _convert, _registry, models
from ._cache import cache_dir
from ._engine import Engine, readers, resolve_model
from ._errors import InputError, ModelFormatError, UniferError
from ._preprocess import Preprocess
from .backend import PRECISIONS, SessionOptions, TensorSpec

F = TypeVar("F", bound=Callable[..., Any])

PRESETS: dict[str, Callable[[], Preprocess]] = {
    "arcface": Preprocess.arcface,
    "imagenet": Preprocess.imagenet,
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")(func)


def emit_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def spec_dict(spec: TensorSpec) -> dict[str, object]:
    return {"name": spec.name, "shape": list(spec.shape), "dtype": str(spec.dtype)}


class UniferGroup(click.Group):
    """Turns unifer errors into a clean message and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UniferError as exc:
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc


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
            "install": info.availability.install or _registry.install_hint(info.name),
            "devices": list(info.availability.devices),
        }
        for info in infos
    ]
    missing = [n for n in _registry.FIRST_PARTY if n not in {r["name"] for r in rows}]
    if as_json:
        emit_json(
            {"backends": rows, "not_installed": {n: _registry.install_hint(n) for n in missing}}
        )
        return
    if not rows:
        click.echo("No backends installed.")
    for row in rows:
        status = "available" if row["available"] else f"unavailable: {row['reason']}"
        plugin = f"{row['plugin']} {row['plugin_version']}" if row["plugin"] else "in-process"
        version = row["runtime_version"] or "-"
        click.echo(f"{row['name']:<12} {version:<12} {plugin:<28} {status}")
        if not row["available"] and row["install"]:
            click.echo(f"{'':<12} fix: {row['install']}")
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
@json_option
def info(model: str, backend: str, as_json: bool) -> None:
    """Show a model's inputs and outputs and which backends can read it.

    MODEL is a model file or a built-in model such as builtin:arcface-r18.
    """
    with Engine.load(model, backend=backend) as engine:
        path = engine.model
        assert path is not None  # noqa: S101 - Engine.load always records the file it opened
        suffix = path.suffix.lower()
        able = readers(suffix)
        data = {
            "model": model,
            "path": str(path),
            "size_bytes": path.stat().st_size,
            "opened_with": engine.backend,
            "inputs": [spec_dict(s) for s in engine.inputs],
            "outputs": [spec_dict(s) for s in engine.outputs],
            "readers": able,
            "preprocess": engine.preprocess.to_dict() if engine.preprocess else None,
        }
    if as_json:
        emit_json(data)
        return
    click.echo(f"{path} ({path.stat().st_size:,} bytes), opened with {engine.backend}")
    for title, specs in (("inputs", engine.inputs), ("outputs", engine.outputs)):
        click.echo(f"{title}:")
        for spec in specs:
            click.echo(f"  {spec}")
    click.echo(f"backends that read {suffix}: {', '.join(able)}")
    if engine.preprocess is not None:
        click.echo(f"preprocess: {engine.preprocess.to_dict()}")


@main.command()
@click.argument("model")
@click.option("--to", "target", required=True, help="Backend whose format to produce.")
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    help="Also copy the converted files into this directory.",
)
@click.option(
    "--accept-mismatch",
    is_flag=True,
    help="Keep a conversion whose outputs differ from the source beyond tolerance.",
)
@json_option
def convert(
    model: str, target: str, out: Path | None, accept_mismatch: bool, as_json: bool
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
        SessionOptions(cache_dir=cache_dir("backends", target)),
        accept_mismatch=accept_mismatch,
    )
    files = sorted(p for p in result.path.parent.iterdir() if p.name != _convert.MANIFEST)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        files = [Path(shutil.copy2(f, out / f.name)) for f in files]
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
        )


@main.command()
@click.argument("model")
@click.argument(
    "input_path", metavar="INPUT", type=click.Path(path_type=Path, exists=True, dir_okay=False)
)
@click.option("--backend", default="auto", show_default=True, help="Backend name or 'auto'.")
@click.option("--threads", type=int, default=None, help="Threads per inference.")
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True)
@click.option(
    "--preprocess",
    "preprocess_arg",
    metavar="arcface|imagenet|FILE.json",
    help="Preprocessing for image inputs (a preset or a spec file).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write outputs to .npy (one output), .npz or .json.",
)
@json_option
def predict(
    model: str,
    input_path: Path,
    backend: str,
    threads: int | None,
    precision: str,
    preprocess_arg: str | None,
    out: Path | None,
    as_json: bool,
) -> None:
    """Run MODEL on INPUT (.npy, .npz with one array per input name, or an image file).

    MODEL is a model file or a built-in model such as builtin:arcface-r18.
    """
    preprocess = _preprocess_from(preprocess_arg)
    with Engine.load(
        model, backend=backend, threads=threads, precision=precision, preprocess=preprocess
    ) as engine:
        feeds = _read_input(input_path, engine)
        if isinstance(feeds, np.ndarray):
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


def _preprocess_from(arg: str | None) -> Preprocess | None:
    if arg is None:
        return None
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
    """An array for predict() (.npy or image), or named feeds for run() (.npz)."""
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    if suffix == ".npy":
        return np.load(path, allow_pickle=False)  # type: ignore[no-any-return]
    if suffix in IMAGE_SUFFIXES:
        if engine.preprocess is None:
            raise InputError(
                f"{path.name} is an image, but no preprocessing is set for this model; pass "
                "--preprocess arcface|imagenet|FILE.json (or add a <model>.preprocess.json)"
            )
        return _read_image(path)
    raise click.BadParameter(
        f"cannot read {path.name}: use .npy, .npz or an image ({', '.join(IMAGE_SUFFIXES)})",
        param_hint="INPUT",
    )


def _read_image(path: Path) -> np.ndarray:
    """Decode an image file to HxWx3 uint8 RGB, with OpenCV or else Pillow."""
    try:
        import cv2
    except ImportError:
        try:
            from PIL import Image
        except ImportError:
            raise InputError(
                'reading image files needs OpenCV or Pillow: pip install "unifer[image]"'
            ) from None
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise InputError(f"could not decode {path} as an image; is the file complete?")
    return np.ascontiguousarray(bgr[:, :, ::-1])


def _write_outputs(out: Path, outputs: Mapping[str, np.ndarray]) -> None:
    suffix = out.suffix.lower()
    if suffix == ".npy":
        if len(outputs) != 1:
            raise click.BadParameter(
                f"the model has {len(outputs)} outputs; write them to a .npz or .json file",
                param_hint="--out",
            )
        np.save(out, next(iter(outputs.values())))
    elif suffix == ".npz":
        np.savez(out, **outputs)  # type: ignore[arg-type]
    elif suffix == ".json":
        out.write_text(json.dumps({name: a.tolist() for name, a in outputs.items()}))
    else:
        raise click.BadParameter("use a .npy, .npz or .json file name", param_hint="--out")
