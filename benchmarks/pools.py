"""Benchmark bingfa's process pool against its peers, side by side, in one run.

Workloads (2 workers unless said otherwise, each library's default start method):

  a  ``x*x`` over 200,000 ints on a warm pool, default chunking for everyone
  b  ~1 ms pure-Python tasks over 2,000 ints: parallel efficiency against a serial loop,
     beside the ideal split (each worker one task holding half the work: the floor)
  c  submit one trivial task and wait for its result, 2,000 times: round-trip latency
  d  lazy imap: ``x*x`` over 2,000,000 items from a generator; seconds, us per item and
     the parent's peak RSS growth
  e  slow consumer: an endless generator of 100-byte payloads into imap (~0.2 ms of work
     each), consumed at 1 ms per item for 8 s: items pulled from the input vs consumed
  f  large payloads: 64 numpy arrays of 8 MiB through an identity function, and one
     256 MiB array to a task and back (needs numpy; skipped without it)
  g  cold start: a fresh interpreter that imports, opens a 2-worker pool, gets one result
     and exits; the bare interpreter and the imports alone for reference
  h  thread mode: 10,000 ``submit(time.sleep, 0.001)`` with 100 and with 10 workers
     against ThreadPoolExecutor, and building + shutting down a 10,000-thread pool
  i  skewed durations: 1,000 pure-Python tasks, nine in ten of 0.5 ms and one in ten
     of 20 ms, the long ones last (input sorted by size) and shuffled; parallel
     efficiency against a serial loop, every library with its default chunking

Each measurement is repeated (``--repeats``, default 7) and the median is reported
with the minimum beside it; the peers that map with chunksize 1 in (a) are slow
(tens of seconds a run) and get ``--slow-repeats`` (default 3) on the same
200,000 items, as do the slow lazy maps of (d). A summary at the end checks
bingfa's performance targets; it is informational and the exit code is 0 either way.

``--busy N`` runs N busy-loop processes (``while True: pass``, not pinned) beside
the whole run; ``--busy-compare N`` runs the chosen workloads idle, then again
beside N busy loops, and prints both (``--only c --busy-compare 2``: round trips
on an idle and on a loaded machine). ``--quick`` shrinks every workload and runs
it once, for development. Every measurement has a deadline (``--timeout``): a
peer that hangs is skipped with a note, its processes killed.

Usage, from the repository root::

    python benchmarks/pools.py [--repeats N] [--slow-repeats N] [--only a,b,...,i]
                               [--busy N | --busy-compare N] [--quick] [--timeout S]
                               [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import gc
import glob
import inspect
import json
import multiprocessing
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
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
LAZY_ITEMS = 2_000_000  # workload (d)
LAZY_WARMUP_ITEMS = 20_000
LAZY_CHUNK = 1_000
SLOW_CONSUMER_SECONDS = 8.0  # workload (e)
SLOW_CONSUMER_WORK = 2e-4  # seconds of work per item in the worker
SLOW_CONSUMER_SLEEP = 1e-3  # seconds the consumer sleeps per item
PAYLOAD_BYTES = 100
ENDLESS_CAP = 2_000_000  # the "endless" input of (e) stops here, to bound the damage
ARRAYS = 64  # workload (f)
ARRAY_MIB = 8
BIG_ARRAY_MIB = 256
COLD_RUNS = 9  # workload (g): at least this many runs, whatever --repeats says
COLD_TIMEOUT = 60.0  # seconds one cold start may take before it is killed
SLEEP_TASKS = 10_000  # workload (h)
SLEEP_SECONDS = 1e-3
SLEEP_WORKERS = (100, 10)
BIG_THREAD_POOL = 10_000
SKEWED_TASKS = 1_000  # workload (i)
SKEWED_SHORT_SECONDS = 0.5e-3
SKEWED_LONG_SECONDS = 20e-3
SKEWED_LONG_EVERY = 10  # one task in this many is long
LEAK_GRACE = 3.0  # seconds a pool's processes get to exit after its shutdown returns
RSS_INTERVAL = 0.02  # seconds between samples of the parent's RSS
RUN_TIMEOUT = 300.0  # seconds one opening, warm-up, timed run or shutdown may take (--timeout)
MIB = 1 << 20

# Targets from the issue.
TARGET_MAP_VS_MP = 0.8
TARGET_MAP_X_FASTER = 10.0
TARGET_EFFICIENCY = 0.95
TARGET_ROUND_TRIP_VS_MP = 0.7
TARGET_ROUND_TRIP_BUSY_VS_MP = 1.0  # the same round trip beside busy loops
TARGET_LAZY_VS_MP = 1.2
TARGET_RSS_MIB = 20.0  # (d) and (e): growth of the parent's RSS
TARGET_WINDOW = 5_000  # (e): items pulled from the input but not yet consumed
TARGET_LARGE_VS_BEST = 1.0
TARGET_COLD_VS_FORKSERVER = 1.0
TARGET_COLD_FORK_VS_FORK = 1.2
TARGET_IMPORT_VS_MP = 1.2
TARGET_THREADS_VS_TPE = 1.0
TARGET_BIG_POOL_SECONDS = 0.05
TARGET_SKEWED_EFFICIENCY = 0.94

# Long-lived helper processes that multiprocessing, loky and bingfa keep until the
# interpreter exits; they are not pool workers and do not count as leaks. The
# workers a fork server or bingfa's zygote forks carry its command line too: only
# the one whose parent does not is the helper.
HELPER_MARKERS = ("forkserver", "resource_tracker", "semaphore_tracker", "_zygote")

# The busy-loop processes of --busy: not pool workers, never counted as leaks.
BUSY_PIDS: set[int] = set()


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


def spin_echo(payload: bytes) -> bytes:
    """About ``SLOW_CONSUMER_WORK`` seconds of CPU work, then the payload back (e)."""
    end = time.perf_counter() + SLOW_CONSUMER_WORK
    while time.perf_counter() < end:
        pass
    return payload


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
    # Other figures of each timed run, by name (RSS growth, items pulled, ...).
    metrics: dict[str, list[float]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.times)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def min(self) -> float:
        return min(self.times)

    def metric(self, name: str, how: Callable[[list[float]], float] = statistics.median
               ) -> float | None:
        values = self.metrics.get(name)
        return how(values) if values else None

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
    d: list[Result] = field(default_factory=list)
    e: list[Result] = field(default_factory=list)
    f: list[Result] = field(default_factory=list)
    f_big: list[Result] = field(default_factory=list)
    g: list[Result] = field(default_factory=list)
    h: list[Result] = field(default_factory=list)
    h_build: list[Result] = field(default_factory=list)
    i_sorted: list[Result] = field(default_factory=list)
    i_shuffled: list[Result] = field(default_factory=list)
    i_calibration: dict[str, float] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)  # per workload, for the tables
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
            "d_lazy_imap_seconds": [r.to_json() for r in self.d],
            "e_slow_consumer": [r.to_json() for r in self.e],
            "f_large_payload_seconds": [r.to_json() for r in self.f],
            "f_big_array_seconds": [r.to_json() for r in self.f_big],
            "g_cold_start_seconds": [r.to_json() for r in self.g],
            "h_thread_submit_seconds_per_task": [r.to_json() for r in self.h],
            "h_big_thread_pool_seconds": [r.to_json() for r in self.h_build],
            "i_skewed_efficiency": {
                "calibration": self.i_calibration,
                **{layout: {"results": [r.to_json() for r in results],
                            "efficiency_from_medians": {
                                r.name: _efficiency(results, r) for r in results[1:] if r.ok}}
                   for layout, results in (("sorted", self.i_sorted),
                                           ("shuffled", self.i_shuffled))},
            },
            "notes": self.notes,
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
def _open_bingfa(**kwargs: Any) -> Iterator[bf.Pool]:
    with bf.Pool(WORKERS, mode="process", **kwargs) as pool:
        yield pool


def _bingfa_method(pool: bf.Pool) -> str:
    method = getattr(pool, "start_method", None) \
        or getattr(getattr(pool, "_engine", None), "_method", None)
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
def _open_joblib(**kwargs: Any) -> Iterator[Any]:
    from joblib import Parallel

    try:
        with Parallel(n_jobs=WORKERS, **kwargs) as par:
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


@dataclass
class Case:
    """One row of workloads (d) to (h): a pool to open and what to do with it."""

    key: str  # the library, as in IMPLS
    label: str
    open: Callable[[], contextlib.AbstractContextManager[Any]]
    start_method: Callable[[Any], str]
    call: Any  # what the workload calls; its signature is the workload's
    note: str = ""


def _mp_method(pool: Any) -> str:
    return _method_of(getattr(pool, "_ctx", None))


def _ppe_method(ex: Any) -> str:
    return _method_of(getattr(ex, "_mp_context", None))


def _loky_method(ex: Any) -> str:
    return _method_of(getattr(ex, "_context", None))


def _mpire_method(pool: Any) -> str:
    return _method_of(getattr(pool, "ctx", None))


# --- load, deadlines, memory ------------------------------------------------------------
# A busy loop that dies with the benchmark, however the benchmark ends (even by
# SIGKILL): PR_SET_PDEATHSIG, then the pure loop.
BUSY_CODE = textwrap.dedent("""\
    import ctypes, os, signal, sys
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass
    if os.getppid() != int(sys.argv[1]):
        raise SystemExit  # the benchmark is already gone
    while True:
        pass
