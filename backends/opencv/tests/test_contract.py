"""The OpenCV plugin against unifer's generic backend conformance kit."""

from __future__ import annotations

from unifer.testing import BackendContract
from unifer_opencv import OpenCVBackend


class TestOpenCVContract(BackendContract):
    backend_class = OpenCVBackend
    runtime_modules = ("cv2",)
    # The new engine keeps a symbolic batch dimension dynamic (checked on OpenCV 5.0.0).
    dynamic_batch = True
