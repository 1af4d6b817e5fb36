"""Thread mode: a channel for the threads (and coroutines) of one process.

A deque under one lock, as :class:`queue.Queue` is, with two conditions for
blocked threads and two queues of futures for coroutines waiting in
``aget``/``aput``. A put wakes one waiter of each kind (a thread and a
coroutine): whichever comes second finds nothing and waits again, which
costs a look, never an item. A close wakes them all.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from ._channel import (
    Channel,
    ChannelStatistics,
    check_max_items,
    check_maxsize,
    check_producers,
    deadline_of,
)
from ._errors import ChannelClosedError, ChannelEmpty, ChannelFull

if TYPE_CHECKING:
    import asyncio

__all__ = ["ThreadChannel"]

_Waiter = tuple["asyncio.AbstractEventLoop", "asyncio.Future[None]"]


class ThreadChannel(Channel):
    """A :class:`~bingfa.Channel` for threads and coroutines of this process (``mode="thread"``)."""

    __slots__ = (
        "_async_getters",
        "_async_putters",
        "_closed",
        "_gets",
        "_getters",
        "_items",
        "_lock",
        "_maxsize",
        "_not_empty",
        "_not_full",
        "_producers_left",
        "_puts",
        "_putters",
    )

    mode = "thread"

    def __init__(self, maxsize: int | None = None, mode: str = "thread", *,
                 producers: int | None = None) -> None:
        self._maxsize = check_maxsize(maxsize, 0)
        self._producers_left = check_producers(producers)
        self._items: deque[Any] = deque()
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        self._getters = 0  # threads blocked in get
        self._putters = 0  # threads blocked in put
        self._async_getters: deque[_Waiter] = deque()
        self._async_putters: deque[_Waiter] = deque()
        self._closed = False
        self._puts = 0
        self._gets = 0

    def __reduce__(self) -> Any:
        raise TypeError("a thread-mode channel cannot leave its process; "
                        "make it with bf.Channel(mode='process') to pass it to processes")

    # -- put ---------------------------------------------------------------------

    def put(self, item: Any, timeout: float | None = None) -> None:
        with self._lock:
            if self._closed:
                raise ChannelClosedError("put to a closed channel")
            if self._maxsize and len(self._items) >= self._maxsize:
                self._wait_for_room(deadline_of(timeout))
            self._append(item)

    def put_nowait(self, item: Any) -> None:
        with self._lock:
            if self._closed:
                raise ChannelClosedError("put to a closed channel")
            if self._maxsize and len(self._items) >= self._maxsize:
                raise ChannelFull(f"the channel is full ({self._maxsize} items)")
            self._append(item)

    def put_many(self, items: Any, timeout: float | None = None) -> None:
        deadline = deadline_of(timeout)
        items = iter(items)
        with self._lock:
            for item in items:
                if self._closed:
                    raise ChannelClosedError("put to a closed channel")
                if self._maxsize and len(self._items) >= self._maxsize:
                    self._wait_for_room(deadline)
                self._append(item)

    def _append(self, item: Any) -> None:
        """Add an item and wake a waiting consumer (lock held)."""
        self._items.append(item)
        self._puts += 1
        if self._getters:
            self._not_empty.notify()
        if self._async_getters:
            _wake_one(self._async_getters)

    def _wait_for_room(self, deadline: float | None) -> None:
        """Wait until the channel has room (lock held); raise if it closes or time runs out."""
        self._putters += 1
        try:
            while len(self._items) >= self._maxsize:
                if deadline is None:
                    self._not_full.wait()
                else:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise ChannelFull(f"the channel stayed full ({self._maxsize} items)")
                    self._not_full.wait(left)
                if self._closed:
                    raise ChannelClosedError("the channel was closed while a put waited")
        finally:
            self._putters -= 1

    # -- get ---------------------------------------------------------------------

    def get(self, timeout: float | None = None) -> Any:
        with self._lock:
            if not self._items:
                self._wait_for_item(deadline_of(timeout))
            return self._pop()

    def get_nowait(self) -> Any:
        with self._lock:
            if not self._items:
                if self._closed:
                    raise ChannelClosedError("the channel is closed and drained")
                raise ChannelEmpty("the channel is empty")
            return self._pop()

    def get_many(self, max_items: int, timeout: float | None = None) -> list[Any]:
        check_max_items(max_items)
        with self._lock:
            if not self._items:
                self._wait_for_item(deadline_of(timeout))
            taken = min(max_items, len(self._items))
            popleft = self._items.popleft
            items = [popleft() for _ in range(taken)]
            self._gets += taken
            self._room_made()
            return items

    def _pop(self) -> Any:
        """Take the first item and wake a waiting producer (lock held)."""
        item = self._items.popleft()
        self._gets += 1
        if self._maxsize:
            self._room_made()
        return item

    def _room_made(self) -> None:
        if self._putters:
            self._not_full.notify()
        if self._async_putters:
            _wake_one(self._async_putters)

    def _wait_for_item(self, deadline: float | None) -> None:
        """Wait until an item is there (lock held); raise at the end or when time runs out."""
        self._getters += 1
        try:
            while not self._items:
                if self._closed:
                    raise ChannelClosedError("the channel is closed and drained")
                if deadline is None:
                    self._not_empty.wait()
                else:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise ChannelEmpty("no item came within the timeout")
                    self._not_empty.wait(left)
        finally:
            self._getters -= 1

    # -- closing and counts ----------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            if self._producers_left is not None:
                self._producers_left -= 1
                if self._producers_left > 0:
                    return
            self._closed = True
            self._not_empty.notify_all()
            self._not_full.notify_all()
            for waiters in (self._async_getters, self._async_putters):
                while waiters:
                    _wake_one(waiters)

    @property
    def closed(self) -> bool:
        return self._closed

    def qsize(self) -> int:
        return len(self._items)

    def statistics(self) -> ChannelStatistics:
        with self._lock:
            return ChannelStatistics(self.mode, len(self._items), self._maxsize, self._puts,
                                     self._gets, self._closed, self._producers_left)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (f"<bingfa.Channel mode='thread' {state} items={len(self._items)} "
                f"maxsize={self._maxsize}>")

    # -- async ---------------------------------------------------------------------
    # The same steps as Channel's aget and aput, without an exception for
    # "not now" and with _pop and _append inlined: asyncio.Queue, which needs
    # no lock, is the yardstick here.

    async def aget(self, timeout: float | None = None) -> Any:
        deadline = None if timeout is None else deadline_of(timeout)
        while True:
            with self._lock:
                if self._items:  # _pop, inlined
                    item = self._items.popleft()
                    self._gets += 1
                    if self._maxsize and (self._putters or self._async_putters):
                        self._room_made()
                    return item
                if self._closed:
                    raise ChannelClosedError("the channel is closed and drained")
            if deadline is not None and time.monotonic() >= deadline:
                raise ChannelEmpty("no item came within the timeout")
            await self._wait_async(True, deadline)

    async def aput(self, item: Any, timeout: float | None = None) -> None:
        deadline = None if timeout is None else deadline_of(timeout)
        while True:
            with self._lock:
                if self._closed:
                    raise ChannelClosedError("put to a closed channel")
                if not self._maxsize or len(self._items) < self._maxsize:  # _append, inlined
                    self._items.append(item)
                    self._puts += 1
                    if self._getters:
                        self._not_empty.notify()
                    if self._async_getters:
                        _wake_one(self._async_getters)
                    return
            if deadline is not None and time.monotonic() >= deadline:
                raise ChannelFull(f"the channel stayed full ({self._maxsize} items)")
            await self._wait_async(False, deadline)


    def _wait_async(self, want_item: bool, deadline: float | None) -> Any:
        import asyncio  # loaded already: this runs in an event loop

        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if want_item:
                ready = bool(self._items) or self._closed
            else:
                ready = self._closed or not (self._maxsize and len(self._items) >= self._maxsize)
            if ready:
                future.set_result(None)
                return future
            (self._async_getters if want_item else self._async_putters).append((loop, future))
        if deadline is not None:
            handle = loop.call_at(loop.time() + max(0.0, deadline - time.monotonic()),
                                  _resolve, future)
            future.add_done_callback(lambda _: handle.cancel())
        return future


def _wake_one(waiters: deque[_Waiter]) -> None:
    """Wake the first waiting coroutine whose wait is still on (lock held)."""
    import asyncio

    while waiters:
        loop, future = waiters.popleft()
        if future.done():
            continue  # cancelled or timed out: wake the next instead
        if asyncio._get_running_loop() is loop:
            future.set_result(None)
        else:
            try:
                loop.call_soon_threadsafe(_resolve_or_pass_on, future, waiters)
            except RuntimeError:
                continue  # its loop is closed: nobody waits there any more
        return


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _resolve_or_pass_on(future: asyncio.Future[None], waiters: deque[_Waiter]) -> None:
    """Wake ``future``'s coroutine; if it was cancelled meanwhile, wake the next one."""
    if not future.done():
        future.set_result(None)
    elif future.cancelled():
        _wake_one(waiters)  # deque operations are atomic: no lock needed for this
