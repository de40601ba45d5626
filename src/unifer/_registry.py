"""Backend discovery: entry points in the group ``unifer.backends``, plus in-process registration.

Nothing is scanned at import time. The first lookup scans the entry points once per process; loading
a backend imports only that plugin's module (which, by contract, does not import its runtime). A
loaded class is validated against the plugin contract before it is used, and problems name the
distribution that caused them.
"""

from __future__ import annotations

import difflib
import functools
import importlib.metadata as metadata
import importlib.util
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar

from ._errors import BackendNotFoundError, BackendUnavailableError, PluginError, UniferError
from .backend import BACKEND_API_VERSION, Availability, Backend, Session, SessionOptions

GROUP: Final = "unifer.backends"

#: First-party backends and the extra that installs each: used for install hints for backends that
#: are not installed at all (an installed plugin states its own ``install`` line).
FIRST_PARTY: Final[dict[str, str]] = {
    "onnxruntime": "onnxruntime",
    "openvino": "openvino",
    "litert": "litert",
    "tflite": "litert",
    "ncnn": "ncnn",
    "opencv": "opencv",
    "mxnet": "mxnet",
    "tensorrt": "tensorrt",
    "torch": "torch",
}

#: The fp32 reference whatever unifer compares is checked against (auto's candidates, conversions,
#: the bench's integrity): the ONNX project's own runtime, the most conformant.
REFERENCE: Final = "onnxruntime"


def reference_first(names: Iterable[str]) -> list[str]:
    """``names`` with :data:`REFERENCE` first and the others in their order."""
    return sorted(names, key=lambda n: n != REFERENCE)


#: The one static preference order, owned by the core: it settles near-ties between measured
#: candidates and is the choice when ``backend="auto"`` may not measure. Unlisted backends follow,
#: sorted by name. torch is last: a training framework, the heaviest import, and on CPUs slower than
#: the inference runtimes; on an NVIDIA GPU the static choice puts the backends that run there by
#: default (tensorrt, then torch) first anyway (``_auto``).
STATIC_ORDER: Final[tuple[str, ...]] = (
    "tensorrt",
    "openvino",
    "onnxruntime",
    "litert",
    "ncnn",
    "opencv",
    "mxnet",
    "torch",
)

_registered: dict[str, type[Backend]] = {}


def install_hint(name: str) -> str | None:
    """The pip command that installs a first-party backend, or None for unknown names."""
    extra = FIRST_PARTY.get(name)
    if extra is None:
        return None
    line = f'pip install "unifer[{extra}]"'
    if extra == "mxnet":  # mxnet 1.9.1 pins numpy < 1.24, which the other runtimes cannot use
        line += " in an environment of its own (numpy < 1.24; see the unifer-mxnet README)"
    elif extra == "tensorrt":  # the wheels' libraries come from NVIDIA's index, GPU machines only
        line += " on a machine with an NVIDIA GPU and driver (see the unifer-tensorrt README)"
    elif extra == "torch":  # a plain `pip install torch` on Linux is the multi-GB CUDA build
        line += (
            " beside the torch build for this machine (CPU only: pip install torch --index-url "
            "https://download.pytorch.org/whl/cpu; see the unifer-torch README)"
        )
    return line


@dataclass(frozen=True, slots=True)
class BackendInfo:
    """One installed backend as ``unifer backends`` shows it."""

    name: str
    distribution: str | None
    distribution_version: str | None
    availability: Availability
    broken: bool = False
    """The plugin itself failed (import, contract, constructor): its reason says what to do."""


@functools.cache
def _entry_points() -> dict[str, tuple[metadata.EntryPoint, ...]]:
    """Scan the entry points once per process; duplicates are kept so they can be reported."""
    found: dict[str, list[metadata.EntryPoint]] = {}
    for ep in metadata.entry_points(group=GROUP):
        found.setdefault(ep.name, []).append(ep)
    return {name: tuple(eps) for name, eps in found.items()}


@functools.cache
def plugin_packages() -> frozenset[str]:
    """The packages of the installed plugins (``warn_user`` looks past their frames to the
    user's line, whatever they are called): an entry point's module when it is a package, else
    the package holding it (``acme.unifer_rt`` for ``acme.unifer_rt.backend:Backend``, never all
    of ``acme``)."""
    modules = (ep.value.partition(":")[0] for eps in _entry_points().values() for ep in eps)
    return frozenset(_package_of(m) for m in modules)


