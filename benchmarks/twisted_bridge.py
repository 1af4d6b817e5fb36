"""bingfa.integrations.twisted.defer_to_pool against Twisted's deferToThreadPool.

Both run a trivial function ``--tasks`` times on ``--threads`` threads (a
``bf.Pool(mode="thread")``; a started ``twisted.python.threadpool.ThreadPool``
of the same size), on a running reactor, two ways:

- **gathered**: every call issued, then all gathered with ``gatherResults``;
- **sequential**: one at a time, each awaited in an ``inlineCallbacks`` loop.

Two more columns tell where the time goes:

- **pool only**: ``deferToThreadPool``'s own recipe on the same bingfa pool
  (``pool.submit``, and one ``callFromThread`` per result; no cancelling), so
  bingfa over pool only is what the bridge itself costs;
- **floor**: what any implementation must pay here. Gathered: one
  ``reactor.callFromThread`` per call, from a thread that is running already,
  carrying a value computed already into a Deferred. Sequential: per call,
  one hand-over to a waiting thread (a bare lock; two threads taking turns)
  and one ``callFromThread`` back.

Each runs in turn, ``--repeats`` times, inside one reactor run: gathered
runs one after the other, sequential runs taking turns every 250 calls, so
that other programs' load, which comes and goes, falls on all alike. The
tables give medians per call and bingfa's time over Twisted's. Both reactors
are measured, each in a process of its own (a reactor cannot be restarted):
the default one (epoll) and the asyncio one.

    python benchmarks/twisted_bridge.py [--tasks N] [--threads N] [--repeats N]
                                        [--reactor default|asyncio|both]

Target (issue #14): defer_to_pool takes at most 1.2x deferToThreadPool's time,
gathered and sequential.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Generator
from typing import Any

TARGET = 1.2
KINDS = ["bingfa", "pool only", "twisted", "floor"]
WAYS = ["gathered", "sequential"]
BLOCK = 250  # sequential calls of one kind before the next kind's turn


def trivial(x: int) -> int:
    return x


def measure(reactor_name: str, tasks: int, threads: int, repeats: int) -> dict[str, list[float]]:
    """Run every kind and way ``repeats`` times on one reactor; seconds of each run."""
    if reactor_name == "asyncio":
        from twisted.internet import asyncioreactor

        asyncioreactor.install()
    from twisted.internet import defer
    from twisted.internet.threads import deferToThreadPool
    from twisted.python.threadpool import ThreadPool

    import bingfa as bf
    from bingfa.integrations.twisted import defer_to_pool

    times: dict[str, list[float]] = {}

    class Floor:
        """The least any implementation pays: threads already running, no task, no queue.

        Gathered: one thread carries every call's (already computed) value
        back with one ``callFromThread`` per call. Sequential: each call wakes
        a waiting thread through a bare lock (the cheapest hand-over there
        is), which answers with one ``callFromThread``; two threads take turns,
        because waking the thread that has just answered costs this machine
        about twice as much (a bingfa thread pool alternates the same way).
        """

        def __init__(self, reactor: Any) -> None:
            self.call = reactor.callFromThread
            self.lanes = [self._Lane(self.call), self._Lane(self.call)]
            self.turn = 0

        class _Lane:
            def __init__(self, call: Callable[..., Any]) -> None:
                self.call = call
                self.wakeup = threading.Lock()
                self.wakeup.acquire()
                self.handed: list[defer.Deferred[int]] | None = []
                self.thread = threading.Thread(target=self._run)
                self.thread.start()

            def _run(self) -> None:
                call = self.call
                while True:
                    self.wakeup.acquire()
                    handed = self.handed
                    if handed is None:
                        return
                    for d in handed:
                        call(d.callback, 0)

            def hand(self, ds: list[defer.Deferred[int]] | None) -> None:
                self.handed = ds
                self.wakeup.release()

        def submit_one(self) -> defer.Deferred[int]:
            d: defer.Deferred[int] = defer.Deferred()
            self.turn ^= 1
            self.lanes[self.turn].hand([d])
            return d

        def gathered(self, n: int) -> defer.Deferred[list[int]]:
            ds: list[defer.Deferred[int]] = [defer.Deferred() for _ in range(n)]
            self.lanes[0].hand(ds)
            return defer.gatherResults(ds)

        def close(self) -> None:
            for lane in self.lanes:
                lane.hand(None)
                lane.thread.join()

    def pool_only(pool: bf.Pool, reactor: Any, i: int) -> defer.Deferred[int]:
        """deferToThreadPool's own recipe on a bingfa pool: no cancelling, a wake-up per call."""
        d: defer.Deferred[int] = defer.Deferred()
        call = reactor.callFromThread
        pool.submit(trivial, i).add_done_callback(lambda f: call(d.callback, f.result()))
        return d

    @defer.inlineCallbacks
    def gathered(kinds: list[str], submitters: dict[str, Callable[[int], defer.Deferred[int]]],
                 floor: Floor) -> Generator[Any, Any, None]:
        """One run of each kind: every call issued, then all gathered."""
        for kind in kinds:
            start = time.perf_counter()
            if kind == "floor":
                results = yield floor.gathered(tasks)
            else:
                results = yield defer.gatherResults([submitters[kind](i) for i in range(tasks)])
            times.setdefault(f"gathered|{kind}", []).append(time.perf_counter() - start)
            assert len(results) == tasks

    @defer.inlineCallbacks
    def sequential(kinds: list[str],
                   submitters: dict[str, Callable[[int], defer.Deferred[int]]]
                   ) -> Generator[Any, Any, None]:
        """One run of each kind, one call at a time, the kinds taking turns by blocks.

        Other programs' load comes and goes within a second; taking turns
        every BLOCK calls spreads it evenly over the kinds.
        """
        spent = dict.fromkeys(kinds, 0.0)
        for first in range(0, tasks, BLOCK):
            for kind in kinds:
                submit = submitters[kind]
                start = time.perf_counter()
                for i in range(first, min(first + BLOCK, tasks)):
                    yield submit(i)
                spent[kind] += time.perf_counter() - start
        for kind in kinds:
            times.setdefault(f"sequential|{kind}", []).append(spent[kind])

    @defer.inlineCallbacks
    def main(reactor: Any) -> Generator[Any, Any, None]:
        twisted_pool = ThreadPool(threads, threads, "bench")
        twisted_pool.start()
        floor = Floor(reactor)
        try:
            with bf.Pool(threads, mode="thread") as pool:
                submitters: dict[str, Callable[[int], defer.Deferred[int]]] = {
                    "bingfa": lambda i: defer_to_pool(pool, trivial, i),
                    "twisted": lambda i: deferToThreadPool(reactor, twisted_pool, trivial, i),
                    "pool only": lambda i: pool_only(pool, reactor, i),
                    "floor": lambda i: floor.submit_one(),
                }
                for kind in ("bingfa", "twisted"):  # warm up: threads started, code paths hot
                    yield defer.gatherResults([submitters[kind](i) for i in range(1000)])
                for repeat in range(repeats):
                    turn = repeat % len(KINDS)
                    kinds = KINDS[turn:] + KINDS[:turn]  # each goes first in turn
                    yield gathered(kinds, submitters, floor)
                    yield sequential(kinds, submitters)
        finally:
            floor.close()
            twisted_pool.stop()

    from twisted.internet import reactor as the_reactor

    failures: list[Any] = []
    done = main(the_reactor)
    done.addErrback(failures.append)
    done.addBoth(lambda _: the_reactor.stop())
    the_reactor.run()
    if failures:
        failures[0].raiseException()
    return times


