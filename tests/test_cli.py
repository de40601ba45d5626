"""The CLI wiring, driven in-process through click's runner with the fake backend."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

from unifer.backend import Availability
from unifer.cli import main


@pytest.fixture
def cli():
    runner = CliRunner()

    def invoke(*args: str, code: int = 0):
        result = runner.invoke(main, list(args))
        assert result.exit_code == code, result.output
        return result

    return invoke


def test_backends_lists_the_fake_and_missing_first_party(cli, fake_backend):
    data = json.loads(cli("backends", "--json").output)
    fake = next(b for b in data["backends"] if b["name"] == "fake")
    assert fake["available"] is True
    assert fake["runtime_version"] == "1.0"
    text = cli("backends").output
    assert "fake" in text and "available" in text


def test_backends_shows_why_unavailable(cli, fake_backend):
    fake_backend.available = False
    text = cli("backends").output
    assert "unavailable: fakeruntime is not installed" in text
    assert "pip install unifer-fake" in text


def test_backends_shows_devices_and_notes_of_available_backends(cli, fake_backend, monkeypatch):
    note = Availability(ok=True, version="1.0", reason="CPU only: a CPU build", devices=("cpu",))
    monkeypatch.setattr(fake_backend, "probe", lambda self: note)
    text = cli("backends").output
    assert "available (cpu)" in text
    assert "note: CPU only: a CPU build" in text
    assert "also measures" not in text
    gpu = Availability(ok=True, version="1.0", devices=("cpu", "gpu:0"), accelerators=("gpu:0",))
    monkeypatch.setattr(fake_backend, "probe", lambda self: gpu)
    assert "backend='auto' also measures it on: gpu:0" in cli("backends").output
    fake = next(
        b for b in json.loads(cli("backends", "--json").output)["backends"] if b["name"] == "fake"
    )
    assert fake["accelerators"] == ["gpu:0"]


def test_info(cli, fake_backend, fake_model):
    data = json.loads(cli("info", str(fake_model), "--json").output)
    assert data["opened_with"] == "fake"
    assert data["inputs"] == [{"name": "x", "shape": ["N", 3], "dtype": "float32"}]
    assert data["readers"] == ["fake"]
    assert "x: float32[N,3]" in cli("info", str(fake_model)).output


def test_predict_npy_to_npy(cli, fake_backend, fake_model, tmp_path):
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "y.npy"
    text = cli("predict", str(fake_model), str(tmp_path / "x.npy"), "--out", str(out)).output
    assert "backend: fake" in text
    np.testing.assert_array_equal(np.load(out), 2 * x)


def test_predict_npz_to_json(cli, fake_backend, fake_model, tmp_path):
    np.savez(tmp_path / "feeds.npz", x=np.ones((1, 3), np.float32))
    data = json.loads(
        cli(
            "predict",
            str(fake_model),
            str(tmp_path / "feeds.npz"),
            "--json",
            "--out",
            str(tmp_path / "o.json"),
        ).output
    )
    assert data["outputs"]["y"]["values"] == [[2.0, 2.0, 2.0]]
    assert json.loads((tmp_path / "o.json").read_text()) == {"y": [[2.0, 2.0, 2.0]]}


def test_predict_image_with_preprocess(cli, fake_backend, make_fake_model, tmp_path):
    from PIL import Image

    model = make_fake_model(
        tmp_path / "img.fake",
        inputs=[{"name": "i", "shape": [1, 3, 8, 8], "dtype": "float32"}],
        outputs=[{"name": "o", "shape": [1, 3, 8, 8], "dtype": "float32"}],
    )
    Image.fromarray(np.full((16, 16, 3), 255, np.uint8)).save(tmp_path / "face.png")
    spec = tmp_path / "pre.json"
    spec.write_text(json.dumps({"size": [8, 8], "mean": [127.5] * 3, "std": [127.5] * 3}))
    data = json.loads(
        cli(
            "predict", str(model), str(tmp_path / "face.png"), "--preprocess", str(spec), "--json"
        ).output
    )
    assert np.allclose(data["outputs"]["o"]["values"], 2.0)


@pytest.mark.parametrize("decoder", ["opencv", "pillow"])
def test_predict_decodes_images_in_the_order_the_preprocessing_expects(
    cli, fake_backend, make_fake_model, tmp_path, monkeypatch, decoder
):
    """A spec for OpenCV callers (input_color="bgr") gets the file's pixels in BGR: decoded as
    RGB and then reversed, the model's red channel would hold the blue one."""
    from PIL import Image

    if decoder == "pillow":
        monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 raises ImportError
    model = make_fake_model(
        tmp_path / "img.fake",
        inputs=[{"name": "i", "shape": [1, 3, 4, 4], "dtype": "float32"}],
        outputs=[{"name": "o", "shape": [1, 3, 4, 4], "dtype": "float32"}],
    )
    Image.fromarray(np.full((4, 4, 3), [10, 100, 200], np.uint8)).save(tmp_path / "face.png")
    spec = tmp_path / "bgr.json"
    spec.write_text(json.dumps({"size": [4, 4], "input_color": "bgr", "color": "rgb"}))
    args = ("predict", str(model), str(tmp_path / "face.png"), "--preprocess", str(spec))
    out = np.array(json.loads(cli(*args, "--json").output)["outputs"]["o"]["values"])
    np.testing.assert_array_equal(out[0, :, 0, 0], [20, 200, 400])  # RGB, times the fake's 2


