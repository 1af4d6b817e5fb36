"""Ray mode: batches of tasks run as Ray tasks, at most ``workers`` batches in flight.

Where the pool runs, by the ``address=`` it was given:

- none, and Ray is not initialised in this process (nor ``RAY_ADDRESS`` set):
  the pool starts a local Ray of its own (``ray.init``, without a dashboard,
  usage statistics off, in a temporary directory it removes) and shuts it down
  when the last pool using it stops (should the process be killed, its
  janitor removes the directory, and Ray's processes end once they see their
  driver gone: its two agents a minute or two later);
- ``address="auto"``, ``"ray://..."`` or ``"10.0.0.5:6379"``, or none with
  ``RAY_ADDRESS`` in the environment (as ``ray.init()`` itself reads it): the
  pool joins that running cluster and, leaving, only disconnects from it;
- Ray already initialised in this process (``ray.init`` was called): the pool
  uses it as it is, and never shuts it down.

``workers`` is the number of batches in flight, not a number of processes:
the cluster decides where each runs, and a batch goes to whichever worker Ray
finds free (nothing is assigned to a worker ahead of time, so a slow batch
never holds up others queued behind it). Batches are sized from their measured
*remote* running time, as in process mode, and from the cluster's CPUs (read
again every ten seconds): a map of 100,000 trivial tasks costs a few Ray
tasks, not 100,000 (each costs Ray a millisecond or more), a long map a few
per CPU, shrinking towards its end (or, once its function was timed steady, in
the same few equal chunks for every CPU), while slow tasks go a few at a time
so every worker stays busy.

Ray's own retries are off (``max_retries=0``): bingfa's ``retries=`` decides.
A task's exception is caught on the worker (Ray sees a success) and re-raised
here with its own type and the worker's traceback as ``__cause__``. A batch
lost with its worker process or node fails with
:class:`~bingfa.WorkerCrashedError`: a batch of one task fails (and is retried
if ``retries=`` allows); the tasks of a larger batch run again one by one,
uncharged, so only a task that kills its worker again fails.

Ray can stop a running task: one that outlives ``task_timeout`` is cancelled
with ``ray.cancel(force=True)``, which kills the Ray worker process running it
(Ray starts another), and the task fails with
:class:`~bingfa.TaskTimeoutError`. The time counts from when the task starts
on a worker, not from when it was handed to Ray (each batch then holds one
task, and reports its start). ``terminate()`` and a stop (a scope's cancel)
kill running tasks the same way.

Objects given to :meth:`~bingfa.Pool.share` are put in Ray's object store
once; a task whose arguments hold the handle receives the object itself.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from queue import SimpleQueue
from typing import Any

from ..._core._context import WorkerContext, set_thread_context
from ..._core._errors import (
    BackendUnavailableError,
    DeadlockError,
    TaskTimeoutError,
    WorkerCrashedError,
)
from ..._core._janitor import temporary_directory
from ..._core._remote_traceback import ErrorPayload, capture, rebuild
from .._batch import CALL_KW, CALL_ONE, CALL_STAR
from .._jobs import Batch, OneJob
from .._scheduler import Scheduler
from ._base import Engine, EngineConfig, initializer_error
from ._remote_batch import ClusterWidth, RemoteOutcome, outcomes, run_remote_batch

__all__ = ["RayEngine"]

# How a map's tasks are cut into Ray tasks once their time is known. Between
# two Ray tasks a worker waits for a round trip to this process: 2 ms here
# when the CPUs are idle, about 20 ms when they are busy (Ray's own Pool runs
# its chunks on actors, whose calls queue on the worker and never wait). So a
# chunk is what is left of the map over the CPUs of the cluster (plain guided
# scheduling: a few Ray tasks per CPU for a whole map), up to
# MOST_WORK_PER_BATCH of work; the tail shrinks down to LEAST_WORK_PER_BATCH,
# so the CPUs finish within about that of each other.
# A map whose tasks vary is cut over twice the CPUs instead (see _spread.py):
# each task of a batch is timed on the worker, where tasks take long enough
# that reading the clock between two of them costs nothing. A map timed steady
# (its function's last map) is cut evenly before it starts: the same few
# chunks, of about MOST_WORK_PER_BATCH, for every CPU.
MOST_WORK_PER_BATCH = 5.0
LEAST_WORK_PER_BATCH = 0.05
TIME_EACH_TASK_SECONDS = 0.001


def import_ray() -> Any:
    """The ``ray`` module, or :class:`~bingfa.BackendUnavailableError` naming the extra."""
    try:
        import ray
    except ImportError as exc:
        raise BackendUnavailableError(
            "mode='ray' needs Ray, which is not installed: pip install 'bingfa[ray]'",
            extra="ray") from exc
    return ray


# --- the Ray this process connected to ---------------------------------------------------


class _Session:
    """A ``ray.init`` made by bingfa, shared by every pool that uses it.

    The last pool to stop calls ``ray.shutdown()``: for a local Ray that stops
    it (and its directory is removed); for a joined cluster it only
    disconnects this process.
    """

    def __init__(self, temp_dir: str | None) -> None:
        self.temp_dir = temp_dir
        self.users = 0


_session_lock = threading.Lock()
_session: _Session | None = None


def _acquire_session(ray: Any, address: str | None) -> _Session | None:
    """Connect this process to Ray if needed; the session to release, or ``None``.

    ``None`` means Ray was initialised by someone else: it is theirs to shut down.
    """
    global _session
    with _session_lock:
        if ray.is_initialized():
            if _session is None:
                return None
            _session.users += 1
            return _session
        # The processes Ray starts read it from the environment.
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        job_config = _job_config(ray)
        kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "job_config": job_config}
        temp_dir = None
        if address is None and not os.environ.get("RAY_ADDRESS"):
            # A Ray of our own: no dashboard (it costs seconds at start),
            # in a directory of ours, on this machine only.
            # (removed by this process's janitor should it die first: see _janitor.py)
            temp_dir = temporary_directory("ray")
            kwargs.update(include_dashboard=False, _temp_dir=temp_dir,
                          _node_ip_address="127.0.0.1")
        # Ray announces its default token authentication at every start, as a
        # warning; a pool's own short-lived Ray need not.
        announcer = logging.getLogger("ray._private.authentication.authentication_token_setup")
        level = announcer.level
        if temp_dir is not None:
            announcer.setLevel(logging.ERROR)
        try:
            ray.init(address=address, **kwargs)
        except BaseException:
            if temp_dir is not None:
                shutil.rmtree(temp_dir, ignore_errors=True)
            raise
        finally:
            announcer.setLevel(level)
        _session = _Session(temp_dir)
        _session.users = 1
        return _session


def _release_session(ray: Any, session: _Session | None) -> None:
    """One pool less on ``session``; the last one shuts Ray down (or disconnects)."""
    global _session
    if session is None:
        return
    with _session_lock:
        session.users -= 1
        if session.users > 0 or session is not _session:
            return
        _session = None
        try:
            ray.shutdown()
        finally:
            if session.temp_dir is not None:
                shutil.rmtree(session.temp_dir, ignore_errors=True)


def _job_config(ray: Any) -> Any:
    """Ray's job settings: this process's import path added to the workers'.

    Functions that Ray pickles by reference (those of an importable module)
    must import on the worker, as in process mode, where workers get the
    parent's ``sys.path``. Ray itself adds only the script's directory and the
    working directory (through the same setting); a directory that does not
    exist on another machine is harmless there.
    """
    path = [os.path.abspath(p or os.curdir) for p in sys.path if os.path.isdir(p or os.curdir)]
    try:
        return ray.job_config.JobConfig(_py_driver_sys_path=path)
    except TypeError:  # a Ray without it: workers get Ray's own choice of path
        return ray.job_config.JobConfig()


# --- on the Ray worker ----------------------------------------------------------------------

# Per-pool state made by the pool's initializer, in this worker process:
# pool token -> state. A few pools at most use one worker; the oldest go.
_states: dict[str, Any] = {}
_MAX_STATES = 16

# (token, initializer, initargs), or None without an initializer
Setup = tuple[str, Callable[..., Any], tuple[Any, ...]] | None
InitFailure = tuple[None, ErrorPayload]


def run_on_worker(fn: Callable[..., Any], items: Sequence[Any], call: int, slot: int,
                  setup: Setup, timed: bool, ids: tuple[bytes, ...], *shared: Any,
                  ) -> RemoteOutcome | InitFailure:
    """Run a batch in a Ray worker, as slot ``slot`` of its pool.

    ``timed``: time each task too (see :func:`run_remote_batch`). ``shared``
    are the objects of the handles (``ObjectRef``) found in the items, resolved
    by Ray (it resolves top-level arguments only); ``ids`` are their ids, in
    the same order, for swapping the handles for the objects.
    """
    state = None
    if setup is not None:
        token, initializer, initargs = setup
        if token in _states:
            state = _states[token]
        else:
            try:
                state = initializer(*initargs)
            except BaseException as exc:
                return None, capture(exc)
            if len(_states) >= _MAX_STATES:
                del _states[next(iter(_states))]
            _states[token] = state
    if ids:
        items = _resolved(items, call, dict(zip(ids, shared, strict=True)))
    set_thread_context(WorkerContext(slot, state))
    try:
        return run_remote_batch(fn, items, call, timed)
    finally:
        set_thread_context(None)


def run_on_worker_reporting_start(*args: Any) -> Iterator[Any]:
    """:func:`run_on_worker` as a Ray generator: first a mark that it started."""
    yield None
    yield run_on_worker(*args)


def _handle_ids(items: Sequence[Any], call: int, ref_type: type) -> dict[bytes, Any]:
    """The handles (``ObjectRef``) among the items' arguments, by id."""
    found: dict[bytes, Any] = {}
    for item in items:
        for arg in _arguments(item, call):
            if isinstance(arg, ref_type):
                handle: Any = arg
                found[handle.binary()] = handle
    return found


