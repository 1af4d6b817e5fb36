"""bf.Pool(mode="gevent") against gevent.pool.Pool, in a monkey-patched interpreter.

Every workload runs each implementation in turn, ``--repeats`` times
interleaved, and prints medians and ratios:

- **sleeps**: ``--tasks`` tasks of ``gevent.sleep(0.001)`` on 100 greenlets,
  ``pool.map``. Timed twice: a fresh pool each time (make it, map, close it),
  and a warm pool that already ran the same map once.
- **tiny**: ``--tasks`` trivial calls (``abs``), ``pool.map`` on a warm pool
  of 100 greenlets; the floor is the builtin ``list(map(abs, items))``.
- **submits**: ``--tasks`` trivial ``submit`` calls then every result
  (gevent: ``pool.spawn`` and ``.get()``), on a warm pool. For information.

    python benchmarks/gevent_mode.py [--tasks N] [--repeats N]

Target (issue #14): the sleeps map takes at most 1.1x the time of
``gevent.pool.Pool(100).map``.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402 - after patch_all, as every gevent program does
import gc  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import gevent  # noqa: E402
import gevent.pool  # noqa: E402

import bingfa as bf  # noqa: E402

WORKERS = 100
TARGET = 1.1


def nap(x: int) -> int:
    gevent.sleep(0.001)
    return x


def timed(fn: Callable[[], object]) -> float:
    gc.collect()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def fresh_bingfa(items: list[int]) -> None:
    with bf.Pool(WORKERS, mode="gevent") as pool:
        assert pool.map(nap, items) == items


def fresh_gevent(items: list[int]) -> None:
    pool = gevent.pool.Pool(WORKERS)
    assert pool.map(nap, items) == items
    pool.join()


def submits_bingfa(pool: bf.Pool, items: list[int]) -> None:
    futures = [pool.submit(abs, i) for i in items]
    assert [f.result() for f in futures] == items


def submits_gevent(pool: gevent.pool.Pool, items: list[int]) -> None:
    greenlets = [pool.spawn(abs, i) for i in items]
    assert [g.get() for g in greenlets] == items


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    items = list(range(args.tasks))

    ours = bf.Pool(WORKERS, mode="gevent")
    theirs = gevent.pool.Pool(WORKERS)
    ours.map(nap, items)  # warm: workers started, the task time measured
    theirs.map(nap, items)
    times: dict[str, list[float]] = {}

    def record(key: str, fn: Callable[[], object]) -> None:
        times.setdefault(key, []).append(timed(fn))

    for _ in range(args.repeats):
        record("sleeps fresh|bingfa", lambda: fresh_bingfa(items))
        record("sleeps fresh|gevent", lambda: fresh_gevent(items))
        record("sleeps warm|bingfa", lambda: ours.map(nap, items))
        record("sleeps warm|gevent", lambda: theirs.map(nap, items))
        record("tiny|bingfa", lambda: ours.map(abs, items))
        record("tiny|gevent", lambda: theirs.map(abs, items))
        record("tiny|floor", lambda: list(map(abs, items)))
        record("submits|bingfa", lambda: submits_bingfa(ours, items))
        record("submits|gevent", lambda: submits_gevent(theirs, items))
    ours.shutdown()
    theirs.join()

    med = {key: statistics.median(values) for key, values in times.items()}
    print(f"median of {args.repeats} interleaved runs; {args.tasks:,} tasks, "
          f"{WORKERS} greenlets")
    print(f"\n{'workload':34s} {'bingfa':>10s} {'gevent':>10s} {'ratio':>7s}  target")
    for workload, label, target in [
        ("sleeps fresh", "gevent.sleep(0.001), fresh pool", f"<= {TARGET}x"),
        ("sleeps warm", "gevent.sleep(0.001), warm pool", f"<= {TARGET}x"),
        ("tiny", "abs, map", "(info)"),
        ("submits", "abs, submit + result", "(info)"),
    ]:
        a, b = med[f"{workload}|bingfa"], med[f"{workload}|gevent"]
        verdict = "" if target == "(info)" else ("  met" if a / b <= TARGET else "  MISSED")
        print(f"{label:34s} {a * 1e3:8.1f}ms {b * 1e3:8.1f}ms {a / b:6.2f}x  {target}{verdict}")
    floor = med["tiny|floor"]
    print(f"\ntiny floor, list(map(abs, items)): {floor * 1e3:.2f} ms; bingfa's map takes "
          f"{med['tiny|bingfa'] / floor:.1f}x the floor, "
          f"gevent's {med['tiny|gevent'] / floor:.1f}x")


if __name__ == "__main__":
    main()
