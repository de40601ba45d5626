"""Validation of the user-facing load options (threads, precision, backend_options).

The values are checked once, here, before any backend sees them, so every plugin receives the same
already-valid :class:`~unifer.backend.SessionOptions` and error wording stays in one place.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Mapping, Sequence
from typing import Final

from ._errors import UnsupportedOptionError
from .backend import PRECISIONS, Precision, warn_user

THREADS_ENV: Final = "UNIFER_NUM_THREADS"


def resolve_threads(threads: int | None) -> int | None:
    """Return the thread count to request: the argument, else ``$UNIFER_NUM_THREADS``, else None."""
    if threads is None:
        env = os.environ.get(THREADS_ENV)
        if not env:
            return None
        where = f"${THREADS_ENV}={env!r}"
        fix = "set it to a positive thread count, or unset it for the runtime's default"
        try:
            count = int(env)
        except ValueError:
            raise UnsupportedOptionError(f"{where} is not an integer; {fix}") from None
        if count < 1:
            raise UnsupportedOptionError(f"{where} is not a positive thread count; {fix}")
        return count
    return _positive(
        threads,
        "threads must be a positive integer, None (the runtime's default) or, with "
        "backend='auto', a sequence of counts to try",
    )


def resolve_thread_choices(threads: int | Sequence[int] | None) -> tuple[int, ...] | None:
    """:func:`resolve_threads` for one count, or each of a sequence (an ``"auto"`` sweep)."""
    if isinstance(threads, Sequence) and not isinstance(threads, str):
        if not threads:
            raise UnsupportedOptionError("threads must not be an empty sequence")
        what = "each thread count must be a positive integer"
        return tuple(dict.fromkeys(_positive(t, what) for t in threads))
    single = resolve_threads(threads)
    return None if single is None else (single,)


def _positive(threads: object, what: str) -> int:
    """``threads`` as an int if it is a positive integer of any kind (numpy's too), else raise."""
    if isinstance(threads, bool) or not isinstance(threads, numbers.Integral) or threads < 1:
        raise UnsupportedOptionError(f"{what}, got {threads!r}")
    return int(threads)


def check_precision(precision: str) -> Precision:
    """Return ``precision`` if it is one of :data:`~unifer.backend.PRECISIONS`."""
    for known in PRECISIONS:
        if precision == known:
            return known
    raise UnsupportedOptionError(
        f"precision must be one of {', '.join(map(repr, PRECISIONS))}, got {precision!r}; "
        "the default 'fp32' keeps outputs faithful to the model"
    )


def split_backend_options(
    backend_options: Mapping[str, Mapping[str, object]] | None, installed: list[str]
) -> dict[str, Mapping[str, object]]:
    """Check that ``backend_options`` is keyed by backend name; warn about names not installed."""
    if backend_options is None:
        return {}
    if not isinstance(backend_options, Mapping):
        raise UnsupportedOptionError(
            "backend_options must be a mapping from backend name to that backend's options, e.g. "
            "{'onnxruntime': {'providers': ['CPUExecutionProvider']}}"
        )
    result: dict[str, Mapping[str, object]] = {}
    for name, options in backend_options.items():
        if not isinstance(options, Mapping):
            layout = (
                f"{{{name!r}: {{'OPTION': value}}}}, e.g. {{{name!r}: {{'device': ...}}}}"
                if name in installed  # a backend's options given without their names
                else f"{{'BACKEND': {{{name!r}: {options!r}}}}}, BACKEND one of "
                f"{', '.join(installed) or 'the installed backends'}"
            )
            raise UnsupportedOptionError(
                f"backend_options[{name!r}] must be a mapping of option names to values, got "
                f"{type(options).__name__}; backend_options is keyed by backend name, then "
                f"option: {layout}"
            )
        if name not in installed:
            warn_user(
                f"backend_options has options for {name!r}, which is not an installed backend "
                f"(installed: {', '.join(installed) or 'none'}); they were ignored"
            )
        result[name] = options
    return result
