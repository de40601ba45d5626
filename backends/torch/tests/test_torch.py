"""Tests of the torch backend against the real runtime: TorchScript and torch.export files written
here from modules built here, options, precisions, process-wide settings, and CUDA (``gpu``)."""

from __future__ import annotations

import importlib.util
import threading
import warnings
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

if importlib.util.find_spec("torch") is None:
    pytest.skip(
        "torch is not installed here: the torch backend's tests run in its own environment "
        "(backends/torch/test-env.sh)",
        allow_module_level=True,
    )

import torch
from torch.export import Dim

from unifer import (
    Engine,
    InferenceError,
    ModelLoadError,
    UniferWarning,
    UnsupportedOptionError,
)
from unifer.backend import SessionOptions
from unifer.testing import models
from unifer_torch import TorchBackend
from unifer_torch import _session as torch_session

# torch 2.13 deprecates TorchScript (torch.jit.*) in favour of torch.export; it still runs it.
pytestmark = pytest.mark.filterwarnings(
    r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning"
)

CPU: dict[str, Any] = {"device": "cpu"}
HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device visible to torch here")


class Net(torch.nn.Module):
    """A conv + linear model with two tensor inputs and a dict of two outputs."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, image: torch.Tensor, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"features": self.conv(image).relu(), "logits": self.fc(x)}


class InPlace(torch.nn.Module):
    """Writes into its input and returns it: the caller's array must not see either."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.add_(1)
        return x


NET_INPUTS = {
    "image": {"shape": [None, 3, 16, 16], "dtype": "float32"},
    "x": ["batch", 8],
}


def net_feeds(batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "image": rng.standard_normal((batch, 3, 16, 16)).astype(np.float32),
        "x": rng.standard_normal((batch, 8)).astype(np.float32),
    }


