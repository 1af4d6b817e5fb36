"""Benchmark ``bf.Pool(mode="auto")`` against the best fixed mode, workload by workload.

Each workload is one ``pool.map(fn, items)``, timed as a user pays for it: from
``bf.Pool(mode=m)`` through the map to the end of the ``with`` block (the pool's
start and shutdown included), with the library's default workers for every mode.
The modes are "thread" and "process" (the fixed modes), "auto", and a serial list
comprehension for reference (not a fixed mode: it never counts as the best).

Workloads (per-task durations are calibrated on this machine before the run):

  cpu       100 pure-Python arithmetic tasks of ~10 ms (holds the GIL)
  numpy     100 tasks of ~10 ms of ufuncs on a module-level array (releases the GIL)
  hashlib   100 tasks hashing a module-level 1 MiB buffer with sha256, ~10 ms each
  zlib      100 tasks compressing a module-level 256 KiB text, ~10 ms each
  sleep     200 tasks of ``time.sleep(0.01)``
  socket    300 requests, one a task, to a local TCP server (127.0.0.1, a port of
            its own) that answers each after 5 ms; the server runs on an asyncio
            loop in a thread of this process
  tiny      ``x*x`` over 1,000,000 ints
  large     64 numpy arrays of 8 MiB (made before timing) through ``sqrt(a*a + 1)``: 8 MiB
            back for each
  mixed     60 pure-Python tasks of 1-30 ms, in a seeded random order
  alloc     100 tasks of ~10 ms that build and drop lists of small dicts and strings
  closure   600 tasks of ~1 ms of lookups in a 200,000-entry dict that a closure
            made at run time carries: processes must pickle it by value to each
            worker, threads share it
  one       a one-task map: one ~200 ms pure-Python task

For each workload, every repeat runs each mode once, in an order that rotates from
repeat to repeat (so drift hits all modes alike); medians are reported. auto's ratio
is its median over the best fixed mode's. The summary checks the issue's targets:
auto within 10% of the best fixed mode on average over the workloads, and never
worse than 1.2x the best on any one. The exit code is 0 either way.

``--verdicts`` adds a section that runs the fixed modes of each workload at
``--quick`` sizing and at full sizing, and counts the workloads whose winner is
the same at both. ``--busy N`` runs N busy-loop processes (``while True: pass``)
beside the whole run. ``--quick`` runs about a third of the tasks of each
workload (a third of the one task's duration), 2 repeats unless ``--repeats``
says otherwise. Every pool's map has a deadline (``--timeout``): one that passes
it is reported and its pool terminated.

The script runs as the module ``auto`` (it imports itself under that name), so
process workers import the task functions by name, as they would a user's library
code; only the closure of ``closure`` travels by value.

Usage, from the repository root::

    python benchmarks/auto.py [--repeats N] [--only cpu,numpy,...] [--quick]
                              [--busy N] [--verdicts] [--timeout S] [--json FILE]
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import random
import socket
import statistics
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import bingfa as bf
from bingfa.bench._report import TIE

if TYPE_CHECKING:
    import argparse

MODES = ("serial", "thread", "process", "auto")
FIXED = ("thread", "process")  # the modes auto is measured against

TASK_SECONDS = 0.01  # the usual task
CPU_TASKS = 100
NUMPY_TASKS = 100
NUMPY_ELEMENTS = 1 << 18  # float64: a 2 MiB module-level array
HASH_TASKS = 100
HASH_BYTES = 1 << 20
ZLIB_TASKS = 100
ZLIB_BYTES = 256 << 10
SLEEP_TASKS = 200
SLEEP_SECONDS = 0.01
SOCKET_TASKS = 300
SOCKET_DELAY = 0.005  # seconds the server waits before it answers
TINY_ITEMS = 1_000_000
ARRAYS = 64
ARRAY_MIB = 8
MIXED_TASKS = 60
MIXED_SECONDS = (0.001, 0.030)
ALLOC_TASKS = 100
CLOSURE_TASKS = 600
CLOSURE_TASK_SECONDS = 0.001
CLOSURE_ENTRIES = 200_000
ONE_TASK_SECONDS = 0.2

QUICK_SCALE = 1 / 3  # --quick: this share of each workload's tasks
QUICK_REPEATS = 2
REPEATS = 5
RUN_TIMEOUT = 120.0  # s one map may take (--timeout)
MIB = 1 << 20

# Targets from the issue.
TARGET_MEAN_RATIO = 1.10
TARGET_WORST_RATIO = 1.20


# --- the tasks (module level: process workers import them by name) --------------------
def spin(n: int) -> int:
    """n rounds of a small integer recurrence: pure Python, holds the GIL."""
    x = 0
    for i in range(n):
        x = (x * 31 + i) % 1_000_003
    return x


def churn(n: int) -> int:
    """Build and drop n batches of small records (dicts in lists, formatted strings)."""
    kept = 0
    for i in range(n):
        rows = [{"id": j, "name": f"item-{i}-{j}", "tags": [str(j), "new"]} for j in range(20)]
        kept += sum(len(row) for row in rows)
    return kept


@functools.cache
def _signal() -> Any:
    import numpy as np

    return np.linspace(0.0, 100.0, NUMPY_ELEMENTS)


def wave(n: int) -> float:
    """n rounds of ufuncs over a module-level array (numpy lets the GIL go)."""
    import numpy as np

    a = _signal()
    total = 0.0
    for k in range(1, n + 1):
        total += float(np.cos(np.sin(a * k)).sum())
    return round(total, 6)


@functools.cache
def _blob() -> bytes:
    return bytes(range(256)) * (HASH_BYTES // 256)


def digest(n: int) -> str:
    """sha256 over a module-level 1 MiB buffer, n times (hashlib lets the GIL go)."""
    data = _blob()
    last = b""
    for _ in range(n):
        h = hashlib.sha256(last)
        h.update(data)
        last = h.digest()
    return last.hex()


@functools.cache
def _text() -> bytes:
    """ZLIB_BYTES of text-like data: seeded random words from a small vocabulary."""
    rng = random.Random(1)
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    vocabulary = ["".join(rng.choices(letters, k=rng.randint(2, 9))) for _ in range(600)]
    words: list[str] = []
    size = 0
    while size < ZLIB_BYTES:
        word = rng.choice(vocabulary)
        words.append(word)
        size += len(word) + 1
    return " ".join(words).encode()[:ZLIB_BYTES]


def squeeze(n: int) -> int:
    """zlib.compress of a module-level 256 KiB text, n times (zlib lets the GIL go)."""
    data = _text()
    size = 0
    for _ in range(n):
        size = len(zlib.compress(data, 6))
    return size


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def ask(job: tuple[int, int]) -> int:
    """One request to the local server at port ``job[0]``: it answers twice ``job[1]``."""
    port, i = job
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn, \
            conn.makefile("rb") as replies:
        conn.sendall(b"%d\n" % i)
        return int(replies.readline())


def square(x: int) -> int:
    return x * x


def bump(a: Any) -> Any:
    """A few milliseconds of numpy on the array, and an array as big back: the
    harshest payload for processes (8 MiB to copy each way)."""
    import numpy as np

    return np.sqrt(a * a + 1.0)


def make_lookup(table: dict[str, int], probes: int) -> Callable[[int], int]:
    """A closure over ``table``: it cannot go by name, so it goes by value, table and all."""
    size = len(table)

    def lookup(start: int) -> int:
        total = 0
        for k in range(start, start + probes):
            total += table[f"k{k % size}"]
        return total

    return lookup


# --- calibration -----------------------------------------------------------------------
KERNELS: dict[str, Callable[[int], Any]] = {
    "spin": spin, "churn": churn, "wave": wave, "digest": digest, "squeeze": squeeze}
CALIBRATION_SECONDS = 0.02  # a timed try lasts at least this long


def _per_unit(fn: Callable[[int], Any]) -> float:
    """Seconds one unit of ``fn``'s work takes here: the fastest of a few tries."""
    n = 1
    fn(n)  # warm up (module-level data, imports)
    while True:
        started = time.perf_counter()
        fn(n)
        if time.perf_counter() - started >= CALIBRATION_SECONDS:
            break
        n *= 2
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        fn(n)
        best = min(best, time.perf_counter() - started)
    return best / n


