"""The conformance kit (unifer.testing) fails on broken backends.

A kit check that cannot fail passes every plugin and proves nothing. Each test here wraps the
onnxruntime backend with one deliberate defect, registers it under its own name, and runs the kit
check that must catch it; each defect is deterministic (no timing luck).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("unifer_onnxruntime")

from unifer import InferenceError, register_backend, unregister_backend
from unifer.backend import Backend, SessionOptions, TensorSpec
from unifer.testing import BackendContract
from unifer_onnxruntime import OnnxRuntimeBackend


class Wrapped:
    """A session that delegates to onnxruntime's; subclasses break one thing."""

    def __init__(self, inner: Any, options: SessionOptions) -> None:
        self.inner = inner
        self.options = options
        self.calls = 0

    @property
    def inputs(self) -> Sequence[TensorSpec]:
        return tuple(self.inner.inputs)

    @property
    def outputs(self) -> Sequence[TensorSpec]:
        return tuple(self.inner.outputs)

    @property
    def settings(self) -> Mapping[str, object]:
        return self.inner.settings  # type: ignore[no-any-return]

    def run(self, feeds: Mapping[str, np.ndarray], /) -> dict[str, np.ndarray]:
        self.calls += 1
        return self.inner.run(feeds)  # type: ignore[no-any-return]

    def close(self) -> None:
        self.inner.close()


class Advertises32(Wrapped):
    """Advertises and returns int64 outputs as int32 (its specs and results agree)."""

    @property
    def outputs(self) -> Sequence[TensorSpec]:
        return tuple(
            TensorSpec(s.name, s.shape, np.dtype(np.int32) if s.dtype == np.int64 else s.dtype)
            for s in self.inner.outputs
        )

    def run(self, feeds: Mapping[str, np.ndarray], /) -> dict[str, np.ndarray]:
        out = super().run(feeds)
        return {k: v.astype(np.int32) if v.dtype == np.int64 else v for k, v in out.items()}


class Wraps32(Wrapped):
    """Right dtypes, but computes int64 in int32, as some runtimes do silently."""

    def run(self, feeds: Mapping[str, np.ndarray], /) -> dict[str, np.ndarray]:
        narrowed = {
            k: v.astype(np.int32).astype(np.int64) if v.dtype == np.int64 else v
            for k, v in feeds.items()
        }
        return super().run(narrowed)


class EchoesThreads(Wrapped):
    """Opens the runtime with its default threads and reports the requested ones."""

    @property
    def settings(self) -> Mapping[str, object]:
        return {**self.inner.settings, "threads": self.options.threads}


class WrongSometimes(Wrapped):
    """Returns zeros on a few calls after the first eight (the kit's serial runs)."""

    def run(self, feeds: Mapping[str, np.ndarray], /) -> dict[str, np.ndarray]:
        out = super().run(feeds)
        if self.calls > 8 and self.calls % 7 == 3:
            return {k: np.zeros_like(v) for k, v in out.items()}
        return out


class ReturnsTheFeed(Wrapped):
    """Hands back the caller's feed for an output equal to it (an Identity)."""

    def run(self, feeds: Mapping[str, np.ndarray], /) -> dict[str, np.ndarray]:
        out = super().run(feeds)
        for name, value in out.items():
            for feed in feeds.values():
                if feed.shape == value.shape and np.array_equal(feed, value):
                    out[name] = feed
        return out


class CachesConstants(Wrapped):
    """Hands back the same array every call for an output that does not change (a Constant)."""

    def __init__(self, inner: Any, options: SessionOptions) -> None:
        super().__init__(inner, options)
        self.cache: dict[str, np.ndarray] = {}

    def run(self, feeds: Mapping[str, np.ndarray], /) -> dict[str, np.ndarray]:
        out = super().run(feeds)
        for name, value in out.items():
            cached = self.cache.setdefault(name, value)
            if cached.shape == value.shape and np.array_equal(cached, value):
                out[name] = cached
        return out