def _package_of(module: str) -> str:
    parent = module.rpartition(".")[0]
    if not parent:
        return module
    try:
        spec = importlib.util.find_spec(module)  # imports the parents, loaded with the plugin
    except (ImportError, ValueError):
        return module
    return module if spec is not None and spec.submodule_search_locations else parent


def register_backend(cls: type[Backend]) -> None:
    """Register a backend class in this process; it takes precedence over entry points.

    For tests and frozen applications. Use :func:`unregister_backend` to undo it.
    """
    _validate(cls, expected_name=cls.name, origin=f"{cls.__module__}.{cls.__qualname__}")
    _registered[cls.name] = cls
    _load.cache_clear()
    cached_probe.cache_clear()
    installed_versions.cache_clear()


def unregister_backend(name: str) -> None:
    """Undo :func:`register_backend`."""
    _registered.pop(name, None)
    _load.cache_clear()
    cached_probe.cache_clear()
    installed_versions.cache_clear()


def backend_names() -> list[str]:
    """Names of every installed backend (registered in-process or by entry point), sorted."""
    return sorted(set(_registered) | set(_entry_points()))


def get_backend(name: str) -> Backend:
    """Return an instance of the backend called ``name``.

    Raises:
        BackendNotFoundError: no installed plugin registers ``name``.
        PluginError: the plugin cannot be imported, cannot be instantiated, or breaks the
            contract.
    """
    cls = _load(name)
    try:
        return cls()
    except Exception as exc:  # the contract asks for a cheap constructor that cannot fail
        raise PluginError(
            f"the plugin for backend {name!r} ({_origin(name)}) failed to start: "
            f"{type(exc).__name__}: {exc}. {_DEFECT}"
        ) from exc


def open_session(plugin: Backend, path: Path, options: SessionOptions) -> Session:
    """``plugin.open(path, options)``, with :func:`plugin_call`'s treatment of defects (so that
    ``backend="auto"`` passes over that candidate as over any that failed to open)."""
    return plugin_call(plugin, f"opening {path.name}", plugin.open, path, options)


_T = TypeVar("_T")


def plugin_call(
    plugin: Backend,
    doing: str,
    method: Callable[..., _T],
    *args: object,
    passes: tuple[type[Exception], ...] = (),
) -> _T:
    """``method(*args)`` of ``plugin``; an exception from outside unifer's hierarchy (and
    ``passes``) is a defect of the plugin (the contract has it raise UniferErrors): a
    PluginError that names it."""
    try:
        return method(*args)
    except Exception as exc:
        if isinstance(exc, (UniferError, MemoryError, *passes)):
            raise
        raise PluginError(
            f"backend {plugin.name!r} ({_origin(plugin.name)}) raised {type(exc).__name__} "
            f"{doing}: {exc}. {_DEFECT}"
        ) from exc


_DEFECT: Final = "This is a defect in the plugin: report it to its authors, or uninstall it"


def _origin(name: str) -> str:
    """Where backend ``name`` comes from, for messages: its entry point and distribution."""
    if name in _registered:
        cls = _registered[name]
        return f"{cls.__module__}.{cls.__qualname__}, registered in-process"
    eps = _entry_points().get(name)
    if not eps:
        return "not installed"
    dist, version = _distribution(eps[0])
    return f"{eps[0].value} from {dist} {version}"


def _distribution(ep: metadata.EntryPoint) -> tuple[str | None, str | None]:
    dist = ep.dist
    return (dist.name, dist.version) if dist is not None else (None, None)


@functools.cache
def _load(name: str) -> type[Backend]:
    if name in _registered:
        return _registered[name]
    eps = _entry_points().get(name)
    if not eps:
        raise BackendNotFoundError(_not_found_message(name))
    if len(eps) > 1:
        dists = ", ".join(f"{d} ({ep.value})" for ep in eps for d in [_distribution(ep)[0]])
        raise PluginError(
            f"backend {name!r} is registered by more than one distribution: {dists}. "
            "Uninstall all but one of them"
        )
    (ep,) = eps
    dist, _ = _distribution(ep)
    origin = _origin(name)
    try:
        cls = ep.load()
    except Exception as exc:
        raise PluginError(
            f"the plugin for backend {name!r} ({origin}) failed to import: {exc}. "
            f"Reinstall it (pip install --force-reinstall {dist or 'the plugin'})"
        ) from exc
    _validate(cls, expected_name=name, origin=origin)
    return cls  # type: ignore[no-any-return]


