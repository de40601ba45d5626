"""Conversion core: cache, atomic publication, verification against the source model (fakes)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import threading
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from unifer import (
    CacheError,
    ConversionMismatchError,
    Engine,
    InferenceError,
    ModelFormatError,
    ModelLoadError,
    ModelNotFoundError,
    NoBackendAvailableError,
    PluginError,
    UniferWarning,
    UnsupportedOptionError,
    _convert,
    _digest,
    _parity,
    register_backend,
    unregister_backend,
)
from unifer.backend import BACKEND_API_VERSION, Availability, SessionOptions
from unifer.testing.fake import FakeSession


class FakeConverter:
    """Reads '.fake2' files (same JSON as '.fake', plus a gain) and converts '.fake' ones."""

    name: ClassVar[str] = "fake2"
    suffixes: ClassVar[tuple[str, ...]] = (".fake2",)
    converts_from: ClassVar[tuple[str, ...]] = (".fake",)
    install: ClassVar[str] = "pip install unifer-fake2"
    api_version: ClassVar[int] = BACKEND_API_VERSION
    gain: ClassVar[float] = 1.0
    conversions: ClassVar[int] = 0

    def probe(self) -> Availability:
        return Availability(ok=True, version="2.0")

    def converter_version(self, options: SessionOptions, /) -> str:
        return "fake2-writer 1"

    def convert(self, source: Path, out_dir: Path, options: SessionOptions, /) -> Path:
        type(self).conversions += 1
        spec = json.loads(source.read_text())
        spec["gain"] = self.gain
        out = out_dir / (source.stem + ".fake2")
        out.write_text(json.dumps(spec))
        return out

    def open(self, model: Path, options: SessionOptions, /):
        session = FakeSession(model, options)
        gain = json.loads(model.read_text())["gain"]
        plain_run = session.run
        session.run = lambda feeds: {k: v * gain for k, v in plain_run(feeds).items()}
        return session


@pytest.fixture
def converter(fake_backend):
    FakeConverter.gain = 1.0
    FakeConverter.conversions = 0
    register_backend(FakeConverter)
    yield FakeConverter
    unregister_backend("fake2")


def test_naming_a_converting_backend_converts_verifies_and_caches(converter, fake_model):
    engine = Engine.load(fake_model, backend="fake2")
    record = engine.settings["conversion"]
    assert record["target"] == "fake2" and record["converter"] == "fake2-writer 1"
    assert record["check"]["reference"] == "fake"
    assert record["check"]["passed"] is True and record["check"]["max_abs_diff"] == 0
    converted = Path(record["path"])
    assert converted.suffix == ".fake2" and fake_model.parent not in converted.parents
    np.testing.assert_array_equal(engine.run({"x": np.ones((1, 3), np.float32)})["y"], 2.0)
    Engine.load(fake_model, backend="fake2")
    assert converter.conversions == 1  # the second load used the cache
    assert sorted(p.name for p in fake_model.parent.iterdir()) == ["model.fake"]


def test_a_copy_under_another_name_reuses_the_conversion(converter, fake_model, tmp_path):
    first = _convert.convert(converter(), fake_model, SessionOptions())
    copy = tmp_path / "elsewhere" / "renamed.fake"
    copy.parent.mkdir()
    shutil.copyfile(fake_model, copy)
    second = _convert.convert(converter(), copy, SessionOptions())
    assert converter.conversions == 1  # keyed by content, target and converter, not the name
    # Under this file's own name: its source, and files named after it (linked, not copied).
    assert second.source == str(copy) and second.path.name == "renamed.fake2"
    assert second.path.stat().st_ino == first.path.stat().st_ino
    assert second.check == first.check
    assert Engine.load(copy, backend="fake2").settings["conversion"]["source"] == str(copy)


def test_a_changed_source_is_converted_again(converter, fake_model, make_fake_model):
    Engine.load(fake_model, backend="fake2")
    make_fake_model(
        fake_model,
        inputs=[{"name": "x", "shape": ["N", 4], "dtype": "float32"}],
        outputs=[{"name": "y", "shape": ["N", 4], "dtype": "float32"}],
    )
    assert Engine.load(fake_model, backend="fake2").inputs[0].shape == ("N", 4)
    assert converter.conversions == 2


def test_a_changed_source_keeps_one_entry_and_entries_are_not_private(
    converter, fake_model, make_fake_model
):
    first = _convert.convert(converter(), fake_model, SessionOptions())
    four = [{"name": "x", "shape": ["N", 4], "dtype": "float32"}]
    make_fake_model(fake_model, inputs=four, outputs=[{**four[0], "name": "y"}])
    second = _convert.convert(converter(), fake_model, SessionOptions())
    entries = [p for p in second.path.parent.parent.iterdir() if not p.name.startswith(".")]
    assert entries == [second.path.parent] and first.path.parent != second.path.parent
    # Not mkdtemp's 0700: an ordinary directory, which the users of a shared cache can read.
    mask = os.umask(0)
    os.umask(mask)
    assert second.path.parent.stat().st_mode & 0o777 == 0o777 & ~mask


def test_a_source_rewritten_while_converting_is_converted_again(converter, fake_model):
    """The cache key names the source as it was before converting: a rewrite meanwhile must not
    file the new content's conversion (or its failed check) under the old content's key."""

    class Rewriting(FakeConverter):
        def convert(self, source, out_dir, options, /):
            out = super().convert(source, out_dir, options)
            if type(self).conversions == 1:  # a deployment replaces the model meanwhile
                spec = json.loads(source.read_text())
                spec["inputs"][0]["shape"] = ["N", 5]
                spec["outputs"][0]["shape"] = ["N", 5]
                source.write_text(json.dumps(spec))
            return out

    register_backend(Rewriting)
    try:
        conversion = _convert.convert(Rewriting(), fake_model, SessionOptions())
    finally:
        register_backend(FakeConverter)
    assert Rewriting.conversions == 2
    assert json.loads(conversion.path.read_text())["inputs"][0]["shape"] == ["N", 5]
    assert conversion.source_sha256 == _digest.content_digest(fake_model)


def test_a_truncated_or_damaged_cached_conversion_is_rebuilt(converter, fake_model):
    first = _convert.convert(converter(), fake_model, SessionOptions())
    first.path.write_text(first.path.read_text()[:10])  # cut short: the size says so
    assert _convert.cached(converter(), fake_model, SessionOptions()) is None
    Engine.load(fake_model, backend="fake2")
    assert converter.conversions == 2
    # Same size, but the runtime cannot load it any more: dropped and converted again at load.
    text = first.path.read_text()
    first.path.write_text("#" * len(text))
    assert Engine.load(fake_model, backend="fake2").inputs[0].name == "x"
    assert converter.conversions == 3


def test_an_unusable_cache_directory_fails_only_what_must_write_there(
    converter, fake_model, tmp_path, monkeypatch
):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("UNIFER_CACHE_DIR", str(blocker / "cache"))  # under a file: uncreatable
    with pytest.warns(UniferWarning, match="cache directory cannot be used"):
        engine = Engine.load(fake_model, backend="fake")  # caches nothing: opens anyway
    assert engine.run({"x": np.ones((1, 3), np.float32)})["y"].shape == (1, 3)
    with pytest.raises(CacheError, match="UNIFER_CACHE_DIR") as info:
        Engine.load(fake_model, backend="fake2")  # a conversion must be written somewhere
    assert isinstance(info.value, OSError) and isinstance(info.value.__cause__, OSError)
    # Said once per process (every backend has a directory there), and measured, not stored.
    assert Engine.load(fake_model, budget_s=0.1).backend == "fake"


def test_a_conversion_that_cannot_be_written_is_a_cache_error(converter, fake_model):
    class FullDisk(FakeConverter):
        def convert(self, source, out_dir, options, /):
            raise OSError(28, "No space left on device")

    register_backend(FullDisk)
    try:
        with pytest.raises(CacheError, match="No space left on device"):
            Engine.load(fake_model, backend="fake2")
    finally:
        register_backend(FakeConverter)


def test_a_conversion_that_changes_outputs_is_refused(converter, fake_model):
    converter.gain = 1.01
    with pytest.raises(ConversionMismatchError, match="--accept-mismatch") as info:
        Engine.load(fake_model, backend="fake2")
    assert "against fake" in str(info.value)
    accepted = _convert.convert(converter(), fake_model, SessionOptions(), accept_mismatch=True)
    assert accepted.check.passed is False
    assert accepted.check.max_relative_diff == pytest.approx(0.01, rel=1e-3)


def test_a_corrupt_manifest_is_rebuilt(converter, fake_model):
    first = _convert.convert(converter(), fake_model, SessionOptions())
    (first.path.parent / _convert.MANIFEST).write_text("{broken")
    second = _convert.convert(converter(), fake_model, SessionOptions())
    assert second.path == first.path and second.check.passed
    assert converter.conversions == 2


def test_concurrent_conversions_publish_one_result(converter, fake_model):
    results = []
    threads = [
        threading.Thread(
            target=lambda: results.append(
                _convert.convert(converter(), fake_model, SessionOptions()).path
            )
        )
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and len(set(results)) == 1 and results[0].is_file()
    leftovers = [p for p in results[0].parent.parent.iterdir() if p.name.startswith(".tmp-")]
    assert leftovers == []


def test_unverifiable_conversion_is_recorded_and_said(converter, fake_model):
    unregister_backend("fake")
    with pytest.warns(UniferWarning, match="model.fake was converted to fake2 without checking"):
        record = _convert.convert(converter(), fake_model, SessionOptions())
    assert record.check.passed is None
    assert "no other installed backend" in (record.check.note or "")


def test_a_backend_that_cannot_convert_still_names_the_readers(fake_backend, tmp_path):
    model = tmp_path / "m.fake2"
    model.write_text("{}")
    with pytest.raises(ModelFormatError, match="reads .fake files"):
        Engine.load(model, backend="fake")


def test_cli_convert(converter, fake_model, tmp_path):
    from click.testing import CliRunner

    from unifer.cli import main

    out = tmp_path / "exported"
    result = CliRunner().invoke(
        main, ["convert", str(fake_model), "--to", "fake2", "--out", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["check"]["passed"] is True
    assert [Path(f).name for f in data["files"]] == ["model.fake2"]
    assert (out / "model.fake2").is_file()
    refused = CliRunner().invoke(main, ["convert", str(fake_model), "--to", "fake"])
    assert refused.exit_code == 1 and "reads .fake files directly" in refused.output
    info = CliRunner().invoke(main, ["info", str(fake_model), "--backend", "fake"])
    assert "backends that read .fake: fake; that convert it first: fake2" in info.output


def test_cli_convert_out_replaces_other_files_only_with_force(converter, fake_model, tmp_path):
    from click.testing import CliRunner

    from unifer.cli import main

    out = tmp_path / "exported"
    out.mkdir()
    (out / "model.fake2").write_text("someone's own file")
    args = ["convert", str(fake_model), "--to", "fake2", "--out", str(out)]
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code == 2 and "already exist" in refused.output
    assert "--force" in refused.output
    assert (out / "model.fake2").read_text() == "someone's own file"
    assert CliRunner().invoke(main, [*args, "--force"]).exit_code == 0
    assert (out / "model.fake2").read_text() != "someone's own file"


def test_auto_considers_conversions_only_when_cached_or_allowed(converter, fake_model):
    def candidates(engine):
        return {t.candidate.backend for t in engine.selection.trials}

    assert candidates(Engine.load(fake_model, budget_s=0.05)) == {"fake"}
    allowed = Engine.load(fake_model, budget_s=0.05, allow_conversion=True)
    assert candidates(allowed) == {"fake", "fake2"}
    if allowed.backend == "fake2":
        assert allowed.settings["conversion"]["check"]["passed"] is True
    # The conversion is cached now, so it competes without being allowed again.
    assert candidates(Engine.load(fake_model, threads=1, budget_s=0.05)) == {"fake", "fake2"}


def test_when_nothing_opens_auto_names_the_converters_it_left_out(
    converter, fake_backend, fake_model, monkeypatch
):
    """The reader cannot run (here: unavailable) and only a converting backend could: the error
    says how to let it in."""
    monkeypatch.setattr(fake_backend, "available", False)
    with pytest.raises(NoBackendAvailableError, match="fake2 could convert the model") as info:
        Engine.load(fake_model, budget_s=0.05)
    assert "allow_conversion=True" in str(info.value)
    with pytest.warns(UniferWarning, match="without checking"):  # its reference cannot run
        engine = Engine.load(fake_model, budget_s=0.05, allow_conversion=True)
    assert engine.backend == "fake2"


# --- the key covers every file of the model (ONNX external data, IR/ncnn .bin, MXNet .params) ---


class OnnxBaker(FakeConverter):
    """Converts '.onnx' files by baking in their external weights, as real converters do."""

    name: ClassVar[str] = "baker"
    suffixes: ClassVar[tuple[str, ...]] = (".baked",)
    converts_from: ClassVar[tuple[str, ...]] = (".onnx",)

    def convert(self, source: Path, out_dir: Path, options: SessionOptions, /) -> Path:
        type(self).conversions += 1
        out = out_dir / (source.stem + ".baked")
        out.write_bytes((source.parent / "mlp.weights").read_bytes())
        return out


def save_with_external_weights(directory: Path, seed: int) -> Path:
    """The toy MLP as ``mlp.onnx`` with every weight in ``mlp.weights``."""
    onnx = pytest.importorskip("onnx")
    from unifer.testing.models import mlp

    (directory / "mlp.weights").unlink(missing_ok=True)  # onnx refuses to overwrite it
    path = directory / "mlp.onnx"
    onnx.save_model(
        mlp(seed=seed).proto,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="mlp.weights",
        size_threshold=0,
    )
    return path


def test_changed_external_weights_are_converted_again(tmp_path, monkeypatch):
    monkeypatch.setattr(_convert, "_reference_backend", lambda suffix, exclude: None)
    OnnxBaker.conversions = 0
    register_backend(OnnxBaker)
    try:
        source = save_with_external_weights(tmp_path, seed=0)
        graph_before = source.read_bytes()
        with pytest.warns(UniferWarning, match='pip install "unifer\\[onnxruntime\\]" to check'):
            first = _convert.convert(OnnxBaker(), source, SessionOptions())
        save_with_external_weights(tmp_path, seed=1)
        assert source.read_bytes() == graph_before  # only the weights file changed
        with pytest.warns(UniferWarning, match="without checking"):
            second = _convert.convert(OnnxBaker(), source, SessionOptions())
    finally:
        unregister_backend("baker")
    assert OnnxBaker.conversions == 2 and second.path != first.path
    assert second.path.read_bytes() == (tmp_path / "mlp.weights").read_bytes()
    assert second.source_sha256 == first.source_sha256  # the .onnx file's own sha256


def test_a_missing_external_weights_file_is_model_not_found_naming_it(tmp_path):
    pytest.importorskip("onnx")
    source = save_with_external_weights(tmp_path, seed=0)
    (tmp_path / "mlp.weights").unlink()
    with pytest.raises(ModelNotFoundError, match=r"keeps its weights in .*mlp\.weights.*beside"):
        Engine.load(source, backend="auto")


def test_model_files_finds_external_data_of_constants_and_subgraphs(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    def constant(name: str) -> onnx.NodeProto:
        value = numpy_helper.from_array(np.ones(16, np.float32), name)
        return helper.make_node("Constant", [], ["c"], value=value)

    def branch(name: str) -> onnx.GraphProto:
        out = helper.make_tensor_value_info("c", TensorProto.FLOAT, [16])
        return helper.make_graph([constant(name)], name, [], [out])

    nodes = [
        helper.make_node(
            "If", ["flag"], ["c"], then_branch=branch("then"), else_branch=branch("else")
        ),
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Add", ["h", "c"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16]),
            helper.make_tensor_value_info("flag", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])],
        [numpy_helper.from_array(np.ones((16, 16), np.float32), "w")],
    )
    path = tmp_path / "m.onnx"
    # One file per tensor, Constant values included: each file named after its tensor.
    onnx.save_model(
        helper.make_model(graph),
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=False,
        size_threshold=0,
        convert_attribute=True,
    )
    files = _digest.model_files(path)
    assert files[0] == path and sorted(f.name for f in files[1:]) == ["else", "then", "w"]


@pytest.mark.parametrize(
    ("name", "siblings", "expected"),
    [
        ("model.xml", ["model.bin", "other.bin"], ["model.bin"]),
        ("model.param", ["model.bin", "model.param.bin"], ["model.bin"]),
        (
            "net-symbol.json",
            ["net-0000.params", "net-0012.params", "net-x.params", "other-0000.params"],
            ["net-0000.params", "net-0012.params"],
        ),
        ("model.tflite", ["model.bin"], []),
    ],
)
def test_model_files_of_multi_file_formats(tmp_path, name, siblings, expected):
    for file in [name, *siblings]:
        (tmp_path / file).write_text(file)
    assert [f.name for f in _digest.model_files(tmp_path / name)] == [name, *expected]
    before = _digest.model_digest(tmp_path / name)
    if expected:
        (tmp_path / expected[-1]).write_text("new weights")
        assert _digest.model_digest(tmp_path / name) != before


def test_model_files_needs_no_onnx_package_and_survives_broken_files(tmp_path, monkeypatch):
    model = save_with_external_weights(tmp_path, seed=0)
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` raises from here on
    assert [f.name for f in _digest.model_files(model)] == ["mlp.onnx", "mlp.weights"]
    for content in (b"", b"\xff" * 64, model.read_bytes()[:-7]):
        broken = tmp_path / "broken.onnx"
        broken.write_bytes(content)
        assert _digest.model_files(broken) == [broken]


def test_external_data_locations_of_large_models_are_remembered(tmp_path, monkeypatch):
    model = save_with_external_weights(tmp_path, seed=0)
    with model.open("ab") as f:  # pad past the memo's threshold; protobuf skips unknown fields
        f.write(b"\xfa\x3f" + bytes([0x80, 0x80, 0x40]) + b"\0" * (1 << 20))
    reads = []
    real = _digest._read_locations
    monkeypatch.setattr(_digest, "_read_locations", lambda p: reads.append(p) or real(p))
    assert _digest.model_files(model)[1].name == "mlp.weights"
    monkeypatch.setattr(_digest, "_in_process", {})  # a new process
    assert _digest.model_files(model)[1].name == "mlp.weights"
    assert len(reads) == 1


# --- publishing never deletes a conversion another process published ---


def test_clearing_a_leftover_never_deletes_a_conversion_published_meanwhile(
    converter, fake_model, monkeypatch
):
    """Process A finds an unreadable leftover where it wants to publish; process B replaces the
    leftover with its own conversion right after A checked it, before A clears it. A must use
    B's conversion, not delete it."""
    first = _convert.convert(converter(), fake_model, SessionOptions())
    entry = first.path.parent
    (entry / _convert.MANIFEST).write_text("{broken")  # the leftover
    real_read = _convert._read
    reads_by_a = []

    def read_then_b_publishes(directory: Path):
        found = real_read(directory)
        if directory == entry:
            reads_by_a.append(found)
        if len(reads_by_a) == 2 and directory == entry:  # A's check before it clears the entry
            monkeypatch.setattr(_convert, "_read", real_read)  # B runs unhooked
            shutil.rmtree(entry)
            published_by_b = _convert.convert(converter(), fake_model, SessionOptions())
            (entry / "b.txt").write_text("B's entry")  # tells B's entry from any other
            monkeypatch.setattr(_convert, "_read", read_then_b_publishes)
            assert published_by_b.path.parent == entry
        return found  # what A saw

    monkeypatch.setattr(_convert, "_read", read_then_b_publishes)
    a = _convert.convert(converter(), fake_model, SessionOptions())
    assert reads_by_a[:2] == [None, None]
    assert (entry / "b.txt").is_file() and a.path == first.path and a.path.is_file()
    assert [p.name for p in entry.parent.iterdir() if p.name.startswith(".")] == []


