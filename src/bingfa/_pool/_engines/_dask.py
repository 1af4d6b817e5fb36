"""Dask mode: batches of tasks run on a Dask cluster, at most ``workers`` batches at once.

Three ways to get a cluster::

    bf.Pool(mode="dask")                               # a local cluster the pool owns
    bf.Pool(mode="dask", address="tcp://host:8786")    # join a running scheduler
    bf.Pool(mode="dask", client=my_client)             # an existing distributed.Client

Without ``address=`` or ``client=`` the pool follows Dask's own convention,
as ``distributed.Client()`` does: if Dask's configuration names a scheduler
(``scheduler-address``, for example through the ``DASK_SCHEDULER_ADDRESS``
environment variable) the pool joins it; otherwise it starts a cluster of
its own on 127.0.0.1, one single-threaded worker process per usable core,
and closes it with the pool. Its workers are started as fresh interpreters
(``python -m dask spec``), not through ``multiprocessing``: they never run
the user's ``__main__`` again, so a script without a main guard, a script
piped on stdin and a notebook all work. A joined scheduler and a given
client are never shut down or closed by the pool.

``workers`` is the number of batches in flight; the cluster decides where
each runs, and whoever is free takes the next one. Batches are sized from
the time tasks took *on the workers*, as in process mode, so that each
batch is about 50 ms of work and Dask's scheduling cost (about a
millisecond a task) is paid per batch, not per task. The function and the
batch's items travel as one cloudpickle blob (lambdas and closures work),
and the outcomes come back the same way: Dask never walks them.

A task's exception reaches the caller with its own type and the worker's
traceback as ``__cause__``. A worker that dies while it holds a batch is
Dask's own business first: the scheduler reruns the batch elsewhere (its
``allowed-failures``); a batch that Dask gives up on (``KilledWorker``), or
that the cluster loses, fails each of its tasks with
:class:`~bingfa.WorkerCrashedError`, which ``retries=`` retries.

Dask cannot stop a running task. ``task_timeout`` is therefore best effort:
at the deadline (counted from when the batch is handed to the cluster, so
time spent queued in a busy cluster counts) the task fails with
:class:`~bingfa.TaskTimeoutError` and its Dask future is cancelled, but
the worker thread runs the function to its end, the result dropped;
:func:`bingfa.cancelled` turns true inside it so that a task that polls it
can stop early. A stop (``stop_running``) and ``terminate()`` work the same
way.

Outcomes are fetched on Dask's client event loop without blocking it, then
delivered on a thread of this engine, where the pool's callbacks run;
waiting on the same pool from such a callback would wait for itself and is
refused with :class:`~bingfa.DeadlockError`.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import json
import logging
import os
import queue
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import cloudpickle
import psutil

from ..._core._context import CancelFlag, WorkerContext, set_thread_context
from ..._core._errors import (
    BackendUnavailableError,
    DeadlockError,
    SerializationError,
    TaskTimeoutError,
    WorkerCrashedError,
)
from ..._core._machine import usable_cores
from ..._core._remote_traceback import capture
from .._jobs import Batch, OneJob
from .._scheduler import Scheduler
from ._base import Engine, EngineConfig, initializer_error
from ._remote_batch import CLUSTER_BATCH_SECONDS, RemoteOutcome, outcomes, run_remote_batch

__all__ = ["DaskEngine", "SharedObject"]

_LOOK = object()  # put in the delivery queue: no outcome, look at the pool's state
# Seconds a local worker (its nanny) has to close once asked, before it is killed.
WORKER_CLOSE_GRACE = 3.0
_PROTOCOL = 5


def import_distributed() -> Any:
    """The ``distributed`` module.

    Raises:
        BackendUnavailableError: distributed is not installed.
    """
    try:
        import distributed
    except ImportError as exc:
        raise BackendUnavailableError(
            "mode='dask' needs dask.distributed, which is not installed: "
            "pip install 'bingfa[dask]'", extra="dask") from exc
    return distributed


# --- shared objects ----------------------------------------------------------------------

# On a worker, the shared objects of the batch being unpickled (by key), per thread.
_resolving = threading.local()
# On the client, the keys of the shared objects met while pickling a batch.
_pickling = threading.local()


def _shared_value(key: str) -> Any:
    """What a :class:`SharedObject` becomes when a task's arguments are unpickled."""
    values: dict[str, Any] | None = getattr(_resolving, "values", None)
    if values is None or key not in values:
        raise SerializationError(
            f"the shared object {key} can only be passed as an argument to a task of the "
            "pool that shared it")
    return values[key]