class FailsOnEmpty(Wrapped):
    """The runtime fails on a zero-size batch, as LiteRT's XNNPACK and MXNet did."""

    def run(self, feeds: Mapping[str, np.ndarray], /) -> dict[str, np.ndarray]:
        if any(v.size == 0 for v in feeds.values()):
            raise InferenceError("failed to prepare a zero-size tensor", backend="failsonempty")
        return super().run(feeds)


class BatchOfOneForEmpty(Wrapped):
    """Answers a zero-size batch with a batch of one."""

    def run(self, feeds: Mapping[str, np.ndarray], /) -> dict[str, np.ndarray]:
        if any(v.size == 0 for v in feeds.values()):
            feeds = {k: np.zeros((1, *v.shape[1:]), v.dtype) for k, v in feeds.items()}
        return super().run(feeds)


def broken(session: type[Wrapped]) -> type[Backend]:
    """An onnxruntime backend, under its own name, whose sessions are ``session``."""

    class Broken(OnnxRuntimeBackend):
        name: ClassVar[str] = session.__name__.lower()

        def open(self, model: Path, options: SessionOptions, /) -> Wrapped:  # type: ignore[override]
            plain = SessionOptions(
                threads=None if session is EchoesThreads else options.threads,
                precision=options.precision,
                cache_dir=options.cache_dir,
                extra=options.extra,
            )
            return session(super().open(model, plain), options)

    Broken.__qualname__ = Broken.__name__ = session.__name__
    return Broken


def native_threads(self: BackendContract, session: Wrapped) -> int:
    """The kit's hook, as backends/onnxruntime/tests/test_contract.py implements it."""
    return int(session.inner._session.get_session_options().intra_op_num_threads)


def kit(session: type[Wrapped], **attributes: object) -> BackendContract:
    """A kit instance for the broken backend, as a plugin's tests would subclass it."""
    namespace: dict[str, object] = {
        "backend_class": broken(session),
        "runtime_modules": ("onnxruntime",),
        "runtime_threads": native_threads,
        **attributes,
    }
    return type(f"Test{session.__name__}", (BackendContract,), namespace)()  # type: ignore[return-value]


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "models"
    directory.mkdir()
    return directory


@contextlib.contextmanager
def registered_kit(session: type[Wrapped], **attributes: object) -> Iterator[BackendContract]:
    """:func:`kit`, its broken backend registered while in use."""
    contract = kit(session, **attributes)
    register_backend(contract.backend_class)
    try:
        yield contract
    finally:
        unregister_backend(contract.backend_class.name)


@pytest.fixture
def registered(request: pytest.FixtureRequest) -> Iterator[BackendContract]:
    """The kit for the broken backend ``request.param``, registered for the test."""
    with registered_kit(request.param) as contract:
        yield contract


@pytest.mark.parametrize(
    ("runtime_modules", "match"),
    [((), "runtime_modules is empty"), (("onnxruntimee",), "none of runtime_modules")],
)
def test_runtime_modules_that_name_nothing_fail(
    runtime_modules: tuple[str, ...], match: str
) -> None:
    # The real plugin: its module must be importable in the kit's subprocess.
    contract = kit(Wrapped, backend_class=OnnxRuntimeBackend, runtime_modules=runtime_modules)
    with pytest.raises(AssertionError, match=match):
        contract.test_plugin_module_imports_without_its_runtime()
    kit(Wrapped, backend_class=OnnxRuntimeBackend).test_plugin_module_imports_without_its_runtime()


@pytest.mark.parametrize("registered", [Advertises32], indirect=True)
def test_int64_advertised_as_int32_fails(registered: BackendContract, model_dir: Path) -> None:
    backend = registered.backend_class()
    with pytest.raises(AssertionError):
        registered.test_specs_are_well_formed(backend, model_dir)
    with pytest.raises(AssertionError, match="k_plus_one"):
        registered.test_run_returns_every_output_with_its_dtype(model_dir)


@pytest.mark.parametrize("registered", [Wraps32], indirect=True)
def test_int64_computed_in_int32_fails(registered: BackendContract, model_dir: Path) -> None:
    with pytest.raises(AssertionError, match="k_plus_one"):
        registered.test_run_returns_every_output_with_its_dtype(model_dir)


