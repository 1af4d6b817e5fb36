"""Many submits in a loop, then every result: bingfa beside the stdlib pools.

The pattern of multiprocessing's own ``apply_async`` examples: queue N small
tasks, then collect them. Runs are interleaved (bingfa, multiprocessing.Pool,
ProcessPoolExecutor, in turn) so machine noise hits all alike; the table shows
medians and bingfa's ratio to each.

    python benchmarks/submits.py [--tasks 10000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import bingfa as bf

WORKERS = 2


def noop(x: int) -> int:
    return x


def run_bingfa(pool: bf.Pool, n: int) -> list[int]:
    futures = [pool.submit(noop, i) for i in range(n)]
    return [f.result() for f in futures]


def run_mp(pool: Any, n: int) -> list[int]:
    pending = [pool.apply_async(noop, (i,)) for i in range(n)]
    return [r.get() for r in pending]


def run_ppe(pool: concurrent.futures.ProcessPoolExecutor, n: int) -> list[int]:
    futures = [pool.submit(noop, i) for i in range(n)]
    return [f.result() for f in futures]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    n = args.tasks
    print(f"{n:,} submits of noop(i), then every result; {WORKERS} workers; "
          f"median of {args.repeats} interleaved runs")
    print(f"machine: {os.cpu_count()} CPUs, {platform.platform()}, "
          f"CPython {platform.python_version()}, bingfa {bf.__version__}")
    expected = list(range(n))
    times: dict[str, list[float]] = {}
    with multiprocessing.Pool(WORKERS) as mp_pool, \
            concurrent.futures.ProcessPoolExecutor(WORKERS) as ppe, \
            bf.Pool(WORKERS, mode="process") as pool:
        runners: list[tuple[str, Callable[[int], list[int]]]] = [
            ("bingfa Pool.submit", lambda k: run_bingfa(pool, k)),
            ("multiprocessing.Pool.apply_async", lambda k: run_mp(mp_pool, k)),
            ("ProcessPoolExecutor.submit", lambda k: run_ppe(ppe, k)),
        ]
        for _, run in runners:  # warm up: workers started, functions measured
            assert run(1000) == list(range(1000))
        for _ in range(args.repeats):
            for name, run in runners:
                start = time.perf_counter()
                got = run(n)
                times.setdefault(name, []).append(time.perf_counter() - start)
                assert got == expected, name
    ours = statistics.median(times["bingfa Pool.submit"])
    print(f"\n  {'implementation':<36} {'per task':>10} {'total':>10} {'bingfa ratio':>13}")
    for name, samples in times.items():
        median = statistics.median(samples)
        ratio = "-" if name.startswith("bingfa") else f"{ours / median:.2f}x"
        print(f"  {name:<36} {median / n * 1e6:>8.1f} us {median * 1e3:>7.1f} ms {ratio:>13}")
    print("\n  bingfa ratio = bingfa's time / the peer's (< 1: bingfa is faster)")


if __name__ == "__main__":
    main()