def _validate(cls: object, *, expected_name: str, origin: str) -> None:
    if not isinstance(cls, type):
        raise PluginError(f"{origin} must point at a backend class, got {type(cls).__name__}")
    missing = [
        a
        for a in ("name", "suffixes", "install", "api_version", "probe", "open")
        if not hasattr(cls, a)
    ]
    if missing:
        raise PluginError(f"{origin} is not a unifer backend: it lacks {', '.join(missing)}")
    if cls.name != expected_name:  # type: ignore[attr-defined]
        raise PluginError(
            f"{origin} is registered as {expected_name!r} but calls itself "
            f"{cls.name!r}; the entry-point name must equal Backend.name"  # type: ignore[attr-defined]
        )
    api = cls.api_version  # type: ignore[attr-defined]
    if api != BACKEND_API_VERSION:
        raise PluginError(
            f"{origin} provides backend API {api}, this unifer needs {BACKEND_API_VERSION}; "
            "upgrade both together (pip install -U unifer <plugin>)"
        )


def closest_name(name: str) -> str | None:
    """The installed or first-party backend name closest to ``name`` (a typo, another case)."""
    # Names are lower case: 'OpenVINO' is matched as 'openvino'.
    known = {n.lower(): n for n in sorted({*backend_names(), *FIRST_PARTY})}
    match = difflib.get_close_matches(name.lower(), list(known), n=1)
    return known[match[0]] if match else None


def _not_found_message(name: str) -> str:
    installed = backend_names()
    parts = [f"no backend named {name!r} is installed"]
    parts.append(f"installed: {', '.join(installed)}" if installed else "no backends are installed")
    alias = FIRST_PARTY.get(name)
    if alias is not None and alias != name and alias in installed:  # tflite: litert's extra
        parts.append(f"{name!r} names the install extra of backend {alias!r}: use {alias!r}")
        return "; ".join(parts)
    close = closest_name(name)
    if close is not None and close != name:
        parts.append(f"did you mean {close!r}?")
    if close in installed:
        return "; ".join(parts)  # a misspelt installed backend: nothing to install
    hint = install_hint(name) or (install_hint(close) if close else None)
    if hint:
        parts.append(f"install it with: {hint}")
    return "; ".join(parts)


def require_available(backend: Backend) -> Availability:
    """Probe ``backend`` and raise :class:`BackendUnavailableError` when it cannot run here."""
    availability = probe(backend)
    if not availability.ok:
        fix = availability.install or backend.install
        raise BackendUnavailableError(
            f"backend {backend.name!r} is installed but cannot run: {availability.reason}. "
            f"Fix it with: {fix}"
        )
    return availability


def probe(backend: Backend) -> Availability:
    """Probe ``backend``, turning a plugin that breaks the never-raise rule into an answer."""
    try:
        availability = backend.probe()
    except Exception as exc:  # the contract says probe never raises; keep the cause visible anyway
        return Availability(ok=False, reason=f"probe() raised {type(exc).__name__}: {exc}")
    if not isinstance(availability, Availability):
        return Availability(
            ok=False,
            reason=f"probe() returned {type(availability).__name__}, not an Availability. "
            + _DEFECT,
        )
    return availability


@functools.cache
def cached_probe(name: str) -> Availability:
    """:func:`probe` of the backend called ``name``, once per process.

    ``backend="auto"`` asks every candidate on every load; a runtime's availability does not
    change while the process runs, and probing imports the runtime.
    """
    return probe(get_backend(name))


