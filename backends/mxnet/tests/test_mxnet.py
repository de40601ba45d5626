"""The mxnet plugin on real models: converted ArcFace against onnxruntime, MXNet's own checkpoints,
threads, the retirement warning, bad files, and concurrency. Needs the plugin's environment."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

if importlib.util.find_spec("mxnet") is None:
    pytest.skip(
        "mxnet is not installed here: it needs numpy < 1.24, so its tests run in the plugin's own "
        "environment (uv run --project backends/mxnet pytest backends/mxnet/tests)",
        allow_module_level=True,
    )

import onnx
from onnx import TensorProto, helper, numpy_helper

from unifer import (
    Engine,
    InferenceError,
    ModelLoadError,
    ModelNotFoundError,
    UnsupportedOptionError,
    models,
)
from unifer.backend import Converter, SessionOptions
from unifer_mxnet import MXNetBackend
from unifer_mxnet._onnx2mx import fix_graph

#: fp32 parity bound against onnxruntime (ArcFace embeddings reach ~5).
ATOL = 1e-4


@dataclass(frozen=True)
class Converted:
    """An ONNX model and its MXNet conversion."""

    onnx: Path
    symbol: Path

    def reference(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The ONNX model's outputs from onnxruntime, the reference for parity."""
        import onnxruntime as ort

        session = ort.InferenceSession(str(self.onnx), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(None, feeds), strict=True))


@pytest.fixture(scope="module")
def arcface_tiny(tmp_path_factory: pytest.TempPathFactory) -> Converted:
    """The built-in arcface-tiny (dynamic batch) as ONNX, converted once for the module."""
    root = tmp_path_factory.mktemp("arcface-tiny")
    source = root / "arcface-tiny.onnx"
    onnx.save(models.build("arcface-tiny", dynamic_batch=True), str(source))
    out = root / "mxnet"
    out.mkdir()
    return Converted(source, MXNetBackend().convert(source, out, SessionOptions()))


def faces(batch: int, seed: int = 7) -> np.ndarray:
    """ArcFace-preprocessed images: float32 [batch, 3, 112, 112] in [-1, 1]."""
    return np.random.default_rng(seed).uniform(-1, 1, (batch, 3, 112, 112)).astype(np.float32)


# -- converted ArcFace against onnxruntime -------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 3])
def test_converted_arcface_tiny_matches_onnxruntime(arcface_tiny: Converted, batch: int) -> None:
    feeds = {"input.1": faces(batch)}
    with Engine.load(arcface_tiny.symbol, backend="mxnet") as engine:
        assert [str(s) for s in engine.inputs] == ["input.1: float32[?,3,112,112]"]
        assert [str(s) for s in engine.outputs] == ["embedding: float32[?,512]"]
        got = engine.run(feeds)["embedding"]
    want = arcface_tiny.reference(feeds)["embedding"]
    assert got.shape == (batch, 512)
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)


def test_engine_converts_onnx_verifies_and_caches(
    arcface_tiny: Converted, cache_root: Path
) -> None:
    with Engine.load(arcface_tiny.onnx, backend="mxnet") as engine:
        conversion = engine.settings["conversion"]
        got = engine.run({"input.1": faces(2)})["embedding"]
    assert isinstance(conversion, dict)
    check = conversion["check"]
    assert check["reference"] == "onnxruntime"
    assert check["passed"] is True
    assert check["max_abs_diff"] < ATOL
    converted = Path(conversion["path"])
    assert converted.name == "arcface-tiny-symbol.json"
    assert converted.is_relative_to(cache_root)  # never next to the user's model
    assert conversion["converter"].startswith("mxnet.contrib.onnx/1.9.1 ")
    np.testing.assert_allclose(
        got, arcface_tiny.reference({"input.1": faces(2)})["embedding"], atol=ATOL
    )
    with Engine.load(arcface_tiny.onnx, backend="mxnet") as again:  # served from the cache
        assert again.settings["conversion"] == conversion


