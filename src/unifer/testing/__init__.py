"""The conformance kit every backend plugin's tests subclass.

::

    from unifer.testing import BackendContract
    from unifer_openvino import OpenVINOBackend

    class TestOpenVINOContract(BackendContract):
        backend_class = OpenVINOBackend
        runtime_modules = ("openvino",)

The kit checks what the core relies on: probe never raises; the class is registered under its
name; the plugin module imports without its runtime; specs are well formed; ``run`` returns every
output with its advertised dtype and the right numbers; ``run`` is safe from 8 threads; results are
owned by the caller; ``close`` is idempotent; native errors come out as unifer errors with the
native cause chained; nothing is written next to the model. A backend whose format is not ONNX
overrides :meth:`BackendContract.model_file` to convert the kit's ONNX models. To run the whole kit
again on another device, subclass the contract class and set :attr:`BackendContract.backend_options`
(e.g. ``{"device": "cuda:0"}``), marking the subclass ``gpu`` where it needs one.
Needs pytest and onnx.
"""

from __future__ import annotations

import importlib.metadata as metadata
import subprocess
import sys
import threading
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from unifer import Engine, UniferError, UniferWarning
from unifer._errors import InferenceError, ModelLoadError, UnsupportedOptionError
from unifer.backend import (
    BACKEND_API_VERSION,
    Availability,
    Backend,
    Session,
    SessionOptions,
    TensorSpec,
)

from . import models
from .models import ToyModel

__all__ = ["BackendContract", "models"]


