"""The auto decision cache is a shortcut: failing to write it never fails a load."""

from __future__ import annotations

import logging
import sys

import pytest

from unifer import Engine, _autocache


@pytest.mark.parametrize(
    "error", [PermissionError(13, "Read-only file system"), OSError(28, "No space left")]
)
def test_a_decision_that_cannot_be_written_is_logged_and_the_load_goes_on(
    fake_backend, fake_model, monkeypatch, caplog, error
):
    def refuse(path, data):
        raise error

    monkeypatch.setattr(_autocache, "atomic_write_bytes", refuse)  # as os.replace on Windows
    caplog.set_level(logging.WARNING, logger=_autocache.__name__)
    engine = Engine.load(fake_model, budget_s=0.05)
    assert engine.selection.source == "measured"
    assert "auto decision could not be cached" in caplog.text and str(error) in caplog.text
    assert len([s for s in fake_backend.opened if not s.closed]) == 1  # the winner's
    engine.close()
    assert all(s.closed for s in fake_backend.opened)


@pytest.mark.skipif(sys.platform == "win32", reason="Windows takes no lock file")
def test_a_lock_file_that_cannot_be_opened_is_not_fatal_either(caplog):
    _autocache.cache_file().with_suffix(".lock").mkdir()  # open() fails on it, even as root
    _autocache.store("key", {"ranking": ["fake/fp32"]})
    assert "could not be cached (IsADirectoryError" in caplog.text
    assert _autocache.entries() == {}


def test_the_oldest_decisions_go_beyond_the_limit(monkeypatch):
    monkeypatch.setattr(_autocache, "MAX_ENTRIES", 3)
    for key in ("a", "b", "c", "d"):
        _autocache.store(key, {"value": key})
    _autocache.store("b", {"value": "b again"})  # replaced: now the newest
    assert list(_autocache.entries()) == ["c", "d", "b"]
