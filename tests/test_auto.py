"""backend="auto": ranking, measurement, cache, environment overrides (fake backends only).

The real path (measuring onnxruntime against openvino) is tested in tests/test_auto_real.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import ClassVar

import numpy as np
import pytest

from unifer import (
    Engine,
    MissingDependencyError,
    NoBackendAvailableError,
    PluginError,
    UniferWarning,
    UnsupportedOptionError,
    _autocache,
    _hardware,
    _registry,
    register_backend,
    unregister_backend,
)
from unifer._hardware import physical_cores
from unifer._select import Candidate, Selection, Trial, measure_candidates, rank
from unifer._timing import Stats
from unifer.backend import Availability, TensorSpec
from unifer.testing.fake import FakeBackend


def trial(backend, ms, precision="fp32", threads=2):
    return Trial(Candidate(backend, threads, precision), "measured", median_ms=ms, per_sample_ms=ms)


class TestRank:
    def test_fastest_wins(self):
        assert rank([trial("b", 10.0), trial("a", 5.0)])[0].candidate.backend == "a"

    def test_near_ties_go_to_the_static_order(self):
        ranked = rank([trial("onnxruntime", 10.0), trial("openvino", 10.2)])
        assert [t.candidate.backend for t in ranked] == ["openvino", "onnxruntime"]
        ranked = rank([trial("onnxruntime", 10.0), trial("openvino", 10.5)])  # 5 %: no tie
        assert ranked[0].candidate.backend == "onnxruntime"

    def test_near_ties_prefer_fp32(self):
        ranked = rank([trial("openvino", 10.0, "bf16"), trial("openvino", 10.1, "fp32")])
        assert ranked[0].candidate.precision == "fp32"

    def test_nothing_measured(self):
        assert rank([Trial(Candidate("a", 1, "fp32"), "failed", reason="x")]) == []


class ScriptedSession:
    """A session whose outputs are scaled by ``gain`` (to fail or pass the parity check)."""

    inputs = (TensorSpec("x", ("N", 3), np.dtype(np.float32)),)
    outputs = (TensorSpec("y", ("N", 3), np.dtype(np.float32)),)
    settings: ClassVar[dict[str, object]] = {}

    def __init__(self, gain=1.0):
        self.gain = gain
        self.closed = 0

    def run(self, feeds):
        return {"y": feeds["x"] * 2 * self.gain}

    def close(self):
        self.closed += 1


scripted = ScriptedSession


def test_measure_candidates_checks_parity_and_keeps_only_contenders():
    sessions = {
        "ref": scripted(),
        "slow": scripted(),
        "close": scripted(),
        "wrong": scripted(1.01),
        "bf16": scripted(1.001),
    }
    speed = {"ref": 10.0, "slow": 30.0, "close": 10.1, "bf16": 5.0}
    pool = [
        Candidate("ref", 2, "fp32"),
        Candidate("slow", 2, "fp32"),
        Candidate("wrong", 2, "fp32"),
        Candidate("close", 2, "fp32"),
        Candidate("broken", 2, "fp32"),
        Candidate("bf16", 2, "bf16"),
    ]

    def open_candidate(c):
        if c.backend == "broken":
            from unifer import InferenceError

            raise InferenceError("cannot open")
        return sessions[c.backend]

    current = []

    def fake_measure(call, **kwargs):
        call()
        return Stats((speed[current[-1]],) * 5)

    def opener(c):
        current.append(c.backend)
        return open_candidate(c)

    trials, kept, _ = measure_candidates(
        pool, open_candidate=opener, objective="latency", budget_s=1.0, measure_fn=fake_measure
    )
    status = {t.candidate.backend: t.status for t in trials}
    assert status == {
        "ref": "measured",
        "slow": "measured",
        "wrong": "rejected",
        "close": "measured",
        "broken": "failed",
        "bf16": "measured",
    }
    assert "outputs differ" in next(t.reason for t in trials if t.status == "rejected")
    assert set(c.backend for c in kept) == {"bf16"}  # the others are > 3 % slower
    assert sessions["slow"].closed and sessions["wrong"].closed and sessions["ref"].closed
    assert not sessions["bf16"].closed


def test_a_model_stored_in_int8_judges_every_candidate_at_int8_tolerance():
    """Two runtimes faithful to a quantized model differ as int8 runs do (their requantization
    rounds apart): at fp32's 1e-4 the faster one was rejected. Beyond int8's, still rejected."""
    sessions = {"ref": scripted(), "requantized": scripted(1.05), "wrong": scripted(1.5)}
    pool = [Candidate(name, 1, "fp32") for name in sessions]
    trials, _, _ = measure_candidates(
        pool,
        open_candidate=lambda c: sessions[c.backend],
        objective="latency",
        budget_s=0.1,
        stored="int8",
        measure_fn=lambda call, **kwargs: Stats((1.0,) * 5),
    )
    status = {t.candidate.backend: t.status for t in trials}
    assert status == {"ref": "measured", "requantized": "measured", "wrong": "rejected"}


def slowed(session):
    """``session`` with 20 ms added to every run."""
    plain = session.run

    def run(feeds):
        time.sleep(0.02)
        return plain(feeds)

    session.run = run
    return session


class SlowFake(FakeBackend):
    """A second fake that reads the same files but takes 20 ms per run."""

    name: ClassVar[str] = "slowfake"

    def open(self, model, options, /):
        return slowed(super().open(model, options))


@pytest.fixture
def two_fakes(fake_backend):
    register_backend(SlowFake)
    yield fake_backend
    unregister_backend("slowfake")


def opened(backend_cls):
    return len(backend_cls.opened)


def test_auto_measures_then_uses_the_cache(two_fakes, fake_model, caplog):
    caplog.set_level(logging.INFO, logger="unifer.auto")
    engine = Engine.load(fake_model, threads=1, budget_s=0.2)
    selection = engine.selection
    assert engine.backend == "fake"
    assert selection.source == "measured"
    statuses = {str(t.candidate): t.status for t in selection.trials}
    assert statuses == {"fake/fp32/threads=1": "measured", "slowfake/fp32/threads=1": "measured"}
    assert "auto: fake/fp32/threads=1" in caplog.text and "over slowfake" in caplog.text
    assert "slowfake" in selection.explain()
    before = opened(FakeBackend)
    again = Engine.load(fake_model, threads=1, budget_s=0.2)
    assert again.selection.source == "cache"
    assert again.backend == "fake"
    assert opened(FakeBackend) - before == 1  # one open for the chosen backend, nothing measured


def test_cache_key_depends_on_threads_and_objective(two_fakes, fake_model):
    Engine.load(fake_model, threads=1, budget_s=0.1)
    assert Engine.load(fake_model, threads=2, budget_s=0.1).selection.source == "measured"
    throughput = Engine.load(fake_model, threads=1, budget_s=0.1, objective="throughput")
    assert throughput.selection.source == "measured"
    assert len(_autocache.entries()) == 3


def test_a_corrupt_cache_is_rebuilt_not_fatal(two_fakes, fake_model, caplog):
    _autocache.cache_file().write_text("{not json")
    engine = Engine.load(fake_model, threads=1, budget_s=0.1)
    assert engine.selection.source == "measured"
    assert "unreadable" in caplog.text
    assert json.loads(_autocache.cache_file().read_text())["schema"] == 1


def test_environment_overrides(two_fakes, fake_model, monkeypatch):
    monkeypatch.setenv("UNIFER_BACKEND", "slowfake")
    engine = Engine.load(fake_model)
    assert (engine.backend, engine.selection.source) == ("slowfake", "environment")
    assert Engine.load(fake_model, backend="fake").backend == "fake"  # explicit wins
    monkeypatch.delenv("UNIFER_BACKEND")
    monkeypatch.setenv("UNIFER_DISABLE_BACKENDS", "fake")
    assert Engine.load(fake_model, budget_s=0.1).backend == "slowfake"
    monkeypatch.setenv("UNIFER_DISABLE_BACKENDS", "fake, slowfak")  # a typo disables nothing...
    with pytest.warns(UniferWarning, match=r"names 'slowfak', which is no backend.*'slowfake'"):
        assert Engine.load(fake_model, budget_s=0.1).backend == "slowfake"  # ...and is said


def test_static_choice_without_measuring(two_fakes, fake_model, monkeypatch):
    engine = Engine.load(fake_model, budget_s=0)
    assert engine.selection.source == "static"
    assert "not measured" in engine.selection.explain()
    monkeypatch.setenv("UNIFER_AUTO", "static")
    assert Engine.load(fake_model).selection.source == "static"
    monkeypatch.setenv("UNIFER_AUTO", "sometimes")
    with pytest.raises(UnsupportedOptionError, match="UNIFER_AUTO"):
        Engine.load(fake_model)


@contextlib.contextmanager
def registered(backend_class: type[FakeBackend]) -> Iterator[None]:
    register_backend(backend_class)
    try:
        yield
    finally:
        unregister_backend(backend_class.name)


class DeviceFake(FakeBackend):
    """A fake that takes a ``device`` backend option and reports it in its settings."""

    def open(self, model, options, /):
        rest = {k: v for k, v in options.extra.items() if k != "device"}
        session = super().open(model, dataclasses.replace(options, extra=rest))
        session.settings["device"] = options.extra.get("device", "cpu")
        return session


class GpuFake(FakeBackend):
    """A fake whose probe says it runs on an NVIDIA GPU by default."""

    name: ClassVar[str] = "zgpu"  # last by name: only the GPU rule can put it first

    def probe(self):
        return Availability(ok=True, version="1.0", devices=("cuda:0", "cpu"))


def test_static_choice_prefers_a_backend_that_runs_on_the_gpu(two_fakes, fake_model):
    with registered(GpuFake):
        engine = Engine.load(fake_model, budget_s=0)
    assert engine.backend == "zgpu"
    assert "NVIDIA GPU: zgpu first" in engine.selection.explain()


def test_static_choice_does_not_put_a_gpu_backend_pinned_to_the_cpu_first(two_fakes, fake_model):
    with registered(GpuFake):
        engine = Engine.load(fake_model, budget_s=0, device="cpu")
    assert engine.backend != "zgpu" and "NVIDIA GPU" not in engine.selection.explain()


class CudaAcceleratedFake(DeviceFake):
    """A fake on the CPU by default that names an NVIDIA GPU as an accelerator."""

    name: ClassVar[str] = "zcuda"  # last by name: only the GPU rule can put it first

    def probe(self):
        return Availability(
            ok=True, version="1.0", devices=("cpu", "cuda:0"), accelerators=("cuda:0",)
        )


def test_static_choice_prefers_an_nvidia_gpu_a_backend_names_as_accelerator(two_fakes, fake_model):
    with registered(CudaAcceleratedFake):
        engine = Engine.load(fake_model, budget_s=0)
    assert engine.selection.chosen == Candidate("zcuda", None, "fp32", "cuda:0")
    assert engine.settings["device"] == "cuda:0"
    assert "NVIDIA GPU: zcuda/cuda:0 first" in engine.selection.explain()


def test_every_failure_is_listed(two_fakes, fake_model):
    two_fakes.available = False
    SlowFake.available = False
    try:
        with pytest.raises(NoBackendAvailableError) as info:
            Engine.load(fake_model, budget_s=0.1)
        with pytest.raises(NoBackendAvailableError) as given:
            Engine.load(fake_model, budget_s=0.1, threads=(1, 2))  # the caller's counts are named
    finally:
        SlowFake.available = True
    # Once each, without auto's thread pick: no configuration of theirs was tried.
    assert set(info.value.reasons) == {"fake/fp32/threads=default", "slowfake/fp32/threads=default"}
    assert all("unavailable" in r for r in info.value.reasons.values())
    assert set(given.value.reasons) == {
        f"{name}/fp32/threads={t}" for name in ("fake", "slowfake") for t in (1, 2)
    }


class DefectiveFake(FakeBackend):
    """A plugin whose open() and run() break the contract with exceptions outside unifer's."""

    name: ClassVar[str] = "defective"
    fail_in: ClassVar[str] = "open"

    def open(self, model, options, /):
        if self.fail_in == "open":
            raise ImportError("No module named 'defective_runtime'")
        session = super().open(model, options)

        def run(feeds):
            raise ZeroDivisionError("division by zero")

        session.run = run
        return session


