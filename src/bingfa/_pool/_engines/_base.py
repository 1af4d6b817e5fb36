"""The protocol every engine implements.

An engine runs tasks in one mode (threads, processes, ...). It pulls batches
from the pool's :class:`~bingfa._jobs.Scheduler` whenever a worker has room,
runs them, and reports back to each batch's job (``deliver``, ``fail``,
``requeue``). Everything else (chunking, retries, ordering, progress,
callbacks) lives above it, so a new mode is one new file.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

from ..._core._errors import InitializerError, PoolClosedError
from .._jobs import Job, OneJob
from .._scheduler import Scheduler

__all__ = ["Engine", "EngineConfig"]


class EngineConfig:
    """What a pool asks of its engine.

    A plain class rather than a dataclass: ``dataclasses`` imports
    ``inspect``, which would cost every pool's import a few milliseconds.
    """

    __slots__ = ("initargs", "initializer", "kill_grace", "max_tasks_per_worker", "options",
                 "start_method", "task_timeout", "thread_name_prefix", "workers")

    def __init__(self, workers: int, initializer: Callable[..., Any] | None = None,
                 initargs: tuple[Any, ...] = (), max_tasks_per_worker: int | None = None,
                 task_timeout: float | None = None, start_method: str | None = None,
                 thread_name_prefix: str | None = None, kill_grace: float = 0.2,
                 options: dict[str, Any] | None = None) -> None:
        self.workers = workers
        self.initializer = initializer
        self.initargs = initargs
        self.max_tasks_per_worker = max_tasks_per_worker
        self.task_timeout = task_timeout
        self.start_method = start_method
        self.thread_name_prefix = thread_name_prefix
        # How long a terminated process gets to exit before it is killed.
        self.kill_grace = kill_grace
        # What only one mode understands (a cluster's address= or client=).
        self.options: dict[str, Any] = options or {}


class Engine(abc.ABC):
    """How tasks run in one mode."""

    def __init__(self, scheduler: Scheduler, config: EngineConfig) -> None:
        self.scheduler = scheduler
        self.config = config
        self.workers = config.workers
        # Set (in the child only) when this process forked: the engine's
        # threads and workers stayed with the parent, its locks may be held
        # by threads that do not exist here. Nothing may wait on it.
        self.inherited = False

    def check_can_wait(self) -> None:  # noqa: B027 - most engines never refuse a wait
        """Raise if the calling thread waiting on this engine could never be woken."""

    def wait_for(self, future: Any, timeout: float | None) -> None:
        """Help ``future`` along while its caller waits (see ``Future._help``).

        Raises:
            PoolClosedError: in a child forked from the pool's process.
            DeadlockError: from :meth:`check_can_wait`, where waiting here
                could never end.
        """
        if self.inherited:
            raise inherited_error()
        if not future.done():
            self.check_can_wait()

    @abc.abstractmethod
    def start(self) -> None:
        """Start the workers."""

    @abc.abstractmethod
    def wake(self) -> None:
        """Work was added to the scheduler; hand it to workers with room."""

    def hand_over(self, job: OneJob) -> bool:
        """Start a new single task at once, bypassing the scheduler, if the engine can.

        Whether it did; if not, the task goes through the scheduler.
        """
        return False

    def know_function(self, fn: Callable[..., Any], pickled: bytes) -> None:  # noqa: B027
        """``fn`` as ``dumps_function`` pickled it already (an auto pool sized it).

        An engine that sends functions to its workers may keep it rather than
        pickle ``fn`` again; the others ignore it.
        """

    def stop_running(self, job: OneJob, error: BaseException) -> None:  # noqa: B027 - optional
        """Stop ``job``'s task though it runs, failing it with ``error``, where the mode can.

        A process engine kills the worker running it (with its process tree)
        and starts another; a thread engine can only raise the task's
        :func:`bingfa.cancelled` flag. A task not yet running is stopped when it
        starts; one that has finished is left alone.
        """

    def share(self, obj: Any) -> Any:
        """``obj`` placed where every task can reach it cheaply; what to pass to tasks.

        A cluster puts it on the cluster once (Dask's ``scatter``, Ray's
        ``put``) and returns a handle that tasks receive as the object itself.
        Here (threads, processes, coroutines) tasks reach it as it is.
        """
        return obj

    def drop_queued(self) -> list[Job]:
        """Take out the tasks the engine holds outside the scheduler (see ``hand_over``)."""
        return []

    def work_added(self) -> Callable[[], None] | None:
        """Work was just added, and the scheduler's lock is still held.

        An engine may react at once, saving the caller a second round of the
        lock; what it returns is run after the lock is released.
        """
        return self.wake

    @abc.abstractmethod
    def shutdown(self, wait: bool) -> None:
        """Run what is queued, then stop every worker; block until then if ``wait``."""

    @abc.abstractmethod
    def terminate(self) -> None:
        """Stop now: fail running tasks, stop workers (killing processes), and wait."""

    @abc.abstractmethod
    def join(self, timeout: float | None = None) -> bool:
        """Wait until every worker has stopped; whether they all did."""

    @property
    def broken(self) -> BaseException | None:
        """Why the pool can run nothing more (an initializer failed), or ``None``."""
        return self.scheduler.broken

    def break_pool(self, error: BaseException, cause: BaseException | None = None) -> None:
        """Fail every waiting job with ``error`` and refuse further work."""
        if cause is not None:
            error.__cause__ = cause
        with self.scheduler.lock:
            if self.scheduler.broken is not None:
                return
            self.scheduler.broken = error
            jobs = self.scheduler.cancel_all() + self.drop_queued()
        for job in jobs:
            job.abort(error)

    def refuse_work(self) -> tuple[PoolClosedError, list[Job]]:
        """For ``terminate`` (scheduler lock held): take every queued job, refuse the rest.

        Returns the error the taken jobs (and the running ones) are to fail
        with; retries that come back later fail with it at once.
        """
        error = PoolClosedError("the pool was terminated before the task finished")
        if self.scheduler.broken is None:
            self.scheduler.broken = error
        return error, self.scheduler.cancel_all()

    def abort_jobs(self, jobs: list[Job], error: BaseException) -> None:
        """Fail ``jobs`` (their unfinished tasks) with ``error``."""
        for job in jobs:
            job.abort(error)


def inherited_error() -> PoolClosedError:
    """The error for using, in a forked child, a pool its parent made."""
    return PoolClosedError(
        "this pool was inherited through os.fork(): its workers and threads belong to the "
        "process that made it, so nothing can run or arrive here; make a new pool in this "
        "process")


def initializer_error(detail: str) -> InitializerError:
    """The error for a pool whose workers cannot initialize."""
    return InitializerError(f"the pool's initializer failed: {detail}")
