"""Twisted and bingfa together: Deferreds to and from bingfa futures, pool tasks as Deferreds.

Install with ``pip install 'bingfa[twisted]'``. Importing this module without
Twisted raises :class:`~bingfa.BackendUnavailableError`.

- :func:`defer_to_pool` runs a function on any bingfa :class:`~bingfa.Pool`
  (threads or processes) and gives a Deferred for its result: a
  ``deferToThreadPool`` that can also use processes, whose tasks can be
  stopped.
- :func:`to_deferred` turns a future (a bingfa one, or any
  ``concurrent.futures.Future``) into a Deferred.
- :func:`from_deferred` turns a Deferred into a bingfa future, which threads
  can wait for and coroutines can await.

Deferreds belong to the reactor thread: call these functions there (or
before the reactor runs). Results that come from other threads are handed to
the reactor with ``reactor.callFromThread``; the Deferreds always fire on the
reactor thread. The reactor is the one installed when a function here is
first called (importing this module installs none, so
``asyncioreactor.install()`` may come after it).

Example::

    from twisted.internet import defer, task

    import bingfa as bf
    from bingfa.integrations.twisted import defer_to_pool

    async def main(reactor):
        with bf.Pool(4, mode="process") as pool:
            squares = await defer.gatherResults(
                [defer_to_pool(pool, pow, n, 2) for n in range(10)])
        print(squares)

    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures._base import FINISHED
from threading import get_ident
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast

from .._core._errors import BackendUnavailableError
from .._core._futures import Future

try:
    from twisted.internet.defer import CancelledError, Deferred
    from twisted.python import threadable
    from twisted.python.failure import Failure
except ImportError as exc:
    raise BackendUnavailableError(
        "bingfa.integrations.twisted needs Twisted: pip install 'bingfa[twisted]'",
        extra="twisted") from exc

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorFromThreads

    from .._pool._pool import Pool

__all__ = ["defer_to_pool", "from_deferred", "to_deferred"]

T = TypeVar("T")
P = ParamSpec("P")


def _in_reactor_thread() -> bool:
    """``threadable.isInIOThread()``, without its trip through ``threading.current_thread()``."""
    return bool(threadable.ioThread == get_ident())


class _TaskDeferred(Deferred[T]):
    """A Deferred for a future; cancelling it calls ``stop`` (which cancels or stops the task).

    The canceller is one function for all (:func:`_stop`), and ``stop`` a slot:
    a Deferred in flight costs no closures of its own. Thousands may be in
    flight at once (issued, then gathered), and the garbage collector goes
    through every object they keep alive each time it looks.
    """

    __slots__ = ("stop",)

    def __init__(self, stop: Callable[[], object]) -> None:
        super().__init__(_stop)
        self.stop = stop


def _stop(d: Deferred[Any]) -> None:
    cast("_TaskDeferred[Any]", d).stop()


class _Inbox:
    """Futures that ended off the reactor thread: one ``callFromThread`` per bunch of them.

    Each ``callFromThread`` wakes the reactor (a write to its waker pipe, or
    on the asyncio reactor a thread-safe call and a timer). Many tasks
    finishing while the reactor is busy share one wake-up: only a future that
    finds no drain scheduled schedules one, and a drain settles every future
    there when it starts.

    ``_armed`` is held while a drain is scheduled and has not started: a
    future that arrives and cannot take it knows a drain will see it. The
    drain lets go of it *before* taking the futures, so a future that arrives
    after the last one taken always finds it free and schedules the next
    drain. No lock is waited for on either side.
    """

    __slots__ = ("_armed", "_call", "_waiting", "deferreds")

    def __init__(self, reactor: IReactorFromThreads) -> None:
        self._call = reactor.callFromThread
        self._armed = threading.Lock()
        # deque's append and popleft are atomic: the two sides share no lock.
        self._waiting: deque[concurrent.futures.Future[Any]] = deque()
        # Each future's Deferred, until it is settled (only the reactor thread
        # touches this). A dict entry, rather than a closure per future.
        self.deferreds: dict[concurrent.futures.Future[Any], Deferred[Any]] = {}

    def follow(self, future: concurrent.futures.Future[T], d: Deferred[T]) -> None:
        """Fire ``d`` as ``future`` ends (on the reactor thread; now, if it has ended).

        ``future`` must be followed by no other Deferred: a pool's future made
        for :func:`defer_to_pool`.
        """
        self.deferreds[future] = d
        future.add_done_callback(self._ended)

    def _ended(self, future: concurrent.futures.Future[Any]) -> None:
        # On the thread that settled the future (a pool's worker or manager),
        # or on the reactor's, now or in a canceller, if it has ended already.
        if threadable.ioThread == get_ident():  # _in_reactor_thread(), one call less per task
            self._settle(future)
            return
        self._waiting.append(future)
        if self._armed.acquire(False):
            self._call(self._drain)

    def call(self, fn: Callable[..., object], *args: object) -> None:
        """Run ``fn(*args)`` on the reactor thread, soon (from any thread)."""
        self._call(fn, *args)

    def _drain(self) -> None:
        self._armed.release()
        # Only what is here now, as the reactor does with its own queue of calls
        # from threads: it then goes back to its loop, and the workers, which
        # want the GIL, run, rather than trickle futures into a drain that
        # would otherwise go on as long as they do.
        waiting = self._waiting
        error: BaseException | None = None
        for _ in range(len(waiting)):
            try:
                self._settle(waiting.popleft())
            except BaseException as exc:  # a bug: settle the rest, then let the reactor log it
                error = exc
        if error is not None:
            raise error

    def _settle(self, future: concurrent.futures.Future[Any]) -> None:
        _settle(self.deferreds.pop(future), future)


def _settle(d: Deferred[T], future: concurrent.futures.Future[T]) -> None:
    """Fire ``d`` as ``future`` ended (on the reactor thread), unless ``d`` was cancelled."""
    if d.called:
        return  # cancelled: whatever the work did since is dropped
    # The future is done, so its outcome is read straight from concurrent.futures'
    # own fields: result() and exception() would take its lock twice more, on
    # the reactor thread, for every task.
    if future._state != FINISHED:
        d.errback(CancelledError())
    elif future._exception is not None:
        d.errback(future._exception)  # a Failure of its own type, with its own traceback
    else:
        d.callback(future._result)  # type: ignore[arg-type]  # typeshed: T | None


_inbox: _Inbox | None = None


def _the_inbox() -> _Inbox:
    """The inbox of the global reactor, made on first use.

    Importing ``twisted.internet.reactor`` installs the default reactor if
    none is installed yet, so it waits until a Deferred is first asked for.
    """
    global _inbox
    if _inbox is None:
        from twisted.internet import reactor

        _inbox = _Inbox(reactor)  # the module is replaced by the reactor when one is installed
    return _inbox


def to_deferred(future: concurrent.futures.Future[T]) -> Deferred[T]:
    """A Deferred that fires with ``future``'s result, or fails with its exception.

    ``future`` may be a bingfa :class:`~bingfa.Future` or any
    ``concurrent.futures.Future``, done already or not. The Deferred fires on
    the reactor thread; an exception keeps its own type and traceback (a
    process task's remote traceback stays attached as ``__cause__``).
    Cancelling the Deferred cancels the future; if its task has started
    already, the Deferred fails with ``CancelledError`` at once and the task's
    result is dropped when it comes. To stop a pool task that runs already
    (terminate its process, raise its thread's :func:`bingfa.cancelled`),
    submit it with :func:`defer_to_pool` instead.

    A future cancelled on its own side makes the Deferred fail with Twisted's
    ``CancelledError``.

    Call it on the reactor thread, or before the reactor runs.

    Args:
        future: the future to follow.

    Returns:
        A Deferred for the future's outcome.

    Example::

        from twisted.internet import task

        import bingfa as bf
        from bingfa.integrations.twisted import to_deferred

        def main(reactor):
            pool = bf.Pool(2)
            d = to_deferred(pool.submit(sum, [1, 2, 3]))
            d.addCallback(print)               # 6, on the reactor thread
            d.addBoth(lambda _: pool.shutdown())
            return d

        task.react(main)
    """
    # A user's future may be followed by several Deferreds: each gets a callback
    # of its own, rather than the inbox's one Deferred per future.
    d: Deferred[T] = _TaskDeferred(future.cancel)
    call = _the_inbox().call

    def ended(f: concurrent.futures.Future[T]) -> None:
        if _in_reactor_thread():
            _settle(d, f)
        else:
            call(_settle, d, f)

    future.add_done_callback(ended)
    return d


def from_deferred(d: Deferred[T]) -> Future[T]:
    """A bingfa :class:`~bingfa.Future` that ends as the Deferred ``d`` fires.

    The future can be waited for from any thread (``result()``,
    ``concurrent.futures.wait``) and awaited from a coroutine, on any asyncio
    loop. Cancelling it cancels ``d``, on the reactor thread. ``d``'s
    result is handed to the future and not passed on down ``d``'s chain (as
    with ``Deferred.asFuture``), so an error the future reports is not logged
    as unhandled too. A ``d`` cancelled on Twisted's side cancels the future.

    Call it on the reactor thread, or before the reactor runs.

    Args:
        d: the Deferred to follow.

    Returns:
        A future for ``d``'s result.

    Example::

        import asyncio

        from twisted.internet import asyncioreactor
        asyncioreactor.install()
        from twisted.internet import defer, task

        from bingfa.integrations.twisted import from_deferred

        async def greet(reactor):
            d = task.deferLater(reactor, 0.01, lambda: "hello")
            print(await from_deferred(d))      # hello, in a coroutine

        task.react(lambda reactor: defer.Deferred.fromFuture(
            asyncio.ensure_future(greet(reactor))))
    """
    future: Future[T] = Future()
    call = _the_inbox().call  # here, on the reactor thread: a cancel may come from any other

    def succeeded(value: T) -> None:
        try:
            future.set_result(value)
        except concurrent.futures.InvalidStateError:
            pass  # cancelled meanwhile, on another thread

    def failed(failure: Failure) -> None:
        error = failure.value
        if isinstance(error, CancelledError):
            future.cancel()
            return
        assert error is not None
        if failure.tb is not None and error.__traceback__ is None:
            error = error.with_traceback(failure.tb)
        try:
            future.set_exception(error)
        except concurrent.futures.InvalidStateError:
            pass

    def cancel_deferred(f: concurrent.futures.Future[T]) -> None:
        if f.cancelled() and not d.called:
            if _in_reactor_thread():
                d.cancel()
            else:
                call(_cancel_if_waiting, d)

    d.addCallbacks(succeeded, failed)
    future.add_done_callback(cancel_deferred)
    return future


def _cancel_if_waiting(d: Deferred[Any]) -> None:
    if not d.called:
        d.cancel()


def defer_to_pool(pool: Pool, fn: Callable[P, T], /,
                  *args: P.args, **kwargs: P.kwargs) -> Deferred[T]:
    """Run ``fn(*args, **kwargs)`` on a bingfa pool; a Deferred for its result.

    Like Twisted's ``deferToThreadPool``, for any bingfa :class:`~bingfa.Pool`:
    threads or processes, with the pool's timeouts, retries and remote
    tracebacks. The Deferred fires on the reactor thread; a task's exception
    arrives with its own type.

    Cancelling the Deferred stops the task as far as its mode allows: one that
    has not started is dropped; a running process task is terminated (with
    its process tree) and its worker replaced; a running thread task sees
    :func:`bingfa.cancelled` turn true and should return early. The Deferred
    fails with ``CancelledError`` at once, and whatever the task returns
    afterwards is dropped.

    Call it on the reactor thread, or before the reactor runs.

    Args:
        pool: the pool to run on.
        fn: the function; in process mode a lambda, a closure or a method is
            fine.
        *args: its positional arguments.
        **kwargs: its keyword arguments.

    Returns:
        A Deferred for ``fn``'s result.

    Raises:
        PoolClosedError: if the pool has been closed.
        TypeError: if ``fn`` is not callable.

    Example::

        from twisted.internet import defer, task

        import bingfa as bf
        from bingfa.integrations.twisted import defer_to_pool

        @defer.inlineCallbacks
        def main(reactor):
            with bf.Pool(2, mode="process") as pool:
                total = yield defer_to_pool(pool, sum, range(1_000_000))
            print(total)                       # 499999500000

        task.react(main)
    """
    future, stop = pool._submit_stoppable(fn, args, kwargs)
    d: Deferred[T] = _TaskDeferred(stop)
    _the_inbox().follow(future, d)
    return d
