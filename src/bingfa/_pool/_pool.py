"""The public Pool: one API over every mode."""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import sys
import time
import weakref
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Mapping
from contextvars import Context, copy_context
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

from .._core._errors import PoolClosedError
from .._core._futures import Future
from .._core._machine import usable_cores
from .._core._progress import ProgressArg, reporter
from .._core._propagate import carried
from .._core._timeouts import limit_seconds, wait_seconds
from ._batch import CALL_KW, CALL_ONE, CALL_STAR
from ._engines import create_engine, mode_names
from ._engines._base import Engine, EngineConfig, inherited_error
from ._errors import result_timeout_error
from ._imap import ResultIterator
from ._jobs import AUTO, ManyJob, OneJob
from ._lifetime import forget, remember, shutdown_quietly
from ._results import AsyncResult, callbacks, cancel_if_cancelled, settle_map
from ._scheduler import Scheduler

if TYPE_CHECKING:
    # Only for annotations: a thread pool never imports multiprocessing.
    from multiprocessing.context import BaseContext

__all__ = ["Pool"]

T = TypeVar("T")
T2 = TypeVar("T2")
R = TypeVar("R")
F = TypeVar("F", bound=Future[Any])

Mode = Literal["auto", "thread", "process", "async", "gevent", "dask", "ray"]
# None is multiprocessing's spelling of "choose for me".
ChunkSize = int | Literal["auto"] | None



def _default_workers(mode: str) -> int:
    if mode in ("async", "gevent"):
        return 100  # coroutines and greenlets wait, they do not compute: many at once
    if mode in ("dask", "ray"):
        # Tasks in flight on the cluster: enough to keep a few machines busy;
        # the cluster decides where each runs.
        return max(8, 2 * usable_cores())
    cpus = usable_cores()
    return min(32, cpus + 4) if mode == "thread" else cpus


def _submitters_context() -> Context:
    """A copy of the caller's contextvars for tasks run in this process.

    Submitted from a coroutine, it also names the coroutine's loop, so a
    task in a worker thread can call back into it with ``bf.from_thread``.
    """
    context = copy_context()
    asyncio = sys.modules.get("asyncio")  # no loop can run without it imported
    if asyncio is not None and asyncio._get_running_loop() is not None:
        from .._async._bridges import remember_calling_loop

        remember_calling_loop(context)
    return context


