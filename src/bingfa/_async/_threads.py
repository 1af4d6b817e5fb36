"""The threads behind ``bf.to_thread``: a small pool that answers event loops directly.

Why not a thread-mode ``bf.Pool``: a pool task is built for maps (batches,
a scheduler, retries, timeouts) and ends in a ``concurrent.futures.Future``
that an awaiting coroutine must chain to an asyncio future of its own. A
``to_thread`` call needs none of that. Here the worker settles the caller's
asyncio future itself, with one ``call_soon_threadsafe``, and a call that
finds a thread idle hands itself to that thread under one short lock.
Measured with ``benchmarks/async_bridges.py`` (2 vCPUs): a call takes
0.6-0.9x the time of ``asyncio.to_thread``'s, where awaiting a thread-mode
``Pool``'s future took 1.6x with ten awaiters at a time.

Threads start as calls arrive, up to :func:`max_threads` (the size of
``asyncio``'s default executor, and of a thread-mode ``bf.Pool``: the CPUs
plus four, at most 32); further calls wait in a queue. A new thread is
started off the loop's thread (see :func:`start_aside`), so a call never
waits for the OS to schedule it. A thread that has had nothing to do for
``_shared.IDLE_SECONDS`` exits (trio and anyio keep their threads the same
way), so a burst of calls leaves nothing behind for long.

In each call's thread, :func:`bingfa.cancelled` reads the call's own flag,
which ``to_thread`` raises when its await is cancelled.
"""

from __future__ import annotations

import _thread
import asyncio
import os
import signal
import threading
from collections import deque
from collections.abc import Callable
from contextvars import Context
from typing import Any

from .._core._context import CancelFlag, WorkerContext, set_thread_context
from .._core._machine import usable_cores
from .._core._own_frames import without_own_frames
from . import _shared

__all__ = ["Origin", "ThreadCall", "ThreadRunner", "max_threads", "start_aside"]


def max_threads() -> int:
    """How many threads ``to_thread`` runs at most: asyncio's default executor's size."""
    return min(32, usable_cores() + 4)


class Origin(CancelFlag):
    """Where a ``to_thread`` call came from: its loop, and its cancel flag.

    It is the flag :func:`bingfa.cancelled` reads in the call's thread, and
    the value :func:`bingfa.from_thread` finds in that thread's context.
    Raising it also cancels what the thread waits for on the loop.
    """

    __slots__ = ("loop", "waiting")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.loop = loop
        # from_thread calls now waiting on the loop, from the call's thread
        # and from pool threads it started (they inherit its context)
        self.waiting: set[Any] = set()

    def set(self) -> None:
        self.is_set = True
        for future in list(self.waiting):  # list(): a copy taken under the GIL
            future.cancel()


class ThreadCall:
    """One ``to_thread`` call: what to run, in which context, and whom to tell."""

    __slots__ = ("args", "context", "fn", "future", "kwargs", "origin")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                 context: Context, origin: Origin, future: asyncio.Future[Any]) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.context: Context | None = context
        self.origin = origin
        self.future = future


class _Worker:
    __slots__ = ("call", "ctx", "slot", "wakeup")

    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.ctx = WorkerContext(slot)
        self.call: ThreadCall | None = None  # handed over by a submitter
        # Held while the worker is idle; released by whoever hands it a call.
        self.wakeup = threading.Lock()
        self.wakeup.acquire()


