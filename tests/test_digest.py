"""Model digests: hashed once per version of a file, remembered across processes."""

from __future__ import annotations

import hashlib
import os

import pytest

from unifer import _digest

BIG = _digest.REMEMBER_FROM_BYTES


@pytest.fixture
def new_process(monkeypatch):
    """Forget what this process hashed, as a new process would; return the hashing count."""
    monkeypatch.setattr(_digest, "_in_process", {})
    calls = []
    real = _digest.sha256_file
    monkeypatch.setattr(_digest, "sha256_file", lambda p: calls.append(p) or real(p))
    return calls


def test_a_new_process_reads_the_remembered_digest(tmp_path, new_process):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"a" * BIG)
    expected = hashlib.sha256(model.read_bytes()).hexdigest()
    assert _digest.content_digest(model) == expected
    assert _digest.content_digest(model) == expected
    assert len(new_process) == 1
    _digest._in_process.clear()
    assert _digest.content_digest(model) == expected
    assert len(new_process) == 1  # from digests-v1.json


def test_a_rewrite_with_the_old_size_and_mtime_is_hashed_again(tmp_path, new_process):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"a" * BIG)
    before = model.stat()
    _digest.content_digest(model)
    model.write_bytes(b"b" * BIG)
    os.utime(model, ns=(before.st_atime_ns, before.st_mtime_ns))  # ctime still moves
    _digest._in_process.clear()
    assert _digest.content_digest(model) == hashlib.sha256(b"b" * BIG).hexdigest()
    assert len(new_process) == 2


def test_a_corrupt_memo_is_rebuilt(tmp_path, new_process):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"a" * BIG)
    _digest._memo_path().write_text("{not json")
    assert _digest.content_digest(model) == hashlib.sha256(b"a" * BIG).hexdigest()
    assert str(model.resolve()) in _digest._read_memo()


def test_small_files_are_not_remembered_on_disk(tmp_path, new_process):
    small = tmp_path / "small.onnx"
    small.write_bytes(b"x")
    _digest.content_digest(small)
    assert not _digest._memo_path().exists()


def test_the_memo_keeps_the_newest_entries(tmp_path, new_process, monkeypatch):
    monkeypatch.setattr(_digest, "MAX_ENTRIES", 2)
    files = [tmp_path / f"m{i}.onnx" for i in range(3)]
    for f in files:
        f.write_bytes(f.name.encode() * BIG)
        _digest.content_digest(f)
    assert list(_digest._read_memo()) == [str(f.resolve()) for f in files[1:]]


def test_the_in_process_memo_keeps_the_newest_entries_only(tmp_path, new_process, monkeypatch):
    """A server loading many temporary files must not grow the memo without bound."""
    monkeypatch.setattr(_digest, "MAX_ENTRIES", 4)
    files = [tmp_path / f"m{i}.onnx" for i in range(10)]
    for i, file in enumerate(files):
        file.write_bytes(bytes([i]))
        _digest.content_digest(file)
    assert len(_digest._in_process) == 4
    _digest.content_digest(files[-1])
    assert len(new_process) == 10  # the newest is still remembered


def test_the_in_process_memo_survives_threads_evicting_at_once(tmp_path, monkeypatch):
    """Eight threads hashing past the cap: the eviction iterated the dict while another thread
    changed it ('dictionary changed size during iteration', KeyError)."""
    import sys
    import threading

    monkeypatch.setattr(_digest, "_in_process", {})
    monkeypatch.setattr(_digest, "MAX_ENTRIES", 8)
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    files = []
    for i in range(600):
        files.append(tmp_path / f"m{i}.onnx")
        files[-1].write_bytes(bytes([i % 256]))
    errors: list[BaseException] = []

    def hash_all(offset: int) -> None:
        try:
            for file in files[offset:] + files[:offset]:
                _digest.content_digest(file)
        except BaseException as exc:  # reported below, whatever it is
            errors.append(exc)

    threads = [threading.Thread(target=hash_all, args=(i * 75,)) for i in range(8)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(previous)
    assert errors == []
    assert len(_digest._in_process) <= 8
