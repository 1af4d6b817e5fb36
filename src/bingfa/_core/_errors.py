"""The exception tree of bingfa.

Every error bingfa raises on its own account derives from :class:`BingfaError`,
and each one also derives from the builtin it resembles, so code written against
the standard library keeps working (``except TimeoutError`` catches a task
timeout)::

    Exception
     └── BingfaError
          ├── WorkerCrashedError          a worker died while it held the task
          ├── TaskTimeoutError            (also TimeoutError) the task ran too long
          ├── ResultTimeoutError          (also TimeoutError and multiprocessing.TimeoutError)
          │                               waiting for a result timed out (AsyncResult.get,
          │                               Pool.map(timeout=)); the task may still be running
          ├── PoolClosedError             (also RuntimeError and ValueError) submit after close()
          ├── InitializerError            (also RuntimeError) workers cannot start
          ├── DeadlockError               (also RuntimeError) a wait that could never end
          ├── LockOwnerDiedError          (also RuntimeError) a lock's holder died holding it
          ├── SerializationError          (also TypeError) an object could not be (un)pickled
          ├── BackendUnavailableError     (also LookupError) an optional library is missing
          ├── CommandError                an external command failed (check=True)
          └── CommandNotFoundError        (also FileNotFoundError) no such executable

``ResultTimeoutError`` is defined with the pool (``bingfa._pool._errors``), and
made on first use: deriving from ``multiprocessing.TimeoutError`` means
importing :mod:`multiprocessing`, which neither ``bingfa run`` nor a thread
pool should pay for.

An exception raised *by a task* is never wrapped: it reaches the caller with its
own type, and the traceback of the worker where it happened is attached as its
``__cause__`` (a :class:`RemoteTraceback`).
"""

from __future__ import annotations

TYPE_CHECKING = False  # no typing at run time: bingfa run starts fast
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "BackendUnavailableError",
    "BingfaError",
    "CommandError",
    "CommandNotFoundError",
    "DeadlockError",
    "InitializerError",
    "LockOwnerDiedError",
    "PoolClosedError",
    "RemoteTraceback",
    "SerializationError",
    "TaskTimeoutError",
    "WorkerCrashedError",
]


class BingfaError(Exception):
    """Root of every error that bingfa raises on its own account."""


class WorkerCrashedError(BingfaError):
    """A worker process died while it held the task.

    The worker may have been killed (``kill -9``, the OOM killer), segfaulted,
    or called ``os._exit``. The pool replaces the worker; only the task that was
    running on it fails.

    Attributes:
        worker_id: the pool slot of the worker (``0 .. workers - 1``).
        pid: the process id of the dead worker.
        exitcode: its exit status, or ``None`` if it was killed by a signal.
        signal: the number of the signal that killed it, or ``None``.
        task: a short description of the task that was running.
    """

    def __init__(
        self,
        message: str,
        *,
        worker_id: int | None = None,
        pid: int | None = None,
        exitcode: int | None = None,
        signal: int | None = None,
        task: str | None = None,
    ) -> None:
        super().__init__(message)
        self.worker_id = worker_id
        self.pid = pid
        self.exitcode = exitcode
        self.signal = signal
        self.task = task

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_with_kwargs,
            (type(self), self.args, {
                "worker_id": self.worker_id, "pid": self.pid, "exitcode": self.exitcode,
                "signal": self.signal, "task": self.task,
            }),
        )


class TaskTimeoutError(BingfaError, TimeoutError):
    """A task ran longer than the pool's ``task_timeout``.

    In process mode the worker running it has been terminated and replaced. In
    thread mode the thread cannot be interrupted: the caller gets this error at
    once and the task can notice with :func:`bingfa.cancelled`.

    Attributes:
        timeout: the limit, in seconds.
        task: a short description of the task.
    """

    def __init__(self, message: str, *, timeout: float | None = None,
                 task: str | None = None) -> None:
        super().__init__(message)
        self.timeout = timeout
        self.task = task

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_with_kwargs,
                (type(self), self.args, {"timeout": self.timeout, "task": self.task}))


