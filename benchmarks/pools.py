"""Benchmark bingfa's process pool against its peers, side by side, in one run.

Workloads (process pools with 2 workers, each library's default start method):

  a  ``x*x`` over 200,000 ints on a warm pool, default chunking for everyone
  b  ~1 ms pure-Python tasks over 2,000 ints: parallel efficiency against a serial loop
  c  submit one trivial task and wait for its result, 2,000 times: round-trip latency

Each measurement is repeated (``--repeats``, default 7) and the median is reported
with the minimum beside it; the peers that map with chunksize 1 in (a) are slow
(tens of seconds a run) and get ``--slow-repeats`` (default 3) on the same
200,000 items. A summary at the end checks bingfa's performance targets;
it is informational and the exit code is 0 either way.

Usage, from the repository root::

    python benchmarks/pools.py [--repeats N] [--slow-repeats N] [--only a,b,c] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from importlib import metadata
from typing import Any

import psutil

import bingfa as bf

WORKERS = 2
MAP_ITEMS = 200_000  # workload (a)
SLOW_WARMUP_ITEMS = 2_000  # warm-up map for the chunksize-1 peers in (a)
CPU_ITEMS = 2_000  # workload (b)
TASK_SECONDS = 1e-3  # workload (b): target duration of one task
ROUND_TRIPS = 2_000  # workload (c)
ROUND_TRIP_WARMUP = 100
LEAK_GRACE = 3.0  # seconds a pool's processes get to exit after its shutdown returns

# Targets from the issue.
TARGET_MAP_VS_MP = 0.8
TARGET_MAP_X_FASTER = 10.0
TARGET_EFFICIENCY = 0.95
TARGET_ROUND_TRIP_VS_MP = 0.7

# Long-lived helper processes that multiprocessing and loky keep until the
# interpreter exits; they are not pool workers and do not count as leaks.
HELPER_MARKERS = ("forkserver", "resource_tracker", "semaphore_tracker")


# --- the tasks (module level, so every library can pickle them by reference) --------
def sq(x: int) -> int:
    return x * x


def noop(x: Any) -> Any:
    return x


def burn(n: int) -> int:
    """Pure-Python CPU work: about ``n`` loop iterations."""
    total = 0
    for i in range(n):
        total += i * i
    return total


# --- results -----------------------------------------------------------------------------
@dataclass
class Result:
    """The timings of one implementation on one workload (seconds)."""

    name: str
    start_method: str = "?"
    times: list[float] = field(default_factory=list)
    warmup: float | None = None  # seconds the untimed warm-up took
    note: str = ""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.times)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def min(self) -> float:
        return min(self.times)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["median"] = self.median if self.ok else None
        data["min"] = self.min if self.ok else None
        return data


@dataclass
class Report:
    """Everything a run measured, for the tables, the summary and ``--json``."""

    machine: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    a: list[Result] = field(default_factory=list)
    b: list[Result] = field(default_factory=list)
    b_calibration: dict[str, float] = field(default_factory=dict)
    c: list[Result] = field(default_factory=list)
    anomalies: list[str] = field(default_factory=list)
    targets: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "settings": self.settings,
            "a_map_sq": [r.to_json() for r in self.a],
            "b_cpu_efficiency": {
                "calibration": self.b_calibration,
                "results": [r.to_json() for r in self.b],
                "efficiency_from_medians": {
                    r.name: _efficiency(self.b, r) for r in self.b[1:] if r.ok},
                "efficiency_from_mins": {
                    r.name: _efficiency(self.b, r, best=True) for r in self.b[1:] if r.ok},
            },
            "c_round_trip_seconds": [r.to_json() for r in self.c],
            "targets": self.targets,
            "anomalies": self.anomalies,
        }


def log(msg: str) -> None:
    """Progress, on stderr so that stdout holds just the report."""
    print(msg, file=sys.stderr, flush=True)


# --- the implementations ----------------------------------------------------------------
MapCall = Callable[[Any, Callable[[int], int], list[int]], list[int]]
RoundTrip = Callable[[Any], Any]


@dataclass
class Impl:
    """One library's process pool: how to open it, map with it and round-trip through it."""

    key: str
    open: Callable[[], contextlib.AbstractContextManager[Any]]
    start_method: Callable[[Any], str]
    map_label: str
    map: MapCall | None
    rt_label: str
    round_trip: RoundTrip | None
    slow_map: bool = False  # maps with chunksize 1: gets --slow-repeats in (a)
    note: str = ""
    rt_note: str = ""


