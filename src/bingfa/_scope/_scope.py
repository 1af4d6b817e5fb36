"""``bf.scope()``: a block that owns what it starts, waits for it, and stops it on failure.

The rules, as in trio's nurseries, for threads, processes and commands alike:

- Leaving the block waits for every child.
- The first failure cancels the others (``on_error="cancel"``), or lets them
  finish (``on_error="wait"``); then the block raises an ``ExceptionGroup`` of
  the failures, always a group, without the children the scope cancelled.
  An exception raised by the block's own body is part of the group.
- ``timeout=`` cancels everything when it passes, and the block raises
  :class:`~bingfa.TaskTimeoutError`.
- A scope opened inside another (in the block, or in a thread child of it) is
  cancelled with it.
- Ctrl-C in the block stops every child that can be stopped, waits for
  those, and lets KeyboardInterrupt go on at once.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from .._core._errors import ScopeClosedError, TaskTimeoutError
from .._core._futures import Future
from .._core._interrupts import start_without_sigint
from .._core._timeouts import limit_seconds
from ._children import (
    AsyncChild,
    Child,
    CommandChild,
    PoolTaskChild,
    ThreadChild,
    is_cancellation,
)
from ._fork_child import process_child
from ._loop_thread import LoopThread

if TYPE_CHECKING:
    import asyncio

    from .._commands._result import CommandResult
    from .._pool._pool import Pool

__all__ = ["Scope", "scope"]

# How long Ctrl-C waits for stopped process and command children before it goes on.
INTERRUPT_WAIT = 0.4

_current: contextvars.ContextVar[Scope | None] = contextvars.ContextVar(
    "bingfa_scope", default=None)
_names = itertools.count(1)


class Scope:
    """What ``with bf.scope() as s`` gives: spawn work into it, cancel it.

    Made by :func:`bingfa.scope`; see there.
    """

    def __init__(self, timeout: float | None, on_error: str) -> None:
        if on_error not in ("cancel", "wait"):
            raise ValueError(f"on_error must be 'cancel' or 'wait', not {on_error!r}")
        self.timeout = limit_seconds(timeout, "timeout")
        self.on_error = on_error
        self._lock = threading.Lock()
        self._children: list[Child] = []
        self._inner: list[Scope] = []
        self._open = False
        self._closed = False
        self._cancelled = False
        self._timed_out = False
        self._timer: threading.Timer | None = None
        self._token: contextvars.Token[Scope | None] | None = None
        self._parent: Scope | None = None
        # The loop of an `async with` block, or of the thread below.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: LoopThread | None = None  # made for a plain `with` block's coroutines

    # --- starting work ----------------------------------------------------------------
    def spawn(self, fn: Callable[..., Any], /, *args: Any,
              mode: Literal["thread", "process", "async"] = "thread",
              start_method: str | None = None,
              **kwargs: Any) -> Future[Any]:
        """Run ``fn(*args, **kwargs)`` in a thread (default), a process, or as a coroutine.

        A thread child runs in a copy of this thread's contextvars and can
        poll :func:`bingfa.cancelled` (or call :func:`bingfa.check_cancelled`);
        a process child may be a lambda or a closure, and is terminated with
        its whole process tree when the scope cancels it. ``start_method``
        applies to processes (``"forkserver"`` by default, ``"fork"``,
        ``"spawn"``). ``mode="async"`` runs a coroutine function as a task,
        cancelled as a task is: on the block's event loop in ``async with
        bf.scope()``, and in a plain ``with`` block on an event loop the scope
        starts on a thread of its own (and closes at the block's end).

        Returns:
            a :class:`~bingfa.Future` of its result (awaitable).

        Raises:
            ScopeClosedError: the scope has ended or is cancelling.
            ValueError: an unknown ``mode``, or ``start_method`` for a thread.
            TypeError: ``fn`` is not callable.
        """
        if not callable(fn):
            raise TypeError(f"the function to spawn must be callable, not {fn!r}")
        name = f"bingfa-scope-{getattr(fn, '__name__', 'task')}-{next(_names)}"
        if mode == "thread":
            if start_method is not None:
                raise ValueError("start_method only applies to mode='process'")
            return self._start(ThreadChild(name, fn, args, kwargs))
        if mode == "process":
            self._check_open()
            return self._start(process_child(name, fn, args, kwargs, start_method))
        if mode == "async":
            if start_method is not None:
                raise ValueError("start_method only applies to mode='process'")
            return self._start(AsyncChild(name, fn, args, kwargs, self._event_loop()))
        raise ValueError(f"mode must be 'thread', 'process' or 'async', not {mode!r}")

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        """The loop coroutines run on: the ``async with`` block's, or one of the scope's own."""
        with self._lock:
            if self._loop is None:
                self._check_open()
                self._loop_thread = LoopThread("bingfa-scope-loop")
                self._loop = self._loop_thread.loop
            return self._loop

    def run(self, cmd: Any, /, **options: Any) -> Future[CommandResult]:
        """Run an external command; a :class:`~bingfa.Future` of its :class:`~bingfa.CommandResult`.

        Takes :func:`bingfa.run`'s options (``timeout``, ``input``, ``check``,
        ``text``, ``env``, ``cwd``, ``shell``...). Cancelling the scope ends the
        command's whole session.

        Raises:
            ScopeClosedError: the scope has ended or is cancelling.
            ValueError, TypeError: bad arguments, as :func:`bingfa.run` raises them.
        """
        self._check_open()
        name = f"bingfa-scope-command-{next(_names)}"
        future: Future[CommandResult] = self._start(CommandChild(name, cmd, options))
        return future

    def submit(self, pool: Pool, fn: Callable[..., Any], /, *args: Any,
               **kwargs: Any) -> Future[Any]:
        """Submit ``fn(*args, **kwargs)`` to ``pool``, as a child of this scope.

        The scope waits for it and counts its failure; cancelling the scope
        cancels it if it has not started (one that runs finishes: the pool,
        and its ``task_timeout``, are yours).

        Raises:
            ScopeClosedError: the scope has ended or is cancelling.
            PoolClosedError: ``pool`` is closed.
        """
        self._check_open()
        name = f"bingfa-scope-pool-task-{next(_names)}"
        return self._start(PoolTaskChild(name, pool, fn, args, kwargs))

    def _start(self, child: Child) -> Future[Any]:
        with self._lock:
            self._check_open()
            self._children.append(child)
        try:
            child.start()
        except BaseException as exc:
            # Raised here, to the caller: not a child's failure that cancels the rest.
            with self._lock:
                self._children.remove(child)
            if not child.future.done():
                child.future.set_exception(exc)
            raise
        child.future.add_done_callback(lambda _: self._child_done(child))
        return child.future

    def _check_open(self) -> None:
        if self._closed or not self._open:
            raise ScopeClosedError("cannot start work in a scope whose block has ended")
        if self._cancelled:
            raise ScopeClosedError("cannot start work in a scope that is cancelling")

    # --- cancelling -------------------------------------------------------------------
    def cancel(self) -> None:
        """Cancel every child and inner scope (from the block, a child, or any thread).

        The block then ends without an error of its own: only children that
        failed before the cancellation are raised.
        """
        with self._lock:
            if self._cancelled:
                return
            self._cancelled = True
            children = list(self._children)
            inner = list(self._inner)
        for scope in inner:
            scope.cancel()
        for child in children:
            child.cancel()

    @property
    def cancelled(self) -> bool:
        """Whether the scope has been cancelled (by :meth:`cancel`, a failure or its timeout)."""
        return self._cancelled

    def _child_done(self, child: Child) -> None:
        future = child.future
        if (self.on_error == "cancel" and not future.cancelled()
                and future.exception() is not None):
            self.cancel()

    def _time_out(self) -> None:
        self._timed_out = True
        self.cancel()

    # --- the block ----------------------------------------------------------------------
    def __enter__(self) -> Scope:
        if self._open or self._closed:
            raise ScopeClosedError("a scope is entered once")
        self._open = True
        self._parent = _current.get()
        if self._parent is not None:
            with self._parent._lock:
                self._parent._inner.append(self)
                cancelled = self._parent._cancelled
            if cancelled:
                self._cancelled = True
        self._token = _current.set(self)
        if self.timeout is not None:
            self._timer = threading.Timer(self.timeout, self._time_out)
            self._timer.name = "bingfa-scope-timeout"
            self._timer.daemon = True
            start_without_sigint(self._timer)
        return self

    async def __aenter__(self) -> Scope:
        import asyncio

        self._loop = asyncio.get_running_loop()
        return self.__enter__()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        """:meth:`__exit__`, waiting on the event loop instead of blocking it."""
        import asyncio

        try:
            if exc is not None and not isinstance(exc, Exception):
                # Cancelled from outside (asyncio.CancelledError), Ctrl-C: stop
                # everything, wait a moment for what can be stopped, go on.
                self.cancel()
                await self._await_children(INTERRUPT_WAIT)
                return
            if exc is not None:
                self.cancel()
            try:
                await self._await_children(None)
            except BaseException:  # this task cancelled while it waits
                self.cancel()
                await asyncio.shield(self._await_children(INTERRUPT_WAIT))
                raise
        finally:
            self._close()
        self._raise_outcome(exc)

    async def _await_children(self, limit: float | None) -> None:
        """:meth:`_wait` for the event loop: every child's future, then what it holds."""
        import asyncio

        deadline = None if limit is None else time.monotonic() + limit
        for child in self._every_child():
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            done, _ = await asyncio.wait([_settled_on_loop(child.future)], timeout=remaining)
            if not done:
                return
            if deadline is None and not isinstance(child, AsyncChild):
                await asyncio.to_thread(child.join)  # a process or command: reaped

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if exc is not None and not isinstance(exc, Exception):
                # Ctrl-C, SystemExit: stop everything, wait a moment for what
                # can be stopped, and let it go on.
                self.cancel()
                self._wait(INTERRUPT_WAIT)
                return
            if exc is not None:
                self.cancel()
            try:
                self._wait(None)
            except BaseException:  # Ctrl-C while waiting
                self.cancel()
                self._wait(INTERRUPT_WAIT)
                raise
        finally:
            self._close()
        self._raise_outcome(exc)

    def _wait(self, limit: float | None) -> None:
        """Wait for every child (also those started meanwhile), at most ``limit`` seconds.

        Without a limit each child is also joined (a process reaped, a thread
        ended); with one, only its outcome is waited for.
        """
        deadline = None if limit is None else time.monotonic() + limit
        for child in self._every_child():
            if deadline is None:
                _wait_done(child.future, None)
                child.join()
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not _wait_done(child.future, remaining):
                    return

    def _every_child(self) -> Iterator[Child]:
        """The children, in the order they started, including those started meanwhile."""
        seen = 0
        while True:
            with self._lock:
                children = self._children[seen:]
                seen = len(self._children)
            if not children:
                return
            yield from children

    def _close(self) -> None:
        with self._lock:
            self._closed = True
        if self._loop_thread is not None:
            self._loop_thread.close()
        if self._timer is not None:
            self._timer.cancel()
            self._timer.join()
        if self._token is not None:
            _current.reset(self._token)
        if self._parent is not None:
            with self._parent._lock:
                self._parent._inner.remove(self)

    def _raise_outcome(self, exc: BaseException | None) -> None:
        failures: list[BaseException] = []
        if exc is not None and not (self._cancelled and _is_cancellation(exc)):
            failures.append(exc)
        for child in self._children:
            future = child.future
            if not future.cancelled():
                error = future.exception()
                if error is not None:
                    failures.append(error)
        if failures:
            # An ExceptionGroup, unless a child raised SystemExit or the like.
            raise BaseExceptionGroup(f"{len(failures)} of a scope's tasks failed", failures)
        if self._timed_out:
            raise TaskTimeoutError(f"the scope's timeout of {self.timeout} s passed; its work "
                                   "was cancelled", timeout=self.timeout)