@pytest.mark.parametrize("where", ["open", "run"])
def test_a_plugin_defect_fails_its_candidate_not_auto(fake_backend, fake_model, where, monkeypatch):
    monkeypatch.setattr(DefectiveFake, "fail_in", where)
    with registered(DefectiveFake):
        engine = Engine.load(fake_model, threads=1, budget_s=0.1)
    assert engine.backend == "fake"
    reasons = {str(t.candidate): t.reason or "" for t in engine.selection.trials}
    assert "defect in the plugin" in reasons["defective/fp32/threads=1"]


def test_a_plugin_defect_in_open_is_a_plugin_error_with_its_cause(fake_backend, fake_model):
    with registered(DefectiveFake), pytest.raises(PluginError, match="ImportError opening") as info:
        Engine.load(fake_model, backend="defective")
    assert isinstance(info.value.__cause__, ImportError)


def test_a_broken_plugin_is_listed_by_auto_and_warned_about(fake_backend, fake_model, monkeypatch):
    monkeypatch.setattr(
        _registry, "broken_plugins", lambda: {"onnxruntime": "registered twice: a, b"}
    )
    with pytest.warns(UniferWarning, match="passes over backend 'onnxruntime': registered twice"):
        engine = Engine.load(fake_model, threads=1, budget_s=0.1)
    reasons = {str(t.candidate): t.reason for t in engine.selection.trials}
    assert reasons["onnxruntime/fp32/threads=1"] == "registered twice: a, b"


