"""The OpenVINO plugin against unifer's generic backend conformance kit."""

from __future__ import annotations

from typing import Any

from unifer.testing import BackendContract
from unifer_openvino import OpenVINOBackend


class TestOpenVINOContract(BackendContract):
    backend_class = OpenVINOBackend
    runtime_modules = ("openvino",)
    # OpenVINO's CPU plugin computes int64 in int32; the plugin refuses int64 feeds beyond the
    # int32 range with InputError rather than wrap them (the kit checks that refusal instead).
    int64_beyond_int32 = False

    def runtime_threads(self, session: Any) -> int | None:
        # The compiled model's own property, as OpenVINO reports it.
        return int(session._compiled.get_property("INFERENCE_NUM_THREADS"))
