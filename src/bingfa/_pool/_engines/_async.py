"""Async mode: tasks are coroutines, run on one event loop, at most ``workers`` at once.

A pool made inside a running event loop (``async with bf.Pool(mode="async")``)
runs its coroutines on that loop; one made from plain code runs a loop of its
own on a thread of its own (uvloop's when it is installed), so ``pool.map``
from a script works as in the other modes.

Each batch the scheduler hands out runs as one asyncio task that awaits its
coroutines one after the other, so ``workers`` batches in flight are
``workers`` coroutines at once. Batches are sized from measured task times
as in the other modes: a map of 100,000 trivial coroutines costs an asyncio
task per chunk rather than per coroutine, while a map of slow fetches goes a
few at a time, so every slot stays busy. The coroutines of one batch share
one copy of the submitter's contextvars.

Unlike a thread, a coroutine can be stopped: one that outlives
``task_timeout`` is cancelled at its current ``await`` and fails with
:class:`~bingfa.TaskTimeoutError` (each batch then holds one task), and a stop
(a scope's cancel, or the Future of ``submit`` cancelled while it runs)
cancels it likewise.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from typing import Any

from ..._async._loops import new_event_loop
from ..._core._context import WorkerContext, set_thread_context
from ..._core._errors import DeadlockError, PoolClosedError, TaskTimeoutError
from ..._core._own_frames import without_own_frames
from ..._scope._loop_thread import LoopThread
from .._batch import call_one
from .._jobs import Batch, Job, OneJob
from .._scheduler import Scheduler
from ._base import Engine, EngineConfig, initializer_error

__all__ = ["AsyncEngine"]


class AsyncEngine(Engine):
    """Runs batches of coroutines as asyncio tasks, at most ``workers`` at once."""

    def __init__(self, scheduler: Scheduler, config: EngineConfig) -> None:
        super().__init__(scheduler, config)
        if config.max_tasks_per_worker is not None:
            raise ValueError("max_tasks_per_worker has no meaning in mode='async': its "
                             "coroutines share one event loop, and no worker is replaced")
        self._lock = scheduler.lock
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        name = config.thread_name_prefix or f"bingfa-async-{id(self):x}"
        self._own: LoopThread | None = None
        if loop is None:
            self._own = LoopThread(name, new_event_loop())
            loop = self._own.loop
            self._loop_ident = self._own.ident
        else:
            self._loop_ident = threading.get_ident()
        self.loop = loop
        # Running batches by their asyncio task; touched on the loop only
        # (other threads read a snapshot, which the GIL keeps whole).
        self._running: dict[asyncio.Task[None], Batch] = {}
        # Why a running task was cancelled by stop_running: its batch records
        # this error instead of ending (set on the loop).
        self._stops: dict[asyncio.Task[None], BaseException] = {}
        self._fill_scheduled = False
        self._ready = config.initializer is None
        self._draining = False
        self._terminated = False
        self._stopped = threading.Event()
        self._on_stopped: list[asyncio.Future[None]] = []  # wait_stopped's waiters
        self._limit = 1 if config.task_timeout is not None else None
        scheduler.wake = self.wake
        scheduler.groups_singles = False

    # --- engine protocol ---------------------------------------------------------
    def start(self) -> None:
        if not self._ready:
            self._call_on_loop(self._start_initializer)

    def check_can_wait(self) -> None:
        if self._stopped.is_set():
            return
        if self.loop.is_closed():
            # Closed under the pool (asyncio.run ended with the pool open):
            # what was left can never run; fail it rather than wait for it.
            self._loop_gone()
            return
        if threading.get_ident() == self._loop_ident:
            raise DeadlockError(
                "this async pool runs its coroutines on the event loop of this thread, so "
                "waiting for them here would block them forever; inside a coroutine use the "
                "async faces: await pool.amap(...), async for ... in pool.aimap(...), "
                "await pool.submit(...), async with bf.Pool(...)")

    def wake(self) -> None:
        if self._fill_scheduled:
            return  # a fill is due and will see this work: it takes under the lock
        self._fill_scheduled = True
        self._call_on_loop(self._fill)

    def shutdown(self, wait: bool) -> None:
        self._draining = True
        if wait:
            self.check_can_wait()
        self._call_on_loop(self._fill)
        if wait:
            self.join()

    def terminate(self) -> None:
        with self._lock:
            self._terminated = self._draining = True
            error, jobs = self.refuse_work()
        jobs.extend(batch.job for batch in list(self._running.values()))
        self.abort_jobs(jobs, error)
        if threading.get_ident() == self._loop_ident:
            self._cancel_running()
        else:
            self._call_on_loop(self._cancel_running)
            self.join(timeout=self.config.kill_grace)

    def join(self, timeout: float | None = None) -> bool:
        if threading.get_ident() == self._loop_ident:
            return self._stopped.is_set()
        if not self._stopped.wait(timeout):
            return False
        if self._own is not None:
            self._own.close()
        return True

    def stop_running(self, job: OneJob, error: BaseException) -> None:
        """Cancel the coroutine running ``job``'s task; the task fails with ``error``."""
        self._call_on_loop(self._stop_job, job, error)

    async def wait_stopped(self) -> None:
        """Wait, on the pool's own loop, until every task has finished and nothing is left."""
        if self._stopped.is_set():
            return
        done = self.loop.create_future()
        self._on_stopped.append(done)
        await done

    # --- on the loop ------------------------------------------------------------
    def _call_on_loop(self, fn: Any, *args: Any) -> None:
        try:
            if threading.get_ident() == self._loop_ident:
                self.loop.call_soon(fn, *args)
            else:
                self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: nothing can run any more
            self._loop_gone()

    def _loop_gone(self) -> None:
        """The loop closed under the pool: fail what waits rather than leave it hanging."""
        error = PoolClosedError("the event loop of this async pool was closed before its "
                                "tasks finished")
        with self._lock:
            if self.scheduler.broken is None:
                self.scheduler.broken = error
            jobs: list[Job] = self.scheduler.cancel_all()
        jobs.extend(batch.job for batch in list(self._running.values()))
        self.abort_jobs(jobs, error)
        self._stopped.set()

    def _start_initializer(self) -> None:
        self.loop.create_task(self._initialize())

    async def _initialize(self) -> None:
        initializer = self.config.initializer
        assert initializer is not None
        try:
            state = initializer(*self.config.initargs)
            if inspect.isawaitable(state):
                state = await state
        except BaseException as exc:
            self.break_pool(initializer_error(f"{type(exc).__name__}: {exc}"), exc)
            self._ready = True
            self._fill()
            return
        if self._own is not None:  # worker_state() reads the running thread's context
            set_thread_context(WorkerContext(0, state))
        self._ready = True
        self._fill()

    def _fill(self) -> None:
        """Start batches while there is room and work (on the loop)."""
        self._fill_scheduled = False
        if not self._ready or self._stopped.is_set():
            return
        batches: list[Batch] = []
        with self._lock:
            room = self.workers - len(self._running)
            if not self._terminated and self.scheduler.broken is None:
                while room > 0:
                    batch = self.scheduler.take(self._limit, self.workers, group=False)
                    if batch is None:
                        break
                    batches.append(batch)
                    room -= 1
            finished = (not batches and not self._running and self._draining
                        and (self._terminated or self.scheduler.broken is not None
                             or self.scheduler.idle()))
        for batch in batches:
            context = batch.job.context
            task = self.loop.create_task(
                self._run(batch), context=None if context is None else context.copy())
            self._running[task] = batch
        if finished:
            self._finish()

    def _finish(self) -> None:
        """Nothing runs and nothing more will: the pool has stopped (on the loop)."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        for waiter in self._on_stopped:
            if not waiter.done():
                waiter.set_result(None)
        if self._own is not None:
            self.loop.stop()  # its thread then closes the loop and exits

    async def _run(self, batch: Batch) -> None:
        job = batch.job
        fn, call = job.fn, job.call
        timeout = self.config.task_timeout
        values: list[Any] = []
        errors: list[tuple[int, BaseException]] | None = None
        me = asyncio.current_task()
        assert me is not None
        started = time.perf_counter()
        try:
            for i, item in enumerate(batch.items):
                try:
                    awaitable = call_one(fn, item, call)
                    if not inspect.isawaitable(awaitable):
                        raise _not_a_coroutine(fn, awaitable)
                    if timeout is None:
                        values.append(await awaitable)
                        continue
                    limit = asyncio.timeout(timeout)
                    try:
                        async with limit:
                            values.append(await awaitable)
                    except TimeoutError:
                        if limit.expired():  # ours, not a TimeoutError of the task's own
                            name = batch.describe_task(i)
                            job.fail(batch, i, TaskTimeoutError(
                                f"{name} did not finish within {timeout} s (it was cancelled)",
                                timeout=timeout, task=name))
                            return
                        raise
                except asyncio.CancelledError as cancelled:
                    stop = self._stops.pop(me, None)
                    if stop is None:
                        if self._terminated:
                            raise  # the job has failed already
                        # The loop is shutting down under the pool (asyncio.run
                        # ended): the task's caller must hear of it.
                        raise self._loop_closing(job, cancelled) from None
                    me.uncancel()
                    if errors is None:
                        errors = []
                    errors.append((i, stop))
                    values.append(None)
                except BaseException as exc:  # the task's own error, even SystemExit
                    if errors is None:
                        errors = []
                    errors.append((i, exc.with_traceback(without_own_frames(exc.__traceback__))))
                    values.append(None)
            job.deliver(batch, values, errors, time.perf_counter() - started)
        finally:
            del self._running[me]
            self._stops.pop(me, None)
            # Room for the next batch: take it now rather than after a round
            # of the loop (and finish, if this was the last one while draining).
            self._fill()

    def _loop_closing(self, job: Job, cancelled: asyncio.CancelledError) -> asyncio.CancelledError:
        job.abort(PoolClosedError("the event loop running this async pool was closed "
                                  "before the task finished"))
        return cancelled

    def _stop_job(self, job: OneJob, error: BaseException) -> None:
        for task, batch in self._running.items():
            if batch.job is job and task not in self._stops:
                self._stops[task] = error
                task.cancel()

    def _cancel_running(self) -> None:
        for task in list(self._running):
            task.cancel()
        if not self._running:
            self._finish()


def _not_a_coroutine(fn: Any, value: Any) -> TypeError:
    name = getattr(fn, "__qualname__", None) or repr(fn)
    return TypeError(f"mode='async' runs coroutine functions, but {name} returned "
                     f"{type(value).__name__}, not an awaitable; use mode='thread' for a "
                     "plain function, or bf.to_thread() inside a coroutine")