def _method_of(ctx: Any) -> str:
    try:
        return str(ctx.get_start_method())
    except Exception:
        return "?"


# bingfa
@contextlib.contextmanager
def _open_bingfa() -> Iterator[bf.Pool]:
    with bf.Pool(WORKERS, mode="process") as pool:
        yield pool


def _bingfa_method(pool: bf.Pool) -> str:
    method = getattr(getattr(pool, "_engine", None), "_method", None)
    return str(method) if method else "?"


# multiprocessing.Pool
@contextlib.contextmanager
def _open_mp() -> Iterator[Any]:
    pool = multiprocessing.Pool(WORKERS)
    try:
        yield pool
    except BaseException:
        pool.terminate()
        raise
    else:
        pool.close()
    finally:
        pool.join()


# concurrent.futures.ProcessPoolExecutor
@contextlib.contextmanager
def _open_ppe() -> Iterator[Any]:
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(WORKERS) as ex:
        yield ex


# pebble
@contextlib.contextmanager
def _open_pebble() -> Iterator[Any]:
    from pebble import ProcessPool

    pool = ProcessPool(max_workers=WORKERS)
    try:
        yield pool
    except BaseException:
        pool.stop()
        raise
    else:
        pool.close()
    finally:
        pool.join()


# mpire
def _mpire_keep_alive() -> bool:
    from mpire import WorkerPool

    return "keep_alive" in inspect.signature(WorkerPool).parameters


@contextlib.contextmanager
def _open_mpire() -> Iterator[Any]:
    from mpire import WorkerPool

    kwargs: dict[str, Any] = {"keep_alive": True} if _mpire_keep_alive() else {}
    with WorkerPool(n_jobs=WORKERS, **kwargs) as pool:
        yield pool
    # WorkerPool.__exit__ terminates the workers.


def _mpire_round_trip(pool: Any) -> Any:
    return pool.apply_async(noop, (1,)).get()


# joblib
@contextlib.contextmanager
def _open_joblib() -> Iterator[Any]:
    from joblib import Parallel

    try:
        with Parallel(n_jobs=WORKERS) as par:
            yield par
    finally:
        # Parallel leaves its loky executor alive for reuse; stop its workers now.
        from joblib.externals.loky import get_reusable_executor

        get_reusable_executor(max_workers=WORKERS).shutdown(wait=True)


def _joblib_map(par: Any, fn: Callable[[int], int], items: list[int]) -> list[int]:
    from joblib import delayed

    return list(par(delayed(fn)(x) for x in items))


def _joblib_method(par: Any) -> str:
    workers = getattr(getattr(par, "_backend", None), "_workers", None)
    ctx = getattr(workers, "_context", None)
    return _method_of(ctx) if ctx is not None else "loky"


# loky
@contextlib.contextmanager
def _open_loky() -> Iterator[Any]:
    from loky import get_reusable_executor

    ex = get_reusable_executor(max_workers=WORKERS)
    try:
        yield ex
    finally:
        ex.shutdown(wait=True)


def _loky_map(ex: Any, fn: Callable[[int], int], items: list[int]) -> list[int]:
    return list(ex.map(fn, items))