def test_precision_choices(two_fakes, fake_model):
    engine = Engine.load(fake_model, precision=("fp32", "bf16"), budget_s=0.1)
    reasons = {str(t.candidate): t.reason for t in engine.selection.trials}
    assert any("cannot run precision='bf16'" in (r or "") for r in reasons.values())
    with pytest.raises(UnsupportedOptionError, match="need backend='auto'"):
        Engine.load(fake_model, backend="fake", precision=("fp32", "bf16"))
    with pytest.raises(UnsupportedOptionError, match="objective"):
        Engine.load(fake_model, objective="speed")


def test_an_empty_unifer_auto_means_measure(fake_backend, fake_model, monkeypatch):
    monkeypatch.setenv("UNIFER_AUTO", "")
    assert Engine.load(fake_model, budget_s=0.1).selection.source == "measured"


class BrokenConverterFake(FakeBackend):
    """Converts '.fake' into '.fake3', but its converter is missing (it cannot say its version)."""

    name: ClassVar[str] = "brokenconv"
    suffixes: ClassVar[tuple[str, ...]] = (".fake3",)
    converts_from: ClassVar[tuple[str, ...]] = (".fake",)

    def converter_version(self, options, /):
        raise MissingDependencyError("converting needs brokenrt: pip install brokenrt")

    def convert(self, source, out_dir, options, /):
        raise AssertionError("never converts")


