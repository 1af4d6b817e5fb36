"""Timing one workload in one mode: medians come from here.

Pools are started, and their workers warmed, before the clock starts: what is
timed is the work, as a long-running program sees it. gevent runs in a child
interpreter of its own (``_gevent_child``), because it must monkey-patch
before anything else is imported.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from .._core._machine import usable_cores
from ._workloads import Workload, noop, noop_async

__all__ = ["IO_WORKERS", "calibrate", "runner", "server_process", "workers_for"]

# Workers for waiting work: enough that the waits overlap; processes cost
# memory each, so fewer of them.
IO_WORKERS = 32


def workers_for(workload: Workload, mode: str) -> int:
    """How many workers ``mode`` gets for ``workload``."""
    cores = usable_cores()
    if workload.kind == "latency":
        return 1
    if workload.waits:
        return 4 * cores if mode == "process" else IO_WORKERS
    return cores


def calibrate(workload: Workload, arg: Any, budget: float) -> int:
    """How many tasks make about ``budget`` seconds of serial work (at least 4 per core)."""
    if workload.kind == "latency":
        return max(200, int(budget / 50e-6))  # round trips: tens of µs each, at most
    least = 4 * usable_cores()
    if workload.waits:
        return max(least, IO_WORKERS)  # one round of waits for the many-worker modes
    workload.fn(arg)  # warm: first-call costs (imports, allocations) are not the task's
    start = time.perf_counter()
    workload.fn(arg)
    one = max(time.perf_counter() - start, 1e-6)
    return max(least, min(2000, round(budget / one)))


@contextmanager
def runner(workload: Workload, mode: str, arg: Any, tasks: int) -> Iterator[Callable[[], float]]:
    """``mode`` ready to run ``workload`` (its pool started and warm): a function that
    times one run, in seconds for ``tasks`` tasks (or per round trip, for latency).

    Runners of every mode stay open together, so that their runs can take
    turns: on a machine whose load changes, each mode then sees the same.
    """
    if mode == "gevent":
        with _in_gevent_child(workload, arg, tasks) as run_in_child:
            yield run_in_child
    elif workload.kind == "latency" and mode == "async":
        yield lambda: asyncio.run(_async_round_trips(tasks))
    elif workload.kind == "latency":
        with _round_trips(mode) as one_trip:
            yield lambda: _time_trips(one_trip, tasks)
    elif mode == "serial":
        yield lambda: _serial(workload.fn, arg, tasks)
    else:
        with _pooled(workload, mode, arg, tasks) as run:
            yield lambda: run(tasks)


def _serial(fn: Callable[[Any], Any], arg: Any, tasks: int) -> float:
    start = time.perf_counter()
    for _ in range(tasks):
        fn(arg)
    return time.perf_counter() - start


@contextmanager
def _pooled(workload: Workload, mode: str, arg: Any,
            tasks: int) -> Iterator[Callable[[int], float]]:
    from .._pool._pool import Pool

    fn = workload.async_fn if mode == "async" else workload.fn
    workers = workers_for(workload, mode)
    chunksize = 1 if workload.waits else None

    with Pool(workers, mode=mode) as pool:
        pool.map(fn, [arg] * workers, chunksize=1)  # every worker started
        # ... and a map of half the size first: a pool's first map of a function
        # sizes its chunks while it learns the task's time, and runs slower.
        pool.map(fn, [arg] * max(workers, tasks // 2), chunksize=chunksize)

        def run(tasks: int) -> float:
            start = time.perf_counter()
            pool.map(fn, [arg] * tasks, chunksize=chunksize)
            return time.perf_counter() - start

        yield run


@contextmanager
def server_process(kind: str) -> Iterator[str]:
    """A bench server (``kind``: ``"socket"`` or ``"rpc"``, see ``_server``) in a process of
    its own: the line it prints once it listens (a port, an address)."""
    server = subprocess.Popen([sys.executable, "-m", "bingfa.bench._server", kind],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        line = server.stdout.readline().strip()
        if not line:
            raise RuntimeError(f"the bench's {kind} server did not start")
        yield line
    finally:
        server.kill()
        server.wait()
        if server.stdout is not None:
            server.stdout.close()


def _time_trips(one_trip: Callable[[int], Any], count: int) -> float:
    """Seconds per call of ``one_trip``, over ``count`` calls."""
    start = time.perf_counter()
    for i in range(count):
        one_trip(i)
    return (time.perf_counter() - start) / count


@contextmanager
def _round_trips(mode: str) -> Iterator[Callable[[int], Any]]:
    """A call that makes one round trip to a worker of ``mode`` and back."""
    if mode == "serial":
        yield noop
    elif mode == "rpc":
        from ..rpc import connect

        # The server in a process of its own, as RPC is used: in this one it
        # would take turns with the client for the GIL.
        with server_process("rpc") as address, connect(address) as client:
            client.noop(0)
            yield client.noop
    else:
        from .._pool._pool import Pool

        with Pool(1, mode=mode) as pool:
            pool.submit(noop, 0).result()
            yield lambda i: pool.submit(noop, i).result()


async def _async_round_trips(count: int) -> float:
    """Seconds per round trip to a new task on the running loop (one loop for all)."""
    loop = asyncio.get_running_loop()
    await loop.create_task(noop_async(0))
    start = time.perf_counter()
    for i in range(count):
        await loop.create_task(noop_async(i))
    return (time.perf_counter() - start) / count


@contextmanager
def _in_gevent_child(workload: Workload, arg: Any, tasks: int) -> Iterator[Callable[[], float]]:
    """A child interpreter, patched by gevent, that times a run each time it is asked."""
    spec = {"workload": workload.name, "arg": arg, "tasks": tasks,
            "workers": workers_for(workload, "gevent")}
    # Its errors go to a file: a pipe nobody reads while it runs could fill and stop it.
    with tempfile.TemporaryFile("w+") as errors, subprocess.Popen(
            [sys.executable, "-m", "bingfa.bench._gevent_child", json.dumps(spec)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, text=True,
            env={**os.environ, "PYTHONWARNINGS": "ignore"}) as child:
        to_child, from_child = child.stdin, child.stdout
        if to_child is None or from_child is None:  # never: both are pipes
            raise RuntimeError("the gevent child has no pipes")

        def failed() -> RuntimeError:
            child.kill()
            child.wait()
            errors.seek(0)
            return RuntimeError(f"the gevent measurement failed: {errors.read().strip()[-500:]}")

        def run() -> float:
            to_child.write("run\n")
            to_child.flush()
            line = from_child.readline()
            if not line:
                raise failed()
            return float(json.loads(line))

        try:
            if from_child.readline().strip() != "ready":
                raise failed()
            yield run
        finally:
            if child.poll() is None:
                to_child.close()  # it ends when its input does
                try:
                    child.wait(10)
                except subprocess.TimeoutExpired:
                    child.kill()
