"""Jobs and batches: what a pool call becomes, and how it is cut up for workers.

A *job* is one call on the pool: a ``submit`` (one task) or a ``map`` family
call (many tasks). A job does not cut its tasks into chunks up front: an
engine asks it for the next *batch* when a worker has room, and the job sizes
that batch from what it has measured so far (``chunksize="auto"``). That one
mechanism gives lazy input, bounded work in flight, adaptive chunks and small
chunks at the tail for load balance.

Engines call back into the job when a batch finishes (``deliver``), when one
task failed for a reason worth retrying (``fail``), or when tasks were lost
with a dead worker and must run again without being charged (``requeue``).

Locking: every job of a pool shares the scheduler's lock. ``take`` is called
with it held; ``deliver``, ``fail`` and ``requeue`` take it themselves and
resolve futures after releasing it, so callbacks never run under the lock.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable, Sequence
from contextvars import Context
from typing import Any, Final, Literal

from .._core._errors import PoolClosedError, TaskTimeoutError, WorkerCrashedError
from .._core._futures import Future
from .._core._serialization import describe
from ._describe import describe_call, name_of
from ._spread import TaskSpread, even_cut, likely_error

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._scheduler import Scheduler

__all__ = ["AUTO", "Batch", "Chunk", "GroupJob", "Job", "ManyJob", "OneJob", "set_exception",
           "set_result"]

AUTO: Final[Literal["auto"]] = "auto"

# A chunk is sized to take about this long on a worker: long enough that the
# per-batch cost (pickling, a pipe round trip, a wake-up) is noise, short
# enough that the tail of a map balances and progress moves smoothly.
TARGET_BATCH_SECONDS = 0.05
MIN_BATCH_SECONDS = 0.0005
# ... and to carry at most about this many bytes of arguments and results:
# big payloads (arrays) go one or a few at a time, so both workers get a fair
# share and neither waits behind a batch of hundreds of megabytes.
TARGET_BATCH_BYTES = 4 << 20
# Below this per-task time, marking each task's start would cost more than a
# few percent, so such batches run untracked (see _run.run_batch).
TRACK_THRESHOLD_SECONDS = 20e-6

# Queued single tasks of a function measured quicker than this are grouped
# into one batch of about this much work, at most MAX_GROUP tasks.
GROUP_SECONDS = 0.002
MAX_GROUP = 256

RETRYABLE = (WorkerCrashedError, TaskTimeoutError)

# The shared empty queue of a job that has nothing to run again: never appended
# to (Job._requeued() swaps in a deque of the job's own first).
_NO_BATCHES: deque[Any] = deque(maxlen=0)

# A chunk of an imap's outcomes: the values (None where a task failed), and
# each failed task's error by its position in the chunk (None: none failed).
Chunk = tuple[list[Any], "dict[int, BaseException] | None"]


class Batch:
    """Tasks of one job that travel to one worker together."""

    __slots__ = ("attempts", "indices", "items", "job", "segments", "seq", "track")

    def __init__(self, job: Job, items: list[Any], indices: Sequence[int],
                 attempts: int = 0) -> None:
        self.job = job
        self.items = items
        # Global task indices, one per item: a range for a fresh chunk, a list
        # for tasks that come back (retries, requeues).
        self.indices = indices
        self.attempts = attempts
        # Whether the worker marks each task's start (needed to blame the right
        # task for a crash or a timeout); the engine may force it on.
        self.track = job.per_task is None or job.per_task >= TRACK_THRESHOLD_SECONDS
        self.seq = 0  # set by the engine that sends it
        # Shared memory its items went through, for the engine to free if the
        # worker never reads them (see _core/_out_of_band).
        self.segments: Sequence[str] = ()

    @classmethod
    def single(cls, job: Job, item: Any, index: int, attempts: int = 0) -> Batch:
        """A batch of one task, tracked so that a crash or timeout names it."""
        batch = cls(job, [item], (index,), attempts)
        batch.track = True
        return batch

    def describe_task(self, local_index: int) -> str:
        """A short text naming a task, for errors."""
        return self.job.describe_task(self.indices[local_index], self.items[local_index])

    def split_off(self, keep: int) -> Batch:
        """Keep the first ``keep`` tasks; the others, as a batch of their own."""
        rest = Batch(self.job, self.items[keep:], self.indices[keep:], self.attempts)
        rest.track = self.track
        self.items, self.indices = self.items[:keep], self.indices[:keep]
        return rest


class Job:
    """Base of the two kinds of job. Engines see only this interface."""

    fn: Callable[..., Any]
    call: int
    per_task: float | None
    # The submitter's contextvars, for engines that run tasks in this process
    # (threads): each task runs in a copy of it. None: tasks do not see them.
    context: Context | None = None

    def __init__(self, scheduler: Scheduler, fn: Callable[..., Any], call: int,
                 retries: int) -> None:
        self.scheduler = scheduler
        self.fn = fn
        self.call = call
        self.retries = retries
        self.per_task = None  # measured seconds per task (moving average)
        # Measured pickled bytes per task (moving averages), where an engine pickles.
        self.argument_bytes: float | None = None
        self.result_bytes: float | None = None
        self.cancelled = False
        # Retries and requeued tasks, which go first; made when first needed
        # (most jobs never have any, and a submit should not pay for a deque).
        self._again: deque[Batch] = _NO_BATCHES

    # --- called by the scheduler, under its lock ----------------------------
    def take(self, limit: int | None, workers: int) -> Batch | None:
        """The next batch to run, at most ``limit`` tasks, or ``None``."""
        raise NotImplementedError

    def has_work(self) -> bool:
        """Whether ``take`` would return a batch now."""
        raise NotImplementedError

    # --- called by engines ---------------------------------------------------
    def deliver(self, batch: Batch, values: list[Any],
                errors: list[tuple[int, BaseException]] | None, elapsed: float) -> None:
        """A batch finished: ``values[i]`` for each task, except those in ``errors``."""
        raise NotImplementedError

    def fail(self, batch: Batch, local_index: int, error: BaseException) -> None:
        """One task of ``batch`` failed for the pool's reasons (crash, timeout)."""
        item, index = batch.items[local_index], batch.indices[local_index]
        if isinstance(error, RETRYABLE) and batch.attempts < self.retries and not self.cancelled:
            again = Batch.single(self, item, index, batch.attempts + 1)
            with self.scheduler.lock:
                self._requeued().append(again)
                self.scheduler.activate(self)
            self._woken()
            return
        self._fail_one(index, error)

    def _woken(self) -> None:
        """Tell the engine work came back, or fail it if the pool is broken."""
        broken = self.scheduler.broken
        if broken is not None:
            self.abort(broken)
        else:
            self.scheduler.wake()

    def requeue(self, batch: Batch, local_indices: Sequence[int], one_by_one: bool) -> None:
        """Run these tasks of ``batch`` again, without charging a retry.

        Used for tasks a dead worker had not started, or had finished without
        reporting. ``one_by_one`` sends each in a batch of its own, so a task
        that crashes its worker again is the only one to fail.
        """
        if not local_indices:
            return
        items = [batch.items[i] for i in local_indices]
        indices = [batch.indices[i] for i in local_indices]
        with self.scheduler.lock:
            if one_by_one:
                for item, index in zip(items, indices, strict=True):
                    self._requeued().append(Batch.single(self, item, index, batch.attempts))
            else:
                self._requeued().append(Batch(self, items, indices, batch.attempts))
            self.scheduler.activate(self)
        self._woken()

    def give_back(self, unstarted: Batch, parts: int) -> None:
        """Tasks a worker gave back unstarted, for idle workers: ahead of the rest, in
        ``parts`` batches (so that each idle worker gets a share), without charging
        a retry."""
        items, indices = unstarted.items, unstarted.indices
        size = max(1, -(-len(items) // parts))
        shares = [Batch(self, items[start:start + size], indices[start:start + size],
                        unstarted.attempts) for start in range(0, len(items), size)]
        for share in shares:
            share.track = unstarted.track
        with self.scheduler.lock:
            self._requeued().extendleft(reversed(shares))  # in order, before the others
            self.scheduler.activate(self)
        self._woken()

    def _requeued(self) -> deque[Batch]:
        """The queue of tasks to run again, made on first use (lock held)."""
        if self._again is _NO_BATCHES:
            self._again = deque()
        return self._again

    def abort(self, error: BaseException) -> None:
        """The pool stopped: fail whatever of this job has not finished."""
        raise NotImplementedError

    def describe_task(self, index: int, item: Any) -> str:
        """A short text naming a task, for errors."""
        return f"{name_of(self.fn)} task #{index} ({describe(item)})"

    def _fail_one(self, index: int, error: BaseException) -> None:
        raise NotImplementedError

    def _measure(self, n: int, elapsed: float) -> None:
        if n <= 0:
            return
        sample = elapsed / n
        self.per_task = sample if self.per_task is None else 0.7 * self.per_task + 0.3 * sample

    def note_task_times(self, count: int, total: float, squares: float) -> None:
        """``count`` tasks timed one by one took ``total`` seconds, squares summed (lock held).

        Engines that time each task (Ray) report every batch; only a map cuts
        its chunks by how much its tasks vary (ManyJob).
        """

    def note_bytes(self, tasks: int, nbytes: int, results: bool) -> None:
        """A batch of ``tasks`` carried ``nbytes`` of arguments (or results) (lock held).

        Engines that pickle (process mode) report both directions; the job
        sizes its batches, and an imap its window, by them.
        """
        if tasks <= 0:
            return
        sample = nbytes / tasks
        if results:
            before = self.result_bytes
            self.result_bytes = sample if before is None else 0.7 * before + 0.3 * sample
        else:
            before = self.argument_bytes
            self.argument_bytes = sample if before is None else 0.7 * before + 0.3 * sample

    def bytes_per_task(self) -> float:
        """Measured bytes a task carries each way together (0 if unknown)."""
        return (self.argument_bytes or 0.0) + (self.result_bytes or 0.0)


class OneJob(Job):
    """A single task with a Future: ``submit`` and ``apply_async``."""

    def __init__(self, scheduler: Scheduler, fn: Callable[..., Any], call: int, retries: int,
                 item: Any, future: Future[Any]) -> None:
        super().__init__(scheduler, fn, call, retries)
        self.item = item
        self.future = future
        self._pending = True

    def take(self, limit: int | None, workers: int) -> Batch | None:
        if self._again:
            return self._again.popleft()
        if not self._pending:
            return None
        self._pending = False
        if not self.future.set_running_or_notify_cancel():
            return None  # cancelled before it started
        return Batch.single(self, self.item, 0)

    def has_work(self) -> bool:
        return self._pending or bool(self._again)

    def fresh(self) -> bool:
        """Not started yet and not a retry (lock held)."""
        return self._pending and not self._again

    def deliver(self, batch: Batch, values: list[Any],
                errors: list[tuple[int, BaseException]] | None, elapsed: float) -> None:
        if self.scheduler.groups_singles:  # only grouping needs a single task's time
            self.scheduler.timings.note(self.fn, elapsed)
        if errors:
            set_exception(self.future, errors[0][1])
        else:
            set_result(self.future, values[0])

    def _fail_one(self, index: int, error: BaseException) -> None:
        set_exception(self.future, error)

    def describe_task(self, index: int, item: Any) -> str:
        """The call, as ``fn(args...)``, shortened."""
        args, kwargs = self.item
        return describe_call(self.fn, args, kwargs)

    def alone(self, batch: Batch) -> Batch:
        """``batch``'s task again, as a batch of this job's own (used by groups)."""
        return Batch.single(self, self.item, 0, batch.attempts)

    def abort(self, error: BaseException) -> None:
        with self.scheduler.lock:
            self.cancelled = True
            self._again = _NO_BATCHES
            self._pending = False
        set_exception(self.future, error)

    def cancel(self) -> None:
        """Cancel the task if it has not started (``shutdown(cancel_futures=True)``).

        A task waiting to be retried has started already, so its future cannot
        be cancelled; it fails with :class:`~bingfa.PoolClosedError` instead.
        """
        with self.scheduler.lock:
            self.cancelled = True
            retry_dropped = bool(self._again)
            self._again = _NO_BATCHES
            pending, self._pending = self._pending, False
        if pending:
            self.future.cancel()
        elif retry_dropped:
            set_exception(self.future, PoolClosedError(
                "the pool was shut down before the task's retry could run"))


class GroupJob(Job):
    """Several queued single tasks of one quick function, sent as one batch.

    A stream of tiny ``submit`` calls would otherwise cost a pipe round trip
    each. Only functions measured to be quick are grouped, so a task queued
    behind a slow one is never swept into a worker early and stays
    cancellable. Outcomes go back to each task's own job.
    """

    def __init__(self, members: list[OneJob]) -> None:
        first = members[0]
        super().__init__(first.scheduler, first.fn, first.call, first.retries)
        self.members = members

    def take(self, limit: int | None, workers: int) -> Batch | None:
        return None  # never queued itself

    def has_work(self) -> bool:
        return False

    def deliver(self, batch: Batch, values: list[Any],
                errors: list[tuple[int, BaseException]] | None, elapsed: float) -> None:
        self.scheduler.timings.note(self.fn, elapsed / max(1, len(values)))
        failed = dict(errors) if errors else {}
        for i, member in enumerate(self.members):
            err = failed.get(i)
            if err is not None:
                set_exception(member.future, err)
            else:
                set_result(member.future, values[i])

    def fail(self, batch: Batch, local_index: int, error: BaseException) -> None:
        member = self.members[local_index]
        member.fail(member.alone(batch), 0, error)

    def requeue(self, batch: Batch, local_indices: Sequence[int], one_by_one: bool) -> None:
        for i in local_indices:
            member = self.members[i]
            member.requeue(member.alone(batch), [0], one_by_one=True)

    def abort(self, error: BaseException) -> None:
        for member in self.members:
            member.abort(error)

    def describe_task(self, index: int, item: Any) -> str:
        return self.members[index].describe_task(0, item)


def set_result(future: Future[Any], value: Any) -> None:
    try:
        future.set_result(value)
    except Exception:  # InvalidStateError: terminate or a cancel settled it first
        pass


def set_exception(future: Future[Any], error: BaseException) -> None:
    try:
        future.set_exception(error)
    except Exception:
        pass


class ManyJob(Job):
    """Many tasks of one function: ``map``, ``imap``, ``imap_unordered``, ``starmap``.

    Items arrive in segments (all at once for ``map``, window by window for
    ``imap``). Outcomes are kept per the consumer's needs: a preallocated list
    for ``map``, a dict by index for ordered ``imap``, and arrival order for
    ``imap_unordered``.
    """

    def __init__(self, scheduler: Scheduler, fn: Callable[..., Any], call: int, retries: int,
                 chunksize: int | str, ordered: bool, size_hint: int | None,
                 dense: bool = False) -> None:
        super().__init__(scheduler, fn, call, retries)
        self.chunksize = chunksize
        self.ordered = ordered
        self.cond = threading.Condition(scheduler.lock)
        self._segments: deque[tuple[int, list[Any]]] = deque()  # (first index, items)
        self._seg_pos = 0  # position inside the head segment
        self.submitted = 0  # tasks added so far
        self.dispatched = 0
        self._batches = 0
        self.completed = 0
        self.input_done = False
        self.size_hint = size_hint
        # A function mapped before starts from what it took, and carried, then.
        self.per_task = scheduler.timings.of(fn)
        self.argument_bytes, self.result_bytes = scheduler.timings.bytes_of(fn)
        # How much its tasks' times vary, where an engine times each (Ray).
        self.spread = TaskSpread()
        # The chunk sizes of an even cut, chosen at the map's first cut for a
        # map timed steady (see _spread.py); None until then.
        self._even: deque[int] | None = None
        # Whether the consumer wants to hear of every finished batch (imap,
        # progress), or only of the end and of errors (map).
        self.wake_each = True
        self.first_error: tuple[int, BaseException] | None = None
        self.aborted: BaseException | None = None
        # Ordered results: ``map`` keeps a dense list of every result; ``imap``
        # a dict of those not yet handed to the consumer.
        self.slots: list[Any] | None = [None] * size_hint if dense and size_hint else None
        # Why the input was cut short (the pool shut down while an imap was
        # still reading it); the consumer gets it after the last result.
        self.input_error: BaseException | None = None
        scheduler.open_jobs.add(self)  # until its input ends
        # An imap's outcomes not yet taken by its consumer, a chunk at a time
        # (see _imap.py): by first index if ordered, else in arrival order.
        self.ready: dict[int, Chunk] = {}
        self.arrived: deque[Chunk] = deque()
        # Called once, without the lock, when the job ends: every task done,
        # an error, or the job stopped. ``map_async`` settles its result with
        # it, having no thread of its own that waits.
        self.on_end: Callable[[], None] | None = None
        # Called (lock held, any thread) whenever ``cond`` is notified: a
        # consumer in a coroutine cannot wait on a threading.Condition, so it
        # has this set its asyncio event instead (see _aimap.LoopWaker).
        self.on_notify: Callable[[], None] | None = None

    def _notify(self) -> None:
        """Wake whoever waits for this job's outcomes (lock held)."""
        self.cond.notify_all()
        if self.on_notify is not None:
            self.on_notify()

    # --- feeding (caller thread, lock held) ----------------------------------
    def add(self, items: list[Any], skip: int = 0) -> None:
        """Add a segment of items (lock held).

        ``skip``: the first items of a job's first segment are run elsewhere
        (an auto pool measured them): they count as done, and their slots
        stay ``None`` for the caller to fill. Cheaper than a copy without them.
        """
        if skip:
            assert not self.submitted, "only a job's first items can be skipped"
            assert skip < len(items), "a job with nothing to run is never made"
            self._seg_pos = skip
            self.dispatched = self.completed = skip
        if items:
            self._segments.append((self.submitted, items))
            self.submitted += len(items)
            self.scheduler.activate(self)

    def finish_input(self) -> None:
        """No more items will be added (lock held)."""
        self.input_done = True
        self._close_input()
        self._notify()

    def _close_input(self) -> None:
        self.scheduler.open_jobs.discard(self)

    def cut_input(self, error: BaseException) -> None:
        """Read no more input; the consumer gets ``error`` after the last result (lock held)."""
        if not self.input_done:
            self.input_error = error
            self.finish_input()

    # --- scheduling ------------------------------------------------------------
    def _size(self, limit: int | None, workers: int) -> int:
        if self.chunksize != AUTO:
            size = int(self.chunksize)
        else:
            # Guided self-scheduling: never more than a share of what is left
            # (so the tail shrinks and workers finish together), and about
            # TARGET_BATCH_SECONDS of work (the engine's batch_seconds) once the
            # task time is known.
            remaining = self.submitted - self.dispatched
            if self.size_hint is not None:
                remaining = self.size_hint - self.dispatched
            cuts = self.scheduler.cuts_per_worker
            share = max(1, math.ceil(remaining / (cuts * workers)))
            if self.per_task is None:
                # Not measured yet: 1, 2, 4, ... tasks, so a first result comes
                # back fast whatever a task costs.
                size = min(share, 1 << min(self._batches, 8))
            elif self._even_chunks(remaining, workers):
                assert self._even is not None
                size = self._even.popleft()
            else:
                per_task = max(self.per_task, 1e-9)
                # ... but not below MIN_BATCH_SECONDS of work (the engine's
                # min_batch_seconds), where a batch would cost more to send
                # than to run.
                floor = int(self.scheduler.min_batch_seconds / per_task)
                most = max(1, int(self.scheduler.batch_seconds / per_task))
                size = min(max(share, floor), most)
                if cuts == 1 and share < most and self._uneven(size, per_task):
                    # A chunk of what is left over the workers leaves nothing
                    # to balance it with if it runs long: cut over twice the
                    # workers (see _spread.py). A chunk held to the most work
                    # per batch leaves the rest of the map for that.
                    share = max(1, math.ceil(remaining / (2 * workers)))
                    size = min(max(share, floor), most)
            carried = self.bytes_per_task()
            if carried:
                size = min(size, max(1, int(TARGET_BATCH_BYTES / carried)))
        if limit is not None:
            size = min(size, limit)
        return max(1, size)

    def _even_chunks(self, remaining: int, workers: int) -> bool:
        """Whether the next chunk is one of an even cut of the whole map (see _spread.py).

        Chosen at the map's first cut, on an engine cutting once per worker,
        for a map of known length whose tasks were timed (in an earlier map of
        the function) and whose every worker's share would stray by less than
        the tail's least chunk; given up if this map's own tasks vary more.
        Whatever the cut leaves (a chunk held back by its size in bytes) goes
        the guided way.
        """
        if self._even is None:
            self._even = deque()
            if (self._batches == 0 and self.scheduler.cuts_per_worker == 1
                    and self.input_done and self.per_task is not None
                    and self._steady(math.ceil(remaining / workers), self.per_task)):
                sizes = even_cut(remaining, self.per_task, workers, self.scheduler.batch_seconds)
                if sizes[-1] * self.per_task >= self.scheduler.min_batch_seconds:
                    self._even.extend(sizes)
        if self._even and self.per_task is not None and not self._steady(
                math.ceil(remaining / workers), self.per_task):
            self._even.clear()
        return bool(self._even)

    def _steady(self, tasks: int, per_task: float) -> bool:
        """Whether ``tasks`` of this map were timed to stray by at most the least chunk."""
        error = self._likely_error(tasks, per_task)
        return error is not None and error <= self.scheduler.min_batch_seconds

    def _uneven(self, size: int, per_task: float) -> bool:
        """Whether a chunk of ``size`` tasks may stray by more than the tail's least chunk."""
        error = self._likely_error(size, per_task)
        return error is not None and error > self.scheduler.min_batch_seconds

    def _likely_error(self, tasks: int, per_task: float) -> float | None:
        """How far ``tasks`` of this map may stray from their estimate (see _spread.py).

        Judged by how much this map's tasks varied so far, or, before enough
        of them were timed, the last map of the same function; ``None`` if
        neither was timed.
        """
        variation = self.spread.variation()
        if variation is None:
            variation = self.scheduler.timings.variation_of(self.fn)
        return None if variation is None else likely_error(variation, tasks, per_task)

    def note_task_times(self, count: int, total: float, squares: float) -> None:
        self.spread.add(count, total, squares)
        variation = self.spread.variation()
        if variation is not None:
            self.scheduler.timings.note_variation(self.fn, variation)

    def take(self, limit: int | None, workers: int) -> Batch | None:
        if self.cancelled:
            return None
        if self._again:
            batch = self._again.popleft()
            if limit is not None and len(batch.items) > limit:
                rest = Batch(self, batch.items[limit:], batch.indices[limit:], batch.attempts)
                rest.track = batch.track
                self._requeued().appendleft(rest)
                batch.items, batch.indices = batch.items[:limit], batch.indices[:limit]
            return batch
        if not self._segments:
            return None
        size = self._size(limit, workers)
        first, seg = self._segments[0]
        start = self._seg_pos
        stop = min(len(seg), start + size)
        items = seg[start:stop] if (start or stop < len(seg)) else seg
        if stop >= len(seg):
            self._segments.popleft()
            self._seg_pos = 0
        else:
            self._seg_pos = stop
        self.dispatched += len(items)
        self._batches += 1
        return Batch(self, items, range(first + start, first + stop))

    def has_work(self) -> bool:
        return not self.cancelled and bool(self._segments or self._again)

    def outstanding(self) -> int:
        """Tasks added but not yet completed (lock held)."""
        return self.submitted - self.completed

    # --- outcomes ----------------------------------------------------------------
    def deliver(self, batch: Batch, values: list[Any],
                errors: list[tuple[int, BaseException]] | None, elapsed: float) -> None:
        with self.scheduler.lock:
            self._measure(len(values), elapsed)
            if self.per_task is not None:
                self.scheduler.timings.note(self.fn, self.per_task, smooth=False)
            if self.result_bytes is not None:
                self.scheduler.timings.note_bytes(self.fn, self.argument_bytes,
                                                  self.result_bytes)
            if errors:
                failed = dict(errors)
                for local, err in errors:
                    if self.first_error is None or batch.indices[local] < self.first_error[0]:
                        self.first_error = (batch.indices[local], err)
            else:
                failed = {}
            if not self.cancelled:  # nobody will take a cancelled job's results
                self._store(batch, values, failed)
            self.completed += len(values)
            self._progressed()
            end = self._ended()
        if end is not None:
            end()

    def _store(self, batch: Batch, values: list[Any], failed: dict[int, BaseException]) -> None:
        indices = batch.indices
        if self.slots is not None:  # map: only the values; errors end it (first_error)
            if isinstance(indices, range):
                self.slots[indices.start:indices.stop] = values
            else:
                for local, index in enumerate(indices):
                    self.slots[index] = values[local]
            return
        errors = failed or None
        if not self.ordered:
            self.arrived.append((values, errors))
        elif isinstance(indices, range):
            self.ready[indices.start] = (values, errors)
        else:  # tasks run again one by one (retries, a dead worker's): each is its own chunk
            for local, index in enumerate(indices):
                err = failed.get(local)
                self.ready[index] = ([values[local]], None if err is None else {0: err})

    def _fail_one(self, index: int, error: BaseException) -> None:
        with self.scheduler.lock:
            if self.first_error is None or index < self.first_error[0]:
                self.first_error = (index, error)
            if self.slots is None:
                chunk: Chunk = ([None], {0: error})
                if self.ordered:
                    self.ready[index] = chunk
                else:
                    self.arrived.append(chunk)
            self.completed += 1
            self._progressed()
            end = self._ended()
        if end is not None:
            end()

    def _ended(self) -> Callable[[], None] | None:
        """``on_end``, taken, if the job has just ended; else ``None`` (lock held)."""
        end = self.on_end
        if end is not None and (self.first_error is not None or self.cancelled or (
                self.input_done and self.completed >= self.submitted)):
            self.on_end = None
            return end
        return None

    def _progressed(self) -> None:
        """Wake the consumer if it has a reason to look (lock held).

        A ``map`` without a progress display only cares about the end or an
        error: waking it for every chunk would make it fight the thread that
        delivers results for the GIL.
        """
        if (self.wake_each or self.first_error is not None
                or (self.input_done and self.completed >= self.submitted)):
            self._notify()

    def cancel(self) -> None:
        """Stop handing out this job's tasks; results still in flight are dropped."""
        with self.scheduler.lock:
            self._stop()
            self.forget_results()
            end = self._ended()
        self.scheduler.wake()
        if end is not None:
            end()

    def abort(self, error: BaseException) -> None:
        with self.scheduler.lock:
            if self.first_error is None:
                self.first_error = (-1, error)
            self.aborted = error
            self._stop()
            end = self._ended()
        if end is not None:
            end()

    def forget_results(self) -> None:
        """Let go of results nobody will take (lock held)."""
        self.ready.clear()
        self.arrived.clear()

    def _stop(self) -> None:
        """Hand out nothing more and wake the consumer (lock held)."""
        self.cancelled = True
        self._segments.clear()
        self._again = _NO_BATCHES
        self._close_input()
        self._notify()