def test_a_converter_that_cannot_say_its_version_has_nothing_cached(fake_backend, fake_model):
    with registered(BrokenConverterFake):
        engine = Engine.load(fake_model, budget_s=0.1)
    assert engine.backend == "fake"
    assert {t.candidate.backend for t in engine.selection.trials} == {"fake"}


def test_the_decision_key_has_the_thread_count_auto_resolved(fake_backend, fake_model, monkeypatch):
    # The physical cores this process may use can change while it runs (its affinity): a
    # decision measured at one count is not served for another.
    monkeypatch.setattr(_hardware, "physical_cores", lambda usable=True: 1)
    first = Engine.load(fake_model, budget_s=0.1)
    monkeypatch.setattr(_hardware, "physical_cores", lambda usable=True: 2)
    second = Engine.load(fake_model, budget_s=0.1)
    assert (first.selection.chosen.threads, second.selection.chosen.threads) == (1, 2)
    assert second.selection.source == "measured" and first.selection.key != second.selection.key


class Bf16Fake(FakeBackend):
    """A fake that also runs bf16 (as fp32: its outputs match the reference exactly)."""

    name: ClassVar[str] = "bf16fake"

    def open(self, model, options, /):
        return super().open(model, dataclasses.replace(options, precision="fp32"))


def test_auto_without_fp32_still_checks_against_an_fp32_reference(fake_backend, fake_model):
    with registered(Bf16Fake):
        engine = Engine.load(fake_model, precision="bf16", threads=1, budget_s=0.2)
    trials = {str(t.candidate): (t.status, t.reason) for t in engine.selection.trials}
    assert engine.selection.chosen == Candidate("bf16fake", 1, "bf16")
    # One fp32 run gives the reference (the first backend's); it is not a candidate.
    assert [c for c, (status, _) in trials.items() if "fp32" in c] == ["bf16fake/fp32/threads=1"]
    assert trials["bf16fake/fp32/threads=1"] == (
        "skipped",
        "the fp32 reference only: the precisions asked for exclude fp32",
    )
    assert trials["bf16fake/bf16/threads=1"][0] == "measured"
    assert "cannot run precision='bf16'" in trials["fake/bf16/threads=1"][1]
    with pytest.raises(UnsupportedOptionError, match="need backend='auto'"):
        Engine.load(fake_model, backend="fake", precision="fastest")