def test_an_unreadable_leftover_is_replaced(converter, fake_model):
    first = _convert.convert(converter(), fake_model, SessionOptions())
    (first.path.parent / _convert.MANIFEST).unlink()
    (first.path.parent / "junk").write_text("left by an older unifer")
    second = _convert.convert(converter(), fake_model, SessionOptions())
    assert second.path == first.path and not (first.path.parent / "junk").exists()
    assert [p.name for p in first.path.parent.parent.iterdir()] == [first.path.parent.name]


# --- a source no backend can load is reported as such, not as the reference's failure ---


def test_a_source_the_reference_cannot_load_is_reported_unreadable(converter, tmp_path):
    class Lenient(FakeConverter):
        """Produces a model from anything, as real converters do from an empty ONNX file."""

        def convert(self, source: Path, out_dir: Path, options: SessionOptions, /) -> Path:
            out = out_dir / (source.stem + ".fake2")
            out.write_text(json.dumps({"inputs": [], "outputs": [], "gain": 1.0}))
            return out

    register_backend(Lenient)
    empty = tmp_path / "empty.fake"
    empty.write_text("")
    with pytest.raises(ModelLoadError, match="source model .*empty.fake is unreadable") as info:
        Engine.load(empty, backend="fake2")
    assert "fake, which checks the conversion to fake2" in info.value.message
    assert isinstance(info.value.__cause__, json.JSONDecodeError)  # the native cause
    assert list((tmp_path.parent).glob("**/converted/fake2/empty-*")) == []


