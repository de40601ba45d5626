"""Find the files of one MXNet checkpoint: ``<prefix>-symbol.json`` and ``<prefix>-NNNN.params``.

Pure path handling, no mxnet: a wrong name or a missing weights file is explained before the
runtime is imported, in words that say which file is expected where.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from unifer import ModelFormatError, ModelNotFoundError
from unifer.backend import integer_option

SYMBOL_SUFFIX: Final = "-symbol.json"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The two files of a checkpoint, and the epoch the weights come from."""

    symbol: Path
    params: Path
    epoch: int
    epochs: tuple[int, ...]
    """Every epoch whose ``.params`` sits beside the symbol, ascending."""


def prefix_of(symbol: Path) -> str:
    """``"model"`` for ``model-symbol.json``; raises ModelFormatError for any other name."""
    if not symbol.name.lower().endswith(SYMBOL_SUFFIX) or len(symbol.name) == len(SYMBOL_SUFFIX):
        raise ModelFormatError(
            f"{symbol.name!r} is not named like an MXNet symbol file: mxnet reads checkpoints "
            f"saved as <prefix>{SYMBOL_SUFFIX} with <prefix>-NNNN.params beside it (as "
            "mx.model.save_checkpoint and HybridBlock.export write them); pass the "
            f"{SYMBOL_SUFFIX} file, or rename the pair accordingly"
        )
    return symbol.name[: -len(SYMBOL_SUFFIX)]


def epochs(symbol: Path) -> dict[int, Path]:
    """The ``<prefix>-NNNN.params`` files beside ``symbol``, by epoch."""
    pattern = re.compile(re.escape(prefix_of(symbol)) + r"-(\d{4,})\.params")
    found = {}
    for path in symbol.parent.iterdir():
        match = pattern.fullmatch(path.name)
        if match and path.is_file():
            found[int(match[1])] = path
    return dict(sorted(found.items()))


def locate(symbol: Path, epoch: object = None) -> Checkpoint:
    """The checkpoint of ``symbol``: the params of ``epoch``, or of the highest epoch present.

    Raises:
        ModelFormatError: ``symbol`` is not named ``<prefix>-symbol.json``.
        ModelNotFoundError: no (or not the requested) ``.params`` file is beside it.
        UnsupportedOptionError: ``epoch`` is not an integer >= 0.
    """
    prefix = prefix_of(symbol)
    wanted = (
        None
        if epoch is None
        else integer_option("epoch", epoch, f"the NNNN of {prefix}-NNNN.params", minimum=0)
    )
    available = epochs(symbol)
    if not available:
        raise ModelNotFoundError(
            f"MXNet checkpoint {str(symbol)!r} needs its weights, {prefix}-NNNN.params (e.g. "
            f"{prefix}-0000.params), beside it in {str(symbol.parent)!r}, and there is none; copy "
            "the .params file saved with the symbol next to it"
        )
    chosen = max(available) if wanted is None else wanted
    if chosen not in available:
        have = ", ".join(f"{e:04d}" for e in available)
        raise ModelNotFoundError(
            f"backend option epoch={wanted} asks for {prefix}-{wanted:04d}.params, which is not in "
            f"{str(symbol.parent)!r}; epochs present: {have}"
        )
    return Checkpoint(symbol, available[chosen], chosen, tuple(available))
