"""bf.Process start + result() against multiprocessing.Process start + join, and bare os.fork.

Each row starts a child that returns a small value and waits for it, N times,
interleaved with its peers: with the default start method (bingfa's zygote
against multiprocessing's forkserver), with fork (both), and a floor: os.fork
with a pipe for the value and waitpid. Medians of the per-child time.

    python benchmarks/handles.py [--children N] [--repeats N]

Targets: at most 1.2x multiprocessing with the same start method; with fork,
at most 1.5x the bare os.fork.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import pickle
import statistics
import time
from collections.abc import Callable

import bingfa as bf


def answer() -> int:
    return 42


def mp_child(queue: multiprocessing.SimpleQueue) -> None:  # type: ignore[type-arg]
    queue.put(answer())


def run_bingfa(method: str | None) -> Callable[[], None]:
    def once() -> None:
        p = bf.Process(answer, start_method=method)
        p.start()
        assert p.result() == 42
    return once


def run_mp(method: str) -> Callable[[], None]:
    context = multiprocessing.get_context(method)

    def once() -> None:
        queue = context.SimpleQueue()
        p = context.Process(target=mp_child, args=(queue,))
        p.start()
        assert queue.get() == 42
        p.join()
        queue.close()
    return once


def bare_fork() -> None:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.write(w, pickle.dumps(answer()))
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as fh:
        assert pickle.loads(fh.read()) == 42
    os.waitpid(pid, 0)


def per_child(fn: Callable[[], None], children: int) -> float:
    start = time.perf_counter()
    for _ in range(children):
        fn()
    return (time.perf_counter() - start) / children


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--children", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    rows = {
        "bingfa Process (default: zygote)": run_bingfa(None),
        "multiprocessing.Process (forkserver)": run_mp("forkserver"),
        "bingfa Process (fork)": run_bingfa("fork"),
        "multiprocessing.Process (fork)": run_mp("fork"),
        "os.fork + pipe + waitpid": bare_fork,
    }
    for fn in rows.values():
        per_child(fn, 3)  # warm-up: the zygote and the forkserver started
    times: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(args.repeats):
        for name, fn in rows.items():
            times[name].append(per_child(fn, args.children))
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    print(f"start a child, get its value, wait for its end; {args.children} children per run, "
          f"medians of {args.repeats} interleaved runs")
    for name, median in medians.items():
        print(f"  {name:38s} {median * 1e3:7.2f} ms per child")
    pairs = [
        ("bingfa Process (default: zygote)", "multiprocessing.Process (forkserver)", 1.2),
        ("bingfa Process (fork)", "multiprocessing.Process (fork)", 1.2),
        ("bingfa Process (fork)", "os.fork + pipe + waitpid", 1.5),
    ]
    for ours, theirs, target in pairs:
        ratio = medians[ours] / medians[theirs]
        verdict = "PASS" if ratio <= target else "FAIL"
        print(f"  target: {ours} <= {target}x {theirs}: {ratio:.2f}x {verdict}")


if __name__ == "__main__":
    main()