def eager(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    with torch.inference_mode():
        out = Net().eval()(torch.from_numpy(feeds["image"]), torch.from_numpy(feeds["x"]))
    return {k: v.numpy() for k, v in out.items()}


@pytest.fixture(scope="module")
def scripted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("torchscript") / "net.pt"
    torch.jit.save(torch.jit.script(Net().eval()), str(path))
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("export") / "net.pt2"
    feeds = net_feeds()
    batch = Dim("batch")
    program = torch.export.export(
        Net().eval(),
        (torch.from_numpy(feeds["image"]), torch.from_numpy(feeds["x"])),
        dynamic_shapes={"image": {0: batch}, "x": {0: batch}},
    )
    torch.export.save(program, str(path))
    return path


def load_scripted(path: Path, **options: Any) -> Engine:
    extra = options.pop("torch", {})
    return Engine.load(
        path,
        backend="torch",
        backend_options={"torch": {**CPU, "inputs": NET_INPUTS, **extra}},
        **options,
    )


def assert_close(
    got: dict[str, np.ndarray], want: dict[str, np.ndarray], atol: float = 1e-5
) -> None:
    assert list(got) == list(want)
    for name in want:
        assert got[name].dtype == np.float32, name
        np.testing.assert_allclose(got[name], want[name], atol=atol, rtol=1e-5, err_msg=name)


# -- TorchScript ----------------------------------------------------------------------------------


def test_torchscript_runs_with_declared_inputs(scripted: Path) -> None:
    with load_scripted(scripted) as engine:
        assert [(s.name, s.shape, s.dtype) for s in engine.inputs] == [
            ("image", (None, 3, 16, 16), np.float32),
            ("x", ("batch", 8), np.float32),
        ]
        # Outputs are learned by running the model once on zeros, with the batch at 1 and 2.
        assert [(s.name, s.shape) for s in engine.outputs] == [
            ("features", (None, 4, 16, 16)),
            ("logits", (None, 5)),
        ]
        assert engine.settings["format"] == "torchscript"
        for batch in (1, 3):
            feeds = net_feeds(batch)
            assert_close(engine.run(feeds), eager(feeds))


def test_traced_torchscript_with_a_tuple_output(tmp_path: Path) -> None:
    class Pair(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x * 2, x.sum(dim=1)

    path = tmp_path / "pair.torchscript"
    torch.jit.save(torch.jit.trace(Pair(), torch.zeros(2, 3)), str(path))
    options = {"torch": {**CPU, "inputs": {"x": [2, 3]}}}
    with Engine.load(path, backend="torch", backend_options=options) as engine:
        assert [(s.name, s.shape) for s in engine.outputs] == [
            ("output0", (2, 3)),
            ("output1", (2,)),
        ]
        x = np.arange(6, dtype=np.float32).reshape(2, 3)
        got = engine.run({"x": x})
    np.testing.assert_array_equal(got["output0"], x * 2)
    np.testing.assert_array_equal(got["output1"], x.sum(axis=1))


def test_torchscript_needs_its_inputs_declared(scripted: Path) -> None:
    with pytest.raises(UnsupportedOptionError, match=r"do not record input shapes.*'image'.*'x'"):
        Engine.load(scripted, backend="torch", backend_options={"torch": CPU})


@pytest.mark.parametrize(
    ("inputs", "match"),
    [
        ({"image": [1, 3, 16, 16]}, r"missing: 'x'"),
        ({**NET_INPUTS, "y": [1]}, r"unknown: 'y'"),
        ({**NET_INPUTS, "x": "1,8"}, r"must be a list"),
        ({**NET_INPUTS, "x": {"shape": [1, 8], "dtype": "float128x"}}, r"not a dtype"),
        ({**NET_INPUTS, "x": {"shape": [1, 8], "dtype": "uint32"}}, r"cannot be fed to torch"),
        ([1, 2], r"must be a dict"),
    ],
)
def test_bad_inputs_option(scripted: Path, inputs: object, match: str) -> None:
    with pytest.raises(UnsupportedOptionError, match=match):
        Engine.load(scripted, backend="torch", backend_options={"torch": {**CPU, "inputs": inputs}})


def test_torchscript_that_fails_on_the_declared_shape_is_a_load_error(scripted: Path) -> None:
    inputs = {**NET_INPUTS, "x": [1, 7]}  # the Linear layer takes 8 features
    with pytest.raises(ModelLoadError, match=r"running it once on zeros") as info:
        Engine.load(scripted, backend="torch", backend_options={"torch": {**CPU, "inputs": inputs}})
    assert info.value.__cause__ is not None
    # The reason, not the TorchScript interpreter's generic header over its traceback.
    assert "(1x7 and 8x" in str(info.value)
    assert "The following operation failed" not in str(info.value)


def test_the_callers_arrays_are_neither_written_nor_aliased(tmp_path: Path) -> None:
    path = tmp_path / "inplace.pt"
    torch.jit.save(torch.jit.script(InPlace()), str(path))
    options = {"torch": {**CPU, "inputs": {"x": [None, 3]}}}
    with Engine.load(path, backend="torch", backend_options=options) as engine:
        x = np.zeros((2, 3), np.float32)
        first = engine.run({"x": x})["output"]
        second = engine.run({"x": x})["output"]
    np.testing.assert_array_equal(x, 0)
    np.testing.assert_array_equal(first, 1)
    assert not np.shares_memory(first, x) and not np.shares_memory(first, second)


@pytest.mark.parametrize("form", ["onnx", "torchscript"])
def test_read_only_feeds_run_without_warnings(
    form: str, scripted: Path, arcface_tiny: Path
) -> None:
    if form == "onnx":
        feeds = {"input.1": np.zeros((1, 3, 112, 112), np.float32)}
        engine = Engine.load(arcface_tiny, backend="torch", backend_options={"torch": CPU})
    else:
        feeds, engine = net_feeds(1), load_scripted(scripted)
    for array in feeds.values():
        array.flags.writeable = False
    with engine, warnings.catch_warnings():
        warnings.simplefilter("error")
        engine.run(feeds)


def test_concurrent_torchscript_runs_match_serial_runs(scripted: Path) -> None:
    feeds = [net_feeds(1, seed=i) for i in range(8)]
    with load_scripted(scripted) as engine:
        serial = [engine.run(f) for f in feeds]
        results: list[dict[str, np.ndarray] | None] = [None] * len(feeds)
        barrier = threading.Barrier(len(feeds))

        def work(i: int) -> None:
            barrier.wait()
            for _ in range(10):
                results[i] = engine.run(feeds[i])

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(feeds))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for got, want in zip(results, serial, strict=True):
        assert got is not None
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])