@functools.cache
def units(kernel: str, seconds: float) -> int:
    """Units of ``kernel`` that take about ``seconds`` on this machine (at least one)."""
    return max(1, round(seconds / _per_unit(KERNELS[kernel])))


@functools.cache
def lookup_probes(seconds: float) -> int:
    """Lookups of ``make_lookup`` that take about ``seconds``."""
    table = {f"k{i}": i for i in range(1000)}
    return max(1, round(seconds / _per_unit(lambda n: make_lookup(table, n)(0))))


# --- the workloads -------------------------------------------------------------------
Task = tuple[Callable[[Any], Any], list[Any]]


def _count(n: int, scale: float) -> int:
    return max(1, round(n * scale))


@contextlib.contextmanager
def _cpu(scale: float) -> Iterator[Task]:
    yield spin, [units("spin", TASK_SECONDS)] * _count(CPU_TASKS, scale)


@contextlib.contextmanager
def _numpy(scale: float) -> Iterator[Task]:
    yield wave, [units("wave", TASK_SECONDS)] * _count(NUMPY_TASKS, scale)


@contextlib.contextmanager
def _hashlib(scale: float) -> Iterator[Task]:
    yield digest, [units("digest", TASK_SECONDS)] * _count(HASH_TASKS, scale)


@contextlib.contextmanager
def _zlib(scale: float) -> Iterator[Task]:
    yield squeeze, [units("squeeze", TASK_SECONDS)] * _count(ZLIB_TASKS, scale)