def test_convert_writes_only_the_checkpoint_and_leaves_the_source(tmp_path: Path) -> None:
    source = tmp_path / "tiny.onnx"
    onnx.save(models.build("arcface-tiny"), str(source))
    before = source.read_bytes()
    out = tmp_path / "out"
    out.mkdir()
    backend = MXNetBackend()
    assert isinstance(backend, Converter)
    symbol = backend.convert(source, out, SessionOptions())
    assert symbol == out / "tiny-symbol.json"
    assert sorted(p.name for p in out.iterdir()) == ["tiny-0000.params", "tiny-symbol.json"]
    assert source.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "tiny.onnx"]


def fixes_model(directory: Path) -> Path:
    """One of each thing the importer needs fixed: Conv without kernel_shape, BatchNormalization
    with training_mode=0 and no epsilon, a PRelu slope of [C, 1, 1], initializers not listed as
    inputs."""
    rng = np.random.default_rng(5)
    return save_onnx(
        directory,
        [
            helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node(
                "BatchNormalization", ["c", "g", "b", "m", "v"], ["n"], training_mode=0
            ),
            helper.make_node("PRelu", ["n", "slope"], ["y"]),
        ],
        {
            "w": rng.standard_normal((3, 3, 3, 3)).astype(np.float32),
            "g": rng.uniform(0.5, 2, 3).astype(np.float32),
            "b": rng.standard_normal(3).astype(np.float32),
            "m": rng.standard_normal(3).astype(np.float32),
            "v": rng.uniform(0.5, 2, 3).astype(np.float32),
            "slope": rng.uniform(0, 0.5, (3, 1, 1)).astype(np.float32),
        },
    )


def test_each_graph_fix_converts_faithfully(tmp_path: Path) -> None:
    source = fixes_model(tmp_path)
    model = onnx.load(str(source))
    original = model.SerializeToString()
    fixed = fix_graph(model, source)
    assert model.SerializeToString() == original  # the fixes apply to a copy
    assert {t.name for t in fixed.graph.initializer} <= {i.name for i in fixed.graph.input}
    conv, bn, _ = fixed.graph.node
    assert helper.get_attribute_value(conv.attribute[-1]) == [3, 3]  # kernel_shape, from w
    assert {a.name: helper.get_attribute_value(a) for a in bn.attribute} == {
        "epsilon": pytest.approx(1e-5)  # a float32 attribute
    }
    assert [list(t.dims) for t in fixed.graph.initializer if t.name == "slope"] == [[3]]
    out = tmp_path / "mx"
    out.mkdir()
    symbol = MXNetBackend().convert(source, out, SessionOptions())
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)}
    with Engine.load(symbol, backend="mxnet") as engine:
        got = engine.run(feeds)["y"]
    want = Converted(source, symbol).reference(feeds)["y"]
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_the_importer_needs_the_fixes(tmp_path: Path) -> None:
    """Without the fixes, mxnet.contrib.onnx fails on this opset-17 graph."""
    from mxnet.contrib.onnx.onnx2mx.import_onnx import GraphProto

    model = onnx.load(str(fixes_model(tmp_path)))
    with pytest.raises(KeyError):
        GraphProto().from_onnx(model.graph, 17)


def save_onnx(
    directory: Path, nodes: list[onnx.NodeProto], initializers: dict[str, np.ndarray]
) -> Path:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in initializers.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = directory / "model.onnx"
    onnx.save(model, str(path))
    return path


def test_training_mode_batchnorm_is_refused(tmp_path: Path) -> None:
    stats = {k: np.ones(3, np.float32) for k in ("g", "b", "m", "v")}
    node = helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["y"], training_mode=1)
    source = save_onnx(tmp_path, [node], stats)
    with pytest.raises(ModelLoadError, match="training_mode=1"):
        MXNetBackend().convert(source, tmp_path, SessionOptions())


def test_an_operator_the_importer_lacks_is_a_model_load_error(tmp_path: Path) -> None:
    node = helper.make_node("Einsum", ["x", "x"], ["y"], equation="nchw,nchw->nchw")
    source = save_onnx(tmp_path, [node], {})
    with pytest.raises(ModelLoadError, match="cannot convert model.onnx.*Einsum") as info:
        MXNetBackend().convert(source, tmp_path, SessionOptions())
    assert info.value.__cause__ is not None