def test_explicit_backend_has_a_selection_too(fake_backend, fake_model):
    engine = Engine.load(fake_model, backend="fake", threads=3)
    assert engine.selection.source == "explicit"
    assert engine.selection.chosen == Candidate("fake", 3, "fp32")


def _store(key: str) -> None:
    _autocache.store(key, {"value": key})


def test_concurrent_writers_keep_every_entry():
    keys = [f"k{i}" for i in range(8)]
    with ProcessPoolExecutor(max_workers=4) as pool:
        list(pool.map(_store, keys))
    assert set(_autocache.entries()) == set(keys)
    assert _autocache.clear() == 8 and _autocache.entries() == {}


def _load_source(model) -> str:
    return Engine.load(model, threads=1, budget_s=0.3).selection.source


def test_processes_loading_one_model_at_once_measure_once(two_fakes, fake_model):
    """A server's workers starting together: the first measures, the others wait for its
    decision (fork keeps the fakes registered in the workers)."""
    import multiprocessing

    with ProcessPoolExecutor(3, mp_context=multiprocessing.get_context("fork")) as pool:
        sources = list(pool.map(_load_source, [fake_model] * 3))
    assert sorted(sources) == ["cache", "cache", "measured"]


def test_concurrent_loads_of_one_model_measure_once(two_fakes, fake_model):
    """Six threads loading at once: one measures, the others wait and take its decision (each
    measuring while the others load the CPUs could pick differently, as it once did)."""
    barrier = threading.Barrier(6)

    def load() -> tuple[str, str]:
        barrier.wait()
        engine = Engine.load(fake_model, budget_s=0.2)
        return engine.selection.source, engine.backend

    with ThreadPoolExecutor(max_workers=6) as pool:
        outcomes = list(pool.map(lambda _: load(), range(6)))
    assert sorted(source for source, _ in outcomes) == ["cache"] * 5 + ["measured"]
    assert len({backend for _, backend in outcomes}) == 1