@functools.cache
def installed_versions(name: str) -> Mapping[str, str]:
    """The versions of backend ``name``'s distribution and of what it requires (its extras' too,
    where installed: a runtime may live in one), from package metadata: unlike :func:`probe`, this
    imports no runtime (``backend="auto"`` keys its cached decisions on these, and a cached load
    must stay cheap).

    A required runtime that is not installed was usually replaced by another distribution of the
    same import package (onnxruntime-gpu for onnxruntime, opencv-contrib-python for
    opencv-python-headless): then the installed distributions that provide a package the plugin
    imports are recorded too (:func:`_providers_of_imports`), so upgrading them is noticed.

    A backend registered in-process has no distribution: its probed version stands in. Read once
    per process, like :func:`cached_probe`.
    """
    eps = _entry_points().get(name)
    if name in _registered or not eps or eps[0].dist is None:
        return {name: str(cached_probe(name).version)}
    dist = eps[0].dist
    versions: dict[str, str] = {dist.name: dist.version}
    replaced = False
    for requirement in dist.requires or ():
        match = _REQUIREMENT_NAME.match(requirement)
        if match is None:
            continue
        try:
            versions[match.group(0)] = metadata.version(match.group(0))
        except metadata.PackageNotFoundError:
            # An extra's requirement may be absent (tensorrt keeps its runtime in one).
            if not _EXTRA_MARKER.search(requirement):
                versions[match.group(0)] = "not installed"
                replaced = True
    if replaced:
        known = {_canonical(n) for n in versions}
        for provider, version in _providers_of_imports(eps[0].module).items():
            if _canonical(provider) not in known:
                versions[provider] = version
    return versions


#: The project name at the start of a requirement string (PEP 508).
_REQUIREMENT_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_EXTRA_MARKER: Final = re.compile(r";.*\bextra\s*==")
#: The top-level package of an import statement, wherever it is (plugins import lazily).
_IMPORT: Final = re.compile(r"^[ \t]*(?:from|import)[ \t]+([A-Za-z_]\w*)", re.MULTILINE)


def _canonical(project: str) -> str:
    """A project name normalized as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", project).lower()


def _providers_of_imports(module: str) -> dict[str, str]:
    """The installed distributions, with their versions, that provide a top-level package which
    the source of the plugin package ``module`` imports.

    Only metadata and source text are read: nothing is imported (this runs before probing). The
    plugin's imports are found in its ``.py`` files; a plugin installed without them (only
    bytecode) names no provider, and its key stays as without this.
    """
    providers = _import_providers()
    found: dict[str, str] = {}
    for package in sorted(_imported_packages(module)):
        for project in providers.get(package, ()):
            try:
                found.setdefault(project, metadata.version(project))
            except metadata.PackageNotFoundError:  # metadata without a version: nothing to key on
                continue
    return found


#: ``packages_distributions()`` reads every installed distribution's file list: once per process.
_import_providers: Final = functools.cache(metadata.packages_distributions)


def _imported_packages(module: str) -> set[str]:
    """Top-level package names in the import statements of the plugin package ``module``."""
    try:
        spec = importlib.util.find_spec(module.partition(".")[0])  # a top level: not imported
    except (ImportError, ValueError):
        return set()
    if spec is None:
        return set()
    if spec.submodule_search_locations:
        files = [f for d in spec.submodule_search_locations for f in Path(d).rglob("*.py")]
    else:
        files = [Path(spec.origin)] if spec.origin and spec.origin.endswith(".py") else []
    names: set[str] = set()
    for file in files:
        try:
            names.update(_IMPORT.findall(file.read_text(encoding="utf-8", errors="replace")))
        except OSError:
            continue
    return names


def describe_backends() -> list[BackendInfo]:
    """Every installed backend with its distribution and availability (``unifer backends``)."""
    infos = []
    for name in backend_names():
        dist = version = None
        eps = _entry_points().get(name)
        if name not in _registered and eps:
            dist, version = _distribution(eps[0])
        try:
            availability = probe(get_backend(name))
        except (PluginError, BackendNotFoundError) as exc:
            broken = Availability(ok=False, reason=exc.message)
            infos.append(BackendInfo(name, dist, version, broken, broken=True))
            continue
        infos.append(BackendInfo(name, dist, version, availability))
    return infos


def broken_plugins() -> dict[str, str]:
    """Installed backends whose plugin fails (import, contract, constructor), with the reason."""
    broken = {}
    for name in backend_names():
        try:
            get_backend(name)
        except PluginError as exc:
            broken[name] = exc.message
    return broken


def auto_order(names: list[str]) -> list[str]:
    """Sort backend names into the documented static order used by ``backend="auto"``."""
    rank = {n: i for i, n in enumerate(STATIC_ORDER)}
    return sorted(names, key=lambda n: (rank.get(n, len(rank)), n))
