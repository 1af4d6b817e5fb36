"""``bf.Thread`` and ``bf.Process``: handles that give a result (or the error) back.

``threading.Thread`` and ``multiprocessing.Process`` return nothing, and an
exception in them is printed where nobody looks. These run the same children a
scope runs (``_children``), one at a time and by hand: ``start()``, then
``result()`` returns what the function returned or raises what it raised, with
its traceback. A process handle also ends its child's whole process tree
(``terminate()``, ``kill()``), and tells how it died: a crash is a
:class:`~bingfa.WorkerCrashedError` naming the signal or exit code.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import signal
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any

from .._core._errors import WorkerCrashedError
from .._core._futures import Future
from .._core._timeouts import limit_seconds, wait_seconds
from ._children import Child, ProcessChild, ThreadChild
from ._fork_child import ForkChild, process_child

__all__ = ["Process", "Thread"]


class _Handle:
    """What both handles share: one child, started once, waited for, its outcome."""

    _kind = "handle"

    def __init__(self, target: Callable[..., Any], args: Iterable[Any],
                 kwargs: Mapping[str, Any] | None, name: str | None) -> None:
        if not callable(target):
            raise TypeError(f"target must be callable, not {target!r}")
        self._target = target
        self._args = tuple(args)
        self._kwargs = dict(kwargs or {})
        self.name = name or f"bingfa-{self._kind}-{getattr(target, '__name__', 'target')}"
        self._child: Child | None = None

    def _make(self) -> Child:
        raise NotImplementedError

    def start(self) -> None:
        """Start the work.

        Raises:
            RuntimeError: it was started already (a handle runs once).
        """
        if self._child is not None:
            raise RuntimeError(f"{self.name} was started already: a handle runs once; "
                               "make another to run it again")
        child = self._make()
        child.start()
        self._child = child

    @property
    def future(self) -> Future[Any]:
        """The :class:`~bingfa.Future` of its outcome (awaitable).

        Raises:
            RuntimeError: not started yet.
        """
        child = self._started()
        child.watch()  # callbacks and awaits need it settled with nobody asking
        return child.future

    def _started(self) -> Child:
        if self._child is None:
            raise RuntimeError(f"{self.name} has not been started: call start() first")
        return self._child

    def join(self, timeout: float | None = None) -> None:
        """Wait until it has ended, or ``timeout`` seconds; never raises its error.

        After ``terminate()`` or ``kill()`` it waits for the process to be
        gone (a SIGTERM's grace at most), not only for the outcome.
        """
        child = self._started()
        try:
            child.future.exception(wait_seconds(timeout))
        except concurrent.futures.TimeoutError:
            return
        except concurrent.futures.CancelledError:
            pass  # stopped: its process may still be on its way out
        child.join()

    def result(self, timeout: float | None = None) -> Any:
        """What the function returned; raises what it raised (its traceback as ``__cause__``
        for a process).

        Raises:
            TimeoutError: it did not end within ``timeout`` seconds.
            concurrent.futures.CancelledError: it was stopped (``terminate()``, ``kill()``).
        """
        child = self._started()
        value = child.future.result(wait_seconds(timeout))
        child.join()
        return value

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """What the function raised, or None if it returned."""
        child = self._started()
        error = child.future.exception(wait_seconds(timeout))
        child.join()
        return error

    def is_alive(self) -> bool:
        """Whether it has started and not ended yet."""
        if self._child is None:
            return False
        self._child.poll()
        return not self._child.future.done()

    def __enter__(self) -> Any:
        if self._child is None:
            self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        """Leaving the block waits for it; an error in the block stops it first.

        Its own error is raised here, unless the block is raising one already.
        """
        child = self._started()
        if exc is not None:
            child.cancel()
        try:
            child.future.exception()
        except concurrent.futures.CancelledError:
            pass
        finally:
            child.join()
        if exc is None and not child.future.cancelled():
            error = child.future.exception()
            if error is not None:
                raise error

    def __repr__(self) -> str:
        state = ("initial" if self._child is None else
                 "running" if not self._child.future.done() else "ended")
        return f"<bingfa.{type(self).__name__} {self.name!r} {state}>"


class Thread(_Handle):
    """A function in a thread of its own, whose result or error comes back.

    ::

        with bf.Thread(loop, name="LoopThread") as t:   # started; the block joins it
            ...
        print(t.result())

    It runs in a copy of the starter's contextvars; :func:`bingfa.cancelled`
    turns true in it when the ``with`` block it was started by raises (a thread
    cannot be interrupted: it stops where it looks).

    Args:
        target: the function; ``args`` and ``kwargs`` its arguments.
        name: the thread's name.
    """

    _kind = "thread"

    def __init__(self, target: Callable[..., Any], args: Iterable[Any] = (),
                 kwargs: Mapping[str, Any] | None = None, *, name: str | None = None) -> None:
        super().__init__(target, args, kwargs, name)

    def _make(self) -> Child:
        return ThreadChild(self.name, self._target, self._args, self._kwargs)


class Process(_Handle):
    """A function in a process of its own, whose result or error comes back.

    ::

        p = bf.Process(work, args=(1,))
        p.start()
        p.join(timeout=5)
        print(p.result())         # or the child's exception, its traceback as __cause__

    The function may be a lambda or a closure; no ``if __name__ == "__main__":``
    is needed. A child that dies (``kill -9``, a segfault, ``os._exit``) gives
    :class:`~bingfa.WorkerCrashedError` naming the signal or exit code; one that
    calls ``sys.exit(n)`` gives ``SystemExit(n)``. Its output goes where this
    process's goes. A handle dropped while its process runs does not leak it:
    the process is ended when this interpreter exits.

    Args:
        target: the function; ``args`` and ``kwargs`` its arguments.
        name: a name for it (in errors and ``repr``).
        start_method: ``"forkserver"`` (default), ``"fork"`` or ``"spawn"``.
    """

    _kind = "process"

    def __init__(self, target: Callable[..., Any], args: Iterable[Any] = (),
                 kwargs: Mapping[str, Any] | None = None, *, name: str | None = None,
                 start_method: str | None = None) -> None:
        super().__init__(target, args, kwargs, name)
        self.start_method = start_method
        self._stopped_by: int | None = None

    def _make(self) -> Child:
        child = process_child(self.name, self._target, self._args, self._kwargs,
                              self.start_method, watch=False)
        _end_at_exit(child)
        return child

    def _process_child(self) -> ProcessChild | ForkChild:
        child = self._started()
        assert isinstance(child, (ProcessChild, ForkChild))
        return child

    @property
    def pid(self) -> int | None:
        """The child's process id; None before ``start()``."""
        if self._child is None:
            return None
        return self._process_child().pid()

    @property
    def exitcode(self) -> int | None:
        """None while it runs; then 0 if it returned, 1 if it raised, ``n`` for
        ``sys.exit(n)``, and minus the signal that ended it (as multiprocessing)."""
        if self._child is None:
            return None
        self._child.poll()
        if not self._child.future.done():
            return None
        if self._stopped_by is not None:
            return -self._stopped_by
        future = self._child.future
        if future.cancelled():
            return -signal.SIGTERM
        error = future.exception()
        if error is None:
            return 0
        if isinstance(error, SystemExit):
            code = error.code
            return code if isinstance(code, int) else (0 if code is None else 1)
        if isinstance(error, WorkerCrashedError):
            if error.signal is not None:
                return -error.signal
            if error.exitcode is not None:
                return error.exitcode
        return 1

    def terminate(self, grace: float = 0.2) -> None:
        """End its whole process tree: SIGTERM now, SIGKILL to what is left after ``grace`` s.

        Its future is cancelled (``result()`` raises ``CancelledError``) unless
        it had ended already. Does nothing before ``start()`` or after the end.
        """
        seconds = limit_seconds(grace, "grace")
        if self._child is None or self._child.future.done():
            return
        child = self._process_child()
        child.set_kill_grace(0.0 if seconds is None else seconds)
        self._stopped_by = signal.SIGTERM if seconds else signal.SIGKILL
        child.cancel()

    def kill(self) -> None:
        """End its whole process tree at once, with SIGKILL."""
        self.terminate(grace=0)


# Children of handles still running: held here (a forked one may wait to be
# read and reaped) until they end, or the interpreter exits and ends them.
_running: set[ProcessChild | ForkChild] = set()
_exit_hook_installed = False


def _end_at_exit(child: Child) -> None:
    """End ``child``'s process when the interpreter exits, if it still runs then.

    Registered after the child's pool module, so it runs before the pools'
    own exit handler (which would wait for the running task).
    """
    global _exit_hook_installed
    assert isinstance(child, (ProcessChild, ForkChild))
    _running.add(child)
    child.future.add_done_callback(lambda _: _running.discard(child))
    if not _exit_hook_installed:
        atexit.register(_end_running)
        _exit_hook_installed = True


def _end_running() -> None:
    for child in list(_running):
        child.poll()
    children = [child for child in list(_running) if not child.future.done()]
    for child in children:
        child.set_kill_grace(0.2)
        child.cancel()
    for child in children:
        child.join()