def test_a_thread_sweep_measures_each_count(two_fakes, fake_model):
    engine = Engine.load(fake_model, threads=(1, 2), budget_s=0.2)
    measured = {
        (t.candidate.backend, t.candidate.threads)
        for t in engine.selection.trials
        if t.status == "measured"
    }
    assert measured == {("fake", 1), ("fake", 2), ("slowfake", 1), ("slowfake", 2)}
    assert engine.settings["threads"] == engine.selection.chosen.threads
    with pytest.raises(UnsupportedOptionError, match="need backend='auto'"):
        Engine.load(fake_model, backend="fake", threads=(1, 2))
    with pytest.raises(UnsupportedOptionError, match="empty"):
        Engine.load(fake_model, threads=())
    with pytest.raises(UnsupportedOptionError, match="positive integer"):
        Engine.load(fake_model, threads=(1, 0))


class AcceleratedFake(DeviceFake):
    """A fake with an accelerator: 20 ms per run on its default device, instant on "gpu:0"."""

    name: ClassVar[str] = "accfake"

    def probe(self):
        return Availability(
            ok=True, version="1.0", devices=("cpu", "gpu:0"), accelerators=("gpu:0",)
        )

    def open(self, model, options, /):
        session = super().open(model, options)
        return session if session.settings["device"] == "gpu:0" else slowed(session)


@pytest.fixture
def accelerated(fake_backend, monkeypatch):
    monkeypatch.setenv("UNIFER_DISABLE_BACKENDS", "fake")  # only the accelerated fake competes
    register_backend(AcceleratedFake)
    yield AcceleratedFake
    unregister_backend("accfake")


def test_auto_measures_a_backend_on_its_accelerators_too(accelerated, fake_model):
    engine = Engine.load(fake_model, threads=1, budget_s=0.3)
    statuses = {str(t.candidate): t.status for t in engine.selection.trials}
    assert statuses == {
        "accfake/fp32/threads=1": "measured",
        "accfake/gpu:0/fp32/threads=1": "measured",
    }
    assert engine.selection.chosen == Candidate("accfake", 1, "fp32", "gpu:0")
    assert engine.settings["device"] == "gpu:0"
    again = Engine.load(fake_model, threads=1, budget_s=0.3)
    assert again.selection.source == "cache" and again.settings["device"] == "gpu:0"


def test_candidates_off_the_cpu_keep_their_runtimes_thread_count(accelerated, fake_model):
    # threads= sizes CPU work: auto's own pick (the physical cores) stays on the CPU candidates,
    # where a GPU-only runtime would only warn that it ignores it.
    engine = Engine.load(fake_model, budget_s=0.3)
    threads = {t.candidate.device: t.candidate.threads for t in engine.selection.trials}
    assert threads == {None: physical_cores(), "gpu:0": None}
    assert Engine.load(fake_model, budget_s=0, device="gpu:0").selection.chosen.threads is None
    assert Engine.load(fake_model, budget_s=0, device="cpu").selection.chosen.threads is not None
    # A count the caller gave is theirs, on every device (the runtime says if it cannot apply it).
    swept = Engine.load(fake_model, threads=(1, 2), budget_s=0.3)
    on_gpu = {t.candidate.threads for t in swept.selection.trials if t.candidate.device}
    assert on_gpu == {1, 2}


def test_a_backend_on_the_gpu_by_default_keeps_its_runtimes_thread_count(two_fakes, fake_model):
    with registered(GpuFake):
        measured = Engine.load(fake_model, budget_s=0.3)
        static = Engine.load(fake_model, budget_s=0)
    threads = {t.candidate.backend: t.candidate.threads for t in measured.selection.trials}
    assert threads == {"fake": physical_cores(), "slowfake": physical_cores(), "zgpu": None}
    assert static.backend == "zgpu" and static.selection.chosen.threads is None


