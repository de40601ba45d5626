"""Every plugin folder has a core extra, a workspace source and an entry point, and vice versa."""

from __future__ import annotations

import pathlib

import tomllib

ROOT = pathlib.Path(__file__).parents[1]
#: GPU-only plugins and the plugin extra that holds their runtime. Such a plugin installs anywhere
#: (its probe explains why it cannot run, and the dev group has it so its GPU-free tests run), the
#: core extra installs it with its runtime extra, and it stays out of "all": TensorRT's libraries
#: come from NVIDIA's own index and need an NVIDIA GPU.
GPU_ONLY = {"tensorrt": "runtime"}


def load(path: pathlib.Path) -> dict:
    return tomllib.loads(path.read_text())


def test_each_plugin_is_wired_into_the_core():
    core = load(ROOT / "pyproject.toml")
    extras = core["project"]["optional-dependencies"]
    sources = core["tool"]["uv"]["sources"]
    plugin_dirs = sorted(p.parent for p in (ROOT / "backends").glob("*/pyproject.toml"))
    assert plugin_dirs
    workspace = core["tool"]["uv"]["workspace"]
    excluded = {d for pattern in workspace.get("exclude", []) for d in ROOT.glob(pattern)}
    for folder in plugin_dirs:
        plugin = load(folder / "pyproject.toml")
        dist = plugin["project"]["name"]
        assert dist == f"unifer-{folder.name}"
        eps = plugin["project"]["entry-points"]["unifer.backends"]
        assert list(eps) == [folder.name], "entry-point name must equal the folder/backend name"
        assert eps[folder.name].startswith(f"unifer_{folder.name}:")
        if folder.name in GPU_ONLY:
            runtime = GPU_ONLY[folder.name]
            assert runtime in plugin["project"]["optional-dependencies"]
            assert extras[folder.name] == [f"{dist}[{runtime}]"]
            assert not any(d.startswith(dist) for d in extras["all"])
            assert sources[dist] == {"workspace": True}
            continue
        assert extras[folder.name] == [dist]
        if folder in excluded:
            # A plugin whose runtime cannot share the workspace lock (mxnet needs numpy < 1.24;
            # torch would lock a multi-GB CUDA build) has an environment of its own (a uv project
            # for mxnet, a pip venv for torch): it keeps its extra, but is not in "all", has no
            # source here, and is kept out of this lock.
            assert dist not in extras["all"]
            assert dist not in sources
            assert dist in core["tool"]["uv"]["exclude-dependencies"]
            continue
        assert dist in extras["all"]
        assert sources[dist] == {"workspace": True}
    plugin_extras = {k for k, v in extras.items() if any(d.startswith("unifer-") for d in v)}
    # Documented aliases: an extra under a runtime's former name installs the same plugin.
    aliases = {"tflite": "litert"}
    for alias, target in aliases.items():
        assert extras[alias] == extras[target]
    assert plugin_extras - {"all"} - set(aliases) == {p.name for p in plugin_dirs}
