"""The one rule for the timeouts bingfa takes.

There are two kinds of timeout, and one rule for each, shared by pools,
commands and RPC:

* a **limit** on how long work may run (``task_timeout``, ``bf.run``'s
  ``timeout``, an RPC call's ``timeout``): ``None`` for no limit, else a
  number of seconds ``>= 0``. ``0`` is allowed everywhere and means the time
  is already up (as ``subprocess.run(timeout=0)``): the work fails with its
  timeout error at once. ``inf`` means no limit, unless the caller has a
  ``maximum`` (commands do: epoll cannot wait longer).
* a **wait** for a result (``Future.result``, ``AsyncResult.get``/``wait``,
  ``Pool.map(timeout=)``): the same, except that a negative wait counts as
  ``0``, as in :mod:`concurrent.futures` and :mod:`multiprocessing`, so that
  ``timeout=deadline - time.monotonic()`` keeps working after the deadline.

NaN, booleans and anything that is not an ``int`` or a ``float`` are a
:class:`ValueError` in both: a NaN would pass every ``<`` check and mean
neither "wait" nor "do not wait".

This module imports nothing: ``bingfa run`` loads it at start-up.
"""

from __future__ import annotations

__all__ = ["limit_seconds", "wait_seconds"]

_INF = float("inf")


def _number(value: object, name: str, rule: str) -> float:
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or value != value):  # NaN is the one float unequal to itself
        raise ValueError(f"{name} must be {rule}, got {value!r}")
    return float(value)


def limit_seconds(value: float | None, name: str = "timeout", *,
                  maximum: float | None = None) -> float | None:
    """``value`` as seconds a piece of work may run; ``None`` for no limit.

    Args:
        value: ``None``, or a number of seconds ``>= 0`` (``inf``: no limit).
        name: the parameter's name, for the error message.
        maximum: the largest value accepted, if there is one (then ``inf`` is
            refused too).

    Raises:
        ValueError: for NaN, a negative number, a bool, a non-number, or a
            value above ``maximum``.
    """
    if value is None:
        return None
    if maximum is None:
        seconds = _number(value, name, "a number of seconds >= 0 (or None)")
        if seconds < 0:
            raise ValueError(f"{name} must be a number of seconds >= 0 (or None), "
                             f"got {value!r}")
        return None if seconds == _INF else seconds
    rule = f"from 0 to {maximum:.0f} seconds"
    if maximum % 86400 == 0:
        rule += f" ({maximum / 86400:.0f} days)"
    seconds = _number(value, name, rule)
    if not 0 <= seconds <= maximum:
        raise ValueError(f"{name} must be {rule}, got {value!r}")
    return seconds


def wait_seconds(value: float | None, name: str = "timeout") -> float | None:
    """``value`` as seconds to wait for a result; ``None`` to wait for good.

    A negative wait counts as ``0`` (the deadline has passed: do not wait);
    ``inf`` as ``None``.

    Raises:
        ValueError: for NaN, a bool or a non-number.
    """
    if value is None:
        return None
    seconds = _number(value, name, "a number of seconds (or None)")
    if seconds == _INF:
        return None
    return seconds if seconds > 0 else 0.0
