"""The error hierarchy: one root, builtin bases, messages pointing at docs/errors.md."""

from __future__ import annotations

import copy
import pathlib
import pickle

import pytest

import unifer
from unifer import _errors

ERRORS = [
    v for v in vars(_errors).values() if isinstance(v, type) and issubclass(v, _errors.UniferError)
]


@pytest.mark.parametrize("cls", ERRORS, ids=lambda c: c.__name__)
def test_every_error_has_a_documented_code(cls):
    docs = (pathlib.Path(__file__).parents[1] / "docs" / "errors.md").read_text()
    assert f'<a id="{cls.code}"></a>' in docs, f"docs/errors.md lacks an anchor for {cls.code}"
    assert str(cls("boom")).endswith(f"(see docs/errors.md#{cls.code})")


def test_builtin_bases():
    assert issubclass(unifer.ModelNotFoundError, FileNotFoundError)
    assert issubclass(unifer.BackendUnavailableError, ImportError)
    assert issubclass(unifer.BackendNotFoundError, LookupError)
    assert issubclass(unifer.InputError, ValueError)
    assert issubclass(unifer.InferenceError, RuntimeError)
    assert issubclass(unifer.UniferWarning, UserWarning)


def test_translate_errors_chains_and_passes_own_errors_through(tmp_path):
    from unifer.backend import translate_errors

    with (
        pytest.raises(unifer.ModelLoadError, match="m.onnx") as info,
        translate_errors("rt", OSError, model=tmp_path / "m.onnx"),
    ):
        raise OSError("bad magic")
    assert isinstance(info.value.__cause__, OSError)
    with (
        pytest.raises(unifer.InferenceError, match="rt failed while running") as run_info,
        translate_errors("rt", KeyError),
    ):
        raise KeyError("k")
    assert run_info.value.backend == "rt"
    own = unifer.InputError("mine")
    with pytest.raises(unifer.InputError) as passed, translate_errors("rt", Exception):
        raise own
    assert passed.value is own


def round_trip(error: Exception) -> Exception:
    """``error`` through pickle, as it comes back from a worker process (our own bytes)."""
    return pickle.loads(pickle.dumps(error))  # noqa: S301


@pytest.mark.parametrize("cls", ERRORS, ids=lambda c: c.__name__)
def test_errors_survive_pickling_and_copying(cls):
    # Errors come back from worker processes pickled; the docs pointer must not double.
    for again in (round_trip(cls("boom")), copy.copy(cls("boom"))):
        assert type(again) is cls and again.message == "boom"
        assert str(again) == f"boom (see docs/errors.md#{cls.code})"
    rebuilt = round_trip(unifer.NoBackendAvailableError("x", reasons={"a": "b"}))
    assert rebuilt.reasons == {"a": "b"}
    assert round_trip(unifer.InferenceError("x", backend="rt")).backend == "rt"
