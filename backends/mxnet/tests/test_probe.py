"""The probe, the numpy check and checkpoint naming: these run in every environment.

In the repo's main environment (numpy 2, no mxnet) they are what proves the plugin explains itself
there instead of crashing; in the plugin's own environment they check the happy path.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import unifer_mxnet
from unifer import ModelFormatError, ModelNotFoundError, UnsupportedOptionError
from unifer.backend import SessionOptions
from unifer_mxnet import MXNetBackend, numpy_problem

HAVE_MXNET = importlib.util.find_spec("mxnet") is not None
SRC = Path(__file__).parents[1] / "src"


@pytest.mark.parametrize("version", ["1.23.5", "1.23.0", "1.22.4", "1.21.6"])
def test_numpy_before_1_24_is_fine(version: str) -> None:
    assert numpy_problem(version) is None


@pytest.mark.parametrize("version", ["1.24.0", "1.24.0rc1", "1.26.4", "2.0.0.dev0", "2.4.1"])
def test_numpy_from_1_24_is_explained(version: str) -> None:
    reason = numpy_problem(version)
    assert reason is not None
    assert f"numpy {version}" in reason
    assert "numpy < 1.24" in reason
    assert "np.bool" in reason


def test_an_unparsable_numpy_version_is_left_to_the_import() -> None:
    assert numpy_problem("unknown") is None


def test_probe_in_this_environment() -> None:
    availability = MXNetBackend().probe()
    if not HAVE_MXNET:  # the repo's main environment
        assert not availability.ok
        assert availability.reason == "mxnet is not installed in this environment"
    elif numpy_problem(np.__version__) is None:  # the plugin's own environment
        assert availability.ok, availability.reason
        assert availability.version == "1.9.1"
        assert availability.devices == ("cpu",)
        return
    assert availability.install is not None
    assert 'pip install "unifer[mxnet]"' in availability.install
    assert "venv" in availability.install


@pytest.mark.skipif(
    numpy_problem(np.__version__) is None, reason="this environment's numpy suits mxnet"
)
def test_probe_explains_this_numpy_when_mxnet_is_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """mxnet installed next to this environment's numpy (>= 1.24): not ok, and why.

    mxnet is not installed in the main environment (it cannot be, with numpy 2), so its presence
    is simulated; the numpy version checked is this environment's real one.
    """
    monkeypatch.setattr(unifer_mxnet, "_mxnet_distribution", lambda: ("mxnet", "1.9.1"))
    availability = MXNetBackend().probe()
    assert not availability.ok
    assert availability.version == "1.9.1"
    assert availability.reason is not None
    assert f"numpy {np.__version__}" in availability.reason
    assert "numpy < 1.24" in availability.reason
    assert availability.install is not None and "unifer[mxnet]" in availability.install


def test_probe_and_import_leave_mxnet_unimported() -> None:
    """MXNet fixes its thread count at import: probing must not import it."""
    code = (
        "import sys, json, unifer_mxnet\n"
        "a = unifer_mxnet.MXNetBackend().probe()\n"
        "print(json.dumps([a.ok, 'mxnet' in sys.modules]))\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    ok, imported = json.loads(result.stdout)
    assert ok == (HAVE_MXNET and numpy_problem(np.__version__) is None)
    assert imported is False


# -- checkpoint files: checked before mxnet is imported, so in every environment ----------------


def checkpoint(directory: Path, prefix: str = "model", epochs: tuple[int, ...] = (0,)) -> Path:
    """Placeholder checkpoint files (only their names matter to these tests)."""
    symbol = directory / f"{prefix}-symbol.json"
    symbol.write_text("{}")
    for epoch in epochs:
        (directory / f"{prefix}-{epoch:04d}.params").write_bytes(b"")
    return symbol


def test_a_json_not_named_like_a_symbol_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "config.json"
    other.write_text("{}")
    with pytest.raises(ModelFormatError, match=r"<prefix>-symbol\.json with <prefix>-NNNN\.params"):
        MXNetBackend().open(other, SessionOptions())


def test_missing_params_is_model_not_found(tmp_path: Path) -> None:
    symbol = checkpoint(tmp_path, epochs=())
    (tmp_path / "other-0000.params").write_bytes(b"")  # another model's weights do not count
    with pytest.raises(
        ModelNotFoundError, match=r"model-NNNN\.params \(e\.g\. model-0000\.params\)"
    ):
        MXNetBackend().open(symbol, SessionOptions())


def test_the_highest_epoch_is_chosen(tmp_path: Path) -> None:
    from unifer_mxnet._checkpoint import locate

    symbol = checkpoint(tmp_path, "r100", epochs=(1, 12, 3))
    found = locate(symbol)
    assert (found.epoch, found.params.name, found.epochs) == (12, "r100-0012.params", (1, 3, 12))
    assert locate(symbol, 3).params.name == "r100-0003.params"


def test_a_missing_epoch_lists_the_present_ones(tmp_path: Path) -> None:
    symbol = checkpoint(tmp_path, epochs=(1, 3))
    options = SessionOptions(extra={"epoch": 2})
    with pytest.raises(ModelNotFoundError, match="epochs present: 0001, 0003"):
        MXNetBackend().open(symbol, options)


@pytest.mark.parametrize("epoch", [-1, "3", 1.0, True])
def test_a_bad_epoch_option_is_refused(tmp_path: Path, epoch: object) -> None:
    symbol = checkpoint(tmp_path)
    with pytest.raises(UnsupportedOptionError, match="'epoch' must be an integer >= 0"):
        MXNetBackend().open(symbol, SessionOptions(extra={"epoch": epoch}))


@pytest.mark.parametrize("precision", ["bf16", "fp16", "int8"])
def test_reduced_precisions_are_refused(tmp_path: Path, precision: str) -> None:
    symbol = checkpoint(tmp_path)
    with pytest.raises(UnsupportedOptionError, match="float32 only"):
        MXNetBackend().open(symbol, SessionOptions(precision=precision))  # type: ignore[arg-type]