IMPLS: list[Impl] = [
    Impl("bingfa", _open_bingfa, _bingfa_method,
         "bingfa Pool.map (chunksize='auto')",
         lambda p, fn, items: p.map(fn, items),
         "bingfa submit().result()",
         lambda p: p.submit(noop, 1).result()),
    Impl("multiprocessing", _open_mp, lambda p: _method_of(p._ctx),
         "multiprocessing.Pool.map (default chunksize)",
         lambda p, fn, items: p.map(fn, items),
         "multiprocessing.Pool apply_async().get()",
         lambda p: p.apply_async(noop, (1,)).get()),
    Impl("concurrent.futures", _open_ppe, lambda ex: _method_of(ex._mp_context),
         "ProcessPoolExecutor.map (chunksize=1)",
         lambda ex, fn, items: list(ex.map(fn, items)),
         "ProcessPoolExecutor submit().result()",
         lambda ex: ex.submit(noop, 1).result(),
         slow_map=True),
    Impl("pebble", _open_pebble, lambda _: _method_of(multiprocessing),
         "pebble ProcessPool.map (chunksize=1)",
         lambda p, fn, items: list(p.map(fn, items).result()),
         "pebble schedule().result()",
         lambda p: p.schedule(noop, args=(1,)).result(),
         slow_map=True),
    Impl("mpire", _open_mpire, lambda p: _method_of(getattr(p, "ctx", None)),
         "mpire WorkerPool.map (default chunking)",
         lambda p, fn, items: list(p.map(fn, items)),
         "mpire apply_async().get()",
         _mpire_round_trip),
    Impl("joblib", _open_joblib, _joblib_method,
         "joblib Parallel (batch_size='auto')",
         _joblib_map,
         "joblib", None,
         rt_note="joblib: no submit/round-trip API; not applicable to (c)."),
    Impl("loky", _open_loky, lambda ex: _method_of(getattr(ex, "_context", None)),
         "loky reusable executor .map (chunksize=1)",
         _loky_map,
         "loky submit().result()",
         lambda ex: ex.submit(noop, 1).result(),
         slow_map=True),
]


# --- process hygiene --------------------------------------------------------------------
def _describe(proc: psutil.Process) -> tuple[str, bool]:
    """A short description of a process, and whether it is a zombie."""
    try:
        if proc.status() == psutil.STATUS_ZOMBIE:
            return f"pid {proc.pid} (zombie)", True
        cmd = " ".join(proc.cmdline())
    except psutil.NoSuchProcess:
        return f"pid {proc.pid} (gone)", False
    except psutil.Error:
        return f"pid {proc.pid}", False
    return f"pid {proc.pid}: {cmd[:120]}", False


def _is_helper(proc: psutil.Process) -> bool:
    try:
        cmd = " ".join(proc.cmdline())
    except psutil.Error:
        return False
    return any(marker in cmd for marker in HELPER_MARKERS)