def test_converting_an_empty_onnx_file_names_the_file(tmp_path):
    pytest.importorskip("unifer_litert")
    from unifer._engine import readers

    if not [n for n in readers(".onnx") if n != "litert"]:
        pytest.skip("no other backend reads .onnx files to check the conversion with")
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ModelLoadError, match=r"source model .*empty\.onnx is unreadable"):
        Engine.load(empty, backend="litert")


# --- what the check compares: the caller's options, shapes, several batch sizes, zero outputs ---


def test_the_check_opens_the_converted_model_with_the_callers_options(fake_backend, fake_model):
    """An ncnn model whose inputs declare no size opens only with backend_options; so must the
    converted model in the check."""

    class Needy(FakeConverter):
        def open(self, model: Path, options: SessionOptions, /):
            if "input_shapes" not in options.extra:
                raise UnsupportedOptionError("pass input_shapes")
            return super().open(model, options)

    extra = {"input_shapes": {"x": [3]}}
    record = _convert.convert(Needy(), fake_model, SessionOptions(extra=extra))
    assert record.check.passed is True


def test_an_output_that_contradicts_its_own_declaration_fails_the_check(fake_backend, fake_model):
    """The converted model declares [1, N, 3] (as its source does) but returns [N, 3]: wrong even
    where the reference loses the leading dimension the same way."""

    class RankDropping(FakeConverter):
        def convert(self, source: Path, out_dir: Path, options: SessionOptions, /) -> Path:
            out = super().convert(source, out_dir, options)
            spec = json.loads(out.read_text())
            spec["outputs"][0]["shape"] = [1, "N", 3]
            out.write_text(json.dumps(spec))
            return out

    with pytest.raises(
        ConversionMismatchError, match=r"shape \(1, 3\), but its model declares"
    ) as info:
        _convert.convert(RankDropping(), fake_model, SessionOptions())
    # Nothing could be compared: said so, without the infinite 'differences' that stand for it.
    assert "gives outputs that cannot be compared with fake's" in str(info.value)
    assert "inf" not in str(info.value) and "cosine" not in str(info.value)


