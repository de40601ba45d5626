"""Built engines and TensorRT timing caches in unifer's cache directory, checked before use.

An engine is only valid for the GPU model, TensorRT version and build settings it was built with;
loading a foreign one fails at best and misbehaves at worst. Each engine is stored with a JSON
record of everything it was built for (the digest of the model's files, GPU name and compute
capability, TensorRT version, precision, build options) and the sha256 of the engine bytes. Before
an engine is loaded its record must match the current key field by field and its bytes the recorded
digest; anything else (no record, another GPU, another TensorRT, a torn pair written by two
processes) means "rebuild", with the reason reported in the session settings.

File names carry the model, the build options and the GPU, but deliberately not the TensorRT
version: after an upgrade the entry is found, its record says "built with TensorRT X", and the
rebuilt engine replaces it instead of leaving a dead file behind. Two GPU models share a cache
directory without evicting each other.

The timing cache (TensorRT's measured kernel timings, which make later builds much faster) is kept
per GPU model, compute capability and TensorRT version. All writes are atomic (temporary file and
rename); nothing is written next to the user's model.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from unifer._cache import atomic_write_bytes

#: Version of the record's layout; a record of another layout is never trusted.
FORMAT: Final = 1
ENGINES: Final = "engines"
TIMING: Final = "timing"


def slug(text: str, limit: int = 40) -> str:
    """A file-name-safe form of ``text``: ``"NVIDIA H100 80GB"`` -> ``"nvidia-h100-80gb"``."""
    cleaned = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return cleaned[:limit].rstrip("-") or "unnamed"


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheKey:
    """Everything an engine built from an ONNX file depends on."""

    model_sha256: str
    gpu_name: str
    compute_capability: tuple[int, int]
    tensorrt_version: str
    precision: str
    build: dict[str, object] = field(default_factory=dict)
    """The build options (:meth:`Options.build_key`)."""

    def fields(self) -> dict[str, object]:
        """The key as it is recorded (JSON types)."""
        return {
            "model_sha256": self.model_sha256,
            "gpu_name": self.gpu_name,
            "compute_capability": f"{self.compute_capability[0]}.{self.compute_capability[1]}",
            "tensorrt_version": self.tensorrt_version,
            "precision": self.precision,
            "build": json.loads(json.dumps(self.build, sort_keys=True)),
        }

    def entry_name(self, model_stem: str) -> str:
        """``<model>-<model+precision+options digest>-<gpu>-sm<cc>``, without TensorRT's version."""
        what = _digest([self.model_sha256, self.precision, self.build])[:16]
        major, minor = self.compute_capability
        return f"{slug(model_stem, 32)}-{what}-{slug(self.gpu_name)}-sm{major}{minor}"


@dataclass(frozen=True, slots=True)
class Entry:
    """Where one engine and its record live."""

    engine: Path
    record: Path

    @classmethod
    def for_key(cls, root: Path, key: CacheKey, model_stem: str) -> Entry:
        base = root / ENGINES / key.entry_name(model_stem)
        return cls(base.with_name(base.name + ".engine"), base.with_name(base.name + ".json"))


_LABELS: Final = {
    "model_sha256": "model files",
    "gpu_name": "GPU",
    "compute_capability": "compute capability",
    "tensorrt_version": "TensorRT version",
    "precision": "precision",
    "build": "build options",
}


def check(entry: Entry, key: CacheKey) -> tuple[bytes | None, str]:
    """The cached engine's bytes if it may be loaded for ``key``, else ``None``; and why.

    The reason is "cached" on success, else the first mismatch in words, e.g. "the cached engine
    was built with TensorRT version 10.13.0 and this is 11.4.0".
    """
    try:
        raw = entry.record.read_bytes()
    except FileNotFoundError:
        return None, "no cached engine for this model, GPU and options"
    except OSError as exc:
        return None, f"the cached engine's record cannot be read ({exc})"
    try:
        record: Any = json.loads(raw)
    except ValueError as exc:
        return None, f"the cached engine's record is not valid JSON ({exc})"
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        return None, "the cached engine's record has another format"
    recorded = record.get("key")
    if not isinstance(recorded, dict):
        return None, "the cached engine's record has no key"
    for name, want in key.fields().items():
        have = recorded.get(name)
        if have != want:
            return None, (
                f"the cached engine was built for {_LABELS[name]} {_show(have)} and this is "
                f"{_show(want)}"
            )
    try:
        data = entry.engine.read_bytes()
    except OSError as exc:
        return None, f"the cached engine file cannot be read ({exc})"
    if hashlib.sha256(data).hexdigest() != record.get("engine_sha256"):
        # Two processes that built the same entry at once can leave one's engine beside the
        # other's record; neither is loaded then.
        return None, "the cached engine file does not match its record (sha256)"
    return data, "cached"


def read_record(entry: Entry) -> dict[str, Any]:
    """The entry's record as stored, or ``{}`` when it cannot be read."""
    try:
        record = json.loads(entry.record.read_bytes())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _show(value: object) -> str:
    if isinstance(value, str) and len(value) == 64:  # a sha256: its start is enough
        return value[:12] + "..."
    return json.dumps(value, sort_keys=True) if not isinstance(value, str) else value


def store(entry: Entry, key: CacheKey, engine: bytes, details: dict[str, object]) -> None:
    """Write the engine, then its record (each atomically); the record carries the engine's
    sha256, so a reader never pairs a record with another engine."""
    atomic_write_bytes(entry.engine, engine)
    record = {
        "format": FORMAT,
        "key": key.fields(),
        "engine_sha256": hashlib.sha256(engine).hexdigest(),
        "engine_bytes": len(engine),
        **details,
    }
    atomic_write_bytes(entry.record, json.dumps(record, indent=1, sort_keys=True).encode())


def timing_cache_path(
    root: Path, gpu_name: str, compute_capability: tuple[int, int], tensorrt_version: str
) -> Path:
    """The timing cache for one GPU model and TensorRT version."""
    major, minor = compute_capability
    return root / TIMING / f"{slug(gpu_name)}-sm{major}{minor}-trt{slug(tensorrt_version)}.cache"


def read_timing_cache(path: Path | None) -> bytes:
    """The stored timing cache, or ``b""`` (an empty cache) when none is stored or readable."""
    if path is None:
        return b""
    try:
        return path.read_bytes()
    except OSError:
        return b""


def write_timing_cache(path: Path | None, data: bytes) -> None:
    if path is not None and data:
        atomic_write_bytes(path, data)