def _strays() -> list[psutil.Process]:
    """Descendants of this process that are not multiprocessing/loky helper processes."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if not proc.is_running():
                continue
        except psutil.Error:
            continue
        if not _is_helper(proc):
            found.append(proc)
    return found


def check_processes(label: str, report: Report) -> None:
    """Record the processes still around ``LEAK_GRACE`` seconds after a pool shut down."""
    deadline = time.monotonic() + LEAK_GRACE
    strays = _strays()
    while strays and time.monotonic() < deadline:
        time.sleep(0.05)
        strays = _strays()
    if strays:
        described = ", ".join(_describe(p)[0] for p in strays)
        report.anomalies.append(
            f"{label}: {len(strays)} process(es) still present {LEAK_GRACE:.0f} s "
            f"after the pool was shut down: {described}")


# --- measuring --------------------------------------------------------------------------
def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip()[:300]


Warm = Callable[[Impl, Any], None]
TimedRun = Callable[[Impl, Any, int], float]  # (impl, handle, repeat index) -> seconds


def measure_group(group: list[Impl], labels: list[str], repeats: int, warm: Warm,
                  run: TimedRun, workload: str, report: Report) -> list[Result]:
    """Open every pool in ``group`` (in order), warm each, then time them in turns.

    With more than one pool the runs are interleaved repeat by repeat (and the
    order rotates), so a slow spell on a noisy machine hits them alike and
    their ratio stays honest. Errors are recorded, not raised.
    """
    results = [Result(label, note=impl.note) for impl, label in zip(group, labels, strict=True)]
    t_start = time.perf_counter()
    try:
        with contextlib.ExitStack() as stack:
            live: list[tuple[Impl, Result, Any]] = []
            for impl, result in zip(group, results, strict=True):
                try:
                    handle = stack.enter_context(impl.open())
                    t0 = time.perf_counter()
                    warm(impl, handle)
                    result.warmup = time.perf_counter() - t0
                    result.start_method = impl.start_method(handle)
                    live.append((impl, result, handle))
                except Exception as exc:
                    result.error = _error_text(exc)
            for i in range(repeats):
                for k in range(len(live)):
                    impl, result, handle = live[(i + k) % len(live)]
                    if result.error is not None:
                        continue
                    try:
                        result.times.append(run(impl, handle, i))
                    except Exception as exc:
                        result.error = _error_text(exc)
                if repeats > 1 and any(r.times and statistics.median(r.times) > 1
                                       for _, r, _ in live):
                    log(f"    repeat {i + 1}/{repeats}: " + ", ".join(
                        f"{r.name.split()[0]} {fmt_time(r.times[-1])}"
                        for _, r, _ in live if len(r.times) == i + 1))
    except Exception as exc:  # a pool that failed to shut down
        text = _error_text(exc)
        for result in results:
            if result.error is None:
                result.error = f"on shutdown: {text}"
    for result in results:
        if result.error is not None:
            report.anomalies.append(f"({workload}) {result.name}: {result.error}")
    check_processes(f"({workload}) " + " + ".join(r.name for r in results), report)
    elapsed = time.perf_counter() - t_start
    for result in results:
        warmup = f"; warm-up {fmt_time(result.warmup)}" if result.warmup is not None else ""
        log(f"  {result.name}: {_progress(result)}{warmup}")
    log(f"    ({elapsed:.1f} s with setup, warm-up and shutdown)")
    return results


def map_ops(fn: Callable[[int], int], items: list[int], warm_items: list[int],
            expected: list[int]) -> tuple[Warm, TimedRun]:
    """Warm-up and timed run of ``impl.map(fn, items)``, checking the results."""
    warm_expected = expected[:len(warm_items)] if warm_items == items[:len(warm_items)] \
        else [fn(x) for x in warm_items]

    def warm(impl: Impl, handle: Any) -> None:
        assert impl.map is not None
        if impl.map(handle, fn, warm_items) != warm_expected:
            raise AssertionError("wrong results in the warm-up map")

    def run(impl: Impl, handle: Any, i: int) -> float:
        assert impl.map is not None
        t0 = time.perf_counter()
        out = impl.map(handle, fn, items)
        elapsed = time.perf_counter() - t0
        if out != expected:
            raise AssertionError(f"wrong results in timed run {i + 1}")
        return elapsed

    return warm, run


def _rt_warm(impl: Impl, handle: Any) -> None:
    assert impl.round_trip is not None
    for _ in range(ROUND_TRIP_WARMUP):
        impl.round_trip(handle)


def _rt_run(impl: Impl, handle: Any, i: int) -> float:
    """Mean seconds of one submit-and-wait of ``noop(1)``, over ``ROUND_TRIPS`` of them."""
    round_trip = impl.round_trip
    assert round_trip is not None
    value = None
    t0 = time.perf_counter()
    for _ in range(ROUND_TRIPS):
        value = round_trip(handle)
    elapsed = time.perf_counter() - t0
    if value != 1:
        raise AssertionError(f"round trip returned {value!r}, not 1")
    return elapsed / ROUND_TRIPS


def calibrate(target: float) -> tuple[int, float]:
    """Iterations of :func:`burn` that take about ``target`` seconds here, and one call's time.

    Uses the fastest of several samples: on a noisy machine a slow sample only
    means the CPU was taken away for a while.
    """
    n = 10_000
    while True:
        t0 = time.perf_counter()
        burn(n)
        if time.perf_counter() - t0 >= 0.05:
            break
        n *= 2
    samples = []
    for _ in range(7):
        t0 = time.perf_counter()
        burn(n)
        samples.append((time.perf_counter() - t0) / n)
    iterations = max(1, round(target / min(samples)))
    per_call = []
    for _ in range(7):
        t0 = time.perf_counter()
        for _ in range(50):
            burn(iterations)
        per_call.append((time.perf_counter() - t0) / 50)
    return iterations, min(per_call)


def _paired(impls: dict[str, Impl]) -> list[Impl]:
    """bingfa and multiprocessing.Pool, to be timed interleaved.

    multiprocessing forks its workers, so its pool is opened first: its
    workers then do not inherit the pipes of bingfa's pool.
    """
    return [impls[k] for k in ("multiprocessing", "bingfa") if k in impls]


def _in_table_order(results: dict[str, Result], impls: dict[str, Impl]) -> list[Result]:
    return [results[k] for k in impls if k in results]


def run_a(impls: dict[str, Impl], repeats: int, slow_repeats: int, report: Report) -> None:
    xs = list(range(MAP_ITEMS))
    expected = [sq(x) for x in xs]
    results: dict[str, Result] = {}
    paired = _paired(impls)
    paired_keys = {i.key for i in paired}
    if paired:
        warm, run = map_ops(sq, xs, xs, expected)
        measured = measure_group(paired, [i.map_label for i in paired], repeats, warm, run,
                                 "a", report)
        results.update((i.key, r) for i, r in zip(paired, measured, strict=True))
    for impl in impls.values():
        if impl.map is None or impl.key in paired_keys:
            continue
        if impl.slow_map:
            log(f"  {impl.map_label}: chunksize 1 is slow, {slow_repeats} runs ...")
            warm, run = map_ops(sq, xs, xs[:SLOW_WARMUP_ITEMS], expected)
            n = slow_repeats
        else:
            warm, run = map_ops(sq, xs, xs, expected)
            n = repeats
        [results[impl.key]] = measure_group([impl], [impl.map_label], n, warm, run, "a", report)
    report.a = _in_table_order(results, impls)


SERIAL = Impl("serial", contextlib.nullcontext, lambda _: "-",
              "serial loop [burn(x) for x in xs]",
              lambda _, fn, items: [fn(x) for x in items],
              "serial", None)


def run_b(impls: dict[str, Impl], repeats: int, report: Report) -> None:
    """Serial loop, multiprocessing.Pool and bingfa, interleaved repeat by repeat.

    Efficiency is a ratio of two measurements, so the serial and parallel runs
    alternate: a slow spell on the machine then hits both alike.
    """
    iterations, per_call = calibrate(TASK_SECONDS)
    report.b_calibration = {"iterations": iterations, "seconds_per_call": per_call}
    log(f"  calibrated: burn({iterations}) takes {fmt_time(per_call)} per call")
    items = [iterations + i % 16 for i in range(CPU_ITEMS)]
    expected = [burn(x) for x in items]
    group = [SERIAL, *_paired(impls)]
    # Everything, the serial loop included, runs once untimed before the timed repeats.
    warm, run = map_ops(burn, items, items, expected)
    measured = measure_group(group, [i.map_label for i in group], repeats, warm, run, "b",
                             report)
    by_key = dict(zip((i.key for i in group), measured, strict=True))
    report.b = [by_key["serial"], *_in_table_order(
        {k: v for k, v in by_key.items() if k != "serial"}, impls)]


def run_c(impls: dict[str, Impl], repeats: int, report: Report) -> None:
    results: dict[str, Result] = {}
    paired = [i for i in _paired(impls) if i.round_trip is not None]
    paired_keys = {i.key for i in paired}
    if paired:
        measured = measure_group(paired, [i.rt_label for i in paired], repeats, _rt_warm,
                                 _rt_run, "c", report)
        results.update((i.key, r) for i, r in zip(paired, measured, strict=True))
    for impl in impls.values():
        if impl.round_trip is None or impl.key in paired_keys:
            continue
        [results[impl.key]] = measure_group([impl], [impl.rt_label], repeats, _rt_warm,
                                            _rt_run, "c", report)
    report.c = _in_table_order(results, impls)


def _efficiency(results: list[Result], result: Result, best: bool = False) -> float | None:
    """serial / (workers x parallel), from the medians, or from the minimums with ``best``."""
    serial = results[0]
    if not (serial.ok and result.ok):
        return None
    if best:
        return serial.min / (WORKERS * result.min)
    return serial.median / (WORKERS * result.median)


# --- output -----------------------------------------------------------------------------
def fmt_time(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.1f} us"


def _progress(result: Result) -> str:
    if result.error is not None:
        return f"ERROR {result.error}"
    if not result.times:
        return "no runs"
    return f"median {fmt_time(result.median)}, min {fmt_time(result.min)}"


def _ratio(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}x"
    if value >= 10:
        return f"{value:.1f}x"
    if value >= 0.1:
        return f"{value:.2f}x"
    return f"{value:.2g}x"


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    if not rows:
        print("  (nothing measured)")
        return
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
        return "  " + "  ".join([first, *rest])

    print(line(headers))
    print("  " + "  ".join("-" * w for w in widths))
    for row in rows:
        print(line(row))


def comparison_rows(results: list[Result], bingfa_result: Result | None,
                    extra: Callable[[Result], list[str]] | None = None) -> list[list[str]]:
    rows = []
    for r in results:
        cells = [r.name, r.start_method, str(len(r.times))]
        if not r.ok:
            cells += ["ERROR" if r.error else "-", "-", "-", "-"]
        else:
            cells += [fmt_time(r.median), fmt_time(r.min)]
            if r is bingfa_result or bingfa_result is None or not bingfa_result.ok:
                cells += ["-", "-"]
            else:
                ratio = bingfa_result.median / r.median
                faster = r.median / bingfa_result.median
                cells += [_ratio(ratio),
                          _ratio(faster) + (" (bingfa slower)" if faster < 1 else "")]
        if extra is not None:
            cells += extra(r)
        rows.append(cells)
    return rows


HEADERS = ["implementation", "start method", "runs", "median", "min",
           "bingfa ratio", "bingfa x faster"]


def print_notes(results: list[Result], extra: list[str]) -> None:
    notes = [f"{r.name}: {r.note}" for r in results if r.note]
    notes += [f"{r.name} failed: {r.error}" for r in results if r.error]
    notes += extra
    for note in notes:
        print(f"  * {note}")


def print_a(report: Report, settings: dict[str, Any]) -> None:
    print(f"\n(a) x*x over list(range({MAP_ITEMS:,})), warm pools, {WORKERS} workers, "
          f"time of the map call only")
    print_table(HEADERS, comparison_rows(report.a, _bingfa(report.a)))
    notes = [
        "bingfa ratio = bingfa median / peer median (< 1: bingfa is faster); "
        "bingfa x faster = peer median / bingfa median.",
        "bingfa and multiprocessing.Pool were timed interleaved: both pools open, "
        "their runs alternating, so machine noise hits both alike.",
        f"chunksize-1 peers (ProcessPoolExecutor, pebble, loky) ran "
        f"{settings['slow_repeats']} times on the full {MAP_ITEMS:,} items, warmed up "
        f"with a {SLOW_WARMUP_ITEMS:,}-item map; the others {settings['repeats']} times, "
        f"warmed up with one full map.",
    ]
    if "mpire" in settings["impls"]:
        notes.append("mpire kept warm with keep_alive=True." if settings.get("mpire_keep_alive")
                     else "mpire has no keep_alive here: each map may restart its workers.")
    if "joblib" in settings["impls"]:
        notes.append("joblib: one `with Parallel(n_jobs=2) as par:` reused for every run; "
                     "its loky workers are shut down afterwards.")
    print_notes(report.a, notes)


def print_b(report: Report) -> None:
    cal = report.b_calibration
    print(f"\n(b) ~1 ms pure-Python task over {CPU_ITEMS:,} ints, {WORKERS} workers: "
          f"burn(n) with n = {cal.get('iterations', 0):.0f}, calibrated at start to "
          f"{fmt_time(cal.get('seconds_per_call', 0))} per call (fastest of 7 x 50 calls)")
    if report.b and report.b[0].ok:
        print(f"  (during the serial runs one call took {fmt_time(report.b[0].median / CPU_ITEMS)} "
              f"on average: the machine's speed drifts)")
    results = report.b
    bingfa_result = _bingfa(results)

    def eff(r: Result) -> list[str]:
        cells = []
        for best in (False, True):
            e = _efficiency(results, r, best) if r is not results[0] else None
            cells.append(f"{e * 100:.1f}%" if e is not None else "-")
        return cells

    rows = comparison_rows(results, bingfa_result, eff)
    rows[0][5:7] = ["-", "-"]  # no ratio against the serial loop
    print_table([*HEADERS, "efficiency", "eff. (mins)"], rows)
    print_notes(results, [
        "efficiency = serial median / (workers x parallel median), the target's measure "
        "(>= 95%); eff. (mins) uses the fastest runs instead, for reference.",
        "the serial loop, multiprocessing.Pool and bingfa were timed interleaved "
        "(their runs alternate, in rotating order); each ran once untimed first.",
    ])


def print_c(report: Report, impls: dict[str, Impl]) -> None:
    print(f"\n(c) round trip: submit noop(1) and wait for it, {ROUND_TRIPS:,} times in a loop "
          f"(median over repeats of the per-loop mean)")
    print_table(HEADERS, comparison_rows(report.c, _bingfa(report.c)))
    notes = [f"each pool first made {ROUND_TRIP_WARMUP} untimed round trips; bingfa and "
             f"multiprocessing.Pool were timed interleaved."]
    notes += [i.rt_note for i in impls.values() if i.round_trip is None and i.rt_note]
    print_notes(report.c, notes)


def _bingfa(results: list[Result]) -> Result | None:
    return next((r for r in results if r.name.startswith("bingfa")), None)


def _find(results: list[Result], prefix: str) -> Result | None:
    for r in results:
        if r.name.startswith(prefix) and r.ok:
            return r
    return None


def evaluate_targets(report: Report, only: set[str]) -> None:
    targets = report.targets

    def add(workload: str, text: str, value: str, passed: bool | None) -> None:
        status = "SKIP" if passed is None else ("PASS" if passed else "FAIL")
        targets.append({"workload": workload, "target": text, "value": value, "status": status})

    if "a" in only:
        bingfa_a = _find(report.a, "bingfa")
        mp_a = _find(report.a, "multiprocessing")
        if bingfa_a and mp_a:
            ratio = bingfa_a.median / mp_a.median
            add("a", f"bingfa <= {TARGET_MAP_VS_MP}x multiprocessing.Pool.map",
                f"{ratio:.2f}x", ratio <= TARGET_MAP_VS_MP)
        else:
            add("a", f"bingfa <= {TARGET_MAP_VS_MP}x multiprocessing.Pool.map", "n/a", None)
        for prefix, label in (("ProcessPoolExecutor", "ProcessPoolExecutor.map"),
                              ("pebble", "pebble ProcessPool.map"),
                              ("mpire", "mpire WorkerPool.map"),
                              ("joblib", "joblib Parallel")):
            text = f"bingfa >= {TARGET_MAP_X_FASTER:.0f}x faster than {label} (default chunking)"
            peer = _find(report.a, prefix)
            if bingfa_a and peer:
                faster = peer.median / bingfa_a.median
                add("a", text, f"{_ratio(faster)} faster", faster >= TARGET_MAP_X_FASTER)
            else:
                add("a", text, "n/a", None)
    if "b" in only:
        text = f"bingfa parallel efficiency >= {TARGET_EFFICIENCY:.0%}"
        bingfa_b = _find(report.b, "bingfa")
        e = _efficiency(report.b, bingfa_b) if bingfa_b else None
        if e is not None and bingfa_b is not None:
            e_best = _efficiency(report.b, bingfa_b, best=True) or 0.0
            add("b", text, f"{e * 100:.1f}% (from mins {e_best * 100:.1f}%)",
                e >= TARGET_EFFICIENCY)
        else:
            add("b", text, "n/a", None)
    if "c" in only:
        text = f"bingfa round trip <= {TARGET_ROUND_TRIP_VS_MP}x multiprocessing.Pool's"
        bingfa_c = _find(report.c, "bingfa")
        mp_c = _find(report.c, "multiprocessing")
        if bingfa_c and mp_c:
            ratio = bingfa_c.median / mp_c.median
            add("c", text,
                f"{ratio:.2f}x ({fmt_time(bingfa_c.median)} vs {fmt_time(mp_c.median)})",
                ratio <= TARGET_ROUND_TRIP_VS_MP)
        else:
            add("c", text, "n/a", None)


def print_summary(report: Report) -> None:
    print("\nTargets (informational; the exit code is 0 either way)")
    width = max((len(t["target"]) for t in report.targets), default=0)
    vwidth = max((len(t["value"]) for t in report.targets), default=0)
    for t in report.targets:
        print(f"  ({t['workload']}) {t['target'].ljust(width)}  {t['value'].rjust(vwidth)}  "
              f"{t['status']}")


def print_processes(report: Report) -> None:
    helpers = []
    for proc in psutil.Process().children(recursive=True):
        text, zombie = _describe(proc)
        if zombie:
            report.anomalies.append(f"unreaped child process: {text}")
        elif _is_helper(proc):
            helpers.append(text)
    print("\nProcesses")
    if helpers:
        print("  helper processes still running (multiprocessing/loky keep these until exit):")
        for text in helpers:
            print(f"    {text}")
    if report.anomalies:
        print("  anomalies:")
        for text in report.anomalies:
            print(f"    - {text}")
    else:
        print("  no leaked worker processes, no errors")


# --- machine ----------------------------------------------------------------------------
def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_info() -> dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    return {
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "versions": {
            "bingfa": bf.__version__,
            "mpire": _version("mpire"),
            "joblib": _version("joblib"),
            "loky": _version("loky"),
            "pebble": _version("pebble"),
            "cloudpickle": _version("cloudpickle"),
        },
        "default_start_method": multiprocessing.get_start_method(allow_none=True)
        or multiprocessing.get_context().get_start_method(),
    }


def print_machine(machine: dict[str, Any]) -> None:
    print("bingfa process-pool benchmark")
    print(f"  machine: {machine['cpu_count']} CPUs ({machine['usable_cpus']} usable), "
          f"{machine['platform']}, {machine['python']}")
    print(f"  load average at start: {' '.join(map(str, machine['load_average_at_start']))}")
    print("  versions: " + ", ".join(f"{k} {v}" for k, v in machine["versions"].items()))
    print(f"  every library runs with its own default start method (the stdlib's here is "
          f"{machine['default_start_method']!r}); see the 'start method' column")


# --- main -------------------------------------------------------------------------------
def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _workloads(text: str) -> set[str]:
    chosen = {part.strip().lower() for part in text.split(",") if part.strip()}
    unknown = chosen - {"a", "b", "c"}
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"choose from a, b, c (comma-separated), got {text!r}")
    return chosen


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark bingfa's process pool against multiprocessing, "
                    "concurrent.futures, joblib, mpire, pebble and loky.")
    parser.add_argument("--repeats", type=_positive_int, default=7,
                        help="timed runs per measurement (default 7); the median is reported")
    parser.add_argument("--slow-repeats", type=_positive_int, default=3,
                        help="timed runs for the chunksize-1 peers in (a), each tens of "
                             "seconds (default 3)")
    parser.add_argument("--only", type=_workloads, default={"a", "b", "c"},
                        help="workloads to run, e.g. 'a,c' (default: a,b,c)")
    parser.add_argument("--json", metavar="FILE", help="also write the raw numbers to FILE")
    return parser.parse_args(argv)


def available_impls() -> tuple[dict[str, Impl], list[str]]:
    """The implementations whose library imports, and notes on those that do not."""
    modules = {"concurrent.futures": "concurrent.futures", "pebble": "pebble",
               "mpire": "mpire", "joblib": "joblib", "loky": "loky"}
    impls: dict[str, Impl] = {}
    missing = []
    for impl in IMPLS:
        module = modules.get(impl.key)
        if module is not None:
            try:
                __import__(module)
            except ImportError as exc:
                missing.append(f"{impl.key} skipped: cannot import it ({exc})")
                continue
        impls[impl.key] = impl
    if "mpire" in impls:
        from mpire import WorkerPool

        if not _mpire_keep_alive():
            impls["mpire"].note = "no keep_alive in this mpire: workers may restart per map"
        if not hasattr(WorkerPool, "apply_async"):
            impls["mpire"].round_trip = None
            impls["mpire"].rt_note = "mpire: no apply_async in this version; skipped in (c)."
    return impls, missing


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    impls, missing = available_impls()
    report = Report(machine=machine_info())
    report.anomalies.extend(missing)
    settings: dict[str, Any] = {
        "workers": WORKERS, "repeats": args.repeats, "slow_repeats": args.slow_repeats,
        "only": sorted(args.only), "impls": sorted(impls),
        "map_items": MAP_ITEMS, "cpu_items": CPU_ITEMS, "round_trips": ROUND_TRIPS,
        "mpire_keep_alive": "mpire" in impls and _mpire_keep_alive(),
    }
    report.settings = settings
    print_machine(report.machine)
    sys.stdout.flush()

    if "a" in args.only:
        log(f"\n(a) map of x*x over {MAP_ITEMS:,} items ...")
        run_a(impls, args.repeats, args.slow_repeats, report)
        print_a(report, settings)
        sys.stdout.flush()

    if "b" in args.only:
        log("\n(b) ~1 ms CPU tasks: serial vs parallel ...")
        run_b(impls, args.repeats, report)
        print_b(report)
        sys.stdout.flush()

    if "c" in args.only:
        log(f"\n(c) {ROUND_TRIPS:,} round trips ...")
        run_c(impls, args.repeats, report)
        print_c(report, impls)
        sys.stdout.flush()

    evaluate_targets(report, args.only)
    print_summary(report)
    print_processes(report)
    elapsed = time.perf_counter() - started
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\nTotal time {elapsed:.0f} s; load average at the end: {load}")
    report.settings["total_seconds"] = elapsed

    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(report.to_json(), fh, indent=2)
        print(f"Raw numbers written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
