"""The helpers ``unifer.backend`` gives plugins for checking their options."""

from __future__ import annotations

import numpy as np
import pytest

from unifer import UnsupportedOptionError
from unifer.backend import ProcessWideSetting, integer_option


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