def test_a_file_that_is_not_onnx_is_a_model_load_error(tmp_path: Path) -> None:
    source = tmp_path / "broken.onnx"
    source.write_bytes(b"\x08\x07garbage" * 10)
    with pytest.raises(ModelLoadError, match="could not read broken.onnx") as info:
        MXNetBackend().convert(source, tmp_path, SessionOptions())
    assert info.value.__cause__ is not None


# -- MXNet's own checkpoints ---------------------------------------------------------------------


@pytest.fixture
def native(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """A training-style checkpoint saved by MXNet: FC + BatchNorm, a softmax loss head.

    Like real ones (insightface's model-symbol.json), its ``data`` input records no shape and it
    ends in a loss with a ``softmax_label`` input.
    """
    import mxnet as mx

    rng = np.random.default_rng(3)
    weights = {
        "fc_weight": rng.standard_normal((4, 8)).astype(np.float32),
        "fc_bias": rng.standard_normal(4).astype(np.float32),
        "bn_gamma": rng.uniform(0.5, 2, 4).astype(np.float32),
        "bn_beta": rng.standard_normal(4).astype(np.float32),
    }
    stats = {
        "bn_moving_mean": rng.standard_normal(4).astype(np.float32),
        "bn_moving_var": rng.uniform(0.5, 2, 4).astype(np.float32),
    }
    fc = mx.sym.FullyConnected(mx.sym.var("data"), num_hidden=4, name="fc")
    bn = mx.sym.BatchNorm(fc, fix_gamma=False, eps=1e-3, name="bn")
    loss = mx.sym.SoftmaxOutput(bn, name="softmax")
    mx.model.save_checkpoint(
        str(tmp_path / "net"),
        7,
        loss,
        {k: mx.nd.array(v) for k, v in weights.items()},
        {k: mx.nd.array(v) for k, v in stats.items()},
    )
    return tmp_path / "net-symbol.json", {**weights, **stats}


def test_a_checkpoint_without_parameters_loads(tmp_path: Path) -> None:
    """MXNet saves an empty .params for a model without weights and loads it as an empty list."""
    import mxnet as mx

    mx.model.save_checkpoint(
        str(tmp_path / "act"), 0, mx.sym.Activation(mx.sym.var("data"), act_type="relu"), {}, {}
    )
    options = {"mxnet": {"input_shapes": {"data": [None, 4]}}}
    x = np.array([[-1.0, 0.5, -2.0, 3.0]], np.float32)
    with Engine.load(tmp_path / "act-symbol.json", backend="mxnet", backend_options=options) as e:
        np.testing.assert_array_equal(e.predict(x), np.maximum(x, 0))


def numpy_net(x: np.ndarray, p: dict[str, np.ndarray]) -> np.ndarray:
    fc = x @ p["fc_weight"].T + p["fc_bias"]
    scale = p["bn_gamma"] / np.sqrt(p["bn_moving_var"] + 1e-3)
    return (fc - p["bn_moving_mean"]) * scale + p["bn_beta"]


def test_a_native_checkpoint_without_input_shapes_says_what_to_pass(
    native: tuple[Path, dict[str, np.ndarray]],
) -> None:
    symbol, _ = native
    with pytest.raises(ModelLoadError, match="'data', 'softmax_label'.*input_shapes") as info:
        Engine.load(symbol, backend="mxnet")
    # The suggested option is valid Python, to copy as it is.
    suggested = str(info.value).split("backend_options=")[1].split(" for a batch")[0]
    assert eval(suggested) == {"mxnet": {"input_shapes": {"data": [None, 3, 112, 112]}}}  # noqa: S307


def test_a_training_label_input_points_to_the_outputs_option(
    native: tuple[Path, dict[str, np.ndarray]],
) -> None:
    symbol, _ = native
    options = {"mxnet": {"input_shapes": {"data": [None, 8]}}}
    with pytest.raises(ModelLoadError, match=r"'softmax_label' is a training label.*'outputs'"):
        Engine.load(symbol, backend="mxnet", backend_options=options)


def test_input_shapes_that_do_not_fit_are_blamed_not_the_file(
    native: tuple[Path, dict[str, np.ndarray]],
) -> None:
    symbol, _ = native
    options = {"mxnet": {"input_shapes": {"data": [None, 3]}, "outputs": ["bn_output"]}}
    with pytest.raises(
        UnsupportedOptionError, match=r"input_shapes=\{'data': \[None, 3\]\}: "
    ) as info:
        Engine.load(symbol, backend="mxnet", backend_options=options)
    assert "re-export" not in str(info.value)
    assert isinstance(info.value.__cause__, Exception)


def test_a_native_checkpoint_with_options(native: tuple[Path, dict[str, np.ndarray]]) -> None:
    symbol, params = native
    options = {"mxnet": {"input_shapes": {"data": [None, 8]}, "outputs": ["bn_output"]}}
    x = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    with Engine.load(symbol, backend="mxnet", backend_options=options) as engine:
        assert [str(s) for s in engine.inputs] == ["data: float32[?,8]"]
        assert [str(s) for s in engine.outputs] == ["bn_output: float32[?,4]"]
        assert engine.settings["epoch"] == 7
        assert engine.settings["params"] == "net-0007.params"
        got = engine.predict(x)
    np.testing.assert_allclose(got, numpy_net(x, params), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"outputs": ["bn_outptu"]}, "did you mean 'bn_output'"),
        ({"outputs": "bn_output"}, "non-empty list of output names"),
        ({"input_shapes": {"image": [1, 8]}}, "'image', which is not an input"),
        ({"input_shapes": {"data": [0, 8]}}, "list of positive sizes or None"),
    ],
)
def test_bad_options_are_explained(
    native: tuple[Path, dict[str, np.ndarray]], options: dict[str, object], match: str
) -> None:
    with pytest.raises(UnsupportedOptionError, match=match):
        Engine.load(native[0], backend="mxnet", backend_options={"mxnet": options})