def test_a_torch_save_checkpoint_is_explained(tmp_path: Path) -> None:
    path = tmp_path / "weights.pth"
    torch.save(Net().state_dict(), str(path))
    with pytest.raises(ModelLoadError, match=r"torch.save checkpoint.*does not unpickle") as info:
        Engine.load(path, backend="torch", backend_options={"torch": CPU})
    assert info.value.__cause__ is not None


def test_an_export_program_named_pt_is_explained(exported: Path, tmp_path: Path) -> None:
    misnamed = tmp_path / "net.pt"
    misnamed.write_bytes(exported.read_bytes())
    with pytest.raises(ModelLoadError, match=r"torch.export program: give it the .pt2 suffix"):
        Engine.load(misnamed, backend="torch", backend_options={"torch": {**CPU, "inputs": {}}})


@pytest.mark.parametrize("suffix", [".pt", ".pt2"])
def test_truncated_files_are_load_errors(
    scripted: Path, exported: Path, tmp_path: Path, suffix: str
) -> None:
    source = scripted if suffix == ".pt" else exported
    path = tmp_path / f"truncated{suffix}"
    data = source.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    options = {"torch": {**CPU, "inputs": NET_INPUTS}} if suffix == ".pt" else {"torch": CPU}
    with pytest.raises(ModelLoadError) as info:
        Engine.load(path, backend="torch", backend_options=options)
    assert path.name in str(info.value)
    assert info.value.__cause__ is not None


# -- torch.export ---------------------------------------------------------------------------------


def test_export_program_declares_its_own_signature(exported: Path) -> None:
    with Engine.load(exported, backend="torch", backend_options={"torch": CPU}) as engine:
        assert [s.name for s in engine.inputs] == ["image", "x"]
        assert [s.name for s in engine.outputs] == ["features", "logits"]
        batch = engine.inputs[0].shape[0]
        # The dynamic batch is one symbol shared by both inputs and the outputs.
        assert isinstance(batch, str)
        assert engine.inputs[1].shape == (batch, 8)
        assert engine.outputs[0].shape == (batch, 4, 16, 16)
        assert engine.settings["format"] == "torch.export"
        for size in (1, 4):
            feeds = net_feeds(size)
            assert_close(engine.run(feeds), eager(feeds))
        with pytest.raises(InferenceError):  # the shared batch must agree: torch checks too
            engine._session.run({"image": net_feeds(2)["image"], "x": net_feeds(3)["x"]})


def test_inputs_option_is_for_torchscript_only(exported: Path) -> None:
    options = {"torch": {**CPU, "inputs": NET_INPUTS}}
    with pytest.raises(UnsupportedOptionError, match="TorchScript files only"):
        Engine.load(exported, backend="torch", backend_options=options)


def test_keyword_only_export_inputs_are_refused(tmp_path: Path) -> None:
    class Keyword(torch.nn.Module):
        def forward(self, x: torch.Tensor, *, scale: torch.Tensor) -> torch.Tensor:
            return x * scale

    path = tmp_path / "kw.pt2"
    program = torch.export.export(Keyword(), (torch.ones(2),), {"scale": torch.ones(2)})
    torch.export.save(program, str(path))
    with pytest.raises(ModelLoadError, match="keyword or nested inputs"):
        Engine.load(path, backend="torch", backend_options={"torch": CPU})


# -- precision ------------------------------------------------------------------------------------


BF16_ON_CPU = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
FP16_ON_CPU = bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())


@pytest.fixture(scope="module")
def arcface_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from unifer import models as builtin

    path = tmp_path_factory.mktemp("arcface") / "arcface-tiny.onnx"
    import onnx

    onnx.save(builtin.build("arcface-tiny"), str(path))
    return path