class PoolClosedError(BingfaError, RuntimeError, ValueError):
    """Work was submitted to a pool after ``close()``, ``shutdown()`` or ``terminate()``.

    It is a :class:`RuntimeError`, as ``concurrent.futures`` executors raise
    after ``shutdown()``, and a :class:`ValueError`, as ``multiprocessing.Pool``
    raises (``"Pool not running"``), so code written for either catches it.
    """


class InitializerError(BingfaError, RuntimeError):
    """The pool's workers cannot start, so the pool cannot run tasks.

    Either a worker's ``initializer`` raised (its exception is attached as
    ``__cause__``), or worker processes cannot be started here at all (the
    message says why, and what to do). Rather than restarting failing workers
    forever, the pool fails every pending task and refuses new ones.
    """


class ScopeClosedError(BingfaError, RuntimeError):
    """Work was started in a :func:`bingfa.scope` whose block has ended or that is cancelling.

    Start it in a scope that is still open, or in a new one.
    """


class DeadlockError(BingfaError, RuntimeError):
    """Waiting here could never end, so bingfa refuses to wait.

    A process pool's callbacks (``callback=``, ``add_done_callback``) run on
    the thread that delivers the pool's results: a callback that waits for
    another result of the same pool (``pool.map``, ``future.result()``)
    would wait for itself. Submitting from a callback is fine; waiting is not.
    """


class LockOwnerDiedError(BingfaError, RuntimeError):
    """The process that held a :class:`bingfa.Lock` died holding it.

    The lock was not lost: the acquire that raised this took it over from the
    dead process and gave it back, so the next acquire takes it normally.
    What the lock protected may be half-updated: repair it, under the lock.
    Inside :meth:`bingfa.Condition.wait` the lock is held when this is raised
    (the ``with`` block around the wait releases it).

    Attributes:
        pid: the process id of the holder that died; None when it died as it
            took the lock, before it could record itself (only a channel's
            locks notice that case).
    """

    def __init__(self, message: str, *, pid: int | None = None) -> None:
        super().__init__(message)
        self.pid = pid

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_with_kwargs, (type(self), self.args, {"pid": self.pid}))


class SerializationError(BingfaError, TypeError):
    """An object could not be pickled or unpickled on its way to or from a worker.

    The message names the object (its type and, where known, which argument or
    result it was); the pickling error is attached as ``__cause__``.
    """


class BackendUnavailableError(BingfaError, LookupError):
    """A mode needs an optional library that is not installed.

    Attributes:
        extra: the name of the extra that installs it, as in
            ``pip install 'bingfa[extra]'``.
    """

    def __init__(self, message: str, *, extra: str | None = None) -> None:
        super().__init__(message)
        self.extra = extra

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_with_kwargs, (type(self), self.args, {"extra": self.extra}))


class CommandError(BingfaError):
    """An external command failed: it exited non-zero, was killed, or timed out.

    Raised by ``bf.run(..., check=True)``. The message ends with the last lines
    of the command's standard error.

    Attributes:
        result: the :class:`~bingfa.CommandResult`, with all its output.
    """

    def __init__(self, message: str, result: Any = None) -> None:
        super().__init__(message)
        self.result = result

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.args[0], self.result))


class CommandNotFoundError(BingfaError, FileNotFoundError):
    """The executable of an external command does not exist or cannot be run.

    Attributes:
        command: the executable that was looked for.
    """

    def __init__(self, message: str, command: str | None = None) -> None:
        super().__init__(message)
        self.command = command

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.args[0], self.command))


class RemoteTraceback(Exception):
    """The formatted traceback of an exception raised in a worker.

    bingfa attaches it as ``__cause__`` of the re-raised exception, so the
    traceback you see ends with where the error really happened.
    """

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text.rstrip()}\n"""'


def _rebuild_with_kwargs(cls: type[BaseException], args: tuple[Any, ...],
                         kwargs: dict[str, Any]) -> BaseException:
    # Keyword-only attributes do not survive the default exception pickling
    # (which replays ``cls(*args)`` only), so errors that carry context rebuild
    # themselves through this helper.
    return cls(*args, **kwargs)


# Raised from deep inside bingfa, these classes show (and pickle) under the
# name users import them by.
for _name in __all__:
    globals()[_name].__module__ = "bingfa"
del _name
