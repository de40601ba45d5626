"""Writing named arrays as a ``.npz`` archive whatever the names are.

``np.savez`` takes the names as keyword arguments, so an output called ``file`` (or
``allow_pickle``) collides with its own parameters. This writes the same format by hand: a zip of
``<name>.npy`` members, which ``np.load`` reads back.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

import numpy as np


def write_npz(file: BinaryIO | Path | str, arrays: Mapping[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``file`` as ``np.savez`` would (uncompressed, no pickles)."""
    with zipfile.ZipFile(file, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)