@pytest.mark.skipif(not BF16_ON_CPU, reason="oneDNN has no bf16 kernels for this CPU")
@pytest.mark.parametrize("form", ["onnx", "torchscript", "torch.export"])
def test_bf16_is_opt_in_and_its_accuracy_is_bounded(
    form: str, arcface_tiny: Path, scripted: Path, exported: Path
) -> None:
    """bf16 keeps 8 mantissa bits: measured on arcface-tiny, cosine 0.99996 to fp32 and max abs
    diff 0.04 on embeddings up to 4.7 (r18: 0.99995, 0.07)."""
    if form == "onnx":
        x = np.random.default_rng(0).standard_normal((1, 3, 112, 112)).astype(np.float32)
        feeds, load = {"input.1": x}, lambda **kw: Engine.load(arcface_tiny, backend="torch", **kw)
    elif form == "torchscript":
        feeds, load = net_feeds(2), lambda **kw: load_scripted(scripted, **kw)
    else:
        feeds, load = net_feeds(2), lambda **kw: Engine.load(exported, backend="torch", **kw)
    options = {} if form == "torchscript" else {"backend_options": {"torch": CPU}}
    with load(**options) as engine:
        fp32 = engine.run(feeds)
    with load(precision="bf16", **options) as engine:
        assert engine.settings["precision"] == "bf16"
        assert engine.settings["compute_dtype"] == "bfloat16"
        assert "returned as float32" in str(engine.settings["outputs"])
        assert all(s.dtype == np.float32 for s in engine.outputs)
        bf16 = engine.run(feeds)
    for name, reference in fp32.items():
        got = bf16[name]
        assert got.dtype == np.float32
        a, b = reference.ravel().astype(np.float64), got.ravel().astype(np.float64)
        cosine = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
        error = float(np.abs(a - b).max())
        scale = float(np.abs(a).max())
        assert error > 0, "bf16 gave bit-identical results: was it applied?"
        assert cosine > 0.999, (name, cosine)
        assert error < 0.05 * scale, (name, error, scale)


@pytest.mark.skipif(FP16_ON_CPU, reason="this CPU has native fp16: fp16 is accepted here")
def test_fp16_on_a_cpu_without_native_fp16_is_refused(arcface_tiny: Path) -> None:
    with pytest.raises(UnsupportedOptionError, match=r"no native fp16 arithmetic"):
        Engine.load(arcface_tiny, backend="torch", precision="fp16", backend_options={"torch": CPU})


def test_int8_is_refused(arcface_tiny: Path) -> None:
    with pytest.raises(UnsupportedOptionError, match=r"torch.ao.quantization"):
        Engine.load(arcface_tiny, backend="torch", precision="int8", backend_options={"torch": CPU})


def test_fp32_on_cpu_undoes_a_process_wide_bf16_setting(arcface_tiny: Path) -> None:
    """PyTorch 2.9+ lets a process lower oneDNN's float32 math to bf16; faithful fp32 pins it back
    and says so."""
    if not torch_session._has_fp32_precision_api():
        pytest.skip("this torch has no fp32_precision API")
    knob = torch.backends.mkldnn.conv
    before = knob.fp32_precision
    try:
        knob.fp32_precision = "bf16"
        with Engine.load(arcface_tiny, backend="torch", backend_options={"torch": CPU}) as engine:
            assert engine.settings["fp32_math"] == {"matmul": "ieee", "conv": "ieee", "rnn": "ieee"}
            assert engine.settings["fp32_math_pinned_from"] == {"conv": "bf16"}
            assert knob.fp32_precision == "ieee"
    finally:
        knob.fp32_precision = before


# -- device and other options ---------------------------------------------------------------------


@pytest.mark.skipif(HAS_CUDA, reason="this machine has a CUDA device")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:3"])
def test_a_cuda_device_this_machine_lacks_is_refused(arcface_tiny: Path, device: str) -> None:
    with pytest.raises(UnsupportedOptionError, match=rf"device='{device}'.*Use device='cpu'"):
        Engine.load(arcface_tiny, backend="torch", backend_options={"torch": {"device": device}})


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "mps", 0])
def test_an_unknown_device_is_refused(arcface_tiny: Path, device: object) -> None:
    with pytest.raises(UnsupportedOptionError, match=r"'auto', 'cpu', 'cuda' or 'cuda:N'"):
        Engine.load(arcface_tiny, backend="torch", backend_options={"torch": {"device": device}})