def test_pillow_decodes_16_bit_grayscale_and_exif_orientation_as_opencv(tmp_path, monkeypatch):
    from PIL import Image

    from unifer.cli import _read_image

    ramp = (np.arange(6 * 8, dtype=np.uint16).reshape(6, 8) * 1300).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "gray16.png")
    tall = np.zeros((8, 6, 3), np.uint8)
    tall[0, 0] = [255, 0, 0]  # a red corner shows where the image was turned
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to view
    Image.fromarray(tall).save(tmp_path / "phone.jpg", exif=exif, quality=100)
    with_opencv = [_read_image(tmp_path / f, "rgb") for f in ("gray16.png", "phone.jpg")]
    monkeypatch.setitem(sys.modules, "cv2", None)
    with_pillow = [_read_image(tmp_path / f, "rgb") for f in ("gray16.png", "phone.jpg")]
    np.testing.assert_array_equal(with_pillow[0], with_opencv[0])
    assert with_pillow[0][..., 0].max() == (ramp.max() >> 8)  # not clipped to 255
    assert with_pillow[1].shape == with_opencv[1].shape == (6, 8, 3)  # turned upright
    assert np.abs(with_pillow[1].astype(int) - with_opencv[1]).max() <= 2  # JPEG decoders


def test_predict_image_without_preprocess_explains(cli, fake_backend, fake_model, tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "a.png")
    result = cli("predict", str(fake_model), str(tmp_path / "a.png"), code=1)
    assert "--preprocess" in result.output


def test_unifer_errors_are_one_clean_message(cli, fake_backend, tmp_path):
    result = cli("info", str(tmp_path / "missing.fake"), code=1)
    assert "ModelNotFoundError" in result.output
    assert "Traceback" not in result.output


def test_bad_preprocess_argument(cli, fake_backend, fake_model, tmp_path):
    np.save(tmp_path / "x.npy", np.ones((1, 3), np.float32))
    result = cli(
        "predict", str(fake_model), str(tmp_path / "x.npy"), "--preprocess", "nope", code=2
    )
    assert "neither a preset" in result.output


def test_models_lists_the_builtin_family(cli):
    rows = {r["name"]: r for r in json.loads(cli("models", "--json").output)["models"]}
    assert set(rows) >= {
        "arcface-r18",
        "arcface-r34",
        "arcface-r50",
        "arcface-r100",
        "arcface-tiny",
    }
    assert rows["arcface-r100"]["gflops"] == pytest.approx(24.2, rel=0.02)
    assert "builtin:arcface-r100" in cli("models").output


def test_predict_a_builtin_model_on_an_image(cli, tmp_path):
    pytest.importorskip("onnx")
    if "onnxruntime" not in json.dumps(json.loads(cli("backends", "--json").output)["backends"]):
        pytest.skip("needs a backend that reads ONNX")
    image = np.random.default_rng(0).integers(0, 256, (120, 100, 3), dtype=np.uint8)
    np.save(tmp_path / "face.npy", image)
    data = json.loads(
        cli(
            "predict",
            "builtin:arcface-tiny",
            str(tmp_path / "face.npy"),
            "--backend",
            "onnxruntime",
            "--json",
        ).output
    )
    embedding = np.asarray(data["outputs"]["embedding"]["values"])
    assert embedding.shape == (1, 512)
    assert np.isfinite(embedding).all() and embedding.std() > 0.1
    info = json.loads(cli("info", "builtin:arcface-tiny", "--json").output)
    assert info["preprocess"]["size"] == [112, 112]


