"""Bridges between an event loop and the rest: threads, processes, and sync code.

- ``await bf.to_thread(fn, ...)`` and ``await bf.to_process(fn, ...)`` run
  blocking or CPU-bound work off the loop, on threads and a process pool
  shared by the whole process (``_threads``, ``_shared``). Cancelling the
  await stops the work as far as its kind allows: the process is killed with
  its tree and replaced; the thread sees ``bf.cancelled()`` turn true
  (threads cannot be interrupted).
- ``bf.run_async(coro)`` runs a coroutine to its end from sync code, on a new
  loop in the calling thread.
- ``bf.from_thread(async_fn, ...)``, in a thread started by ``bf.to_thread``,
  runs ``async_fn`` on the loop that started the thread and waits for it.

How a thread knows its loop: ``to_thread`` runs its function in a copy of
the caller's context in which a context variable holds the call's
:class:`~bingfa._async._threads.Origin` (the loop, and the call's cancel
flag). A pool task that the thread submits in turn inherits it too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import inspect
import threading
from collections.abc import Awaitable, Callable, Coroutine
from contextvars import Context, ContextVar, copy_context
from typing import Any, ParamSpec, TypeVar, cast, overload

from .._core._errors import DeadlockError
from ._shared import PROCESSES, SharedPool
from ._threads import THREADS, Origin, ThreadCall, start_aside

__all__ = ["from_thread", "run_async", "to_process", "to_thread"]

P = ParamSpec("P")
R = TypeVar("R")

# How often a thread blocked in from_thread looks whether its loop has closed
# under it (a loop closed without cancelling its tasks would never answer).
_LOOP_CHECK_SECONDS = 0.5

_origin: ContextVar[Origin | None] = ContextVar("bingfa_to_thread_origin", default=None)


def remember_calling_loop(context: Context) -> None:
    """Let :func:`from_thread` in tasks run in ``context`` reach the loop running here, if any.

    A thread pool's tasks run in a copy of their submitter's context: a task
    submitted from a coroutine can then call back into that coroutine's loop.
    Nothing is recorded when no loop runs in this thread, or when the context
    already knows one (a ``to_thread`` thread submitting to a pool).
    """
    loop = asyncio._get_running_loop()
    if loop is not None and context.get(_origin) is None:
        context.run(_origin.set, Origin(loop))


async def to_thread(fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
    """Run ``fn(*args, **kwargs)`` in a worker thread and await its result.

    The loop keeps running meanwhile. ``fn`` runs in a copy of the caller's
    contextvars (as with ``asyncio.to_thread``), on threads shared by the
    whole process: they start as calls come, up to as many as ``asyncio``'s
    default executor has (the CPUs plus four, at most 32; more calls wait
    their turn), and each exits after two idle seconds. In the thread,
    :func:`bingfa.from_thread` runs coroutines back on this loop.

    Cancelling the await (a timeout, a cancelled task) raises
    ``asyncio.CancelledError`` at once. A thread cannot be interrupted, so
    a function that has started goes on until it returns, but
    :func:`bingfa.cancelled` turns true in it (a long one can poll it and
    stop early) and a :func:`bingfa.from_thread` call it is blocked in is
    cancelled. One that had not started yet never starts.

    Raises:
        Exception: whatever ``fn`` raised, with its traceback.
        TypeError: ``fn`` is not callable.

    Example::

        import asyncio
        import bingfa as bf

        def read(path):
            with open(path) as f:
                return f.read()

        async def main():
            text = await bf.to_thread(read, "/etc/hostname")
            print(text)

        asyncio.run(main())
    """
    if not callable(fn):
        raise TypeError(f"the task's function must be callable, not {fn!r}")
    loop = asyncio.get_running_loop()
    origin = Origin(loop)
    context = copy_context()
    context.run(_origin.set, origin)
    future: asyncio.Future[R] = loop.create_future()
    THREADS.submit(ThreadCall(fn, args, kwargs, context, origin, future))
    try:
        return await future
    except asyncio.CancelledError:
        origin.set()  # bf.cancelled() turns true; its from_thread waits end
        raise


async def to_process(fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
    """Run ``fn(*args, **kwargs)`` in a worker process and await its result.

    The loop keeps running meanwhile. ``fn`` may be a lambda, a closure or a
    bound method: it travels by value. The process pool is shared by the
    whole process: it starts on the first call (off the loop, which is not
    held up while the workers start), has a worker per usable CPU, and is let
    go after two idle seconds. Context variables registered with
    :func:`bingfa.propagate` carry their caller's values into the worker.

    Cancelling the await really stops the work: the worker process running
    ``fn`` is killed with every process it started, and a fresh worker takes
    its place.

    Raises:
        Exception: whatever ``fn`` raised, with its original type; the
            worker's traceback is its ``__cause__``.
        WorkerCrashedError: the worker died while running ``fn``.

    Example::

        import asyncio
        import bingfa as bf

        def fib(n):
            return n if n < 2 else fib(n - 1) + fib(n - 2)

        async def main():
            print(await bf.to_process(fib, 25))                   # 75025
            a, b = await asyncio.gather(bf.to_process(fib, 20),
                                        bf.to_process(fib, 21))   # in parallel
            print(a + b)                                          # 17711

        asyncio.run(main())
    """
    pool = PROCESSES.acquire_warm()
    if pool is None:
        await _start_off_loop(PROCESSES)
        pool = PROCESSES.acquire()
    try:
        future, stop = pool._submit_stoppable(fn, args, kwargs)
    except BaseException:
        PROCESSES.release(pool)
        raise
    try:
        return cast(R, await future)
    except asyncio.CancelledError:
        stop()  # not started: it never will; running: its worker is killed and replaced
        raise
    finally:
        if future.done():
            PROCESSES.release(pool)
        else:  # being stopped: the pool is busy until the stop has settled the task
            future.add_done_callback(functools.partial(PROCESSES.release, pool))


async def _start_off_loop(shared: SharedPool) -> None:
    """Start ``shared``'s pool on a short-lived thread, so the loop is not held up.

    Starting a process per CPU takes milliseconds each: on a large machine,
    long enough to stall every other coroutine. (SIGINT stays blocked in the
    thread, which inherits the mask of the bare thread that starts it.)
    """
    started: concurrent.futures.Future[None] = concurrent.futures.Future()

    def start() -> None:
        try:
            shared.start()
        except BaseException as exc:
            with contextlib.suppress(concurrent.futures.InvalidStateError):  # the await left
                started.set_exception(exc)
        else:
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                started.set_result(None)

    thread = threading.Thread(target=start, name=f"bingfa-start-{shared.mode}-pool",
                              daemon=True)

    def launch() -> None:  # on a bare thread: Thread.start() waits for the thread to run
        try:
            thread.start()
        except BaseException as exc:
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                started.set_exception(exc)

    start_aside(launch)
    await asyncio.wrap_future(started)


@overload
def run_async(coro: Awaitable[R], /) -> R: ...


@overload
def run_async(fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R: ...


def run_async(fn: Any, /, *args: Any, **kwargs: Any) -> Any:
    """Run a coroutine to its end from sync code; return its result or raise its error.

    It runs on a new event loop in the calling thread, closed when it ends
    (as ``asyncio.run`` does): from the main thread, or from any thread
    while loops run in others. Give a coroutine, or a coroutine function and
    its arguments (it is then called on the new loop). To run a coroutine on
    the loop that started this thread instead, use :func:`bingfa.from_thread`.

    Raises:
        Exception: whatever the coroutine raised, with its traceback.
        DeadlockError: (a ``RuntimeError``) when called inside a running
            event loop of this thread: it would block that loop until the
            coroutine ended. Await the coroutine there instead.
        TypeError: ``fn`` is neither awaitable nor a coroutine function, or a
            coroutine was given with arguments.

    Example::

        import asyncio
        import bingfa as bf

        async def add(a, b):
            await asyncio.sleep(0.01)
            return a + b

        print(bf.run_async(add(1, 2)))    # 3
        print(bf.run_async(add, 3, 4))    # 7
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        _discard(fn)
        raise DeadlockError(
            "bf.run_async() was called inside a running event loop, on its own thread: it "
            "would block that loop until the coroutine ended. Await the coroutine instead "
            "(or call bf.run_async from a worker thread: await bf.to_thread(...))")
    if inspect.isawaitable(fn) and (args or kwargs):
        _discard(fn)
        raise TypeError("bf.run_async() takes arguments only with a coroutine function, "
                        "not with a coroutine")
    if not inspect.isawaitable(fn) and not callable(fn):
        raise TypeError(f"bf.run_async() needs a coroutine or a coroutine function, "
                        f"not {fn!r}")
    return asyncio.run(_call(fn, args, kwargs, plain_ok=False))