@contextlib.contextmanager
def _sleep(scale: float) -> Iterator[Task]:
    yield nap, [SLEEP_SECONDS] * _count(SLEEP_TASKS, scale)


@contextlib.contextmanager
def reply_server(delay: float) -> Iterator[int]:
    """A TCP server on 127.0.0.1 (its port yielded) answering each line after ``delay``.

    It runs on an asyncio loop in a thread of this process; stopped on the way out.
    """
    import asyncio
    import threading

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            await asyncio.sleep(delay)
            writer.write(b"%d\n" % (2 * int(line)))
            await writer.drain()
        except (OSError, ValueError):
            pass
        finally:
            writer.close()

    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(
        asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024))
    port = server.sockets[0].getsockname()[1]
    thread = threading.Thread(target=loop.run_forever, name="reply-server", daemon=True)
    thread.start()
    try:
        yield port
    finally:
        async def stop() -> None:
            server.close()
            await server.wait_closed()

        try:
            asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            if not thread.is_alive():
                loop.close()


@contextlib.contextmanager
def _socket(scale: float) -> Iterator[Task]:
    with reply_server(SOCKET_DELAY) as port:
        yield ask, [(port, i) for i in range(_count(SOCKET_TASKS, scale))]


@contextlib.contextmanager
def _tiny(scale: float) -> Iterator[Task]:
    yield square, list(range(_count(TINY_ITEMS, scale)))


