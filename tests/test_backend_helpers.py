"""The helpers ``unifer.backend`` gives plugins: options, process-wide settings, feeds, warnings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from unifer import InputError, UniferWarning, UnsupportedOptionError, _registry
from unifer.backend import ProcessWideSetting, integer_option, refuse_int64_beyond_int32


@pytest.mark.parametrize("value", [3, np.int64(3), np.uint8(3)])
def test_any_integer_type_is_read_as_an_int(value: object) -> None:
    number = integer_option("count", value, "things")
    assert number == 3
    assert type(number) is int  # what the plugin hands its runtime and reports in settings


@pytest.mark.parametrize("value", [True, 3.0, "3", None, 0, -2, np.int64(0)])
def test_non_integers_and_values_below_the_minimum_are_refused(value: object) -> None:
    with pytest.raises(UnsupportedOptionError) as info:
        integer_option("count", value, "things in the pool")
    assert str(info.value).startswith(
        f"backend option 'count' must be an integer >= 1 (things in the pool), got {value!r}"
    )


def test_bounds() -> None:
    assert integer_option("level", 0, "effort", minimum=0, maximum=5) == 0
    assert integer_option("level", 5, "effort", minimum=0, maximum=5) == 5
    with pytest.raises(UnsupportedOptionError, match="'level' must be an integer from 0 to 5"):
        integer_option("level", 6, "effort", minimum=0, maximum=5)


def test_a_process_wide_setting_gives_the_open_sessions_back_their_value() -> None:
    applied: list[object] = []
    setting = ProcessWideSetting(applied.append)
    first, others = setting.request(1)
    assert others == [] and applied == [1]
    second, others = setting.request(2)
    assert others == [1] and applied == [1, 2]  # the plugin warns: the first session changed too
    assert setting.in_force == 2
    setting.release(second)
    assert applied == [1, 2, 1] and setting.in_force == 1  # what the one left asked for
    setting.release(first)
    assert applied == [1, 2, 1] and setting.in_force is None  # nobody asks: left as it is


def test_sessions_that_disagree_leave_the_last_value() -> None:
    applied: list[object] = []
    setting = ProcessWideSetting(applied.append)
    keys = [setting.request(v)[0] for v in (1, 2, 3)]
    setting.release(keys[2])
    assert applied == [1, 2, 3]  # 1 and 2 are still asked for: no value to go back to


def test_a_process_wide_setting_takes_unhashable_values() -> None:
    applied: list[object] = []
    setting = ProcessWideSetting(applied.append)
    first, _ = setting.request({"threads": 1})
    second, others = setting.request({"threads": 2})
    assert others == [{"threads": 1}]
    setting.release(second)
    assert applied[-1] == {"threads": 1}
    setting.release(first)


@pytest.mark.parametrize(
    "feed",
    [
        np.array([3e9], np.float32),  # not an integer tensor: nothing to wrap
        np.array([4_000_000_000], np.uint32),  # 32-bit: the runtime's own type
        np.array([2**31 - 1, -(2**31)], np.int64),
        np.array([2**31 - 1], np.uint64),
        np.zeros(0, np.int64),
    ],
)
def test_only_64_bit_integers_beyond_int32_are_refused(feed: np.ndarray) -> None:
    refuse_int64_beyond_int32("rt", "x", feed)


@pytest.mark.parametrize("dtype", [np.int64, np.uint64])
def test_64_bit_integers_beyond_int32_are_refused(dtype: type) -> None:
    with pytest.raises(InputError, match=f"{np.dtype(dtype)} values outside the int32 range"):
        refuse_int64_beyond_int32("rt", "x", np.array([2**40 + 1], dtype))


def test_warnings_look_past_plugins_whatever_their_package_is_called(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A third-party plugin need not be called unifer_*: its frames are not the user's line."""
    (tmp_path / "thirdparty_rt.py").write_text(
        "from unifer.backend import warn_user\n\ndef open_it():\n    warn_user('ignored')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(_registry, "plugin_packages", lambda: frozenset({"thirdparty_rt"}))
    import thirdparty_rt

    with pytest.warns(UniferWarning, match="ignored") as caught:
        thirdparty_rt.open_it()
    assert {w.filename for w in caught} == {__file__}