def test_auto_device_is_cuda_when_there_is_one(arcface_tiny: Path) -> None:
    with Engine.load(arcface_tiny, backend="torch") as engine:
        assert engine.settings["device"] == ("cuda:0" if HAS_CUDA else "cpu")


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"allow_tf32": "yes"}, r"'allow_tf32' must be True or False"),
        ({"allow_tf32": True, "device": "cpu"}, r"CUDA devices only"),
    ],
)
def test_bad_tf32_option(arcface_tiny: Path, options: dict[str, object], match: str) -> None:
    with pytest.raises(UnsupportedOptionError, match=match):
        Engine.load(arcface_tiny, backend="torch", backend_options={"torch": options})


def test_settings_report_what_was_applied(arcface_tiny: Path) -> None:
    with Engine.load(arcface_tiny, backend="torch", threads=1, backend_options={"torch": CPU}) as e:
        settings = dict(e.settings)
    assert settings["device"] == "cpu"
    assert settings["device_name"].startswith("CPU")
    assert settings["threads"] == 1
    assert settings["threads_scope"] == settings["fp32_math_scope"] == "process"
    assert settings["precision"] == "fp32"
    assert settings["compute_dtype"] == "float32"
    assert settings["tf32"] is False
    assert settings["fp32_math"] == {"matmul": "ieee", "conv": "ieee", "rnn": "ieee"}
    assert settings["format"] == "onnx"
    assert settings["opset"] == 17
    assert str(settings["converter"]).startswith("unifer_torch._onnx/")
    assert settings["runtime_version"] == torch.__version__


def test_threads_are_process_wide_and_a_conflict_warns(arcface_tiny: Path) -> None:
    with Engine.load(arcface_tiny, backend="torch", threads=1, backend_options={"torch": CPU}) as a:
        with pytest.warns(UniferWarning, match=r"process-wide.*threads=1"):
            b = Engine.load(
                arcface_tiny, backend="torch", threads=2, backend_options={"torch": CPU}
            )
        with b:
            assert torch.get_num_threads() == 2
            assert a.settings["threads"] == 1  # what it applied when it was opened
        assert torch.get_num_threads() == 1  # b closed: a's value is back
    # Both closed: a third value conflicts with nobody.
    Engine.load(arcface_tiny, backend="torch", threads=1, backend_options={"torch": CPU}).close()


def test_threads_apply_in_a_pool_thread_that_ran_torch_before(arcface_tiny: Path) -> None:
    """torch.set_num_threads sets the calling thread's count (OpenMP keeps one per thread): a
    worker that ran torch before the engine was opened has its own until run() aligns it."""
    feeds = {"input.1": np.zeros((1, 3, 112, 112), np.float32)}
    with ThreadPoolExecutor(1) as pool:
        before = pool.submit(torch.get_num_threads).result()
        wanted = before + 1
        options = {"torch": CPU}
        with Engine.load(
            arcface_tiny, backend="torch", threads=wanted, backend_options=options
        ) as e:
            assert pool.submit(torch.get_num_threads).result() == before
            pool.submit(e.run, feeds).result()
            assert pool.submit(torch.get_num_threads).result() == wanted


def test_closed_session_refuses_to_run(arcface_tiny: Path) -> None:
    session = TorchBackend().open(arcface_tiny, SessionOptions(extra=CPU))
    session.close()
    with pytest.raises(InferenceError, match="closed"):
        session.run({"input.1": np.zeros((1, 3, 112, 112), np.float32)})


def test_plugin_import_does_not_import_torch_but_open_does() -> None:
    import subprocess
    import sys

    code = (
        "import sys, unifer_torch; assert 'torch' not in sys.modules; "
        "unifer_torch.TorchBackend().probe(); print('torch' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "True"


def test_toy_models_match_their_numpy_references(tmp_path: Path) -> None:
    for model in (models.image_conv(), models.image_conv(layout="nhwc"), models.multi_io()):
        path = model.save(tmp_path)
        with Engine.load(path, backend="torch", backend_options={"torch": CPU}) as engine:
            feeds = model.feeds(batch=2 if model.name == "multi_io" else 1)
            got = engine.run(feeds)
        for name, want in model.reference(feeds).items():
            assert got[name].dtype == want.dtype
            np.testing.assert_allclose(got[name], want, atol=1e-5, rtol=1e-5, err_msg=name)


def test_archive_hint_reads_without_loading(tmp_path: Path) -> None:
    """The hint for a file that is not TorchScript looks at the zip listing only."""
    path = tmp_path / "other.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("other/data.pkl", b"\x80\x02}q\x00.")
    assert "torch.save checkpoint" in torch_session._not_torchscript_hint(path)


