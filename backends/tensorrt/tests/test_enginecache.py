"""The engine cache's key, its records and the load-or-rebuild decision: no GPU needed.

The engine bytes here are arbitrary: what is tested is which bytes the cache would hand to
TensorRT and when it refuses to, not TensorRT's deserialization (that is a GPU test).
"""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path

import pytest

from unifer_tensorrt._enginecache import (
    FORMAT,
    CacheKey,
    Entry,
    check,
    read_record,
    read_timing_cache,
    slug,
    store,
    timing_cache_path,
    write_timing_cache,
)
from unifer_tensorrt._options import Options

KEY = CacheKey(
    model_sha256="a" * 64,
    gpu_name="NVIDIA H100 80GB HBM3",
    compute_capability=(9, 0),
    tensorrt_version="10.13.3.9",
    precision="fp32",
    build=Options().build_key(),
)
ENGINE = b"serialized engine " * 100


def stored(root: Path, key: CacheKey = KEY) -> Entry:
    entry = Entry.for_key(root, key, "arcface")
    store(entry, key, ENGINE, {"build_s": 1.5, "strongly_typed": True})
    return entry


def test_slug() -> None:
    assert slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert slug("10.13.3.9") == "10-13-3-9"
    assert slug("../../etc") == "etc"
    assert slug("***") == "unnamed"
    assert len(slug("x" * 100)) == 40


def test_entry_names_carry_model_options_and_gpu_but_not_the_tensorrt_version(
    tmp_path: Path,
) -> None:
    entry = Entry.for_key(tmp_path, KEY, "arcface-r100")
    assert entry.engine.parent == entry.record.parent == tmp_path / "engines"
    assert entry.engine.name.startswith("arcface-r100-")
    assert entry.engine.name.endswith("-nvidia-h100-80gb-hbm3-sm90.engine")
    assert entry.record.name == entry.engine.name.removesuffix(".engine") + ".json"

    def name(**change: object) -> str:
        return Entry.for_key(
            tmp_path, dataclasses.replace(KEY, **change), "arcface-r100"
        ).engine.name

    # A TensorRT upgrade finds the old entry (and replaces it after its record says why).
    assert name(tensorrt_version="11.4.0.106") == entry.engine.name
    # Everything else is a separate entry: two GPUs or two precisions do not evict each other.
    others = [
        name(model_sha256="b" * 64),
        name(precision="fp16"),
        name(build=Options(max_batch=8).build_key()),
        name(gpu_name="NVIDIA A100-SXM4-80GB", compute_capability=(8, 0)),
        name(compute_capability=(9, 1)),
    ]
    assert len({entry.engine.name, *others}) == 1 + len(others)


def test_a_stored_engine_is_loaded_for_the_same_key(tmp_path: Path) -> None:
    entry = stored(tmp_path)
    data, reason = check(entry, KEY)
    assert data == ENGINE
    assert reason == "cached"
    record = read_record(entry)
    assert record["format"] == FORMAT
    assert record["key"] == KEY.fields()
    assert record["key"]["compute_capability"] == "9.0"
    assert record["engine_bytes"] == len(ENGINE)
    assert record["build_s"] == 1.5
    assert record["strongly_typed"] is True


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"tensorrt_version": "11.4.0.106"}, "TensorRT version 10.13.3.9 and this is 11.4.0.106"),
        ({"gpu_name": "NVIDIA H200"}, "GPU NVIDIA H100 80GB HBM3 and this is NVIDIA H200"),
        ({"compute_capability": (9, 1)}, "compute capability 9.0 and this is 9.1"),
        ({"precision": "fp16"}, "precision fp32 and this is fp16"),
        ({"model_sha256": "b" * 64}, "model files aaaaaaaaaaaa... and this is bbbbbbbbbbbb..."),
        ({"build": Options(tf32=True).build_key()}, "build options"),
    ],
)
def test_a_record_for_another_key_means_rebuild(
    tmp_path: Path, change: dict[str, object], words: str
) -> None:
    """A cache from another GPU, TensorRT or precision is never handed to TensorRT.

    The record is made to sit where the new key looks (as after a TensorRT upgrade, or a cache
    directory shared between machines) by writing it under the new key's entry.
    """
    wanted = dataclasses.replace(KEY, **change)
    entry = Entry.for_key(tmp_path, wanted, "arcface")
    store(entry, KEY, ENGINE, {})
    data, reason = check(entry, wanted)
    assert data is None
    assert reason.startswith("the cached engine was built for ")
    assert words in reason


