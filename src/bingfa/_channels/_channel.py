"""``bf.Channel``: what every channel does, whichever mode carries its items.

A channel is a queue that ends. ``close()`` says no more items will come;
consumers take what was put before it and then stop: ``for x in ch`` ends,
``get()`` raises :class:`~bingfa.ChannelClosedError`. With ``producers=N`` the
channel closes when N producers have finished (each ``close()``, or each
``with ch.producer():`` block left, counts one), and a process that dies
inside ``with ch.producer():`` counts as finished: a killed producer never
leaves its consumers waiting.

``Channel(mode="thread")`` returns a :class:`~._thread.ThreadChannel`,
``mode="process"`` a :class:`~._process.ProcessChannel`; both are
``Channel`` instances. This module holds what they share: the iteration
protocols, the batch and async forms built on the subclass's primitives, and
the arguments' checks. Nothing here imports asyncio: a process-pool worker
that only puts into a channel should not load it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any, NamedTuple

from .._core._timeouts import limit_seconds
from ._errors import ChannelClosedError, ChannelEmpty, ChannelFull

__all__ = ["Channel", "ChannelStatistics", "check_max_items", "check_maxsize", "check_producers",
           "deadline_of"]

MODES = ("thread", "process")


class ChannelStatistics(NamedTuple):
    """A snapshot of a channel's state, from :meth:`Channel.statistics`.

    Attributes:
        mode: ``"thread"`` or ``"process"``.
        items: items waiting in the channel now.
        maxsize: the most items it holds at once (0: no limit).
        puts: items put since it was made.
        gets: items taken since it was made.
        closed: whether it has been closed.
        producers_left: producers still to finish before it closes by
            itself (``producers=``), or None when ``close()`` closes it at once.
    """

    mode: str
    items: int
    maxsize: int
    puts: int
    gets: int
    closed: bool
    producers_left: int | None


class Channel:
    """A queue for threads or processes that ends when it is closed and never hangs.

    ``Channel(maxsize=None, mode="thread", *, producers=None)``. Producers
    ``put``; consumers ``get`` or iterate, and iteration ends once the channel
    is closed and drained. ``mode="process"`` makes a channel that pickles into
    pool tasks, ``bf.Process`` and scope spawns, in shared memory; its
    ``maxsize`` defaults to 1024. ``producers=N`` closes the channel when N
    producers have finished (see :meth:`producer`).

    Raises :class:`~bingfa.ChannelClosedError` for a put after the close,
    :class:`~bingfa.ChannelEmpty` and :class:`~bingfa.ChannelFull` (also
    :class:`queue.Empty` and :class:`queue.Full`) for the nowait forms and
    timeouts.
    """

    __slots__ = ()

    def __new__(cls, maxsize: int | None = None, mode: str = "thread", *,
                producers: int | None = None) -> Channel:
        if cls is Channel:
            if mode == "thread":
                from ._thread import ThreadChannel

                cls = ThreadChannel
            elif mode == "process":
                from ._process import ProcessChannel

                cls = ProcessChannel
            else:
                raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        return object.__new__(cls)

    # -- what each mode provides ----------------------------------------------

    mode: str

    def put(self, item: Any, timeout: float | None = None) -> None:
        """Add ``item``, waiting while the channel is full.

        Raises:
            ChannelClosedError: the channel is closed (also if it closes while
                this waits).
            ChannelFull: ``timeout`` seconds passed with no room.
        """
        raise NotImplementedError

    def get(self, timeout: float | None = None) -> Any:
        """Take the next item, waiting while the channel is empty and open.

        Raises:
            ChannelClosedError: the channel is closed and drained.
            ChannelEmpty: ``timeout`` seconds passed with no item.
        """
        raise NotImplementedError

    def put_nowait(self, item: Any) -> None:
        """Add ``item`` now, or raise :class:`~bingfa.ChannelFull` (or ChannelClosedError)."""
        raise NotImplementedError

    def get_nowait(self) -> Any:
        """Take an item now, or raise :class:`~bingfa.ChannelEmpty` (or ChannelClosedError)."""
        raise NotImplementedError

    def close(self) -> None:
        """Say no more items will come (with ``producers=N``: this producer is done).

        Consumers take what was put before and then stop. Closing twice is
        harmless; a put after the close raises ChannelClosedError.
        """
        raise NotImplementedError

    @property
    def closed(self) -> bool:
        """Whether the channel is closed (items put before may still be waiting)."""
        raise NotImplementedError

    def qsize(self) -> int:
        """How many items are waiting now (a snapshot)."""
        raise NotImplementedError

    def statistics(self) -> ChannelStatistics:
        """A snapshot of the channel's counts: see :class:`ChannelStatistics`."""
        raise NotImplementedError

    def _wait_async(self, want_item: bool, deadline: float | None) -> Any:
        """An awaitable that finishes when a nowait form may succeed (or the deadline passes)."""
        raise NotImplementedError

    def _producer_started(self) -> object:
        """Register the calling producer (see :meth:`producer`); a token for ``_producer_done``."""
        return None

    def _producer_done(self, token: object) -> None:
        self.close()

    # -- built on them ----------------------------------------------------------

    def empty(self) -> bool:
        """Whether no item is waiting now (a snapshot)."""
        return self.qsize() == 0

    def put_many(self, items: Iterable[Any], timeout: float | None = None) -> None:
        """Put every item of ``items`` in order, waiting for room as needed.

        ``timeout`` bounds the whole call; on ChannelFull the items before
        the one that did not fit are in the channel.
        """
        raise NotImplementedError

    def get_many(self, max_items: int, timeout: float | None = None) -> list[Any]:
        """Take up to ``max_items`` items: waits for the first, then takes what is there.

        Raises:
            ChannelClosedError: the channel is closed and drained.
            ChannelEmpty: ``timeout`` passed before the first item came.
        """
        raise NotImplementedError

    def __iter__(self) -> Iterator[Any]:
        """Each item in turn, until the channel is closed and drained."""
        get = self.get
        while True:
            try:
                yield get()
            except ChannelClosedError:
                return

    @contextlib.contextmanager
    def producer(self) -> Iterator[Channel]:
        """``with ch.producer():`` marks the block as one producer's work.

        Leaving the block (normally or by an exception) counts this producer
        as finished: with ``producers=N`` the channel closes once N have
        finished; without, it closes. In process mode, a process killed inside
        the block counts as finished too, so its consumers still end.
        """
        token = self._producer_started()
        try:
            yield self
        finally:
            self._producer_done(token)

    # -- async -----------------------------------------------------------------

    async def aput(self, item: Any, timeout: float | None = None) -> None:
        """:meth:`put` for coroutines: waits for room without blocking the event loop."""
        deadline = deadline_of(timeout)
        while True:
            try:
                self.put_nowait(item)
                return
            except ChannelFull:
                if deadline is not None and time.monotonic() >= deadline:
                    raise
            await self._wait_async(False, deadline)

    async def aget(self, timeout: float | None = None) -> Any:
        """:meth:`get` for coroutines: waits for an item without blocking the event loop."""
        deadline = deadline_of(timeout)
        while True:
            try:
                return self.get_nowait()
            except ChannelEmpty:
                if deadline is not None and time.monotonic() >= deadline:
                    raise
            await self._wait_async(True, deadline)

    def __aiter__(self) -> AsyncIterator[Any]:
        """``async for x in ch``: each item in turn, until it is closed and drained."""
        return self._aiterate()

    async def _aiterate(self) -> AsyncIterator[Any]:
        while True:
            try:
                item = await self.aget()
            except ChannelClosedError:
                return
            yield item


