"""Entry-point discovery and plugin validation, with the entry points monkeypatched."""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import shutil

import pytest

from unifer import BackendNotFoundError, PluginError, _registry
from unifer.backend import BACKEND_API_VERSION


class GoodBackend:
    name = "good"
    suffixes = (".good",)
    install = "pip install good"
    api_version = BACKEND_API_VERSION

    def probe(self):
        raise RuntimeError("probe is not supposed to raise")

    def open(self, model, options, /):
        raise NotImplementedError


class OldBackend(GoodBackend):
    name = "old"
    api_version = 0


@pytest.fixture
def entry_points(monkeypatch):
    """Replace the entry-point scan with hand-made entry points resolving to this module."""

    def install(**targets: str) -> None:
        eps: dict[str, tuple[metadata.EntryPoint, ...]] = {}
        for name, value in targets.items():
            for v in value.split("|"):
                eps.setdefault(name, ())
                eps[name] += (metadata.EntryPoint(name, v, _registry.GROUP),)
        monkeypatch.setattr(_registry, "_entry_points", lambda: eps)
        _registry._load.cache_clear()

    yield install
    _registry._load.cache_clear()


def test_names_and_loading(entry_points):
    entry_points(good=f"{__name__}:GoodBackend")
    assert _registry.backend_names() == ["good"]
    assert isinstance(_registry.get_backend("good"), GoodBackend)


def test_name_must_match_entry_point(entry_points):
    entry_points(other=f"{__name__}:GoodBackend")
    with pytest.raises(PluginError, match="must equal Backend.name"):
        _registry.get_backend("other")


def test_api_version_is_checked(entry_points):
    entry_points(old=f"{__name__}:OldBackend")
    with pytest.raises(PluginError, match="backend API 0, this unifer needs 1"):
        _registry.get_backend("old")


def test_import_failure_is_a_plugin_error_with_cause(entry_points):
    entry_points(broken="no_such_module_xyz:Backend")
    with pytest.raises(PluginError, match="failed to import") as info:
        _registry.get_backend("broken")
    assert isinstance(info.value.__cause__, ImportError)


def test_not_a_class(entry_points):
    entry_points(good=f"{__name__}:BACKEND_API_VERSION")
    with pytest.raises(PluginError, match="must point at a backend class"):
        _registry.get_backend("good")


def test_duplicate_registrations_are_reported(entry_points):
    entry_points(good=f"{__name__}:GoodBackend|{__name__}:OldBackend")
    with pytest.raises(PluginError, match="more than one distribution"):
        _registry.get_backend("good")


def test_unknown_name_without_plugins(entry_points):
    entry_points()
    with pytest.raises(BackendNotFoundError, match="no backends are installed"):
        _registry.get_backend("tensorflow")


def test_probe_that_raises_is_reported_not_propagated(entry_points):
    entry_points(good=f"{__name__}:GoodBackend")
    (info,) = _registry.describe_backends()
    assert not info.availability.ok
    assert "probe() raised RuntimeError" in (info.availability.reason or "")


class CrashingConstructor(GoodBackend):
    name = "crashinit"

    def __init__(self):
        raise RuntimeError("init boom")


class ProbeReturnsNonsense(GoodBackend):
    name = "nonsense"

    def probe(self):
        return True


def test_a_constructor_that_raises_is_a_plugin_error_that_unifer_backends_shows(entry_points):
    entry_points(crashinit=f"{__name__}:CrashingConstructor")
    with pytest.raises(PluginError, match="failed to start: RuntimeError: init boom") as info:
        _registry.get_backend("crashinit")
    assert isinstance(info.value.__cause__, RuntimeError)
    (row,) = _registry.describe_backends()
    assert row.broken and not row.availability.ok
    assert "init boom" in (row.availability.reason or "")
    assert _registry.broken_plugins() == {"crashinit": info.value.message}


