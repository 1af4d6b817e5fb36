"""``bf.Pool(mode="auto")``: the same Pool, choosing threads or processes per function.

An :class:`AutoPool` keeps a pool of each mode it has needed, made on first
use, and a decision per function. A coroutine function goes to async mode at
once. The first tasks of any other function run in threads while a
:class:`~._probe.Probe` measures them; :func:`~._decide.decide` then says
where it and everything after it runs. A map splits: its first few items are
the probe's, the rest go to the chosen pool as one map (chunked as usual),
and the results are put back in order.

A decision holds for ``DECISION_SECONDS``; the next call after that measures
again, so a function whose work changes (bigger inputs, a cache warmed up)
can move.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextvars import copy_context
from typing import Any, TypeVar

from ..._core._errors import PoolClosedError
from ..._core._futures import Future
from ..._core._interrupts import start_without_sigint
from ..._core._machine import gil_enabled, usable_cores
from ..._core._progress import ProgressArg, Reporter, reporter
from ..._core._timeouts import limit_seconds
from .._batch import CALL_STAR
from .._coroutines import is_coroutine_function
from .._engines._base import inherited_error
from .._errors import result_timeout_error
from .._jobs import OneJob
from .._pool import (
    ChunkSize,
    Pool,
    _checked_start_method,
    _default_workers,
    _map_items,
    _one_setting,
    _positive,
)
from ._chained import AsyncChained, Chained, first_items
from ._costs import machine_costs
from ._decide import Decision, Measurement, decide
from ._probe import PAIR_TASKS, SOLO_TASKS, HeldTask, Probe, Window
from ._sizes import pickled_bytes, pickled_function

__all__ = ["AutoPool"]

logger = logging.getLogger("bingfa.auto")

F = TypeVar("F", bound=Future[Any])

# A map's first items that the probe may take; the rest go out as one map.
PROBE_ITEMS = SOLO_TASKS + PAIR_TASKS
DECISION_SECONDS = 60.0  # measure a function again after this long
# Tasks quicker than this have their measured time handed to the pool that runs
# the rest (see AutoPool._taught). A few tasks' median says little of slower
# work whose durations vary; slower tasks reach a good chunk size in a few
# chunks anyway.
TEACH_BELOW = 0.001
_DECISIONS_KEPT = 256


def _function_key(fn: Any) -> Any:
    """What identifies "the same function" across calls: its code, not the object.

    A lambda or closure made anew for each call is still the same work;
    a bound method is its function; a partial is its function.
    """
    while isinstance(fn, functools.partial):
        fn = fn.func
    fn = getattr(fn, "__func__", fn)
    code = getattr(fn, "__code__", None)
    return code if code is not None else fn


def _zygote_running() -> bool:
    launcher = sys.modules.get("bingfa._pool._engines._launcher")
    return launcher is not None and launcher.zygote_pid() is not None


def _free_threaded() -> bool:
    return not gil_enabled()


class _Choice:
    """A decision for one function, and what was measured of it on the way."""

    __slots__ = ("carried", "decision", "function_pickle", "made", "task_seconds")

    def __init__(self, decision: Decision, task_seconds: float | None = None,
                 carried: tuple[float | None, float | None] = (None, None),
                 function_pickle: bytes | None = None) -> None:
        self.decision = decision
        self.made = time.monotonic()
        self.task_seconds = task_seconds
        self.carried = carried  # (argument, result) bytes a task pickles to, if sized
        # The function pickled to size it, until handed to the process pool.
        self.function_pickle = function_pickle


class AutoPool(Pool):
    """A Pool that measures each function's first tasks and runs it in threads or processes.

    Made by ``bf.Pool(mode="auto")``; see :class:`~bingfa.Pool` for the
    arguments (the process settings apply when it chooses processes) and
    ``docs/pools.md`` ("Choosing a mode: auto") for how it decides.
    """

    def __init__(
        self,
        workers: int | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: Iterable[Any] = (),
        max_tasks_per_worker: int | None = None,
        context: Any = None,
        *,
        mode: str | None = "auto",
        task_timeout: float | None = None,
        retries: int = 0,
        start_method: str | None = None,
        processes: int | None = None,
        max_workers: int | None = None,
        maxtasksperchild: int | None = None,
        max_tasks_per_child: int | None = None,
        mp_context: Any = None,
        thread_name_prefix: str | None = None,
        address: str | None = None,
        client: Any = None,
    ) -> None:
        workers_name, workers = _one_setting(workers=workers, processes=processes,
                                             max_workers=max_workers)
        _positive(workers_name, workers)
        _, max_tasks_per_worker = _one_setting(
            max_tasks_per_worker=max_tasks_per_worker, maxtasksperchild=maxtasksperchild,
            max_tasks_per_child=max_tasks_per_child)
        method_name, method = _one_setting(start_method=start_method, context=context,
                                           mp_context=mp_context)
        if address is not None or client is not None:
            raise ValueError("address= and client= only apply to mode='dask' or mode='ray'")
        limit_seconds(task_timeout, "task_timeout")
        self._workers_given = workers
        self.retries = retries
        self._common: dict[str, Any] = dict(
            initializer=initializer, initargs=tuple(initargs),
            max_tasks_per_worker=max_tasks_per_worker, task_timeout=task_timeout,
            retries=retries)
        if method is not None:
            # Checked now, as a process pool would, though none may ever start.
            method = _checked_start_method(method_name, method)
        self._per_mode: dict[str, dict[str, Any]] = {
            "thread": {"thread_name_prefix": thread_name_prefix},
            "process": {"start_method": method},
            "async": {},
        }
        self._lock = threading.RLock()
        self._pools: dict[str, Pool] = {}
        self._choices: dict[Any, _Choice] = {}
        self._probes: dict[Any, Probe] = {}
        self._last: Decision | None = None
        self._closed = False
        self._terminated = False
        self._pid = os.getpid()  # a forked child's copy is its parent's: see _inherited
        # The thread pool is made now: it checks the settings, and the first
        # tasks of every function run there. Its threads start as work comes.
        self._pool_for("thread")
        self._costs = machine_costs()

    # --- what it chose -------------------------------------------------------------
    @property
    def mode(self) -> str:
        """The mode of the last decision: ``"thread"``, ``"process"`` or ``"async"``.

        ``"auto"`` until the first function has been measured.
        """
        last = self._last
        return "auto" if last is None else last.mode

    @mode.setter
    def mode(self, value: str) -> None:
        raise AttributeError("an auto pool's mode is what it chose; it cannot be set")

    @property
    def why(self) -> str | None:
        """Why the last decision was made (the debug log's reason); None before any."""
        last = self._last
        return None if last is None else last.reason

    @property
    def workers(self) -> int:
        """Workers of the mode chosen last (the thread pool's before any choice)."""
        return self._workers_of(self.mode if self._last is not None else "thread")

    @workers.setter
    def workers(self, value: int) -> None:
        raise AttributeError("an auto pool's workers are set when it is made")

    @property
    def start_method(self) -> str | None:
        """How its process workers start, once it has made them; else None."""
        pool = self._pools.get("process")
        return None if pool is None else pool.start_method

    @start_method.setter
    def start_method(self, value: str | None) -> None:
        raise AttributeError("an auto pool's start method is set when it is made")

    def _workers_of(self, mode: str) -> int:
        given = self._workers_given
        return given if given is not None else _default_workers(mode)

    def _pool_for(self, mode: str) -> Pool:
        pool = self._pools.get(mode)
        if pool is not None:
            return pool
        with self._lock:
            pool = self._pools.get(mode)
            if pool is None:
                if self._terminated:
                    raise PoolClosedError("the pool was terminated")
                pool = Pool(self._workers_of(mode), mode=mode, **self._common,
                            **{k: v for k, v in self._per_mode[mode].items() if v is not None})
                self._pools[mode] = pool
            return pool

    def _taught(self, mode: str, fn: Callable[..., Any]) -> Pool:
        """The pool of ``mode``, told what was measured of ``fn`` on the way.

        A pool sizes a map's chunks from the time its tasks take, which a
        fresh pool learns in chunks of 1, 2, 4, ... tasks: a round trip each,
        which tiny tasks feel. Told the probe's figures (if the tasks were
        quick, and it has none of its own), it sizes them right from the first
        chunk. A process pool is also handed the function as pickled to size
        it: a closure that carries a big table is not pickled twice.
        """
        pool = self._pool_for(mode)
        choice = self._choices.get(_function_key(fn))
        if choice is None:
            return pool
        pickled, choice.function_pickle = choice.function_pickle, None  # handed over once
        if pickled is not None and mode == "process":
            pool._engine.know_function(fn, pickled)
        seconds = choice.task_seconds
        timings = pool._scheduler.timings
        if seconds is not None and 0 < seconds < TEACH_BELOW and timings.of(fn) is None:
            timings.note(fn, seconds, smooth=False)
            if choice.carried[0] is not None:
                timings.note_bytes(fn, *choice.carried)
        return pool

    def _known(self, fn: Callable[..., Any]) -> str | None:
        """The mode decided for ``fn``, if it holds; None: it must be measured."""
        choice = self._choices.get(_function_key(fn))
        if choice is not None and time.monotonic() - choice.made < DECISION_SECONDS:
            return choice.decision.mode
        if is_coroutine_function(fn):
            self._record(fn, Decision("async", "a coroutine function runs on an event loop"))
            return "async"
        return None

    def _record(self, fn: Callable[..., Any], decision: Decision,
                task_seconds: float | None = None,
                carried: tuple[float | None, float | None] = (None, None),
                function_pickle: bytes | None = None) -> None:
        with self._lock:
            if len(self._choices) >= _DECISIONS_KEPT:
                self._choices.pop(next(iter(self._choices)))
            self._choices[_function_key(fn)] = _Choice(decision, task_seconds, carried,
                                                       function_pickle)
            self._last = decision
        logger.debug("mode='auto' runs %s in mode=%r: %s",
                     getattr(fn, "__qualname__", None) or repr(fn), decision.mode,
                     decision.reason)

    def _inherited(self) -> bool:
        return os.getpid() != self._pid

    def _check_open(self) -> None:
        if self._inherited():
            raise inherited_error()
        if self._closed:
            raise PoolClosedError("cannot submit work to a pool that has been closed")

    def _check_function(self, fn: Any) -> None:
        if not callable(fn):
            raise TypeError(f"the task's function must be callable, not {fn!r}")

    # --- measuring -----------------------------------------------------------------
    def _probe(self, fn: Callable[..., Any], tasks: list[HeldTask], more: int | None,
               batched: bool) -> tuple[Probe, list[HeldTask]]:
        """Hand ``tasks`` to ``fn``'s probe, starting one if none runs.

        ``more``: how many tasks will follow (None: unknown); ``batched``: they
        are a map's. Returns the probe, and the tasks it did not take because
        it had decided meanwhile: send those yourself, where ``probe.mode`` says.
        """
        key = _function_key(fn)
        with self._lock:
            self._check_open()
            probe = self._probes.get(key)
            fresh = probe is None or probe.mode is not None
            if fresh:
                # Probes that are over keep nothing but their windows: drop them.
                for done in [k for k, p in self._probes.items() if p.done.is_set()]:
                    del self._probes[done]
                probe = Probe(fn, self._run_measured,
                              functools.partial(self._decide, more=more, batched=batched),
                              self._send, lanes=min(2, self._workers_of("thread")),
                              settled_alone=functools.partial(self._settled_alone, more=more,
                                                              batched=batched))
                self._probes[key] = probe
        assert probe is not None
        left = [task for task in tasks if not probe.hold(task)]
        if fresh:
            # Ctrl-C must reach the main thread, which may be asleep waiting
            # for this probe's tasks.
            start_without_sigint(probe.thread)
        return probe, left

    def _run_measured(self, task: HeldTask, measured: Callable[..., Any]) -> None:
        self._hand(task, self._pool_for("thread"), measured)

    def _send(self, task: HeldTask, mode: str) -> None:
        try:
            pool = self._taught(mode, task.fn)
        except PoolClosedError as error:
            if task.future.set_running_or_notify_cancel():
                task.future.set_exception(error)
            return
        self._hand(task, pool, task.fn)

    @staticmethod
    def _hand(task: HeldTask, pool: Pool, fn: Callable[..., Any]) -> None:
        """Submit ``task`` to ``pool`` in its caller's context, keeping its job to stop it."""
        if task.future.done():
            return  # cancelled while held
        try:
            # A copy: the tasks of one map share a context, and two threads
            # may hand two of them over at once (a context is entered by one).
            task.job = task.context.copy().run(pool._submit_job, fn, task.args, task.kwargs,
                                               task.future)
            task.pool = pool
        except Exception as error:  # a pool broken meanwhile: the task hears of it
            future = task.future
            if not (future.done() or future.running()) and future.set_running_or_notify_cancel():
                future.set_exception(error)
        # A KeyboardInterrupt (Ctrl-C in the main thread, which hands over a
        # map's first items) goes on up: the task may be in the pool already,
        # and the caller is being interrupted, not the task.

    def _decide(self, probe: Probe, more: int | None, batched: bool) -> str:
        """Where ``probe``'s function runs, from what the probe saw (on its thread)."""
        with probe.cond:
            held = len(probe.held)
        measured = _replace(self._measurement(probe, None if more is None else more + held),
                            batched=batched)
        decision = decide(measured, self._costs)
        if decision.mode == "process":
            # Only now pay for pickling to size the data: processes must carry it.
            decision = decide(self._with_sizes(probe, measured), self._costs)
        self._record(probe.fn, decision, measured.task_seconds, probe.carried,
                     probe.function_pickle if decision.mode == "process" else None)
        return decision.mode

    def _settled_alone(self, probe: Probe, cheap: bool = False, *, more: int | None,
                       batched: bool) -> bool:
        """Whether threads win even if the work holds the GIL (so two at once need not be seen).

        Processes gain most on GIL-bound work; when its start, copies and
        hand-overs outweigh even that gain (few tasks, big data), the answer
        is threads whatever the second window would show. ``cheap``: without
        pickling the function (a closure's state may take a while), as if it
        cost nothing to send: asked while a task is being measured.
        """
        with probe.cond:
            held = len(probe.held)
        measured = _replace(self._measurement(probe, None if more is None else more + held),
                            batched=batched, gil_gain=1.0, gil_share=1.0)
        decision = decide(measured, self._costs)
        if decision.mode == "process":
            decision = decide(self._with_sizes(probe, measured, function_too=not cheap),
                              self._costs)
        return decision.mode != "process"

    def _measurement(self, probe: Probe, remaining: int | None) -> Measurement:
        solo, pair = probe.solo, probe.pair
        cpu_ratio = min(1.0, solo.cpu_ratio) if solo is not None else 0.0
        alone = min(1.0, solo.cpu / solo.busy) if solo is not None and solo.busy > 0 else 1.0
        if solo is not None and solo.busy > 0 and cpu_ratio > 0:
            # A task that waits part of its time got less of a core for that
            # reason, not for the host's load: count only what load took.
            alone = min(1.0, alone / cpu_ratio)
        gain = share = None
        one_at_a_time = pair is not None and pair.offered < 2
        if pair is not None and solo is not None:
            views = _gil_views(solo, pair)
            if views is not None:
                gain, share = views
        return Measurement(
            picklable=True, cpu_ratio=cpu_ratio, gil_gain=gain, gil_share=share,
            one_at_a_time=one_at_a_time, alone_share=alone,
            task_seconds=probe.task_seconds(), payload_bytes=0, function_bytes=0,
            remaining=remaining, workers=self._workers_of("process"), cores=usable_cores(),
            free_threaded=_free_threaded(), processes_running="process" in self._pools,
            processes_warm=_zygote_running())

    def _with_sizes(self, probe: Probe, measured: Measurement,
                    function_too: bool = True) -> Measurement:
        """``measured`` with what the function (unless not ``function_too``: then
        nothing, if not sized yet), its arguments and results pickle to."""
        # Pickled once per probe (a closure may carry a lot), and kept for the
        # process pool, should it be chosen (see _taught).
        if function_too and not probe.function_sized:
            probe.function_pickle, probe.function_sized = pickled_function(probe.fn), True
        fn_size: int | None = 0
        if probe.function_sized:
            fn_size = None if probe.function_pickle is None else len(probe.function_pickle)
        arguments, results = [], []
        for task in probe.measured_tasks[:4]:
            size = pickled_bytes((task.args, task.kwargs))
            if size is None or fn_size is None:
                return _replace(measured, picklable=False)
            arguments.append(size)
            future = task.future
            if future.done() and not future.cancelled() and future.exception() is None:
                result_size = pickled_bytes(future.result())
                if result_size is None:
                    return _replace(measured, picklable=False)
                results.append(result_size)
        if not arguments:
            return _replace(measured, function_bytes=fn_size or 0)
        argument_bytes = sum(arguments) / len(arguments)
        result_bytes = sum(results) / len(results) if results else None
        probe.carried = (argument_bytes, result_bytes)
        payload = int(argument_bytes + (result_bytes or 0))
        return _replace(measured, payload_bytes=payload, function_bytes=fn_size or 0)

    # --- one task ----------------------------------------------------------------------
    def _submit_one(self, fn: Callable[..., Any], args: tuple[Any, ...],
                    kwargs: dict[str, Any], future: F) -> F:
        self._route(fn, args, kwargs, future)
        return future

    def _route(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
               future: Future[Any]) -> tuple[OneJob, Pool] | HeldTask:
        """Send a task where ``fn`` runs (its job, and the pool), or hold it while
        ``fn`` is measured (the task, which knows its job once sent)."""
        self._check_function(fn)
        self._check_open()
        mode = self._known(fn)
        if mode is not None:
            pool = self._pool_for(mode)
            return pool._submit_job(fn, args, kwargs, future), pool
        task = HeldTask(fn, args, kwargs, future, copy_context())
        probe, left = self._probe(fn, [task], more=0, batched=False)
        if left:  # decided meanwhile
            self._send(task, probe.mode or "thread")
        return task

    def _submit_stoppable(self, fn: Callable[..., Any], args: tuple[Any, ...],
                          kwargs: dict[str, Any]) -> tuple[Future[Any], Callable[[], None]]:
        future: Future[Any] = Future()
        sent = self._route(fn, args, kwargs, future)

        def stop() -> None:
            if future.cancel():
                return
            # Where it went, not where the function would go now: a decision
            # may have been made again since.
            job, pool = (sent.job, sent.pool) if isinstance(sent, HeldTask) else sent
            if job is not None and pool is not None:
                pool._engine.stop_running(job, concurrent.futures.CancelledError())
        return future, stop

    # --- maps ----------------------------------------------------------------------------
    def _measure_first(self, fn: Callable[..., Any], head: list[Any], call: int,
                       more: int | None, started: float = 0.0, wait: float | None = None,
                       take_back: bool = True) -> tuple[str, list[Future[Any]]]:
        """Have ``fn`` measured on a map's first items; once decided, where it runs.

        ``more``: how many items follow (None: unknown). Returns the mode and
        the futures of the first items the probe ran, which go on where they
        were sent. The probe runs a map's items from the front; those it did
        not run are given back (``take_back``), to run with the rest of the
        map: the caller's items from ``len(futures)`` on. Else they are sent
        where the mode says, and their futures returned too: a lazy map reads
        its input as results are taken, and they must not wait for that.

        Raises:
            ResultTimeoutError: ``wait`` seconds from ``started`` (time.monotonic)
                passed first.
        """
        context = copy_context()
        owner = object()
        tasks = [HeldTask(fn, tuple(item) if call == CALL_STAR else (item,), {}, Future(),
                          context, owner=owner) for item in head]
        probe, left = self._probe(fn, tasks, more, batched=True)
        deadline = None if wait is None else started + wait
        try:
            if not probe.decided.wait(None if deadline is None
                                      else max(0.0, deadline - time.monotonic())):
                raise result_timeout_error(
                    f"map() did not finish within {wait:g} s: none of its first "
                    f"{len(tasks)} tasks had finished; those not started were cancelled")
        except BaseException:
            for task in tasks:
                task.future.cancel()
            raise
        mode = probe.mode or "thread"
        back = probe.reclaim(owner) + left
        if not take_back:
            for task in back:
                self._send(task, mode)
            return mode, [task.future for task in tasks]
        returned = {id(task) for task in back}
        return mode, [task.future for task in tasks if id(task) not in returned]

    def _map(self, fn: Callable[..., Any], iterable: Iterable[Any], call: int,
             chunksize: ChunkSize, progress: ProgressArg, started: float,
             wait: float | None, skip: int = 0) -> list[Any]:
        items, _ = _map_items(fn, iterable, chunksize)
        self._check_open()
        mode = self._known(fn)
        if mode is not None or not items or skip:
            # (``skip``: the caller runs the first items itself; the rest of a
            # map it has measured needs no measuring.)
            return self._pool_for(mode or "thread")._map(fn, items, call, chunksize, progress,
                                                         started, wait, skip)
        mode, heads = self._measure_first(fn, items[:PROBE_ITEMS], call,
                                          len(items) - PROBE_ITEMS, started, wait)
        pool = self._taught(mode, fn)
        report = reporter(progress, len(items), getattr(fn, "__name__", "map"))
        deadline = None if wait is None else started + wait
        try:
            _raise_failed(heads)
            try:
                # The whole list, its first items skipped (their results come
                # from the heads): no copy of a million items, in or out.
                results = pool._map(fn, items, call, chunksize, _after(heads, report), started,
                                    wait, skip=len(heads))
            except Exception:
                # An error of an earlier item comes first: the measured ones are.
                concurrent.futures.wait(heads, _left(deadline))
                _raise_failed(heads)
                raise
            results[:len(heads)] = [_result(head, deadline, wait, len(items)) for head in heads]
            report.update(len(items))
            return results
        except BaseException:
            for head in heads:
                head.cancel()
            raise
        finally:
            report.close()

    def _map_async(self, fn: Callable[..., Any], iterable: Iterable[Any], call: int,
                   chunksize: ChunkSize, callback: Callable[[Any], Any] | None,
                   error_callback: Callable[[BaseException], Any] | None,
                   skip: int = 0) -> Any:
        items, _ = _map_items(fn, iterable, chunksize)
        self._check_open()
        mode = self._known(fn)
        if mode is not None or not items or skip:  # (skip: as in _map)
            return self._pool_for(mode or "thread")._map_async(fn, items, call, chunksize,
                                                               callback, error_callback, skip)
        mode, heads = self._measure_first(fn, items[:PROBE_ITEMS], call,
                                          len(items) - PROBE_ITEMS)
        pool = self._taught(mode, fn)
        from .._results import AsyncResult, callbacks

        result: AsyncResult[list[Any]] = AsyncResult()
        if callback is not None or error_callback is not None:
            result.add_done_callback(callbacks(callback, error_callback))
        tail = pool._map_async(fn, items, call, chunksize, None, None, skip=len(heads))
        _join_results(result, heads, tail)
        return result

    def _imap(self, fn: Callable[..., Any], iterable: Iterable[Any], call: int,
              chunksize: ChunkSize, ordered: bool, progress: ProgressArg) -> Iterator[Any]:
        self._check_function(fn)
        self._check_open()
        mode = self._known(fn)
        if mode is not None:
            return self._pool_for(mode)._imap(fn, iterable, call, chunksize, ordered, progress)
        try:
            total: int | None = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
        source, head = first_items(iter(iterable), PROBE_ITEMS)
        more = None if total is None else max(0, total - len(head))
        if not head:
            return self._pool_for("thread")._imap(fn, source, call, chunksize, ordered,
                                                   progress)
        mode, heads = self._measure_first(fn, head, call, more, take_back=False)
        chained = Chained(heads, ordered, reporter(progress, total,
                                                   getattr(fn, "__name__", "imap")))
        chained.tail = self._taught(mode, fn)._imap(fn, source, call, chunksize, ordered,
                                                     chained.tail_progress())
        return chained

    # --- asyncio faces -----------------------------------------------------------------
    async def _amap(self, fn: Callable[..., Any], iterable: Iterable[Any], call: int,
                    chunksize: ChunkSize, progress: ProgressArg, started: float,
                    wait: float | None, skip: int = 0) -> list[Any]:
        import asyncio

        items, _ = _map_items(fn, iterable, chunksize)
        self._check_open()
        mode = self._known(fn)
        if mode is None and (not items or skip):  # (skip: as in _map)
            mode = "thread"
        if mode is not None:
            return await self._pool_for(mode)._amap(fn, items, call, chunksize, progress,
                                                    started, wait, skip)
        chosen, heads = await asyncio.to_thread(
            self._measure_first, fn, items[:PROBE_ITEMS], call, len(items) - PROBE_ITEMS)
        pool = self._taught(chosen, fn)
        report = reporter(progress, len(items), getattr(fn, "__name__", "amap"))
        try:
            _raise_failed(heads)
            results = await pool._amap(fn, items, call, chunksize, _after(heads, report),
                                       started, wait, skip=len(heads))
            left = None if wait is None else max(0.0, started + wait - time.monotonic())
            try:
                results[:len(heads)] = await asyncio.wait_for(asyncio.gather(*heads), left)
            except TimeoutError:
                raise result_timeout_error(
                    f"map() did not finish within {wait:g} s") from None
            report.update(len(items))
            return results
        except BaseException:
            for head in heads:
                head.cancel()
            raise
        finally:
            report.close()

    def _aimap(self, fn: Callable[..., Any], iterable: Any, call: int, chunksize: ChunkSize,
               ordered: bool, progress: ProgressArg) -> AsyncIterator[Any]:
        self._check_function(fn)
        self._check_open()
        mode = self._known(fn)
        if mode is not None:
            return self._pool_for(mode)._aimap(fn, iterable, call, chunksize, ordered, progress)
        try:
            total: int | None = len(iterable)
        except TypeError:
            total = None

        async def begin(chained: AsyncChained,
                        ) -> tuple[list[Future[Any]], AsyncIterator[Any]] | None:
            import asyncio

            from .._aimap import async_source

            source = async_source(iterable)
            head: list[Any] = []
            if isinstance(source, AsyncIterator):
                async for item in source:
                    head.append(item)
                    if len(head) == PROBE_ITEMS:
                        break
            else:
                source, head = first_items(source, PROBE_ITEMS)
            if not head:
                return None
            more = None if total is None else max(0, total - len(head))
            chosen, heads = await asyncio.to_thread(
                functools.partial(self._measure_first, fn, head, call, more, take_back=False))
            tail = self._taught(chosen, fn)._aimap(fn, source, call, chunksize, ordered,
                                                   chained.tail_progress(len(heads)))
            return heads, tail

        return AsyncChained(begin, ordered,
                            reporter(progress, total, getattr(fn, "__name__", "aimap")))

    # --- everything else ----------------------------------------------------------------
    def share(self, obj: Any) -> Any:
        """Return ``obj``: threads share memory, processes get big buffers through shared memory."""
        self._check_open()
        return obj

    def _probes_running(self) -> list[Probe]:
        with self._lock:
            return [p for p in self._probes.values() if not p.done.is_set()]

    def _every_pool(self) -> list[Pool]:
        with self._lock:
            return list(self._pools.values())

    def close(self) -> None:
        """Accept no more work; what was submitted still runs."""
        self._closed = True

    def join(self) -> None:
        """Wait for all submitted work to finish and the workers to exit (after close)."""
        if not self._closed:
            raise ValueError("join() needs close() first: the pool is still open")
        self.shutdown(wait=True)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False,
                 cancel_pending: bool | None = None) -> None:
        """Close, and stop every pool it made once its work is done (see :meth:`Pool.shutdown`)."""
        if cancel_pending is not None:
            if cancel_futures:
                raise TypeError("cancel_pending is the older name of cancel_futures; "
                                "give only one of them")
            cancel_futures = cancel_pending
        self._closed = True
        if self._inherited():
            return  # the parent's to stop: its probes' threads are not here
        if cancel_futures:
            error = PoolClosedError("the pool was shut down (cancel_futures=True) before "
                                    "these tasks ran")
            for probe in self._probes_running():
                for task in probe.abort():
                    _fail(task, error)
            # Aborted, the probes hand nothing over: the tasks already queued
            # in the pools (a probe's measured ones among them) are cancelled
            # now, not once the probes have ended, by which time one may run.
            for pool in self._every_pool():
                pool.shutdown(False, cancel_futures=True)
        # The pools close once every probe has handed over the tasks it held.
        if wait or not self._probes_running():
            self._wait_for_probes()
            for pool in self._every_pool():
                pool.shutdown(wait, cancel_futures=cancel_futures)
            return

        def close_after_probes() -> None:
            self._wait_for_probes()
            for pool in self._every_pool():
                pool.shutdown(False, cancel_futures=cancel_futures)
        start_without_sigint(threading.Thread(target=close_after_probes,
                                              name="bingfa-auto-close", daemon=True))

    def _wait_for_probes(self) -> None:
        for probe in self._probes_running():
            if probe.thread.ident != threading.get_ident():
                probe.done.wait()
                probe.thread.join()

    def terminate(self) -> None:
        """Stop now: tasks held or pending are cancelled, running ones fail, workers are killed."""
        self._closed = self._terminated = True
        if self._inherited():
            return
        error = PoolClosedError("the pool was terminated before this task ran")
        for probe in self._probes_running():
            for task in probe.abort():
                _fail(task, error)
        for pool in self._every_pool():
            pool.terminate()
        for probe in self._probes_running():
            if probe.thread.ident != threading.get_ident():
                probe.thread.join()

    async def aclose(self) -> None:
        """:meth:`shutdown` for coroutines: close, and await every task without blocking."""
        import asyncio

        self._closed = True
        if self._inherited():
            return
        await asyncio.to_thread(self._wait_for_probes)
        for pool in self._every_pool():
            await pool.aclose()
        await asyncio.to_thread(self.shutdown, True)

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: Any) -> None:
        if exc_type is None:
            await self.aclose()
            return
        for pool in self._every_pool():
            await pool.__aexit__(exc_type, None, None)
        self.terminate()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<bingfa.Pool mode='auto' (now {self.mode!r}) workers={self.workers} {state}>"


