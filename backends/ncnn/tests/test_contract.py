"""The ncnn plugin against unifer's generic backend conformance kit.

ncnn does not read ONNX, so :meth:`model_file` converts each kit model with the plugin's own
ONNX -> ncnn writer (forced: "auto" would hand a model it refuses to pnnx); the ONNX source goes to
a sibling directory, so the model directory holds only the conversion (``.param``, ``.bin`` and the
``.converter.json`` record).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest

pytest.importorskip("ncnn")

from unifer.backend import Backend, SessionOptions
from unifer.testing import BackendContract
from unifer.testing.models import ToyModel
from unifer_ncnn import NcnnBackend, _vulkan

#: Why the kit's two multi_io tests cannot apply: that model has an int64 input and output.
INT64_REASON = (
    "the kit's multi_io model has an int64 input and output ('k', 'k_plus_one'); ncnn computes in "
    "float32 only, so it cannot be converted (the converter refuses it, see test_convert.py). "
    "Specs and multi-output runs are covered on a float model in test_ncnn.py"
)


class TestNcnnContract(BackendContract):
    backend_class: ClassVar[type[Backend]] = NcnnBackend
    runtime_modules = ("ncnn",)
    # Batches run sample by sample, so the batch dimension stays dynamic ("N").
    dynamic_batch = True
    # A float model cannot run at int8: ncnn quantizes only models made with ncnn2int8.
    unsupported_precision = "int8"
    # The plugin's ONNX -> ncnn writer refuses a graph output that is a constant.
    constant_outputs = False

    def model_file(self, model: ToyModel, directory: Path) -> Path:
        source_dir = directory.parent / f"{directory.name}-onnx"
        source_dir.mkdir(exist_ok=True)
        source = model.save(source_dir)
        return NcnnBackend().convert(
            source, directory, SessionOptions(extra={"converter": "unifer"})
        )

    def runtime_threads(self, session: Any) -> int | None:
        return int(session._net.opt.num_threads)  # the ncnn.Net's own options

    @pytest.mark.skip(reason=INT64_REASON)
    def test_specs_are_well_formed(self, backend: Backend, model_dir: Path) -> None: ...

    @pytest.mark.skip(reason=INT64_REASON)
    def test_run_returns_every_output_with_its_dtype(self, model_dir: Path) -> None: ...


VULKAN = _vulkan.enumerate_devices()


@pytest.mark.skipif(
    not VULKAN.devices,
    reason=f"ncnn finds no Vulkan device here ({VULKAN.why_none}); {_vulkan.INSTALL_HINT}",
)
class TestNcnnContractOnVulkan(TestNcnnContract):
    """The whole kit again, every model opened on ncnn's default Vulkan device (test_vulkan.py)."""

    backend_options: ClassVar[Mapping[str, object]] = {"device": "vulkan"}