class SampleMixing(FakeConverter):
    """Gives every sample the first one's result, as an operator over the batch axis converted
    for batch 1 does: right at batch 1 only."""

    def open(self, model: Path, options: SessionOptions, /):
        session = super().open(model, options)
        run = session.run
        session.run = lambda feeds: {
            k: np.broadcast_to(v[:1], v.shape).copy() for k, v in run(feeds).items()
        }
        return session


def test_a_dynamic_batch_is_also_checked_at_a_batch_of_several(fake_backend, fake_model):
    with pytest.raises(ConversionMismatchError, match=r"at batch 3 \(batch 1 matches\)"):
        _convert.convert(SampleMixing(), fake_model, SessionOptions())


def test_a_fixed_batch_or_one_the_source_cannot_vary_is_checked_at_batch_1(
    fake_backend, make_fake_model, tmp_path, monkeypatch
):
    fixed = make_fake_model(
        tmp_path / "fixed.fake",
        inputs=[{"name": "x", "shape": [1, 3], "dtype": "float32"}],
        outputs=[{"name": "y", "shape": [1, 3], "dtype": "float32"}],
    )
    fixed_check = _convert.convert(SampleMixing(), fixed, SessionOptions()).check
    assert fixed_check.passed is True and fixed_check.note is None

    real_run = FakeSession.run

    def batch_1_only(self, feeds):
        if next(iter(feeds.values())).shape[0] != 1:
            raise InferenceError("the graph reshapes to batch 1")
        return real_run(self, feeds)

    monkeypatch.setattr(FakeSession, "run", batch_1_only)
    declared = make_fake_model(tmp_path / "declared.fake")  # ["N", 3], but runs at 1 only
    check = _convert.convert(SampleMixing(), declared, SessionOptions()).check
    assert check.passed is True
    assert check.note == "compared at batch 1 only: the source itself cannot run a batch of 3"


