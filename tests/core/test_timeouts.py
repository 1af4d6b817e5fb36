"""The one timeout rule that pools, commands and RPC share (``_core._timeouts``).

Each user of the rule is tested where it lives (the pool contract, commands,
RPC); this pins the rule itself.
"""

from __future__ import annotations

import math

import pytest

from bingfa._core._timeouts import limit_seconds, wait_seconds

NOT_NUMBERS = [math.nan, True, False, "1", b"1", [1]]


def test_a_limit_is_none_or_seconds_from_zero():
    assert limit_seconds(None) is None
    assert limit_seconds(0) == 0.0  # no time at all, as subprocess.run(timeout=0)
    assert limit_seconds(2) == 2.0
    assert isinstance(limit_seconds(2), float)
    assert limit_seconds(0.25) == 0.25
    assert limit_seconds(math.inf) is None  # no limit


@pytest.mark.parametrize("bad", [-1, -1e-9, -math.inf, *NOT_NUMBERS], ids=repr)
def test_a_limit_refuses_nan_negatives_and_non_numbers(bad):
    with pytest.raises(ValueError, match="task_timeout must be a number of seconds >= 0"):
        limit_seconds(bad, "task_timeout")


def test_a_limit_with_a_maximum_refuses_inf_too():
    assert limit_seconds(0, maximum=10) == 0.0
    assert limit_seconds(10, maximum=10) == 10.0
    for bad in (10.5, math.inf, math.nan, -1):
        with pytest.raises(ValueError, match="from 0 to 10"):
            limit_seconds(bad, maximum=10)


def test_a_wait_below_zero_does_not_wait_and_inf_waits_for_good():
    assert wait_seconds(None) is None
    assert wait_seconds(1.5) == 1.5
    assert wait_seconds(0) == 0.0
    assert wait_seconds(-3) == 0.0  # deadline - now, once the deadline has passed
    assert wait_seconds(math.inf) is None
    assert wait_seconds(-math.inf) == 0.0


@pytest.mark.parametrize("bad", NOT_NUMBERS, ids=repr)
def test_a_wait_refuses_nan_and_non_numbers(bad):
    with pytest.raises(ValueError, match="timeout"):
        wait_seconds(bad)
