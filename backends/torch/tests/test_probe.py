"""``TorchBackend.probe()``: what it says with torch missing, broken or present. Runs in the main
environment too (where torch is not installed), against the plugin's source."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from unifer.backend import Availability
from unifer_torch import TorchBackend

HAS_TORCH = importlib.util.find_spec("torch") is not None
SRC = str(importlib.util.find_spec("unifer_torch").submodule_search_locations[0])  # type: ignore[index,union-attr]


def probe_in_subprocess(prelude: str) -> dict[str, object]:
    """Probe in a fresh process after ``prelude`` (which may hide or break ``torch``)."""
    code = (
        f"import sys, json; sys.path.insert(0, {str(SRC.rsplit('/', 1)[0])!r}); {prelude}; "
        "from unifer_torch import TorchBackend; a = TorchBackend().probe(); "
        "print(json.dumps({'ok': a.ok, 'reason': a.reason, 'install': a.install, "
        "'version': a.version, 'devices': list(a.devices)}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_probe_without_torch_says_how_to_install_it() -> None:
    answer = probe_in_subprocess("sys.modules['torch'] = None")  # `import torch` now fails
    assert answer["ok"] is False
    assert answer["reason"] == "torch is not installed"
    assert answer["install"] == 'pip install "unifer[torch]"'


def test_probe_with_a_broken_torch_says_it_is_broken(tmp_path: Path) -> None:
    # A torch whose import fails the way a damaged install does (a shared library missing).
    fake = tmp_path / "torch"
    fake.mkdir()
    (fake / "__init__.py").write_text(
        "raise ImportError('libtorch_cpu.so: cannot open shared object file')\n"
    )
    answer = probe_in_subprocess(f"sys.path.insert(0, {str(tmp_path)!r})")
    assert answer["ok"] is False
    assert "is installed but failed to import: libtorch_cpu.so" in str(answer["reason"])
    assert "pip install" in str(answer["install"])


def test_probe_never_raises() -> None:
    assert isinstance(TorchBackend().probe(), Availability)


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed here")
def test_probe_reports_version_devices_and_why_not_cuda() -> None:
    import torch

    answer = TorchBackend().probe()
    assert answer.ok
    assert answer.version == torch.__version__
    assert answer.devices[-1] == "cpu"
    assert answer.reason is not None
    if torch.version.cuda is None:
        assert answer.devices == ("cpu",)
        assert "CPU-only build" in answer.reason
    elif not torch.cuda.is_available():
        assert answer.devices == ("cpu",)
        assert "no GPU is usable" in answer.reason or "is_available() is False" in answer.reason
    else:
        # The default device first: device="auto" is cuda:0 here.
        cuda = tuple(f"cuda:{i}" for i in range(torch.cuda.device_count()))
        assert answer.devices == (*cuda, "cpu")
        assert torch.cuda.get_device_name(0) in answer.reason