def _arguments(item: Any, call: int) -> Iterator[Any]:
    if call == CALL_ONE:
        yield item
    elif call == CALL_STAR:
        yield from item
    else:
        args, kwargs = item
        yield from args
        yield from kwargs.values()


def _resolved(items: Sequence[Any], call: int, objects: dict[bytes, Any]) -> list[Any]:
    """``items`` with every shared handle among their arguments replaced by its object."""

    import ray  # on a Ray worker: imported already

    ref_type = ray.ObjectRef

    def swap(arg: Any) -> Any:
        if isinstance(arg, ref_type):
            return objects.get(arg.binary(), arg)
        return arg

    if call == CALL_ONE:
        return [swap(item) for item in items]
    if call == CALL_STAR:
        return [tuple(swap(a) for a in item) for item in items]
    assert call == CALL_KW
    return [(tuple(swap(a) for a in args), {k: swap(v) for k, v in kwargs.items()})
            for args, kwargs in items]


# --- in the pool's process ------------------------------------------------------------------

_remote_lock = threading.Lock()
_remote: tuple[Any, Any] | None = None  # (run_on_worker, run_on_worker_reporting_start)


def _remote_functions(ray: Any) -> tuple[Any, Any]:
    """The Ray remote functions, made once per process."""
    global _remote
    with _remote_lock:
        if _remote is None:
            # max_retries=0: bingfa's own retries= decides what runs again.
            _remote = (ray.remote(max_retries=0)(run_on_worker),
                       ray.remote(max_retries=0)(run_on_worker_reporting_start))
        return _remote


