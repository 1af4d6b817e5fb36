"""The iterator ``imap``, ``imap_unordered`` and ``istarmap`` return.

It does two jobs in the consumer's thread (so the input is only ever touched
there): it feeds the job from the input as room opens, and it hands out
results. Both are paid per chunk, not per item, which is what lets a lazy map
of tiny tasks keep up with ``multiprocessing``'s:

- Results are taken from the job a whole chunk at a time, under one lock,
  into a local buffer; ``next()`` then serves the buffer with no lock at all.
- The input is read a block at a time. Room is counted as *items read but
  not yet handed to the consumer*, so a consumer slower than the workers
  holds the input back: at most about ``window`` items are ever in memory,
  whether waiting to run, running, or finished and waiting to be taken.

A task's error is raised in its turn and iteration may go on after it.
Dropping or closing the iterator cancels what has not run.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

from .._core._progress import Reporter
from ._jobs import AUTO, Chunk, ManyJob

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._engines._base import Engine

__all__ = ["ResultIterator"]

# How many chunks an imap keeps out per worker (read from the input and not yet
# handed to the consumer), and at most how many tasks, and bytes of arguments
# and results where they are measured: enough to keep workers busy, never so
# much that a lazy or endless input is read far ahead of its consumer.
IN_FLIGHT_PER_WORKER = 4
MAX_IN_FLIGHT_PER_WORKER = 16384
MAX_IN_FLIGHT_BYTES = 16 << 20

_EMPTY: list[Any] = []


class ResultIterator(Iterator[Any]):
    """Results of an ``imap`` family call, in order or as they finish."""

    def __init__(self, engine: Engine, workers: int, job: ManyJob, source: Iterator[Any],
                 report: Reporter) -> None:
        self._engine = engine
        self._workers = workers
        self._job = job
        self._source = source
        self._report = report
        self._reporting = not report.quiet
        # The chunk being handed out: its values, their errors, the position,
        # and how far __next__ may go before something needs doing (an error
        # to raise, input to read, progress to report, the chunk's end).
        self._values: list[Any] = _EMPTY
        self._failed: dict[int, BaseException] | None = None
        self._pos = 0
        self._stop = 0
        self._taken = 0  # moved from the job into the buffer
        self._feed_at = 0  # feed the input again once this many have been handed out
        self._finished = False

    def __iter__(self) -> ResultIterator:
        return self

    def __next__(self) -> Any:
        # The common case, kept to a few operations (it runs once per item):
        # the next result of the chunk in hand, no lock, nothing to check.
        pos = self._pos
        if pos < self._stop:
            self._pos = pos + 1
            return self._values[pos]
        return self._next_slowly()

    def _yielded(self) -> int:
        """Results handed to the consumer so far."""
        return self._taken - len(self._values) + self._pos

    def _next_slowly(self) -> Any:
        while True:
            if self._pos < len(self._values):
                self._pos += 1
                if self._yielded() >= self._feed_at:
                    self._feed_if_open()
                return self._hand_out(self._pos - 1)
            self._refill()

    def _hand_out(self, pos: int) -> Any:
        """The outcome at ``pos`` of the chunk in hand (already counted as handed out)."""
        if self._reporting:
            self._report.update(self._job.completed)
        self._stop = self._fast_until()
        failed = self._failed
        if failed is not None and pos in failed:
            raise failed[pos]  # a task's own error, even SystemExit: only its turn
        return self._values[pos]

    def _fast_until(self) -> int:
        """Where the fast path must stop in the chunk in hand, for the slow one to look."""
        pos = self._pos
        if self._reporting:
            return pos  # progress is told of every result
        stop = len(self._values)
        if self._failed is not None:
            stop = min([stop, *(i for i in self._failed if i >= pos)])
        job = self._job
        if not (job.input_done or job.cancelled):
            # The position whose result, handed out, brings the count to feed_at.
            stop = min(stop, self._feed_at - (self._taken - len(self._values)) - 1)
        return max(pos, stop)

    def _refill(self) -> None:
        """Take the next chunk from the job, waiting for it; StopIteration at the end."""
        if self._finished:
            raise StopIteration
        engine, job = self._engine, self._job
        if engine.inherited:
            from ._engines._base import inherited_error

            raise inherited_error()
        try:
            while True:
                self._feed_if_open()
                with job.cond:
                    while not self._look():
                        if not job.input_done and self._yielded() >= self._feed_at:
                            break  # room for more input: feed, outside the lock
                        engine.check_can_wait()
                        job.cond.wait()
                    else:
                        return
        except StopIteration:
            self._finish()
            raise
        except BaseException:
            self._finish()  # Ctrl-C, or the whole job failed: iteration is over
            raise

    def _look(self) -> bool:
        """Take the next chunk into hand if it is there (lock held); whether it was.

        Raises:
            StopIteration: every result has been handed out.
            BaseException: the job failed as a whole (the pool stopped), or
                the input broke after its last result.
        """
        job = self._job
        chunk = self._take_chunk()
        if chunk is not None:
            self._values, self._failed = chunk
            self._pos = 0
            self._taken += len(self._values)
            self._stop = self._fast_until()
            return True
        if job.aborted is not None:
            raise job.aborted
        if job.input_done and self._taken >= job.submitted:
            if job.input_error is not None:
                raise job.input_error
            raise StopIteration
        return False

    def _take_chunk(self) -> Chunk | None:
        """The next chunk of outcomes to hand out, if it is there (lock held)."""
        job = self._job
        if job.ordered:
            return job.ready.pop(self._taken, None)
        return job.arrived.popleft() if job.arrived else None

    def _window(self) -> int:
        job, workers = self._job, self._workers
        chunk = job.chunksize if job.chunksize != AUTO else job._size(None, workers)
        window = min(IN_FLIGHT_PER_WORKER * workers * int(chunk),
                     MAX_IN_FLIGHT_PER_WORKER * workers)
        carried = job.bytes_per_task()
        if carried:
            window = min(window, int(MAX_IN_FLIGHT_BYTES / carried))
        return max(2 * workers, window)

    def _feed_if_open(self) -> None:
        job = self._job
        if not (job.input_done or job.cancelled):
            self._feed()

    def _feed(self) -> None:
        """Read input until ``window`` items are out, counting those not yet yielded."""
        room = self._room()
        if room <= 0:
            return
        block: list[Any] = []
        failure: Exception | None = None
        try:
            # list.extend keeps what it read before an exception.
            block.extend(itertools.islice(self._source, room))
        except Exception as exc:
            # The input broke: its items so far still run, and their results
            # come first; then the consumer gets the input's error.
            failure = exc
        except BaseException:
            self._finish()
            raise
        self._accept(block, failure, room)

    def _room(self) -> int:
        """How many more items may be read now; notes when to feed again."""
        job = self._job
        window = self._window()
        room = window - (job.submitted - self._yielded())
        # Next time: once the items out are down to half the window.
        self._feed_at = job.submitted + max(room, 0) - window // 2
        return room

    def _accept(self, block: list[Any], failure: Exception | None, room: int) -> None:
        """Queue a block of input read for ``room``; a short block ends the input."""
        job = self._job
        with job.cond:
            if job.cancelled:
                return
            job.add(block)
            if failure is not None:
                job.cut_input(failure)
            elif len(block) < room:
                job.finish_input()
        self._engine.wake()

    def _finish(self) -> None:
        if not self._finished:
            self._finished = True
            self._values, self._failed, self._pos, self._stop = _EMPTY, None, 0, 0
            self._job.cancel()
            self._report.close()

    def close(self) -> None:
        """Stop: cancel the tasks that have not run."""
        self._finish()

    def __del__(self) -> None:
        # Left with ``break``, or dropped. No lock here: the garbage collector
        # may run this in a thread that holds the scheduler's lock. The flag
        # alone stops the job handing out tasks and keeping results; the
        # scheduler frees the rest at its next look.
        if not self._finished:
            self._finished = True
            self._job.cancelled = True
            self._job.scheduler.dropped.append(self._job)