def test_cache_show_and_clear(cli, fake_backend, fake_model):
    from unifer import Engine

    Engine.load(fake_model, budget_s=0.05)
    shown = json.loads(cli("cache", "show", "--json").output)
    assert len(shown["auto"]) == 1
    assert "auto decisions: 1" in cli("cache", "show").output
    cleared = json.loads(cli("cache", "clear", "--json").output)
    assert cleared["auto_decisions"] == 1
    assert json.loads(cli("cache", "show", "--json").output)["auto"] == {}


def test_cache_commands_on_a_cache_never_created_or_half_cleared(cli, tmp_path, monkeypatch):
    root = tmp_path / "never"
    monkeypatch.setenv("UNIFER_CACHE_DIR", str(root))
    shown = json.loads(cli("cache", "show", "--json").output)
    assert shown["sizes"] == {} and shown["auto"] == {} and not root.exists()
    assert json.loads(cli("cache", "clear", "--json").output)["auto_decisions"] == 0
    leftover = root / ".cleared-1234"  # an interrupted clear
    (leftover / "converted").mkdir(parents=True)
    (leftover / "converted" / "x.tflite").write_bytes(b"0" * 1000)
    (root / "backends").mkdir()
    assert json.loads(cli("cache", "clear", "--json").output)["bytes_freed"] == 1000
    assert not [p for p in root.iterdir() if p.is_dir()]  # the lock file of the decisions stays


def test_info_auto_explains_the_choice(cli, fake_backend, fake_model):
    data = json.loads(cli("info", str(fake_model), "--auto", "--json").output)
    assert data["selection"]["source"] == "measured"
    static = json.loads(cli("info", str(fake_model), "--json").output)
    assert static["selection"]["source"] == "static"
    assert "chose fake" in cli("info", str(fake_model)).output


def test_backends_shows_the_machine(cli, fake_backend):
    data = json.loads(cli("backends", "--json").output)
    assert data["machine"]["cpu"]["logical_cores"] >= 1
    assert cli("backends").output.startswith("machine: ")


def test_option_passes_backend_options_to_the_backend(cli, fake_backend, fake_model, tmp_path):
    x = tmp_path / "x.npy"
    np.save(x, np.ones((1, 3), np.float32))
    cli("predict", str(fake_model), str(x), "--backend", "fake", "--option", "fake.mode=fast")
    cli("info", str(fake_model), "--backend", "fake", "--option", 'fake.mode={"a": [1, true]}')
    assert [s.options.extra for s in fake_backend.opened] == [
        {"mode": "fast"},  # not JSON: the text itself
        {"mode": {"a": [1, True]}},  # JSON: the value it reads as
    ]


@pytest.mark.parametrize("arg", ["fake=1", "mode=1", ".mode=1", "fake.=1", "fake.mode"])
def test_option_must_name_a_backend_and_a_key(cli, fake_backend, fake_model, arg):
    result = cli("info", str(fake_model), "--option", arg, code=2)
    assert "expected BACKEND.KEY=VALUE, e.g. ncnn.device=vulkan" in result.output


def test_parse_backend_options_groups_by_backend():
    from unifer.cli import parse_backend_options

    parsed = parse_backend_options(["ncnn.device=vulkan:0", "ncnn.winograd=false", "torch.x=2"])
    assert parsed == {"ncnn": {"device": "vulkan:0", "winograd": False}, "torch": {"x": 2}}


def test_device_reaches_the_backend_and_is_shown(cli, fake_backend, fake_model):
    data = json.loads(
        cli("info", str(fake_model), "--backend", "fake", "--device", "cpu", "--json").output
    )
    assert data["device"] == "cpu"
    assert "opened with fake on cpu" in cli("info", str(fake_model), "--device", "cpu").output
    result = cli("info", str(fake_model), "--backend", "fake", "--device", "cuda:0", code=1)
    assert "cannot run on device 'cuda:0'" in result.output