def test_dynamic_sizes_are_checked_at_32_or_else_1(make_fake_model, tmp_path):
    """A 3x3 convolution on an image of dynamic H and W cannot run at 1x1 (onnxruntime's
    InferenceError stopped the load); at 1 only its centre tap was checked anyway."""
    model = make_fake_model(
        tmp_path / "seq.fake",
        inputs=[{"name": "x", "shape": ["N", "S"], "dtype": "float32"}],
        outputs=[{"name": "y", "shape": ["N", "S"], "dtype": "float32"}],
    )

    class OnlyUpTo(FakeSession):
        limit = 1000

        def run(self, feeds):
            if feeds["x"].shape[1] > self.limit:
                raise InferenceError("this source takes S <= limit")
            return super().run(feeds)

    session = OnlyUpTo(model, SessionOptions())
    runs = _convert._reference_runs(session, model, "fake2")
    assert [feeds["x"].shape for _, feeds, _ in runs] == [(1, 32), (3, 32)]
    session.limit = 1  # the source runs at 1 only: that is what is compared
    runs = _convert._reference_runs(session, model, "fake2")
    assert [feeds["x"].shape for _, feeds, _ in runs] == [(1, 1), (3, 1)]
    session.limit = 0  # nothing runs: said as the check's problem, not a runtime's
    with pytest.raises(ModelLoadError, match="seq.fake to fake2 cannot be checked") as info:
        _convert._reference_runs(session, model, "fake2")
    assert "dynamic sizes at 32, then 1" in str(info.value)  # both were tried


