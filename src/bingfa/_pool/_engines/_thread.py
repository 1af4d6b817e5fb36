"""Thread mode: tasks run on worker threads of this process.

Threads cannot be interrupted, so a task that outlives ``task_timeout`` is
abandoned: its caller gets :class:`~bingfa.TaskTimeoutError` at once, its
cancel flag is set (``bf.cancelled()`` turns true), a fresh thread takes its
slot, and the stuck thread exits as soon as the task returns, dropping the
result. With a timeout each batch holds one task, so nothing else waits
behind a stuck one.
"""

from __future__ import annotations

import threading
import time

from ..._core._context import CancelFlag, WorkerContext, set_thread_context
from ..._core._errors import PoolClosedError, TaskTimeoutError
from .._batch import run_batch
from .._jobs import Batch, Job, Scheduler
from ._base import Engine, EngineConfig, initializer_error

__all__ = ["ThreadEngine"]


class _Worker:
    __slots__ = ("abandoned", "batch", "ctx", "slot", "started", "tasks_done", "thread")

    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.ctx = WorkerContext(slot)
        self.batch: Batch | None = None
        self.started = 0.0
        self.abandoned = False
        self.tasks_done = 0
        self.thread: threading.Thread | None = None


class ThreadEngine(Engine):
    """Runs batches on ``workers`` threads."""

    def __init__(self, scheduler: Scheduler, config: EngineConfig) -> None:
        super().__init__(scheduler, config)
        self._cond = threading.Condition(scheduler.lock)
        self._watch = threading.Condition(scheduler.lock)
        self._slots: list[_Worker | None] = [None] * config.workers
        self._threads: set[threading.Thread] = set()
        self._abandoned: set[threading.Thread] = set()
        self._draining = False
        self._terminated = False
        self._watchdog: threading.Thread | None = None
        self._name = config.thread_name_prefix or f"bingfa-thread-{id(self):x}"
        scheduler.wake = self.wake

    # --- engine protocol ---------------------------------------------------------
    def start(self) -> None:
        with self.scheduler.lock:
            for slot in range(self.workers):
                self._spawn(slot)
            if self.config.task_timeout is not None:
                self._watchdog = threading.Thread(
                    target=self._watch_timeouts, name=f"{self._name}-watchdog", daemon=True)
                self._threads.add(self._watchdog)
                self._watchdog.start()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify()

    def shutdown(self, wait: bool) -> None:
        with self._cond:
            self._draining = True
            self._cond.notify_all()
            self._watch.notify_all()
        if wait:
            self.join()

    def terminate(self) -> None:
        error = PoolClosedError("the pool was terminated before the task finished")
        with self._cond:
            self._terminated = self._draining = True
            if self.scheduler.broken is None:
                self.scheduler.broken = error  # late retries fail at once
            jobs = self.scheduler.cancel_all()
            running: list[Job] = []
            for w in self._slots:
                if w is not None and w.batch is not None:
                    running.append(w.batch.job)
                    self._abandon(w)
            self._cond.notify_all()
            self._watch.notify_all()
        self.abort_jobs(jobs + running, error)
        # Threads stuck in a task cannot be stopped; they are daemons and exit
        # when the task returns. Wait briefly for the others.
        self.join(timeout=self.config.kill_grace)

    def join(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._cond:
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

    # --- workers -------------------------------------------------------------------
    def _spawn(self, slot: int) -> None:
        """Start a worker thread in ``slot`` (lock held)."""
        w = _Worker(slot)
        self._slots[slot] = w
        t = threading.Thread(target=self._work, args=(w,), name=f"{self._name}_{slot}", daemon=True)
        w.thread = t
        self._threads.add(t)
        t.start()

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
            with self._cond:
                self._threads.discard(threading.current_thread())
                self._abandoned.discard(threading.current_thread())
                self._cond.notify_all()
                self._watch.notify_all()

    def _limit(self, w: _Worker) -> int | None:
        limit = 1 if self.config.task_timeout is not None else None
        cap = self.config.max_tasks_per_worker
        if cap is not None:
            left = cap - w.tasks_done
            limit = left if limit is None else min(limit, left)
        return limit

    def _loop(self, w: _Worker) -> None:
        sched = self.scheduler
        timeout = self.config.task_timeout
        while True:
            with self._cond:
                while True:
                    if w.abandoned or self._terminated:
                        return
                    batch = None
                    if self.broken is None:
                        batch = sched.take(self._limit(w), self.workers)
                    if batch is not None:
                        if sched.has_work():
                            self._cond.notify()  # more to do: wake the next idle worker
                        break
                    if (self._draining and sched.idle()) or self.broken is not None:
                        self._cond.notify_all()  # let the others see the drain too
                        return
                    self._cond.wait()
                w.batch = batch
                w.started = time.monotonic()
                flag = CancelFlag()
                w.ctx.cancel_flag = flag
                if timeout is not None:
                    self._watch.notify()
            n = len(batch.items)
            job = batch.job
            t0 = time.perf_counter()
            errors: list[tuple[int, BaseException]] | None
            try:
                values, caught = run_batch(job.fn, batch.items, job.call)
                errors = list(caught) if caught else None
                del caught
            except BaseException as exc:  # SystemExit and friends: fail the batch
                values = [None] * n
                errors = [(i, exc) for i in range(n)]
            elapsed = time.perf_counter() - t0
            with self._cond:
                w.ctx.cancel_flag = None
                w.batch = None
                if w.abandoned:
                    return  # timed out: the caller has its error, a new thread has the slot
            job.deliver(batch, values, errors, elapsed)
            # An idle worker must not keep its last batch's arguments and
            # results (or the function) alive while it waits for the next.
            del batch, job, values, errors
            w.tasks_done += n
            cap = self.config.max_tasks_per_worker
            if cap is not None and w.tasks_done >= cap:
                with self._cond:
                    if not self._terminated:
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

    def _abandon(self, w: _Worker) -> None:
        """Give up on a worker stuck in a task (lock held)."""
        w.abandoned = True
        if w.ctx.cancel_flag is not None:
            w.ctx.cancel_flag.set()
        if w.thread is not None:
            self._abandoned.add(w.thread)

    def _threads_working(self) -> bool:
        return any(t.is_alive() for t in self._threads
                   if t is not self._watchdog and t is not threading.current_thread()
                   and t not in self._abandoned)