def test_no_record_means_build(tmp_path: Path) -> None:
    data, reason = check(Entry.for_key(tmp_path, KEY, "arcface"), KEY)
    assert data is None
    assert reason == "no cached engine for this model, GPU and options"


def test_an_engine_without_its_record_is_not_loaded(tmp_path: Path) -> None:
    entry = stored(tmp_path)
    entry.record.unlink()
    assert check(entry, KEY)[0] is None


@pytest.mark.parametrize(
    ("record", "words"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "another format"),
        (json.dumps({"format": FORMAT + 1, "key": KEY.fields()}).encode(), "another format"),
        (json.dumps({"format": FORMAT}).encode(), "has no key"),
    ],
)
def test_a_bad_record_means_rebuild(tmp_path: Path, record: bytes, words: str) -> None:
    entry = stored(tmp_path)
    entry.record.write_bytes(record)
    data, reason = check(entry, KEY)
    assert data is None
    assert words in reason


def test_a_changed_or_missing_engine_file_means_rebuild(tmp_path: Path) -> None:
    entry = stored(tmp_path)
    entry.engine.write_bytes(ENGINE[:-1])  # truncated
    assert check(entry, KEY) == (None, "the cached engine file does not match its record (sha256)")
    entry.engine.unlink()
    data, reason = check(entry, KEY)
    assert data is None
    assert "the cached engine file cannot be read" in reason


def test_a_torn_pair_from_two_writers_is_not_loaded(tmp_path: Path) -> None:
    """Process A's engine beside process B's record (both wrote the same entry at once)."""
    entry = stored(tmp_path)
    store(entry, KEY, b"another build " * 50, {})
    entry.engine.write_bytes(ENGINE)  # A's engine lands last
    assert check(entry, KEY)[0] is None


def test_writes_are_atomic_and_leave_no_temporary_files(tmp_path: Path) -> None:
    entry = Entry.for_key(tmp_path, KEY, "arcface")
    engines = [bytes([i]) * 200_000 for i in range(8)]
    barrier = threading.Barrier(len(engines))

    def write(engine: bytes) -> None:
        barrier.wait()
        for _ in range(5):
            store(entry, KEY, engine, {})

    threads = [threading.Thread(target=write, args=(e,)) for e in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(p.name for p in entry.engine.parent.iterdir()) == sorted(
        [entry.engine.name, entry.record.name]
    )
    data = entry.engine.read_bytes()
    assert data in engines  # one writer's engine, whole
    # Whichever pair is left is either consistent (loaded) or refused: never a mix.
    loaded, _ = check(entry, KEY)
    assert loaded is None or loaded == data


def test_timing_cache_per_gpu_and_tensorrt_version(tmp_path: Path) -> None:
    path = timing_cache_path(tmp_path, "NVIDIA H100 80GB HBM3", (9, 0), "10.13.3.9")
    assert path == tmp_path / "timing" / "nvidia-h100-80gb-hbm3-sm90-trt10-13-3-9.cache"
    assert timing_cache_path(tmp_path, "NVIDIA H100 80GB HBM3", (9, 0), "11.4.0.106") != path
    assert read_timing_cache(path) == b""
    assert read_timing_cache(None) == b""
    write_timing_cache(path, b"timings")
    assert read_timing_cache(path) == b"timings"
    write_timing_cache(path, b"")  # an empty cache never replaces a stored one
    assert read_timing_cache(path) == b"timings"
    write_timing_cache(None, b"ignored")
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]