@overload
def from_thread(fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R: ...


@overload
def from_thread(fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R: ...


def from_thread(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """In a thread started by ``bf.to_thread``: run ``fn`` on that loop, wait for its result.

    ``fn(*args, **kwargs)`` is called on the loop's own thread and, if it
    returns an awaitable (a coroutine function's coroutine), awaited there
    as a task; meanwhile this thread waits. So code off the loop can use what
    belongs to the loop: a client session, a queue, a lock. A plain function
    is simply called there (the safe way to touch loop-bound objects).

    If the ``to_thread`` await is cancelled while the thread waits here, the
    task on the loop is cancelled and ``concurrent.futures.CancelledError``
    is raised here.

    Raises:
        Exception: whatever ``fn`` raised, with its traceback.
        RuntimeError: this thread was not started by ``bf.to_thread``, so it
            has no loop to go back to (from plain sync code use
            :func:`bingfa.run_async`), or that loop has closed.
        DeadlockError: (a ``RuntimeError``) called on the loop's own thread,
            where waiting would block the loop it waits for; await instead.
        concurrent.futures.CancelledError: the ``to_thread`` await was
            cancelled.

    Example::

        import asyncio
        import bingfa as bf

        async def fetch(key):
            await asyncio.sleep(0.01)        # stands for real async I/O
            return key.upper()

        def blocking_work(keys):
            # a worker thread: blocking is fine here, and the loop is a call away
            return [bf.from_thread(fetch, key) for key in keys]

        async def main():
            print(await bf.to_thread(blocking_work, ["a", "b"]))   # ['A', 'B']

        asyncio.run(main())
    """
    origin = _origin.get()
    try:
        running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is not None and (origin is None or origin.loop is running):
        raise DeadlockError(
            "bf.from_thread() was called on the event loop's own thread: waiting here would "
            "block the loop it waits for. Await the coroutine directly instead")
    if origin is None:
        raise RuntimeError(
            "bf.from_thread() found no event loop to go back to: it works in a thread started "
            "by `await bf.to_thread(...)`, and this thread was not. From sync code without a "
            "loop, use bf.run_async() to run a coroutine")
    if origin.is_set:
        raise concurrent.futures.CancelledError(
            "the bf.to_thread() call that started this thread was cancelled")
    loop = origin.loop
    coroutine = _call(fn, args, kwargs, plain_ok=True)
    try:
        future = asyncio.run_coroutine_threadsafe(coroutine, loop)
    except RuntimeError:  # the loop has closed
        coroutine.close()
        raise RuntimeError("bf.from_thread(): the event loop that started this thread has "
                           "closed") from None
    origin.waiting.add(future)
    try:
        if origin.is_set:  # cancelled as we were adding it: set() may have missed it
            future.cancel()
        while True:
            try:
                future.exception(_LOOP_CHECK_SECONDS)  # returns once done, whatever the outcome
                break
            except concurrent.futures.CancelledError:
                break
            except TimeoutError:
                if loop.is_closed():
                    future.cancel()
                    raise RuntimeError("bf.from_thread(): the event loop that started this "
                                       "thread closed before the call ended") from None
        return future.result()
    finally:
        origin.waiting.discard(future)


async def _call(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], *,
                plain_ok: bool) -> Any:
    """Await ``fn`` (an awaitable), or call it and await what it returns.

    With ``plain_ok`` (from_thread), a function that returns something not
    awaitable has simply been called on the loop's thread: that is its result.
    """
    if inspect.isawaitable(fn):
        return await fn
    value = fn(*args, **kwargs)
    if inspect.isawaitable(value):
        return await value
    if not plain_ok:
        raise TypeError(f"bf.run_async() needs a coroutine or a coroutine function; "
                        f"{_name(fn)} returned {type(value).__name__}")
    return value


def _name(fn: Any) -> str:
    return str(getattr(fn, "__qualname__", None) or repr(fn))


def _discard(fn: Any) -> None:
    """Close a coroutine that will never run (no "never awaited" warning for it)."""
    if isinstance(fn, Coroutine):
        fn.close()


def close_shared_pools() -> None:
    """Let the threads and the process pool of to_thread/to_process go now (for tests).

    The process pool is terminated; idle threads exit and are waited for.
    The next call starts them again.
    """
    THREADS.close()
    PROCESSES.close()
