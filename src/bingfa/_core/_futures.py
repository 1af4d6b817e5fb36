"""bingfa's Future: a ``concurrent.futures.Future`` that can also be awaited."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable, Generator
from concurrent.futures._base import PENDING
from typing import Any, TypeVar

from ._future_condition import FutureCondition
from ._timeouts import wait_seconds

__all__ = ["Future"]

T = TypeVar("T")


class Future(concurrent.futures.Future[T]):
    """The result of a task that may not have finished yet.

    It is a :class:`concurrent.futures.Future`, so ``result()``,
    ``add_done_callback()``, ``concurrent.futures.wait`` and ``as_completed``
    work as usual. It is also awaitable: ``await fut`` inside a coroutine waits
    without blocking the event loop (and works with ``asyncio.wrap_future``).
    Cancelling the awaiting coroutine cancels the future.

    Example::

        with bf.Pool(mode="process") as pool:
            fut = pool.submit(pow, 2, 10)
            print(fut.result())          # 1024, from a thread
            print(await fut)             # 1024, from a coroutine
    """

    # Set by the engine that runs the task when it can deliver a result faster
    # to a thread that waits for it (see ProcessEngine.wait_for).
    _waiter: Callable[[Future[Any], float | None], None] | None = None

    def __init__(self) -> None:
        # concurrent.futures.Future's own state, with a condition that costs
        # the garbage collector one object instead of eight (see
        # FutureCondition); tests/core check the attributes still match.
        self._condition = FutureCondition()  # type: ignore[assignment]
        self._state = PENDING
        self._result: T | None = None
        self._exception: BaseException | None = None
        self._waiters: list[Any] = []
        self._done_callbacks: list[Callable[[concurrent.futures.Future[T]], object]] = []

    def _help(self, timeout: float | None) -> float | None:
        """Let the engine deliver the result here; the time left of ``timeout``."""
        if timeout is not None:
            # bingfa's rule for waits: NaN is an error, inf waits for good
            # (the stdlib would overflow), a negative wait does not wait.
            timeout = wait_seconds(timeout)
        waiter = self._waiter
        if waiter is None or self.done():
            return timeout
        if timeout is None:
            waiter(self, None)
            return None
        deadline = time.monotonic() + timeout
        waiter(self, timeout)
        return max(0.0, deadline - time.monotonic())

    def result(self, timeout: float | None = None) -> T:
        """The task's result, waiting up to ``timeout`` seconds; re-raises its error.

        Raises:
            TimeoutError: the result did not come within ``timeout`` seconds.
            ValueError: ``timeout`` is NaN or not a number.
        """
        return super().result(self._help(timeout))

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The task's exception (``None`` if it succeeded), waiting up to ``timeout``."""
        return super().exception(self._help(timeout))

    def __await__(self) -> Generator[Any, None, T]:
        if not self.done():
            # wrap_future chains the two futures both ways: our result lands in
            # the loop via call_soon_threadsafe, and cancelling the awaiting
            # task cancels us.
            import asyncio  # only for awaiting: a pool that is never awaited does not pay for it

            yield from asyncio.wrap_future(self).__await__()
        return self.result()

    def __repr__(self) -> str:
        return "<bingfa." + super().__repr__()[1:]
