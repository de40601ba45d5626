"""OpenCV DNN backend for unifer: runs ``.onnx`` models with ``cv2.dnn`` on the CPU.

Importing this module does not import ``cv2``: :meth:`OpenCVBackend.probe` and
:meth:`OpenCVBackend.open` import it through ``_session``, the one module that imports it at the
top, so ``import unifer`` and ``unifer backends`` stay cheap.

Backend options (``backend_options={"opencv": {...}}``):

``engine``
    ``"new"`` (default): OpenCV 5's DNN engine (``cv2.dnn.ENGINE_NEW``). ``"classic"``: the
    OpenCV 4 engine (``ENGINE_CLASSIC``), opt-in only: it computes int64 as int32, cannot take
    scalar inputs, and crashes the process on some models it cannot parse. Unlike OpenCV's own
    ``ENGINE_AUTO``, unifer never falls back from one engine to the other.
"""

from __future__ import annotations

import importlib.metadata as metadata
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Final

from unifer.backend import BACKEND_API_VERSION, Availability, SessionOptions

if TYPE_CHECKING:
    from unifer.backend import Session

__all__ = ["OpenCVBackend", "installed_distributions"]

#: Distributions that all install the same ``cv2`` package; with several installed, the last one
#: installed overwrites the others' files.
DISTRIBUTIONS: Final = (
    "opencv-python-headless",
    "opencv-python",
    "opencv-contrib-python-headless",
    "opencv-contrib-python",
)
REINSTALL: Final = 'pip install --force-reinstall "opencv-python-headless>=5"'
UPGRADE: Final = 'pip install -U "opencv-python-headless>=5"'


def installed_distributions() -> list[str]:
    """The OpenCV distributions installed here, as ``"name version"``, in :data:`DISTRIBUTIONS`
    order."""
    found = []
    for dist in DISTRIBUTIONS:
        try:
            found.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            continue
    return found


class OpenCVBackend:
    """OpenCV's DNN module (``cv2.dnn``) on the CPU, fp32 only; see the module docstring."""

    name: ClassVar[str] = "opencv"
    suffixes: ClassVar[tuple[str, ...]] = (".onnx",)
    install: ClassVar[str] = 'pip install "unifer[opencv]"'
    api_version: ClassVar[int] = BACKEND_API_VERSION

    def probe(self) -> Availability:
        """Report cv2's version and whether its build has the DNN module; never raises."""
        try:
            from ._session import runtime_info

            version, has_dnn, has_new_engine = runtime_info()
        except ImportError as exc:
            if isinstance(exc, ModuleNotFoundError) and exc.name == "cv2":
                return Availability(
                    ok=False, reason="OpenCV (cv2) is not installed", install=self.install
                )
            # Installed but broken, e.g. opencv-python (not -headless) needs libGL.so.1.
            dists = ", ".join(installed_distributions()) or "none found"
            return Availability(
                ok=False,
                reason=f"cv2 is installed ({dists}) but failed to import: {exc}",
                install=REINSTALL,
            )
        except Exception as exc:  # the contract: probe never raises, it says why
            return Availability(
                ok=False,
                reason=f"checking OpenCV failed: {type(exc).__name__}: {exc}",
                install=REINSTALL,
            )
        if not has_dnn:
            dists = ", ".join(installed_distributions()) or "a build not installed by pip"
            return Availability(
                ok=False,
                version=version,
                reason=(
                    f"OpenCV {version} ({dists}) was built without the dnn module "
                    "(cv2.dnn.readNetFromONNX is missing)"
                ),
                install=REINSTALL,
            )
        if not has_new_engine:
            return Availability(
                ok=False,
                version=version,
                reason=(
                    f"OpenCV {version} has no new DNN engine (cv2.dnn.ENGINE_NEW, OpenCV 5), which "
                    "this backend runs models with"
                ),
                install=UPGRADE,
            )
        return Availability(ok=True, version=version, devices=("cpu",))

    def open(self, model: Path, options: SessionOptions, /) -> Session:
        """Read ``model`` with cv2.dnn and return a thread-safe session."""
        from ._session import open_session  # imports cv2

        return open_session(model, options)
