"""The conformance kit every unifer backend passes, run against onnxruntime."""

from __future__ import annotations

from typing import Any

from unifer.testing import BackendContract
from unifer_onnxruntime import OnnxRuntimeBackend


class TestOnnxRuntimeContract(BackendContract):
    backend_class = OnnxRuntimeBackend
    runtime_modules = ("onnxruntime",)

    def runtime_threads(self, session: Any) -> int | None:
        # The native InferenceSession's options, as ORT reports them (0: ORT's own default).
        return int(session._session.get_session_options().intra_op_num_threads)
