"""A fake backend for testing the core without any inference runtime.

Its "model" is a JSON file naming the input and output specs; running it doubles the first input.
It is evidence that the *core* works (registry, options, feeds, errors, conversion, CLI wiring);
that a real runtime works is shown by each plugin's own tests, never by this.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import numpy as np

from unifer.backend import (
    BACKEND_API_VERSION,
    Availability,
    SessionOptions,
    TensorSpec,
    reject_precision,
    translate_errors,
    warn_unknown_options,
)

__all__ = ["FakeBackend", "FakeSession"]


class FakeSession:
    """Doubles its only input; the model file is JSON naming the input and output specs."""

    def __init__(self, model: Path, options: SessionOptions) -> None:
        with translate_errors("fake", ValueError, KeyError, model=model):
            spec = json.loads(model.read_text())
            self.inputs = [
                TensorSpec(i["name"], tuple(i["shape"]), np.dtype(i["dtype"]))
                for i in spec["inputs"]
            ]
            self.outputs = [
                TensorSpec(o["name"], tuple(o["shape"]), np.dtype(o["dtype"]))
                for o in spec["outputs"]
            ]
        self.options = options
        self.settings = {
            "threads": options.threads,
            "precision": options.precision,
            "device": "cpu",
        }
        self.closed = 0

    def run(self, feeds: Mapping[str, np.ndarray], /) -> dict[str, np.ndarray]:
        first = next(iter(feeds.values()))
        return {o.name: (first * 2).astype(o.dtype) for o in self.outputs}

    def close(self) -> None:
        self.closed += 1


class FakeBackend:
    name: ClassVar[str] = "fake"
    suffixes: ClassVar[tuple[str, ...]] = (".fake",)
    install: ClassVar[str] = "pip install unifer-fake"
    api_version: ClassVar[int] = BACKEND_API_VERSION
    available: ClassVar[bool] = True
    opened: ClassVar[list[FakeSession]] = []

    def probe(self) -> Availability:
        if not self.available:
            return Availability(
                ok=False, reason="fakeruntime is not installed", install=self.install
            )
        return Availability(ok=True, version="1.0")

    def open(self, model: Path, options: SessionOptions, /) -> FakeSession:
        reject_precision("fake", options.precision, ("fp32",), "it only does fp32")
        warn_unknown_options("fake", options.extra, ("mode",))
        session = FakeSession(model, options)
        self.opened.append(session)
        return session
