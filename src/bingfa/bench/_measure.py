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
import time
from collections.abc import Callable
from typing import Any

from .._core._machine import usable_cores
from ._workloads import Workload, noop, noop_async

__all__ = ["IO_WORKERS", "calibrate", "measure", "workers_for"]

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


def measure(workload: Workload, mode: str, arg: Any, tasks: int, repeats: int) -> list[float]:
    """Seconds for ``tasks`` tasks (or per round trip, for latency), once per repeat."""
    if mode == "gevent":
        return _in_gevent_child(workload, arg, tasks, repeats)
    if workload.kind == "latency":
        return [_round_trip(mode, tasks) for _ in range(repeats)]
    if mode == "serial":
        return [_serial(workload.fn, arg, tasks) for _ in range(repeats)]
    return _pooled(workload, mode, arg, tasks, repeats)


def _serial(fn: Callable[[Any], Any], arg: Any, tasks: int) -> float:
    start = time.perf_counter()
    for _ in range(tasks):
        fn(arg)
    return time.perf_counter() - start


def _pooled(workload: Workload, mode: str, arg: Any, tasks: int, repeats: int) -> list[float]:
    from .._pool._pool import Pool

    fn = workload.async_fn if mode == "async" else workload.fn
    workers = workers_for(workload, mode)
    chunksize = 1 if workload.waits else None
    times = []
    with Pool(workers, mode=mode) as pool:
        pool.map(fn, [arg] * workers, chunksize=1)  # every worker started and warm
        for _ in range(repeats):
            start = time.perf_counter()
            pool.map(fn, [arg] * tasks, chunksize=chunksize)
            times.append(time.perf_counter() - start)
    return times


def _round_trip(mode: str, count: int) -> float:
    """Seconds per round trip of a call that does nothing, in ``mode``."""
    if mode == "serial":
        start = time.perf_counter()
        for i in range(count):
            noop(i)
        return (time.perf_counter() - start) / count
    if mode == "async":
        return asyncio.run(_async_round_trips(count))
    if mode == "rpc":
        return _rpc_round_trips(count)
    from .._pool._pool import Pool

    with Pool(1, mode=mode) as pool:
        pool.submit(noop, 0).result()
        start = time.perf_counter()
        for i in range(count):
            pool.submit(noop, i).result()
        return (time.perf_counter() - start) / count


async def _async_round_trips(count: int) -> float:
    loop = asyncio.get_running_loop()
    await loop.create_task(noop_async(0))
    start = time.perf_counter()
    for i in range(count):
        await loop.create_task(noop_async(i))
    return (time.perf_counter() - start) / count


def _rpc_round_trips(count: int) -> float:
    from ..rpc import connect, serve

    with serve({"noop": noop}, "tcp://127.0.0.1:0") as server, \
            connect(server.address) as client:
        client.noop(0)
        start = time.perf_counter()
        for i in range(count):
            client.noop(i)
        return (time.perf_counter() - start) / count


def _in_gevent_child(workload: Workload, arg: Any, tasks: int, repeats: int) -> list[float]:
    spec = {"workload": workload.name, "arg": arg, "tasks": tasks, "repeats": repeats,
            "workers": workers_for(workload, "gevent")}
    done = subprocess.run([sys.executable, "-m", "bingfa.bench._gevent_child", json.dumps(spec)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if done.returncode != 0:
        raise RuntimeError(f"the gevent measurement failed: {done.stderr.strip()[-500:]}")
    times: list[float] = json.loads(done.stdout.strip().splitlines()[-1])
    return times