def test_an_all_zero_reference_is_compared_not_crashed_on(fake_backend, fake_model, monkeypatch):
    """Every reference value 0: the relative difference is divided by float32's tiny; the record
    must still be JSON (the manifest)."""

    def zeros(inputs, *, batch=1, seed=0, fill=1):
        return {s.name: np.zeros((batch, *s.shape[1:]), s.dtype) for s in inputs}

    monkeypatch.setattr(_convert, "seeded_feeds", zeros)

    class Offset(FakeConverter):
        def converter_version(self, options: SessionOptions, /) -> str:
            return "fake2-offset 1"

        def open(self, model: Path, options: SessionOptions, /):
            session = super().open(model, options)
            run = session.run
            session.run = lambda feeds: {k: v + 1 for k, v in run(feeds).items()}
            return session

    assert _convert.convert(FakeConverter(), fake_model, SessionOptions()).check.passed is True
    with pytest.raises(ConversionMismatchError, match="max abs diff 1 "):
        _convert.convert(Offset(), fake_model, SessionOptions())


def test_parity_numbers_are_python_floats():
    parity = _parity.worst(
        [
            _parity.compare({"y": np.zeros((2, 3), np.float32)}, {"y": np.ones((2, 3))}),
            _parity.compare({"y": np.ones((1, 3), np.float32)}, {"y": np.ones((1, 3))}),
        ]
    )
    numbers = [parity.max_abs_diff, parity.max_relative_diff, parity.min_cosine]
    assert all(type(n) is float for n in [*numbers, parity.reference_max_abs])
    assert parity.samples == 3 and parity.min_cosine == 0.0 and parity.max_abs_diff == 1.0
    json.dumps(dataclasses.asdict(parity))