def _gil_views(solo: Window, pair: Window) -> tuple[float, float] | None:
    """Two views of threads side by side against one alone; None: none ran together.

    All the CPU the threads got per second, against one thread's: about 1
    when they take turns (the GIL), up to 2 when they run side by side, less
    on a busy host, where the second thread shares the cores with
    everything else. And the share of its running time each thread spent on
    a CPU, times the threads at once, leaving out time queued for a core:
    a busy host does not change it for work that runs side by side, but it
    counts a thread woken for the GIL and left queued as if it had not been
    waiting. See ``_decide`` for how they are weighed.
    """
    if pair.offered < 2:
        return None  # the caller gave one task at a time
    at_once = pair.busy / pair.seconds if pair.seconds > 0 else 0.0
    alone = solo.cpu / solo.busy if solo.busy > 0 else 0.0
    # Threads that take turns for the GIL leave gaps between their tasks
    # (each hand-over waits for a switch interval, longer on a busy host), so
    # any overlap will do; none at all says nothing.
    if at_once < 1.05 or alone <= 0 or solo.cpu_ratio <= 0:
        return None
    return pair.cpu / pair.seconds / alone, at_once * pair.cpu_ratio / solo.cpu_ratio


def _replace(measured: Measurement, **changes: Any) -> Measurement:
    import dataclasses

    return dataclasses.replace(measured, **changes)