def test_auto_keeps_a_device_the_caller_chose(accelerated, fake_model):
    engine = Engine.load(
        fake_model, threads=1, budget_s=0.2, backend_options={"accfake": {"device": "cpu"}}
    )
    assert [str(t.candidate) for t in engine.selection.trials] == ["accfake/fp32/threads=1"]
    assert engine.settings["device"] == "cpu"


def test_the_static_choice_opens_the_default_device(accelerated, fake_model):
    engine = Engine.load(fake_model, budget_s=0)
    assert engine.selection.chosen.device is None and engine.settings["device"] == "cpu"


def test_a_cached_trial_from_before_devices_still_reads():
    old = {"candidate": {"backend": "a", "threads": 2, "precision": "fp32"}, "status": "measured"}
    assert Trial.from_dict(old).candidate == Candidate("a", 2, "fp32", None)
    assert (
        Trial.from_dict(
            Trial(Candidate("a", 2, "fp32", "gpu:0"), "measured").to_dict()
        ).candidate.device
        == "gpu:0"
    )


# -- device= ---------------------------------------------------------------------------------------


def test_device_maps_to_the_backends_device_option(accelerated, fake_model):
    on_gpu = Engine.load(fake_model, backend="accfake", device="gpu:0")
    assert on_gpu.settings["device"] == "gpu:0"
    assert on_gpu.selection.chosen == Candidate("accfake", None, "fp32", "gpu:0")
    assert Engine.load(fake_model, backend="accfake", device="gpu").settings["device"] == "gpu:0"
    # The default device needs no option: a backend without a device option opens there too
    # (FakeBackend warns about any option but "mode").
    assert Engine.load(fake_model, backend="accfake", device="cpu").settings["device"] == "cpu"
    assert Engine.load(fake_model, backend="fake", device="cpu").settings["device"] == "cpu"


def test_a_device_a_backend_lacks_is_refused_naming_its_devices(accelerated, fake_model):
    with pytest.raises(
        UnsupportedOptionError,
        match=r"'fake' cannot run on device 'gpu:0' here; its devices here are cpu ",
    ):
        Engine.load(fake_model, backend="fake", device="gpu:0")
    with pytest.raises(UnsupportedOptionError, match="disagree"):
        Engine.load(
            fake_model,
            backend="accfake",
            device="gpu:0",
            backend_options={"accfake": {"device": "cpu"}},
        )
    with pytest.raises(UnsupportedOptionError, match="device name"):
        Engine.load(fake_model, backend="accfake", device="")


def test_auto_with_a_device_measures_only_the_backends_that_run_there(
    accelerated, fake_model, monkeypatch
):
    monkeypatch.delenv("UNIFER_DISABLE_BACKENDS")  # the CPU-only fake competes too
    engine = Engine.load(fake_model, threads=1, budget_s=0.2, device="gpu:0")
    statuses = {str(t.candidate): (t.status, t.reason) for t in engine.selection.trials}
    assert statuses["accfake/gpu:0/fp32/threads=1"][0] == "measured"
    assert statuses["fake/fp32/threads=1"][0] == "failed"
    assert "cannot run on device 'gpu:0'" in statuses["fake/fp32/threads=1"][1]
    assert len(statuses) == 2 and engine.settings["device"] == "gpu:0"
    on_cpu = Engine.load(fake_model, threads=1, budget_s=0.2, device="cpu")
    measured = {str(t.candidate) for t in on_cpu.selection.trials if t.status == "measured"}
    assert measured == {"fake/fp32/threads=1", "accfake/fp32/threads=1"}  # no accelerator
    static = Engine.load(fake_model, budget_s=0, device="gpu:0")
    assert static.backend == "accfake" and static.settings["device"] == "gpu:0"


def test_no_backend_runs_on_the_device(accelerated, fake_model):
    with pytest.raises(NoBackendAvailableError, match="cannot run on device 'npu'"):
        Engine.load(fake_model, budget_s=0.1, device="npu")