def _is_cancellation(exc: BaseException) -> bool:
    """Whether the block's own error is only a consequence of the scope's cancellation.

    Waiting on a child the scope cancelled raises CancelledError in the block,
    and spawning into a cancelling scope raises ScopeClosedError: neither is a
    failure of its own.
    """
    return isinstance(exc, ScopeClosedError) or is_cancellation(exc)


def _settled_on_loop(future: Future[Any]) -> asyncio.Future[None]:
    """An asyncio future of this loop that is done once ``future`` is, outcome left aside.

    (``asyncio.wrap_future`` would copy the outcome, and warn of an exception
    nobody retrieved: the scope reports failures itself.)
    """
    import asyncio

    loop = asyncio.get_running_loop()
    settled: asyncio.Future[None] = loop.create_future()

    def mark(_: object) -> None:
        if not settled.done():
            settled.set_result(None)

    def on_done(_: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
            loop.call_soon_threadsafe(mark, None)

    future.add_done_callback(on_done)
    return settled


def _wait_done(future: Future[Any], timeout: float | None) -> bool:
    """Whether ``future`` finished within ``timeout`` (never raising its outcome)."""
    import concurrent.futures

    done, _ = concurrent.futures.wait([future], timeout)
    return bool(done)


def scope(*, timeout: float | None = None, on_error: str = "cancel") -> Scope:
    """A block that owns the threads, processes and commands started in it.

    ::

        with bf.scope(timeout=10) as s:
            a = s.spawn(download, url)                  # a thread
            b = s.spawn(crunch, data, mode="process")   # a process
            c = s.run(["ping", "-qc", "4", host])       # a command
            d = s.submit(pool, f, x)                    # a task of your pool
        print(a.result(), c.result().returncode)

    Leaving the block waits for everything started in it. The first failure
    cancels the rest (``on_error="wait"``: lets them finish), and the block
    raises an ``ExceptionGroup`` of the failures, always a group; children the
    scope cancelled are not in it. A thread cannot be interrupted: it sees
    :func:`bingfa.cancelled` turn true (and :func:`bingfa.check_cancelled`
    raise), and the scope waits for it to return.

    Args:
        timeout: seconds; when they pass everything is cancelled and the block
            raises :class:`~bingfa.TaskTimeoutError`.
        on_error: ``"cancel"`` (default) or ``"wait"``.

    Raises:
        ValueError: a negative or NaN ``timeout``, an unknown ``on_error``.
    """
    return Scope(timeout, on_error)
