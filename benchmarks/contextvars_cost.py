"""What copying contextvars into thread-mode tasks costs per task.

Runs the same thread pool with the copy on (bingfa's default) and off (the
pool's private switch, as ThreadPoolExecutor behaves), interleaved, and prints
the medians and their difference per task. The target: under 1 µs.

    python benchmarks/contextvars_cost.py [--tasks N] [--repeats N]
"""

from __future__ import annotations

import argparse
import contextvars
import statistics
import time

import bingfa as bf

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def task(x: int) -> int:
    return x


def per_task(pool: bf.Pool, copies: bool, tasks: int) -> float:
    """Seconds per task of a submit loop and its results, with the copy on or off."""
    pool._copies_context = copies
    start = time.perf_counter()
    futures = [pool.submit(task, i) for i in range(tasks)]
    for future in futures:
        future.result()
    return (time.perf_counter() - start) / tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    request_id.set("benchmark")
    on: list[float] = []
    off: list[float] = []
    with bf.Pool(2, mode="thread") as pool:
        per_task(pool, True, args.tasks)  # warm-up: threads started
        for repeat in range(args.repeats):
            # Alternate which goes first: whichever follows the other gains a
            # little from what the first warmed up.
            for copies in (True, False) if repeat % 2 else (False, True):
                (on if copies else off).append(per_task(pool, copies, args.tasks))
    copy, plain = statistics.median(on), statistics.median(off)
    print(f"thread pool, 2 workers, {args.tasks:,} submits then results; medians of "
          f"{args.repeats} interleaved runs")
    print(f"  contextvars copied (default): {copy * 1e6:6.2f} µs per task")
    print(f"  not copied:                   {plain * 1e6:6.2f} µs per task")
    cost = (copy - plain) * 1e6
    print(f"  cost of the copy: {cost:+.2f} µs per task "
          f"(target: under 1 µs: {'PASS' if cost < 1.0 else 'FAIL'})")


if __name__ == "__main__":
    main()