class BackendContract:
    """Subclass this in a plugin's tests and set :attr:`backend_class`."""

    backend_class: ClassVar[type[Backend]]
    #: Top-level modules of the runtime, which importing the plugin module must not load.
    runtime_modules: ClassVar[tuple[str, ...]] = ()
    #: Whether models with a dynamic batch dimension keep it dynamic in this backend.
    dynamic_batch: ClassVar[bool] = True
    #: A precision this backend rejects for a float32 model, to check the rejection path.
    unsupported_precision: ClassVar[str | None] = "int8"
    #: Tolerance against the numpy reference at fp32.
    atol: ClassVar[float] = 1e-5
    #: False where ``threads=`` has nothing to map to (a GPU backend): it must warn and report None.
    threads_apply: ClassVar[bool] = True
    #: This backend's ``backend_options`` for every engine and session the kit opens: the device
    #: a subclass runs the kit on, say. Options a test passes itself are merged over them.
    backend_options: ClassVar[Mapping[str, object]] = {}

    # -- hooks ---------------------------------------------------------------------------------

    def model_file(self, model: ToyModel, directory: Path) -> Path:
        """Write ``model`` in this backend's format into ``directory``; ONNX by default."""
        return model.save(directory)

    # -- fixtures ------------------------------------------------------------------------------

    @pytest.fixture(autouse=True)
    def _private_cache(
        self, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("UNIFER_CACHE_DIR", str(tmp_path_factory.mktemp("unifer-cache")))

    @pytest.fixture
    def backend(self) -> Backend:
        return self.backend_class()

    @pytest.fixture
    def model_dir(self, tmp_path: Path) -> Path:
        directory = tmp_path / "models"
        directory.mkdir()
        return directory

    def open_engine(self, model: ToyModel, directory: Path, **options: object) -> Engine:
        return self.load(self.model_file(model, directory), **options)

    def load(self, path: Path, **options: object) -> Engine:
        """``Engine.load(path)`` with this backend and :attr:`backend_options` merged in."""
        name = self.backend_class.name
        given = options.pop("backend_options", None) or {}
        assert isinstance(given, Mapping)
        merged = {name: {**self.backend_options, **given.get(name, {})}}
        return Engine.load(path, backend=name, backend_options=merged, **options)  # type: ignore[arg-type]

    def session_options(self, directory: Path) -> SessionOptions:
        """What the kit opens sessions with: a private cache and :attr:`backend_options`."""
        return SessionOptions(
            cache_dir=directory.parent / "cache", extra=dict(self.backend_options)
        )

    def open_session(self, backend: Backend, model: ToyModel, directory: Path) -> Session:
        path = self.model_file(model, directory)
        return backend.open(path, self.session_options(directory))

    # -- the contract --------------------------------------------------------------------------

    def test_class_satisfies_the_protocol(self, backend: Backend) -> None:
        assert isinstance(backend, Backend)
        assert backend.api_version == BACKEND_API_VERSION
        assert backend.name.isidentifier() and backend.name == backend.name.lower()
        assert backend.suffixes and all(
            s.startswith(".") and s == s.lower() for s in backend.suffixes
        )
        assert "pip install" in backend.install

    def test_registered_under_its_name(self) -> None:
        eps = metadata.entry_points(group="unifer.backends").select(name=self.backend_class.name)
        values = [ep.value for ep in eps]
        cls = self.backend_class
        assert values == [f"{cls.__module__.split('.')[0]}:{cls.__qualname__}"]

    def test_probe_reports_available(self, backend: Backend) -> None:
        availability = backend.probe()
        assert isinstance(availability, Availability)
        assert availability.ok, availability.reason
        assert availability.version

    def test_plugin_module_imports_without_its_runtime(self) -> None:
        module = self.backend_class.__module__.split(".")[0]
        code = (
            f"import sys, {module}; "
            f"print(sorted(m for m in {self.runtime_modules!r} if m in sys.modules))"
        )
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        assert result.stdout.strip() == "[]"

    def test_specs_are_well_formed(self, backend: Backend, model_dir: Path) -> None:
        session = self.open_session(backend, models.multi_io(), model_dir)
        try:
            for spec in (*session.inputs, *session.outputs):
                assert isinstance(spec, TensorSpec)
                assert isinstance(spec.dtype, np.dtype)
                assert all(d is None or isinstance(d, (int, str)) for d in spec.shape)
            assert [s.name for s in session.inputs] == ["a", "b", "k"]
            assert [s.name for s in session.outputs] == ["sum", "product", "k_plus_one"]
            assert [s.dtype for s in session.inputs] == [np.float32, np.float32, np.int64]
        finally:
            session.close()

    def test_run_matches_the_numpy_reference(self, model_dir: Path) -> None:
        model = models.mlp(batch=1)
        with self.open_engine(model, model_dir) as engine:
            feeds = model.feeds()
            got = engine.run(feeds)
        want = model.reference(feeds)
        np.testing.assert_allclose(got["y"], want["y"], atol=self.atol, rtol=1e-5)

    def test_run_returns_every_output_with_its_dtype(self, model_dir: Path) -> None:
        model = models.multi_io()
        with self.open_engine(model, model_dir) as engine:
            feeds = model.feeds(batch=2)
            got = engine.run(feeds)
            advertised = {s.name: s.dtype for s in engine.outputs}
        want = model.reference(feeds)
        assert set(got) == set(want) == set(advertised)
        for name, value in got.items():
            assert value.dtype == advertised[name], name
            np.testing.assert_allclose(value, want[name], atol=self.atol)

    def test_dynamic_batch(self, model_dir: Path) -> None:
        if not self.dynamic_batch:
            pytest.skip(f"{self.backend_class.name} has no dynamic batch dimension")
        model = models.mlp()
        with self.open_engine(model, model_dir) as engine:
            assert not isinstance(engine.inputs[0].shape[0], int)
            for batch in (1, 3):
                feeds = model.feeds(batch=batch)
                got = engine.run(feeds)["y"]
                assert got.shape == (batch, 4)
                np.testing.assert_allclose(
                    got, model.reference(feeds)["y"], atol=self.atol, rtol=1e-5
                )

    def test_concurrent_runs_match_serial_runs(self, model_dir: Path) -> None:
        model = models.mlp(batch=1)
        feeds = [model.feeds(seed=i) for i in range(8)]
        with self.open_engine(model, model_dir) as engine:
            serial = [engine.run(f)["y"] for f in feeds]
            results: list[np.ndarray | None] = [None] * len(feeds)
            barrier = threading.Barrier(len(feeds))

            def work(i: int) -> None:
                barrier.wait()
                for _ in range(20):
                    results[i] = engine.run(feeds[i])["y"]

            threads = [threading.Thread(target=work, args=(i,)) for i in range(len(feeds))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        for got, want in zip(results, serial, strict=True):
            assert got is not None
            np.testing.assert_array_equal(got, want)

    def test_results_belong_to_the_caller(self, model_dir: Path) -> None:
        model = models.mlp(batch=1)
        with self.open_engine(model, model_dir) as engine:
            first = engine.run(model.feeds(seed=1))["y"]
            kept = first.copy()
            second = engine.run(model.feeds(seed=2))["y"]
            assert not np.shares_memory(first, second)
            np.testing.assert_array_equal(first, kept)
            first[...] = 0  # writable, and writing into it must not disturb the next call
            np.testing.assert_array_equal(engine.run(model.feeds(seed=2))["y"], second)

    def test_close_is_idempotent(self, backend: Backend, model_dir: Path) -> None:
        session = self.open_session(backend, models.mlp(), model_dir)
        session.close()
        session.close()

    def test_settings_report_what_was_applied(self, model_dir: Path) -> None:
        if not self.threads_apply:
            with (
                pytest.warns(UniferWarning, match="threads"),
                self.open_engine(models.mlp(), model_dir, threads=1) as engine,
            ):
                assert engine.settings["threads"] is None
                assert engine.settings["precision"] == "fp32"
                assert engine.settings["device"]
            return
        with self.open_engine(models.mlp(), model_dir, threads=1) as engine:
            assert engine.settings["threads"] == 1
            assert engine.settings["precision"] == "fp32"
            assert engine.settings["device"]

    def test_unsupported_precision_is_rejected(self, model_dir: Path) -> None:
        if self.unsupported_precision is None:
            pytest.skip("every precision is supported")
        with pytest.raises(UnsupportedOptionError):
            self.open_engine(models.mlp(), model_dir, precision=self.unsupported_precision)

    def test_unknown_backend_option_warns(self, model_dir: Path) -> None:
        options = {self.backend_class.name: {"no_such_option": 1}}
        with pytest.warns(UniferWarning, match="no_such_option"):
            self.open_engine(models.mlp(), model_dir, backend_options=options).close()

    def test_corrupt_model_is_a_model_load_error(self, backend: Backend, model_dir: Path) -> None:
        good = self.model_file(models.mlp(), model_dir)
        data = good.read_bytes()
        good.write_bytes(data[: len(data) // 2])  # truncated, as by an interrupted download
        with pytest.raises(ModelLoadError) as info:
            backend.open(good, self.session_options(model_dir))
        assert good.name in str(info.value)
        assert info.value.__cause__ is not None

    def test_native_run_errors_are_translated(self, backend: Backend, model_dir: Path) -> None:
        session = self.open_session(backend, models.mlp(batch=1), model_dir)
        try:
            # Bypass the Engine's checks so the runtime itself sees a wrong shape.
            with pytest.raises(UniferError) as info, warnings.catch_warnings():
                warnings.simplefilter("ignore")
                session.run({"x": np.zeros((2, 5), np.float32)})
            assert isinstance(info.value, InferenceError)
            assert info.value.__cause__ is not None
        finally:
            session.close()

    def test_nothing_is_written_next_to_the_model(self, model_dir: Path) -> None:
        model = models.mlp()
        path = self.model_file(model, model_dir)
        before = sorted(p.name for p in model_dir.iterdir())
        with self.load(path) as engine:
            engine.run(model.feeds())
        assert sorted(p.name for p in model_dir.iterdir()) == before
