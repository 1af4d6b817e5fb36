"""The asyncio faces of every pool: ``amap``, ``aimap``, ``aimap_unordered``, ``async with``.

They work on a pool of any mode and never block the event loop they are
awaited on. A job's consumer normally sleeps on the job's
``threading.Condition``; a coroutine cannot, so the job also calls a
:class:`LoopWaker` whenever it notifies (``ManyJob.on_notify``), which sets
an ``asyncio.Event`` on the consumer's loop, from whatever thread delivered
the results. Everything else (windows, chunks, errors in their turn,
cancelling what has not run) is the sync iterator's, shared by inheritance.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from .._core._progress import Reporter
from ._errors import result_timeout_error
from ._imap import ResultIterator
from ._jobs import ManyJob

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._engines._base import Engine

__all__ = ["AsyncResultIterator", "LoopWaker", "async_source", "wait_for_map"]


class LoopWaker:
    """Sets an asyncio event on one loop, callable from any thread (even holding a lock).

    Calls coalesce: while one wake-up is on its way to the loop, more add nothing.
    """

    __slots__ = ("_event", "_ident", "_loop", "_on_its_way")

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._ident = threading.get_ident()
        self._event = asyncio.Event()
        self._on_its_way = False

    def __call__(self) -> None:
        if threading.get_ident() == self._ident:
            self._event.set()
            return
        if self._on_its_way:
            return
        self._on_its_way = True
        try:
            self._loop.call_soon_threadsafe(self._set)
        except RuntimeError:  # the loop has closed: nobody is waiting any more
            pass

    def _set(self) -> None:
        self._on_its_way = False
        self._event.set()

    def clear(self) -> None:
        """Forget past wake-ups (call it before looking at what they announce)."""
        self._event.clear()

    async def wait(self) -> None:
        """Until the next wake-up (or one since the last :meth:`clear`)."""
        await self._event.wait()


async def wait_for_map(job: ManyJob, n: int, report: Reporter, deadline: float | None,
                       wait: float | None) -> list[Any]:
    """The results of ``map`` job ``job`` of ``n`` tasks, awaited; ``map``'s rules.

    The job must have been made with ``on_notify`` set to the waker it is
    given as ``job.on_notify``.
    """
    waker = job.on_notify
    assert isinstance(waker, LoopWaker)
    try:
        while True:
            with job.cond:
                completed, first_error = job.completed, job.first_error
                if completed >= n or first_error is not None:
                    break
                waker.clear()
            report.update(completed)
            if deadline is None:
                await waker.wait()
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                raise result_timeout_error(
                    f"amap() did not finish within {wait:g} s: {n - completed} of its {n} "
                    "tasks had not finished; those not started were cancelled")
            try:
                async with asyncio.timeout(left):
                    await waker.wait()
            except TimeoutError:
                continue  # the next look decides: it may have finished meanwhile
        report.update(job.completed)
        if first_error is not None:
            raise first_error[1]
        assert job.slots is not None
        return job.slots
    except BaseException:
        job.cancel()
        raise
    finally:
        report.close()


class AsyncResultIterator(ResultIterator, AsyncIterator[Any]):
    """Results of an ``aimap`` family call, for ``async for``; input sync or async.

    A sync input is read on the event loop a block at a time (as the sync
    iterator reads it in the consumer's thread); an async one (an async
    generator, say) is awaited the same way.
    """

    def __init__(self, engine: Engine, workers: int, job: ManyJob,
                 source: Iterator[Any] | AsyncIterator[Any], report: Reporter) -> None:
        self._waker = LoopWaker()
        job.on_notify = self._waker
        self._async_source: AsyncIterator[Any] | None = (
            source if isinstance(source, AsyncIterator) else None)
        super().__init__(engine, workers, job, source, report)  # type: ignore[arg-type]

    def __aiter__(self) -> AsyncResultIterator:
        return self

    async def __anext__(self) -> Any:
        pos = self._pos
        if pos < self._stop:  # the chunk in hand: no lock, nothing to check
            self._pos = pos + 1
            return self._values[pos]
        while True:
            if self._pos < len(self._values):
                self._pos += 1
                if self._yielded() >= self._feed_at and not (
                        self._job.input_done or self._job.cancelled):
                    await self._afeed()
                return self._hand_out(self._pos - 1)
            await self._arefill()

    async def _arefill(self) -> None:
        """Take the next chunk, awaiting it; StopAsyncIteration at the end."""
        if self._finished:
            raise StopAsyncIteration
        job = self._job
        try:
            while True:
                if not (job.input_done or job.cancelled):
                    await self._afeed()
                with job.cond:
                    if self._look():
                        return
                    must_feed = not job.input_done and self._yielded() >= self._feed_at
                    if not must_feed:
                        self._waker.clear()
                if not must_feed:
                    await self._waker.wait()
        except StopIteration:
            self._finish()
            raise StopAsyncIteration from None
        except BaseException:
            self._finish()  # cancelled, or the whole job failed: iteration is over
            raise

    async def _afeed(self) -> None:
        source = self._async_source
        if source is None:
            self._feed()
            return
        room = self._room()
        if room <= 0:
            return
        block: list[Any] = []
        failure: Exception | None = None
        try:
            async for item in _first(source, room):
                block.append(item)
        except Exception as exc:
            failure = exc  # its items so far still run; the consumer gets it last
        except BaseException:
            self._finish()
            raise
        self._accept(block, failure, room)

    async def aclose(self) -> None:
        """Stop: cancel the tasks that have not run."""
        self._finish()


async def _first(source: AsyncIterator[Any], n: int) -> AsyncIterator[Any]:
    """The first ``n`` items of ``source`` (leaving the rest in it)."""
    for _ in range(n):
        try:
            item = await source.__anext__()
        except StopAsyncIteration:
            return
        yield item


def async_source(iterable: Any) -> Iterator[Any] | AsyncIterator[Any]:
    """An iterator over ``iterable``, sync or async (an ``AsyncIterable`` is kept async)."""
    if hasattr(iterable, "__aiter__"):
        it: AsyncIterator[Any] = iterable.__aiter__()
        return it
    plain: Iterator[Any] = iter(iterable)
    return plain

