"""The kinds of work a scope starts, and how each is stopped.

Every child has a :class:`~bingfa.Future` for its outcome and a ``cancel()``
that stops it as far as its kind allows:

- a thread cannot be interrupted: ``bf.cancelled()`` turns true in it and
  ``bf.check_cancelled()`` raises there; the scope waits for it to return;
- a process is terminated with its whole tree (SIGTERM, then SIGKILL after
  the pool's grace);
- a command's session is ended (SIGTERM, then SIGKILL);
- a task of the caller's own pool is cancelled if it has not started (one
  that runs already finishes: the pool is the caller's, not the scope's).

A child the scope cancelled ends with its future cancelled, whatever its
work did meanwhile, unless it had finished already.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import sys
import threading
from collections.abc import Callable, Mapping
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED
from contextvars import copy_context
from typing import TYPE_CHECKING, Any

from .._core._context import CancelFlag, WorkerContext, set_thread_context
from .._core._futures import Future
from .._core._interrupts import start_without_sigint
from .._core._own_frames import without_own_frames

if TYPE_CHECKING:
    import asyncio

    from .._pool._pool import Pool

__all__ = ["AsyncChild", "Child", "CommandChild", "PoolTaskChild", "ProcessChild", "ThreadChild"]


class Child:
    """One piece of work in a scope: its future, and how to stop it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.future: Future[Any] = Future()
        self.cancel_requested = False  # by the scope, before the work had finished

    def cancel(self) -> None:
        """Stop the work as far as its kind allows (see the module's docstring)."""
        if self.future.done():
            return
        self.cancel_requested = True
        self._stop()

    def start(self) -> None:
        """Start the work."""
        raise NotImplementedError

    def join(self) -> None:
        """Wait until the work is over and everything it used is let go."""
        raise NotImplementedError

    def watch(self) -> None:
        """Make sure the future is settled as soon as the work ends, with nobody waiting.

        Every kind does so from the start but a handle's forked process
        (see ``_fork_child``), which otherwise waits to be asked.
        """

    def poll(self) -> None:
        """Settle the future now if the work has ended (for kinds that wait to be asked)."""

    def _stop(self) -> None:
        raise NotImplementedError

    def _settle_like(self, inner: concurrent.futures.Future[Any]) -> None:
        """Settle as ``inner`` (a pool's future for the work) was settled."""
        if inner.cancelled():
            self._settle(error=concurrent.futures.CancelledError())
            return
        error = inner.exception()
        self._settle(None if error is not None else inner.result(), error)

    def _settle(self, value: Any = None, error: BaseException | None = None) -> None:
        """Give the outcome to the future: cancelled if the scope stopped the work."""
        if self.cancel_requested or is_cancellation(error):
            force_cancelled(self.future)
        elif error is not None:
            self.future.set_exception(error)
        else:
            self.future.set_result(value)


def is_cancellation(error: BaseException | None) -> bool:
    """Whether ``error`` says the work was cancelled: concurrent.futures' CancelledError,
    or asyncio's (a BaseException of its own; asyncio is not imported to ask)."""
    if isinstance(error, concurrent.futures.CancelledError):
        return True
    asyncio = sys.modules.get("asyncio")
    return asyncio is not None and isinstance(error, asyncio.CancelledError)


def force_cancelled(future: Future[Any]) -> None:
    """Mark ``future`` cancelled, even if it was running (its work has been stopped).

    ``Future.cancel()`` refuses a running future, but a scope's child that was
    stopped by the scope has no other outcome to give. This uses the states of
    ``concurrent.futures``' own implementation, as ``cancel()`` does.
    """
    with future._condition:
        if future._state in (FINISHED, CANCELLED, CANCELLED_AND_NOTIFIED):
            return
        future._state = CANCELLED_AND_NOTIFIED
        future._condition.notify_all()
        for waiter in future._waiters:
            waiter.add_cancelled(future)
    future._invoke_callbacks()  # type: ignore[attr-defined]


class ThreadChild(Child):
    """A function in a thread of its own, in a copy of the spawner's contextvars."""

    def __init__(self, name: str, fn: Callable[..., Any], args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> None:
        super().__init__(name)
        self.flag = CancelFlag()
        context = copy_context()
        self.thread = threading.Thread(target=context.run, args=(self._run, fn, args, kwargs),
                                       name=name)

    def start(self) -> None:
        self.future.set_running_or_notify_cancel()
        start_without_sigint(self.thread)

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...],
             kwargs: dict[str, Any]) -> None:
        ctx = WorkerContext(0)
        ctx.cancel_flag = self.flag
        set_thread_context(ctx)
        try:
            value = fn(*args, **kwargs)
        except BaseException as exc:
            self._settle(error=exc.with_traceback(without_own_frames(exc.__traceback__)))
        else:
            self._settle(value)
        finally:
            set_thread_context(None)

    def _stop(self) -> None:
        self.flag.set()

    def join(self) -> None:
        self.thread.join()


