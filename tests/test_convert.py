"""Conversion core: cache, atomic publication, verification against the source model (fakes)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from unifer import (
    ConversionMismatchError,
    Engine,
    ModelFormatError,
    _convert,
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


def test_a_changed_source_is_converted_again(converter, fake_model, make_fake_model):
    Engine.load(fake_model, backend="fake2")
    make_fake_model(fake_model, inputs=[{"name": "x", "shape": ["N", 4], "dtype": "float32"}])
    assert Engine.load(fake_model, backend="fake2").inputs[0].shape == ("N", 4)
    assert converter.conversions == 2


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


def test_unverifiable_conversion_is_recorded_as_such(converter, fake_model):
    unregister_backend("fake")
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
