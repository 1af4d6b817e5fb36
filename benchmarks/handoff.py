"""What waking another thread costs on this machine, with and without a spare CPU.

Two threads pass a baton back and forth through a pair of locks, the way a
thread that reads an RPC answer wakes the thread waiting for it. Every hand-off
is one futex wake-up and one GIL hand-over. It runs twice, in child processes:
free to use every CPU (the scheduler wakes the other thread on an idle CPU,
which a virtual machine has halted), and pinned to one CPU (the woken thread
waits for the one that woke it, on the same CPU).

This is the cost that bounds scenario B of ``benchmarks/rpc.py``: when many
threads share one connection, each answer needs one such hand-off.

Run::

    python benchmarks/handoff.py [--handoffs 100000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time


def handoffs_per_second(count: int) -> float:
    """Hand a baton between two threads ``count`` times; hand-offs per second."""
    ping, pong = threading.Lock(), threading.Lock()
    ping.acquire()
    pong.acquire()
    rounds = count // 2

    def other() -> None:
        for _ in range(rounds):
            pong.acquire()
            ping.release()

    thread = threading.Thread(target=other)
    thread.start()
    start = time.perf_counter()
    for _ in range(rounds):
        pong.release()
        ping.acquire()
    thread.join()
    return 2 * rounds / (time.perf_counter() - start)


def measure_in_child(count: int, one_cpu: bool) -> float:
    command = [sys.executable, __file__, "--child", str(count)]
    if one_cpu:
        command.append("--one-cpu")
    return float(subprocess.run(command, capture_output=True, text=True, check=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--handoffs", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--one-cpu", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.one_cpu:
            os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        print(handoffs_per_second(args.child))
        return

    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    runs: dict[str, list[float]] = {"any CPU": [], "one CPU": []}
    for _ in range(args.repeats):  # interleaved, so noise hits both alike
        runs["any CPU"].append(measure_in_child(args.handoffs, one_cpu=False))
        runs["one CPU"].append(measure_in_child(args.handoffs, one_cpu=True))
    print(f"{'threads on':10}  {'hand-offs/s':>11}  {'µs each':>8}  min..max hand-offs/s")
    for label, rates in runs.items():
        rate = statistics.median(rates)
        print(f"{label:10}  {rate:11,.0f}  {1e6 / rate:8.1f}  "
              f"{min(rates):,.0f}..{max(rates):,.0f}")
    ratio = statistics.median(runs["one CPU"]) / statistics.median(runs["any CPU"])
    print(f"a hand-off within one CPU is {ratio:.1f}x as fast as one across CPUs")


if __name__ == "__main__":
    main()