class _Run:
    """A batch handed to Ray."""

    __slots__ = ("batch", "ended", "gen", "ref", "slot", "started", "stop")

    def __init__(self, batch: Batch, slot: int) -> None:
        self.batch = batch
        self.slot = slot
        self.ref: Any = None  # what completes: the ObjectRef (or a generator's completed())
        self.gen: Any = None  # the ObjectRefGenerator of a task that reports its start
        self.started: float | None = None  # when it started on a worker (timed tasks)
        self.ended = False  # seen finished by the watchdog, its outcome on the way
        # Why it was cancelled (a timeout, a stop, terminate): the batch fails
        # with this rather than with what Ray reports.
        self.stop: BaseException | None = None


_FINISH = object()  # put on the delivery queue: the engine has stopped


class RayEngine(Engine):
    """Runs batches as Ray tasks, at most ``workers`` of them in flight."""

    def __init__(self, scheduler: Scheduler, config: EngineConfig) -> None:
        super().__init__(scheduler, config)
        if config.max_tasks_per_worker is not None:
            raise ValueError("max_tasks_per_worker has no meaning in mode='ray': Ray's worker "
                             "processes are the cluster's, shared by every pool and job, and "
                             "Ray decides when to replace them")
        self._ray = import_ray()
        self._lock = scheduler.lock
        self._address: str | None = config.options.get("address")
        self._session: _Session | None = None
        self._connected = False
        self._running: dict[int, _Run] = {}
        self._free_slots = list(range(config.workers - 1, -1, -1))
        self._done: SimpleQueue[Any] = SimpleQueue()
        self._draining = False
        self._terminated = False
        self._finishing = False
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._watchdog: threading.Thread | None = None
        self._watch = threading.Condition(threading.Lock())
        self._watch_news = False  # a timed task was handed over (or the engine stops)
        self._timeout = config.task_timeout
        self._limit = 1 if self._timeout is not None else None
        self._token = uuid.uuid4().hex
        self._setup: Setup = None
        if config.initializer is not None:
            self._setup = (self._token, config.initializer, config.initargs)
        self._shares = False  # whether share() was ever called: only then look for handles
        self._ref_type: type = self._ray.ObjectRef
        self._remote_fn, self._remote_timed = _remote_functions(self._ray)
        scheduler.wake = self.wake
        scheduler.batch_seconds = MOST_WORK_PER_BATCH
        scheduler.min_batch_seconds = LEAST_WORK_PER_BATCH
        scheduler.cuts_per_worker = 1
        self._width = ClusterWidth(lambda: self._ray.cluster_resources().get("CPU", 0))

    # --- engine protocol ---------------------------------------------------------------
    def start(self) -> None:
        self._session = _acquire_session(self._ray, self._address)
        self._width.refresh()
        self._connected = True
        self._thread = threading.Thread(target=self._deliver_loop, daemon=True,
                                        name=f"bingfa-ray-{id(self):x}")
        self._thread.start()
        if self._timeout is not None:
            self._watchdog = threading.Thread(target=self._watch_timeouts, daemon=True,
                                              name=f"bingfa-ray-{id(self):x}-watchdog")
            self._watchdog.start()
        # Ray shuts itself down at exit, and its exit handler runs before
        # bingfa's (registered earlier): drain this pool before Ray goes.
        atexit.register(self._at_exit)

    def check_can_wait(self) -> None:
        """Refuse to wait on the thread that delivers results: nothing else would.

        Raises:
            DeadlockError: when a callback waits for a result of its own pool.
        """
        if threading.current_thread() is self._thread:
            raise DeadlockError(
                "a callback of a ray pool waited for a result of the same pool: callbacks run "
                "on the thread that delivers the pool's results, so that wait could never end; "
                "submit from the callback, or chain with add_done_callback")

    def wake(self) -> None:
        self._fill()

    def share(self, obj: Any) -> Any:
        """``obj`` put in Ray's object store once; its ``ObjectRef``, to pass to tasks.

        A task receives the object itself where the handle is one of its
        arguments (``pool.map(f, items, [handle] * n)``, ``pool.submit(f, handle)``).
        """
        self._shares = True
        return self._ray.put(obj)

    def shutdown(self, wait: bool) -> None:
        if self.inherited:
            return  # a forked child's copy: the parent's pool, the parent's to stop
        with self._lock:
            self._draining = True
            idle = self._idle()
        if idle:
            self._finish()
        if wait:
            self.check_can_wait()
            self.join()

    def terminate(self) -> None:
        if self.inherited:
            return
        with self._lock:
            self._terminated = self._draining = True
            error, jobs = self.refuse_work()
            runs = list(self._running.values())
            for run in runs:
                if run.stop is None:
                    run.stop = error
                jobs.append(run.batch.job)
        self.abort_jobs(jobs, error)
        for run in runs:
            self._cancel(run)
        self._finish()
        if threading.current_thread() is not self._thread:
            self.join()

    def join(self, timeout: float | None = None) -> bool:
        if self.inherited:
            return True  # nothing of it runs in this process
        if not self._stopped.wait(timeout):
            return False
        for thread in (self._thread, self._watchdog):
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout)
        return True

    def stop_running(self, job: OneJob, error: BaseException) -> None:
        """Kill the Ray worker running ``job``'s task (``ray.cancel(force=True)``)."""
        with self._lock:
            runs = [run for run in self._running.values()
                    if run.batch.job is job and run.stop is None]
            for run in runs:
                run.stop = error
        for run in runs:
            self._cancel(run)

    # --- handing out work ----------------------------------------------------------------
    def _fill(self) -> None:
        """Hand batches to Ray while there are free slots and work; finish when drained."""
        while True:
            with self._lock:
                if self._finishing or not self._connected:
                    return
                batch = None
                if (self._free_slots and not self._terminated
                        and self.scheduler.broken is None):
                    batch = self.scheduler.take(self._limit, self._width.of(self.workers))
                if batch is None:
                    if not (self._draining and self._idle()):
                        return
                    run = None
                else:
                    run = _Run(batch, self._free_slots.pop())
                    self._running[id(run)] = run
            if run is None:
                self._finish()
                return
            self._launch(run)

    def _launch(self, run: _Run) -> None:
        batch = run.batch
        job = batch.job
        ids: tuple[bytes, ...] = ()
        shared: tuple[Any, ...] = ()
        try:
            if self._shares:
                handles = _handle_ids(batch.items, job.call, self._ref_type)
                ids, shared = tuple(handles), tuple(handles.values())
            timed = job.per_task is None or job.per_task >= TIME_EACH_TASK_SECONDS
            args = (job.fn, batch.items, job.call, run.slot, self._setup, timed, ids, *shared)
            if self._timeout is None:
                run.ref = self._remote_fn.remote(*args)
            else:
                run.gen = self._remote_timed.remote(*args)
                run.ref = run.gen.completed()
            future = run.ref.future()
        except BaseException as exc:  # the function or items cannot travel to Ray
            self._forget(run)
            job.deliver(batch, [None] * len(batch.items),
                        [(i, exc) for i in range(len(batch.items))], 0.0)
            return
        if run.gen is not None:
            with self._watch:
                self._watch_news = True
                self._watch.notify()
        # Ray calls this on a thread of its own: only queue it for ours.
        future.add_done_callback(lambda done, run=run: self._done.put((run, done)))
        if run.stop is not None:  # terminated while it was being handed over
            self._cancel(run)

    def _cancel(self, run: _Run) -> None:
        """Kill the Ray task of ``run`` (its worker process, if it runs)."""
        target = run.gen if run.gen is not None else run.ref
        if target is None:
            return
        try:
            self._ray.cancel(target, force=True)
        except Exception:
            pass

    def _forget(self, run: _Run) -> None:
        with self._lock:
            if self._running.pop(id(run), None) is not None:
                self._free_slots.append(run.slot)

    def _idle(self) -> bool:
        """Nothing runs and nothing more will (lock held)."""
        return not self._running and (self._terminated or self.scheduler.broken is not None
                                      or self.scheduler.idle())

    def _finish(self) -> None:
        with self._lock:
            if self._finishing:
                return
            self._finishing = True
        self._done.put(_FINISH)

    def _at_exit(self) -> None:
        """What bingfa's own exit handler does, before Ray's (see ``_lifetime``).

        Without Ctrl-C: run the queued work, as with any pool. After Ctrl-C,
        or at a Ctrl-C while draining: nothing. Ray's own exit handler, next,
        ends this process's tasks (a driver's tasks go when it disconnects),
        and bingfa's, after Ray's, stops the pool and removes a local Ray's
        directory. Stopping the pool here, before Ray's handler and with tasks
        running, crashed the exiting interpreter (SIGSEGV, one exit in four to
        six), which Ray's handler alone never did.
        """
        from .._lifetime import _drain, note_interrupted_at_exit, stopping_at_exit

        if self._stopped.is_set() or self.inherited or stopping_at_exit():
            return
        try:
            _drain(self)
        except KeyboardInterrupt:
            note_interrupted_at_exit()
        except BaseException:
            self.terminate()  # the pool broke: stop it while Ray is still up

    # --- results ------------------------------------------------------------------------
    def _deliver_loop(self) -> None:
        try:
            while True:
                item = self._done.get()
                if item is _FINISH:
                    return
                run, future = item
                try:
                    self._complete(run, future)
                except BaseException as exc:  # a bug here must not leave the batch hanging
                    run.batch.job.abort(exc)
                del run, future, item
                self._width.refresh()
                self._fill()
        finally:
            self._stop_threads()

    def _stop_threads(self) -> None:
        with self._lock:
            self._connected = False
        with self._watch:
            self._watch_news = True
            self._watch.notify()
        if self._watchdog is not None:
            self._watchdog.join()
        atexit.unregister(self._at_exit)
        try:
            _release_session(self._ray, self._session)
        finally:
            self._stopped.set()

    def _complete(self, run: _Run, future: Any) -> None:
        batch = run.batch
        job = batch.job
        with self._lock:
            self._running.pop(id(run), None)
            self._free_slots.append(run.slot)
            stop = run.stop
            terminated = self._terminated
        if terminated:
            return  # its job failed already
        error = future.exception()
        if error is None:
            outcome: Any = future.result() if run.gen is None else self._last_of(run)
            if outcome is not None and outcome[0] is None:  # the initializer failed
                cause = rebuild(outcome[1])
                self.break_pool(initializer_error(f"{type(cause).__name__}: {cause}"), cause)
                broken = self.scheduler.broken
                assert broken is not None
                job.abort(broken)
                return
            if outcome is not None:
                values, errors, elapsed, squares = outcomes(outcome)
                if squares is not None:
                    with self._lock:
                        job.note_task_times(len(values), elapsed, squares)
                job.deliver(batch, values, errors, elapsed)
                return
            error = WorkerCrashedError("the Ray task ended without a result")
        if stop is not None:
            for i in range(len(batch.items)):
                job.fail(batch, i, stop)
            return
        self._lost(batch, error)

    def _last_of(self, run: _Run) -> RemoteOutcome | InitFailure | None:
        """What a task that reports its start returned (its last item)."""
        last = None
        with self._watch:  # the watchdog may be reading the start mark
            for ref in run.gen:
                last = ref
        return None if last is None else self._ray.get(last)

    def _lost(self, batch: Batch, error: BaseException) -> None:
        """Ray could not run ``batch``: its worker or node died, or it could not travel."""
        job = batch.job
        n = len(batch.items)
        exceptions = self._ray.exceptions
        crash = isinstance(error, exceptions.RayTaskError) is False and isinstance(
            error, exceptions.RayError)
        if not crash:
            # Raised on the worker outside the task (an argument or a result that
            # cannot be unpickled or pickled): the task's own problem.
            cause = getattr(error, "cause", None)
            reason = cause if isinstance(cause, BaseException) else error
            if n > 1:
                job.requeue(batch, range(n), one_by_one=True)  # find which task it is
            else:
                job.deliver(batch, [None], [(0, reason)], 0.0)
            return
        if n > 1:
            # Which task it ran is unknown: run each again alone, uncharged.
            job.requeue(batch, range(n), one_by_one=True)
            return
        name = batch.describe_task(0)
        crashed = WorkerCrashedError(
            f"the Ray worker running {name} was lost ({type(error).__name__}: "
            f"{str(error).strip().splitlines()[0] if str(error).strip() else ''})", task=name)
        crashed.__cause__ = error
        job.fail(batch, 0, crashed)

    # --- timeouts ---------------------------------------------------------------------
    def _watch_timeouts(self) -> None:
        """Note when timed tasks start on a worker; kill those that outlive the timeout."""
        timeout = self._timeout
        assert timeout is not None
        ray = self._ray
        while True:
            with self._lock:
                if not self._connected and self._finishing:
                    return
                runs = [run for run in self._running.values()
                        if run.gen is not None and run.stop is None and not run.ended]
            now = time.monotonic()
            waiting = [run for run in runs if run.started is None]
            expired = []
            earliest: float | None = None
            for run in runs:
                if run.started is None:
                    continue
                deadline = run.started + timeout
                if deadline <= now:
                    expired.append(run)
                elif earliest is None or deadline < earliest:
                    earliest = deadline
            if expired:
                # Finished meanwhile, only not heard of yet (a loaded machine can
                # take a while to say so): not a timeout.
                done, _ = ray.wait([run.ref for run in expired], num_returns=len(expired),
                                   timeout=0, fetch_local=False)
                for run in expired:
                    run.ended = run.ref in done
                expired = [run for run in expired if not run.ended]
            for run in expired:
                name = run.batch.describe_task(0)
                run.stop = TaskTimeoutError(
                    f"{name} did not finish within {timeout} s (its Ray worker process was "
                    "killed)", timeout=timeout, task=name)
                self._cancel(run)
            if expired:
                continue
            wait = None if earliest is None else max(0.0, earliest - now)
            if waiting:
                # A task handed over meanwhile is looked at within this poll.
                wait = 0.05 if wait is None else min(wait, 0.05)
                try:
                    ready, _ = ray.wait([run.gen for run in waiting], num_returns=1,
                                        timeout=wait, fetch_local=False)
                except Exception:
                    ready = []
                if ready:
                    started = time.monotonic()
                    with self._watch:
                        for run in waiting:
                            if run.gen in ready and run.started is None:
                                run.started = started
                                try:
                                    next(run.gen)  # the start mark
                                except Exception:
                                    pass
                continue
            with self._watch:
                if not self._watch_news:
                    self._watch.wait(wait)
                self._watch_news = False