class ProcessChild(Child):
    """A function in a worker process of its own (a one-worker pool the child owns)."""

    def __init__(self, name: str, fn: Callable[..., Any], args: tuple[Any, ...],
                 kwargs: dict[str, Any], start_method: str | None) -> None:
        super().__init__(name)
        from .._pool._pool import Pool

        self.pool = Pool(1, mode="process", start_method=start_method)
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.stopper: threading.Thread | None = None
        self._pid: int | None = None

    def pid(self) -> int | None:
        """The worker's process id, once started (kept after it has exited)."""
        if self._pid is None:
            slots = getattr(self.pool._engine, "_slots", None)
            worker = slots[0] if slots else None
            self._pid = getattr(worker, "pid", None) or None
        return self._pid

    def set_kill_grace(self, seconds: float) -> None:
        """How long a stopped worker's tree gets between SIGTERM and SIGKILL."""
        self.pool._engine.config.kill_grace = seconds

    def start(self) -> None:
        self.future.set_running_or_notify_cancel()
        self.pid()  # noted now: the pool forgets its worker once it has exited
        inner = self.pool.submit(self.fn, *self.args, **self.kwargs)
        del self.fn, self.args, self.kwargs
        inner.add_done_callback(self._settle_like)
        # Its one task is in: the pool stops (worker, manager) as soon as it is done.
        self.pool.shutdown(wait=False)

    def _stop(self) -> None:
        # Not on the caller's thread (a done-callback, the timeout's timer):
        # terminate() waits for the worker and its descendants to be gone.
        self.stopper = threading.Thread(target=self.pool.terminate, name=f"{self.name}-stop")
        start_without_sigint(self.stopper)

    def join(self) -> None:
        if self.stopper is not None:
            self.stopper.join()
        self.pool.join()


class CommandChild(Child):
    """An external command, driven by a thread of its own; its future gets the result."""

    def __init__(self, name: str, cmd: Any, options: Mapping[str, Any]) -> None:
        super().__init__(name)
        from .._commands._spawn import prepare

        self.options = dict(options)
        self.text = bool(self.options.pop("text", False))
        self.check = bool(self.options.pop("check", False))
        encoding = self.options.pop("encoding", "utf-8")
        errors = self.options.pop("errors", "replace")
        shell = bool(self.options.pop("shell", False))
        # Bad input fails the s.run() call itself, as bf.run() would.
        self.args, self.argv, self.input = prepare(
            cmd, shell=shell, timeout=self.options.get("timeout"),
            input=self.options.pop("input", None), encoding=encoding, errors=errors,
            env=self.options.get("env"), cwd=self.options.get("cwd"))
        self.encoding, self.errors = encoding, errors
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)  # CommandLoop.watch reads it dry
        self.thread = threading.Thread(target=self._run, name=name)

    def start(self) -> None:
        self.future.set_running_or_notify_cancel()
        start_without_sigint(self.thread)

    def _run(self) -> None:
        from .._commands._loop import CommandLoop
        from .._commands._result import make_result

        commands = CommandLoop()
        try:
            commands.watch(self.wake_r)
            started = commands.start(self.argv, input=self.input, **self.options)
            while len(commands):
                if self.cancel_requested:
                    commands.stop_all()  # returns once the session is ended and reaped
                    break
                commands.poll()  # returns on output, an exit, or the scope's wake-up
            result = make_result(self.args, started.returncode, started.stdout, started.stderr,
                                 duration=started.duration, timed_out=started.timed_out,
                                 text=self.text, encoding=self.encoding, errors=self.errors)
            if self.check:
                result.check()
        except BaseException as exc:
            self._settle(error=exc)
        else:
            self._settle(result)
        finally:
            commands.close()
            for fd in (self.wake_r, self.wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _stop(self) -> None:
        with contextlib.suppress(OSError):  # closed: the command is over
            os.write(self.wake_w, b"!")

    def join(self) -> None:
        self.thread.join()


class PoolTaskChild(Child):
    """A task of a pool the caller owns, waited for and cancelled by the scope."""

    def __init__(self, name: str, pool: Pool, fn: Callable[..., Any], args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> None:
        super().__init__(name)
        self.inner, self._stop_task = pool._submit_stoppable(fn, args, kwargs)
        self.future.set_running_or_notify_cancel()
        self.inner.add_done_callback(self._settle_like)

    def start(self) -> None:
        pass  # submitted when made: a closed pool fails s.submit() itself

    def _stop(self) -> None:
        # Not started: cancelled. Running in a process: its worker is killed
        # and replaced. Running in a thread: bf.cancelled() turns true in it.
        self._stop_task()

    def join(self) -> None:
        with contextlib.suppress(BaseException):
            self.inner.exception()


class AsyncChild(Child):
    """A coroutine function, run as a task on the scope's event loop; cancelled as a task."""

    def __init__(self, name: str, fn: Callable[..., Any], args: tuple[Any, ...],
                 kwargs: dict[str, Any], loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(name)
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.loop = loop
        self.task: asyncio.Future[Any] | None = None
        self._threadsafe: concurrent.futures.Future[Any] | None = None  # made off the loop

    def start(self) -> None:
        import asyncio

        self.future.set_running_or_notify_cancel()
        coroutine = self.fn(*self.args, **self.kwargs)
        del self.fn, self.args, self.kwargs
        if not asyncio.iscoroutine(coroutine):
            raise TypeError(f"mode='async' needs a coroutine function; {self.name} returned "
                            f"{type(coroutine).__name__}")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            self.task = self.loop.create_task(coroutine, name=self.name)
            self.task.add_done_callback(self._task_done)
        else:  # from another thread: the loop's own thread makes the task
            concurrent_future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
            concurrent_future.add_done_callback(self._settle_like)
            self._threadsafe = concurrent_future

    def _task_done(self, task: asyncio.Future[Any]) -> None:
        if task.cancelled():
            self._settle(error=concurrent.futures.CancelledError())
            return
        error = task.exception()
        self._settle(None if error is not None else task.result(), error)

    def _stop(self) -> None:
        if self.task is not None:
            self.loop.call_soon_threadsafe(self.task.cancel)
        elif self._threadsafe is not None:
            self._threadsafe.cancel()

    def join(self) -> None:
        pass  # a task holds nothing once it is done