def test_the_int64_opt_out_demands_a_refusal(model_dir: Path) -> None:
    with (
        registered_kit(Wraps32, int64_beyond_int32=False) as contract,
        pytest.raises(pytest.fail.Exception, match="DID NOT RAISE"),
    ):
        contract.test_run_returns_every_output_with_its_dtype(model_dir)


@pytest.mark.parametrize("registered", [EchoesThreads], indirect=True)
def test_threads_echoed_but_not_applied_fails(registered: BackendContract, model_dir: Path) -> None:
    registered.test_settings_report_what_was_applied(model_dir)  # the echo alone passes there
    with pytest.raises(AssertionError, match="threads=1 was requested"):
        registered.test_threads_are_applied_by_the_runtime(model_dir)


@pytest.mark.parametrize("registered", [WrongSometimes], indirect=True)
def test_any_wrong_concurrent_call_fails(registered: BackendContract, model_dir: Path) -> None:
    with pytest.raises(AssertionError, match="concurrent calls differ"):
        registered.test_concurrent_runs_match_serial_runs(model_dir)


@pytest.mark.parametrize("registered", [ReturnsTheFeed, CachesConstants], indirect=True)
def test_results_aliasing_feeds_or_earlier_results_fail(
    registered: BackendContract, model_dir: Path
) -> None:
    with pytest.raises(AssertionError, match="results share memory"):
        registered.test_results_belong_to_the_caller(model_dir)


def test_the_constant_output_opt_out_demands_a_refusal(model_dir: Path) -> None:
    with (
        registered_kit(Wrapped, constant_outputs=False) as contract,
        pytest.raises(pytest.fail.Exception, match="DID NOT RAISE"),
    ):
        contract.test_results_belong_to_the_caller(model_dir)


@pytest.mark.parametrize(
    ("registered", "failure"),
    [(FailsOnEmpty, InferenceError), (BatchOfOneForEmpty, AssertionError)],
    indirect=["registered"],
)
def test_an_empty_batch_that_is_neither_empty_nor_refused_fails(
    registered: BackendContract, failure: type[Exception], model_dir: Path
) -> None:
    with pytest.raises(failure):
        registered.test_empty_batch_gives_empty_outputs_or_an_input_error(model_dir)


@pytest.fixture
def submodule_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> type[Backend]:
    """A plugin whose class lives in a submodule (``plug.backend``) that imports ``wave`` (its
    "runtime") at the top, registered by an entry point naming that submodule."""
    import importlib
    import importlib.metadata as metadata

    package = tmp_path / "site" / "plug"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "backend.py").write_text(
        "import wave\nfrom unifer_onnxruntime import OnnxRuntimeBackend\n\n"
        "class PlugBackend(OnnxRuntimeBackend):\n    name = 'plug'\n"
    )
    monkeypatch.syspath_prepend(str(package.parent))
    monkeypatch.setenv("PYTHONPATH", str(package.parent))  # for the kit's subprocess
    cls: type[Backend] = importlib.import_module("plug.backend").PlugBackend
    entry = metadata.EntryPoint("plug", "plug.backend:PlugBackend", "unifer.backends")
    monkeypatch.setattr(metadata, "entry_points", lambda **_: metadata.EntryPoints([entry]))
    return cls


def test_a_submodule_entry_point_is_checked_where_it_points(submodule_plugin: type) -> None:
    contract = kit(Wrapped, backend_class=submodule_plugin, runtime_modules=("wave",))
    contract.test_registered_under_its_name()  # "plug.backend:PlugBackend" is right
    # The module the entry point loads imports the runtime, though the package alone does not.
    with pytest.raises(AssertionError):
        contract.test_plugin_module_imports_without_its_runtime()


def test_the_kit_s_cache_directory_exists_as_the_engine_s_does(model_dir: Path) -> None:
    cache = kit(Wrapped).session_options(model_dir).cache_dir
    assert cache is not None and cache.is_dir()