class SharedObject:
    """A handle to an object put on the cluster by ``Pool.share``.

    Pass it to tasks of the pool (as an argument, or anywhere inside one):
    each task receives the object itself, fetched by Dask from the worker
    that holds it. The object travels once per worker, not once per task.
    """

    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        self.key = key

    def __reduce__(self) -> tuple[Any, ...]:
        used: set[str] | None = getattr(_pickling, "used", None)
        if used is not None:
            used.add(self.key)
        return (_shared_value, (self.key,))

    def __repr__(self) -> str:
        return f"<bingfa shared object {self.key} on a Dask cluster>"


# --- on the worker -----------------------------------------------------------------------

class _InitializerFailed(Exception):
    """The pool's initializer raised on a worker (its traceback text is the message)."""


_states: dict[str, Any] = {}  # per-pool worker state, by pool token (on a worker)
_states_lock = threading.Lock()


def _worker_state(init: tuple[str, Callable[..., Any], tuple[Any, ...]] | None) -> Any:
    """The state the pool's initializer built in this worker process, built on first use."""
    if init is None:
        return None
    token, initializer, initargs = init
    with _states_lock:
        if token not in _states:
            try:
                _states[token] = initializer(*initargs)
            except BaseException as exc:
                _, text, type_name, _ = capture(exc)
                raise _InitializerFailed(f"{type_name}: {exc}\n{text}") from None
        return _states[token]


def _forget_state(token: str) -> None:
    """Drop a closed pool's worker state (run on every worker of a joined cluster)."""
    with _states_lock:
        _states.pop(token, None)


class _DaskCancelFlag(CancelFlag):
    """Reads as set once the Dask task running the caller has been cancelled."""

    __slots__ = ("_key", "_worker")

    def __init__(self) -> None:
        super().__init__()
        try:
            from distributed import worker

            self._worker: Any = worker.get_worker()
            self._key: Any = worker.thread_state.key  # type: ignore[attr-defined]
        except Exception:  # not on a Dask worker thread after all
            self._worker = self._key = None

    @property
    def is_set(self) -> bool:
        if self._worker is None:
            return False
        try:
            task = self._worker.state.tasks.get(self._key)
        except Exception:
            return False
        return task is None or task.state in ("cancelled", "released", "forgotten")

    @is_set.setter
    def is_set(self, value: bool) -> None:
        pass


def run_on_worker(blob: bytes, slot: int, keys: tuple[str, ...], *shared: Any) -> bytes:
    """Run one batch on a Dask worker: what the engine submits.

    ``blob`` holds the function, the items, the call kind and the pool's
    initializer; ``shared`` are the shared objects the items refer to,
    which Dask has fetched to this worker (``keys`` names them).
    """
    _resolving.values = dict(zip(keys, shared, strict=True))
    try:
        fn, items, call, init = cloudpickle.loads(blob)
    finally:
        _resolving.values = None
    ctx = WorkerContext(slot, _worker_state(init))
    ctx.cancel_flag = _DaskCancelFlag()
    set_thread_context(ctx)
    try:
        outcome = run_remote_batch(fn, items, call)
    finally:
        set_thread_context(None)
    del fn, items
    try:
        back: bytes = cloudpickle.dumps(outcome, protocol=_PROTOCOL)
    except Exception:
        back = cloudpickle.dumps(_picklable(outcome), protocol=_PROTOCOL)
    return back


def _picklable(outcome: RemoteOutcome) -> RemoteOutcome:
    """``outcome`` with each result that cannot be pickled turned into that task's error."""
    values, packed, elapsed, squares = outcome
    errors = list(packed or [])
    kept: list[Any] = []
    for i, value in enumerate(values):
        try:
            cloudpickle.dumps(value, protocol=_PROTOCOL)
        except Exception as exc:
            error = SerializationError(
                f"the result of task {i} of the batch ({type(value).__name__}) cannot be "
                f"pickled: {exc}")
            error.__cause__ = exc
            errors.append((i, capture(error)))
            kept.append(None)
            continue
        kept.append(value)
    return kept, errors or None, elapsed, squares


