"""What a running task can ask about where it runs: worker id, state, cancellation.

A worker thread keeps its context in a thread-local; a worker process sets the
process-wide one once at start. Lookups try the thread-local first, so a thread
pool opened inside a process worker reports its own threads.
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["WorkerContext", "cancelled", "check_cancelled", "current", "worker_id", "worker_state"]


class WorkerContext:
    """Everything a task can learn about the worker that runs it."""

    __slots__ = ("cancel_flag", "state", "worker_id")

    def __init__(self, worker_id: int, state: Any = None) -> None:
        self.worker_id = worker_id
        self.state = state
        # Set by the pool when the task being run is cancelled or timed out.
        # A threading.Event would do, but a plain attribute read is cheaper and
        # the flag is only ever flipped one way while a task runs.
        self.cancel_flag: CancelFlag | None = None


class CancelFlag:
    """A one-way flag a task polls through :func:`bingfa.cancelled`."""

    __slots__ = ("is_set",)

    def __init__(self) -> None:
        self.is_set = False

    def set(self) -> None:
        self.is_set = True


_thread_local = threading.local()
_process_context: WorkerContext | None = None


def set_process_context(ctx: WorkerContext | None) -> None:
    """Install the context of a worker process (called once in the worker)."""
    global _process_context
    _process_context = ctx


def set_thread_context(ctx: WorkerContext | None) -> None:
    """Install the context of the current worker thread."""
    _thread_local.ctx = ctx


def current() -> WorkerContext | None:
    """The context of the worker running the caller, or ``None`` outside workers."""
    ctx: WorkerContext | None = getattr(_thread_local, "ctx", None)
    return ctx if ctx is not None else _process_context


def worker_id() -> int | None:
    """The slot of the worker running this task, ``0 .. workers - 1``.

    A worker that replaces a crashed or retired one keeps its slot, so the id
    is a stable index (for example to pick a GPU). Outside a pool worker it
    returns ``None``.
    """
    ctx = current()
    return ctx.worker_id if ctx is not None else None


def worker_state() -> Any:
    """The per-worker state: what the pool's ``initializer`` returned in this worker.

    Build something expensive once per worker (a model, a database connection)
    by returning it from the initializer; every task on that worker then
    reaches it here::

        def load():
            return Model.load("weights.bin")

        def predict(x):
            return bf.worker_state().predict(x)

        with bf.Pool(4, mode="process", initializer=load) as pool:
            pool.map(predict, inputs)

    Raises:
        RuntimeError: when called outside a pool worker.
    """
    ctx = current()
    if ctx is None:
        raise RuntimeError("bingfa.worker_state() is only available inside a pool worker")
    return ctx.state


def cancelled() -> bool:
    """Whether the task calling it has been cancelled or has timed out.

    Threads cannot be interrupted, so a long task in thread mode should poll
    this and return early. In process mode a timed-out task's worker is
    terminated instead, so the task need not poll. Outside a pool it returns
    ``False``.
    """
    ctx = current()
    if ctx is None:
        return False
    flag = ctx.cancel_flag
    return flag is not None and flag.is_set


def check_cancelled() -> None:
    """Raise ``concurrent.futures.CancelledError`` if the calling task has been cancelled.

    For code that stops at a safe point of its own: call it between steps of a
    long task in a thread (a pool task, or a thread spawned in a
    :func:`bingfa.scope`). A scope counts a child that ends this way as
    cancelled, not as failed. Outside a task it does nothing.
    """
    if cancelled():
        import concurrent.futures

        raise concurrent.futures.CancelledError("the task was cancelled")