""")


class BusyLoad:
    """``n`` busy-loop processes beside the benchmark, killed when the block ends."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> BusyLoad:
        try:
            for _ in range(self.n):
                proc = subprocess.Popen(
                    [sys.executable, "-c", BUSY_CODE, str(os.getpid())],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL)
                self.procs.append(proc)
                BUSY_PIDS.add(proc.pid)
        except BaseException:
            self.stop()
            raise
        if self.procs:
            time.sleep(0.3)  # let them reach their loops before anything is timed
        return self

    def __exit__(self, *_: Any) -> None:
        self.stop()

    def stop(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(OSError):
                proc.kill()
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            BUSY_PIDS.discard(proc.pid)
        self.procs = []

    def describe(self) -> str:
        if not self.n:
            return "none added (no busy loops)"
        pids = ", ".join(str(p.pid) for p in self.procs)
        return (f"{self.n} busy-loop process(es) beside the benchmark for its whole run "
                f"(`while True: pass`, not pinned; pids {pids})")


class Hung(BaseException):
    """Raised in the main thread when a measurement overruns its deadline.

    A BaseException, like KeyboardInterrupt, so that no library takes it for an
    error of its own; pools left with it go through their terminate path.
    """


@contextlib.contextmanager
def deadline(seconds: float, what: str) -> Iterator[None]:
    """Raise :class:`Hung` in the main thread if the block runs past ``seconds``."""
    def fire(signum: int, frame: Any) -> None:
        raise Hung(f"{what}: still running after {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _malloc_trim() -> None:
    """Give freed heap memory back to the system (glibc), so RSS baselines are honest."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakRss:
    """The peak growth of this process's RSS over a block, sampled in a thread."""

    def __init__(self, interval: float = RSS_INTERVAL) -> None:
        self.interval = interval
        self._proc = psutil.Process()
        self._stop = threading.Event()
        self.start = self.peak = 0

    def __enter__(self) -> PeakRss:
        gc.collect()
        _malloc_trim()
        self.start = self.peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def _take(self) -> None:
        rss = self._proc.memory_info().rss
        if rss > self.peak:
            self.peak = rss

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._take()

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join()
        self._take()

    @property
    def growth(self) -> int:
        return max(0, self.peak - self.start)


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


def _marker(proc: psutil.Process) -> str | None:
    try:
        cmd = " ".join(proc.cmdline())
    except psutil.Error:
        return None
    return next((m for m in HELPER_MARKERS if m in cmd), None)


def _is_helper(proc: psutil.Process) -> bool:
    """A fork server, bingfa's zygote or a resource tracker, not what they forked."""
    marker = _marker(proc)
    if marker is None:
        return False
    try:
        parent = proc.parent()
    except psutil.Error:
        return True
    return parent is None or _marker(parent) != marker


def _strays() -> list[psutil.Process]:
    """Descendants of this process that are neither helper processes nor busy loops."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        if proc.pid in BUSY_PIDS:
            continue
        try:
            if not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE:
                continue
        except psutil.Error:
            continue
        if not _is_helper(proc):
            found.append(proc)
    return found


def kill_processes(procs: Iterable[psutil.Process]) -> None:
    """SIGKILL the processes, and reap those that are this process's children."""
    procs = list(procs)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(procs, timeout=5)
    for proc in procs:
        with contextlib.suppress(OSError):
            os.waitpid(proc.pid, os.WNOHANG)


def check_processes(label: str, report: Report) -> None:
    """Record the processes still around ``LEAK_GRACE`` seconds after a pool shut down.

    They are killed then, so that they do not disturb the measurements after.
    """
    deadline_at = time.monotonic() + LEAK_GRACE
    strays = _strays()
    while strays and time.monotonic() < deadline_at:
        time.sleep(0.05)
        strays = _strays()
    if strays:
        described = ", ".join(_describe(p)[0] for p in strays)
        report.anomalies.append(
            f"{label}: {len(strays)} process(es) still present {LEAK_GRACE:.0f} s "
            f"after the pool was shut down (killed now): {described}")
        kill_processes(strays)


def check_threads(label: str, baseline: int, report: Report) -> None:
    """Record the threads still alive ``LEAK_GRACE`` seconds after a thread pool shut down."""
    deadline_at = time.monotonic() + LEAK_GRACE
    while threading.active_count() > baseline and time.monotonic() < deadline_at:
        time.sleep(0.05)
    extra = threading.active_count() - baseline
    if extra > 0:
        names = sorted({t.name.rstrip("0123456789_-") for t in threading.enumerate()})
        report.anomalies.append(f"{label}: {extra} thread(s) still alive {LEAK_GRACE:.0f} s "
                                f"after the pool was shut down ({', '.join(names)[:200]})")


# --- measuring --------------------------------------------------------------------------
def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip()[:300]


Warm = Callable[[Any, Any], None]  # (impl or case, handle)
# (impl or case, handle, repeat index) -> seconds, or (seconds, {metric: value})
TimedRun = Callable[[Any, Any, int], "float | tuple[float, dict[str, float]]"]


def _record(result: Result, out: float | tuple[float, dict[str, float]]) -> None:
    if isinstance(out, tuple):
        seconds, metrics = out
        for name, value in metrics.items():
            result.metrics.setdefault(name, []).append(value)
    else:
        seconds = out
    result.times.append(seconds)


def measure_group(group: Sequence[Any], labels: list[str], repeats: int, warm: Warm,
                  run: TimedRun, workload: str, report: Report,
                  timeout: float | None = None) -> list[Result]:
    """Open every pool in ``group`` (in order), warm each, then time them in turns.

    With more than one pool the runs are interleaved repeat by repeat (and the
    order rotates), so a slow spell on a noisy machine hits them alike and
    their ratio stays honest. Errors are recorded, not raised. Each opening
    with its warm-up, each timed run and the shutdown get ``timeout`` seconds
    (``--timeout``): a pool that overruns is skipped with a note, and the pools
    are then left through their terminate path.
    """
    timeout = RUN_TIMEOUT if timeout is None else timeout
    results = [Result(label, note=impl.note) for impl, label in zip(group, labels, strict=True)]
    t_start = time.perf_counter()
    stack = contextlib.ExitStack()
    failure: BaseException | None = None  # a hang or Ctrl-C: leave through terminate
    try:
        live: list[tuple[Any, Result, Any]] = []
        for impl, result in zip(group, results, strict=True):
            try:
                with deadline(timeout, f"opening and warming {result.name}"):
                    handle = stack.enter_context(impl.open())
                    t0 = time.perf_counter()
                    warm(impl, handle)
                    result.warmup = time.perf_counter() - t0
                result.start_method = impl.start_method(handle)
                live.append((impl, result, handle))
            except Hung as exc:
                result.error = f"skipped: {exc}"
                failure = exc
            except Exception as exc:
                result.error = _error_text(exc)
        for i in range(repeats):
            for k in range(len(live)):
                impl, result, handle = live[(i + k) % len(live)]
                if result.error is not None:
                    continue
                try:
                    with deadline(timeout, f"{result.name}, run {i + 1}"):
                        out = run(impl, handle, i)
                except Hung as exc:
                    result.error = f"skipped: {exc}"
                    failure = exc
                except Exception as exc:
                    result.error = _error_text(exc)
                else:
                    _record(result, out)
            if repeats > 1 and any(r.times and statistics.median(r.times) > 1
                                   for _, r, _ in live):
                log(f"    repeat {i + 1}/{repeats}: " + ", ".join(
                    f"{r.name} {fmt_time(r.times[-1])}"
                    for _, r, _ in live if len(r.times) == i + 1))
    except BaseException as exc:  # Ctrl-C: shut the pools down the hard way, then go
        failure = exc
        raise
    finally:
        try:
            with deadline(timeout, "shutting the pools down"):
                if failure is None:
                    stack.close()
                else:
                    stack.__exit__(type(failure), failure, failure.__traceback__)
        except (Exception, Hung) as exc:  # a pool that failed to shut down
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
    group = [SERIAL, IDEAL_SPLIT, *_paired(impls)]
    # Everything, the serial loop included, runs once untimed before the timed repeats.
    warm, run = map_ops(burn, items, items, expected)
    measured = measure_group(group, [i.map_label for i in group], repeats, warm, run, "b",
                             report)
    by_key = dict(zip((i.key for i in group), measured, strict=True))
    report.b = [by_key["serial"], by_key["ideal"], *_in_table_order(
        {k: v for k, v in by_key.items() if k not in ("serial", "ideal")}, impls)]


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


# --- (d) lazy imap ----------------------------------------------------------------------
def _generator(n: int) -> Iterator[int]:
    """``range(n)`` as a generator: no len(), no slicing, pulled one item at a time."""
    return (x for x in range(n))


def _sum_of_squares(n: int) -> int:
    return (n - 1) * n * (2 * n - 1) // 6


def _drain(results: Iterable[int]) -> tuple[int, int]:
    """Count and sum the results, the same cheap loop for every implementation."""
    count = total = 0
    for value in results:
        count += 1
        total += value
    return count, total


def _joblib_lazy(par: Any, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
    from joblib import delayed

    return iter(par(delayed(fn)(x) for x in items))


def lazy_cases(impls: dict[str, Impl]) -> tuple[list[Case], list[Case], list[str]]:
    """The lazy maps of (d) and (e): those timed interleaved, the slow ones, notes."""
    paired: list[Case] = []
    alone: list[Case] = []
    if "multiprocessing" in impls:
        # Opened first: multiprocessing forks, and its workers should not inherit
        # the pipes of bingfa's pools.
        paired += [
            Case("multiprocessing", f"multiprocessing.Pool.imap(chunksize={LAZY_CHUNK})",
                 _open_mp, _mp_method,
                 lambda p, fn, items: p.imap(fn, items, chunksize=LAZY_CHUNK)),
            Case("multiprocessing",
                 f"multiprocessing.Pool.imap_unordered(chunksize={LAZY_CHUNK})",
                 _open_mp, _mp_method,
                 lambda p, fn, items: p.imap_unordered(fn, items, chunksize=LAZY_CHUNK)),
        ]
    paired += [
        Case("bingfa", "bingfa Pool.imap (chunksize='auto')", _open_bingfa, _bingfa_method,
             lambda p, fn, items: p.imap(fn, items)),
        Case("bingfa", "bingfa Pool.imap_unordered (chunksize='auto')", _open_bingfa,
             _bingfa_method, lambda p, fn, items: p.imap_unordered(fn, items)),
        Case("bingfa", f"bingfa Pool.imap(chunksize={LAZY_CHUNK})", _open_bingfa,
             _bingfa_method, lambda p, fn, items: p.imap(fn, items, chunksize=LAZY_CHUNK)),
    ]
    if "mpire" in impls:
        alone.append(Case("mpire", f"mpire WorkerPool.imap(chunk_size={LAZY_CHUNK})",
                          _open_mpire, _mpire_method,
                          lambda p, fn, items: p.imap(fn, items, chunk_size=LAZY_CHUNK)))
    if "joblib" in impls:
        alone.append(Case("joblib", "joblib Parallel(return_as='generator')",
                          functools.partial(_open_joblib, return_as="generator"),
                          _joblib_method, _joblib_lazy))
    notes = ["not lazy, so not measured: ProcessPoolExecutor.map and loky's executor.map "
             "submit every item before they return; pebble's ProcessPool.map schedules "
             "every chunk at once."]
    return paired, alone, notes


def _lazy_warm(case: Case, handle: Any) -> None:
    n = LAZY_WARMUP_ITEMS
    if _drain(case.call(handle, sq, _generator(n))) != (n, _sum_of_squares(n)):
        raise AssertionError("wrong results in the warm-up imap")


def _lazy_run(case: Case, handle: Any, i: int) -> tuple[float, dict[str, float]]:
    n = LAZY_ITEMS
    with PeakRss() as rss:
        t0 = time.perf_counter()
        got = _drain(case.call(handle, sq, _generator(n)))
        elapsed = time.perf_counter() - t0
    if got != (n, _sum_of_squares(n)):
        raise AssertionError(f"wrong results in timed run {i + 1}: {got[0]:,} items")
    return elapsed, {"rss_growth": rss.growth}


def _library_order(results: list[tuple[Case, Result]]) -> list[Result]:
    order = [impl.key for impl in IMPLS]
    ranked = sorted(results, key=lambda cr: order.index(cr[0].key)
                    if cr[0].key in order else len(order))
    return [r for _, r in ranked]


def run_d(impls: dict[str, Impl], repeats: int, slow_repeats: int, report: Report) -> None:
    paired, alone, notes = lazy_cases(impls)
    measured: list[tuple[Case, Result]] = []
    measured += zip(paired, measure_group(paired, [c.label for c in paired], repeats,
                                          _lazy_warm, _lazy_run, "d", report), strict=True)
    for case in alone:
        log(f"  {case.label}: {slow_repeats} run(s) ...")
        measured += zip([case], measure_group([case], [case.label], slow_repeats, _lazy_warm,
                                              _lazy_run, "d", report), strict=True)
    report.d = _library_order(measured)
    report.notes["d"] = notes


# --- (e) slow consumer ------------------------------------------------------------------
def _payloads(pulled: list[int]) -> Iterator[bytes]:
    """Distinct 100-byte payloads, "endless" (up to ENDLESS_CAP); counts what is pulled."""
    for i in range(ENDLESS_CAP):
        pulled[0] += 1
        yield b"%0*d" % (PAYLOAD_BYTES, i)


class _Leave(Exception):
    """Leaves a pool's with block by its terminate path: the input never ends."""


def _slow_consumer_once(case: Case, result: Result) -> None:
    """One run of (e) on a fresh pool; the figures go into ``result``."""
    pulled = [0]
    try:
        with deadline(SLOW_CONSUMER_SECONDS + RUN_TIMEOUT, f"{case.label}"), \
                case.open() as handle:
            result.start_method = case.start_method(handle)
            n = 2_000
            if _drain(case.call(handle, sq, _generator(n))) != (n, _sum_of_squares(n)):
                raise AssertionError("wrong results in the warm-up imap")
            consumed = 0
            with PeakRss() as rss:
                results = case.call(handle, spin_echo, _payloads(pulled))
                t0 = time.perf_counter()
                end = t0 + SLOW_CONSUMER_SECONDS
                for payload in results:
                    if len(payload) != PAYLOAD_BYTES:
                        raise AssertionError(f"a payload of {len(payload)} bytes came back")
                    consumed += 1
                    time.sleep(SLOW_CONSUMER_SLEEP)
                    if time.perf_counter() >= end:
                        break
                elapsed = time.perf_counter() - t0
                pulled_now = pulled[0]
            _record(result, (elapsed, {"pulled": pulled_now, "consumed": consumed,
                                       "ahead": pulled_now - consumed,
                                       "rss_growth": rss.growth}))
            close = getattr(results, "close", None)
            if close is not None:
                close()
            raise _Leave
    except _Leave:
        pass
    except Hung as exc:
        result.error = f"skipped: {exc}"
    except Exception as exc:
        result.error = _error_text(exc)


def run_e(impls: dict[str, Impl], repeats: int, report: Report) -> None:
    """bingfa imap / imap_unordered and multiprocessing.Pool.imap, each on a fresh pool."""
    cases: list[Case] = []
    if "multiprocessing" in impls:
        cases.append(Case("multiprocessing", "multiprocessing.Pool.imap (default chunksize=1)",
                          _open_mp, _mp_method, lambda p, fn, items: p.imap(fn, items)))
    cases += [
        Case("bingfa", "bingfa Pool.imap (chunksize='auto')", _open_bingfa, _bingfa_method,
             lambda p, fn, items: p.imap(fn, items)),
        Case("bingfa", "bingfa Pool.imap_unordered (chunksize='auto')", _open_bingfa,
             _bingfa_method, lambda p, fn, items: p.imap_unordered(fn, items)),
    ]
    results = [Result(c.label) for c in cases]
    runs = min(repeats, 3)
    for i in range(runs):
        for k in range(len(cases)):
            case, result = cases[(i + k) % len(cases)], results[(i + k) % len(cases)]
            if result.error is not None:
                continue
            _slow_consumer_once(case, result)
            check_processes(f"(e) {case.label}", report)
            log(f"  {case.label}, run {i + 1}/{runs}: " + (
                f"ERROR {result.error}" if result.error else
                f"pulled {result.metrics['pulled'][-1]:,.0f}, consumed "
                f"{result.metrics['consumed'][-1]:,.0f}, RSS +"
                f"{fmt_mib(result.metrics['rss_growth'][-1])}"))
    for result in results:
        if result.error is not None:
            report.anomalies.append(f"(e) {result.name}: {result.error}")
    report.e = _library_order(list(zip(cases, results, strict=True)))


# --- (f) large payloads -----------------------------------------------------------------
def large_cases(impls: dict[str, Impl], single: bool) -> list[Case]:
    """The libraries of (f), the ones that fork without exec first (see lazy_cases).

    ``single``: each library's natural call for one task and its result, instead of a map.
    """
    cases: list[Case] = []
    if "multiprocessing" in impls:
        cases.append(
            Case("multiprocessing", "multiprocessing.Pool.apply", _open_mp, _mp_method,
                 lambda p, a: p.apply(noop, (a,))) if single else
            Case("multiprocessing", "multiprocessing.Pool.map(chunksize=1)", _open_mp,
                 _mp_method, lambda p, arrays: p.map(noop, arrays, chunksize=1)))
    if "mpire" in impls:
        cases.append(
            Case("mpire", "mpire WorkerPool.apply", _open_mpire, _mpire_method,
                 lambda p, a: p.apply(noop, (a,))) if single else
            Case("mpire", "mpire WorkerPool.map(chunk_size=1)", _open_mpire, _mpire_method,
                 lambda p, arrays: p.map(noop, arrays, chunk_size=1,
                                         concatenate_numpy_output=False),
                 note="concatenate_numpy_output=False, so that it returns the list of arrays "
                      "as the others do instead of one concatenated array"))
    if "concurrent.futures" in impls:
        cases.append(
            Case("concurrent.futures", "ProcessPoolExecutor submit().result()", _open_ppe,
                 _ppe_method, lambda ex, a: ex.submit(noop, a).result()) if single else
            Case("concurrent.futures", "ProcessPoolExecutor.map (default chunksize=1)",
                 _open_ppe, _ppe_method, lambda ex, arrays: list(ex.map(noop, arrays))))
    if "loky" in impls:
        cases.append(
            Case("loky", "loky submit().result()", _open_loky, _loky_method,
                 lambda ex, a: ex.submit(noop, a).result()) if single else
            Case("loky", "loky reusable executor .map (chunksize=1)", _open_loky,
                 _loky_method, lambda ex, arrays: list(ex.map(noop, arrays))))
    if "joblib" in impls:
        joblib_note = ("joblib memory-maps arrays over 1 MB (its default max_nbytes) instead "
                       "of pickling them through a pipe")
        cases.append(
            Case("joblib", "joblib Parallel([delayed(noop)(a)])", _open_joblib, _joblib_method,
                 lambda par, a: _joblib_map(par, noop, [a])[0], note=joblib_note) if single else
            Case("joblib", "joblib Parallel (defaults)", _open_joblib, _joblib_method,
                 lambda par, arrays: _joblib_map(par, noop, arrays), note=joblib_note))
    if single:
        cases.append(Case("bingfa", "bingfa submit().result()", _open_bingfa, _bingfa_method,
                          lambda p, a: p.submit(noop, a).result()))
    else:
        cases += [
            Case("bingfa", "bingfa Pool.map (chunksize='auto')", _open_bingfa, _bingfa_method,
                 lambda p, arrays: p.map(noop, arrays)),
            Case("bingfa", "bingfa Pool.map(chunksize=1)", _open_bingfa, _bingfa_method,
                 lambda p, arrays: p.map(noop, arrays, chunksize=1)),
        ]
    return cases


def _same_arrays(np: Any, sent: list[Any], got: Any, full: bool) -> None:
    if len(got) != len(sent):
        raise AssertionError(f"{len(got)} arrays came back for {len(sent)}")
    for a, b in zip(sent, got, strict=True):
        if b.shape != a.shape or b.dtype != a.dtype:
            raise AssertionError(f"an array came back as {b.dtype}{b.shape}")
        if full:
            if not np.array_equal(a, b):
                raise AssertionError("an array came back changed")
        elif not (b[0] == a[0] and b[-1] == a[-1] and b[len(b) // 2] == a[len(a) // 2]):
            raise AssertionError("an array came back changed")


def run_f(impls: dict[str, Impl], repeats: int, report: Report) -> None:
    try:
        import numpy as np
    except ImportError as exc:
        report.notes["f"] = [f"skipped: numpy is not installed ({exc}); "
                             f"pip install numpy (it is in the bench extra)"]
        report.anomalies.append("(f) skipped: numpy is not installed")
        return
    floats = ARRAY_MIB * MIB // 8
    arrays = [np.arange(floats, dtype=np.float64) + i for i in range(ARRAYS)]

    def warm(case: Case, handle: Any) -> None:
        _same_arrays(np, arrays, case.call(handle, arrays), full=True)

    def run(case: Case, handle: Any, i: int) -> float:
        t0 = time.perf_counter()
        out = case.call(handle, arrays)
        elapsed = time.perf_counter() - t0
        _same_arrays(np, arrays, out, full=False)
        return elapsed

    cases = large_cases(impls, single=False)
    measured = list(zip(cases, measure_group(cases, [c.label for c in cases], repeats, warm,
                                             run, "f", report), strict=True))
    report.f = _library_order(measured)
    arrays.clear()  # free them before the big one

    bigs = [np.arange(BIG_ARRAY_MIB * MIB // 8, dtype=np.float64)]

    def warm_big(case: Case, handle: Any) -> None:
        _same_arrays(np, bigs, [case.call(handle, bigs[0])], full=True)

    def run_big(case: Case, handle: Any, i: int) -> float:
        t0 = time.perf_counter()
        out = case.call(handle, bigs[0])
        elapsed = time.perf_counter() - t0
        _same_arrays(np, bigs, [out], full=False)
        return elapsed

    log(f"  one {BIG_ARRAY_MIB} MiB array to a task and back ...")
    cases = large_cases(impls, single=True)
    measured = list(zip(cases, measure_group(cases, [c.label for c in cases], repeats,
                                             warm_big, run_big, "f", report), strict=True))
    report.f_big = _library_order(measured)
    report.notes["f"] = [
        f"numpy {np.__version__}. joblib's resource tracker may print KeyError tracebacks "
        "about its memmapping files on stderr: joblib's own noise; what is left in /dev/shm "
        "is checked below."]
    # joblib keeps its (empty) memmapping folders until the interpreter exits; files
    # still in them would be arrays it failed to free.
    bigs.clear()
    gc.collect()
    pattern = f"joblib_memmapping_folder_{os.getpid()}_*"
    left = [path for folder in (*glob.glob(os.path.join("/dev/shm", pattern)),
                                *glob.glob(os.path.join(tempfile.gettempdir(), pattern)))
            for path in glob.glob(os.path.join(folder, "*"))]
    if left:
        report.anomalies.append(f"(f) joblib still holds {len(left)} memmapped file(s) after "
                                f"its Parallel closed (its resource tracker removes them "
                                f"at exit): {', '.join(left)[:200]}")


# --- (g) cold start ---------------------------------------------------------------------
COLD_TOKEN_VAR = "BINGFA_BENCH_COLD_START"
COLD_TASK = textwrap.dedent("""\
    def task(x):
        return x * x


    if __name__ == "__main__":
""")
COLD_SCRIPTS = {
    # name: (library key, label, start method, imports, the body under the main guard)
    "bingfa_default": ("bingfa", "bingfa Pool(2) (default start method)", "default",
                       "import bingfa as bf",
                       "with bf.Pool(2, mode='process') as pool:\n"
                       "    assert pool.submit(task, 3).result() == 9"),
    "bingfa_fork": ("bingfa", "bingfa Pool(2, start_method='fork')", "fork",
                    "import bingfa as bf",
                    "with bf.Pool(2, mode='process', start_method='fork') as pool:\n"
                    "    assert pool.submit(task, 3).result() == 9"),
    "mp_fork": ("multiprocessing", "multiprocessing fork Pool(2)", "fork",
                "import multiprocessing as mp",
                "with mp.get_context('fork').Pool(2) as pool:\n"
                "    assert pool.apply(task, (3,)) == 9"),
    "mp_forkserver": ("multiprocessing", "multiprocessing forkserver Pool(2)", "forkserver",
                      "import multiprocessing as mp",
                      "with mp.get_context('forkserver').Pool(2) as pool:\n"
                      "    assert pool.apply(task, (3,)) == 9"),
    "ppe": ("concurrent.futures", "ProcessPoolExecutor(2)", "(stdlib default)",
            "from concurrent.futures import ProcessPoolExecutor",
            "with ProcessPoolExecutor(2) as ex:\n"
            "    assert ex.submit(task, 3).result() == 9"),
}
COLD_FLOOR = "python -c pass (the bare interpreter)"
COLD_IMPORT_BINGFA = "python -c 'import bingfa; bingfa.Pool'"
COLD_IMPORT_MP = "python -c 'import multiprocessing.pool'"
# The row each row is compared with in the table (and the targets).
COLD_PAIRS = {
    "bingfa Pool(2) (default start method)": "multiprocessing forkserver Pool(2)",
    "bingfa Pool(2, start_method='fork')": "multiprocessing fork Pool(2)",
    COLD_IMPORT_BINGFA: COLD_IMPORT_MP,
}


def _constant(value: str, _: Any) -> str:
    return value


def cold_cases(folder: str) -> list[Case]:
    py = sys.executable
    cases = [
        Case("floor", COLD_FLOOR, contextlib.nullcontext, lambda _: "-", [py, "-c", "pass"]),
        Case("bingfa", COLD_IMPORT_BINGFA, contextlib.nullcontext, lambda _: "-",
             [py, "-c", "import bingfa; bingfa.Pool"]),
        Case("multiprocessing", COLD_IMPORT_MP, contextlib.nullcontext, lambda _: "-",
             [py, "-c", "import multiprocessing.pool"]),
    ]
    for name, (key, label, method, imports, body) in COLD_SCRIPTS.items():
        path = os.path.join(folder, f"{name}.py")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(f"{imports}\n\n\n{COLD_TASK}{textwrap.indent(body, '    ')}\n")
        cases.append(Case(key, label, contextlib.nullcontext,
                          functools.partial(_constant, method), [py, path]))
    return cases


def _cold_processes(token: str) -> list[psutil.Process]:
    """Every process on the machine started by (g): they carry its token in their env."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(COLD_TOKEN_VAR) == token:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def run_g(impls: dict[str, Impl], repeats: int, report: Report) -> None:
    """Fresh interpreters, timed from spawn to exit, interleaved in rotating order."""
    token = uuid.uuid4().hex
    with tempfile.TemporaryDirectory(prefix="bingfa-cold-") as folder:
        env = dict(os.environ)
        # Bytecode for every module is written once (by the untimed warm-up runs)
        # into a private cache and read from there after: as after a pip install,
        # for bingfa and the stdlib alike, without writing into any source tree.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = os.path.join(folder, "pycache")
        env[COLD_TOKEN_VAR] = token
        cases = [c for c in cold_cases(folder) if c.key in ("floor", *impls)]

        def once(case: Case) -> float:
            # No timeout= to subprocess: with one, Popen.wait() polls, sleeping up to
            # 50 ms between looks, and the times come out in 50 ms steps. A timer
            # thread kills a run that overruns instead; wait() blocks in waitpid.
            running: list[subprocess.Popen[bytes]] = []
            overran = threading.Event()

            def kill() -> None:
                overran.set()
                for proc in running:
                    with contextlib.suppress(OSError):
                        proc.kill()

            timer = threading.Timer(COLD_TIMEOUT, kill)
            timer.daemon = True
            with tempfile.TemporaryFile() as err:
                timer.start()
                try:
                    t0 = time.perf_counter()
                    proc = subprocess.Popen(case.call, env=env, stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL, stderr=err)
                    running.append(proc)
                    returncode = proc.wait()
                    elapsed = time.perf_counter() - t0
                except BaseException:
                    kill()
                    raise
                finally:
                    timer.cancel()
                if overran.is_set():
                    raise TimeoutError(f"killed after {COLD_TIMEOUT:.0f} s")
                if returncode != 0:
                    err.seek(0)
                    tail = err.read().decode(errors="replace").strip().splitlines()[-1:]
                    raise RuntimeError(f"exit status {returncode}: {' '.join(tail)}")
            return elapsed

        def warm(case: Case, _: Any) -> None:
            once(case)
            once(case)

        runs = max(COLD_RUNS, repeats)
        measured = measure_group(cases, [c.label for c in cases], runs, warm,
                                 lambda case, _, i: once(case), "g", report)
        left = _cold_processes(token)
        deadline_at = time.monotonic() + LEAK_GRACE
        while left and time.monotonic() < deadline_at:
            time.sleep(0.05)
            left = _cold_processes(token)
        if left:
            described = ", ".join(_describe(p)[0] for p in left)
            report.anomalies.append(f"(g) {len(left)} process(es) outlived their cold-start "
                                    f"run (killed now): {described}")
            kill_processes(left)
    report.g = measured
    report.notes["g"] = [
        f"each row spawns `{os.path.basename(sys.executable)}` afresh and waits for it to "
        f"exit; median of {runs} runs, interleaved in rotating order after 2 untimed "
        f"runs each.",
        "the pool rows run a script: import, `with <pool of 2>:` one task's result, exit "
        "(bingfa and ProcessPoolExecutor leave with shutdown(wait=True), "
        "multiprocessing.Pool's with block terminates).",
        "bytecode: PYTHONDONTWRITEBYTECODE unset and PYTHONPYCACHEPREFIX set to a private "
        "folder for these runs, so every module loads from .pyc, as after pip install.",
    ]


# --- (h) thread mode --------------------------------------------------------------------
@contextlib.contextmanager
def _open_bingfa_threads(workers: int) -> Iterator[bf.Pool]:
    with bf.Pool(workers, mode="thread") as pool:
        yield pool


@contextlib.contextmanager
def _open_tpe(workers: int) -> Iterator[Any]:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as ex:
        yield ex


def _sleeps(case: Case, handle: Any, i: int = 0) -> tuple[float, dict[str, float]]:
    """SLEEP_TASKS submits of time.sleep(SLEEP_SECONDS), then every result."""
    submit = handle.submit
    t0 = time.perf_counter()
    futures = [submit(time.sleep, SLEEP_SECONDS) for _ in range(SLEEP_TASKS)]
    t1 = time.perf_counter()
    for future in futures:
        future.result()
    t2 = time.perf_counter()
    return (t2 - t0) / SLEEP_TASKS, {"submit_each": (t1 - t0) / SLEEP_TASKS}


def _build_and_shut_down(case: Case, _: Any, i: int = 0) -> tuple[float, dict[str, float]]:
    before = threading.active_count()
    t0 = time.perf_counter()
    pool = case.call()
    t1 = time.perf_counter()
    started = threading.active_count() - before
    t2 = time.perf_counter()
    pool.shutdown(wait=True)
    t3 = time.perf_counter()
    return (t1 - t0) + (t3 - t2), {"construct": t1 - t0, "threads": started}


def _untimed(run: TimedRun) -> Warm:
    """A timed run used as the warm-up: done once, its figures dropped."""
    def warm(case: Any, handle: Any) -> None:
        run(case, handle, -1)

    return warm


def run_h(repeats: int, report: Report) -> None:
    from concurrent.futures import ThreadPoolExecutor

    baseline = threading.active_count()
    for workers in SLEEP_WORKERS:
        cases = [
            Case("bingfa", f"bingfa Pool({workers}, mode='thread')",
                 functools.partial(_open_bingfa_threads, workers), lambda _: "thread", None),
            Case("concurrent.futures", f"ThreadPoolExecutor({workers})",
                 functools.partial(_open_tpe, workers), lambda _: "thread", None),
        ]
        log(f"  {workers} workers ...")
        report.h += measure_group(cases, [c.label for c in cases], repeats,
                                  _untimed(_sleeps), _sleeps, "h", report)
        check_threads(f"(h) {workers} workers", baseline, report)
    cases = [
        Case("bingfa", f"bingfa Pool({BIG_THREAD_POOL:,}, mode='thread')",
             contextlib.nullcontext, lambda _: "thread",
             lambda: bf.Pool(BIG_THREAD_POOL, mode="thread")),
        Case("concurrent.futures", f"ThreadPoolExecutor({BIG_THREAD_POOL:,})",
             contextlib.nullcontext, lambda _: "thread",
             lambda: ThreadPoolExecutor(BIG_THREAD_POOL)),
    ]
    log(f"  build and shut down {BIG_THREAD_POOL:,}-thread pools ...")
    report.h_build = measure_group(cases, [c.label for c in cases], repeats,
                                   _untimed(_build_and_shut_down), _build_and_shut_down, "h",
                                   report)
    check_threads(f"(h) {BIG_THREAD_POOL:,}-thread pools", baseline, report)


# --- (i) skewed durations ------------------------------------------------------------
def skewed_items(short: int, long: int) -> tuple[list[int], list[int]]:
    """The tasks of (i), as burn() sizes: sorted (the long ones last) and shuffled.

    Sorted is how inputs often come (files by size, rows by key) and the worst
    case for chunks cut in advance: the last ones hold all the long tasks.
    """
    sizes = [long if i % SKEWED_LONG_EVERY == 0 else short for i in range(SKEWED_TASKS)]
    shuffled = sizes[:]
    random.Random(SKEWED_TASKS).shuffle(shuffled)  # the same order in every run
    return sorted(sizes), shuffled


def burn_all(sizes: list[int]) -> list[int]:
    """One task of the ideal split: a whole share of the map."""
    return [burn(n) for n in sizes]


def ideal_split_map(pool: Any, fn: Callable[[int], int], items: list[int]) -> list[int]:
    """The least any pool could do: one task per worker, each holding an equal share of
    the work (the burn() sizes are the costs, known in advance: longest first, each to
    the share with the least so far), on a warm multiprocessing.Pool."""
    assert fn is burn
    shares: list[list[int]] = [[] for _ in range(WORKERS)]
    loads = [0] * WORKERS
    for index in sorted(range(len(items)), key=items.__getitem__, reverse=True):
        lightest = loads.index(min(loads))
        shares[lightest].append(index)
        loads[lightest] += items[index]
    out = [0] * len(items)
    done = pool.map(burn_all, [[items[i] for i in share] for share in shares], chunksize=1)
    for share, values in zip(shares, done, strict=True):
        for index, value in zip(share, values, strict=True):
            out[index] = value
    return out


IDEAL_SPLIT = Impl("ideal", _open_mp, lambda p: _method_of(p._ctx),
                   "ideal split: 2 equal shares, one task each (multiprocessing)",
                   ideal_split_map, "-", None)


def _skewed_group(impls: dict[str, Impl]) -> list[Impl]:
    """The serial loop, the ideal split and every pool that maps, those that fork their
    workers first (so that these do not inherit the pipes of pools opened before
    them), bingfa last."""
    first = ("multiprocessing", "mpire")
    order = [k for k in first if k in impls]
    order += [k for k in impls if k not in first and k != "bingfa" and impls[k].map]
    order += ["bingfa"] if "bingfa" in impls else []
    return [SERIAL, IDEAL_SPLIT, *(impls[k] for k in order)]


def run_i(impls: dict[str, Impl], repeats: int, report: Report) -> None:
    """The serial loop and every pool, interleaved repeat by repeat, on both layouts."""
    iterations, per_call = calibrate(1e-3)
    per_iteration = per_call / iterations
    short = max(1, round(SKEWED_SHORT_SECONDS / per_iteration))
    long = max(1, round(SKEWED_LONG_SECONDS / per_iteration))
    report.i_calibration = {"short_iterations": short, "long_iterations": long,
                            "seconds_per_iteration": per_iteration}
    log(f"  calibrated: burn({short}) about {fmt_time(SKEWED_SHORT_SECONDS)}, "
        f"burn({long}) about {fmt_time(SKEWED_LONG_SECONDS)}")
    answers = {short: burn(short), long: burn(long)}
    group = _skewed_group(impls)
    for layout, items in zip(("sorted", "shuffled"), skewed_items(short, long), strict=True):
        log(f"  {layout} ...")
        warm, run = map_ops(burn, items, items, [answers[x] for x in items])
        measured = measure_group(group, [i.map_label for i in group], repeats, warm, run,
                                 "i", report)
        setattr(report, f"i_{layout}", measured)


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


def fmt_mib(nbytes: float) -> str:
    return f"{nbytes / MIB:.1f} MiB"


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
    print_efficiency_table(results)
    print_notes(results, [
        "efficiency = serial median / (workers x parallel median), the target's measure "
        "(>= 95%); eff. (mins) uses the fastest runs instead, for reference.",
        "the serial loop, the ideal split, multiprocessing.Pool and bingfa were timed "
        "interleaved (their runs alternate, in rotating order); each ran once untimed first.",
        "the ideal split gives each worker one task holding half the work: no scheduling "
        "at all, so its efficiency is what this machine's two CPUs allow.",
    ])


def print_efficiency_table(results: list[Result]) -> None:
    """A table whose first row is the serial loop, with each pool's efficiency against it."""
    def eff(r: Result) -> list[str]:
        cells = []
        for best in (False, True):
            e = _efficiency(results, r, best) if r is not results[0] else None
            cells.append(f"{e * 100:.1f}%" if e is not None else "-")
        return cells

    rows = comparison_rows(results, _bingfa(results), eff)
    rows[0][5:7] = ["-", "-"]  # no ratio against the serial loop
    print_table([*HEADERS, "efficiency", "eff. (mins)"], rows)


def print_i(report: Report) -> None:
    cal = report.i_calibration
    print(f"\n(i) skewed durations: {SKEWED_TASKS:,} pure-Python tasks, one in "
          f"{SKEWED_LONG_EVERY} of {fmt_time(SKEWED_LONG_SECONDS)} "
          f"(burn({cal.get('long_iterations', 0):.0f})), the others of "
          f"{fmt_time(SKEWED_SHORT_SECONDS)} (burn({cal.get('short_iterations', 0):.0f})), "
          f"{WORKERS} workers, each library's default chunking")
    for layout, results in (("sorted: the long tasks last", report.i_sorted),
                            ("shuffled", report.i_shuffled)):
        print(f"  {layout}")
        print_efficiency_table(results)
    print_notes(report.i_sorted, [
        "efficiency = serial median / (workers x parallel median), the target's measure "
        f"(>= {TARGET_SKEWED_EFFICIENCY:.0%}); eff. (mins) uses the fastest runs instead.",
        "the serial loop and every pool were timed interleaved (their runs alternate, in "
        "rotating order); each ran once untimed first. Chunks cut in advance by the size "
        "of the input put the long tasks of the sorted layout in the last chunks.",
        "the ideal split knows every task's cost in advance and gives each worker one "
        "task holding half the work: no scheduling at all, so its efficiency is what "
        "this machine's two CPUs allow (two busy processes run slower than one).",
    ])


def print_c(report: Report, impls: dict[str, Impl]) -> None:
    print(f"\n(c) round trip: submit noop(1) and wait for it, {ROUND_TRIPS:,} times in a loop "
          f"(median over repeats of the per-loop mean)")
    print_table(HEADERS, comparison_rows(report.c, _bingfa(report.c)))
    notes = [f"each pool first made {ROUND_TRIP_WARMUP} untimed round trips; bingfa and "
             f"multiprocessing.Pool were timed interleaved."]
    notes += [i.rt_note for i in impls.values() if i.round_trip is None and i.rt_note]
    print_notes(report.c, notes)


def _metric_cells(r: Result, name: str, fmt: Callable[[float], str],
                  hows: Sequence[Callable[[list[float]], float]] = (statistics.median,)
                  ) -> list[str]:
    return [fmt(v) if (v := r.metric(name, how)) is not None and r.ok else "-" for how in hows]


def print_d(report: Report) -> None:
    print(f"\n(d) lazy imap: x*x over {LAZY_ITEMS:,} items from a generator, {WORKERS} "
          f"workers, warm pools; the consumer counts and sums the results")
    results = report.d

    def extra(r: Result) -> list[str]:
        per_item = f"{r.median / LAZY_ITEMS * 1e6:.2f} us" if r.ok else "-"
        return [per_item, *_metric_cells(r, "rss_growth", fmt_mib, (statistics.median, max))]

    print_table([*HEADERS, "per item", "RSS growth", "RSS max"],
                comparison_rows(results, _bingfa(results), extra))
    print_notes(results, [
        "bingfa ratio is against bingfa imap (auto); RSS growth = the parent's peak RSS "
        f"(sampled every {RSS_INTERVAL * 1e3:.0f} ms) minus its RSS at the start of the run, "
        "median and max over the runs (after gc and malloc_trim).",
        "multiprocessing.Pool and bingfa were timed interleaved; mpire and joblib alone, "
        "with --slow-repeats runs.",
        *report.notes.get("d", [])])


def print_e(report: Report) -> None:
    print(f"\n(e) slow consumer: endless {PAYLOAD_BYTES}-byte payloads into imap, "
          f"~{SLOW_CONSUMER_WORK * 1e3:.1f} ms of work per item in the worker, the consumer "
          f"sleeps {SLOW_CONSUMER_SLEEP * 1e3:.0f} ms per item, for {SLOW_CONSUMER_SECONDS:.0f} s; "
          f"a fresh pool each run")
    rows = []
    for r in report.e:
        if not r.ok:
            rows.append([r.name, r.start_method, str(len(r.times)),
                         "ERROR" if r.error else "-", "-", "-", "-", "-"])
            continue
        pulled = r.metric("pulled") or 0
        cells = [r.name, r.start_method, str(len(r.times)),
                 f"{pulled:,.0f}" + (" (cap)" if pulled >= ENDLESS_CAP else ""),
                 f"{r.metric('consumed') or 0:,.0f}", f"{r.metric('ahead') or 0:,.0f}",
                 f"{r.metric('ahead', max) or 0:,.0f}",
                 *_metric_cells(r, "rss_growth", fmt_mib, (max,))]
        rows.append(cells)
    print_table(["implementation", "start method", "runs", "pulled", "consumed",
                 "pulled - consumed", "(max)", "RSS growth (max)"], rows)
    print_notes(report.e, [
        "pulled = items the input generator had yielded when the consumer stopped; "
        "consumed = results the consumer took; medians over the runs.",
        f"the input stops at {ENDLESS_CAP:,} items (cap) to bound the damage; a bounded "
        f"imap stays near what the consumer took plus its window.",
    ])


def print_f(report: Report) -> None:
    moved = 2 * ARRAYS * ARRAY_MIB * MIB
    print(f"\n(f) large payloads: {ARRAYS} float64 numpy arrays of {ARRAY_MIB} MiB through "
          f"noop(a) -> a, {WORKERS} workers, warm pools: {ARRAYS * ARRAY_MIB} MiB out and "
          f"as much back per run")
    if not report.f and not report.f_big:
        print_notes([], report.notes.get("f", []))
        return

    def rate(nbytes: int) -> Callable[[Result], list[str]]:
        return lambda r: [f"{nbytes / r.median / (1 << 30):.2f}" if r.ok else "-"]

    print_table([*HEADERS, "GiB/s"], comparison_rows(report.f, _bingfa(report.f),
                                                      rate(moved)))
    print(f"\n(f) one {BIG_ARRAY_MIB} MiB float64 array to a task and back, each library's "
          f"single-task call")
    print_table([*HEADERS, "GiB/s"], comparison_rows(report.f_big, _bingfa(report.f_big),
                                                      rate(2 * BIG_ARRAY_MIB * MIB)))
    print_notes(report.f + report.f_big, [
        "GiB/s = bytes moved both ways (out and back) / median time; all pools of each "
        "table were open together and timed interleaved, each warmed with one full "
        "(checked) run.",
        *report.notes.get("f", [])])


def print_g(report: Report) -> None:
    print(f"\n(g) cold start: a fresh interpreter per run, from spawn to exit "
          f"({os.path.basename(sys.executable)} {platform.python_version()})")
    results = report.g
    floor = next((r for r in results if r.name == COLD_FLOOR and r.ok), None)
    by_name = {r.name: r for r in results}
    rows = []
    for r in results:
        cells = [r.name, r.start_method, str(len(r.times))]
        if not r.ok:
            rows.append([*cells, "ERROR" if r.error else "-", "-", "-", "-", "-"])
            continue
        cells += [fmt_time(r.median), fmt_time(r.min),
                  fmt_time(r.median - floor.median) if floor and r is not floor else "-"]
        peer = by_name.get(COLD_PAIRS.get(r.name, ""))
        if peer is not None and peer.ok:
            cells += [_ratio(r.median / peer.median), peer.name]
        else:
            cells += ["-", ""]
        rows.append(cells)
    print_table(["implementation", "start method", "runs", "median", "min", "above floor",
                 "ratio", "to"], rows)
    print_notes(results, report.notes.get("g", []))


def print_h(report: Report) -> None:
    print(f"\n(h) thread mode: {SLEEP_TASKS:,} submit(time.sleep, {SLEEP_SECONDS}) then every "
          f"result; time per task (and of the submit loop alone, per submit)")
    for workers in SLEEP_WORKERS:
        results = [r for r in report.h
                   if f"({workers}," in r.name or r.name.endswith(f"({workers})")]
        floor = SLEEP_SECONDS / workers

        def extra(r: Result, floor: float = floor) -> list[str]:
            return [*_metric_cells(r, "submit_each", fmt_time), fmt_time(floor)]

        print(f"  {workers} workers:")
        print_table([*HEADERS, "submit each", "ideal per task"],
                    comparison_rows(results, _bingfa(results), extra))
    print(f"\n(h) build a {BIG_THREAD_POOL:,}-thread pool and shut it down, doing nothing")

    def build_extra(r: Result) -> list[str]:
        return [*_metric_cells(r, "construct", fmt_time),
                *_metric_cells(r, "threads", lambda v: f"{v:,.0f}")]

    print_table([*HEADERS, "constructor", "threads started"],
                comparison_rows(report.h_build, _bingfa(report.h_build), build_extra))
    print_notes(report.h + report.h_build, [
        "ideal per task = sleep / workers; bingfa and ThreadPoolExecutor were timed "
        "interleaved, each warmed with one full run. threads started = threads alive "
        "right after the constructor, minus those before."])


def print_busy_compare(idle: Report, busy: Report, n: int) -> None:
    print(f"\nIdle against beside {n} busy loop(s): medians, slowdown = busy / idle")
    rows = []
    for attr in ("a", "b", "c", "d", "f", "f_big", "g", "h", "h_build", "i_sorted",
                 "i_shuffled"):
        busy_by_name = {r.name: r for r in getattr(busy, attr)}
        for r in getattr(idle, attr):
            other = busy_by_name.get(r.name)
            if other is None:
                continue
            cells = [f"({attr[0]}) {r.name}",
                     fmt_time(r.median) if r.ok else "-",
                     fmt_time(other.median) if other.ok else "-"]
            cells.append(_ratio(other.median / r.median) if r.ok and other.ok else "-")
            rows.append(cells)
    busy_e = {r.name: r for r in busy.e}
    for r in idle.e:
        other = busy_e.get(r.name)
        if other is not None and r.ok and other.ok:
            rows.append([f"(e) {r.name}: pulled - consumed",
                         f"{r.metric('ahead') or 0:,.0f}", f"{other.metric('ahead') or 0:,.0f}",
                         "-"])
    print_table(["implementation", "idle", "busy", "slowdown"], rows)
    for letter in ("c",):
        lines = [t for t in idle.targets + busy.targets if t["workload"] == letter]
        if lines:
            print(f"  ({letter}) targets: " + "; ".join(
                f"{t['target']}: {t['value']} {t['status']}" for t in lines))


def _beside_ideal_split(results: list[Result], ours: Result) -> str:
    """The floor beside an efficiency: the ideal split's, and bingfa's speed against it."""
    ideal = _find(results, "ideal split")
    ceiling = _efficiency(results, ideal) if ideal else None
    if ceiling is None or ideal is None:
        return ""
    return (f" (the ideal split {ceiling * 100:.1f}%: bingfa "
            f"{ideal.median / ours.median * 100:.1f}% of its speed)")


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

    def add_rss(workload: str, results: list[Result]) -> None:
        text = f"bingfa parent RSS growth <= {TARGET_RSS_MIB:.0f} MiB"
        ours = [r for r in results if r.name.startswith("bingfa") and r.ok
                and r.metric("rss_growth") is not None]
        if ours:
            worst = max(ours, key=lambda r: r.metric("rss_growth", max) or 0)
            value = worst.metric("rss_growth", max) or 0
            add(workload, text, f"{fmt_mib(value)} (worst: {worst.name.split(' (')[0]})",
                value <= TARGET_RSS_MIB * MIB)
        else:
            add(workload, text, "n/a", None)

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
            add("b", text, f"{e * 100:.1f}% (from mins {e_best * 100:.1f}%)"
                f"{_beside_ideal_split(report.b, bingfa_b)}", e >= TARGET_EFFICIENCY)
        else:
            add("b", text, "n/a", None)
    if "i" in only:
        for layout, results in (("sorted", report.i_sorted), ("shuffled", report.i_shuffled)):
            text = (f"bingfa parallel efficiency, skewed durations ({layout}) "
                    f">= {TARGET_SKEWED_EFFICIENCY:.0%}")
            ours = _find(results, "bingfa")
            e = _efficiency(results, ours) if ours else None
            if e is not None and ours is not None:
                add("i", text, f"{e * 100:.1f}%{_beside_ideal_split(results, ours)}",
                    e >= TARGET_SKEWED_EFFICIENCY)
            else:
                add("i", text, "n/a", None)
    if "c" in only:
        busy = report.settings.get("busy", 0)
        limit = TARGET_ROUND_TRIP_BUSY_VS_MP if busy else TARGET_ROUND_TRIP_VS_MP
        where = f" beside {busy} busy loop(s)" if busy else " (idle)"
        text = f"bingfa round trip <= {limit}x multiprocessing.Pool's{where}"
        bingfa_c = _find(report.c, "bingfa")
        mp_c = _find(report.c, "multiprocessing")
        if bingfa_c and mp_c:
            ratio = bingfa_c.median / mp_c.median
            add("c", text,
                f"{ratio:.2f}x ({fmt_time(bingfa_c.median)} vs {fmt_time(mp_c.median)})",
                ratio <= limit)
        else:
            add("c", text, "n/a", None)
    if "d" in only:
        for mine, theirs in (("bingfa Pool.imap (", "multiprocessing.Pool.imap("),
                             ("bingfa Pool.imap_unordered (",
                              "multiprocessing.Pool.imap_unordered(")):
            kind = mine.split(".")[1].rstrip(" (")
            text = f"bingfa {kind} (auto) <= {TARGET_LAZY_VS_MP}x mp {kind}(chunksize={LAZY_CHUNK})"
            ours, peer = _find(report.d, mine), _find(report.d, theirs)
            if ours and peer:
                ratio = ours.median / peer.median
                add("d", text, f"{ratio:.3f}x ({fmt_time(ours.median)} vs "
                    f"{fmt_time(peer.median)})", ratio <= TARGET_LAZY_VS_MP)
            else:
                add("d", text, "n/a", None)
        add_rss("d", report.d)
    if "e" in only:
        text = f"bingfa imap: pulled - consumed <= {TARGET_WINDOW:,} (bounded)"
        bingfa_e = [r for r in report.e if r.name.startswith("bingfa") and r.ok]
        if bingfa_e:
            worst = max(r.metric("ahead", max) or 0 for r in bingfa_e)
            add("e", text, f"{worst:,.0f} (worst run)", worst <= TARGET_WINDOW)
        else:
            add("e", text, "n/a", None)
        add_rss("e", report.e)
    if "f" in only:
        text = (f"bingfa map (auto) <= {TARGET_LARGE_VS_BEST}x the best of PPE, mp(chunksize=1), "
                f"loky, mpire(chunk_size=1)")
        ours = _find(report.f, "bingfa Pool.map (")
        peers = [r for r in report.f if r.ok and r.name.split()[0] in (
            "ProcessPoolExecutor.map", "multiprocessing.Pool.map(chunksize=1)", "loky", "mpire")]
        if ours and peers:
            best = min(peers, key=lambda r: r.median)
            ratio = ours.median / best.median
            add("f", text, f"{ratio:.3f}x (best: {best.name.split()[0]} "
                f"{fmt_time(best.median)})", ratio <= TARGET_LARGE_VS_BEST)
        else:
            add("f", text, "n/a", None)
    if "g" in only:
        for mine, theirs, limit in (
                ("bingfa Pool(2) (default", "multiprocessing forkserver",
                 TARGET_COLD_VS_FORKSERVER),
                ("bingfa Pool(2, start_method='fork')", "multiprocessing fork Pool",
                 TARGET_COLD_FORK_VS_FORK),
                (COLD_IMPORT_BINGFA, COLD_IMPORT_MP, TARGET_IMPORT_VS_MP)):
            ours, peer = _find(report.g, mine), _find(report.g, theirs)
            label = {"bingfa Pool(2) (default": "bingfa cold start",
                     "bingfa Pool(2, start_method='fork')": "bingfa fork cold start",
                     COLD_IMPORT_BINGFA: "import bingfa; bingfa.Pool"}[mine]
            peer_label = {"multiprocessing forkserver": "mp forkserver",
                          "multiprocessing fork Pool": "mp fork",
                          COLD_IMPORT_MP: "import multiprocessing.pool"}[theirs]
            text = f"{label} <= {limit}x {peer_label}"
            if ours and peer:
                ratio = ours.median / peer.median
                add("g", text, f"{ratio:.3f}x ({fmt_time(ours.median)} vs "
                    f"{fmt_time(peer.median)})", ratio <= limit)
            else:
                add("g", text, "n/a", None)
    if "h" in only:
        for workers in SLEEP_WORKERS:
            text = f"bingfa thread pool ({workers} workers) <= {TARGET_THREADS_VS_TPE}x TPE"
            ours = _find(report.h, f"bingfa Pool({workers},")
            peer = _find(report.h, f"ThreadPoolExecutor({workers})")
            if ours and peer:
                ratio = ours.median / peer.median
                add("h", text, f"{ratio:.3f}x ({fmt_time(ours.median)} vs "
                    f"{fmt_time(peer.median)} per task)", ratio <= TARGET_THREADS_VS_TPE)
            else:
                add("h", text, "n/a", None)
        text = (f"bingfa Pool({BIG_THREAD_POOL:,}, mode='thread') build + shutdown "
                f"< {TARGET_BIG_POOL_SECONDS * 1e3:.0f} ms")
        ours = _find(report.h_build, "bingfa")
        if ours:
            add("h", text, fmt_time(ours.median), ours.median < TARGET_BIG_POOL_SECONDS)
        else:
            add("h", text, "n/a", None)


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
        if proc.pid in BUSY_PIDS:
            continue
        text, zombie = _describe(proc)
        if zombie:
            report.anomalies.append(f"unreaped child process: {text}")
        elif _is_helper(proc):
            helpers.append(text)
    print("\nProcesses")
    if helpers:
        print("  helper processes still running (multiprocessing, loky and bingfa keep these "
              "until exit):")
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


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


WORKLOADS = "abcdefghi"


def _workloads(text: str) -> set[str]:
    chosen = {part.strip().lower() for part in text.split(",") if part.strip()}
    unknown = chosen - set(WORKLOADS)
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"choose from {', '.join(WORKLOADS)} (comma-separated), got {text!r}")
    return chosen


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark bingfa's pools against multiprocessing, "
                    "concurrent.futures, joblib, mpire, pebble and loky.")
    parser.add_argument("--repeats", type=_positive_int, default=None,
                        help="timed runs per measurement (default 7, 1 with --quick); the "
                             "median is reported. (e) runs at most 3 times, (g) at least 9 "
                             "(3 with --quick)")
    parser.add_argument("--slow-repeats", type=_positive_int, default=None,
                        help="timed runs for the chunksize-1 peers in (a) and the slow lazy "
                             "maps (mpire, joblib) in (d) (default 3, 1 with --quick)")
    parser.add_argument("--only", type=_workloads, default=set("abc"),
                        help="workloads to run, e.g. 'a,c' or 'd,e,f,g,h' (default: a,b,c)")
    load = parser.add_mutually_exclusive_group()
    load.add_argument("--busy", type=_non_negative_int, default=0, metavar="N",
                      help="run N busy-loop processes beside the whole benchmark")
    load.add_argument("--busy-compare", type=_positive_int, default=None, metavar="N",
                      help="run the workloads idle, then again beside N busy loops, and "
                           "print both")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes and 1 repeat, for development")
    parser.add_argument("--timeout", type=float, default=RUN_TIMEOUT, metavar="SECONDS",
                        help="deadline of each pool opening + warm-up, timed run and "
                             f"shutdown; a pool that overruns is skipped (default "
                             f"{RUN_TIMEOUT:.0f})")
    parser.add_argument("--json", metavar="FILE", help="also write the raw numbers to FILE")
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 7
    if args.slow_repeats is None:
        args.slow_repeats = 1 if args.quick else 3
    return args


def apply_quick() -> None:
    """Shrink every workload for a development run (--quick)."""
    global MAP_ITEMS, SLOW_WARMUP_ITEMS, CPU_ITEMS, ROUND_TRIPS, ROUND_TRIP_WARMUP
    global LAZY_ITEMS, LAZY_WARMUP_ITEMS, SLOW_CONSUMER_SECONDS, ARRAYS, BIG_ARRAY_MIB
    global COLD_RUNS, SLEEP_TASKS, SKEWED_TASKS
    MAP_ITEMS, SLOW_WARMUP_ITEMS = 20_000, 500
    CPU_ITEMS = 200
    ROUND_TRIPS, ROUND_TRIP_WARMUP = 300, 20
    LAZY_ITEMS, LAZY_WARMUP_ITEMS = 200_000, 5_000
    SLOW_CONSUMER_SECONDS = 3.0
    ARRAYS, BIG_ARRAY_MIB = 8, 32
    COLD_RUNS = 3
    SLEEP_TASKS = 2_000
    SKEWED_TASKS = 200


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


def run_pass(args: argparse.Namespace, impls: dict[str, Impl], report: Report) -> None:
    """Every chosen workload once, its table printed as soon as it is measured."""
    settings = report.settings
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
    if "d" in args.only:
        log(f"\n(d) lazy imap over {LAZY_ITEMS:,} generated items ...")
        run_d(impls, args.repeats, args.slow_repeats, report)
        print_d(report)
        sys.stdout.flush()
    if "e" in args.only:
        log(f"\n(e) slow consumer, {SLOW_CONSUMER_SECONDS:.0f} s a run ...")
        run_e(impls, args.repeats, report)
        print_e(report)
        sys.stdout.flush()
    if "f" in args.only:
        log(f"\n(f) {ARRAYS} arrays of {ARRAY_MIB} MiB ...")
        run_f(impls, args.repeats, report)
        print_f(report)
        sys.stdout.flush()
    if "g" in args.only:
        log("\n(g) cold starts ...")
        run_g(impls, args.repeats, report)
        print_g(report)
        sys.stdout.flush()
    if "h" in args.only:
        log(f"\n(h) thread mode: {SLEEP_TASKS:,} sleeps ...")
        run_h(args.repeats, report)
        print_h(report)
        sys.stdout.flush()
    if "i" in args.only:
        log(f"\n(i) skewed durations, {SKEWED_TASKS:,} tasks ...")
        run_i(impls, args.repeats, report)
        print_i(report)
        sys.stdout.flush()
    evaluate_targets(report, args.only)
    print_summary(report)
    print_processes(report)


SIGTERM_GRACE_SECONDS = 5.0


def _unwind_on_sigterm() -> None:
    """Make SIGTERM (``timeout``, ``kill``) unwind the benchmark like Ctrl-C does.

    By default SIGTERM ends the process where it stands: the peers' pools open
    in it are never closed, and a peer whose workers do not watch their parent
    (mpire's did) leaves them running and spinning. Raised as SystemExit, it
    runs every ``with`` block on the way out; a peer whose shutdown waits for
    its queued work (ProcessPoolExecutor with chunksize 1) gets
    SIGTERM_GRACE_SECONDS, then every process the benchmark started is
    killed and it exits. A forked child (a peer's worker) inherits the
    handler: there SIGTERM keeps its default meaning.
    """
    benchmark = os.getpid()

    def kill_everything_started() -> None:
        for child in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                child.kill()
        os._exit(128 + signal.SIGTERM)

    def on_sigterm(signum: int, frame: Any) -> None:
        if os.getpid() != benchmark:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        deadline = threading.Timer(SIGTERM_GRACE_SECONDS, kill_everything_started)
        deadline.daemon = True
        deadline.start()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_sigterm)


def main(argv: list[str] | None = None) -> int:
    global RUN_TIMEOUT
    _unwind_on_sigterm()
    args = parse_args(argv)
    if args.quick:
        apply_quick()
    RUN_TIMEOUT = args.timeout
    started = time.perf_counter()
    impls, missing = available_impls()
    machine = machine_info()
    settings: dict[str, Any] = {
        "workers": WORKERS, "repeats": args.repeats, "slow_repeats": args.slow_repeats,
        "only": sorted(args.only), "impls": sorted(impls), "quick": args.quick,
        "timeout": RUN_TIMEOUT, "map_items": MAP_ITEMS, "cpu_items": CPU_ITEMS,
        "round_trips": ROUND_TRIPS, "lazy_items": LAZY_ITEMS,
        "slow_consumer_seconds": SLOW_CONSUMER_SECONDS, "arrays": ARRAYS,
        "array_mib": ARRAY_MIB, "big_array_mib": BIG_ARRAY_MIB, "cold_runs": COLD_RUNS,
        "sleep_tasks": SLEEP_TASKS, "big_thread_pool": BIG_THREAD_POOL,
        "skewed_tasks": SKEWED_TASKS,
        "mpire_keep_alive": "mpire" in impls and _mpire_keep_alive(),
    }
    print_machine(machine)
    if args.quick:
        print("  --quick: small sizes, 1 repeat unless --repeats says otherwise "
              "(development figures, not for the record)")
    loads = [0, args.busy_compare] if args.busy_compare is not None else [args.busy]
    reports: list[Report] = []
    for k, n in enumerate(loads):
        report = Report(machine=machine, settings=dict(settings, busy=n))
        report.anomalies.extend(missing)
        with BusyLoad(n) as load:
            if len(loads) > 1:
                what = "idle" if n == 0 else f"beside {n} busy loop(s)"
                print(f"\n=== pass {k + 1} of {len(loads)}: {what} ===")
            print(f"  load: {load.describe()}; load average now "
                  f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
            sys.stdout.flush()
            run_pass(args, impls, report)
        reports.append(report)
    if len(reports) == 2:
        print_busy_compare(reports[0], reports[1], loads[1])
    elapsed = time.perf_counter() - started
    load_avg = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\nTotal time {elapsed:.0f} s; load average at the end: {load_avg}")
    for report in reports:
        report.settings["total_seconds"] = elapsed

    if args.json:
        data: dict[str, Any] = reports[0].to_json() if len(reports) == 1 else {
            "idle": reports[0].to_json(), "busy": reports[1].to_json()}
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2)
        print(f"Raw numbers written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
