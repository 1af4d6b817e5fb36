"""Async mode against hand-written asyncio: ``await pool.amap`` beside ``Semaphore`` + ``gather``.

Every workload runs each contender in turn on one event loop, ``--repeats``
times interleaved, and prints medians and the ratio bingfa / peer (above 1:
bingfa slower):

- **sleeps**: ``--sleeps`` coroutines of ``asyncio.sleep(0.001)``, at most
  100 at once: ``await pool.amap`` on ``bf.Pool(100, mode="async")`` against
  a ``Semaphore(100)`` guarding each coroutine under one ``gather``. On
  asyncio's loop, then on uvloop's (when installed).
- **trivial**: ``--trivial`` coroutines that return at once: ``await
  pool.amap`` (the default 100 at a time) against a bare ``gather`` of all of
  them (no limit at all).

    python benchmarks/async.py [--sleeps N] [--trivial N] [--repeats N]

Targets (issue #10): sleeps at most 1.1x the semaphore on either loop;
trivial at most 1.3x bare gather.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

import bingfa as bf


async def nap(_: int) -> None:
    await asyncio.sleep(0.001)


async def nothing(x: int) -> int:
    return x


async def semaphore_gather(n: int, limit: int) -> None:
    gate = asyncio.Semaphore(limit)

    async def one(i: int) -> None:
        async with gate:
            await nap(i)

    await asyncio.gather(*(one(i) for i in range(n)))


async def bare_gather(n: int) -> None:
    await asyncio.gather(*(nothing(i) for i in range(n)))


async def pool_sleeps(n: int, limit: int) -> None:
    async with bf.Pool(limit, mode="async") as pool:
        await pool.amap(nap, range(n))


async def pool_trivial(n: int) -> None:
    async with bf.Pool(mode="async") as pool:
        await pool.amap(nothing, range(n))


def timed(loop_factory: Callable[[], asyncio.AbstractEventLoop],
          make: Callable[[], Awaitable[None]]) -> float:
    async def main() -> float:
        started = time.perf_counter()
        await make()
        return time.perf_counter() - started

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main())


def compare(title: str, loop_factory: Callable[[], asyncio.AbstractEventLoop],
            ours: Callable[[], Awaitable[None]], peer: Callable[[], Awaitable[None]],
            peer_name: str, target: float, repeats: int) -> None:
    mine: list[float] = []
    theirs: list[float] = []
    timed(loop_factory, ours)  # warm up: imports, first loop
    timed(loop_factory, peer)
    for _ in range(repeats):
        mine.append(timed(loop_factory, ours))
        theirs.append(timed(loop_factory, peer))
    a, b = statistics.median(mine), statistics.median(theirs)
    verdict = "met" if a / b <= target else "NOT met"
    print(f"| {title} | {a * 1e3:.1f} ms | {peer_name} {b * 1e3:.1f} ms | {a / b:.2f}x "
          f"| <= {target}x: {verdict} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sleeps", type=int, default=10_000)
    parser.add_argument("--trivial", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    loops: list[tuple[str, Callable[[], asyncio.AbstractEventLoop]]] = [
        ("asyncio", asyncio.new_event_loop)]
    try:
        import uvloop
    except ImportError:
        print("(uvloop is not installed: asyncio's loop only)")
    else:
        loops.append(("uvloop", uvloop.new_event_loop))
    print("| workload | bingfa | peer | ratio | target |")
    print("|---|---:|---:|---:|---|")
    for name, factory in loops:
        compare(f"{args.sleeps:,} sleeps of 1 ms, 100 at once, {name}", factory,
                lambda: pool_sleeps(args.sleeps, 100),
                lambda: semaphore_gather(args.sleeps, 100), "Semaphore+gather", 1.1,
                args.repeats)
    for name, factory in loops:
        compare(f"{args.trivial:,} trivial coroutines, {name}", factory,
                lambda: pool_trivial(args.trivial), lambda: bare_gather(args.trivial),
                "bare gather", 1.3, args.repeats)


if __name__ == "__main__":
    main()
