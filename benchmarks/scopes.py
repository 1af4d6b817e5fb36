"""How fast a scope stops its other children after the first failure, against doing it by hand.

For each kind of sibling (a process, a command, a thread polling
``bf.cancelled()``), N scopes each start the sibling beside a thread that
fails; the time is from the failure to the end of the ``with`` block, when the
sibling is stopped and reaped (a process with its whole tree). The peers do
the same by hand, with the stdlib, in the same run: a
``multiprocessing.Process`` (forkserver, as bingfa's default) that the caller
``terminate()``s and ``join()``s, a ``subprocess.Popen`` it terminates and
waits for, and a ``threading.Thread`` it signals with an ``Event`` and joins.
(``concurrent.futures`` and ``multiprocessing.Pool`` have no way to stop a
running task at all.)

    python benchmarks/scopes.py [--scopes N]

Target: p95 under 100 ms for every kind.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import subprocess
import threading
import time

import bingfa as bf

TARGET_P95_MS = 100.0


def sleep_long() -> None:
    time.sleep(60)


def poll_cancelled() -> None:
    while not bf.cancelled():
        time.sleep(0.001)


def bingfa_stop(kind: str) -> float:
    """Seconds from the first failure to the end of the scope's block."""
    failed_at: list[float] = []

    def fail() -> None:
        failed_at.append(time.perf_counter())
        raise RuntimeError("first failure")

    try:
        with bf.scope() as s:
            if kind == "process":
                s.spawn(sleep_long, mode="process")
            elif kind == "command":
                s.run(["sleep", "60"])
            else:
                s.spawn(poll_cancelled)
            time.sleep(0.05)  # let the sibling get going (a benchmark, not a test)
            s.spawn(fail)
    except ExceptionGroup:
        pass
    return time.perf_counter() - failed_at[0]


def by_hand_stop(kind: str, context: multiprocessing.context.BaseContext) -> float:
    """The same with the stdlib: the caller notices the failure and stops the sibling."""
    if kind == "process":
        process = context.Process(target=sleep_long)
        process.start()
        time.sleep(0.05)
        failed = time.perf_counter()
        process.terminate()
        process.join()
    elif kind == "command":
        popen = subprocess.Popen(["sleep", "60"])
        time.sleep(0.05)
        failed = time.perf_counter()
        popen.terminate()
        popen.wait()
    else:
        stop = threading.Event()
        thread = threading.Thread(target=lambda: [time.sleep(0.001) for _ in
                                                  iter(stop.is_set, True)])
        thread.start()
        time.sleep(0.05)
        failed = time.perf_counter()
        stop.set()
        thread.join()
    return time.perf_counter() - failed


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scopes", type=int, default=200)
    args = parser.parse_args()
    context = multiprocessing.get_context("forkserver")
    print(f"{args.scopes} runs per kind, bingfa and by hand interleaved; time from the first "
          "failure until the sibling is stopped and reaped")
    print(f"  {'kind':8s} {'bingfa median':>14s} {'p95':>8s} {'by hand median':>15s} "
          f"{'p95':>8s}   target")
    for kind in ("process", "command", "thread"):
        ours: list[float] = []
        theirs: list[float] = []
        for _ in range(args.scopes):
            ours.append(bingfa_stop(kind) * 1000)
            theirs.append(by_hand_stop(kind, context) * 1000)
        p95 = percentile(ours, 0.95)
        verdict = "PASS" if p95 < TARGET_P95_MS else "FAIL"
        print(f"  {kind:8s} {statistics.median(ours):11.1f} ms {p95:5.1f} ms "
              f"{statistics.median(theirs):12.1f} ms {percentile(theirs, 0.95):5.1f} ms   "
              f"p95 < {TARGET_P95_MS:.0f} ms: {verdict}")


if __name__ == "__main__":
    main()