def _positive(name: str, value: Any, *, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if value <= 0:
        # concurrent.futures' words, which code written for it may match
        raise ValueError(f"{name} must be greater than 0, got {value!r}")


def _chunksize(chunksize: Any) -> int | str:
    """``chunksize`` checked, with ``None`` (multiprocessing's default) as ``"auto"``."""
    if chunksize is None or (isinstance(chunksize, str) and chunksize == AUTO):
        return AUTO
    _positive("chunksize", chunksize, allow_none=False)
    return int(chunksize)


def _is_context(value: Any) -> bool:
    """Whether ``value`` is a multiprocessing context (importing it only when asked)."""
    from multiprocessing.context import BaseContext

    return isinstance(value, BaseContext)


def _checked_start_method(name: str, value: Any) -> str:
    """The start method given as ``name`` (a method's name, or a context's).

    Raises:
        TypeError: a context spelling that is no multiprocessing context.
        ValueError: an unknown start method.
    """
    if name != "start_method":
        if not _is_context(value):
            raise TypeError(f"{name} must be a multiprocessing context, not {value!r}")
        value = value.get_start_method()
    from ._engines._launcher import START_METHODS

    if value not in START_METHODS:
        raise ValueError(f"start_method must be one of {list(START_METHODS)}, got {value!r}")
    return str(value)


def _one_setting(**spellings: Any) -> tuple[str, Any]:
    """The one of several spellings of a setting that was given: (name, value).

    Raises:
        TypeError: if more than one was given.
    """
    given = [(name, value) for name, value in spellings.items() if value is not None]
    if len(given) > 1:
        names = " and ".join(name for name, _ in given)
        raise TypeError(f"{names} are the same setting; give only one of them")
    return given[0] if given else (next(iter(spellings)), None)


def _map_items(fn: Callable[..., Any], iterable: Iterable[Any], chunksize: ChunkSize,
               ) -> tuple[list[Any], int | str]:
    """A map's checked function and chunksize, and its input read into a list."""
    if not callable(fn):
        raise TypeError(f"the task's function must be callable, not {fn!r}")
    size = _chunksize(chunksize)
    return (iterable if type(iterable) is list else list(iterable)), size


def _map_inputs(iterables: tuple[Any, ...], chunksize: Any,
                ) -> tuple[Iterable[Any], int, Any]:
    """(items, call, chunksize) for ``map(fn, *iterables, chunksize=...)``.

    One iterable calls ``fn(item)``; several are zipped, shortest first, and
    call ``fn(*items)``, as the builtin ``map`` does. ``map(fn, items, 10)``
    is ``multiprocessing``'s positional chunksize: an integer is never an
    iterable, so it cannot mean anything else.
    """
    if not iterables:
        raise TypeError("map() needs at least one iterable")
    if len(iterables) == 2 and (iterables[1] is None or (
            isinstance(iterables[1], int) and not isinstance(iterables[1], bool))):
        if chunksize is not None and chunksize != AUTO:
            raise TypeError("map() got chunksize both as its third argument and by keyword")
        return iterables[0], CALL_ONE, iterables[1]
    if len(iterables) == 1:
        return iterables[0], CALL_ONE, chunksize
    return zip(*iterables, strict=False), CALL_STAR, chunksize  # shortest wins


class Pool:
    """Workers that run tasks in one mode: threads, processes, coroutines, greenlets, a cluster.

    The positional parameters are ``multiprocessing.Pool``'s, in its order, and
    the spellings of ``multiprocessing`` and ``concurrent.futures`` are
    accepted too, so either can be swapped for a ``bf.Pool`` by changing the
    constructor's name only (see "Drop-in use" in ``docs/pools.md``).

    Args:
        workers: how many workers (tasks at once); default: the CPUs this
            process may use in process mode, that plus four (at most 32) in
            thread mode, 100 in async and gevent modes, and ``max(8, 2 * cores)``
            batches in flight on a cluster. Also
            spelled ``processes`` (``multiprocessing``) or ``max_workers``
            (``concurrent.futures``).
        initializer: called once in each worker before its first task, with
            ``initargs``. What it returns is the worker's state, which tasks
            reach with :func:`bingfa.worker_state`.
        initargs: arguments for ``initializer``.
        max_tasks_per_worker: replace a worker after it has run this many tasks
            (to bound leaks in long runs). Also spelled ``maxtasksperchild`` or
            ``max_tasks_per_child``.
        context: a :mod:`multiprocessing` context (also spelled
            ``mp_context``); only its start method is used. Implies process
            mode.
        mode: ``"thread"``, ``"process"``, ``"async"`` (coroutine functions,
            on the running event loop or on one the pool runs; see
            ``docs/async.md``) or ``"gevent"`` (greenlets, after
            ``gevent.monkey.patch_all()``), ``"dask"`` or ``"ray"`` (a
            cluster; see ``docs/clusters.md``). Without it the pool runs threads,
            unless ``processes=``, a context or a ``start_method`` is given:
            those ask for processes (``bf.Pool(processes=4)`` stands in for
            ``multiprocessing.Pool(processes=4)``). ``max_workers=`` and a
            positional worker count keep threads.
        task_timeout: seconds a single task may run (``inf``: no limit; ``0``
            leaves a task no time: it fails unless it is over before the pool
            looks). A task that overruns fails with
            :class:`~bingfa.TaskTimeoutError`; in process mode its worker is
            terminated (killed after a short grace period) and replaced; in
            async mode its coroutine is cancelled.
        retries: how many times a task that crashed its worker or timed out is
            run again before its error is reported.
        start_method: ``"forkserver"`` (the default on Linux), ``"spawn"`` or
            ``"fork"``; process mode only.
        processes: ``workers``, as ``multiprocessing.Pool`` spells it; implies
            process mode.
        max_workers: ``workers``, as ``concurrent.futures`` spells it.
        maxtasksperchild: ``max_tasks_per_worker``, as ``multiprocessing.Pool``
            spells it.
        max_tasks_per_child: ``max_tasks_per_worker``, as
            ``ProcessPoolExecutor`` spells it.
        mp_context: ``context``, as ``ProcessPoolExecutor`` spells it.
        thread_name_prefix: names the worker threads ``<prefix>_0``,
            ``<prefix>_1``, ... (thread mode), as ``ThreadPoolExecutor`` does.
        address: the cluster to join (``mode="dask"``: a scheduler's
            ``tcp://host:port``; ``mode="ray"``: ``"auto"`` or ``host:port``).
        client: an existing ``distributed.Client`` to run on (``mode="dask"``);
            the pool never closes it.

    Attributes:
        mode: the mode the pool runs in.
        workers: how many workers.
        start_method: how process workers start, ``None`` in thread mode:
            the one asked for, or the default, or ``"fork"`` when
            ``initargs`` hold objects that can only be inherited.

    Raises:
        ValueError: for a non-positive ``workers``, ``retries < 0``, a negative
            or NaN ``task_timeout``, an unknown ``mode`` or ``start_method``, or
            a start method with ``mode="thread"``.
        TypeError: for one setting given twice under two spellings
            (``workers=2, processes=3``), or a non-callable ``initializer``.

    Example::

        import bingfa as bf

        with bf.Pool(4, mode="process", task_timeout=30, retries=1) as pool:
            squares = pool.map(lambda x: x * x, range(10_000), progress=True)
            fut = pool.submit(sum, squares)
            print(fut.result())

    Leaving the ``with`` block normally waits for every task; leaving it with an
    exception (Ctrl-C included) terminates the workers at once.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Pool:
        if cls is Pool and kwargs.get("mode") == "auto":
            # Measures each function, then runs it in threads or processes.
            from ._auto._pool import AutoPool

            return super().__new__(AutoPool)
        return super().__new__(cls)

    def __init__(
        self,
        workers: int | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: Iterable[Any] = (),
        max_tasks_per_worker: int | None = None,
        context: BaseContext | None = None,
        *,
        mode: Mode | str | None = None,
        task_timeout: float | None = None,
        retries: int = 0,
        start_method: str | None = None,
        processes: int | None = None,
        max_workers: int | None = None,
        maxtasksperchild: int | None = None,
        max_tasks_per_child: int | None = None,
        mp_context: BaseContext | None = None,
        thread_name_prefix: str | None = None,
        address: str | None = None,
        client: Any = None,
    ) -> None:
        workers_name, workers = _one_setting(workers=workers, processes=processes,
                                             max_workers=max_workers)
        limit_name, max_tasks_per_worker = _one_setting(
            max_tasks_per_worker=max_tasks_per_worker, maxtasksperchild=maxtasksperchild,
            max_tasks_per_child=max_tasks_per_child)
        method_name, method = _one_setting(start_method=start_method, context=context,
                                           mp_context=mp_context)
        if mode is None:
            # Who says processes= or hands over a start method is replacing a
            # process pool; a bare count or max_workers= keeps bingfa's default.
            mode = "process" if processes is not None or method is not None else "thread"
        if mode not in mode_names():
            names = ", ".join(map(repr, ("auto", *mode_names())))
            raise ValueError(f"mode must be one of {names}; got {mode!r}")
        _positive(workers_name, workers)
        _positive(limit_name, max_tasks_per_worker)
        timeout = limit_seconds(task_timeout, "task_timeout")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be a non-negative integer, got {retries!r}")
        if initializer is not None and not callable(initializer):
            if _is_context(initializer):
                raise TypeError("bf.Pool takes multiprocessing.Pool's positional order "
                                "(workers, initializer, initargs, maxtasksperchild, context); "
                                "pass a context as mp_context=")
            raise TypeError(f"initializer must be callable, not {initializer!r}")
        if method is not None:
            method = _checked_start_method(method_name, method)
            if mode != "process":
                raise ValueError(f"{method_name} only applies to mode='process'")
        options: dict[str, Any] = {}
        if address is not None:
            if mode not in ("dask", "ray"):
                raise ValueError("address= only applies to mode='dask' or mode='ray'")
            options["address"] = address
        if client is not None:
            if mode != "dask":
                raise ValueError("client= only applies to mode='dask'")
            if address is not None:
                raise ValueError("give address= or client=, not both: a client has its "
                                 "scheduler's address already")
            options["client"] = client
        self.mode = mode
        self.workers = workers if workers is not None else _default_workers(mode)
        self.retries = retries
        self._scheduler = Scheduler()
        config = EngineConfig(
            workers=self.workers, initializer=initializer, initargs=tuple(initargs),
            max_tasks_per_worker=max_tasks_per_worker, task_timeout=timeout,
            start_method=method, thread_name_prefix=thread_name_prefix, options=options)
        self._engine: Engine = create_engine(mode, self._scheduler, config)
        self.start_method: str | None = getattr(self._engine, "start_method", None)
        # Tasks in threads of this process see the submitter's contextvars (a
        # copy each), as asyncio.to_thread's do; ThreadPoolExecutor's do not.
        self._copies_context = mode in ("thread", "async", "gevent")
        # Async mode runs coroutine functions only: refuse a plain one at once.
        self._wants_coroutines = mode == "async"
        # Process-mode tasks carry the variables registered with bf.propagate.
        self._carries_context = mode == "process"
        self._waiter = getattr(self._engine, "wait_for", None)
        self._closed = False
        self._terminated = False
        self._engine.start()
        remember(self._engine)
        self._finalizer = weakref.finalize(self, shutdown_quietly, self._engine)

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
            result.add_done_callback(callbacks(callback, error_callback))
        self._submit_one(fn, tuple(args), dict(kwds or {}), result)
        return result

    def apply(self, fn: Callable[..., R], args: Iterable[Any] = (),
              kwds: Mapping[str, Any] | None = None) -> R:
        """Run one task and wait for its result (``multiprocessing.Pool.apply``)."""
        future: Future[R] = Future()
        return self._submit_one(fn, tuple(args), dict(kwds or {}), future).result()

    def _submit_one(self, fn: Callable[..., Any], args: tuple[Any, ...],
                    kwargs: dict[str, Any], future: F) -> F:
        self._submit_job(fn, args, kwargs, future)
        return future

    def _submit_stoppable(self, fn: Callable[..., Any], args: tuple[Any, ...],
                          kwargs: dict[str, Any]) -> tuple[Future[Any], Callable[[], None]]:
        """``submit``, and a function that stops the task even once it runs (for scopes).

        The stop fails the task with CancelledError: in process mode its
        worker is killed with its process tree and replaced; in thread mode
        the task's :func:`bingfa.cancelled` turns true.
        """
        future: Future[Any] = Future()
        job = self._submit_job(fn, args, kwargs, future)
        engine = self._engine

        def stop() -> None:
            if not future.cancel():
                engine.stop_running(job, concurrent.futures.CancelledError())
        return future, stop

    def _submit_job(self, fn: Callable[..., Any], args: tuple[Any, ...],
                    kwargs: dict[str, Any], future: Future[Any]) -> OneJob:
        self._check_function(fn)
        future._waiter = self._waiter
        if self._carries_context:
            fn = carried(fn)
        job = OneJob(self._scheduler, fn, CALL_KW, self.retries, (args, kwargs), future)
        if self._copies_context:
            job.context = _submitters_context()
        self._check_open()
        if self._engine.hand_over(job):
            return job
        with self._scheduler.lock:
            self._check_open()
            self._scheduler.activate(job)
            then = self._engine.work_added()
        if then is not None:
            then()
        return job

    def _check_function(self, fn: Any) -> None:
        if not callable(fn):
            raise TypeError(f"the task's function must be callable, not {fn!r}")
        if self._wants_coroutines:
            from ._coroutines import is_coroutine_function  # inspect: only when needed

            if not is_coroutine_function(fn):
                name = getattr(fn, "__qualname__", None) or repr(fn)
                raise TypeError(
                    f"mode='async' runs coroutine functions (async def), and {name} is a "
                    "plain function; run it with mode='thread' or mode='process', or from "
                    "a coroutine with await bf.to_thread(...)")

    def _check_open(self) -> None:
        if self._engine.inherited:
            raise inherited_error()
        if self._closed:
            raise PoolClosedError("cannot submit work to a pool that has been closed")
        if self._scheduler.broken is not None:
            raise self._scheduler.broken

    # --- map family -------------------------------------------------------------------
    @overload
    def map(self, fn: Callable[[T], R], iterable: Iterable[T], /, *,
            timeout: float | None = None, chunksize: ChunkSize = AUTO,
            progress: ProgressArg = False) -> list[R]: ...

    @overload
    def map(self, fn: Callable[[T], R], iterable: Iterable[T], chunksize: int | None, /, *,
            timeout: float | None = None, progress: ProgressArg = False) -> list[R]: ...

    @overload
    def map(self, fn: Callable[[T, T2], R], iterable: Iterable[T], iterable2: Iterable[T2], /,
            *, timeout: float | None = None, chunksize: ChunkSize = AUTO,
            progress: ProgressArg = False) -> list[R]: ...

    @overload
    def map(self, fn: Callable[..., R], iterable: Iterable[Any], /, *iterables: Iterable[Any],
            timeout: float | None = None, chunksize: ChunkSize = AUTO,
            progress: ProgressArg = False) -> list[R]: ...

    def map(self, fn: Callable[..., R], /, *iterables: Any, timeout: float | None = None,
            chunksize: ChunkSize = AUTO, progress: ProgressArg = False) -> list[R]:
        """``[fn(x) for x in iterable]``, in parallel; results in input order.

        As in ``concurrent.futures``, several iterables call ``fn`` with one
        item of each, stopping at the shortest (like the builtin ``map``).
        Unlike there, the result is a list, so the whole input is read at once
        (like ``multiprocessing``): use :meth:`imap` for a lazy or endless one.

        Args:
            fn: the function to apply.
            *iterables: the inputs. ``map(fn, items, 10)``, ``multiprocessing``'s
                positional chunksize, works too.
            timeout: seconds the whole map may take, from the call. When they
                pass, the tasks not started are cancelled and
                :class:`~bingfa.ResultTimeoutError` (a :class:`TimeoutError`) is
                raised; tasks already running finish, their results dropped.
            chunksize: tasks sent to a worker at a time; ``"auto"`` (or
                ``None``) sizes chunks from measured task durations (about 50 ms
                of work each, smaller towards the end so workers finish
                together).
            progress: ``True`` for a progress bar with an ETA, or a callable
                called with ``(done, total)`` once per finished task.

        Raises:
            Exception: the first task error, with its original type and the
                worker's traceback as ``__cause__``; the remaining tasks are
                cancelled.
            ResultTimeoutError: ``timeout`` passed first.
        """
        started = time.monotonic()
        wait = wait_seconds(timeout)
        items, call, chunksize = _map_inputs(iterables, chunksize)
        return self._map(fn, items, call, chunksize, progress, started, wait)

    def starmap(self, fn: Callable[..., R], iterable: Iterable[Iterable[Any]],
                chunksize: ChunkSize = AUTO, progress: ProgressArg = False, *,
                timeout: float | None = None) -> list[R]:
        """Like :meth:`map`, but each item is unpacked: ``fn(*item)``."""
        started = time.monotonic()
        wait = wait_seconds(timeout)
        return self._map(fn, iterable, CALL_STAR, chunksize, progress, started, wait)

    def _map(self, fn: Callable[..., Any], iterable: Iterable[Any], call: int,
             chunksize: ChunkSize, progress: ProgressArg, started: float,
             wait: float | None, skip: int = 0) -> list[Any]:
        """The results of a map, in order (``skip``: see ``_queue_map``)."""
        items, size = _map_items(fn, iterable, chunksize)
        n = len(items)
        report = reporter(progress, n, getattr(fn, "__name__", "map"))
        job = None
        try:
            job = self._queue_map(fn, items, call, size, wake_each=progress not in (None, False),
                                  skip=skip)
            if job is None:
                return []
            deadline = None if wait is None else started + wait
            shown = 0
            if job.completed < n:
                self._engine.check_can_wait()
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
                    if deadline is None:
                        job.cond.wait()
                        continue
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise result_timeout_error(
                            f"map() did not finish within {wait:g} s: {n - job.completed} of "
                            f"its {n} tasks had not finished; those not started were cancelled")
                    job.cond.wait(left)
            report.update(job.completed)
            if job.first_error is not None:
                raise job.first_error[1]
            assert job.slots is not None
            return job.slots
        except BaseException:
            if job is not None:
                job.cancel()
            raise
        finally:
            report.close()

    def _queue_map(self, fn: Callable[..., Any], items: list[Any], call: int,
                   chunksize: int | str, wake_each: bool,
                   on_end: Callable[[ManyJob], None] | None = None,
                   on_notify: Callable[[], None] | None = None,
                   skip: int = 0) -> ManyJob | None:
        """Queue a map's tasks; its job, or ``None`` for none to run here.

        ``on_end(job)`` is called once when the job ends (see ``ManyJob.on_end``),
        ``on_notify()`` whenever its waiters are woken (``ManyJob.on_notify``).
        ``skip``: the first items are run elsewhere; their results are left
        ``None`` (see ``ManyJob.add``).
        """
        self._check_function(fn)
        with self._scheduler.lock:
            self._check_open()
            if len(items) <= skip:
                return None
            job = ManyJob(self._scheduler, carried(fn) if self._carries_context else fn, call,
                          self.retries, chunksize, ordered=True, size_hint=len(items),
                          dense=True)
            if self._copies_context:
                job.context = _submitters_context()
            # Whether the caller wants to hear of every finished chunk, for
            # its progress display, or only of the end.
            job.wake_each = wake_each
            if on_end is not None:
                job.on_end = functools.partial(on_end, job)
            job.on_notify = on_notify
            job.add(items, skip)
            job.finish_input()
        self._engine.wake()
        return job

    def map_async(self, fn: Callable[[T], R], iterable: Iterable[T],
                  chunksize: ChunkSize = None,
                  callback: Callable[[list[R]], Any] | None = None,
                  error_callback: Callable[[BaseException], Any] | None = None,
                  ) -> AsyncResult[list[R]]:
        """``multiprocessing.Pool.map_async``: :meth:`map` without waiting.

        Returns an :class:`AsyncResult` whose value is the list of results.
        ``callback`` gets that list; ``error_callback`` gets the first task
        error (by input position among those seen), and the tasks not started
        then are cancelled. Both run on a pool thread, so they should return
        quickly. Cancelling the result cancels the tasks not started.
        """
        return self._map_async(fn, iterable, CALL_ONE, chunksize, callback, error_callback)

    def starmap_async(self, fn: Callable[..., R], iterable: Iterable[Iterable[Any]],
                      chunksize: ChunkSize = None,
                      callback: Callable[[list[R]], Any] | None = None,
                      error_callback: Callable[[BaseException], Any] | None = None,
                      ) -> AsyncResult[list[R]]:
        """Like :meth:`map_async`, but each item is unpacked: ``fn(*item)``."""
        return self._map_async(fn, iterable, CALL_STAR, chunksize, callback, error_callback)

    def _map_async(self, fn: Callable[..., Any], iterable: Iterable[Any], call: int,
                   chunksize: ChunkSize, callback: Callable[[Any], Any] | None,
                   error_callback: Callable[[BaseException], Any] | None,
                   skip: int = 0) -> AsyncResult[list[Any]]:
        """A map's result to come (``skip``: see ``_queue_map``)."""
        items, size = _map_items(fn, iterable, chunksize)
        result: AsyncResult[list[Any]] = AsyncResult()
        result._waiter = self._waiter
        if callback is not None or error_callback is not None:
            result.add_done_callback(callbacks(callback, error_callback))
        # No thread waits for a map_async: its job settles the result as it
        # ends, in the thread that delivers its last result or first error.
        job = self._queue_map(fn, items, call, size, wake_each=False,
                              on_end=functools.partial(settle_map, result), skip=skip)
        if job is None:
            result.set_result([])
        else:
            result.add_done_callback(functools.partial(cancel_if_cancelled, job))
        return result

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
        job, total = self._imap_job(fn, iterable, call, chunksize, ordered)
        return ResultIterator(self._engine, self.workers, job, iter(iterable),
                              reporter(progress, total, getattr(fn, "__name__", "imap")))

    def _imap_job(self, fn: Callable[..., Any], iterable: Any, call: int,
                  chunksize: ChunkSize, ordered: bool) -> tuple[ManyJob, int | None]:
        """The job of an imap family call, and its input's length if it has one."""
        self._check_function(fn)
        size = _chunksize(chunksize)
        try:
            total: int | None = len(iterable)
        except TypeError:
            total = None
        with self._scheduler.lock:
            self._check_open()
            job = ManyJob(self._scheduler, carried(fn) if self._carries_context else fn, call,
                          self.retries, size, ordered=ordered, size_hint=total)
            if self._copies_context:
                job.context = _submitters_context()
        return job, total

    def share(self, obj: T) -> T:
        """Put a large object where every task can reach it cheaply; pass what this returns.

        On a cluster (``mode="dask"`` or ``"ray"``) the object travels to the
        cluster once (``scatter`` / ``ray.put``), and each task that gets the
        returned handle as an argument receives the object itself, instead of
        a copy pickled into every task. In the other modes it returns ``obj``:
        threads and coroutines share memory, and process mode sends big
        buffers through shared memory already.

        Example::

            with bf.Pool(mode="dask") as pool:
                table = pool.share(big_lookup_table)
                hits = pool.map(lookup, keys, [table] * len(keys))
        """
        self._check_open()
        shared: T = self._engine.share(obj)
        return shared

    # --- asyncio faces (every mode) ----------------------------------------------------
    async def amap(self, fn: Callable[..., R], /, *iterables: Any,
                   timeout: float | None = None, chunksize: ChunkSize = AUTO,
                   progress: ProgressArg = False) -> list[R]:
        """:meth:`map` for coroutines: awaits the results without blocking the event loop.

        Works on a pool of any mode (threads and processes run the tasks
        while the loop goes on). Cancelling the awaiting coroutine cancels
        the tasks that have not started.

        Example::

            async with bf.Pool(100, mode="async") as pool:
                pages = await pool.amap(fetch, urls, progress=True)
        """
        started = time.monotonic()
        wait = wait_seconds(timeout)
        items, call, size = _map_inputs(iterables, chunksize)
        return await self._amap(fn, items, call, size, progress, started, wait)

    async def astarmap(self, fn: Callable[..., R], iterable: Iterable[Iterable[Any]],
                       chunksize: ChunkSize = AUTO, progress: ProgressArg = False, *,
                       timeout: float | None = None) -> list[R]:
        """:meth:`starmap` for coroutines: ``fn(*item)`` for each item, awaited."""
        started = time.monotonic()
        wait = wait_seconds(timeout)
        return await self._amap(fn, iterable, CALL_STAR, chunksize, progress, started, wait)

    async def _amap(self, fn: Callable[..., Any], iterable: Iterable[Any], call: int,
                    chunksize: ChunkSize, progress: ProgressArg, started: float,
                    wait: float | None, skip: int = 0) -> list[Any]:
        """The results of a map, in order, awaited (``skip``: see ``_queue_map``)."""
        from ._aimap import LoopWaker, wait_for_map

        items, size = _map_items(fn, iterable, chunksize)
        report = reporter(progress, len(items), getattr(fn, "__name__", "amap"))
        try:
            job = self._queue_map(fn, items, call, size, wake_each=progress not in (None, False),
                                  on_notify=LoopWaker(), skip=skip)
        except BaseException:
            report.close()
            raise
        if job is None:
            report.close()
            return []
        deadline = None if wait is None else started + wait
        return await wait_for_map(job, len(items), report, deadline, wait)

    def aimap(self, fn: Callable[..., R], iterable: Iterable[Any] | AsyncIterable[Any],
              chunksize: ChunkSize = AUTO, progress: ProgressArg = False) -> AsyncIterator[R]:
        """:meth:`imap` for coroutines: ``async for`` over the results, in input order.

        The input may be an async iterable (an async generator, say) as well
        as a plain one; it is read as room opens, so an endless one is fine.
        Leaving the loop early (``break``) cancels what has not run.
        """
        return self._aimap(fn, iterable, CALL_ONE, chunksize, True, progress)

    def aimap_unordered(self, fn: Callable[..., R],
                        iterable: Iterable[Any] | AsyncIterable[Any],
                        chunksize: ChunkSize = AUTO,
                        progress: ProgressArg = False) -> AsyncIterator[R]:
        """Like :meth:`aimap`, but results come as soon as they are ready, in any order."""
        return self._aimap(fn, iterable, CALL_ONE, chunksize, False, progress)

    def aistarmap(self, fn: Callable[..., R],
                  iterable: Iterable[Iterable[Any]] | AsyncIterable[Iterable[Any]],
                  chunksize: ChunkSize = AUTO, progress: ProgressArg = False) -> AsyncIterator[R]:
        """Like :meth:`aimap`, but each item is unpacked: ``fn(*item)``."""
        return self._aimap(fn, iterable, CALL_STAR, chunksize, True, progress)

    def _aimap(self, fn: Callable[..., Any], iterable: Any, call: int, chunksize: ChunkSize,
               ordered: bool, progress: ProgressArg) -> AsyncIterator[Any]:
        from ._aimap import AsyncResultIterator, async_source

        job, total = self._imap_job(fn, iterable, call, chunksize, ordered)
        return AsyncResultIterator(self._engine, self.workers, job, async_source(iterable),
                                   reporter(progress, total, getattr(fn, "__name__", "aimap")))

    async def aclose(self) -> None:
        """:meth:`shutdown` for coroutines: close, and await every task without blocking."""
        import asyncio

        engine = self._engine
        if getattr(engine, "loop", None) is asyncio.get_running_loop():
            # The tasks run on this very loop: wait by awaiting, not by blocking.
            self._closed = True
            if self._terminated or engine.inherited:
                return
            self._cut_open_inputs()
            engine.shutdown(wait=False)
            await engine.wait_stopped()  # type: ignore[attr-defined]
            self._forget()
            return
        await asyncio.to_thread(self.shutdown, True)

    async def __aenter__(self) -> Pool:
        return self.__enter__()

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: Any) -> None:
        if exc_type is None:
            await self.aclose()
            return
        import asyncio

        engine = self._engine
        if getattr(engine, "loop", None) is asyncio.get_running_loop():
            self.terminate()  # cancels the coroutines; give them a moment to unwind
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(engine.config.kill_grace):
                    await engine.wait_stopped()  # type: ignore[attr-defined]
        else:
            await asyncio.to_thread(self.terminate)

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
        if self._engine.inherited:
            return  # the parent's to stop, not this forked child's
        if self._terminated:
            self._engine.join()
            return
        self._cut_open_inputs()
        self._engine.shutdown(wait=True)
        self._forget()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False,
                 cancel_pending: bool | None = None) -> None:
        """Close the pool and stop its workers once their work is done.

        The signature of ``concurrent.futures.Executor.shutdown``.

        Args:
            wait: block until every worker has exited.
            cancel_futures: cancel the tasks that have not started yet; a
                map or imap waiting on them fails with
                :class:`~bingfa.PoolClosedError`.
            cancel_pending: the older name of ``cancel_futures``, still accepted.

        Raises:
            TypeError: if both ``cancel_futures`` and ``cancel_pending`` are given.
        """
        if cancel_pending is not None:
            if cancel_futures:
                raise TypeError("cancel_pending is the older name of cancel_futures; "
                                "give only one of them")
            cancel_futures = cancel_pending
        self._closed = True
        if self._terminated or self._engine.inherited:
            return
        self._cut_open_inputs()
        if cancel_futures:
            with self._scheduler.lock:
                jobs = self._scheduler.cancel_all() + self._engine.drop_queued()
            error = PoolClosedError("the pool was shut down (cancel_futures=True) before "
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
        if not self._engine.inherited:
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
        forget(self._engine)
        self._finalizer.detach()

    def __enter__(self) -> Pool:
        if self._closed:
            # As multiprocessing does: a pool's with block closes it, and a
            # second block would only find out at its first submit.
            raise PoolClosedError("cannot enter a pool that has been closed (a pool's with "
                                  "block closes it when it ends); make a new pool")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: Any) -> None:
        if exc_type is None:
            self.shutdown(wait=True)
        else:
            self.terminate()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<bingfa.Pool mode={self.mode!r} workers={self.workers} {state}>"


