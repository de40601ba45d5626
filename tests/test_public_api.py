"""The public namespaces export exactly what they document, sorted."""

from __future__ import annotations

import unifer
import unifer.backend


def public_names(module):
    return sorted(
        n
        for n in vars(module)
        if not n.startswith("_")
        and not getattr(vars(module)[n], "__module__", "").startswith(("typing", "collections"))
    )


def test_all_is_sorted():
    assert unifer.__all__ == sorted(unifer.__all__)
    assert unifer.backend.__all__ == sorted(unifer.backend.__all__)


def test_all_names_exist():
    for module in (unifer, unifer.backend):
        for name in module.__all__:
            assert hasattr(module, name), name


def test_every_error_is_exported():
    from unifer import _errors

    errors = {
        n
        for n, v in vars(_errors).items()
        if isinstance(v, type)
        and issubclass(v, (_errors.UniferError, Warning))
        and v.__module__ == _errors.__name__
    }
    assert errors <= set(unifer.__all__)