# --- on the client -----------------------------------------------------------------------

class _Flight:
    """A batch handed to the cluster."""

    __slots__ = ("batch", "future", "sent", "slot", "stop")

    def __init__(self, batch: Batch, slot: int) -> None:
        self.batch = batch
        self.slot = slot
        self.future: Any = None
        self.sent = time.monotonic()
        # Why the pool gave up on it (timeout, stop, terminate): its tasks have
        # failed already, and whatever Dask sends back is dropped.
        self.stop: BaseException | None = None


_exit_hook_installed = False


def _install_exit_hook() -> None:
    """Drain open pools at exit before distributed's own exit handlers close clusters.

    ``atexit`` runs handlers last-registered first; distributed registers its
    handlers when it is imported, after bingfa's, so bingfa's would run too
    late. Registering again here, after the import, puts it first.
    """
    global _exit_hook_installed
    if not _exit_hook_installed:
        from .._lifetime import finish_at_exit

        atexit.register(finish_at_exit)
        _exit_hook_installed = True


class DaskEngine(Engine):
    """Runs batches as Dask tasks, at most ``workers`` at once."""

    def __init__(self, scheduler: Scheduler, config: EngineConfig) -> None:
        super().__init__(scheduler, config)
        if config.max_tasks_per_worker is not None:
            raise ValueError("max_tasks_per_worker has no meaning in mode='dask': the "
                             "cluster's worker processes are Dask's, and bingfa does not "
                             "replace them")
        self._distributed = import_distributed()
        _install_exit_hook()
        self._lock = scheduler.lock
        self._watch = threading.Condition(scheduler.lock)
        self._flights: dict[int, _Flight] = {}
        self._free = list(range(config.workers - 1, -1, -1))  # pop() gives 0, 1, ...
        self._limit = 1 if config.task_timeout is not None else None
        self._token = uuid.uuid4().hex
        self._init = (None if config.initializer is None else
                      (self._token, config.initializer, tuple(config.initargs)))
        self._shared: dict[str, Any] = {}  # key -> Dask future of a shared object
        self._outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._draining = False
        self._terminated = False
        self._stopped = threading.Event()
        self._client: Any = None
        self._cluster: Any = None
        self._owns_client = False
        self._names = itertools.count()
        self._thread: threading.Thread | None = None
        self._watchdog: threading.Thread | None = None
        self._name = config.thread_name_prefix or f"bingfa-dask-{id(self):x}"
        scheduler.wake = self.wake
        # Queued quick submits leave together: each batch costs a scheduler round trip.
        scheduler.groups_singles = True
        scheduler.batch_seconds = CLUSTER_BATCH_SECONDS

    # --- engine protocol ---------------------------------------------------------------
    def start(self) -> None:
        self._client, self._cluster, self._owns_client = self._connect()
        self._thread = threading.Thread(target=self._deliver_loop, name=self._name,
                                        daemon=True)
        self._thread.start()
        if self.config.task_timeout is not None:
            self._watchdog = threading.Thread(target=self._watch_timeouts,
                                              name=f"{self._name}-watchdog", daemon=True)
            self._watchdog.start()

    def _connect(self) -> tuple[Any, Any, bool]:
        """The client to use, the cluster the pool owns (or None), whether the pool owns it."""
        distributed = self._distributed
        options = self.config.options
        given = options.get("client")
        if given is not None:
            return given, None, False
        address = options.get("address")
        if address is None:
            import dask

            address = dask.config.get("scheduler-address", None)
        if address is not None:
            return distributed.Client(address, set_as_default=False), None, True
        cluster = _local_cluster(distributed)
        try:
            client = distributed.Client(cluster, set_as_default=False)
        except BaseException:
            cluster.close()
            raise
        return client, cluster, True

    def check_can_wait(self) -> None:
        if threading.current_thread() is self._thread:
            raise DeadlockError(
                "a dask pool's callbacks run on the thread that delivers its results: "
                "waiting here for a result of the same pool would wait for itself; "
                "submit from the callback, and wait elsewhere")

    def wake(self) -> None:
        self._fill()

    def shutdown(self, wait: bool) -> None:
        with self._lock:
            self._draining = True
        self._outbox.put(_LOOK)
        if wait:
            self.check_can_wait()
            self.join()

    def terminate(self) -> None:
        with self._lock:
            self._terminated = self._draining = True
            error, jobs = self.refuse_work()
            flights = list(self._flights.values())
            for flight in flights:
                if flight.stop is None:
                    flight.stop = error
                    jobs.append(flight.batch.job)
            self._watch.notify_all()
        self.abort_jobs(jobs, error)
        self._cancel([f.future for f in flights if f.future is not None])
        self._outbox.put(_LOOK)
        if threading.current_thread() is not self._thread:
            self.join(timeout=max(10.0, self.config.kill_grace))

    def join(self, timeout: float | None = None) -> bool:
        thread = self._thread
        if thread is None:
            return True
        if thread is threading.current_thread():
            return self._stopped.is_set()
        thread.join(timeout)
        if thread.is_alive():
            return False
        watchdog = self._watchdog
        if watchdog is not None and watchdog is not threading.current_thread():
            watchdog.join(timeout)
        return True

    def stop_running(self, job: OneJob, error: BaseException) -> None:
        """Fail ``job``'s task with ``error`` and cancel its Dask task (which Dask lets run)."""
        stopped = []
        with self._lock:
            for flight in self._flights.values():
                if flight.batch.job is job and flight.stop is None:
                    flight.stop = error
                    stopped.append(flight)
        for flight in stopped:
            self._cancel([flight.future])
            for i in range(len(flight.batch.items)):
                flight.batch.job.fail(flight.batch, i, error)

    def share(self, obj: Any) -> Any:
        """Put ``obj`` on the cluster once; tasks given the handle receive ``obj`` itself."""
        # In a list, so that a list or dict is shared whole, not element by element.
        [future] = self._client.scatter([obj], broadcast=False, hash=False)
        key = str(future.key)
        with self._lock:
            self._shared[key] = future
        return SharedObject(key)

    # --- handing out batches -----------------------------------------------------------
    def _fill(self) -> None:
        """Hand batches to the cluster while there are free slots and work."""
        flights: list[_Flight] = []
        with self._lock:
            if self._terminated or self.scheduler.broken is not None or self._client is None:
                return
            while self._free:
                batch = self.scheduler.take(self._limit, self.workers)
                if batch is None:
                    break
                flight = _Flight(batch, self._free.pop())
                self._flights[flight.slot] = flight
                flights.append(flight)
            if flights and self._watchdog is not None:
                self._watch.notify()
        for flight in flights:
            self._send(flight)

    def _send(self, flight: _Flight) -> None:
        batch = flight.batch
        job = batch.job
        used: set[str] = set()
        _pickling.used = used
        try:
            blob = cloudpickle.dumps((job.fn, batch.items, job.call, self._init),
                                     protocol=_PROTOCOL)
        except Exception as exc:
            error = SerializationError(
                f"the arguments of {batch.describe_task(0)} (or its function) cannot be "
                f"pickled for the Dask cluster: {type(exc).__name__}: {exc}")
            error.__cause__ = exc
            self._end_flight(flight)
            for i in range(len(batch.items)):
                job.fail(batch, i, error)
            return
        finally:
            _pickling.used = None
        with self._lock:
            shared = [(key, self._shared[key]) for key in used if key in self._shared]
        keys = tuple(key for key, _ in shared)
        try:
            future = self._client.submit(
                run_on_worker, blob, flight.slot, keys, *(f for _, f in shared), pure=False,
                key=f"bingfa-{self._token[:8]}-{next(self._names)}")
        except Exception as exc:  # the client is closed or lost its scheduler
            self._end_flight(flight)
            self._lost(flight, exc)
            return
        flight.sent = time.monotonic()
        flight.future = future
        with self._lock:
            late_stop = flight.stop is not None
        if late_stop:  # terminated or stopped while it was being sent
            self._cancel([future])
        self._client.loop.add_callback(self._collect, flight)

    async def _collect(self, flight: _Flight) -> None:
        """On Dask's loop: wait for the batch and fetch its outcome, then queue it for delivery."""
        try:
            blob = await self._client.gather(flight.future, asynchronous=True)
        except BaseException as exc:  # every ending is an outcome here
            self._outbox.put((flight, None, exc))
        else:
            self._outbox.put((flight, blob, None))

    def _cancel(self, futures: list[Any]) -> None:
        if futures and self._client is not None:
            with contextlib.suppress(Exception):
                self._client.cancel(futures, force=True)

    def _end_flight(self, flight: _Flight) -> None:
        with self._lock:
            if self._flights.get(flight.slot) is flight:
                del self._flights[flight.slot]
                self._free.append(flight.slot)
            self._watch.notify_all()

    # --- the delivery thread -----------------------------------------------------------
    def _deliver_loop(self) -> None:
        try:
            while True:
                item = self._outbox.get()
                if item is not _LOOK:
                    flight, blob, error = item
                    self._end_flight(flight)
                    self._fill()  # the slot is free: keep the cluster busy meanwhile
                    try:
                        self._outcome(flight, blob, error)
                    except BaseException as exc:  # a bug here must not strand the others
                        self._failed_delivery(flight, exc)
                    del item, flight, blob, error
                    self._fill()  # retries may have come back
                if self._finished():
                    return
        finally:
            self._close()

    def _failed_delivery(self, flight: _Flight, exc: BaseException) -> None:
        batch = flight.batch
        for i in range(len(batch.items)):
            with contextlib.suppress(BaseException):
                batch.job.fail(batch, i, exc)

    def _finished(self) -> bool:
        with self._lock:
            if self.scheduler.broken is not None and not self._terminated:
                # Nothing more can run: what is in flight is dropped as it returns.
                return not self._flights and self._draining
            return self._draining and not self._flights and (
                self._terminated or self.scheduler.idle())

    def _outcome(self, flight: _Flight, blob: bytes | None, error: BaseException | None) -> None:
        batch = flight.batch
        job = batch.job
        if flight.stop is not None:
            return  # its tasks failed when the pool gave up on it
        if error is None:
            assert blob is not None
            try:
                values, errors, elapsed, _ = outcomes(cloudpickle.loads(blob))
            except Exception as exc:
                error = SerializationError(
                    f"the results of {batch.describe_task(0)} could not be unpickled here: "
                    f"{type(exc).__name__}: {exc}")
                error.__cause__ = exc
            else:
                job.deliver(batch, values, errors, elapsed)
                return
        if isinstance(error, _InitializerFailed):
            self.break_pool(initializer_error(str(error).split("\n", 1)[0]), error)
            error = self.scheduler.broken or error  # and the batch it held fails with it
        if self._is_loss(error):
            self._lost(flight, error)
            return
        for i in range(len(batch.items)):
            job.fail(batch, i, error)

    def _is_loss(self, error: BaseException) -> bool:
        """Whether ``error`` means the cluster lost the batch rather than the batch failing."""
        distributed = self._distributed
        from distributed.comm.core import CommClosedError
        from distributed.scheduler import KilledWorker

        lost = (KilledWorker, CommClosedError, distributed.client.FutureCancelledError,
                OSError, EOFError)
        return isinstance(error, lost) or type(error).__name__ == "CancelledError"

    def _lost(self, flight: _Flight, error: BaseException) -> None:
        """The cluster lost ``flight`` (a worker died, the scheduler went away)."""
        batch = flight.batch
        client = self._client
        status = getattr(client, "status", "running")
        if status not in ("running", "connecting", "newly-created"):
            crash = WorkerCrashedError(
                f"the Dask client lost its scheduler ({status}): the pool can run nothing "
                f"more; {type(error).__name__}: {error}", task=batch.describe_task(0))
            crash.__cause__ = error
            self.break_pool(crash)
            for i in range(len(batch.items)):
                batch.job.fail(batch, i, crash)
            return
        for i in range(len(batch.items)):
            crash = WorkerCrashedError(
                f"the Dask cluster lost {batch.describe_task(i)}: its worker died "
                f"({type(error).__name__}: {error})", task=batch.describe_task(i))
            crash.__cause__ = error
            batch.job.fail(batch, i, crash)

    def _close(self) -> None:
        """Everything ended: let go of the cluster (on the delivery thread)."""
        self._stopped.set()
        with self._lock:
            self._watch.notify_all()
            shared = list(self._shared.values())
            self._shared.clear()
        client, cluster = self._client, self._cluster
        if client is None:
            return
        if not self._owns_client:
            # A client the user gave: release what the pool put on it, close nothing.
            with contextlib.suppress(Exception):
                for future in shared:
                    future.release()
                if self._init is not None:
                    client.run(_forget_state, self._token)
            return
        with contextlib.suppress(Exception):
            if cluster is None and self._init is not None:
                client.run(_forget_state, self._token)  # a joined cluster lives on
        del shared
        with contextlib.suppress(Exception):
            client.close()
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.close()

    # --- timeouts ----------------------------------------------------------------------
    def _watch_timeouts(self) -> None:
        timeout = self.config.task_timeout
        assert timeout is not None
        while True:
            expired: list[_Flight] = []
            with self._watch:
                if self._stopped.is_set():
                    return
                now = time.monotonic()
                earliest: float | None = None
                for flight in self._flights.values():
                    if flight.stop is not None:
                        continue
                    deadline = flight.sent + timeout
                    if deadline <= now:
                        flight.stop = TaskTimeoutError(
                            f"{flight.batch.describe_task(0)} did not finish within {timeout} s "
                            "(its Dask future was cancelled; Dask cannot stop a running task, "
                            "which can poll bingfa.cancelled())",
                            timeout=timeout, task=flight.batch.describe_task(0))
                        expired.append(flight)
                    elif earliest is None or deadline < earliest:
                        earliest = deadline
                if not expired:
                    self._watch.wait(None if earliest is None else earliest - now)
                    continue
            for flight in expired:
                if flight.future is not None:  # else _send cancels it once sent
                    self._cancel([flight.future])
                assert flight.stop is not None
                for i in range(len(flight.batch.items)):
                    flight.batch.job.fail(flight.batch, i, flight.stop)


