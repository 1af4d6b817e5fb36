"""The public Pool: one API over every mode."""

from __future__ import annotations

import atexit
import itertools
import sys
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Literal, TypeVar

from .._core._errors import PoolClosedError
from .._core._futures import Future
from .._core._machine import usable_cores
from .._core._progress import ProgressArg, reporter
from ._batch import CALL_KW, CALL_ONE, CALL_STAR
from ._engines import create_engine, mode_names
from ._engines._base import Engine, EngineConfig
from ._jobs import AUTO, ManyJob, OneJob, Scheduler

__all__ = ["AsyncResult", "Pool", "imap", "map"]

T = TypeVar("T")
R = TypeVar("R")
F = TypeVar("F", bound=Future[Any])

Mode = Literal["thread", "process"]
ChunkSize = int | Literal["auto"]

# How many chunks an imap keeps in flight per worker, and at most how many
# tasks: enough to keep workers busy, never so many that a lazy or endless
# input is read far ahead of its consumer.
IN_FLIGHT_PER_WORKER = 4
MAX_IN_FLIGHT_PER_WORKER = 1024


class AsyncResult(Future[T]):
    """What ``apply_async`` returns: a :class:`bingfa.Future` with the stdlib names too.

    ``get(timeout)``, ``wait(timeout)``, ``ready()`` and ``successful()`` behave as
    on :class:`multiprocessing.pool.AsyncResult`; ``get`` raises the builtin
    :class:`TimeoutError` when the timeout passes.
    """

    def get(self, timeout: float | None = None) -> T:
        """The result, waiting up to ``timeout`` seconds; re-raises the task's error."""
        return self.result(timeout)

    def wait(self, timeout: float | None = None) -> None:
        """Wait up to ``timeout`` seconds for the task to finish."""
        import concurrent.futures

        concurrent.futures.wait([self], timeout)

    def ready(self) -> bool:
        """Whether the task has finished."""
        return self.done()

    def successful(self) -> bool:
        """Whether the task finished without an error.

        Raises:
            ValueError: if the task has not finished yet (as the stdlib does).
        """
        if not self.done():
            raise ValueError(f"{self!r} not ready")
        return not self.cancelled() and self.exception() is None


def _default_workers(mode: str) -> int:
    cpus = usable_cores()
    return min(32, cpus + 4) if mode == "thread" else cpus