def test_cache_show_flags_malformed_decisions(cli, fake_backend, fake_model):
    from unifer import Engine, _autocache

    Engine.load(fake_model, budget_s=0.05)
    data = json.loads(_autocache.cache_file().read_text())
    data["entries"].update({"abc": "oops", "def": {"ranking": "fake"}, "ghi": {"ranking": []}})
    _autocache.cache_file().write_text(json.dumps(data))
    text = cli("cache", "show").output
    assert "auto decisions: 4" in text
    assert text.count("malformed entry, ignored") == 3
    assert "fake/fp32" in text  # the well-formed decision is still shown
    assert json.loads(cli("cache", "show", "--json").output)["auto"]["abc"] == "oops"


def test_predict_out_is_checked_before_the_model_is_loaded(cli, fake_backend, fake_model, tmp_path):
    np.save(tmp_path / "x.npy", np.ones((1, 3), np.float32))
    missing = tmp_path / "no" / "such" / "dir" / "y.npy"
    result = cli("predict", str(fake_model), str(tmp_path / "x.npy"), "--out", str(missing), code=2)
    assert "does not exist" in result.output and "Traceback" not in result.output
    assert fake_backend.opened == []  # refused before any work
    result = cli("predict", str(fake_model), str(tmp_path / "x.npy"), "--out", "y.txt", code=2)
    assert ".npy, .npz or .json" in result.output


def test_predict_writes_the_file_it_names(cli, fake_backend, fake_model, tmp_path):
    np.save(tmp_path / "x.npy", np.ones((1, 3), np.float32))
    for name in ("EMB.NPY", "ALL.Npz"):
        cli("predict", str(fake_model), str(tmp_path / "x.npy"), "--out", str(tmp_path / name))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ALL.Npz",
        "EMB.NPY",
        "model.fake",
        "x.npy",
    ]
    with np.load(tmp_path / "ALL.Npz") as archive:
        np.testing.assert_array_equal(archive["y"], np.full((1, 3), 2.0, np.float32))


def test_npz_outputs_may_have_any_name(cli, fake_backend, make_fake_model, tmp_path):
    # np.savez(path, **outputs) would collide with its own 'file' and 'allow_pickle' parameters.
    model = make_fake_model(
        tmp_path / "m.fake",
        outputs=[{"name": n, "shape": ["N", 3], "dtype": "float32"} for n in ("file", "y")],
    )
    np.save(tmp_path / "x.npy", np.ones((1, 3), np.float32))
    cli("predict", str(model), str(tmp_path / "x.npy"), "--out", str(tmp_path / "o.npz"))
    with np.load(tmp_path / "o.npz") as archive:
        assert sorted(archive.files) == ["file", "y"]


def test_json_output_is_strict_json(cli, fake_backend, fake_model, tmp_path):
    np.save(tmp_path / "x.npy", np.array([[np.inf, 1.0, -np.inf]], np.float32))
    text = cli("predict", str(fake_model), str(tmp_path / "x.npy"), "--json").output

    def refuse(constant: str) -> None:
        raise AssertionError(f"bare {constant} in JSON output")

    data = json.loads(text, parse_constant=refuse)
    assert data["outputs"]["y"]["values"] == [[None, 2.0, None]]


@pytest.mark.parametrize("content", [b"not numpy at all", b"PK\x03\x04broken zip"])
def test_unreadable_numpy_input_is_a_clean_error(cli, fake_backend, fake_model, tmp_path, content):
    for name in ("x.npy", "x.npz"):
        (tmp_path / name).write_bytes(content)
        result = cli("predict", str(fake_model), str(tmp_path / name), code=1)
        assert "InputError: cannot read" in result.output and "Traceback" not in result.output


def test_a_text_file_named_npy_is_not_called_pickled(cli, fake_backend, fake_model, tmp_path):
    (tmp_path / "x.npy").write_text("hello")
    output = cli("predict", str(fake_model), str(tmp_path / "x.npy"), code=1).output
    assert "it is not a .npy file" in output
    assert "allow_pickle" not in output and "trust the file" not in output


def test_a_npy_for_a_model_with_several_inputs_says_use_npz(
    cli, fake_backend, make_fake_model, tmp_path
):
    inputs = [{"name": n, "shape": ["N", 3], "dtype": "float32"} for n in ("a", "b")]
    model = make_fake_model(tmp_path / "two.fake", inputs=inputs)
    np.save(tmp_path / "x.npy", np.ones((1, 3), np.float32))
    output = cli("predict", str(model), str(tmp_path / "x.npy"), code=1).output
    assert "the model has 2 inputs (a, b); pass them in a .npz file" in output
    assert "cannot read" not in output  # the file itself is fine
    assert output.count("docs/errors.md") == 1


