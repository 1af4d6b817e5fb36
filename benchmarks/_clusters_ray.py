"""The Ray section of benchmarks/clusters.py: bingfa mode="ray" against Ray's own APIs.

    python benchmarks/clusters.py --only ray          # from clusters.py
    python benchmarks/_clusters_ray.py [--repeat 5] [--busy 2] [--ray-cpus N]

One local Ray (``ray.init``, usage statistics off, no dashboard) serves every
contender; a bingfa pool made while Ray is initialised uses that Ray. The
contenders run interleaved (A, B, C, then A, B, C again...) and each one's
median is printed with its ratio to the reference (and its fastest and slowest run):

  * 2,000 tasks of 10 ms (they sleep: the figure measures dispatch, not the
    CPU share the benchmark takes): ``f.remote`` per task + ``ray.get``
    (reference), the floor (one Ray task per CPU running a plain loop over its
    share), bingfa ``Pool(mode="ray").map``, ``ray.util.multiprocessing.Pool.map``;
  * 20,000 trivial tasks: ``f.remote`` per task + ``ray.get`` (reference),
    bingfa's auto batching, ``ray.util.multiprocessing.Pool.map``;
  * skewed durations: 400 sleeps, one in ten of 100 ms among 10 ms ones, sorted
    (the long ones last, as inputs sorted by size come) and shuffled, against
    Ray's Pool (reference), whose chunks are dealt out round-robin before they
    run (ray#29453); the floor (the work over the CPUs) is printed beside them.

``--busy N`` runs N busy loops (``while True: pass``) beside the section,
ended by their process ids afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import bingfa as bf


def ten_ms(x: int) -> int:
    time.sleep(0.01)
    return x


def trivial(x: int) -> int:
    return x + 1


def ten_ms_each(xs: list[int]) -> list[int]:
    """A plain loop over a chunk: the floor's Ray task."""
    return [ten_ms(x) for x in xs]


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


SKEWED_TASKS = 400


def skewed_inputs(n: int = SKEWED_TASKS) -> dict[str, list[float]]:
    """``n`` sleeps, one in ten of 100 ms among 10 ms ones: sorted (long ones last) and shuffled."""
    durations = sorted(0.1 if i % 10 == 9 else 0.01 for i in range(n))
    shuffled = list(durations)
    random.Random(15).shuffle(shuffled)
    return {"sorted": durations, "shuffled": shuffled}


def print_floor(durations: list[float], slots: int) -> None:
    """The least any scheduler could take: the work spread evenly over ``slots``."""
    print(f"  {'the floor (work / ' + str(slots) + ' slots)':<44} "
          f"{sum(durations) / slots:8.3f} s", flush=True)


def _times(contenders: dict[str, Callable[[], object]], repeat: int,
           check: Callable[[object], bool]) -> dict[str, list[float]]:
    """Each contender's running times, the contenders interleaved."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeat):
        for name, run in contenders.items():  # interleaved
            started = time.perf_counter()
            result = run()
            times[name].append(time.perf_counter() - started)
            assert check(result), name
    return times


def _print_table(title: str, times: dict[str, list[float]], reference: str) -> None:
    """Medians, their ratio to ``reference``'s, and the fastest and slowest run."""
    print(f"\n{title}")
    base = statistics.median(times[reference])
    for name, runs in times.items():
        seconds = statistics.median(runs)
        print(f"  {name:<44} {seconds:8.3f} s   {seconds / base:6.3f}x of {reference}"
              f"   ({min(runs):.3f} to {max(runs):.3f})", flush=True)