def test_a_missing_device_error_carries_the_backends_own_note(
    fake_backend, fake_model, monkeypatch
):
    why = Availability(ok=True, version="1.0", devices=("cpu",), reason="CPU only: no driver")
    monkeypatch.setattr(fake_backend, "probe", lambda self: why)
    with pytest.raises(UnsupportedOptionError, match="fake: CPU only: no driver"):
        Engine.load(fake_model, backend="fake", device="cuda:0")


CRASHING_LOAD = """
import os, sys
from unifer import Engine, register_backend
from unifer.testing.fake import FakeBackend

class Crashing(FakeBackend):
    name = "crashing"

    def open(self, model, options, /):
        session = super().open(model, options)
        session.run = lambda feeds: os.abort()  # a runtime's segfault, as far as Python knows
        return session

register_backend(FakeBackend)
register_backend(Crashing)
engine = Engine.load(sys.argv[1], threads=1, budget_s=0.1)
print(engine.backend)
print(engine.selection.explain())
"""


def test_a_candidate_that_crashes_the_process_is_passed_over_next_time(fake_model, tmp_path):
    """Measuring runs in the process: a runtime that aborts it would abort every later load."""
    import subprocess
    import sys

    def load() -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-c", CRASHING_LOAD, str(fake_model)]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    # The aborts: one death could be a kill from outside, so it is measured once more.
    assert load().returncode != 0 and load().returncode != 0
    third = load()
    assert third.returncode == 0, third.stderr
    backend, explanation = third.stdout.split("\n", 1)
    assert backend == "fake"
    assert "crashing/fp32/threads=1" in explanation and "died 2 times" in explanation


def test_a_measurement_on_a_busy_machine_says_so_also_from_the_cache(
    two_fakes, fake_model, monkeypatch, caplog
):
    from unifer import _background

    busy = {"available": True, "other_cpu": 0.6, "steal": 0.0, "disturbed": True}
    monkeypatch.setattr(_background, "between", lambda *args: busy)
    measured = Engine.load(fake_model, threads=1, budget_s=0.1)
    assert any("other processes used 60% of the CPUs" in n for n in measured.selection.notes)
    assert "busy machine" in caplog.text
    cached = Engine.load(fake_model, threads=1, budget_s=0.1)
    assert cached.selection.source == "cache"
    assert cached.selection.notes == measured.selection.notes


def test_runtime_environment_variables_are_part_of_the_key(two_fakes, fake_model, monkeypatch):
    """ONEDNN_MAX_CPU_ISA=AVX2 or OMP_NUM_THREADS=1 makes other speeds: measured again."""
    Engine.load(fake_model, threads=1, budget_s=0.1)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert Engine.load(fake_model, threads=1, budget_s=0.1).selection.source == "measured"
    monkeypatch.setenv("UNRELATED_SETTING", "1")
    assert Engine.load(fake_model, threads=1, budget_s=0.1).selection.source == "cache"


def test_explain_shows_the_relative_difference_the_tolerance_limits():
    """A cosine of 1.0000000 hid an fp16 run 4e-4 of the scale off, four times fp32's limit."""
    sessions = {"ref": scripted(), "fp16": scripted(1.0004)}
    pool = [Candidate("ref", 1, "fp32"), Candidate("fp16", 1, "fp16")]
    trials, _, _ = measure_candidates(
        pool,
        open_candidate=lambda c: sessions[c.backend],
        objective="latency",
        budget_s=0.1,
        measure_fn=lambda call, **kwargs: Stats((1.0,) * 5),
    )
    fp16 = next(t for t in trials if t.candidate.backend == "fp16")
    assert fp16.max_relative_diff == pytest.approx(4e-4, rel=0.01)
    table = Selection(pool[1], "measured", trials=tuple(trials)).explain()
    assert "rel diff" in table and "4.0e-04" in table