def test_predict_with_swapped_arguments_says_so(cli, fake_backend, fake_model, tmp_path):
    np.save(tmp_path / "x.npy", np.ones((1, 3), np.float32))
    output = cli("predict", str(tmp_path / "x.npy"), str(fake_model), code=2).output
    assert "is an input file, not a model; the arguments are MODEL then INPUT" in output


def test_a_tensor_npy_for_a_builtin_model_is_its_input(cli, tmp_path):
    pytest.importorskip("onnx")
    if "onnxruntime" not in json.dumps(json.loads(cli("backends", "--json").output)["backends"]):
        pytest.skip("needs a backend that reads ONNX")
    x = np.random.default_rng(0).standard_normal((1, 3, 112, 112)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    args = ("builtin:arcface-tiny", str(tmp_path / "x.npy"), "--backend", "onnxruntime", "--json")
    data = json.loads(cli("predict", *args).output)
    assert np.array(data["outputs"]["embedding"]["values"]).shape == (1, 512)


def test_convert_out_may_be_the_cache_entry_itself(cli, tmp_path):
    pytest.importorskip("onnx")
    if "litert" not in json.dumps(json.loads(cli("backends", "--json").output)["backends"]):
        pytest.skip("needs the litert backend")
    first = json.loads(cli("convert", "builtin:arcface-tiny", "--to", "litert", "--json").output)
    entry = str(Path(first["files"][0]).parent)
    again = json.loads(
        cli("convert", "builtin:arcface-tiny", "--to", "litert", "--out", entry, "--json").output
    )
    assert again["files"] == first["files"]


def test_convert_out_never_replaces_the_models_own_files(cli, tmp_path):
    """ncnn writes m.param + m.bin; beside an m.onnx whose weights are m.bin, --out . would have
    overwritten the source's weights, even with --force."""
    onnx = pytest.importorskip("onnx")
    if "ncnn" not in json.dumps(json.loads(cli("backends", "--json").output)["backends"]):
        pytest.skip("needs the ncnn backend")
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "m",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    source = tmp_path / "m.onnx"
    onnx.save_model(model, str(source), save_as_external_data=True, location="m.bin",
                    size_threshold=0)  # fmt: skip
    weights = (tmp_path / "m.bin").read_bytes()
    for extra in ((), ("--force",)):
        args = ("convert", str(source), "--to", "ncnn", "--out", str(tmp_path), *extra)
        assert "would replace a file of the model" in cli(*args, code=2).output
        assert (tmp_path / "m.bin").read_bytes() == weights


def test_importing_the_main_module_runs_nothing():
    import importlib

    importlib.import_module("unifer.__main__")  # a SystemExit here would fail the test


@pytest.mark.filterwarnings("default::unifer.UniferWarning")  # shown, as outside the tests
def test_unifer_warnings_are_one_plain_line(cli, fake_backend, fake_model):
    result = cli("info", str(fake_model), "--backend", "fake", "--option", "fake.speeed=1")
    assert "warning: backend option 'speeed' is not understood by fake" in result.stderr
    assert "UniferWarning" not in result.stderr and ".py:" not in result.stderr  # no source line


@pytest.mark.parametrize(
    "args",
    [
        (("--threads", ","), "lists nothing"),
        (("--batch", ","), "lists nothing"),
        (("--precision", " , "), "lists nothing"),
        (("--threads", "abc"), "neither a positive integer"),
        (("--precision", "fp64"), "the precisions are"),
    ],
    ids=["threads", "batch", "precision", "threads-abc", "precision-fp64"],
)
def test_bench_refuses_option_values_before_measuring(cli, fake_backend, args):
    option_args, message = args
    assert message in cli("bench", "builtin:arcface-tiny", *option_args, code=2).output


def test_bench_refuses_an_unwritable_out_before_running(cli, fake_backend, tmp_path, monkeypatch):
    """An --out that cannot be written failed after the whole run, losing every result."""
    from unifer import bench

    monkeypatch.setattr(bench, "run", lambda *a, **k: pytest.fail("ran before checking --out"))
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    output = cli("bench", "--quick", "--out", str(blocker / "report"), code=2).output
    assert "cannot create" in output and "--out" in output
    assert "is a file" in cli("bench", "--quick", "--out", str(blocker), code=2).output


def test_predict_allow_nan(cli, fake_backend, fake_model, tmp_path):
    x = tmp_path / "x.npy"
    np.save(x, np.array([[1.0, np.nan, 3.0]], np.float32))
    assert "--allow-nan" in cli("predict", str(fake_model), str(x), code=1).output
    assert "backend: fake" in cli("predict", str(fake_model), str(x), "--allow-nan").output


def test_predict_refuses_an_unreadable_input_before_loading(cli, fake_model, tmp_path, monkeypatch):
    from unifer import cli as cli_module

    monkeypatch.setattr(cli_module.Engine, "load", lambda *a, **k: pytest.fail("loaded first"))
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    assert (
        "use .npy, .npz or an image" in cli("predict", str(fake_model), str(notes), code=2).output
    )


@pytest.mark.parametrize(
    ("python", "shell"),
    [
        (
            "load it with backend_options={'litert': {'xnnpack': False}}, whose kernels",
            "load it with --option litert.xnnpack=false, whose kernels",
        ),
        (
            "e.g. backend_options={'ncnn': {'input_shapes': {'x': [3, 224, 224]}}} (see)",
            """e.g. --option 'ncnn.input_shapes={"x": [3, 224, 224]}' (see)""",
        ),
        (
            "set backend_options={'openvino': {'device': ...}} to",
            "set --option openvino.device=... to",
        ),
        (
            "device='cpu' and backend_options['ncnn']['device']='vulkan' disagree",
            "--device cpu and --option ncnn.device=vulkan disagree",
        ),
        ("load it with allow_nan=True", "load it with --allow-nan"),
        ("Use precision='fp32' with fake", "Use --precision fp32 with fake"),
        ("e.g. backend='onnxruntime'", "e.g. --backend onnxruntime"),
        ("so pass preprocess=False and feed", "so pass --preprocess none and feed"),
        ("backend option device='vulkan:7' is not", "backend option device='vulkan:7' is not"),
        ("Engine.load(m, device='cuda:0') works", "Engine.load(m, device='cuda:0') works"),
        ("backend_options['x']['name']='a b' is", "--option 'x.name=a b' is"),
        (
            "Pass backend_options={'tensorrt': {'profiles': {",
            "Pass backend_options={'tensorrt': {'profiles': {",
        ),
    ],
)
def test_python_fixes_in_messages_are_spelled_as_flags(python, shell):
    from unifer.cli import shell_hints

    assert shell_hints(python) == shell


def test_an_error_at_the_shell_names_the_flag(cli, fake_backend, fake_model, tmp_path):
    x = tmp_path / "x.npy"
    np.save(x, np.ones((1, 3), np.float32))
    output = cli("predict", str(fake_model), str(x), "--backend", "fake", "--precision", "int8",
                 code=1).output  # fmt: skip
    assert "--precision fp32" in output and "precision='" not in output


def test_info_auto_explains_the_decision_an_application_with_these_options_gets(
    cli, fake_backend, fake_model
):
    from unifer import Engine

    data = json.loads(cli("info", str(fake_model), "--auto", "--threads", "1,2", "--json").output)
    tried = {
        (t["candidate"]["backend"], t["candidate"]["threads"]) for t in data["selection"]["trials"]
    }
    assert {("fake", 1), ("fake", 2)} <= tried
    # The same decision an application loading with those options gets: from the cache.
    assert Engine.load(fake_model, threads=(1, 2)).selection.source == "cache"
    assert "--auto explains" in cli("info", str(fake_model), "--auto", "--backend", "fake",
                                    code=2).output  # fmt: skip
    assert "size of at least 1" in cli("info", str(fake_model), "--dim", "S=0", code=2).output


def test_bench_preprocess_none_passes_a_sidecar_by(cli, fake_backend, fake_model, monkeypatch):
    from unifer import bench

    seen = {}

    def run(*args, **kwargs):
        seen.update(kwargs)
        raise click.ClickException("stopped before measuring")

    monkeypatch.setattr(bench, "run", run)
    cli("bench", str(fake_model), "--preprocess", "none", code=1)
    assert seen["preprocess"] is False
