"""The scheduler: the queues of jobs an engine pulls batches from.

Single tasks (``submit``) and maps wait in separate queues, taken from in
turn. Quick single tasks of one function may leave together, as one batch
(process mode, where each batch costs a pipe round trip).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from .._core._weakcallables import WeakCallableMap
from ._jobs import (
    GROUP_SECONDS,
    MAX_GROUP,
    MIN_BATCH_SECONDS,
    TARGET_BATCH_SECONDS,
    TRACK_THRESHOLD_SECONDS,
    Batch,
    GroupJob,
    Job,
    ManyJob,
    OneJob,
)

__all__ = ["Scheduler", "Timings"]


class Timings:
    """Seconds per task, and bytes a task carries, of recently used functions.

    Used to group quick single tasks, and to size a map's first chunks from
    what the same function took (and carried) the last time. Functions are
    held weakly: timing a function never keeps it (or a bound method's
    object) alive.
    """

    CAPACITY = 256

    def __init__(self) -> None:
        self._times: WeakCallableMap[float] = WeakCallableMap(self.CAPACITY)
        self._bytes: WeakCallableMap[tuple[float | None, float | None]] = WeakCallableMap(
            self.CAPACITY)
        self._variations: WeakCallableMap[float] = WeakCallableMap(self.CAPACITY)

    def note_bytes(self, fn: Callable[..., Any], argument_bytes: float | None,
                   result_bytes: float | None) -> None:
        """Record what a task of ``fn`` carries each way (pickled bytes)."""
        self._bytes.set(fn, (argument_bytes, result_bytes))

    def bytes_of(self, fn: Callable[..., Any]) -> tuple[float | None, float | None]:
        """What a task of ``fn`` carried last time: (argument, result) bytes, if known."""
        return self._bytes.get(fn) or (None, None)

    def note(self, fn: Callable[..., Any], seconds: float, smooth: bool = True) -> None:
        """Record a measured time per task of ``fn`` (a moving average if ``smooth``)."""
        if smooth:
            before = self._times.get(fn)
            if before is not None:
                seconds = 0.7 * before + 0.3 * seconds
        self._times.set(fn, seconds)

    def of(self, fn: Callable[..., Any]) -> float | None:
        """The measured seconds per task of ``fn``, or ``None`` if unknown."""
        return self._times.get(fn)

    def note_variation(self, fn: Callable[..., Any], variation: float) -> None:
        """Record how much the task times of ``fn`` varied (coefficient of variation)."""
        self._variations.set(fn, variation)

    def variation_of(self, fn: Callable[..., Any]) -> float | None:
        """How much the task times of ``fn`` varied last time they were timed, if known."""
        return self._variations.get(fn)


class Scheduler:
    """The queues of jobs with work to hand out, shared by a pool and its engine.

    Single tasks (``submit``) and maps wait in separate queues, taken from in
    turn: a long map does not starve a ``submit`` made while it runs, and a
    busy worker that may only take map chunks never walks past thousands of
    waiting single tasks.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._singles: deque[Job] = deque()
        self._maps: deque[Job] = deque()
        self._queued: set[int] = set()
        self._singles_first = True
        self.timings = Timings()
        # Whether the engine sends queued single tasks of a quick function
        # together (process mode: it saves a pipe round trip each).
        self.groups_singles = True
        # About how much work a map's chunk holds once its task time is known
        # (see ManyJob._size): an engine whose batches cost more to send (a
        # cluster's scheduling, a millisecond or more each) asks for more.
        self.batch_seconds = TARGET_BATCH_SECONDS
        # ... and the least it holds: no shrinking tail of tiny batches below it.
        self.min_batch_seconds = MIN_BATCH_SECONDS
        # A chunk is at most what is left over this many times the workers:
        # 2 hedges against tasks of uneven length; 1 (plain guided
        # scheduling) makes half as many chunks, for engines whose every batch
        # costs a lot. Such an engine reports its tasks' times one by one
        # (ManyJob.note_task_times), and a map whose tasks vary goes back to
        # 2 (see _spread.py).
        self.cuts_per_worker = 2
        # Jobs whose input may still grow (an imap being consumed): an engine
        # that is draining must not stop while there are any.
        self.open_jobs: set[ManyJob] = set()
        # Set once the pool can run nothing more (its workers cannot start):
        # every waiting task, and any that comes back later, fails with it.
        self.broken: BaseException | None = None
        # The engine sets this to be told that work arrived (called unlocked).
        self.wake: Callable[[], None] = _nothing
        # Jobs whose consumer dropped them (an imap iterator collected by the
        # garbage collector, which may run in a thread that holds the lock:
        # appending needs none). Stopped at the scheduler's next look.
        self.dropped: deque[ManyJob] = deque()

    def activate(self, job: Job) -> None:
        """Put a job in line for workers (lock held)."""
        if id(job) not in self._queued:
            self._queued.add(id(job))
            (self._singles if isinstance(job, OneJob) else self._maps).append(job)

    def _stop_dropped(self) -> None:
        """Stop the jobs nobody consumes any more (lock held)."""
        while self.dropped:
            job = self.dropped.popleft()
            job._stop()
            job.forget_results()

    def take(self, limit: int | None, workers: int, single_ok: bool = True,
             group: bool = True) -> Batch | None:
        """The next batch for a worker with room for ``limit`` tasks (lock held).

        With ``single_ok=False`` single tasks are passed over: the worker is
        busy, and a task queued behind another one must stay cancellable.
        With ``group=False`` queued single tasks are never sent together.
        """
        if self.dropped:
            self._stop_dropped()
        first, second = self._singles, self._maps
        if not self._singles_first:
            first, second = second, first
        self._singles_first = not self._singles_first
        for queue in (first, second):
            if queue is self._singles and not single_ok:
                continue
            batch = self._take_from(queue, limit, workers)
            if batch is not None:
                if queue is self._singles and group:
                    return self._group(batch, limit)
                return batch
        return None

    def _group(self, batch: Batch, limit: int | None) -> Batch:
        """Add the next queued single tasks of the same quick function to ``batch``."""
        job = batch.job
        singles = self._singles
        per_task = self.timings.of(job.fn)
        if (per_task is None or not isinstance(job, OneJob) or batch.attempts
                or not singles or singles[0].fn is not job.fn):
            return batch
        room = min(MAX_GROUP, limit if limit is not None else MAX_GROUP,
                   int(GROUP_SECONDS / max(per_task, 1e-9)))
        members = [job]
        while len(members) < room and singles:
            nxt = singles[0]
            if nxt.fn is not job.fn or not isinstance(nxt, OneJob) or not nxt.fresh():
                break
            singles.popleft()
            self._queued.discard(id(nxt))
            if nxt.take(None, 1) is not None:  # marks it running; None if cancelled
                members.append(nxt)
        if len(members) == 1:
            return batch
        group = Batch(GroupJob(members), [m.item for m in members], range(len(members)))
        group.track = per_task * len(members) >= TRACK_THRESHOLD_SECONDS
        return group

    def _take_from(self, queue: deque[Job], limit: int | None, workers: int) -> Batch | None:
        for _ in range(len(queue)):
            job = queue.popleft()
            batch = job.take(limit, workers)
            if job.has_work():
                queue.append(job)  # maps take turns, one batch each
            else:
                self._queued.discard(id(job))
            if batch is not None:
                return batch
        return None

    def may_have_work(self) -> bool:
        """Whether any job is queued: a hint, read without the lock (it may have no work)."""
        return bool(self._singles or self._maps or self.dropped)

    def has_work(self) -> bool:
        """Whether any job has tasks waiting (lock held)."""
        for queue in (self._singles, self._maps):
            for job in queue:
                if job.has_work():
                    return True
        return False

    def idle(self) -> bool:
        """Whether nothing is waiting and nothing more can arrive (lock held)."""
        self._stop_dropped()
        return all(job.cancelled for job in self.open_jobs) and not self.has_work()

    def cancel_all(self) -> list[Job]:
        """Forget every waiting job and return them (lock held)."""
        jobs = [*self._singles, *self._maps]
        self._singles.clear()
        self._maps.clear()
        self._queued.clear()
        return jobs


def _nothing() -> None:
    return None
