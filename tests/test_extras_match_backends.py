"""Every plugin folder has a core extra, a workspace source and an entry point, and vice versa."""

from __future__ import annotations

import pathlib

import tomllib

ROOT = pathlib.Path(__file__).parents[1]


def load(path: pathlib.Path) -> dict:
    return tomllib.loads(path.read_text())


def test_each_plugin_is_wired_into_the_core():
    core = load(ROOT / "pyproject.toml")
    extras = core["project"]["optional-dependencies"]
    sources = core["tool"]["uv"]["sources"]
    plugin_dirs = sorted(p.parent for p in (ROOT / "backends").glob("*/pyproject.toml"))
    assert plugin_dirs
    for folder in plugin_dirs:
        plugin = load(folder / "pyproject.toml")
        dist = plugin["project"]["name"]
        assert dist == f"unifer-{folder.name}"
        eps = plugin["project"]["entry-points"]["unifer.backends"]
        assert list(eps) == [folder.name], "entry-point name must equal the folder/backend name"
        assert eps[folder.name].startswith(f"unifer_{folder.name}:")
        assert extras[folder.name] == [dist]
        assert dist in extras["all"]
        assert sources[dist] == {"workspace": True}
    plugin_extras = {k for k, v in extras.items() if any(d.startswith("unifer-") for d in v)}
    assert plugin_extras - {"all"} == {p.name for p in plugin_dirs}