def report(reactor_name: str, times: dict[str, list[float]], tasks: int, threads: int,
           repeats: int) -> None:
    med = {key: statistics.median(values) for key, values in times.items()}
    print(f"\n{reactor_name} reactor: {tasks:,} calls, {threads} threads, "
          f"median of {repeats} interleaved runs; time per call")
    print(f"  {'way':11s}" + "".join(f"{k:>11s}" for k in KINDS)
          + f"   {'bingfa/twisted':>14s} (target <= {TARGET})  {'bingfa/floor':>12s} "
          f"{'twisted/floor':>13s}")
    for way in WAYS:
        per_call = [med[f"{way}|{k}"] / tasks * 1e6 for k in KINDS]
        ours, _, theirs, floor = per_call
        verdict = "ok" if ours / theirs <= TARGET else "MISSED"
        print(f"  {way:11s}" + "".join(f"{us:9.1f}us" for us in per_call)
              + f"   {ours / theirs:13.2f}x {verdict:>15s}   {ours / floor:11.2f}x "
              f"{theirs / floor:12.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--reactor", choices=["default", "asyncio", "both"], default="both")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # one reactor in this process; the times go back as JSON
        print(json.dumps(measure(args.reactor, args.tasks, args.threads, args.repeats)))
        return
    reactors = ["default", "asyncio"] if args.reactor == "both" else [args.reactor]
    for name in reactors:
        out = subprocess.run(
            [sys.executable, __file__, "--child", "--reactor", name, "--tasks", str(args.tasks),
             "--threads", str(args.threads), "--repeats", str(args.repeats)],
            check=True, capture_output=True, text=True)
        report(name, json.loads(out.stdout.strip().splitlines()[-1]), args.tasks, args.threads,
               args.repeats)


if __name__ == "__main__":
    main()
