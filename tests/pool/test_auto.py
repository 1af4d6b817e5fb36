"""mode="auto" measuring real tasks: where each kind of work ends up, and that nothing is lost.

The contract suite runs on auto mode as well (tests/contracts); these check the
choice itself. Each workload is far from the line between threads and
processes, so the choice does not depend on how busy the machine is.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import sys
import threading
import time

import pytest
from conftest import wait_at_gate, wait_until

import bingfa as bf


def spin(n):
    """Pure-Python work: holds the GIL."""
    total = 0
    for i in range(n):
        total += i % 7
    return total


def spin_where(n):
    return spin(n), os.getpid()


def sleep_where(seconds):
    time.sleep(seconds)
    return os.getpid()


def hash_where(data):
    for _ in range(4):
        hashlib.sha256(data).digest()
    return os.getpid()


def spin_with_lock(n, lock):
    with lock:
        pass
    return spin(n)


async def fetch(x):
    await asyncio.sleep(0)
    return x + 1


SPIN = 300_000  # about 10-20 ms here
# Where every core is taken by other programs, two threads of pure Python get
# more CPU than one (the scheduler favours threads that sleep on the GIL), and
# a probe reads such work as letting the GIL go about one time in ten (see
# docs/benchmarks.md): a test that needs processes chosen gives it three pools.
TRIES = 3


def until_processes(run):
    """``run(pool)`` on fresh auto pools until one chooses processes (at most TRIES)."""
    for _ in range(TRIES):
        with bf.Pool(2, mode="auto") as pool:
            outcome = run(pool)
            if pool.mode == "process":
                return pool, outcome
    return pool, outcome


def test_nothing_is_chosen_before_work_comes():
    with bf.Pool(mode="auto") as pool:
        assert pool.mode == "auto"
        assert pool.why is None
        assert "auto" in repr(pool)


def test_pure_python_cpu_work_goes_to_processes():
    def run(pool):
        results = pool.map(spin_where, [SPIN] * 80)
        assert [r for r, _ in results] == [spin(SPIN)] * 80
        if pool.mode == "process":
            # Decided once: the next map goes straight to the processes.
            again = pool.map(spin_where, [1000] * 10)
            assert all(pid != os.getpid() for _, pid in again)
        return results

    pool, results = until_processes(run)
    assert pool.mode == "process"
    assert "holds the GIL" in pool.why
    assert pool.start_method is not None
    pids = [pid for _, pid in results]
    # The first tasks ran in threads while measured; the rest in processes.
    assert os.getpid() in pids[:12]
    assert all(pid != os.getpid() for pid in pids[12:])


def test_a_free_threaded_python_keeps_cpu_work_in_threads(monkeypatch):
    # No free-threaded build can be installed here: what is injected is the
    # interpreter's own answer (sys._is_gil_enabled, Python 3.13+); the
    # measuring is real.
    monkeypatch.setattr(sys, "_is_gil_enabled", lambda: False, raising=False)
    with bf.Pool(2, mode="auto") as pool:
        results = pool.map(spin_where, [SPIN] * 40)
        assert [pid for _, pid in results] == [os.getpid()] * 40
        assert pool.mode == "thread"
        assert "free-threaded" in pool.why


def test_work_that_waits_stays_in_threads():
    with bf.Pool(4, mode="auto") as pool:
        pids = pool.map(sleep_where, [0.02] * 30)
        assert pids == [os.getpid()] * 30
        assert pool.mode == "thread"
        assert pool.why.startswith("it waits")


def test_work_that_releases_the_gil_on_its_data_stays_in_threads():
    # hashlib lets the GIL go while it hashes: threads hash side by side, on
    # data they share, where processes would need a copy each.
    data = os.urandom(4 << 20)
    with bf.Pool(2, mode="auto") as pool:
        pids = pool.map(hash_where, [data] * 30)
        assert pids == [os.getpid()] * 30
        assert pool.mode == "thread"
        # Idle, the reason is one of the first two; where every core is
        # taken, a window cut short may read hashing as waiting (for a core
        # or the GIL the caller's thread holds): threads all the same.
        assert any(why in pool.why for why in (
            "releases the GIL", "copying its arguments", "it waits"))


def test_arguments_that_cannot_be_pickled_keep_cpu_work_in_threads():
    lock = threading.Lock()
    with bf.Pool(2, mode="auto") as pool:
        assert pool.starmap(spin_with_lock, [(SPIN, lock)] * 80) == [spin(SPIN)] * 80
        assert pool.mode == "thread"
        assert "cannot be pickled" in pool.why


def test_a_coroutine_function_runs_in_async_mode():
    with bf.Pool(mode="auto") as pool:
        assert pool.map(fetch, range(5)) == [1, 2, 3, 4, 5]
        assert pool.mode == "async"


def test_submitted_cpu_work_moves_to_processes_and_every_future_settles():
    def run(pool):
        futures = [pool.submit(spin_where, SPIN) for _ in range(40)]
        results = [f.result(timeout=60) for f in futures]
        assert [r for r, _ in results] == [spin(SPIN)] * 40
        return results

    pool, results = until_processes(run)
    assert pool.mode == "process"
    assert any(pid != os.getpid() for _, pid in results)


def test_a_task_at_a_time_stays_in_threads():
    # A caller that waits for each result before the next gives nothing to
    # run side by side: processes would only add their round trip.
    with bf.Pool(2, mode="auto") as pool:
        pids = [pool.submit(spin_where, SPIN).result(timeout=30)[1] for _ in range(6)]
        assert pids == [os.getpid()] * 6
        assert pool.mode == "thread"
        # (On a busy host, the first window may settle it before the second
        # sees one task at a time: too little work left to start processes.)
        assert any(why in pool.why for why in (
            "one at a time", "no tasks are left", "starting processes would cost"))


def test_imap_measures_the_first_items_then_goes_on():
    def run(pool):
        got = list(pool.imap(spin_where, (SPIN for _ in range(30))))
        assert [r for r, _ in got] == [spin(SPIN)] * 30
        unordered = sorted(r for r, _ in pool.imap_unordered(spin_where, [10, 20, 30]))
        assert unordered == sorted([spin(10), spin(20), spin(30)])

    pool, _ = until_processes(run)
    assert pool.mode == "process"


def fail_on_three(x):
    if x == 3:
        raise ValueError("three")
    return x * 10


def test_lazy_maps_raise_each_error_at_its_turn_and_go_on():
    # The first items are the probe's; their errors keep their places too.
    expected = [0, 10, 20, "three", *(x * 10 for x in range(4, 20))]
    told = []
    with bf.Pool(2, mode="auto") as pool:
        got = []
        it = pool.imap(fail_on_three, range(20), progress=lambda done, total: told.append(done))
        for _ in range(20):
            try:
                got.append(next(it))
            except ValueError as error:
                got.append(str(error))
        assert got == expected
        assert told == list(range(1, 21))

    async def main():
        async with bf.Pool(2, mode="auto") as pool:
            got = []
            it = pool.aimap(fail_on_three, range(20))
            for _ in range(20):
                try:
                    got.append(await it.__anext__())
                except ValueError as error:
                    got.append(str(error))
            with pytest.raises(StopAsyncIteration):
                await it.__anext__()
            return got

    assert asyncio.run(main()) == expected


def test_each_function_is_decided_on_its_own():
    with bf.Pool(2, mode="auto") as pool:
        pool.map(sleep_where, [0.02] * 20)
        assert pool.mode == "thread"
        sleeper = pool.why
        pool.map(spin_where, [SPIN] * 40)
        assert pool.why != sleeper  # the spinner was measured, not taken for the sleeper
        # and the sleeper is still known: it runs in threads, measured no more
        assert pool.map(sleep_where, [0.001] * 4) == [os.getpid()] * 4
        assert pool.why != sleeper


def test_the_debug_log_says_why(caplog):
    caplog.set_level(logging.DEBUG, logger="bingfa.auto")
    with bf.Pool(2, mode="auto") as pool:
        pool.map(sleep_where, [0.02] * 10)
    lines = [r.getMessage() for r in caplog.records if r.name == "bingfa.auto"]
    assert lines == ["mode='auto' runs sleep_where in mode='thread': " + pool.why]


def test_amap_measures_without_blocking_the_loop():
    async def main():
        async with bf.Pool(2, mode="auto") as pool:
            results = await pool.amap(spin_where, [SPIN] * 60)
            return results, pool.mode

    for _ in range(TRIES):  # (see TRIES)
        results, mode = asyncio.run(main())
        assert [r for r, _ in results] == [spin(SPIN)] * 60
        if mode == "process":
            break
    assert mode == "process"


@pytest.mark.timeout(60)
def test_shutdown_waits_for_tasks_held_while_measuring(gate):
    pool = bf.Pool(1, mode="auto")
    first = pool.submit(wait_at_gate, gate.path)  # measured, and blocks the only thread
    later = [pool.submit(spin, 1000) for _ in range(5)]
    gate.release()
    pool.shutdown(wait=True)
    assert first.exception(timeout=0) is None
    assert [f.result(timeout=0) for f in later] == [spin(1000)] * 5


@pytest.mark.timeout(60)
def test_shutdown_without_waiting_still_runs_what_it_held(gate):
    pool = bf.Pool(1, mode="auto")
    first = pool.submit(wait_at_gate, gate.path)
    later = [pool.submit(spin, 1000) for _ in range(3)]
    pool.shutdown(wait=False)
    gate.release()
    assert first.exception(timeout=30) is None
    assert [f.result(timeout=30) for f in later] == [spin(1000)] * 3


@pytest.mark.timeout(60)
def test_terminate_fails_the_tasks_it_held(gate):
    pool = bf.Pool(1, mode="auto")
    first = pool.submit(wait_at_gate, gate.path)
    held = [pool.submit(spin, 1000) for _ in range(3)]
    pool.terminate()
    gate.release()
    for future in held:
        assert isinstance(future.exception(timeout=30), bf.PoolClosedError)
    first.exception(timeout=30)


def test_settings_are_checked_when_the_pool_is_made():
    with pytest.raises(ValueError, match="address"):
        bf.Pool(mode="auto", address="tcp://127.0.0.1:1")
    with pytest.raises(ValueError, match="workers"):
        bf.Pool(0, mode="auto")
    with pytest.raises(ValueError, match="start_method"):
        bf.Pool(mode="auto", start_method="teleport")
    for _ in range(TRIES):
        with bf.Pool(2, mode="auto", start_method="spawn") as pool:
            assert pool.start_method is None  # no process started yet
            pool.map(spin_where, [SPIN] * 40)
            if pool.mode == "process":
                break
    assert pool.start_method == "spawn"


def square(x):
    return x * x


def test_a_map_of_quick_tasks_is_chunked_right_from_its_first_chunk(monkeypatch):
    from bingfa._pool._jobs import ManyJob

    sizes = []
    take = ManyJob.take

    def recording(self, limit, workers):
        batch = take(self, limit, workers)
        if batch is not None:
            sizes.append(len(batch.items))
        return batch

    monkeypatch.setattr(ManyJob, "take", recording)
    shown = []
    n = 100_000
    with bf.Pool(2, mode="auto") as pool:
        results = pool.map(square, range(n), progress=lambda done, total: shown.append(done))
    assert results == [x * x for x in range(n)]
    # The probe's first items are not run again; the rest go in chunks sized
    # from what the probe measured, not 1, 2, 4, ... tasks while the pool learns.
    assert n - 12 <= sum(sizes) < n
    assert sizes[0] > 100, sizes[:10]
    assert shown == sorted(shown)
    assert shown[-1] == n


@pytest.mark.parametrize("how", ["map", "submit"])
def test_a_closure_going_to_processes_is_pickled_once(monkeypatch, how):
    from bingfa._core import _serialization
    from bingfa._pool._auto import _sizes

    table = {i: i * 3 for i in range(1000)}

    def spin_plus(n):
        return spin(n) + table[7]

    pickled = []
    dumps_function = _serialization.dumps_function

    def counting(fn, *args):
        if fn is spin_plus:
            pickled.append(fn)
        return dumps_function(fn, *args)

    monkeypatch.setattr(_serialization, "dumps_function", counting)
    monkeypatch.setattr(_sizes, "dumps_function", counting)

    def run(pool):
        pickled.clear()
        if how == "map":
            results = pool.map(spin_plus, [SPIN] * 60)
        else:
            results = [f.result(timeout=60) for f in [pool.submit(spin_plus, SPIN)
                                                      for _ in range(60)]]
        assert results == [spin(SPIN) + 21] * 60

    pool, _ = until_processes(run)
    assert pool.mode == "process"
    # Sized once to decide, and the same bytes sent to the workers.
    assert len(pickled) == 1


def test_a_blocked_thread_does_not_read_as_ready_to_run():
    from bingfa._pool._auto._counters import runnable

    release, started = threading.Event(), threading.Event()

    def block():
        started.set()
        release.wait()

    thread = threading.Thread(target=block)
    thread.start()
    try:
        started.wait(5)
        # It blocks within moments of saying it started.
        assert wait_until(lambda: not runnable(thread.native_id), timeout=5)
        assert runnable(threading.get_native_id())  # this one is running
    finally:
        release.set()
        thread.join(5)


@pytest.mark.parametrize("n", [1, 12, 13, 200])
def test_every_map_face_puts_the_measured_items_first(n):
    # The first items are the probe's; the rest are mapped in place (skipped,
    # not copied), and a map no longer than the probe's share has no rest.
    expected = [x * x for x in range(n)]
    with bf.Pool(2, mode="auto") as pool:  # a pool each: each face measures
        assert pool.map(square, range(n)) == expected
    with bf.Pool(2, mode="auto") as pool:
        assert pool.map_async(square, range(n)).get(timeout=30) == expected

    async def main():
        async with bf.Pool(2, mode="auto") as pool:
            return await pool.amap(square, range(n))

    assert asyncio.run(main()) == expected
