"""The cross-process measurement lock and the record of candidates that crashed a measurement."""

from __future__ import annotations

import fcntl
import json
import time

from unifer import _measuring
from unifer._cache import cache_dir


def test_a_process_that_died_measuring_leaves_its_candidate_on_record():
    with _measuring.measuring("k") as record:
        assert record.crashed == {}
        record.now("crashy/fp32/threads=1")
        path = cache_dir("locks") / "auto-k.json"
        # As a process that dies here leaves it: the record names what it was measuring.
        left = json.loads(path.read_text())
    path.write_text(json.dumps(left))
    with _measuring.measuring("k") as record:
        assert list(record.crashed) == ["crashy/fp32/threads=1"]
    with _measuring.measuring("k") as record:  # kept until the key changes
        assert list(record.crashed) == ["crashy/fp32/threads=1"]


def test_a_measurement_that_never_ends_does_not_hang_the_others(monkeypatch, caplog):
    monkeypatch.setattr(_measuring, "LOCK_WAIT_S", 0.2)
    with (cache_dir("locks") / "auto-h.lock").open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another process, hung while measuring
        start = time.monotonic()
        with _measuring.measuring("h") as record:
            record.now("x/fp32/threads=1")  # not recorded: the file is the hung process's
        assert time.monotonic() - start < 5
    assert "measuring without waiting" in caplog.text
    assert not (cache_dir("locks") / "auto-h.json").exists()