def test_a_probe_answer_that_is_no_availability_is_reported(entry_points):
    entry_points(nonsense=f"{__name__}:ProbeReturnsNonsense")
    availability = _registry.probe(_registry.get_backend("nonsense"))
    assert not availability.ok
    assert "probe() returned bool, not an Availability" in (availability.reason or "")


def test_in_process_registration_wins(entry_points, fake_backend):
    entry_points(fake=f"{__name__}:GoodBackend")
    assert type(_registry.get_backend("fake")).__name__ == "FakeBackend"


def test_static_auto_order():
    assert _registry.auto_order(["zeta", "onnxruntime", "alpha", "openvino"]) == [
        "openvino",
        "onnxruntime",
        "alpha",
        "zeta",
    ]


def make_site(site, *, runtime: str, version: str, top_level: str) -> None:
    """A site directory holding a plugin that requires ``fakert`` and imports the ``fakert``
    package, and ``runtime`` (another distribution) providing ``top_level``."""
    plugin = site / "unifer_altplug"
    plugin.mkdir(exist_ok=True)
    (plugin / "__init__.py").write_text(
        "class AltBackend:\n    def open(self, model, options, /):\n        import fakert\n"
    )
    info = site / "unifer_altplug-1.0.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: unifer-altplug\nVersion: 1.0\nRequires-Dist: fakert>=1\n"
    )
    (info / "entry_points.txt").write_text(
        f"[{_registry.GROUP}]\naltplug = unifer_altplug:AltBackend\n"
    )
    for old in site.glob(f"{runtime.replace('-', '_')}-*.dist-info"):
        shutil.rmtree(old)  # what pip does on an upgrade
    runtime_info = site / f"{runtime.replace('-', '_')}-{version}.dist-info"
    runtime_info.mkdir()
    (runtime_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {runtime}\nVersion: {version}\n"
    )
    (runtime_info / "top_level.txt").write_text(f"{top_level}\n")


@pytest.fixture
def fresh_metadata():
    """Forget every per-process metadata read, before and after (a new process would not have
    them)."""

    def forget() -> None:
        importlib.invalidate_caches()
        for cached in (_registry._entry_points, _registry.installed_versions):
            cached.cache_clear()
        _registry._import_providers.cache_clear()

    forget()
    yield forget
    forget()


def test_versions_follow_a_replacement_distribution_of_the_runtime(
    tmp_path, monkeypatch, fresh_metadata
):
    """Like onnxruntime-gpu installed instead of the required onnxruntime: the key must still
    change when the distribution that provides the runtime is upgraded."""
    monkeypatch.syspath_prepend(str(tmp_path))
    make_site(tmp_path, runtime="fakert-gpu", version="1.0", top_level="fakert")
    before = dict(_registry.installed_versions("altplug"))
    assert before == {"unifer-altplug": "1.0", "fakert": "not installed", "fakert-gpu": "1.0"}
    make_site(tmp_path, runtime="fakert-gpu", version="1.1", top_level="fakert")
    fresh_metadata()
    assert _registry.installed_versions("altplug")["fakert-gpu"] == "1.1"


def test_versions_ignore_distributions_of_packages_the_plugin_does_not_import(
    tmp_path, monkeypatch, fresh_metadata
):
    monkeypatch.syspath_prepend(str(tmp_path))
    make_site(tmp_path, runtime="fakert-gpu", version="1.0", top_level="unrelated")
    assert dict(_registry.installed_versions("altplug")) == {
        "unifer-altplug": "1.0",
        "fakert": "not installed",
    }


def test_an_extra_s_other_name_points_at_its_backend(fake_backend, monkeypatch):
    # 'tflite' is an install extra of litert, not a backend name.
    monkeypatch.setitem(_registry.FIRST_PARTY, "fakelite", "fake")
    with pytest.raises(
        BackendNotFoundError,
        match="'fakelite' names the install extra of backend 'fake': use 'fake'",
    ):
        _registry.get_backend("fakelite")
