"""The conformance kit every backend plugin's tests subclass.

::

    from unifer.testing import BackendContract
    from unifer_openvino import OpenVINOBackend

    class TestOpenVINOContract(BackendContract):
        backend_class = OpenVINOBackend
        runtime_modules = ("openvino",)

The kit checks what the core relies on: probe never raises; the class is registered under its
name; the plugin module imports without its runtime (which :attr:`BackendContract.runtime_modules`
must name); specs are well formed and carry the model's dtypes; ``run`` returns every output with
the model's dtype and the right numbers, int64 beyond the int32 range included; every one of 8
threads' many ``run`` calls matches the serial result; results are owned by the caller (no memory
shared with the feeds, with other outputs or with earlier results, even for Identity and Constant
outputs); ``threads=`` is applied (read back from the runtime where the subclass implements
:meth:`BackendContract.runtime_threads`); ``close`` is idempotent; native errors come out as unifer
errors with the native cause chained; nothing is written next to the model. A backend whose format
is not ONNX overrides :meth:`BackendContract.model_file` to convert the kit's ONNX models. To run
the whole kit again on another device, subclass the contract class and set
:attr:`BackendContract.backend_options` (e.g. ``{"device": "cuda:0"}``), marking the subclass
``gpu`` where it needs one.
Needs pytest and onnx.
"""

from __future__ import annotations

