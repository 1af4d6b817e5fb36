"""Gevent mode: tasks run as greenlets on the gevent hub of the pool's thread.

It needs ``gevent.monkey.patch_all()`` to have run first, as every gevent
program does: then the pool's waits (a ``Future``'s result, a ``map``) are
gevent waits that let the hub run the workers. Without it the caller would
block the hub and no greenlet could ever run, so the pool refuses to start.

Workers are greenlets started as work arrives, up to ``workers``, and kept
until the pool shuts down (a worker's ``initializer`` runs once). There is no
GIL to fight here and nothing runs at the same time, so the design is the
plainest one: a worker takes its next batch from the scheduler itself, and an
idle worker waits in the hub until whoever brings work hands it a batch (a
callback that switches into it).

A greenlet can be stopped where it waits: a task that outlives
``task_timeout``, a task a scope cancels (``stop_running``) and the tasks
running when the pool is terminated get an exception thrown into them at
their blocking call, so they really stop; their callers get
:class:`~bingfa.TaskTimeoutError`, ``CancelledError`` or
:class:`~bingfa.PoolClosedError`. A task that never yields to the hub (pure
computation) cannot be interrupted, and blocks every other greenlet meanwhile;
if it overruns ``task_timeout`` it still fails with ``TaskTimeoutError`` when
it returns, its result dropped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..._core import _context
from ..._core._context import CancelFlag, WorkerContext, set_thread_context
from ..._core._errors import (
    BackendUnavailableError,
    DeadlockError,
    TaskTimeoutError,
)
from .._batch import run_batch
from .._jobs import Batch, Job
from .._scheduler import Scheduler
from ._base import Engine, EngineConfig, initializer_error

__all__ = ["GeventEngine"]


class _Killed(BaseException):
    """Thrown into a task's greenlet to stop it; the task fails with ``_Worker.kill``.

    A ``BaseException``, so that a task's ``except Exception`` does not swallow it.
    """


def _import_gevent() -> Any:
    """The ``gevent`` module, once it is known to be installed and patched in.

    Raises:
        BackendUnavailableError: gevent is not installed.
        DeadlockError: ``gevent.monkey.patch_all()`` has not run, or ran after
            bingfa was imported.
    """
    try:
        # gevent ships no type information: it is used through Any here.
        import gevent  # type: ignore[import-untyped]
        import gevent.local  # type: ignore[import-untyped]
        import gevent.monkey  # type: ignore[import-untyped]
    except ImportError as exc:
        raise BackendUnavailableError(
            "mode='gevent' needs gevent, which is not installed: "
            "pip install 'bingfa[gevent]'", extra="gevent") from exc
    if not gevent.monkey.is_module_patched("threading"):
        raise DeadlockError(
            "mode='gevent' needs gevent's monkey-patching: put `from gevent import monkey; "
            "monkey.patch_all()` at the very start of the program, before other imports. "
            "Without it, waiting for a task would block the gevent hub, and no greenlet "
            "of the pool could ever run")
    if not isinstance(_context._thread_local, gevent.local.local):
        raise DeadlockError(
            "mode='gevent': bingfa was imported before gevent.monkey.patch_all() ran, so its "
            "locks and per-worker state are those of real threads, which greenlets would "
            "share or block on; call monkey.patch_all() first, then import bingfa")
    return gevent


class _Worker:
    __slots__ = ("batch", "ctx", "greenlet", "in_task", "kill", "mark", "replaced", "slot",
                 "tasks_done")

    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.ctx = WorkerContext(slot)
        self.greenlet: Any = None
        self.batch: Batch | None = None  # handed over or running
        self.in_task = False  # inside run_batch: where an exception may be thrown in
        # Why the running task is being stopped; the task fails with it.
        self.kill: BaseException | None = None
        self.replaced = False  # its slot has a new worker: its exit must not free it
        self.tasks_done = 0

        def mark(_: int) -> None:
            # Before each task of a multi-task batch: a stopped batch runs no further.
            if self.kill is not None:
                raise _Killed

        self.mark = mark


class GeventEngine(Engine):
    """Runs batches on up to ``workers`` greenlets of the creating thread's hub."""

    def __init__(self, scheduler: Scheduler, config: EngineConfig) -> None:
        gevent = _import_gevent()
        super().__init__(scheduler, config)
        self._gevent = gevent
        self._hub = gevent.get_hub()
        self._loop = self._hub.loop
        # The real thread's id: a call from another OS thread (a gevent
        # threadpool's, say) must reach the hub through its thread-safe door.
        self._get_ident = gevent.monkey.get_original("_thread", "get_ident")
        self._thread_id = self._get_ident()
        self._lock = scheduler.lock
        self._slots: list[_Worker | None] = [None] * config.workers
        self._free_slots = list(range(config.workers - 1, -1, -1))  # pop() gives 0, 1, ...
        self._idle: list[_Worker] = []  # waiting in the hub for work
        self._greenlets: set[Any] = set()
        self._draining = False
        self._terminated = False
        self._name = config.thread_name_prefix or f"bingfa-gevent-{id(self):x}"
        scheduler.wake = self.wake
        scheduler.groups_singles = False  # a greenlet has no round trip to save

    # --- engine protocol ---------------------------------------------------------
    def start(self) -> None:
        """Nothing to start: workers start as work arrives."""

    def wake(self) -> None:
        if self._get_ident() != self._thread_id:
            self._loop.run_callback_threadsafe(self.wake)
            return
        with self._lock:
            self._signal_work()

    def work_added(self) -> Callable[[], None] | None:
        if self._get_ident() != self._thread_id:
            return self.wake  # after the lock: it goes through the hub's thread-safe door
        self._signal_work()
        return None

    def shutdown(self, wait: bool) -> None:
        with self._lock:
            self._draining = True
            self._wake_all()
        if wait:
            self.join()

    def terminate(self) -> None:
        with self._lock:
            self._terminated = self._draining = True
            error, jobs = self.refuse_work()
            running: list[Job] = []
            for w in self._slots:
                if w is not None and w.batch is not None:
                    running.append(w.batch.job)
                    self._stop(w, error)
            self._wake_all()
        self.abort_jobs(jobs + running, error)
        if not self.join(timeout=self.config.kill_grace):
            # Tasks that caught the exception thrown into them and went on:
            # kill their greenlets wherever they wait now.
            me = self._gevent.getcurrent()
            for g in list(self._greenlets):
                if g is not me:
                    g.kill(block=False)
            self.join(timeout=self.config.kill_grace)

    def join(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        me = self._gevent.getcurrent()
        while True:
            with self._lock:
                greenlets = [g for g in self._greenlets if g is not me]
            if not greenlets:
                return True
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            self._gevent.joinall(greenlets, timeout=remaining)
            if deadline is not None and time.monotonic() >= deadline:
                with self._lock:
                    return not any(g is not me for g in self._greenlets)

    def stop_running(self, job: Job, error: BaseException) -> None:
        """Throw an exception into the greenlet running ``job``'s task; it fails with ``error``."""
        with self._lock:
            for w in self._slots:
                if w is not None and w.batch is not None and w.batch.job is job:
                    self._stop(w, error)

    # --- handing out work (lock held) ----------------------------------------------
    def _signal_work(self) -> None:
        """Work is waiting: hand it to idle workers, or start one if none is idle."""
        while self._idle and self.scheduler.has_work():
            w = self._idle.pop()
            batch = self._take(w)
            if batch is None:
                self._idle.append(w)
                return
            w.batch = batch
            self._soon(w.greenlet.switch, batch)
        if (self._free_slots and self.scheduler.has_work()
                and not (self._draining or self._terminated or self.broken is not None)):
            self._spawn(self._free_slots.pop())

    def _wake_all(self) -> None:
        """Let every idle worker look at the pool's state again."""
        while self._idle:
            w = self._idle.pop()
            self._soon(w.greenlet.switch, None)

    def _soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Have the hub call ``fn(*args)`` soon (from any OS thread)."""
        if self._get_ident() == self._thread_id:
            self._loop.run_callback(fn, *args)
        else:
            self._loop.run_callback_threadsafe(fn, *args)

    def _take(self, w: _Worker) -> Batch | None:
        if self.broken is not None or self._terminated:
            return None
        return self.scheduler.take(self._limit(w), self.workers, group=False)

    def _limit(self, w: _Worker) -> int | None:
        limit = 1 if self.config.task_timeout is not None else None
        cap = self.config.max_tasks_per_worker
        if cap is not None:
            left = cap - w.tasks_done
            limit = left if limit is None else min(limit, left)
        return limit

    def _stop(self, w: _Worker, error: BaseException) -> None:
        """Stop ``w``'s running batch, failing its task with ``error`` (lock held)."""
        if w.kill is not None:
            return
        w.kill = error
        if w.ctx.cancel_flag is None:
            w.ctx.cancel_flag = CancelFlag()  # for a task that catches the exception
        w.ctx.cancel_flag.set()
        # From the hub: the greenlet is then suspended where it waits.
        self._soon(self._throw, w, w.batch)

    def _throw(self, w: _Worker, batch: Batch | None) -> None:
        """(In the hub) throw into ``w`` if it still runs ``batch``."""
        if w.in_task and w.batch is batch and w.kill is not None:
            w.greenlet.throw(_Killed)

    def _expire(self, w: _Worker, batch: Batch, timeout: float) -> None:
        """(In the hub) ``batch``'s task overran ``task_timeout``: stop it."""
        if w.batch is batch:
            self._stop(w, self._timeout_error(batch, timeout))

    @staticmethod
    def _timeout_error(batch: Batch, timeout: float) -> TaskTimeoutError:
        task = batch.describe_task(0)
        return TaskTimeoutError(f"{task} did not finish within {timeout} s; its greenlet was "
                                "stopped", timeout=timeout, task=task)

    # --- workers -------------------------------------------------------------------
    def _spawn(self, slot: int) -> None:
        """Start a worker greenlet in ``slot`` (lock held)."""
        w = _Worker(slot)
        g = self._gevent.Greenlet(self._work, w)
        g.name = f"{self._name}_{slot}"
        w.greenlet = g
        self._slots[slot] = w
        self._greenlets.add(g)
        g.start()

    def _work(self, w: _Worker) -> None:
        set_thread_context(w.ctx)
        try:
            if self.config.initializer is not None:
                try:
                    w.ctx.state = self.config.initializer(*self.config.initargs)
                except BaseException as exc:
                    if isinstance(exc, self._gevent.GreenletExit):
                        raise  # killed (terminate): not the initializer's fault
                    self.break_pool(initializer_error(f"{type(exc).__name__}: {exc}"), exc)
                    return
            self._run(w)
        finally:
            set_thread_context(None)
            with self._lock:
                self._greenlets.discard(w.greenlet)
                if w in self._idle:
                    self._idle.remove(w)
                if not w.replaced:
                    self._slots[w.slot] = None
                    self._free_slots.append(w.slot)
                self._wake_all()

    def _next(self, w: _Worker) -> Batch | None:
        """The worker's next batch, waiting for one; ``None`` when it should exit."""
        while True:
            with self._lock:
                if self._terminated:
                    return None
                batch = self._take(w)
                if batch is not None:
                    w.batch = batch
                    if (self._idle or self._free_slots) and self.scheduler.has_work():
                        self._signal_work()  # more to do: an idle worker, or a new one
                    return batch
                if (self._draining and self.scheduler.idle()) or self.broken is not None:
                    self._wake_all()  # let the others see it too
                    return None
                self._idle.append(w)
            handed = self._hub.switch()  # until _signal_work or _wake_all switches back
            if isinstance(handed, Batch):
                return handed

    def _run(self, w: _Worker) -> None:
        timeout = self.config.task_timeout
        cap = self.config.max_tasks_per_worker
        while True:
            batch = self._next(w)
            if batch is None:
                return
            job = batch.job
            n = len(batch.items)
            timer = None
            if timeout is not None:
                timer = self._loop.timer(timeout)
                timer.start(self._expire, w, batch, timeout)
            t0 = time.perf_counter()
            errors: list[tuple[int, BaseException]] | None
            w.in_task = True
            try:
                if w.kill is not None:  # stopped between the hand-over and now
                    raise _Killed
                mark = w.mark if n > 1 and batch.track else None
                values, caught = run_batch(job.fn, batch.items, job.call, mark, job.context)
                errors = list(caught) if caught else None
                del caught
            except BaseException as exc:  # stopped between tasks, or the loop itself failed
                values = [None] * n
                errors = [(i, exc) for i in range(n)]
            finally:
                w.in_task = False
                if timer is not None:
                    timer.close()
            elapsed = time.perf_counter() - t0
            w.batch = None
            killed, w.kill = w.kill, None
            w.ctx.cancel_flag = None
            if killed is None and timeout is not None and elapsed > timeout:
                # It never yielded, so it could not be stopped; it still overran.
                killed = self._timeout_error(batch, timeout)
            if killed is not None:
                if self._terminated:
                    return  # terminate() failed the job already
                for i in range(n):
                    job.fail(batch, i, killed)
            else:
                job.deliver(batch, values, errors, elapsed)
            # An idle worker must not keep its last batch's arguments and
            # results (or the function) alive while it waits for the next.
            del batch, job, values, errors, killed
            w.tasks_done += n
            if cap is not None and w.tasks_done >= cap:
                with self._lock:  # retire: a fresh worker takes the slot
                    w.replaced = True
                    self._slots[w.slot] = None
                    if self._terminated:
                        self._free_slots.append(w.slot)
                    else:
                        self._spawn(w.slot)
                return
