"""bf.to_thread against asyncio.to_thread; awaiting a process pool against waiting on it.

Each workload runs every implementation in turn, ``--repeats`` times
interleaved, and prints the median time per call and the ratios:

- **to_thread**: ``await bf.to_thread(f)`` against ``await asyncio.to_thread(f)``
  for a trivial ``f``: ``--calls`` awaits one after the other, and the same
  number spread over ten coroutines awaiting at once. For reference, a
  *floor*: the least a loop-to-thread round trip can cost in Python (an
  already running thread takes ``f`` from a ``SimpleQueue`` and answers with
  one ``call_soon_threadsafe``; no context copy, no cancellation).
- **process pool**: on a warm ``bf.Pool(mode="process")``, ``await
  pool.submit(f)`` in a coroutine against ``pool.submit(f).result()`` in a
  plain thread (no loop): one after the other, and ten at a time (ten
  coroutines against ten threads). ``bf.to_process(f)`` (its shared pool,
  warm) is shown beside them. And the floor of a process round trip: a
  bare forked process that reads a pickled call from a pipe and writes the
  pickled result back, waited for with a blocking read, and with the loop
  watching the result pipe (``add_reader``, registered once): what any
  implementation would pay at least, either way (one at a time only).

    python benchmarks/async_bridges.py [--calls N] [--repeats N]

Targets (issue #14): ``bf.to_thread`` at most 1.2x ``asyncio.to_thread``'s
time; ``await pool.submit(f)`` at most 1.2x ``pool.submit(f).result()``'s.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import pickle
import queue
import statistics
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import bingfa as bf

CONCURRENT = 10
ECHO: _Echo


def f() -> None:
    return None


# -- the floor of a loop-to-thread round trip -------------------------------------

class _Floor:
    """One thread that runs what it is given and answers the loop: nothing else."""

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.threads = [threading.Thread(target=self._work, daemon=True)
                        for _ in range(CONCURRENT)]
        for t in self.threads:
            t.start()

    def _work(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            loop, future, fn = job
            loop.call_soon_threadsafe(future.set_result, fn())

    def call(self, fn: Callable[[], Any]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.jobs.put((loop, future, fn))
        return future

    def close(self) -> None:
        for _ in self.threads:
            self.jobs.put(None)
        for t in self.threads:
            t.join()


# -- the floor of a process round trip ------------------------------------------------

def _echo(requests: int, results: int, parents: tuple[int, int]) -> None:
    for fd in parents:  # the parent's ends: closing its own makes our read see EOF
        os.close(fd)
    while True:
        data = os.read(requests, 65536)
        if not data:
            return
        os.write(results, pickle.dumps(pickle.loads(data)()))


class _Echo:
    """A bare worker process on two pipes: nothing but the round trip."""

    def __init__(self) -> None:
        requests_r, self.requests = os.pipe()
        self.results, results_w = os.pipe()
        # forked before any pool or thread exists in this process
        self.process = multiprocessing.get_context("fork").Process(
            target=_echo, args=(requests_r, results_w, (self.requests, self.results)),
            daemon=True)
        self.process.start()
        os.close(requests_r)
        os.close(results_w)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.waiting: list[asyncio.Future[Any]] = []

    def call(self, fn: Callable[[], Any]) -> Any:
        os.write(self.requests, pickle.dumps(fn))
        return pickle.loads(os.read(self.results, 65536))

    def acall(self, fn: Callable[[], Any]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        if self.loop is not loop:  # one registration per loop, as a real engine would keep
            loop.add_reader(self.results, self._readable)
            self.loop = loop
        future = loop.create_future()
        self.waiting.append(future)
        os.write(self.requests, pickle.dumps(fn))
        return future

    def _readable(self) -> None:
        data = os.read(self.results, 65536)
        self.waiting.pop(0).set_result(pickle.loads(data))

    def release_loop(self) -> None:
        if self.loop is not None:
            self.loop.remove_reader(self.results)
            self.loop = None

    def close(self) -> None:
        os.close(self.requests)
        self.process.join()
        os.close(self.results)


# -- one measurement: seconds per call -----------------------------------------------

def _in_loop(make: Callable[[], Awaitable[Any]], calls: int, concurrent: int) -> float:
    async def one(n: int) -> None:
        for _ in range(n):
            await make()

    async def main() -> float:
        await one(50)  # warm-up: threads started, code paths hot
        started = time.perf_counter()
        await asyncio.gather(*[one(calls // concurrent) for _ in range(concurrent)])
        elapsed = time.perf_counter() - started
        ECHO.release_loop()
        return elapsed

    return asyncio.run(main()) / calls


def _in_threads(call: Callable[[], Any], calls: int, concurrent: int) -> float:
    def one(n: int) -> None:
        for _ in range(n):
            call()

    one(50)
    if concurrent == 1:
        started = time.perf_counter()
        one(calls)
        return (time.perf_counter() - started) / calls
    go = threading.Barrier(concurrent + 1)

    def worker() -> None:
        go.wait()
        one(calls // concurrent)

    threads = [threading.Thread(target=worker) for _ in range(concurrent)]
    for t in threads:
        t.start()
    go.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    return (time.perf_counter() - started) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per measurement")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved runs (median)")
    args = parser.parse_args()
    calls = args.calls

    global ECHO
    ECHO = _Echo()
    floor = _Floor()
    pool = bf.Pool(mode="process")
    pool.submit(f).result()

    async def warm_shared() -> None:
        await bf.to_process(f)

    asyncio.run(warm_shared())

    thread_rows: dict[str, Callable[[int], float]] = {
        "asyncio.to_thread": lambda c: _in_loop(lambda: asyncio.to_thread(f), calls, c),
        "bf.to_thread": lambda c: _in_loop(lambda: bf.to_thread(f), calls, c),
        "floor (bare round trip)": lambda c: _in_loop(lambda: floor.call(f), calls, c),
    }

    async def awaited() -> Any:
        return await pool.submit(f)

    process_rows: dict[str, Callable[[int], float]] = {
        "pool.submit(f).result()": lambda c: _in_threads(lambda: pool.submit(f).result(),
                                                         calls, c),
        "await pool.submit(f)": lambda c: _in_loop(awaited, calls, c),
        "await bf.to_process(f)": lambda c: _in_loop(lambda: bf.to_process(f), calls, c),
        "floor: blocking read": lambda c: _in_threads(lambda: ECHO.call(f), calls, c),
        "floor: loop add_reader": lambda c: _in_loop(lambda: ECHO.acall(f), calls, c),
    }
    one_only = {"floor: blocking read", "floor: loop add_reader"}
    times: dict[tuple[str, int], list[float]] = {}
    try:
        for _ in range(args.repeats):
            for concurrent in (1, CONCURRENT):
                for rows in (thread_rows, process_rows):
                    for name, run in rows.items():
                        if concurrent == 1 or name not in one_only:
                            times.setdefault((name, concurrent), []).append(run(concurrent))
    finally:
        pool.shutdown()
        floor.close()
        ECHO.close()

    med = {key: statistics.median(values) for key, values in times.items()}
    print(f"median of {args.repeats} interleaved runs; {calls:,} calls each; "
          "microseconds per call")
    for title, rows, base, ours in (
            ("to_thread", thread_rows, "asyncio.to_thread", "bf.to_thread"),
            ("process pool (warm)", process_rows, "pool.submit(f).result()",
             "await pool.submit(f)")):
        print(f"\n{title}")
        print(f"  {'':26s} {'one at a time':>14s} {'ten at a time':>14s}")
        for name in rows:
            cells = "".join(f"{med[(name, c)] * 1e6:11.1f} us" if (name, c) in med
                            else f"{'-':>14s}" for c in (1, CONCURRENT))
            print(f"  {name:26s} {cells}")
        for c in (1, CONCURRENT):
            ratio = med[(ours, c)] / med[(base, c)]
            verdict = "ok" if ratio <= 1.2 else "MISSED"
            print(f"  {ours} / {base}, {'one' if c == 1 else 'ten'} at a time: "
                  f"{ratio:.2f}x (target <= 1.2x: {verdict})")
        if title.startswith("process"):
            ratio = med[("floor: loop add_reader", 1)] / med[("floor: blocking read", 1)]
            print(f"  floor, loop / blocking read, one at a time: {ratio:.2f}x")


if __name__ == "__main__":
    main()
