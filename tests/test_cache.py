"""Writes into the cache directory: atomic, and readable like any other file written here."""

from __future__ import annotations

import os
import stat

from unifer._cache import atomic_write_bytes


def test_cache_files_are_as_readable_as_any_file_written_here(tmp_path):
    # mkstemp's 0600 would survive the rename and hide the file from a shared cache's other users.
    umask = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "entry.json", b"{}")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "entry.json").stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["entry.json"]  # no temporary file left
    atomic_write_bytes(tmp_path / "entry.json", b"[]")  # replaced whole
    assert (tmp_path / "entry.json").read_bytes() == b"[]"