@contextlib.contextmanager
def busy_loops(n: int) -> Iterator[None]:
    """``n`` processes spinning ``while True: pass`` beside the block, killed by pid after."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def ray_section(args: argparse.Namespace) -> None:
    """bingfa mode="ray" against f.remote + ray.get and ray.util.multiprocessing.Pool."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray.util.multiprocessing import Pool as RayPool

    repeat = getattr(args, "repeat", 3)
    cpus = getattr(args, "ray_cpus", None) or len(os.sched_getaffinity(0))
    busy = getattr(args, "busy", 0) or 0
    per_task = not getattr(args, "no_per_task", False)
    temp_dir = tempfile.mkdtemp(prefix="bench-ray-")
    ray.init(num_cpus=cpus, include_dashboard=False, logging_level="ERROR",
             _temp_dir=temp_dir)
    remote_ten_ms = ray.remote(max_retries=0)(ten_ms)
    remote_trivial = ray.remote(max_retries=0)(trivial)
    remote_nap = ray.remote(max_retries=0)(nap)
    remote_chunk = ray.remote(max_retries=0)(ten_ms_each)
    try:
        with bf.Pool(mode="ray") as pool, RayPool(cpus) as ray_pool, busy_loops(busy):
            print(f"ray {ray.__version__}: local, {cpus} CPUs, bingfa workers={pool.workers}, "
                  f"repeat={repeat}, busy loops beside: {busy}")
            # warm up every contender's code path once
            pool.map(trivial, range(100))
            ray.get([remote_trivial.remote(x) for x in range(100)])
            ray_pool.map(trivial, range(100))
            ray.get([remote_ten_ms.remote(x) for x in range(20)])
            ray.get(remote_chunk.remote([0]))

            n = 2_000
            slow = list(range(n))
            per_cpu = -(-n // cpus)
            contenders = {
                "f.remote per task + ray.get": lambda: ray.get(
                    [remote_ten_ms.remote(x) for x in slow]),
                # the least any implementation does here: no task boundary
                "the floor: one plain Ray task per CPU": lambda: [
                    y for chunk in ray.get([remote_chunk.remote(slow[i:i + per_cpu])
                                            for i in range(0, n, per_cpu)]) for y in chunk],
                "bingfa Pool(mode='ray').map": lambda: pool.map(ten_ms, slow),
                "ray.util.multiprocessing.Pool.map": lambda: ray_pool.map(ten_ms, slow),
            }
            _print_table(f"{n:,} tasks of 10 ms", _times(
                _maybe_per_task(contenders, per_task), repeat, lambda r: r == slow),
                _reference(per_task))

            m = 20_000
            tiny = list(range(m))
            expected = [x + 1 for x in tiny]
            contenders = {
                "f.remote per task + ray.get": lambda: ray.get(
                    [remote_trivial.remote(x) for x in tiny]),
                "bingfa Pool(mode='ray').map": lambda: pool.map(trivial, tiny),
                "ray.util.multiprocessing.Pool.map": lambda: ray_pool.map(trivial, tiny),
            }
            _print_table(f"{m:,} trivial tasks", _times(
                _maybe_per_task(contenders, per_task), repeat, lambda r: r == expected),
                _reference(per_task))

            for order, durations in skewed_inputs().items():
                contenders = {
                    "ray.util.multiprocessing.Pool.map": lambda d=durations: ray_pool.map(nap, d),
                    "bingfa Pool(mode='ray').map": lambda d=durations: pool.map(nap, d),
                    "f.remote per task + ray.get": lambda d=durations: ray.get(
                        [remote_nap.remote(x) for x in d]),
                }
                _print_table(
                    f"{len(durations)} skewed sleeps (1 in 10 of 100 ms), {order}",
                    _times(_maybe_per_task(contenders, per_task), repeat,
                             lambda r, d=durations: r == d),
                    "ray.util.multiprocessing.Pool.map")
                print_floor(durations, cpus)
    finally:
        ray.shutdown()
        import shutil

        shutil.rmtree(temp_dir, ignore_errors=True)


def _maybe_per_task(contenders: dict[str, Callable[[], Any]],
                    per_task: bool) -> dict[str, Callable[[], Any]]:
    """``contenders`` without the per-task reference when it is left out (--no-per-task)."""
    return {name: run for name, run in contenders.items() if per_task or "per task" not in name}


def _reference(per_task: bool) -> str:
    return "f.remote per task + ray.get" if per_task else "ray.util.multiprocessing.Pool.map"


def _arguments(argv: list[str] | None = None) -> Any:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per contender (median)")
    parser.add_argument("--busy", type=int, default=0, help="busy loops beside the run")
    parser.add_argument("--ray-cpus", type=int, default=None, help="CPUs of the local Ray")
    parser.add_argument("--no-per-task", action="store_true",
                        help="leave out f.remote per task (minutes beside busy loops)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    ray_section(_arguments())