# -- CUDA ----------------------------------------------------------------------------------------


@pytest.fixture
def restore_tf32() -> Iterator[None]:
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


@pytest.mark.gpu
@needs_cuda
@pytest.mark.usefixtures("restore_tf32")
def test_cuda_fp32_is_faithful_and_tf32_is_opt_in(arcface_tiny: Path) -> None:
    x = np.random.default_rng(0).standard_normal((1, 3, 112, 112)).astype(np.float32)
    with Engine.load(arcface_tiny, backend="torch", backend_options={"torch": CPU}) as cpu:
        want = cpu.run({"input.1": x})["embedding"]
    with Engine.load(
        arcface_tiny, backend="torch", backend_options={"torch": {"device": "cuda:0"}}
    ) as gpu:
        assert gpu.settings["device"] == "cuda:0"
        assert gpu.settings["device_name"] == torch_session._gpu_name(0)
        assert gpu.settings["tf32"] is False
        assert gpu.settings["fp32_math"] == {"matmul": "ieee", "conv": "ieee", "rnn": "ieee"}
        got = gpu.run({"input.1": x})["embedding"]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    options = {"torch": {"device": "cuda:0", "allow_tf32": True}}
    with Engine.load(arcface_tiny, backend="torch", backend_options=options) as tf32:
        assert tf32.settings["tf32"] is True
        assert tf32.settings["fp32_math"]["conv"] == "tf32"


@pytest.mark.gpu
@needs_cuda
@pytest.mark.usefixtures("restore_tf32")
def test_a_second_cuda_engine_asking_for_other_tf32_warns(arcface_tiny: Path) -> None:
    cuda = {"device": "cuda:0"}
    options = {"torch": {**cuda, "allow_tf32": True}}
    with (
        Engine.load(arcface_tiny, backend="torch", backend_options={"torch": cuda}),
        pytest.warns(UniferWarning, match="TF32 is process-wide"),
    ):
        Engine.load(arcface_tiny, backend="torch", backend_options=options).close()
        # The TF32 engine closed: the fp32 one still open gets IEEE math back.
        ieee = {"matmul": "ieee", "conv": "ieee", "rnn": "ieee"}
        assert torch_session._cuda_fp32_math() == ieee


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_cuda_reduced_precision(arcface_tiny: Path, precision: str) -> None:
    if precision == "bf16" and not torch.cuda.is_bf16_supported(including_emulation=False):
        pytest.skip("this GPU has no native bf16")
    x = np.random.default_rng(0).standard_normal((1, 3, 112, 112)).astype(np.float32)
    cuda = {"torch": {"device": "cuda:0"}}
    with Engine.load(arcface_tiny, backend="torch", backend_options=cuda) as engine:
        want = engine.run({"input.1": x})["embedding"][0]
    with Engine.load(arcface_tiny, backend="torch", precision=precision, backend_options=cuda) as e:
        got = e.run({"input.1": x})["embedding"][0]
    assert got.dtype == np.float32
    cosine = float(want @ got / (np.linalg.norm(want) * np.linalg.norm(got)))
    assert cosine > 0.999


@pytest.mark.gpu
@needs_cuda
def test_cuda_runs_torchscript_and_export(scripted: Path, exported: Path) -> None:
    feeds = net_feeds(3)
    want = eager(feeds)
    with load_scripted(scripted, torch={"device": "cuda:0"}) as engine:
        assert_close(engine.run(feeds), want, atol=1e-4)
    options = {"torch": {"device": "cuda:0"}}
    with Engine.load(exported, backend="torch", backend_options=options) as engine:
        assert_close(engine.run(feeds), want, atol=1e-4)


@pytest.mark.gpu
@needs_cuda
def test_a_cuda_index_past_the_last_device_is_refused(arcface_tiny: Path) -> None:
    device = f"cuda:{torch.cuda.device_count()}"
    with pytest.raises(UnsupportedOptionError, match=r"CUDA device\(s\)"):
        Engine.load(arcface_tiny, backend="torch", backend_options={"torch": {"device": device}})