@contextlib.contextmanager
def _large(scale: float) -> Iterator[Task]:
    import numpy as np

    yield bump, [np.full(ARRAY_MIB * MIB // 8, float(i))
                 for i in range(_count(ARRAYS, scale))]


@contextlib.contextmanager
def _mixed(scale: float) -> Iterator[Task]:
    rng = random.Random(9)
    per_second = units("spin", 1.0)
    low, high = MIXED_SECONDS
    yield spin, [round(rng.uniform(low, high) * per_second)
                 for _ in range(_count(MIXED_TASKS, scale))]


@contextlib.contextmanager
def _alloc(scale: float) -> Iterator[Task]:
    yield churn, [units("churn", TASK_SECONDS)] * _count(ALLOC_TASKS, scale)


@contextlib.contextmanager
def _closure(scale: float) -> Iterator[Task]:
    table = {f"k{i}": i * 7 % 1009 for i in range(CLOSURE_ENTRIES)}
    lookup = make_lookup(table, lookup_probes(CLOSURE_TASK_SECONDS))
    yield lookup, [i * 997 for i in range(_count(CLOSURE_TASKS, scale))]


@contextlib.contextmanager
def _one(scale: float) -> Iterator[Task]:
    yield spin, [units("spin", ONE_TASK_SECONDS * scale)]


@dataclass(frozen=True)
class Workload:
    name: str
    about: str
    prepare: Callable[[float], contextlib.AbstractContextManager[Task]]


WORKLOADS = [
    Workload("cpu", "pure-Python tasks of ~10 ms", _cpu),
    Workload("numpy", "numpy ufunc tasks of ~10 ms", _numpy),
    Workload("hashlib", "sha256 over 1 MiB, ~10 ms a task", _hashlib),
    Workload("zlib", "zlib.compress of 256 KiB, ~10 ms a task", _zlib),
    Workload("sleep", "time.sleep(0.01) a task", _sleep),
    Workload("socket", "a request to a local server a task (5 ms)", _socket),
    Workload("tiny", "x*x over ints", _tiny),
    Workload("large", "8 MiB arrays through sqrt(a*a + 1)", _large),
    Workload("mixed", "pure-Python tasks of 1-30 ms", _mixed),
    Workload("alloc", "tasks building small objects, ~10 ms", _alloc),
    Workload("closure", "~1 ms lookups in a closure's 200,000-entry dict", _closure),
    Workload("one", "one pure-Python task of ~200 ms", _one),
]
BY_NAME = {w.name: w for w in WORKLOADS}


# --- measuring -----------------------------------------------------------------------
@dataclass
class Mode:
    """One mode's runs of one workload."""

    seconds: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    chose: list[str] = field(default_factory=list)  # auto only: pool.mode after the map
    why: list[str] = field(default_factory=list)  # auto only: pool.why

    @property
    def median(self) -> float | None:
        return statistics.median(self.seconds) if self.seconds else None

    def to_json(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "median": self.median, "failures": self.failures,
                "chose": self.chose, "why": self.why}


@dataclass
class Result:
    """One workload's figures."""

    name: str
    about: str
    tasks: int
    modes: dict[str, Mode]

    def best(self, among: tuple[str, ...] = FIXED) -> str | None:
        """The fixed mode with the lowest median (None if none finished)."""
        done = [(m.median, name) for name, m in self.modes.items()
                if name in among and m.median is not None]
        return min(done)[1] if done else None

    @property
    def ratio(self) -> float | None:
        best, auto = self.best(), self.modes.get("auto")
        if best is None or auto is None or auto.median is None:
            return None
        return auto.median / self.modes[best].median  # type: ignore[operator]

    def to_json(self) -> dict[str, Any]:
        return {"about": self.about, "tasks": self.tasks, "best": self.best(),
                "ratio": self.ratio,
                "modes": {name: m.to_json() for name, m in self.modes.items()}}


def _fingerprint(results: list[Any]) -> list[Any]:
    """What to compare between modes: the results, arrays by shape and first value."""
    return [(r.shape, float(r.flat[0])) if hasattr(r, "shape") else r for r in results]


def _run(mode: str, fn: Callable[[Any], Any], items: list[Any],
         timeout: float) -> tuple[float, list[Any], str | None, str | None]:
    """Seconds of one map in ``mode``, pool start and shutdown included; results; auto's choice."""
    if mode == "serial":
        started = time.perf_counter()
        results = [fn(x) for x in items]
        return time.perf_counter() - started, results, None, None
    started = time.perf_counter()
    with bf.Pool(mode=mode) as pool:
        results = pool.map(fn, items, timeout=timeout)
        chose, why = pool.mode, getattr(pool, "why", None)
    return time.perf_counter() - started, results, chose, why


def measure(workload: Workload, modes: tuple[str, ...], scale: float, repeats: int,
            timeout: float) -> Result:
    """Run ``modes`` on ``workload``, ``repeats`` times each, interleaved in rotating order."""
    import gc

    with workload.prepare(scale) as (fn, items):
        result = Result(workload.name, workload.about, len(items),
                        {mode: Mode() for mode in modes})
        expected: list[Any] | None = None
        for repeat in range(repeats):
            shift = repeat % len(modes)
            for mode in modes[shift:] + modes[:shift]:
                figures = result.modes[mode]
                gc.collect()
                try:
                    seconds, results, chose, why = _run(mode, fn, items, timeout)
                except TimeoutError:
                    figures.failures.append(f"no result within the {timeout:g} s deadline")
                    print(f"    {workload.name} {mode}: passed its {timeout:g} s deadline",
                          flush=True)
                    continue
                except Exception as e:
                    figures.failures.append(f"{type(e).__name__}: {e}")
                    print(f"    {workload.name} {mode}: failed: {type(e).__name__}: {e}",
                          flush=True)
                    continue
                got = _fingerprint(results)
                del results
                if expected is None:
                    expected = got
                elif got != expected:
                    figures.failures.append("results differ from the other modes'")
                    print(f"    {workload.name} {mode}: results differ from the other modes'",
                          flush=True)
                    continue
                figures.seconds.append(seconds)
                if chose is not None and mode == "auto":
                    figures.chose.append(chose)
                    figures.why.append(why or "")
        return result


# --- reporting -----------------------------------------------------------------------
def _s(seconds: float | None) -> str:
    return "    -   " if seconds is None else f"{seconds:8.3f}"


def _choice(auto: Mode) -> str:
    """auto's most common choice over the repeats (with its count when they differ)."""
    if not auto.chose:
        return "-"
    (mode, n), = Counter(auto.chose).most_common(1)
    return mode if n == len(auto.chose) else f"{mode} {n}/{len(auto.chose)}"


def _why(auto: Mode) -> str:
    if not auto.chose:
        return ""
    mode, _ = Counter(auto.chose).most_common(1)[0]
    return auto.why[auto.chose.index(mode)]


def print_workload(result: Result) -> None:
    best = result.best()
    print(f"\n{result.name}: {result.tasks:,} {'task' if result.tasks == 1 else 'tasks'}, "
          f"{result.about}", flush=True)
    for name, m in result.modes.items():
        note = ""
        if name == best:
            note = "best fixed mode"
        elif name == "auto" and result.ratio is not None:
            note = f"{result.ratio:5.2f}x of best, chose {_choice(m)}: {_why(m)}"
        elif name == "serial":
            note = "(reference)"
        failed = f"  [{len(m.failures)} failed: {m.failures[0]}]" if m.failures else ""
        print(f"  {name:<8} {_s(m.median)} s   {note}{failed}", flush=True)


def print_summary(results: list[Result]) -> tuple[float | None, float | None]:
    print("\nSummary (median seconds; pool start and shutdown included)")
    print(f"  {'workload':<9} {'serial':>8} {'thread':>8} {'process':>8} {'auto':>8}  "
          f"{'best':<8} {'auto/best':>9}  auto chose")
    ratios = []
    for r in results:
        ratio = r.ratio
        if ratio is not None:
            ratios.append(ratio)
        print(f"  {r.name:<9} "
              + " ".join(_s(r.modes[m].median if m in r.modes else None) for m in MODES)
              + f"  {r.best() or '-':<8} "
              + (f"{ratio:8.2f}x" if ratio is not None else f"{'-':>9}")
              + f"  {_choice(r.modes['auto'])}")
    if not ratios:
        print("  no ratios: auto or every fixed mode failed")
        return None, None
    mean, worst = statistics.fmean(ratios), max(ratios)
    worst_name = next(r.name for r in results if r.ratio == worst)
    print(f"\n  auto/best over {len(ratios)} workloads: mean {mean:.3f}x, "
          f"worst {worst:.3f}x ({worst_name})")
    print(f"  {'PASS' if mean <= TARGET_MEAN_RATIO else 'MISS'}: mean ratio {mean:.3f} "
          f"(target <= {TARGET_MEAN_RATIO:.2f})")
    print(f"  {'PASS' if worst <= TARGET_WORST_RATIO else 'MISS'}: worst ratio {worst:.3f} "
          f"(target <= {TARGET_WORST_RATIO:.2f})")
    if len(ratios) < len(WORKLOADS):
        print(f"  (the targets are for all {len(WORKLOADS)} workloads; "
              f"this run has {len(ratios)})")
    for r in results:
        for mode, m in r.modes.items():
            if m.failures:
                print(f"  note: {r.name} {mode} failed {len(m.failures)} of "
                      f"{len(m.failures) + len(m.seconds)} runs: {m.failures[0]}")
    return mean, worst


def verdicts(names: list[str], repeats: int, timeout: float) -> list[dict[str, Any]]:
    """The winning fixed mode of each workload at --quick sizing and at full sizing.

    They agree when the quick run's winner is as good as the full run's there
    (within ``bingfa bench``'s tie of 10%), as ``bingfa bench`` words its verdicts.
    """
    print(f"\nVerdict agreement: the best fixed mode at --quick sizing ({QUICK_SCALE:.2f} of "
          f"the tasks) and at full sizing, {repeats} repeats each")
    print(f"  {'workload':<9} {'quick thread':>12} {'process':>8} {'full thread':>12} "
          f"{'process':>8}  {'quick':<8} {'full':<8} agree")
    rows: list[dict[str, Any]] = []
    agreed = 0
    for name in names:
        quick = measure(BY_NAME[name], FIXED, QUICK_SCALE, repeats, timeout)
        full = measure(BY_NAME[name], FIXED, 1.0, repeats, timeout)
        q, f = quick.best(), full.best()
        # bingfa bench's rule: a mode within TIE of the fastest is as good,
        # so a quick run that picks it agrees with the full run.
        agree = q is not None and f is not None and (
            full.modes[q].median <= full.modes[f].median * (1 + TIE))
        agreed += agree
        rows.append({"workload": name, "quick": quick.to_json(), "full": full.to_json(),
                     "quick_best": q, "full_best": f, "agree": agree})
        print(f"  {name:<9} {_s(quick.modes['thread'].median):>12} "
              f"{_s(quick.modes['process'].median)} {_s(full.modes['thread'].median):>12} "
              f"{_s(full.modes['process'].median)}  {q or '-':<8} {f or '-':<8} "
              f"{'yes' if agree else 'NO'}", flush=True)
    print(f"  {agreed} of {len(rows)} agree")
    return rows


# --- the run -------------------------------------------------------------------------
@contextlib.contextmanager
def busy_loops(n: int) -> Iterator[None]:
    """``n`` processes spinning ``while True: pass`` beside the block, killed after."""
    import subprocess

    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(n):
            procs.append(subprocess.Popen([sys.executable, "-c", "while True: pass"]))
        yield
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _load() -> str:
    try:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def _machine() -> dict[str, Any]:
    import platform

    try:
        import numpy as np

        numpy_version: str | None = np.__version__
    except ImportError:
        numpy_version = None
    return {"cores": os.cpu_count(), "usable_cores": _cores(),
            "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "platform": platform.platform(), "bingfa": bf.__version__,
            "numpy": numpy_version}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=None,
                        help=f"runs of each mode per workload (default {REPEATS}, "
                             f"{QUICK_REPEATS} with --quick)")
    parser.add_argument("--only", default="",
                        help="comma-separated workloads: " + ",".join(BY_NAME))
    parser.add_argument("--quick", action="store_true",
                        help="about a third of each workload's tasks, fewer repeats")
    parser.add_argument("--busy", type=int, default=0, metavar="N",
                        help="run N busy-loop processes beside the whole run")
    parser.add_argument("--verdicts", action="store_true",
                        help="also compare the best fixed mode at --quick and full sizing")
    parser.add_argument("--timeout", type=float, default=RUN_TIMEOUT,
                        help=f"seconds one map may take (default {RUN_TIMEOUT:g})")
    parser.add_argument("--json", metavar="FILE", help="write every figure to FILE")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(BY_NAME)
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        parser.error(f"unknown workload(s) {', '.join(unknown)}; "
                     f"choose among {', '.join(BY_NAME)}")
    args.names = names
    if args.repeats is None:
        args.repeats = QUICK_REPEATS if args.quick else REPEATS
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    scale = QUICK_SCALE if args.quick else 1.0
    machine = _machine()
    print(f"machine: {machine['cores']} cores ({machine['usable_cores']} usable), "
          f"{machine['implementation']} {machine['python']}, {machine['platform']}")
    print(f"bingfa {machine['bingfa']}, numpy {machine['numpy']}")
    print(f"load average {_load()} (other work on the machine skews the figures)")
    print(f"repeats {args.repeats}, {'quick' if args.quick else 'full'} sizing, "
          f"busy loops {args.busy}, deadline {args.timeout:g} s a map")

    started = time.perf_counter()
    # Calibrate task sizes on an idle machine, before any busy loop starts.
    calibration = {kernel: units(kernel, TASK_SECONDS) for kernel in KERNELS}
    calibration["lookup"] = lookup_probes(CLOSURE_TASK_SECONDS)
    print("calibrated units for ~10 ms: "
          + ", ".join(f"{k} {v:,}" for k, v in calibration.items() if k != "lookup")
          + f"; lookups for ~1 ms: {calibration['lookup']:,}", flush=True)

    results: list[Result] = []
    agreement: list[dict[str, Any]] = []
    summary: tuple[float | None, float | None] = (None, None)
    with busy_loops(args.busy):
        # Start the process machinery once (the zygote that forks workers boots a fresh
        # interpreter on first use): a cost of the first process pool of a program, not
        # of any one workload.
        workers: dict[str, int] = {}
        for mode in FIXED:
            with bf.Pool(mode=mode) as pool:
                pool.map(square, range(4))
                workers[mode] = pool.workers
        machine["workers"] = workers
        print("default workers: " + ", ".join(f"{m} {n}" for m, n in workers.items()),
              flush=True)
        for name in args.names:
            result = measure(BY_NAME[name], MODES, scale, args.repeats, args.timeout)
            results.append(result)
            print_workload(result)
        summary = print_summary(results)
        if args.verdicts:
            agreement = verdicts(args.names, args.repeats, args.timeout)
    print(f"\ntotal {time.perf_counter() - started:.0f} s; load average now {_load()}")

    if args.json:
        import json

        mean, worst = summary
        with open(args.json, "w") as f:
            json.dump({"machine": machine,
                       "settings": {"repeats": args.repeats, "quick": args.quick,
                                    "scale": scale, "busy": args.busy,
                                    "timeout": args.timeout, "only": args.names},
                       "calibration": calibration,
                       "workloads": {r.name: r.to_json() for r in results},
                       "summary": {"mean_ratio": mean, "worst_ratio": worst,
                                   "target_mean": TARGET_MEAN_RATIO,
                                   "target_worst": TARGET_WORST_RATIO,
                                   "mean_pass": mean is not None
                                   and mean <= TARGET_MEAN_RATIO,
                                   "worst_pass": worst is not None
                                   and worst <= TARGET_WORST_RATIO},
                       "verdicts": agreement}, f, indent=2)
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    # Run as the module ``auto`` rather than ``__main__``: process workers then import
    # the task functions by name (this directory is on their sys.path, as on ours).
    import importlib

    here = os.path.dirname(os.path.abspath(__file__))
    if here not in sys.path:
        sys.path.insert(0, here)
    this = importlib.import_module(os.path.splitext(os.path.basename(__file__))[0])
    try:
        sys.exit(this.main())
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
