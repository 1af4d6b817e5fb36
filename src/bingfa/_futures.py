"""bingfa's Future: a ``concurrent.futures.Future`` that can also be awaited."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Generator
from typing import Any, TypeVar

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

    def __await__(self) -> Generator[Any, None, T]:
        if not self.done():
            # wrap_future chains the two futures both ways: our result lands in
            # the loop via call_soon_threadsafe, and cancelling the awaiting
            # task cancels us.
            yield from asyncio.wrap_future(self).__await__()
        return self.result()

    def __repr__(self) -> str:
        return "<bingfa." + super().__repr__()[1:]
