"""An auto pool's lazy maps: the measured first items' results, then the rest's.

``imap`` and ``aimap`` on a function not yet measured take its first items for
the probe, then hand the rest of the input to the chosen pool's own lazy map.
These iterators put the two back together: the first items' results (in
order, or as they finish), then the rest's. Like every pool's, a task's error
is raised at its turn and iteration may go on past it, and progress counts
every task once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

from ..._core._futures import Future
from ..._core._progress import ProgressArg, Reporter

__all__ = ["AsyncChained", "Chained", "first_items"]


def first_items(source: Iterator[Any], n: int) -> tuple[Iterator[Any], list[Any]]:
    """The first ``n`` items of ``source``, and an iterator of the rest.

    An input that fails among them fails in the rest instead, at its turn.
    """
    head: list[Any] = []
    try:
        for item in source:
            head.append(item)
            if len(head) == n:
                break
    except Exception as error:
        return _raising(error), head
    return source, head


def _raising(error: Exception) -> Iterator[Any]:
    raise error
    yield  # a generator, so that it raises when read


class _Heads:
    """The measured items' futures, handed out in order or as they finish."""

    def __init__(self, heads: list[Future[Any]], ordered: bool, report: Reporter) -> None:
        self.waiting = list(heads)
        self.count = len(heads)
        self.ordered = ordered
        self.report = report
        self.given = 0

    def tail_progress(self) -> ProgressArg:
        """The rest's ``progress=``: told after the measured items."""
        if self.report.quiet:
            return False
        return lambda done, _total: self.report.update(self.count + done)

    def ready(self) -> Future[Any] | None:
        """The next to hand out if it may go now (in order: the first, once done)."""
        if self.ordered:
            return self.waiting[0] if self.waiting[0].done() else None
        return next((head for head in self.waiting if head.done()), None)

    def hand_out(self, head: Future[Any]) -> Any:
        self.waiting.remove(head)
        self.given += 1
        self.report.update(self.given)
        return head.result()  # its error, at its turn

    def cancel(self) -> None:
        for head in self.waiting:
            head.cancel()
        self.waiting = []


class Chained(Iterator[Any]):
    """One ``imap``'s results: the measured items', then ``tail``'s."""

    def __init__(self, heads: list[Future[Any]], ordered: bool, report: Reporter) -> None:
        self._heads = _Heads(heads, ordered, report)
        self._report = report
        self.tail: Iterator[Any] = iter(())

    def tail_progress(self) -> ProgressArg:
        """The ``progress=`` to give the rest's map."""
        return self._heads.tail_progress()

    def __iter__(self) -> Chained:
        return self

    def __next__(self) -> Any:
        heads = self._heads
        if heads.waiting:
            head = heads.ready()
            if head is None:
                pending = heads.waiting[:1] if heads.ordered else heads.waiting
                concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
                head = heads.ready()
            assert head is not None
            return heads.hand_out(head)
        try:
            return next(self.tail)
        except StopIteration:
            self._report.close()
            raise

    def close(self) -> None:
        """Stop: cancel the tasks that have not run."""
        self._heads.cancel()
        closing = getattr(self.tail, "close", None)
        if closing is not None:
            closing()
        self._report.close()


Begin = Callable[["AsyncChained"], Awaitable["tuple[list[Future[Any]], AsyncIterator[Any]] | None"]]


class AsyncChained(AsyncIterator[Any]):
    """One ``aimap``'s results: the measured items', then the rest's.

    ``begin(self)`` runs at the first ``__anext__``: it reads the first items,
    has them measured, and returns their futures and the rest's iterator
    (None: the input was empty). It may call :meth:`tail_progress` once it
    knows how many items were measured.
    """

    def __init__(self, begin: Begin, ordered: bool, report: Reporter) -> None:
        self._begin: Begin | None = begin
        self._ordered = ordered
        self._report = report
        self._heads = _Heads([], ordered, report)
        self._tail: AsyncIterator[Any] | None = None

    def tail_progress(self, measured: int) -> ProgressArg:
        """The ``progress=`` to give the rest's map, after ``measured`` items."""
        self._heads.count = measured
        return self._heads.tail_progress()

    def __aiter__(self) -> AsyncChained:
        return self

    async def __anext__(self) -> Any:
        if self._begin is not None:
            begin, self._begin = self._begin, None
            started = await begin(self)
            if started is not None:
                measured, self._tail = started
                self._heads = _Heads(measured, self._ordered, self._report)
        heads = self._heads
        if heads.waiting:
            head = heads.ready()
            if head is None:
                pending = heads.waiting[:1] if heads.ordered else heads.waiting
                await asyncio.wait([asyncio.wrap_future(h) for h in pending],
                                   return_when=asyncio.FIRST_COMPLETED)
                head = heads.ready()
            assert head is not None
            return heads.hand_out(head)
        if self._tail is None:
            self._report.close()
            raise StopAsyncIteration
        try:
            return await self._tail.__anext__()
        except StopAsyncIteration:
            self._report.close()
            raise

    async def aclose(self) -> None:
        """Stop: cancel the tasks that have not run."""
        self._begin = None
        self._heads.cancel()
        closing = getattr(self._tail, "aclose", None)
        if closing is not None:
            await closing()
        self._report.close()