# -- bad files ------------------------------------------------------------------------------------


def copy_checkpoint(converted: Converted, directory: Path) -> tuple[Path, Path]:
    symbol = directory / converted.symbol.name
    params = directory / "arcface-tiny-0000.params"
    symbol.write_bytes(converted.symbol.read_bytes())
    params.write_bytes(converted.symbol.with_name(params.name).read_bytes())
    return symbol, params


def test_a_corrupt_symbol_file_is_a_model_load_error(
    arcface_tiny: Converted, tmp_path: Path
) -> None:
    symbol, _ = copy_checkpoint(arcface_tiny, tmp_path)
    symbol.write_text('{"nodes": [{"op": "NoSuchOperator", "name": "x", "inputs": []}]}')
    with pytest.raises(ModelLoadError, match="arcface-tiny-symbol.json") as info:
        Engine.load(symbol, backend="mxnet")
    assert info.value.__cause__ is not None


def test_a_truncated_params_file_is_a_model_load_error(
    arcface_tiny: Converted, tmp_path: Path
) -> None:
    symbol, params = copy_checkpoint(arcface_tiny, tmp_path)
    params.write_bytes(params.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match="arcface-tiny-0000.params") as info:
        Engine.load(symbol, backend="mxnet")
    assert info.value.__cause__ is not None


def test_missing_params_is_model_not_found(arcface_tiny: Converted, tmp_path: Path) -> None:
    symbol, params = copy_checkpoint(arcface_tiny, tmp_path)
    params.unlink()
    with pytest.raises(ModelNotFoundError, match=r"arcface-tiny-NNNN\.params"):
        Engine.load(symbol, backend="mxnet")


def test_run_after_close_is_an_inference_error(arcface_tiny: Converted) -> None:
    session = MXNetBackend().open(arcface_tiny.symbol, SessionOptions())
    session.close()
    with pytest.raises(InferenceError, match="closed"):
        session.run({"input.1": faces(1)})


# -- concurrency ----------------------------------------------------------------------------------


def test_eight_threads_get_their_own_answers(arcface_tiny: Converted) -> None:
    inputs = [faces(1 + i % 2, seed=i) for i in range(8)]  # two batch sizes: two executors
    with Engine.load(arcface_tiny.symbol, backend="mxnet") as engine:
        serial = [engine.run({"input.1": x})["embedding"] for x in inputs]
        results: list[list[np.ndarray]] = [[] for _ in inputs]
        barrier = threading.Barrier(len(inputs))

        def work(i: int) -> None:
            barrier.wait()
            for _ in range(5):
                results[i].append(engine.run({"input.1": inputs[i]})["embedding"])

        workers = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
    for got, want in zip(results, serial, strict=True):
        assert len(got) == 5
        for value in got:
            np.testing.assert_array_equal(value, want)


