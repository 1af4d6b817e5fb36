"""bf.Lock and bf.Value against multiprocessing's Lock and Value.

Two measurements, interleaved with their peers, medians of ``--repeats`` runs:

- **balance** (the seed's lock example): 2 processes each make ``--increments``
  locked increments of one shared integer (``lock.acquire(); v.value += 1;
  lock.release()``); the total must come out exact. The time is from the
  first process starting its loop to the last finishing it. Peers:
  ``multiprocessing.Lock`` with ``multiprocessing.Value`` (its default, which
  takes a lock of its own on every read and write) and with
  ``Value(lock=False)`` (the fastest correct use); the ratio is against the
  faster of the two.
- **uncontended**: one thread, ``acquire(); release()`` and ``with lock:``,
  nanoseconds per pair; threading.Lock is shown for scale.

    python benchmarks/sync.py [--increments N] [--repeats N]

Targets: balance at most 1.5x multiprocessing; uncontended at most 1.5x
multiprocessing.Lock.

Two floors are printed beside them, because neither target can be reached by
a lock written in Python that records its holder:

- **floor lock**: a Python class whose ``acquire`` and ``release`` do only
  what any lock that survives a dead holder must do, one semaphore operation
  and one write of the holder word each, with nothing else;
- **serial**: one process making all 2 x ``--increments`` increments alone. On
  a busy host the two balance processes rarely run at once (each holds a core
  for whole time slices), so the balance time tends to this.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import threading
import time
import timeit
from typing import Any

import bingfa as bf

FORK = multiprocessing.get_context("fork")


def locked_increments(lock: Any, value: Any, n: int) -> None:
    """The seed's loop: n increments of a shared integer, each under the lock."""
    for _ in range(n):
        lock.acquire()
        try:
            value.value += 1
        finally:
            lock.release()


def increments(lock: Any, value: Any, n: int, go: Any, out: Any) -> None:
    go.wait()
    start = time.perf_counter()
    locked_increments(lock, value, n)
    out.put((start, time.perf_counter()))


def balance(make: Any, n: int) -> float:
    """Seconds for 2 processes x n locked increments; checks the total."""
    lock, value = make()
    go, out = FORK.Event(), FORK.SimpleQueue()
    procs = [FORK.Process(target=increments, args=(lock, value, n, go, out)) for _ in range(2)]
    for p in procs:
        p.start()
    go.set()
    spans = [out.get() for _ in procs]
    for p in procs:
        p.join()
    assert value.value == 2 * n, (value.value, 2 * n)
    return max(end for _, end in spans) - min(start for start, _ in spans)


BALANCE = {
    "bingfa Lock + Value": lambda: (bf.Lock(), bf.Value("q", 0)),
    "mp Lock + Value": lambda: (FORK.Lock(), FORK.Value("q", 0)),
    "mp Lock + Value(lock=False)": lambda: (FORK.Lock(), FORK.Value("q", 0, lock=False)),
}


class FloorLock:
    """The least a Python lock that records its holder can do per acquire and release."""

    __slots__ = ("_keep", "_sem", "_words")

    def __init__(self) -> None:
        lock = bf.Lock()
        self._sem, self._words = lock._sem, lock._words
        self._keep = lock

    def acquire(self) -> bool:
        if self._sem.acquire(False):
            self._words[0] = 1
            return True
        raise AssertionError("the floor lock is measured uncontended only")

    def release(self) -> None:
        self._words[0] = 0
        self._sem.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def serial(make: Any, n: int) -> float:
    """Seconds for one process alone making n locked increments."""
    lock, value = make()
    start = time.perf_counter()
    locked_increments(lock, value, n)
    return time.perf_counter() - start


def uncontended(lock: Any, with_statement: bool, number: int = 200_000) -> float:
    """Nanoseconds per acquire + release (best of 5 batches)."""
    stmt = "with lock: pass" if with_statement else "acquire(); release()"
    names = {"lock": lock, "acquire": lock.acquire, "release": lock.release}
    return min(timeit.repeat(stmt, globals=names, number=number, repeat=5)) / number * 1e9


LOCKS = {
    "bingfa Lock": bf.Lock,
    "mp Lock": FORK.Lock,
    "bingfa RLock": bf.RLock,
    "mp RLock": FORK.RLock,
    "threading.Lock": threading.Lock,
    "floor lock": FloorLock,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--increments", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    times: dict[str, list[float]] = {name: [] for name in BALANCE}
    alone: dict[str, list[float]] = {name: [] for name in BALANCE}
    pairs: dict[str, list[float]] = {f"{name}, {form}": [] for name in LOCKS
                                     for form in ("acquire/release", "with")}
    locks = {name: make() for name, make in LOCKS.items()}
    for _ in range(args.repeats):
        for name, make in BALANCE.items():
            times[name].append(balance(make, args.increments))
            alone[name].append(serial(make, 2 * args.increments))
        for name, lock in locks.items():
            pairs[f"{name}, acquire/release"].append(uncontended(lock, False))
            pairs[f"{name}, with"].append(uncontended(lock, True))

    print(f"balance: 2 processes x {args.increments:,} locked increments, "
          f"median of {args.repeats}")
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    best_mp = min(medians["mp Lock + Value"], medians["mp Lock + Value(lock=False)"])
    for name, median in medians.items():
        print(f"  {name:30s} {median * 1e3:8.1f} ms   {median / best_mp:5.2f}x best mp")
    print("  serial (one process, all increments; the busy-host floor)")
    serials = {name: statistics.median(ts) for name, ts in alone.items()}
    best_serial = min(serials["mp Lock + Value"], serials["mp Lock + Value(lock=False)"])
    for name, median in serials.items():
        print(f"  {name:30s} {median * 1e3:8.1f} ms   {median / best_serial:5.2f}x best mp")

    print("uncontended acquire + release, one thread, ns per pair (best of 5 x 200k)")
    for form in ("acquire/release", "with"):
        for kind in ("Lock", "RLock"):
            ours = statistics.median(pairs[f"bingfa {kind}, {form}"])
            theirs = statistics.median(pairs[f"mp {kind}, {form}"])
            print(f"  {kind:5s} {form:15s} bingfa {ours:6.0f}   mp {theirs:6.0f}   "
                  f"{ours / theirs:5.2f}x mp")
        plain = statistics.median(pairs[f"threading.Lock, {form}"])
        print(f"  threading.Lock {form:15s} {plain:6.0f} (for scale)")
        floor = statistics.median(pairs[f"floor lock, {form}"])
        mp_lock = statistics.median(pairs[f"mp Lock, {form}"])
        print(f"  floor lock     {form:15s} {floor:6.0f}   {floor / mp_lock:5.2f}x mp "
              "(semaphore + holder word, nothing else)")


if __name__ == "__main__":
    main()
