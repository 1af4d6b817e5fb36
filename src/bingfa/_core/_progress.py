"""Progress reporting for long maps: a tqdm bar, or a callable of (done, total)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["ProgressArg", "Reporter", "reporter"]

ProgressArg = bool | Callable[[int, int | None], Any] | None


class Reporter(Protocol):
    """Told how many tasks are done; closed at the end."""

    quiet: bool  # reports nothing: callers may skip telling it

    def update(self, done: int) -> None: ...

    def close(self) -> None: ...


class _Silent:
    quiet = True

    def update(self, done: int) -> None:
        return None

    def close(self) -> None:
        return None


class _Callback:
    """Calls ``fn(done, total)`` once per finished task: 1, 2, ..., total, in order.

    Results arrive a chunk at a time, but a callback that counts or logs
    must not see numbers skipped, so a chunk of three is told as three calls.
    """

    quiet = False

    def __init__(self, fn: Callable[[int, int | None], Any], total: int | None) -> None:
        self._fn = fn
        self._total = total
        self._told = 0

    def update(self, done: int) -> None:
        fn, total = self._fn, self._total
        for n in range(self._told + 1, done + 1):
            self._told = n  # first: a callback that raises is not told twice
            fn(n, total)

    def close(self) -> None:
        return None


class _Bar:
    quiet = False

    def __init__(self, total: int | None, desc: str) -> None:
        from tqdm.auto import tqdm  # imported only when a bar is asked for

        self._bar = tqdm(total=total, desc=desc, unit="task", dynamic_ncols=True)
        self._shown = 0

    def update(self, done: int) -> None:
        if done > self._shown:
            self._bar.update(done - self._shown)
            self._shown = done

    def close(self) -> None:
        self._bar.close()


def reporter(progress: ProgressArg, total: int | None, desc: str) -> Reporter:
    """The reporter for a ``progress=`` argument.

    Raises:
        TypeError: when ``progress`` is neither a bool, ``None`` nor a callable.
    """
    if progress is None or progress is False:
        return _Silent()
    if progress is True:
        return _Bar(total, desc)
    if callable(progress):
        return _Callback(progress, total)
    raise TypeError(f"progress must be a bool or a callable (done, total), not {progress!r}")