class ThreadRunner:
    """Runs ``ThreadCall``s on up to :func:`max_threads` threads, started as needed."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []  # the most recent last: it is handed work first
        self._queued: deque[ThreadCall] = deque()
        self._free_slots: list[int] | None = None  # made on first use (pop() gives 0, 1, ...)
        self._threads: set[threading.Thread] = set()
        self._retiring = False  # close(): threads exit rather than wait for work

    def threads(self) -> list[threading.Thread]:
        """The threads alive now (for tests)."""
        with self._lock:
            return list(self._threads)

    def submit(self, call: ThreadCall) -> None:
        """Run ``call`` on an idle thread, a new one, or the first to finish."""
        with self._lock:
            if self._idle:
                w = self._idle.pop()
                w.call = call
                w.wakeup.release()
                return
            if self._free_slots is None:
                self._free_slots = list(range(max_threads() - 1, -1, -1))
            if not self._free_slots:
                self._queued.append(call)
                return
            w = _Worker(self._free_slots.pop())
            thread = threading.Thread(target=self._work, args=(w, call),
                                      name=f"{self._name}_{w.slot}", daemon=True)
            self._threads.add(thread)
        try:
            start_aside(self._start, thread, w, call)
        except RuntimeError as exc:  # "can't start new thread": a system limit
            self._not_started(thread, w, call, exc)

    def _start(self, thread: threading.Thread, w: _Worker, call: ThreadCall) -> None:
        """Start a worker thread (on a short-lived helper thread, not the loop's)."""
        try:
            thread.start()
        except BaseException as exc:  # nothing may escape a bare thread
            self._not_started(thread, w, call, exc)

    def _not_started(self, thread: threading.Thread, w: _Worker, call: ThreadCall,
                     exc: BaseException) -> None:
        with self._lock:
            self._threads.discard(thread)
            assert self._free_slots is not None
            self._free_slots.append(w.slot)
            if self._threads:  # one that finishes takes it
                self._queued.append(call)
                return
        _settle(call, None, RuntimeError(f"bf.to_thread() cannot start a thread: {exc}"))

    def _work(self, w: _Worker, first: ThreadCall) -> None:
        set_thread_context(w.ctx)
        call: ThreadCall | None = first
        try:
            while call is not None:
                _run(w, call)
                call = self._next(w)  # None: the thread has been let go
        finally:
            set_thread_context(None)
            with self._lock:
                if threading.current_thread() in self._threads:  # left by an error of ours
                    self._leave(w)

    def _next(self, w: _Worker) -> ThreadCall | None:
        """The worker's next call, waiting up to IDLE_SECONDS; ``None``: exit."""
        with self._lock:
            if self._queued:
                return self._queued.popleft()
            if self._retiring:
                self._leave(w)
                return None
            self._idle.append(w)
        if not w.wakeup.acquire(timeout=_shared.IDLE_SECONDS):
            with self._lock:
                if w in self._idle:  # nobody chose it: let it go
                    self._idle.remove(w)
                    self._leave(w)
                    return None
            w.wakeup.acquire()  # chosen just now: its call is on the way
        call, w.call = w.call, None
        if call is None:  # close() let it go
            with self._lock:
                self._leave(w)
        return call

    def _leave(self, w: _Worker) -> None:
        """The thread running ``w`` exits: free its slot (lock held).

        Done in the same critical section as the decision to exit, so a call
        submitted meanwhile finds the slot free and starts a thread of its
        own, rather than wait in the queue for a thread that is leaving.
        """
        self._threads.discard(threading.current_thread())
        assert self._free_slots is not None
        self._free_slots.append(w.slot)

    def close(self) -> None:
        """Let every thread go as soon as it is idle, and wait for the idle ones to exit.

        Threads still running a call exit when it returns (a cancelled call
        that never returns keeps its thread: threads cannot be stopped).
        Later calls start new threads.
        """
        with self._lock:
            self._retiring = True
            for w in self._idle:
                w.call = None
                w.wakeup.release()
            self._idle.clear()
            threads = list(self._threads)
        for thread in threads:
            # (one not started yet has no call to finish: it exits after its first)
            if thread.is_alive() and thread is not threading.current_thread():
                thread.join(0.1)  # a thread stuck in a call is not waited for
        with self._lock:
            self._retiring = False

    def forget_after_fork(self) -> None:
        """In a forked child: the parent's threads do not exist here."""
        self._reset()


def start_aside(fn: Callable[..., None], *args: Any) -> None:
    """Run ``fn(*args)`` on a bare, short-lived thread, SIGINT blocked in it.

    For starting a ``threading.Thread`` from an event loop's thread:
    ``Thread.start()`` waits until the new thread runs, which on a loaded
    machine takes long enough to stall the loop (over 100 ms at a load of 8
    on 2 CPUs). The loop's thread only makes a bare thread
    (``_thread.start_new_thread`` returns at once), and ``fn`` starts the
    thread there and waits for it. ``fn`` must do nothing else, and must not
    call ``threading.current_thread()`` (it would register a dummy thread
    that never goes away) nor let an exception escape.
    """
    try:
        before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    except (AttributeError, OSError, ValueError):  # no pthreads here
        _thread.start_new_thread(fn, args)
        return
    try:
        _thread.start_new_thread(fn, args)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _run(w: _Worker, call: ThreadCall) -> None:
    origin = call.origin
    context, call.context = call.context, None  # it holds the origin: no cycle left behind
    if origin.is_set or context is None:
        return  # cancelled before it started: its caller has gone already
    w.ctx.cancel_flag = origin
    try:
        value = context.run(call.fn, *call.args, **call.kwargs)
    except BaseException as exc:
        _settle(call, None, exc.with_traceback(without_own_frames(exc.__traceback__)))
    else:
        _settle(call, value, None)
    finally:
        w.ctx.cancel_flag = None
        call.fn = call.args = call.kwargs = None  # type: ignore[assignment]


def _settle(call: ThreadCall, value: Any, error: BaseException | None) -> None:
    """Give the outcome to the caller's future, on its loop."""
    try:
        call.origin.loop.call_soon_threadsafe(_deliver, call.future, value, error)
    except RuntimeError:
        pass  # the loop has closed: nobody awaits this any more


def _deliver(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():
        return  # the await was cancelled
    if error is None:
        future.set_result(value)
    elif isinstance(error, StopIteration):
        # A future refuses StopIteration (it would end the awaiting
        # generator quietly); coroutines turn it into RuntimeError, so do we.
        wrapped = RuntimeError(f"the function raised StopIteration: {error}")
        wrapped.__cause__ = error
        future.set_exception(wrapped)
    else:
        future.set_exception(error)


THREADS = ThreadRunner("bingfa-to-thread")
os.register_at_fork(after_in_child=THREADS.forget_after_fork)
