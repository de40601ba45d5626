"""A pytest plugin (entry point ``pytest11``) that only lets pytest rewrite the asserts of the
conformance kit, :mod:`unifer.testing`.

pytest rewrites asserts in test files alone; the kit's checks live in an installed module, where a
failing ``assert a == b`` would otherwise show no values. Registering must happen before that
module is imported, hence a plugin outside ``unifer.testing`` (importing a submodule of it would
import the kit first).
"""

from __future__ import annotations

import pytest

pytest.register_assert_rewrite("unifer.testing")