def _positive(name: str, value: Any, *, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_chunksize(chunksize: Any) -> None:
    if chunksize != AUTO:
        _positive("chunksize", chunksize, allow_none=False)


class Pool:
    """A pool of workers that runs tasks in one mode: threads or processes.

    Args:
        workers: how many workers; default: the CPUs this process may use in
            process mode, and that plus four (at most 32) in thread mode.
        mode: ``"thread"`` (the default) or ``"process"``.
        task_timeout: seconds a single task may run. A task that overruns fails
            with :class:`~bingfa.TaskTimeoutError`; in process mode its worker is
            terminated (killed after a short grace period) and replaced.
        retries: how many times a task that crashed its worker or timed out is
            run again before its error is reported.
        initializer: called once in each worker before its first task, with
            ``initargs``. What it returns is the worker's state, which tasks
            reach with :func:`bingfa.worker_state`.
        initargs: arguments for ``initializer``.
        max_tasks_per_worker: replace a worker after it has run this many tasks
            (to bound leaks in long runs).
        start_method: ``"forkserver"`` (the default on Linux), ``"spawn"`` or
            ``"fork"``; process mode only.

    Raises:
        ValueError: for a non-positive ``workers``, ``retries < 0``, a negative
            ``task_timeout``, an unknown ``mode`` or ``start_method``.

    Example::

        import bingfa as bf

        with bf.Pool(4, mode="process", task_timeout=30, retries=1) as pool:
            squares = pool.map(lambda x: x * x, range(10_000), progress=True)
            fut = pool.submit(sum, squares)
            print(fut.result())

    Leaving the ``with`` block normally waits for every task; leaving it with an
    exception (Ctrl-C included) terminates the workers at once.
    """

    def __init__(
        self,
        workers: int | None = None,
        *,
        mode: Mode | str = "thread",
        task_timeout: float | None = None,
        retries: int = 0,
        initializer: Callable[..., Any] | None = None,
        initargs: Iterable[Any] = (),
        max_tasks_per_worker: int | None = None,
        start_method: str | None = None,
    ) -> None:
        if mode not in mode_names():
            raise ValueError(f"mode must be one of {', '.join(map(repr, mode_names()))}; "
                             f"got {mode!r}")
        _positive("workers", workers)
        _positive("max_tasks_per_worker", max_tasks_per_worker)
        if task_timeout is not None and (isinstance(task_timeout, bool)
                                         or not isinstance(task_timeout, int | float)
                                         or task_timeout <= 0):
            raise ValueError(f"task_timeout must be a positive number of seconds, "
                             f"got {task_timeout!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be a non-negative integer, got {retries!r}")
        if initializer is not None and not callable(initializer):
            raise TypeError(f"initializer must be callable, not {initializer!r}")
        if start_method is not None:
            import multiprocessing

            methods = multiprocessing.get_all_start_methods()
            if start_method not in methods:
                raise ValueError(f"start_method must be one of {methods}, got {start_method!r}")
            if mode != "process":
                raise ValueError("start_method only applies to mode='process'")
        self.mode = mode
        self.workers = workers if workers is not None else _default_workers(mode)
        self.retries = retries
        self._scheduler = Scheduler()
        config = EngineConfig(
            workers=self.workers, initializer=initializer, initargs=tuple(initargs),
            max_tasks_per_worker=max_tasks_per_worker,
            task_timeout=float(task_timeout) if task_timeout is not None else None,
            start_method=start_method)
        self._engine: Engine = create_engine(mode, self._scheduler, config)
        self._waiter = getattr(self._engine, "wait_for", None)
        self._closed = False
        self._terminated = False
        self._engine.start()
        _live_engines.add(self._engine)
        self._finalizer = weakref.finalize(self, _shutdown_quietly, self._engine)

    # --- submitting -----------------------------------------------------------------
    def submit(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> Future[R]:
        """Run ``fn(*args, **kwargs)`` on a worker; return its :class:`~bingfa.Future`.

        ``fn`` may be a lambda, a closure, a bound method, a classmethod or a
        staticmethod, also in process mode.

        Raises:
            PoolClosedError: if the pool has been closed.
        """
        return self._submit_one(fn, args, kwargs, Future())

    def apply_async(
        self,
        fn: Callable[..., R],
        args: Iterable[Any] = (),
        kwds: Mapping[str, Any] | None = None,
        callback: Callable[[R], Any] | None = None,
        error_callback: Callable[[BaseException], Any] | None = None,
    ) -> AsyncResult[R]:
        """``multiprocessing.Pool.apply_async``, returning an awaitable :class:`AsyncResult`.

        ``callback`` gets the result, ``error_callback`` the exception; they run
        on a pool thread, so they should return quickly.
        """
        result: AsyncResult[R] = AsyncResult()
        if callback is not None or error_callback is not None:
            result.add_done_callback(_callbacks(callback, error_callback))  # type: ignore[arg-type]
        self._submit_one(fn, tuple(args), dict(kwds or {}), result)
        return result

    def apply(self, fn: Callable[..., R], args: Iterable[Any] = (),
              kwds: Mapping[str, Any] | None = None) -> R:
        """Run one task and wait for its result (``multiprocessing.Pool.apply``)."""
        future: Future[R] = Future()
        return self._submit_one(fn, tuple(args), dict(kwds or {}), future).result()

    def _submit_one(self, fn: Callable[..., Any], args: tuple[Any, ...],
                    kwargs: dict[str, Any], future: F) -> F:
        if not callable(fn):
            raise TypeError(f"the task's function must be callable, not {fn!r}")
        future._waiter = self._waiter
        job = OneJob(self._scheduler, fn, CALL_KW, self.retries, (args, kwargs), future)
        with self._scheduler.lock:
            self._check_open()
            self._scheduler.activate(job)
        self._engine.wake()
        return future

    def _check_open(self) -> None:
        if self._closed:
            raise PoolClosedError("cannot submit work to a pool that has been closed")
        if self._scheduler.broken is not None:
            raise self._scheduler.broken

    # --- map family -------------------------------------------------------------------
    def map(self, fn: Callable[[T], R], iterable: Iterable[T], chunksize: ChunkSize = AUTO,
            progress: ProgressArg = False) -> list[R]:
        """``[fn(x) for x in iterable]``, in parallel; results in input order.

        Args:
            fn: the function to apply.
            iterable: the inputs (consumed at once, like ``multiprocessing``).
            chunksize: tasks sent to a worker at a time; ``"auto"`` sizes chunks
                from measured task durations (about 50 ms of work each, smaller
                towards the end so workers finish together).
            progress: ``True`` for a progress bar with an ETA, or a callable
                receiving ``(done, total)``.

        Raises:
            Exception: the first task error, with its original type and the
                worker's traceback as ``__cause__``; the remaining tasks are
                cancelled.
        """
        return self._map(fn, iterable, CALL_ONE, chunksize, progress)

    def starmap(self, fn: Callable[..., R], iterable: Iterable[Iterable[Any]],
                chunksize: ChunkSize = AUTO, progress: ProgressArg = False) -> list[R]:
        """Like :meth:`map`, but each item is unpacked: ``fn(*item)``."""
        return self._map(fn, iterable, CALL_STAR, chunksize, progress)

    def _map(self, fn: Callable[..., Any], iterable: Iterable[Any], call: int,
             chunksize: ChunkSize, progress: ProgressArg) -> list[Any]:
        if not callable(fn):
            raise TypeError(f"the task's function must be callable, not {fn!r}")
        _check_chunksize(chunksize)
        items = iterable if type(iterable) is list else list(iterable)
        n = len(items)
        report = reporter(progress, n, getattr(fn, "__name__", "map"))
        with self._scheduler.lock:
            try:
                self._check_open()
            except BaseException:
                report.close()
                raise
            job = ManyJob(self._scheduler, fn, call, self.retries, chunksize, ordered=True,
                          size_hint=n, dense=True)
            job.wake_each = progress not in (None, False)
            job.add(items)
            job.finish_input()
        try:
            self._engine.wake()
            shown = 0
            with job.cond:
                while job.completed < n and job.first_error is None:
                    if shown != job.completed:
                        shown = job.completed
                        job.cond.release()
                        try:
                            report.update(shown)
                        finally:
                            job.cond.acquire()
                        continue
                    job.cond.wait()
            report.update(job.completed)
            if job.first_error is not None:
                raise job.first_error[1]
            assert job.slots is not None or n == 0
            return job.slots if job.slots is not None else []
        except BaseException:
            job.cancel()
            raise
        finally:
            report.close()

    def imap(self, fn: Callable[[T], R], iterable: Iterable[T], chunksize: ChunkSize = AUTO,
             progress: ProgressArg = False) -> Iterator[R]:
        """Like :meth:`map`, but lazy: an iterator of results in input order.

        The input is consumed as results are taken, with a bounded number of
        tasks in flight, so an endless iterator is fine. A task's error is
        raised when its turn comes; iteration may continue past it.
        """
        return self._imap(fn, iterable, CALL_ONE, chunksize, True, progress)

    def imap_unordered(self, fn: Callable[[T], R], iterable: Iterable[T],
                       chunksize: ChunkSize = AUTO, progress: ProgressArg = False) -> Iterator[R]:
        """Like :meth:`imap`, but results come as soon as they are ready, in any order."""
        return self._imap(fn, iterable, CALL_ONE, chunksize, False, progress)

    def istarmap(self, fn: Callable[..., R], iterable: Iterable[Iterable[Any]],
                 chunksize: ChunkSize = AUTO, progress: ProgressArg = False) -> Iterator[R]:
        """Like :meth:`imap`, but each item is unpacked: ``fn(*item)``."""
        return self._imap(fn, iterable, CALL_STAR, chunksize, True, progress)

    def _imap(self, fn: Callable[..., Any], iterable: Iterable[Any], call: int,
              chunksize: ChunkSize, ordered: bool, progress: ProgressArg) -> Iterator[Any]:
        if not callable(fn):
            raise TypeError(f"the task's function must be callable, not {fn!r}")
        _check_chunksize(chunksize)
        try:
            total: int | None = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
        with self._scheduler.lock:
            self._check_open()
            job = ManyJob(self._scheduler, fn, call, self.retries, chunksize, ordered=ordered,
                          size_hint=total)
        return _ResultIterator(self, job, iter(iterable),
                               reporter(progress, total, getattr(fn, "__name__", "imap")))

    # --- lifecycle ------------------------------------------------------------------------
    def close(self) -> None:
        """Accept no more work; what was submitted still runs (``multiprocessing`` name)."""
        self._closed = True

    def join(self) -> None:
        """Wait for all submitted work to finish and the workers to exit.

        Raises:
            ValueError: if the pool is still open (call :meth:`close` first).
        """
        if not self._closed:
            raise ValueError("join() needs close() first: the pool is still open")
        if self._terminated:
            self._engine.join()
            return
        self._cut_open_inputs()
        self._engine.shutdown(wait=True)
        self._forget()

    def shutdown(self, wait: bool = True, cancel_pending: bool = False) -> None:
        """Close the pool and stop its workers once their work is done.

        Args:
            wait: block until every worker has exited.
            cancel_pending: cancel tasks that have not started yet.
        """
        self._closed = True
        if self._terminated:
            return
        self._cut_open_inputs()
        if cancel_pending:
            with self._scheduler.lock:
                jobs = self._scheduler.cancel_all()
            error = PoolClosedError("the pool was shut down (cancel_pending=True) before "
                                    "these tasks ran")
            for job in jobs:
                if isinstance(job, ManyJob):
                    job.abort(error)  # its consumer hears of it: results stop here
                elif isinstance(job, OneJob):
                    job.cancel()
        self._engine.shutdown(wait)
        if wait:
            self._forget()

    def terminate(self) -> None:
        """Stop now: pending tasks are cancelled, running ones fail, workers are killed.

        Processes get SIGTERM, then SIGKILL after a short grace period; threads
        cannot be killed and are abandoned (their tasks see
        :func:`bingfa.cancelled`).
        """
        self._closed = self._terminated = True
        self._engine.terminate()
        self._forget()

    def _cut_open_inputs(self) -> None:
        # An imap still reading its input when the pool stops would keep the
        # workers waiting for input nobody may ever pull: stop reading it. Its
        # consumer still gets every result already submitted, then an error.
        error = PoolClosedError("the pool was shut down while this imap was still reading "
                                "its input; the results before this point were delivered")
        with self._scheduler.lock:
            for job in list(self._scheduler.open_jobs):
                job.cut_input(error)
        self._engine.wake()

    def _forget(self) -> None:
        _live_engines.discard(self._engine)
        self._finalizer.detach()

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: Any) -> None:
        if exc_type is None:
            self.shutdown(wait=True)
        else:
            self.terminate()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<bingfa.Pool mode={self.mode!r} workers={self.workers} {state}>"


class _ResultIterator(Iterator[Any]):
    """The iterator ``imap`` and ``imap_unordered`` return.

    It feeds the job from the input as room opens (in the consumer's thread,
    so the input is only ever touched there) and hands out results. A task's
    error is raised in its turn; iteration may go on after it. Dropping or
    closing the iterator cancels what has not run.
    """

    def __init__(self, pool: Pool, job: ManyJob, source: Iterator[Any], report: Any) -> None:
        self._pool = pool
        self._job = job
        self._source = source
        self._report = report
        self._next_index = 0
        self._yielded = 0
        self._finished = False

    def __iter__(self) -> _ResultIterator:
        return self

    def _window(self) -> int:
        job = self._job
        workers = self._pool.workers
        chunk = job.chunksize if job.chunksize != AUTO else job._size(None, workers)
        window = IN_FLIGHT_PER_WORKER * workers * int(chunk)
        return max(2 * workers, min(window, MAX_IN_FLIGHT_PER_WORKER * workers))

    def _feed(self) -> None:
        job = self._job
        with job.cond:
            if job.input_done or job.cancelled:
                return
            room = self._window() - job.outstanding()
        if room <= 0:
            return
        block: list[Any] = []
        failure: Exception | None = None
        try:
            # list.extend keeps what it read before an exception.
            block.extend(itertools.islice(self._source, room))
        except Exception as exc:
            # The input broke: its items so far still run, and their results
            # come first; then the consumer gets the input's error.
            failure = exc
        except BaseException:
            self._finish()
            raise
        with job.cond:
            if job.cancelled:
                return
            job.add(block)
            if failure is not None:
                job.cut_input(failure)
            elif len(block) < room:
                job.finish_input()
        self._pool._engine.wake()

    def __next__(self) -> Any:
        if self._finished:
            raise StopIteration
        job = self._job
        try:
            while True:
                self._feed()
                with job.cond:
                    while True:
                        ready = self._pop_ready()
                        if ready is not None:
                            break
                        if job.aborted is not None:
                            raise job.aborted
                        if job.input_done and self._yielded >= job.submitted:
                            if job.input_error is not None:
                                raise job.input_error
                            raise StopIteration
                        if not job.input_done and job.outstanding() < self._window() // 2:
                            break  # room for more input
                        job.cond.wait()
                    done = job.completed
                self._report.update(done)
                if ready is not None:
                    self._yielded += 1
                    ok, value = ready
                    if ok:
                        return value
                    break
        except StopIteration:
            self._finish()
            raise
        except BaseException as exc:
            if not isinstance(exc, Exception) or exc in (job.aborted, job.input_error):
                self._finish()  # Ctrl-C, or the whole job failed: iteration is over
            raise
        # A task's own error, even a SystemExit, ends only its own turn.
        raise value

    def _pop_ready(self) -> tuple[bool, Any] | None:
        """The next outcome to hand out, if it is there (lock held)."""
        job = self._job
        if job.ordered:
            outcome = job.by_index.pop(self._next_index, None)
            if outcome is not None:
                self._next_index += 1
            return outcome
        return job.arrived.popleft() if job.arrived else None

    def _finish(self) -> None:
        if not self._finished:
            self._finished = True
            self._job.cancel()
            self._report.close()

    def close(self) -> None:
        """Stop: cancel the tasks that have not run."""
        self._finish()

    def __del__(self) -> None:
        # No lock here: the garbage collector may run this in a thread that
        # holds the scheduler's lock. The flag alone stops the job; the
        # scheduler drops it at its next look.
        if not self._finished:
            self._job.cancelled = True


def _callbacks(callback: Callable[[Any], Any] | None,
               error_callback: Callable[[BaseException], Any] | None,
               ) -> Callable[[Future[Any]], None]:
    def done(fut: Future[Any]) -> None:
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is None:
            if callback is not None:
                callback(fut.result())
        elif error_callback is not None:
            error_callback(exc)

    return done


def map(fn: Callable[[T], R], iterable: Iterable[T], *, mode: Mode | str = "thread",
        workers: int | None = None, chunksize: ChunkSize = AUTO,
        progress: ProgressArg = False, **pool_options: Any) -> list[R]:
    """Apply ``fn`` to every item on a pool made for the call; results in order.

    Takes the :class:`Pool` options (``task_timeout``, ``retries``, ...) as
    keywords. The pool is gone when it returns, and on Ctrl-C its workers are
    killed at once.

    Example::

        squares = bf.map(lambda x: x * x, range(1000), mode="process", progress=True)
    """
    with Pool(workers, mode=mode, **pool_options) as pool:
        return pool.map(fn, iterable, chunksize=chunksize, progress=progress)


def imap(fn: Callable[[T], R], iterable: Iterable[T], *, mode: Mode | str = "thread",
         workers: int | None = None, ordered: bool = True, chunksize: ChunkSize = AUTO,
         progress: ProgressArg = False, **pool_options: Any) -> Iterator[R]:
    """Lazily apply ``fn`` to every item on a pool made for the iteration.

    Results come in input order, or as they finish with ``ordered=False``. The
    pool starts at the first ``next()`` and stops when the iteration ends or
    the iterator is closed.
    """
    _check_chunksize(chunksize)
    with Pool(workers, mode=mode, **pool_options) as pool:
        if ordered:
            yield from pool.imap(fn, iterable, chunksize=chunksize, progress=progress)
        else:
            yield from pool.imap_unordered(fn, iterable, chunksize=chunksize, progress=progress)


_live_engines: weakref.WeakSet[Engine] = weakref.WeakSet()


def _shutdown_quietly(engine: Engine) -> None:
    # The pool was dropped without close(): let queued work finish, then stop.
    try:
        engine.shutdown(wait=False)
    except Exception:
        pass


@atexit.register
def _finish_at_exit() -> None:
    """What becomes of pools still open when the interpreter exits.

    Their queued work runs, as with ``concurrent.futures`` executors: a
    script that submits and never waits still gets its work done. But when
    the program is ending because of Ctrl-C (or Ctrl-C comes while waiting
    here), everything is stopped at once instead.

    Registered after multiprocessing's own exit handler, so it runs first.
    """
    engines = list(_live_engines)
    if not isinstance(getattr(sys, "last_value", None), KeyboardInterrupt):
        try:
            for engine in engines:
                _drain(engine)
            return
        except BaseException:
            pass  # Ctrl-C while waiting (or a broken pool): stop everything now
    for engine in engines:
        try:
            engine.terminate()
        except Exception:
            pass


def _drain(engine: Engine) -> None:
    """Run what is queued on ``engine``, then stop it."""
    # An imap nobody reads any more would keep the pool waiting for input.
    error = PoolClosedError("the interpreter exited while this imap was reading its input")
    with engine.scheduler.lock:
        for job in list(engine.scheduler.open_jobs):
            job.cut_input(error)
    engine.wake()
    engine.shutdown(wait=True)
