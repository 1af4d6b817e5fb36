"""This machine's costs of running a task in a process, from ``bingfa bench`` when it has run."""

from __future__ import annotations

from typing import Any

from ..._core._machine import gil_enabled, usable_cores
from ._decide import Costs

__all__ = ["machine_costs"]


# The process round trip where the default costs were measured.
REFERENCE_ROUND_TRIP = 200e-6


def machine_costs() -> Costs:
    """:class:`Costs` for this machine: scaled by ``bingfa bench``'s round trip, if saved.

    A machine whose processes answer twice as slowly hands work over about
    twice as slowly too: every cost of handing over scales with it (within
    4x either way; beyond that the figure is more likely a bad day).
    """
    from ...bench._cache import load

    results = load()
    round_trip = _process_round_trip(results) if _taken_here_at_rest(results) else None
    if round_trip is None:
        return Costs()
    return Costs().scaled(min(4.0, max(0.25, round_trip / REFERENCE_ROUND_TRIP)))


def _taken_here_at_rest(results: dict[str, Any] | None) -> bool:
    """Whether saved bench results describe this machine as it is, not a busy day of it.

    A run made while other programs kept every core busy measured them as
    much as the machine (a process round trip two to four times its own),
    and a run made with other cores (another container's share, say) or with
    the GIL set otherwise measured something else: either would skew every
    decision until the next run. Results saved before bench recorded how
    busy the machine was are taken as they are.
    """
    try:
        taken = results["machine"]  # type: ignore[index]
        busy = taken.get("busy_cores_at_start")
        if busy is not None and float(busy) > usable_cores() - 0.5:
            return False
        return bool(taken["usable_cores"] == usable_cores() and taken["gil"] == gil_enabled())
    except (KeyError, TypeError, ValueError, AttributeError):
        return False


def _process_round_trip(results: dict[str, Any] | None) -> float | None:
    try:
        seconds = float(results["workloads"]["switch"]["modes"]["process"]["median"])  # type: ignore[index]
    except (KeyError, TypeError, ValueError):
        return None
    # A figure outside any machine's range is a damaged file, not a measurement.
    return seconds if 1e-6 <= seconds <= 0.05 else None