def _local_cluster(distributed: Any) -> Any:
    """A cluster on this machine for the pool to own: a scheduler here, a worker per core.

    The scheduler runs on the client's event loop thread (as a LocalCluster's
    does); each worker is a fresh ``python -m dask spec`` process with a
    nanny (which restarts a worker that dies), so nothing re-runs the
    user's ``__main__``, and with this process's ``sys.path``, so that the
    functions of the user's modules import there as they do here. Nothing
    waits for the workers: tasks queue on the scheduler until they arrive.
    """
    from distributed.deploy.spec import ProcessInterface

    class LocalWorker(ProcessInterface):
        """One worker process (with its nanny), started and killed with its process tree."""

        def __init__(self, scheduler: str, name: Any = None) -> None:
            super().__init__()  # type: ignore[no-untyped-call]
            self.scheduler = scheduler
            self.name = name
            self.process: asyncio.subprocess.Process | None = None

        async def start(self) -> None:
            spec = {"cls": "distributed.Nanny", "opts": {
                "host": "127.0.0.1", "nthreads": 1, "silence_logs": logging.WARNING,
                "name": self.name}}
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(
                p for p in sys.path if p and os.path.isdir(p))}
            # Quiet as the pool's own logs are (silence_logs reaches the worker
            # only): a nanny's INFO lines as it closes are not the user's news.
            env.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "dask", "spec", self.scheduler,
                "--spec", json.dumps(spec), env=env, stdin=asyncio.subprocess.DEVNULL)
            await super().start()  # type: ignore[no-untyped-call]

        async def close(self) -> None:
            process, self.process = self.process, None
            if process is not None and process.returncode is None:
                tree: list[psutil.Process] = []
                with contextlib.suppress(psutil.Error):
                    tree = psutil.Process(process.pid).children(recursive=True)
                # Asked first: the nanny closes its worker and its queues, whose
                # semaphores would otherwise stay in /dev/shm (killed with the
                # rest, its resource tracker cannot unlink them).
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(process.wait(), WORKER_CLOSE_GRACE)
                for child in tree:
                    with contextlib.suppress(psutil.Error):
                        child.kill()
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
            await super().close()  # type: ignore[no-untyped-call]

    worker = {"cls": LocalWorker, "options": {}}
    scheduler = {"cls": distributed.Scheduler, "options": {
        "host": "127.0.0.1", "port": 0, "dashboard": False, "dashboard_address": None}}
    return distributed.SpecCluster(
        workers={i: worker for i in range(usable_cores())}, scheduler=scheduler,
        worker=worker, silence_logs=logging.WARNING, name="bingfa")
