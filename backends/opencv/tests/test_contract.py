"""The OpenCV plugin against unifer's generic backend conformance kit."""

from __future__ import annotations

from typing import Any

from unifer.testing import BackendContract
from unifer_opencv import OpenCVBackend


class TestOpenCVContract(BackendContract):
    backend_class = OpenCVBackend
    runtime_modules = ("cv2",)
    # The new engine keeps a symbolic batch dimension dynamic (checked on OpenCV 5.0.0).
    dynamic_batch = True
    # OpenCV DNN computes int64 in int32; the plugin refuses int64 feeds beyond the int32 range
    # with InputError rather than wrap them (the kit checks that refusal instead).
    int64_beyond_int32 = False

    def runtime_threads(self, session: Any) -> int | None:
        import cv2

        return int(cv2.getNumThreads())  # process-wide in OpenCV
