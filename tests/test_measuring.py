"""The cross-process measurement lock and the record of candidates that crashed a measurement."""

from __future__ import annotations

import fcntl
import os
import threading
import time

from unifer import _measuring
from unifer._cache import cache_dir


def died_measuring(key: str, candidate: str) -> None:
    """As a process leaves the record when it dies while measuring ``candidate``."""
    with _measuring.measuring(key) as record:
        record.now(candidate)
        left = (cache_dir("locks") / f"auto-{key}.json").read_text()
    (cache_dir("locks") / f"auto-{key}.json").write_text(left)


def test_a_candidate_that_took_two_measurements_down_is_passed_over():
    died_measuring("k", "crashy/fp32/threads=1")
    with _measuring.measuring("k") as record:
        assert record.crashed == {}  # once may be a kill from outside
        record.now("crashy/fp32/threads=1")
        left = (cache_dir("locks") / "auto-k.json").read_text()
    (cache_dir("locks") / "auto-k.json").write_text(left)
    with _measuring.measuring("k") as record:
        assert list(record.crashed) == ["crashy/fp32/threads=1"]
    with _measuring.measuring("k") as record:  # kept until the key changes...
        assert list(record.crashed) == ["crashy/fp32/threads=1"]
    assert _measuring.clear() == 1  # ...or unifer cache clear --auto-only
    with _measuring.measuring("k") as record:
        assert record.crashed == {}


def test_a_measurement_that_gets_past_a_candidate_forgets_its_death():
    died_measuring("k", "flaky/fp32/threads=1")
    with _measuring.measuring("k") as record:
        record.survived(["flaky/fp32/threads=1"])
    died_measuring("k", "flaky/fp32/threads=1")
    with _measuring.measuring("k") as record:
        assert record.crashed == {}  # one death since it last got through


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


def test_another_thread_of_this_process_is_waited_for_no_longer_either(monkeypatch, caplog):
    """A thread whose measurement hangs (a hung runtime) held every other thread's load of the
    same model forever; the threads now get the processes' bounded wait."""
    monkeypatch.setattr(_measuring, "LOCK_WAIT_S", 0.3)
    holding, release = threading.Event(), threading.Event()

    def hung() -> None:
        with _measuring.measuring("t"):
            holding.set()
            release.wait(30)

    thread = threading.Thread(target=hung)
    thread.start()
    try:
        holding.wait(10)
        start = time.monotonic()
        with _measuring.measuring("t") as record:
            record.now("x/fp32/threads=1")
        assert time.monotonic() - start < 5  # the wait, not the other thread's 30 s
    finally:
        release.set()
        thread.join()
    assert "another thread has been measuring" in caplog.text


def test_a_forked_child_does_not_wait_for_a_thread_the_fork_left_behind():
    """A thread of the parent measuring at the fork does not exist in the child: its in-process
    lock would stay held there forever."""
    holding, release = threading.Event(), threading.Event()

    def measuring_in_the_parent() -> None:
        with _measuring._threads_turn("f", time.monotonic() + 30):
            holding.set()
            release.wait(30)

    thread = threading.Thread(target=measuring_in_the_parent)
    thread.start()
    holding.wait(10)
    try:
        pid = os.fork()
        if pid == 0:  # the child: its turn comes at once
            start = time.monotonic()
            with _measuring._threads_turn("f", time.monotonic() + 20):
                os._exit(0 if time.monotonic() - start < 5 else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        release.set()
        thread.join()