def deadline_of(timeout: float | None) -> float | None:
    """The monotonic time a ``timeout`` ends at (None: never); checks the timeout."""
    if timeout is None:
        return None
    seconds = limit_seconds(timeout)
    return None if seconds is None else time.monotonic() + seconds


def check_maxsize(maxsize: int | None, default: int) -> int:
    """``maxsize`` as a count (0: no limit), ``default`` for None; TypeError or ValueError."""
    if maxsize is None:
        return default
    if not isinstance(maxsize, int) or isinstance(maxsize, bool):
        raise TypeError(f"maxsize must be an int or None, not {type(maxsize).__name__}")
    if maxsize < 0:
        raise ValueError(f"maxsize must be at least 0, not {maxsize}")
    return maxsize


def check_producers(producers: int | None) -> int | None:
    """``producers`` if it is None or a positive int; TypeError or ValueError."""
    if producers is None:
        return None
    if not isinstance(producers, int) or isinstance(producers, bool):
        raise TypeError(f"producers must be an int or None, not {type(producers).__name__}")
    if producers < 1:
        raise ValueError(f"producers must be at least 1, not {producers}")
    return producers


def check_max_items(max_items: int) -> None:
    """TypeError or ValueError unless ``max_items`` is a positive int."""
    if not isinstance(max_items, int) or isinstance(max_items, bool):
        raise TypeError(f"max_items must be an int, not {type(max_items).__name__}")
    if max_items < 1:
        raise ValueError(f"max_items must be at least 1, not {max_items}")
