"""Thread mode: tasks run on worker threads of this process.

Threads start as work arrives (as ``ThreadPoolExecutor``'s do), up to
``workers``: a pool of 10,000 that runs ten tasks costs eleven threads, the
eleventh a spare kept idle (see :meth:`ThreadEngine.hand_over`). An idle
worker waits on a lock of its own, and whoever brings work (a submitter, or a
worker that finished and found more) takes the next batch for it and hands
it over: the woken worker starts at once, without fighting the submitter for
the scheduler's lock. With a hundred workers that contention, not the work,
was the cost of a submit.

Threads cannot be interrupted, so a task that outlives ``task_timeout`` is
abandoned: its caller gets :class:`~bingfa.TaskTimeoutError` at once, its
cancel flag is set (``bf.cancelled()`` turns true), a fresh thread takes its
slot, and the stuck thread exits as soon as the task returns, dropping the
result. With a timeout each batch holds one task, so nothing else waits
behind a stuck one.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque

from ..._core._context import CancelFlag, WorkerContext, set_thread_context
from ..._core._errors import PoolClosedError, TaskTimeoutError
from ..._core._interrupts import start_without_sigint
from .._batch import run_batch
from .._jobs import Batch, Job, OneJob
from .._scheduler import Scheduler
from ._base import Engine, EngineConfig, initializer_error

__all__ = ["ThreadEngine"]

_LOOK = object()  # handed to an idle worker: no batch, look at the pool's state


class _Worker:
    __slots__ = ("abandoned", "batch", "ctx", "handoff", "replaced", "slot", "started",
                 "tasks_done", "thread", "wakeup")

    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.ctx = WorkerContext(slot)
        self.batch: Batch | None = None  # running (for the watchdog and terminate)
        self.started = 0.0
        self.abandoned = False
        self.replaced = False  # its slot has a new thread: its exit must not free it
        self.tasks_done = 0
        self.thread: threading.Thread | None = None
        # Held while the worker is idle; released by whoever hands it work.
        self.wakeup = threading.Lock()
        self.wakeup.acquire()
        self.handoff: Batch | object | None = None


class ThreadEngine(Engine):
    """Runs batches on up to ``workers`` threads."""

    def __init__(self, scheduler: Scheduler, config: EngineConfig) -> None:
        super().__init__(scheduler, config)
        self._lock = scheduler.lock
        self._watch = threading.Condition(scheduler.lock)
        self._slots: list[_Worker | None] = [None] * config.workers
        self._free_slots = list(range(config.workers - 1, -1, -1))  # pop() gives 0, 1, ...
        # Waiting for work; the one idle longest is woken first (see hand_over).
        self._idle: deque[_Worker] = deque()
        self._live = 0  # worker threads not abandoned
        self._threads: set[threading.Thread] = set()
        self._abandoned: set[threading.Thread] = set()
        self._draining = False
        self._terminated = False
        self._watchdog: threading.Thread | None = None
        self._name = config.thread_name_prefix or f"bingfa-thread-{id(self):x}"
        scheduler.wake = self.wake
        scheduler.groups_singles = False  # a thread has no round trip to save
        self._hand_over = config.task_timeout is None and config.max_tasks_per_worker is None
        # A spare thread would run the initializer too (load a model, open a
        # connection): only without one is a spare free.
        self._spares = config.initializer is None
        self._direct: queue.SimpleQueue[OneJob] = queue.SimpleQueue()

    # --- engine protocol ---------------------------------------------------------
    def start(self) -> None:
        if self.config.task_timeout is not None:
            with self._lock:
                self._watchdog = threading.Thread(
                    target=self._watch_timeouts, name=f"{self._name}-watchdog", daemon=True)
                self._threads.add(self._watchdog)
                start_without_sigint(self._watchdog)

    def wake(self) -> None:
        with self._lock:
            self._signal_work()

    def work_added(self) -> None:
        self._signal_work()
        return None

    def shutdown(self, wait: bool) -> None:
        with self._lock:
            self._draining = True
            self._wake_all()
            self._watch.notify_all()
        if wait:
            self.join()

    def terminate(self) -> None:
        with self._lock:
            self._terminated = self._draining = True
            error, jobs = self.refuse_work()
            jobs.extend(self._take_direct())
            running: list[Job] = []
            for w in self._slots:
                if w is not None and w.batch is not None:
                    running.append(w.batch.job)
                    self._abandon(w)
            self._wake_all()
            self._watch.notify_all()
        self.abort_jobs(jobs + running, error)
        # Threads stuck in a task cannot be stopped; they are daemons and exit
        # when the task returns. Wait briefly for the others.
        self.join(timeout=self.config.kill_grace)

    def join(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                threads = [t for t in self._threads if t is not threading.current_thread()]
            # Threads abandoned in a task that timed out or was terminated are
            # not waited for: they may never return, and they drop out of
            # _threads when they do.
            threads = [t for t in threads if t not in self._abandoned]
            if not any(t.is_alive() for t in threads):
                return True
            for t in threads:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                t.join(remaining)
            if deadline is not None and time.monotonic() >= deadline:
                return not any(t.is_alive() for t in threads)

    # --- handing out work (lock held) ----------------------------------------------
    def _signal_work(self) -> None:
        """Work is waiting: hand it to an idle worker, or start one if none is idle."""
        while self._idle and self.scheduler.has_work():
            w = self._idle.popleft()
            batch = self._take(w)
            if batch is None:
                self._idle.appendleft(w)
                return
            self._assign(w, batch)
            w.handoff = batch
            w.wakeup.release()
        if (self._free_slots and self.scheduler.has_work()
                and not (self._draining or self._terminated or self.broken is not None)):
            self._spawn(self._free_slots.pop())

    def _wake_all(self) -> None:
        """Let every idle worker look at the pool's state again."""
        # pop(), not a loop over the list: hand_over() pops idle workers
        # without the lock, and a worker must be woken exactly once.
        while True:
            try:
                w = self._idle.pop()
            except IndexError:
                return
            w.handoff = _LOOK
            w.wakeup.release()

    def hand_over(self, job: OneJob) -> bool:
        """Take a new single task without the scheduler's lock; whether it was taken.

        An idle worker gets it at once; otherwise it waits in a queue of its
        own that workers read as they finish (``queue.SimpleQueue``, whose
        operations are atomic under the GIL). A stream of submits to a busy
        pool then costs no lock that a hundred workers fight over: under the
        GIL a contended lock convoys, its holder waiting behind every other
        thread for its turn. Only without a timeout or a task cap, whose
        bookkeeping needs the lock.

        The worker idle longest is woken, and when none is left idle a spare
        is started (room permitting, and without an initializer, which the
        spare would run for nothing): calls made one at a time take turns on
        two threads. Waking the thread that has just answered cost twice as
        much on a 2-vCPU VM: a Twisted reactor handing calls one at a time to
        a thread through a bare lock took 58 µs a round trip, to two threads
        taking turns 29 µs (most likely the scheduler put the one thread back
        on the CPU that had just gone idle, and a VM wakes an idle CPU slowly).
        """
        if not self._hand_over:
            return False
        try:
            # atomic: each idle worker is taken once (the test first spares
            # the cost of an exception when none is idle, the common case)
            w = self._idle.popleft() if self._idle else None
        except IndexError:
            w = None
        if w is None:
            self._direct.put(job)
            self._after_queueing()
            return True
        batch = job.take(None, 1)  # marks it running; None if already cancelled
        if batch is None:
            self._idle.appendleft(w)
            return True
        w.batch = w.handoff = batch
        w.wakeup.release()
        if not self._idle and self._free_slots and self._spares:
            self._start_spare()
        return True

    def _start_spare(self) -> None:
        """Start one more worker, to wait idle beside the busy ones."""
        with self._lock:
            if (self._free_slots and not self._idle
                    and not (self._draining or self._terminated or self.broken is not None)):
                self._spawn(self._free_slots.pop())

    def _after_queueing(self) -> None:
        """A task was queued for whoever finishes next: make sure someone will."""
        try:
            # It went idle after our look: let it look again.
            w = self._idle.popleft() if self._idle else None
        except IndexError:
            w = None
        if w is not None:
            w.handoff = _LOOK
            w.wakeup.release()
        elif self._free_slots or self._live == 0 or self._terminated or self.broken is not None:
            with self._lock:
                self._settle_direct()

    def _settle_direct(self) -> None:
        """Queued single tasks need a worker, or must fail (lock held)."""
        broken = self.broken
        if self._terminated or broken is not None:
            error = broken if broken is not None else PoolClosedError(
                "the pool was terminated before the task started")
            for job in self._take_direct():
                job.abort(error)
        elif self._free_slots and not self._direct.empty():
            self._spawn(self._free_slots.pop())

    def _take_direct(self) -> list[OneJob]:
        """Everything in the queue of single tasks, taken out of it."""
        jobs = []
        while True:
            try:
                jobs.append(self._direct.get_nowait())
            except queue.Empty:
                return jobs

    def drop_queued(self) -> list[Job]:
        jobs: list[Job] = list(self._take_direct())
        return jobs

    def _worth_a_look(self, w: _Worker) -> bool:
        """Whether the pool's state may need this worker (read without the lock: a hint)."""
        return (self.scheduler.may_have_work() or not self._direct.empty() or self._draining
                or self._terminated or w.abandoned or self.broken is not None)

    def _take(self, w: _Worker) -> Batch | None:
        if self.broken is not None or self._terminated:
            return None
        return self.scheduler.take(self._limit(w), self.workers, group=False)

    def _assign(self, w: _Worker, batch: Batch) -> None:
        w.batch = batch
        if self.config.task_timeout is not None:
            w.started = time.monotonic()
            w.ctx.cancel_flag = CancelFlag()
            self._watch.notify()

    def _limit(self, w: _Worker) -> int | None:
        limit = 1 if self.config.task_timeout is not None else None
        cap = self.config.max_tasks_per_worker
        if cap is not None:
            left = cap - w.tasks_done
            limit = left if limit is None else min(limit, left)
        return limit

    # --- workers -------------------------------------------------------------------
    def _spawn(self, slot: int) -> None:
        """Start a worker thread in ``slot`` (lock held)."""
        w = _Worker(slot)
        t = threading.Thread(target=self._work, args=(w,), name=f"{self._name}_{slot}", daemon=True)
        w.thread = t
        try:
            start_without_sigint(t)
        except RuntimeError as exc:  # "can't start new thread": a system limit
            self._free_slots.append(slot)
            if self._live == 0:
                # Nothing could ever run the work: fail it rather than hang.
                self.scheduler.broken = initializer_error(
                    f"the pool cannot start a thread ({exc}); ask for fewer workers")
                self._wake_all()
            return
        self._slots[slot] = w
        self._threads.add(t)
        self._live += 1

    def _work(self, w: _Worker) -> None:
        set_thread_context(w.ctx)
        try:
            if self.config.initializer is not None:
                try:
                    w.ctx.state = self.config.initializer(*self.config.initargs)
                except BaseException as exc:
                    self.break_pool(initializer_error(f"{type(exc).__name__}: {exc}"), exc)
                    return
            self._loop(w)
        finally:
            set_thread_context(None)
            me = threading.current_thread()
            with self._lock:
                self._threads.discard(me)
                self._abandoned.discard(me)
                if w in self._idle:
                    self._idle.remove(w)
                if not w.replaced:
                    self._slots[w.slot] = None
                    self._free_slots.append(w.slot)
                    self._live -= 1
                self._wake_all()
                self._watch.notify_all()

    def _next(self, w: _Worker) -> Batch | None:
        """The worker's next batch, waiting for one; ``None`` when it should exit."""
        while True:
            if self._hand_over and not (w.abandoned or self._terminated) and (
                    not self._direct.empty()):
                try:
                    job = self._direct.get_nowait()
                except queue.Empty:
                    pass  # another worker took it
                else:
                    batch = job.take(None, 1)  # None if it was cancelled meanwhile
                    if batch is not None:
                        w.batch = batch
                        return batch
                    continue
            if self._hand_over and not self._worth_a_look(w):
                # Nothing queued, it seems: go idle without the lock, then look
                # again. Whoever queues work after that look finds this worker
                # idle and hands it over; work queued before it is seen now.
                self._idle.append(w)
                if self._worth_a_look(w):
                    try:
                        self._idle.remove(w)
                    except ValueError:
                        pass  # taken meanwhile: its hand-over is on the way
                    else:
                        continue  # look under the lock
                w.wakeup.acquire()
                handed, w.handoff = w.handoff, None
                if isinstance(handed, Batch):
                    return handed
                continue
            with self._lock:
                if w.abandoned or self._terminated:
                    return None
                batch = self._take(w)
                if batch is not None:
                    self._assign(w, batch)
                    if (self._idle or self._free_slots) and self.scheduler.has_work():
                        self._signal_work()  # more to do: an idle worker, or a new one
                    return batch
                if ((self._draining and self.scheduler.idle() and self._direct.empty())
                        or self.broken is not None):
                    self._wake_all()  # let the others see it too
                    return None
                self._idle.append(w)
            w.wakeup.acquire()  # until someone hands over a batch, or says look again
            handed, w.handoff = w.handoff, None
            if isinstance(handed, Batch):
                return handed

    def _loop(self, w: _Worker) -> None:
        timeout = self.config.task_timeout
        while True:
            batch = self._next(w)
            if batch is None:
                return
            n = len(batch.items)
            job = batch.job
            t0 = time.perf_counter()
            errors: list[tuple[int, BaseException]] | None
            try:
                values, caught = run_batch(job.fn, batch.items, job.call, None, job.context)
                errors = list(caught) if caught else None
                del caught
            except BaseException as exc:  # a failure of the loop itself: fail the batch
                values = [None] * n
                errors = [(i, exc) for i in range(n)]
            elapsed = time.perf_counter() - t0
            if timeout is not None:
                # Under the lock: the watchdog must not abandon a worker that
                # has just finished, nor this worker deliver a task timed out.
                with self._lock:
                    w.ctx.cancel_flag = None
                    w.batch = None
                    abandoned = w.abandoned
            else:
                # No watchdog: only terminate() abandons, and then the job has
                # failed already, so a result delivered anyway is dropped.
                w.ctx.cancel_flag = None
                w.batch = None
                abandoned = w.abandoned
            if abandoned:
                return  # the caller has its error; a new thread has the slot
            job.deliver(batch, values, errors, elapsed)
            # An idle worker must not keep its last batch's arguments and
            # results (or the function) alive while it waits for the next.
            del batch, job, values, errors
            w.tasks_done += n
            cap = self.config.max_tasks_per_worker
            if cap is not None and w.tasks_done >= cap:
                with self._lock:  # retire: a fresh thread takes the slot
                    w.replaced = True
                    self._slots[w.slot] = None
                    self._live -= 1
                    if self._terminated:
                        self._free_slots.append(w.slot)
                    else:
                        self._spawn(w.slot)
                return

    def _watch_timeouts(self) -> None:
        timeout = self.config.task_timeout
        assert timeout is not None
        while True:
            expired: list[Batch] = []
            with self._watch:
                if self._terminated:
                    return
                now = time.monotonic()
                earliest: float | None = None
                busy = False
                for w in self._slots:
                    if w is None or w.batch is None:
                        continue
                    busy = True
                    deadline = w.started + timeout
                    if deadline <= now:
                        self._abandon(w)
                        expired.append(w.batch)
                        self._spawn(w.slot)
                    elif earliest is None or deadline < earliest:
                        earliest = deadline
                if not expired:
                    if self._draining and not busy and not self._threads_working():
                        return
                    self._watch.wait(None if earliest is None else earliest - now)
            for batch in expired:
                err = TaskTimeoutError(
                    f"{batch.describe_task(0)} did not finish within {timeout} s "
                    "(the thread cannot be interrupted; the task can poll bingfa.cancelled())",
                    timeout=timeout, task=batch.describe_task(0))
                batch.job.fail(batch, 0, err)

    def stop_running(self, job: OneJob, error: BaseException) -> None:
        """A thread cannot be stopped: raise the flag its task reads with bf.cancelled()."""
        with self._lock:
            for w in self._slots:
                if w is not None and w.batch is not None and w.batch.job is job:
                    if w.ctx.cancel_flag is None:
                        w.ctx.cancel_flag = CancelFlag()  # dropped when the task ends
                    w.ctx.cancel_flag.set()

    def _abandon(self, w: _Worker) -> None:
        """Give up on a worker stuck in a task (lock held)."""
        if not w.replaced:
            self._live -= 1
        w.abandoned = w.replaced = True
        if w.ctx.cancel_flag is None:
            # Without a timeout no flag is made per task: the task reads this one.
            w.ctx.cancel_flag = CancelFlag()
        w.ctx.cancel_flag.set()
        if w.thread is not None:
            self._abandoned.add(w.thread)

    def _threads_working(self) -> bool:
        return any(t.is_alive() for t in self._threads
                   if t is not self._watchdog and t is not threading.current_thread()
                   and t not in self._abandoned)