# -- threads and the retirement warning: per process, so each in a fresh one ---------------------

PROBE_SCRIPT = """
import json, os, sys, warnings
import numpy as np
if sys.argv[3] != "-":
    os.environ["OMP_NUM_THREADS"] = sys.argv[3]
    import mxnet  # imported by the application before unifer
from unifer import Engine
runs = []
for threads in json.loads(sys.argv[2]):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine = Engine.load(sys.argv[1], backend="mxnet", threads=threads)
        engine.run({"input.1": np.zeros((1, 3, 112, 112), np.float32)})
    s = engine.settings
    runs.append({
        "threads": s["threads"], "honoured": s["threads_honoured"], "source": s["threads_source"],
        "warnings": [[w.category.__name__, str(w.message)] for w in caught],
        "tasks": len(os.listdir("/proc/self/task")),
    })
    engine.close()
print(json.dumps({"runs": runs, "omp": os.environ.get("OMP_NUM_THREADS")}))
"""


def fresh_process(symbol: Path, threads: list[int | None], preimport: str = "-") -> dict:
    """Open ``symbol`` once per entry of ``threads`` in a new process, without OMP_NUM_THREADS."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    result = subprocess.run(
        [sys.executable, "-c", PROBE_SCRIPT, str(symbol), json.dumps(threads), preimport],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])  # type: ignore[no-any-return]


def retirement(run: dict) -> list[str]:
    return [m for c, m in run["warnings"] if "Apache MXNet is retired" in m]


def test_threads_apply_before_import_and_later_requests_are_reported(
    arcface_tiny: Converted,
) -> None:
    out = fresh_process(arcface_tiny.symbol, [2, 1, None])
    first, second, third = out["runs"]
    assert out["omp"] == "2"  # set before mxnet was imported
    assert (first["threads"], first["honoured"]) == (2, True)
    assert first["source"] == "OMP_NUM_THREADS=2 when unifer imported mxnet"
    # threads=1 can no longer be applied: reported, and warned about.
    assert (second["threads"], second["honoured"]) == (2, False)
    assert [c for c, m in second["warnings"] if "cannot use threads=1" in m] == ["UniferWarning"]
    assert (third["threads"], third["honoured"], third["warnings"]) == (2, True, [])
    one = fresh_process(arcface_tiny.symbol, [1])["runs"][0]
    assert (one["threads"], one["honoured"]) == (1, True)
    # The OpenMP pool really is larger: libgomp keeps threads-1 workers per parallel region.
    assert first["tasks"] > one["tasks"]


def test_default_threads_follow_mxnets_rule(arcface_tiny: Converted) -> None:
    run = fresh_process(arcface_tiny.symbol, [None])["runs"][0]
    cpus = len(os.sched_getaffinity(0))
    assert run["threads"] == max(1, cpus // 2)  # MXNet's default on x86: half the CPUs
    assert run["honoured"] is True
    assert run["source"].startswith("mxnet's default (half the CPUs on x86)")


def test_mxnet_imported_before_unifer_is_read_not_changed(arcface_tiny: Converted) -> None:
    first, second = fresh_process(arcface_tiny.symbol, [3, 1], preimport="3")["runs"]
    assert (first["threads"], first["honoured"]) == (3, True)
    assert first["source"] == "OMP_NUM_THREADS=3 when your code (before unifer) imported mxnet"
    assert (second["threads"], second["honoured"]) == (3, False)


def test_the_retirement_warning_comes_once_per_process(arcface_tiny: Converted) -> None:
    first, second = fresh_process(arcface_tiny.symbol, [None, None])["runs"]
    (message,) = retirement(first)
    assert "Apache Attic in 2023" in message
    assert "1.9.1" in message
    assert [c for c, m in first["warnings"] if m == message] == ["UniferWarning"]
    assert retirement(second) == []