import importlib.metadata as metadata
import importlib.util
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
from unifer._errors import InferenceError, InputError, ModelLoadError, UnsupportedOptionError
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
    #: Top-level modules of the runtime, which importing the plugin module must not load. Required:
    #: left empty, :meth:`test_plugin_module_imports_without_its_runtime` fails.
    runtime_modules: ClassVar[tuple[str, ...]] = ()
    #: Whether models with a dynamic batch dimension keep it dynamic in this backend.
    dynamic_batch: ClassVar[bool] = True
    #: A precision this backend rejects for a float32 model, to check the rejection path.
    unsupported_precision: ClassVar[str | None] = "int8"
    #: Tolerance against the numpy reference at fp32.
    atol: ClassVar[float] = 1e-5
    #: False where ``threads=`` has nothing to map to (a GPU backend): it must warn and report None.
    threads_apply: ClassVar[bool] = True
    #: False only where the runtime computes int64 in int32 and the plugin refuses int64 feeds
    #: beyond the int32 range with :class:`~unifer.InputError` (OpenCV DNN, OpenVINO): the kit
    #: checks that refusal and runs its int64 model within the int32 range. Left True, int64
    #: values far beyond int32 must come back exact.
    int64_beyond_int32: ClassVar[bool] = True
    #: False only where the plugin refuses a model whose graph output is a constant with
    #: :class:`~unifer.ModelLoadError` (its converter cannot write one, as LiteRT's and ncnn's):
    #: the ownership test checks that refusal, then runs the same model without that output.
    #: Left True, a Constant output must be a fresh array every call.
    constant_outputs: ClassVar[bool] = True
    #: This backend's ``backend_options`` for every engine and session the kit opens: the device
    #: a subclass runs the kit on, say. Options a test passes itself are merged over them.
    backend_options: ClassVar[Mapping[str, object]] = {}

    # -- hooks ---------------------------------------------------------------------------------

    def model_file(self, model: ToyModel, directory: Path) -> Path:
        """Write ``model`` in this backend's format into ``directory``; ONNX by default."""
        return model.save(directory)

    def runtime_threads(self, session: Session) -> int | None:
        """The intra-op thread count the runtime itself reports for ``session`` (this backend's
        own session object): asked of the native session or runtime, never taken from
        ``session.settings``. Optional: by default it raises :class:`NotImplementedError`, and
        :meth:`test_threads_are_applied_by_the_runtime` skips, since a backend that echoes
        ``threads=`` into its settings without applying it cannot be told apart generically.
        The kit asks for ``threads=1``, so where the runtime's own default is 1 an ignored
        ``threads=`` still goes unnoticed.
        """
        raise NotImplementedError

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
        """What the kit opens sessions with: a private cache (created, as the core's is) and
        :attr:`backend_options`."""
        cache = directory.parent / "cache"
        cache.mkdir(exist_ok=True)
        return SessionOptions(cache_dir=cache, extra=dict(self.backend_options))

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
        cls = self.backend_class
        eps = metadata.entry_points(group="unifer.backends").select(name=cls.name)
        values = [ep.value for ep in eps]
        assert len(values) == 1, f"entry points named {cls.name!r}: {values}, expected one"
        (ep,) = eps
        assert ep.load() is cls, f"the entry point {ep.value!r} is not {cls!r}"

    def test_probe_reports_available(self, backend: Backend) -> None:
        availability = backend.probe()
        assert isinstance(availability, Availability)
        assert availability.ok, availability.reason
        assert availability.version

    def test_plugin_module_imports_without_its_runtime(self) -> None:
        cls = self.backend_class
        assert self.runtime_modules, (
            f"{type(self).__name__}.runtime_modules is empty, so this test could never fail: set "
            f"it to the top-level modules of {cls.name}'s runtime, which importing the plugin "
            f"must not load (e.g. runtime_modules = ({cls.name!r},))"
        )
        if cls().probe().ok:  # the runtime is installed: one of them must exist
            found = [m for m in self.runtime_modules if importlib.util.find_spec(m) is not None]
            assert found, f"none of runtime_modules={self.runtime_modules!r} is installed"
        # The module that defines the class: what loading the entry point imports.
        code = (
            f"import importlib, sys; importlib.import_module({cls.__module__!r}); "
            f"print(sorted(m for m in {self.runtime_modules!r} if m in sys.modules))"
        )
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        assert result.stdout.strip() == "[]"

    def test_specs_are_well_formed(self, backend: Backend, model_dir: Path) -> None:
        model = models.multi_io()
        session = self.open_session(backend, model, model_dir)
        try:
            for spec in (*session.inputs, *session.outputs):
                assert isinstance(spec, TensorSpec)
                assert isinstance(spec.dtype, np.dtype)
                assert all(d is None or isinstance(d, (int, str)) for d in spec.shape)
            inputs = {s.name: s.dtype for s in session.inputs}
            outputs = {s.name: s.dtype for s in session.outputs}
            assert list(inputs) == ["a", "b", "k"]
            assert list(outputs) == ["sum", "product", "k_plus_one"]
            # The model's declared dtypes, in order: int64 must not be advertised as int32.
            assert list(inputs.items()) == list(model.input_dtypes.items())
            assert list(outputs.items()) == list(model.output_dtypes.items())
        finally:
            session.close()

    def test_run_matches_the_numpy_reference(self, model_dir: Path) -> None:
        model = models.mlp(batch=1)
        with self.open_engine(model, model_dir) as engine:
            feeds = model.feeds()
            got = engine.run(feeds)
        want = model.reference(feeds)
        np.testing.assert_allclose(got["y"], want["y"], atol=self.atol, rtol=1e-5)

    def test_fp32_keeps_the_activations_of_int8_weights_fp32(self, model_dir: Path) -> None:
        """The default precision computes a weight-only int8 model as fp32 does (exactly, given
        the weights): no int8 arithmetic on the activations, which some runtimes add on their own
        unless told not to. A converter may refuse the model (ModelLoadError), never approximate
        it."""
        model = models.int8_weights(batch=1)
        try:
            engine = self.open_engine(model, model_dir)
        except ModelLoadError:
            return
        with engine:
            feeds = model.feeds()
            got = engine.run(feeds)
        want = model.reference(feeds)
        np.testing.assert_allclose(got["y"], want["y"], atol=self.atol, rtol=1e-5)

    def test_run_returns_every_output_with_its_dtype(self, model_dir: Path) -> None:
        """Every output has the model's dtype and value; int64 ``k`` goes far beyond int32."""
        model = models.multi_io(wide_int64=True)
        feeds = model.feeds(batch=2)
        assert np.abs(feeds["k"]).max() > np.iinfo(np.int32).max  # the kit's own premise
        with self.open_engine(model, model_dir) as engine:
            if not self.int64_beyond_int32:
                # The documented opt-out: such feeds must be refused, never wrapped.
                with pytest.raises(InputError):
                    engine.run(feeds)
                feeds = models.multi_io().feeds(batch=2)  # the same graph, k within int32
            got = engine.run(feeds)
            advertised = {s.name: s.dtype for s in engine.outputs}
        want = model.reference(feeds)
        declared = model.output_dtypes
        assert set(got) == set(want) == set(advertised) == set(declared)
        for name, value in got.items():
            assert advertised[name] == declared[name], name
            assert value.dtype == declared[name], name
            if np.issubdtype(declared[name], np.integer):
                np.testing.assert_array_equal(value, want[name], err_msg=name)
            else:
                np.testing.assert_allclose(value, want[name], atol=self.atol, err_msg=name)

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

    def test_empty_batch_gives_empty_outputs_or_an_input_error(self, model_dir: Path) -> None:
        """A batch of 0 (no faces found, say) returns empty outputs, or is refused as the caller's
        mistake with :class:`~unifer.InputError`; never a runtime failure or a crash."""
        if not self.dynamic_batch:
            pytest.skip(f"{self.backend_class.name} has no dynamic batch dimension")
        model = models.mlp()
        with self.open_engine(model, model_dir) as engine:
            try:
                got = engine.run(model.feeds(batch=0))["y"]
            except InputError as error:
                assert "'x'" in str(error)  # it names the input
            else:
                assert got.shape == (0, 4)
                assert got.dtype == np.float32
            # The session is still good for the next call.
            feeds = model.feeds(batch=2)
            np.testing.assert_allclose(
                engine.run(feeds)["y"], model.reference(feeds)["y"], atol=self.atol, rtol=1e-5
            )

    def test_concurrent_runs_match_serial_runs(self, model_dir: Path) -> None:
        """8 threads, 20 calls each: every call's result (not just each thread's last) must equal
        that thread's serial result."""
        model = models.mlp(batch=1)
        calls = 20
        feeds = [model.feeds(seed=i) for i in range(8)]
        with self.open_engine(model, model_dir) as engine:
            serial = [engine.run(f)["y"] for f in feeds]
            results: list[list[np.ndarray]] = [[] for _ in feeds]
            barrier = threading.Barrier(len(feeds))

            def work(i: int) -> None:
                barrier.wait()
                for _ in range(calls):
                    results[i].append(engine.run(feeds[i])["y"])

            threads = [threading.Thread(target=work, args=(i,)) for i in range(len(feeds))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        wrong = [
            (i, call)
            for i, (got, want) in enumerate(zip(results, serial, strict=True))
            for call, value in enumerate(got)
            if not np.array_equal(value, want)
        ]
        assert [len(got) for got in results] == [calls] * len(feeds)
        assert not wrong, (
            f"{len(wrong)} of {calls * len(feeds)} concurrent calls differ from the serial "
            f"result; (thread, call): {wrong[:10]}"
        )

    def test_results_belong_to_the_caller(self, model_dir: Path) -> None:
        """No result shares memory with a feed, another output or an earlier result, even an
        Identity output (the runtime may hand back the feed) or a Constant one (it may hand back
        the same array every call); results are writable, and writing into results or feeds does
        not disturb the next call."""
        if not self.constant_outputs:  # the documented opt-out: refused, never run wrongly
            refused = model_dir.parent / "refused"
            refused.mkdir()
            with pytest.raises(ModelLoadError):
                self.open_engine(models.passthrough(), refused).close()
        model = models.passthrough(constant_output=self.constant_outputs)
        with self.open_engine(model, model_dir) as engine:
            feeds = [model.feeds(batch=2, seed=seed) for seed in (1, 2)]
            runs = [engine.run(f) for f in feeds]
            runs.append(engine.run(feeds[1]))  # the same feeds again: no cached result
            kept = [{name: value.copy() for name, value in run.items()} for run in runs]
            arrays = [
                *((f"feed {i} {n!r}", v) for i, f in enumerate(feeds) for n, v in f.items()),
                *((f"run {i} {n!r}", v) for i, r in enumerate(runs) for n, v in r.items()),
            ]
            shared = [
                f"{a} and {b}"
                for j, (b, y) in enumerate(arrays)
                for a, x in arrays[:j]
                if b.startswith("run") and np.shares_memory(x, y)
            ]
            assert not shared, f"results share memory: {'; '.join(shared)}"
            for run, want, f in zip(runs, kept, (*feeds, feeds[1]), strict=True):
                assert set(run) == set(model.output_dtypes)
                for name, value in run.items():  # later calls did not overwrite earlier results
                    np.testing.assert_array_equal(value, want[name], err_msg=name)
                    np.testing.assert_allclose(
                        value, model.reference(f)[name], atol=self.atol, err_msg=name
                    )
            for run in runs:  # writable, and writing into them must not disturb the next call
                for value in run.values():
                    value[...] = 0
            feeds[0]["x"][...] = 0  # nor must reusing a feed's buffer after the call
            again = engine.run(feeds[1])
            for name, value in again.items():
                np.testing.assert_array_equal(value, kept[1][name], err_msg=name)

    def test_close_is_idempotent(self, backend: Backend, model_dir: Path) -> None:
        session = self.open_session(backend, models.mlp(), model_dir)
        session.close()
        session.close()

    def test_settings_report_what_was_applied(self, model_dir: Path) -> None:
        """``settings`` reports ``threads=``, precision and device. Taken alone this cannot tell
        a backend that applies ``threads=`` from one that echoes it: that takes the runtime's own
        answer, :meth:`test_threads_are_applied_by_the_runtime` (needs :meth:`runtime_threads`).
        """
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

    def test_threads_are_applied_by_the_runtime(self, model_dir: Path) -> None:
        """The runtime itself, asked through :meth:`runtime_threads`, runs ``threads=1``."""
        if not self.threads_apply:
            pytest.skip(f"threads= has nothing to map to in {self.backend_class.name}")
        with self.open_engine(models.mlp(), model_dir, threads=1) as engine:
            try:
                applied = self.runtime_threads(engine._session)
            except NotImplementedError:
                pytest.skip(
                    f"{type(self).__name__} does not implement runtime_threads(), so whether "
                    "threads= is applied (not only echoed in settings) is not checked"
                )
            assert applied == 1, f"threads=1 was requested; the runtime reports {applied}"
            assert engine.settings["threads"] == applied

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
