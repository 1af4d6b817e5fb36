"""bingfa on a cluster against the cluster's own API, in one run (issue #15).

    python benchmarks/clusters.py                 # every section
    python benchmarks/clusters.py --only dask     # one section
    python benchmarks/clusters.py --repeat 5

Each section starts one cluster, runs every contender on it, interleaved
(contender A, B, C, then A, B, C again...), and prints the median time of
each and its ratio to the reference. A section is one function,
``<name>_section(args)``, listed in SECTIONS: a Ray section goes beside the
Dask one.

Workloads (from the issue):
  * 2,000 tasks of 10 ms (the task sleeps, so the figure measures the
    dispatch, not the CPU share the benchmark itself takes);
  * 20,000 trivial tasks: auto batching against one cluster task per item;
  * skewed durations: 400 sleeps, one in ten of 100 ms among 10 ms ones,
    sorted (the long ones last) and shuffled, with the floor (the work over
    the cluster's slots) beside them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

from _clusters_ray import nap, print_floor, ray_section, skewed_inputs

import bingfa as bf


def ten_ms(x: int) -> int:
    time.sleep(0.01)
    return x


def trivial(x: int) -> int:
    return x + 1


def _median_times(contenders: dict[str, Callable[[], object]], repeat: int,
                  check: Callable[[object], bool]) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeat):
        for name, run in contenders.items():  # interleaved: A B C, A B C, ...
            started = time.perf_counter()
            result = run()
            times[name].append(time.perf_counter() - started)
            assert check(result), name
    return {name: statistics.median(ts) for name, ts in times.items()}


def _table(title: str, medians: dict[str, float], reference: str) -> None:
    print(f"\n{title}")
    base = medians[reference]
    for name, seconds in medians.items():
        print(f"  {name:<44} {seconds:8.3f} s   {seconds / base:5.2f}x of {reference}")


def dask_section(args: argparse.Namespace) -> None:
    """bingfa mode="dask" against client.map/submit + gather and dask.bag, on one LocalCluster."""
    import dask.bag as db
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=args.dask_workers, threads_per_worker=args.dask_threads,
                      processes=True, dashboard_address=None, host="127.0.0.1") as cluster, \
            Client(cluster) as client, \
            bf.Pool(mode="dask", client=client) as pool:
        client.wait_for_workers(args.dask_workers)
        print(f"dask: {args.dask_workers} workers x {args.dask_threads} threads, "
              f"bingfa workers={pool.workers}, repeat={args.repeat}")
        pool.map(trivial, range(100))  # warm up every contender's code path once
        client.gather(client.map(trivial, range(100)))

        n = 2_000
        slow = list(range(n))
        _table(f"{n:,} tasks of 10 ms", _median_times({
            "client.map + client.gather": lambda: client.gather(
                client.map(ten_ms, slow, pure=False)),
            "bingfa Pool(mode='dask').map": lambda: pool.map(ten_ms, slow),
            "dask.bag.map(...).compute()": lambda: db.from_sequence(
                slow, npartitions=4 * args.dask_workers * args.dask_threads).map(
                    ten_ms).compute(),
        }, args.repeat, lambda r: r == slow), "client.map + client.gather")

        m = 20_000
        tiny = list(range(m))
        expected = [x + 1 for x in tiny]
        _table(f"{m:,} trivial tasks", _median_times({
            "client.submit per task + client.gather": lambda: client.gather(
                [client.submit(trivial, x, pure=False) for x in tiny]),
            "client.map + client.gather": lambda: client.gather(
                client.map(trivial, tiny, pure=False)),
            "bingfa Pool(mode='dask').map": lambda: pool.map(trivial, tiny),
            "dask.bag.map(...).compute()": lambda: db.from_sequence(
                tiny, npartitions=4 * args.dask_workers * args.dask_threads).map(
                    trivial).compute(),
        }, args.repeat, lambda r: r == expected), "client.submit per task + client.gather")

        slots = args.dask_workers * args.dask_threads
        for order, durations in skewed_inputs().items():
            _table(f"{len(durations)} skewed sleeps (1 in 10 of 100 ms), {order}", _median_times({
                "client.map + client.gather": lambda d=durations: client.gather(
                    client.map(nap, d, pure=False)),
                "bingfa Pool(mode='dask').map": lambda d=durations: pool.map(nap, d),
                "dask.bag.map(...).compute()": lambda d=durations: db.from_sequence(
                    d, npartitions=4 * slots).map(nap).compute(),
            }, args.repeat, lambda r, d=durations: r == d), "client.map + client.gather")
            print_floor(durations, slots)


SECTIONS: dict[str, Callable[[argparse.Namespace], None]] = {"dask": dask_section,
                                                           "ray": ray_section}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=sorted(SECTIONS), action="append",
                        help="run only this section (repeatable)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per contender (median)")
    parser.add_argument("--dask-workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--dask-threads", type=int, default=2)
    parser.add_argument("--ray-cpus", type=int, default=None, help="CPUs of the local Ray")
    args = parser.parse_args()
    for name in args.only or list(SECTIONS):
        SECTIONS[name](args)


if __name__ == "__main__":  # Dask's LocalCluster starts its workers with spawn
    main()
