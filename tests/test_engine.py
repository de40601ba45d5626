"""Engine.load / predict / run / close against the in-memory fake backend."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import unifer
from unifer import (
    BackendNotFoundError,
    BackendUnavailableError,
    Engine,
    InferenceError,
    InputError,
    ModelFormatError,
    ModelLoadError,
    ModelNotFoundError,
    ModelSignatureError,
    NoBackendAvailableError,
    Preprocess,
    PreprocessError,
    UniferWarning,
    UnsupportedOptionError,
)


def test_load_and_run(fake_backend, fake_model):
    with Engine.load(fake_model, backend="fake", threads=2) as engine:
        x = np.ones((2, 3), np.float32)
        out = engine.run({"x": x})
        assert list(out) == ["y"]
        np.testing.assert_array_equal(out["y"], 2 * x)
        np.testing.assert_array_equal(engine.predict(x), 2 * x)
        assert engine.backend == "fake"
        assert engine.model == fake_model
        assert engine.settings["threads"] == 2
        assert [s.name for s in engine.inputs] == ["x"]
        assert engine.inputs[0].shape == ("N", 3)
        assert "fake" in repr(engine)


def test_settings_are_read_only(fake_backend, fake_model):
    engine = Engine.load(fake_model, backend="fake")
    with pytest.raises(TypeError):
        engine.settings["threads"] = 3  # type: ignore[index]


def test_auto_picks_an_available_backend(fake_backend, fake_model):
    assert Engine.load(fake_model).backend == "fake"


def test_auto_explains_every_skip(fake_backend, fake_model):
    fake_backend.available = False
    with pytest.raises(NoBackendAvailableError) as info:
        Engine.load(fake_model)
    assert "fakeruntime is not installed" in str(info.value)
    assert {name.split("/")[0] for name in info.value.reasons} == {"fake"}


@pytest.mark.parametrize("budget_s", [None, 0], ids=["measured", "static"])
def test_auto_on_a_corrupt_file_says_the_file_is_the_problem(fake_backend, tmp_path, budget_s):
    bad = tmp_path / "bad.fake"
    bad.write_text("{not json")
    with pytest.raises(ModelLoadError, match="bad.fake") as info:
        Engine.load(bad, budget_s=budget_s)
    assert info.value.__cause__ is not None


def test_explicit_backend_is_never_replaced(fake_backend, fake_model):
    fake_backend.available = False
    with pytest.raises(BackendUnavailableError, match="pip install unifer-fake"):
        Engine.load(fake_model, backend="fake")
    assert isinstance(BackendUnavailableError("x"), ImportError)


def test_missing_model_is_file_not_found(fake_backend, tmp_path):
    missing = tmp_path / "nope.fake"
    with pytest.raises(FileNotFoundError, match="nope.fake"):
        Engine.load(missing, backend="fake")
    with pytest.raises(ModelNotFoundError):
        Engine.load(missing)


def test_directory_is_not_a_model(fake_backend, tmp_path):
    with pytest.raises(ModelFormatError, match="not a file"):
        Engine.load(tmp_path, backend="fake")


def test_wrong_format_for_the_named_backend(fake_backend, tmp_path):
    model = tmp_path / "m.xyz"
    model.write_bytes(b"x")
    with pytest.raises(ModelFormatError, match=r"reads \.fake files"):
        Engine.load(model, backend="fake")
    with pytest.raises(ModelFormatError, match="no installed backend reads '.xyz'"):
        Engine.load(model)


def test_a_format_whose_readers_are_all_disabled_says_so(fake_backend, fake_model, monkeypatch):
    monkeypatch.setenv("UNIFER_DISABLE_BACKENDS", "fake")
    with pytest.raises(ModelFormatError, match=r"read '.fake' files .* \(fake\) are disabled by"):
        Engine.load(fake_model)


def test_unknown_backend_suggests_and_tells_how_to_install(fake_backend, fake_model):
    with pytest.raises(BackendNotFoundError) as info:
        Engine.load(fake_model, backend="mxnett")  # a first-party backend not installed here
    message = str(info.value)
    assert "did you mean 'mxnet'" in message
    assert 'pip install "unifer[mxnet]"' in message
    assert "fake" in message  # lists what is installed
    assert isinstance(info.value, LookupError)


@pytest.mark.parametrize("typo", ["fak", "Fake", "FAKE"])
def test_a_misspelt_installed_backend_gets_no_install_line(fake_backend, fake_model, typo):
    with pytest.raises(BackendNotFoundError) as info:
        Engine.load(fake_model, backend=typo)
    message = str(info.value)
    assert "did you mean 'fake'?" in message
    assert "install" not in message.replace("is installed", "").replace("installed:", "")


@pytest.mark.parametrize("threads", [0, -1, 1.5, "2", True])
def test_bad_threads(fake_backend, fake_model, threads):
    with pytest.raises(UnsupportedOptionError, match="threads"):
        Engine.load(fake_model, backend="fake", threads=threads)


def test_threads_from_the_environment(fake_backend, fake_model, monkeypatch):
    monkeypatch.setenv("UNIFER_NUM_THREADS", "3")
    assert Engine.load(fake_model, backend="fake").settings["threads"] == 3
    assert Engine.load(fake_model, backend="fake", threads=1).settings["threads"] == 1
    for value, problem in (("many", "is not an integer"), ("0", "is not a positive thread count")):
        monkeypatch.setenv("UNIFER_NUM_THREADS", value)
        with pytest.raises(UnsupportedOptionError) as info:
            Engine.load(fake_model, backend="fake")
        assert str(info.value).startswith(f"$UNIFER_NUM_THREADS='{value}' {problem}; set it")
        assert "sequence" not in str(info.value)  # the Python argument's forms, not the variable's


def test_unknown_precision(fake_backend, fake_model):
    with pytest.raises(UnsupportedOptionError, match="precision must be one of"):
        Engine.load(fake_model, backend="fake", precision="fp64")


def test_precision_the_backend_cannot_honour(fake_backend, fake_model):
    with pytest.raises(UnsupportedOptionError, match=r"fake cannot run precision='bf16'"):
        Engine.load(fake_model, backend="fake", precision="bf16")


def test_backend_options_are_keyed_by_backend(fake_backend, fake_model):
    engine = Engine.load(fake_model, backend="fake", backend_options={"fake": {"mode": 1}})
    assert fake_backend.opened[-1].options.extra == {"mode": 1}
    engine.close()
    with pytest.warns(UniferWarning, match="'nosuch'"):
        Engine.load(fake_model, backend="fake", backend_options={"nosuch": {"a": 1}})
    with pytest.warns(UniferWarning, match="'speed'"):
        Engine.load(fake_model, backend="fake", backend_options={"fake": {"speed": 1}})
    with pytest.raises(UnsupportedOptionError, match="keyed by backend name"):
        Engine.load(fake_model, backend="fake", backend_options={"mode": 1})  # type: ignore[dict-item]
    with pytest.raises(UnsupportedOptionError, match=r"option: \{'fake': \{'OPTION': value\}\}"):
        Engine.load(fake_model, backend="fake", backend_options={"fake": 1})  # type: ignore[dict-item]


class TestFeeds:
    @pytest.fixture
    def engine(self, fake_backend, make_fake_model, tmp_path):
        path = make_fake_model(
            tmp_path / "two.fake",
            inputs=[
                {"name": "a", "shape": ["N", 3], "dtype": "float32"},
                {"name": "b", "shape": ["N", 2, 2], "dtype": "int64"},
            ],
        )
        return Engine.load(path, backend="fake")

    def feeds(self, n=1):
        return {"a": np.zeros((n, 3), np.float32), "b": np.zeros((n, 2, 2), np.int64)}

    def test_valid(self, engine):
        assert engine.run(self.feeds(4))["y"].shape == (4, 3)

    def test_missing_and_unknown_names(self, engine):
        with pytest.raises(InputError, match=r"unknown 'c'; missing 'b'") as info:
            engine.run({"a": self.feeds()["a"], "c": 1})
        assert "a: float32[N,3]" in str(info.value)

    def test_wrong_dtype(self, engine):
        feeds = self.feeds()
        feeds["a"] = feeds["a"].astype(np.float64)
        with pytest.raises(InputError, match=r"expects float32\[N,3\], got float64\[1,3\]"):
            engine.run(feeds)

    def test_wrong_rank_suggests_a_batch_dimension(self, engine):
        feeds = self.feeds()
        feeds["a"] = feeds["a"][0]
        with pytest.raises(InputError, match="add the batch dimension"):
            engine.run(feeds)

    def test_wrong_fixed_dimension(self, engine):
        feeds = self.feeds()
        feeds["a"] = np.zeros((1, 4), np.float32)
        with pytest.raises(InputError, match=r"dimension 1 must be 3; resize the input"):
            engine.run(feeds)

    @pytest.mark.parametrize(
        ("shape", "fix"),
        [
            ((8, 6, 3), r"x\.transpose\(2, 0, 1\)\[np\.newaxis\]"),  # HWC for CHW
            ((1, 8, 6, 3), r"x\.transpose\(0, 3, 1, 2\)"),  # NHWC for NCHW
        ],
    )
    def test_an_image_in_another_layout_is_told_to_transpose_not_reshape(
        self, fake_backend, make_fake_model, tmp_path, shape, fix
    ):
        # x.reshape(1, 3, 8, 6), which the old hints led to, runs and scrambles the image.
        inputs = [{"name": "x", "shape": ["N", 3, 8, 6], "dtype": "float32"}]
        engine = Engine.load(make_fake_model(tmp_path / "img.fake", inputs=inputs), backend="fake")
        with pytest.raises(InputError, match=fix) as info:
            engine.run({"x": np.zeros(shape, np.float32)})
        assert "reshape" not in str(info.value)

    def test_a_fixed_batch_says_how_to_split(self, fake_backend, make_fake_model, tmp_path):
        inputs = [{"name": "x", "shape": [2, 3], "dtype": "float32"}]
        engine = Engine.load(make_fake_model(tmp_path / "b2.fake", inputs=inputs), backend="fake")
        with pytest.raises(InputError, match=r"takes batches of exactly 2: pass 2 per call"):
            engine.run({"x": np.zeros((3, 3), np.float32)})

    def test_named_dimension_must_agree(self, engine):
        feeds = {"a": np.zeros((2, 3), np.float32), "b": np.zeros((3, 2, 2), np.int64)}
        with pytest.raises(InputError, match="dimension 'N' is 2 in input 'a' but 3"):
            engine.run(feeds)

    def test_nan_is_rejected(self, engine):
        feeds = self.feeds()
        feeds["a"][0, 1] = np.nan
        with pytest.raises(InputError, match="NaN at 1 positions"):
            engine.run(feeds)

    def test_not_a_mapping(self, engine):
        with pytest.raises(InputError, match="dict from input name"):
            engine.run([1, 2])  # type: ignore[arg-type]

    def test_predict_needs_single_io(self, engine):
        with pytest.raises(ModelSignatureError, match=r"2 input\(s\) \(a, b\).*engine.run"):
            engine.predict(np.zeros((1, 3), np.float32))

    def test_non_contiguous_arrays_are_accepted(self, fake_backend, fake_model):
        engine = Engine.load(fake_model, backend="fake")
        view = np.arange(6, dtype=np.float32).reshape(3, 2).T  # a transposed, strided view
        np.testing.assert_array_equal(engine.run({"x": view})["y"], 2 * view)


def test_close_is_idempotent_and_final(fake_backend, fake_model):
    engine = Engine.load(fake_model, backend="fake")
    engine.close()
    engine.close()
    assert fake_backend.opened[-1].closed == 1
    with pytest.raises(InferenceError, match="closed"):
        engine.run({"x": np.zeros((1, 3), np.float32)})
    assert "closed" in repr(engine)


def test_context_manager_closes(fake_backend, fake_model):
    with Engine.load(fake_model, backend="fake"):
        pass
    assert fake_backend.opened[-1].closed == 1


class TestPreprocess:
    @pytest.fixture
    def image_model(self, make_fake_model, tmp_path):
        spec = [{"name": "img", "shape": [1, 3, 4, 4], "dtype": "float32"}]
        return make_fake_model(
            tmp_path / "img.fake",
            inputs=spec,
            outputs=[{"name": "out", "shape": [1, 3, 4, 4], "dtype": "float32"}],
        )

    def test_predict_applies_preprocess(self, fake_backend, image_model):
        spec = Preprocess(size=(4, 4), mean=(127.5,) * 3, std=(127.5,) * 3)
        engine = Engine.load(image_model, backend="fake", preprocess=spec)
        image = np.full((4, 4, 3), 255, np.uint8)
        out = engine.predict(image)
        np.testing.assert_allclose(out, np.full((1, 3, 4, 4), 2.0, np.float32))
        assert engine.preprocess == spec

    def test_layout_mismatch_is_caught_at_load(self, fake_backend, image_model):
        with pytest.raises(PreprocessError, match="nhwc|NCHW|layout"):
            Engine.load(image_model, backend="fake", preprocess=Preprocess(layout="nhwc"))

    def test_sidecar_is_read(self, fake_backend, image_model):
        spec = Preprocess(size=(4, 4), std=(2.0,) * 3)
        (image_model.parent / "img.preprocess.json").write_text(json.dumps(spec.to_dict()))
        assert Engine.load(image_model, backend="fake").preprocess == spec
        explicit = Preprocess(size=(4, 4))
        assert Engine.load(image_model, backend="fake", preprocess=explicit).preprocess == explicit
        # False: none at all, the sidecar's neither (None would read it again).
        assert Engine.load(image_model, backend="fake", preprocess=False).preprocess is None

    def test_a_sidecar_that_does_not_fit_is_named_in_the_error(
        self, fake_backend, make_fake_model, tmp_path
    ):
        path = make_fake_model(
            tmp_path / "vec.fake",
            inputs=[{"name": "v", "shape": ["N", 8], "dtype": "float32"}],
        )
        (tmp_path / "vec.preprocess.json").write_text("{}")
        with pytest.raises(
            PreprocessError, match=r"sidecar '.*vec\.preprocess\.json' does not fit.*=False"
        ):
            Engine.load(path, backend="fake")
        assert Engine.load(path, backend="fake", preprocess=False).preprocess is None
        (tmp_path / "vec.preprocess.json").unlink()
        (tmp_path / "vec.preprocess.json").mkdir()  # not even a file
        with pytest.raises(PreprocessError, match="cannot be read"):
            Engine.load(path, backend="fake")

    def test_preprocess_must_be_a_spec(self, fake_backend, image_model):
        with pytest.raises(PreprocessError, match="preprocess must be a Preprocess"):
            Engine.load(image_model, backend="fake", preprocess={"size": [4, 4]})  # type: ignore[arg-type]

    def test_preprocess_needs_single_input(self, fake_backend, make_fake_model, tmp_path):
        path = make_fake_model(
            tmp_path / "two.fake",
            inputs=[
                {"name": "a", "shape": [1], "dtype": "float32"},
                {"name": "b", "shape": [1], "dtype": "float32"},
            ],
        )
        with pytest.raises(ModelSignatureError, match="preprocess="):
            Engine.load(path, backend="fake", preprocess=Preprocess())


def test_model_path_type_is_checked(fake_backend):
    with pytest.raises(TypeError, match="model must be a path"):
        Engine.load(42)  # type: ignore[arg-type]


def test_engine_wraps_a_ready_session(fake_backend, fake_model):
    from unifer.backend import SessionOptions

    session = fake_backend().open(fake_model, SessionOptions())
    engine = Engine(session, backend="fake")
    assert engine.model is None
    assert engine.run({"x": np.ones((1, 3), np.float32)})["y"][0, 0] == 2
    with pytest.raises(unifer.PluginError):
        Engine(object(), backend="fake")  # type: ignore[arg-type]


def test_scalar_feeds_keep_rank_zero(fake_backend, make_fake_model, tmp_path):
    path = make_fake_model(
        tmp_path / "s.fake",
        inputs=[{"name": "sr", "shape": [], "dtype": "int64"}],
        outputs=[{"name": "y", "shape": [], "dtype": "int64"}],
    )
    assert Engine.load(path, backend="fake").run({"sr": np.array(8000)})["y"].shape == ()


@pytest.mark.parametrize(
    ("arguments", "error", "match"),
    [
        ({"backend": None}, UnsupportedOptionError, "backend must be a backend name"),
        ({"backend": ""}, UnsupportedOptionError, "backend must be a backend name"),
        ({"precision": None}, UnsupportedOptionError, "precision must be one of"),
        ({"backend": "fake", "precision": None}, UnsupportedOptionError, "precision must be"),
        ({"backend": "fake", "objective": "speed"}, UnsupportedOptionError, "objective"),
        ({"backend": "fake", "budget_s": -5}, UnsupportedOptionError, "budget_s must be"),
        ({"allow_conversion": "yes"}, UnsupportedOptionError, "allow_conversion must be"),
        ({"threads": 2.5}, UnsupportedOptionError, "sequence of counts"),
    ],
)
def test_bad_arguments_are_unifer_errors(fake_backend, fake_model, arguments, error, match):
    with pytest.raises(error, match=match):
        Engine.load(fake_model, **arguments)


def test_numpy_integers_are_thread_counts(fake_backend, fake_model):
    engine = Engine.load(fake_model, backend="fake", threads=np.int64(2))
    assert engine.settings["threads"] == 2 and type(engine.selection.chosen.threads) is int


@pytest.mark.parametrize("model", ["~unifer-no-such-user/m.onnx", "/tmp/" + "a" * 300 + ".onnx"])
def test_a_path_the_os_cannot_resolve_is_model_not_found(fake_backend, model):
    with pytest.raises(ModelNotFoundError, match="cannot be resolved"):
        Engine.load(model, backend="fake")


def test_a_model_without_a_suffix_is_told_to_get_one(fake_backend, fake_model, tmp_path):
    bare = tmp_path / "model"
    bare.write_bytes(fake_model.read_bytes())
    for backend in ("fake", "auto"):
        with pytest.raises(ModelFormatError, match="has no file suffix"):
            Engine.load(bare, backend=backend)


def test_ragged_and_mistyped_feeds_are_input_errors(fake_backend, fake_model):
    engine = Engine.load(fake_model, backend="fake")
    with pytest.raises(InputError, match="'x' is not an array numpy can build") as info:
        engine.run({"x": [[1.0, 2.0, 3.0], [4.0]]})
    assert isinstance(info.value.__cause__, ValueError)
    with pytest.raises(InputError, match=r"x\.astype\(np\.float32\)"):
        engine.run({"x": np.ones((1, 3), np.float64)})
    with pytest.raises(InputError, match=r"np\.asarray\(x, dtype=np\.float32\)"):
        engine.predict([[1.0, 2.0, 3.0]])  # a list has no astype()


@pytest.mark.parametrize(
    ("given", "fix"),
    [
        ({"x": np.ones((1, 3), np.float32)}, r"use run\(\)"),
        (None, r"cv2\.imread returns None for a file it cannot read"),  # imread(bad path)
        ("face.jpg", r"pixels, not a file name: decode the image first"),
        (Path("face.jpg"), r"pixels, not a file name"),
    ],
)
def test_predict_given_no_array_says_what_to_pass(fake_backend, fake_model, given, fix):
    engine = Engine.load(fake_model, backend="fake")
    with pytest.raises(InputError, match=r"predict\(\) takes one array .*" + fix):
        engine.predict(given)


def test_nan_inputs_are_allowed_for_models_that_read_them(fake_backend, fake_model):
    x = np.array([[1.0, np.nan, 3.0]], np.float32)
    with pytest.raises(InputError, match="allow_nan=True"):
        Engine.load(fake_model, backend="fake").predict(x)
    out = Engine.load(fake_model, backend="fake", allow_nan=True).predict(x)
    np.testing.assert_array_equal(out, x * 2)


class TestEnvironmentBackend:
    def test_auto_or_empty_means_unset(self, fake_backend, fake_model, monkeypatch):
        for value in ("auto", " ", ""):
            monkeypatch.setenv("UNIFER_BACKEND", value)
            assert Engine.load(fake_model, budget_s=0).selection.source == "static"

    def test_an_unknown_name_says_it_came_from_the_environment(
        self, fake_backend, fake_model, monkeypatch
    ):
        monkeypatch.setenv("UNIFER_BACKEND", "nosuch")
        with pytest.raises(BackendNotFoundError, match=r"^\$UNIFER_BACKEND='nosuch': "):
            Engine.load(fake_model)

    def test_choices_narrow_to_the_first(self, fake_backend, fake_model, monkeypatch):
        monkeypatch.setenv("UNIFER_BACKEND", "fake")
        engine = Engine.load(fake_model, precision=("fp32", "bf16"), threads=(2, 1))
        assert engine.selection.source == "environment"
        assert engine.selection.chosen.precision == "fp32" and engine.settings["threads"] == 2


def test_unknown_option_warnings_point_at_the_callers_line(fake_backend, fake_model):
    for backend in ("fake", "auto"):
        with pytest.warns(UniferWarning, match="'turbo' is not understood") as caught:
            Engine.load(fake_model, backend=backend, backend_options={"fake": {"turbo": 1}})
        assert {w.filename for w in caught} == {__file__}


@pytest.mark.parametrize("how", ["pickle", "copy", "deepcopy"])
def test_an_engine_cannot_be_pickled_or_copied(fake_backend, fake_model, how):
    """A copy would share the session (one close() closes both); pickling cannot move it."""
    import copy
    import pickle

    engine = Engine.load(fake_model, backend="fake")
    duplicate = {"pickle": pickle.dumps, "copy": copy.copy, "deepcopy": copy.deepcopy}[how]
    with pytest.raises(TypeError, match=r"cannot be pickled or copied; call Engine.load\(\)"):
        duplicate(engine)
    assert engine.run({"x": np.ones((1, 3), np.float32)})["y"].shape == (1, 3)  # still usable


def test_a_forked_child_refuses_an_engine_another_thread_was_running(fake_backend, fake_model):
    """The runtime's locks and pools were copied taken, with no thread to give them back: runs
    hung forever (OpenVINO, LiteRT, OpenCV). An engine idle at the fork still works there."""
    import os
    import threading

    from unifer.backend import SessionOptions

    inside, leave = threading.Event(), threading.Event()

    class Blocking:
        def __init__(self) -> None:
            self.inner = fake_backend().open(fake_model, SessionOptions())
            self.inputs, self.outputs, self.settings = (
                self.inner.inputs, self.inner.outputs, self.inner.settings
            )  # fmt: skip

        def run(self, feeds):
            inside.set()
            leave.wait(30)
            return self.inner.run(feeds)

        def close(self):
            self.inner.close()

    busy = Engine(Blocking(), backend="fake")
    idle = Engine.load(fake_model, backend="fake")
    x = np.ones((1, 3), np.float32)
    thread = threading.Thread(target=busy.predict, args=(x,))
    thread.start()
    try:
        inside.wait(10)
        reader, writer = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: answers in one byte, never returns into pytest
            try:
                busy.predict(x)
                verdict = b"r"  # ran (it would have hung with a real runtime)
            except unifer.InferenceError as exc:
                verdict = b"y" if "another thread when this process forked" in str(exc) else b"m"
            busy.close()  # does not touch the copied session's locks
            verdict += b"y" if idle.predict(x)[0, 0] == 2 else b"n"
            os.write(writer, verdict)
            os._exit(0)
        os.close(writer)
        with os.fdopen(reader, "rb") as answer:
            assert answer.read() == b"yy"
        os.waitpid(pid, 0)
    finally:
        leave.set()
        thread.join()
    assert busy.predict(x)[0, 0] == 2  # the parent's engine is untouched