def _fail(task: HeldTask, error: BaseException) -> None:
    if task.future.set_running_or_notify_cancel():
        task.future.set_exception(error)


def _raise_failed(heads: list[Future[Any]]) -> None:
    """Raise the first error among the measured items that have ended already."""
    for head in heads:
        if head.done() and not head.cancelled() and head.exception() is not None:
            head.result()


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _result(head: Future[Any], deadline: float | None, wait: float | None, n: int) -> Any:
    try:
        return head.result(_left(deadline))
    except concurrent.futures.TimeoutError:
        raise result_timeout_error(
            f"map() did not finish within {wait:g} s: some of its {n} tasks had not "
            "finished; those not started were cancelled") from None


def _after(heads: list[Future[Any]], report: Reporter) -> ProgressArg:
    """A progress callable for the rest of a map, which counts the heads as done from
    the start (they are skipped): only those that have ended are."""
    if report.quiet:
        return False

    def update(done: int, _total: int | None) -> None:
        report.update(done - sum(1 for head in heads if not head.done()))
    return update


def _join_results(result: Any, heads: list[Future[Any]], tail: Any) -> None:
    """Settle ``result`` with the heads' results in the first slots of the tail's
    (which skipped them), or with the first error."""
    parts: list[Any] = [*heads, tail]
    left = [len(parts)]
    lock = threading.Lock()

    def one_done(_: Any) -> None:
        with lock:
            left[0] -= 1
            last = left[0] == 0
        failed = next((p for p in parts if p.done() and not p.cancelled()
                       and p.exception() is not None), None)
        if failed is not None and not result.done():
            for part in parts:
                part.cancel()
            if result.set_running_or_notify_cancel():
                result.set_exception(failed.exception())
            return
        if last and not result.done() and result.set_running_or_notify_cancel():
            results = tail.result()
            results[:len(heads)] = [h.result() for h in heads]
            result.set_result(results)

    def stop_parts(_: Any) -> None:
        if result.cancelled():
            for part in parts:
                part.cancel()

    result.add_done_callback(stop_parts)
    for part in parts:
        part.add_done_callback(one_done)