def test_a_cache_that_refuses_the_work_directory_is_a_cache_error(
    converter, fake_model, monkeypatch
):
    def full(root):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_convert, "_work_dir", full)
    with pytest.raises(CacheError, match="No space left"):
        Engine.load(fake_model, backend="fake2")


def test_a_converter_defect_is_a_plugin_error_and_auto_passes_over_it(fake_backend, fake_model):
    class Defective(FakeConverter):
        def convert(self, source, out_dir, options, /):
            raise KeyError("a bug in the converter")

    register_backend(Defective)
    try:
        with pytest.raises(PluginError, match="raised KeyError converting") as info:
            Engine.load(fake_model, backend="fake2")
        assert isinstance(info.value.__cause__, KeyError)
        engine = Engine.load(fake_model, threads=1, budget_s=0.1, allow_conversion=True)
    finally:
        unregister_backend("fake2")
    assert engine.backend == "fake"
    reasons = {t.candidate.backend: t.reason or "" for t in engine.selection.trials}
    assert "defect in the plugin" in reasons["fake2"]


def test_models_of_one_name_in_two_directories_keep_their_own_entries(
    converter, make_fake_model, tmp_path, monkeypatch
):
    """Entries are pruned by source path: 'model.fake' names a file per directory."""
    entries = []
    for name, width in (("a", 3), ("b", 4)):
        (tmp_path / name).mkdir()
        spec = [{"name": "x", "shape": ["N", width], "dtype": "float32"}]
        make_fake_model(
            tmp_path / name / "model.fake", inputs=spec, outputs=[{**spec[0], "name": "y"}]
        )
        monkeypatch.chdir(tmp_path / name)
        entries.append(_convert.convert(converter(), Path("model.fake"), SessionOptions()))
    assert all(entry.path.is_file() for entry in entries)
    assert entries[0].source == str(tmp_path / "a" / "model.fake")
