"""The OpenVINO plugin against unifer's generic backend conformance kit."""

from __future__ import annotations

from unifer.testing import BackendContract
from unifer_openvino import OpenVINOBackend


class TestOpenVINOContract(BackendContract):
    backend_class = OpenVINOBackend
    runtime_modules = ("openvino",)
