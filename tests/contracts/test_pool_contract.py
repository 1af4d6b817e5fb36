"""The Pool contract: the same cases run on every mode (see the ``mode`` fixture).

A test that needs something only one mode can give (a thread-only Event to
unblock a stuck task, process ids) branches on ``mode`` for that part only; the
behaviour asserted is the same.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import gc
import itertools
import multiprocessing
import os
import queue
import signal
import subprocess
import sys
import threading
import traceback
from pathlib import Path

import pytest
from conftest import InThread, pid_alive, wait_at_gate, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bingfa as bf
from bingfa._pool._imap import MAX_IN_FLIGHT_PER_WORKER

# Modes whose tasks run in another process: a task's error arrives rebuilt, with the
# worker's traceback attached as a RemoteTraceback.
REMOTE_MODES = ("process", "dask", "ray")
# Modes that run on a cluster (Dask, Ray), whose worker processes bingfa does not own.
CLUSTER_MODES = ("dask", "ray")
# Modes whose tasks here run in threads of the test's process: a thread-only Event
# can unblock them. Auto mode measures the tasks these tests block on as
# waiting, and waiting work runs in threads.
THREADED = ("thread", "auto")

# --- task functions (module level: importable by reference in workers) ---------------


def square(x):
    return x * x


def add(a, b=0, *, c=0):
    return a + b + c


def getpid(_=None):
    return os.getpid()


class Boom(Exception):
    """A task's own exception type."""


def fail_on(x, bad):
    if x in bad:
        raise Boom(f"bad item {x}")
    return x * x


def raise_it(exc):
    raise exc


def raise_boom(message):
    raise Boom(message)


def identity_worker(x):
    return bf.worker_id(), bf.worker_state(), x


def init_state(tag):
    return {"tag": tag, "pid": os.getpid()}


def block_forever():
    # Stands in for a task that never returns. The wait is a safety net only:
    # the pool kills the worker (process mode) long before it passes.
    threading.Event().wait(60)
    return "woke up"


def first_attempt_blocks(marker, gate=None):
    """Blocks on the first attempt (leaving a marker); returns on the second."""
    path = Path(marker)
    if not path.exists():
        path.write_text("first attempt")
        if gate is not None:
            gate.wait(60)
        else:
            block_forever()
        return "first attempt returned"
    return "second attempt"


def inner_pool_sum(n, inner_mode):
    with bf.Pool(2, mode=inner_mode) as pool:
        squares = pool.map(square, range(n))
        ids = set(pool.map(lambda _: bf.worker_id(), range(8), chunksize=1))
    return sum(squares), ids


class Calculator:
    factor = 3

    def __init__(self, offset):
        self.offset = offset

    def shift(self, x):
        return x + self.offset

    @classmethod
    def scale(cls, x):
        return x * cls.factor

    @staticmethod
    def negate(x):
        return -x


def make_closure(k):
    def times_k(x):
        return x * k

    return times_k


# --- submit, apply_async ---------------------------------------------------------------


def test_submit_returns_future_with_result(mode):
    with bf.Pool(2, mode=mode) as pool:
        fut = pool.submit(add, 1, 2, c=4)
        assert isinstance(fut, bf.Future)
        assert isinstance(fut, concurrent.futures.Future)
        assert fut.result() == 7
        assert fut.done()
        assert fut.exception() is None
        assert [f.result() for f in [pool.submit(square, i) for i in range(20)]] == [
            i * i for i in range(20)]


def test_apply_and_apply_async(mode):
    results: queue.Queue = queue.Queue()
    errors: queue.Queue = queue.Queue()
    with bf.Pool(2, mode=mode) as pool:
        assert pool.apply(add, (1, 2), {"c": 3}) == 6
        ok = pool.apply_async(add, (2, 3), {"c": 1}, callback=results.put,
                              error_callback=errors.put)
        bad = pool.apply_async(raise_boom, ("from apply_async",), callback=results.put,
                               error_callback=errors.put)
        assert isinstance(ok, bf.AsyncResult)
        assert ok.get(timeout=30) == 6
        assert results.get(timeout=30) == 6
        err = errors.get(timeout=30)
        assert isinstance(err, Boom)
        assert "from apply_async" in str(err)
        with pytest.raises(Boom):
            bad.get(timeout=30)
        ok.wait(30)
        assert ok.ready()
        assert ok.successful()
        assert not bad.successful()
    assert results.empty()
    assert errors.empty()


def test_map_async_and_starmap_async(mode):
    results: queue.Queue = queue.Queue()
    errors: queue.Queue = queue.Queue()
    with bf.Pool(2, mode=mode) as pool:
        res = pool.map_async(square, range(20), callback=results.put, error_callback=errors.put)
        assert isinstance(res, bf.AsyncResult)
        assert res.get(timeout=30) == [i * i for i in range(20)]
        assert results.get(timeout=30) == [i * i for i in range(20)]  # the list, once
        assert res.ready()
        assert res.successful()
        star = pool.starmap_async(add, [(1, 2), (3, 4), (5,)], 1, callback=results.put)
        assert star.get(timeout=30) == [3, 7, 5]
        assert results.get(timeout=30) == [3, 7, 5]
        empty = pool.map_async(square, [], callback=results.put)
        assert empty.get(timeout=30) == []
        assert results.get(timeout=30) == []
        assert pool.map_async(square, iter(range(4)), chunksize=None).get(timeout=30) == [
            0, 1, 4, 9]

        async def main():
            return await pool.map_async(square, range(3))

        assert asyncio.run(main()) == [0, 1, 4]
    assert results.empty()
    assert errors.empty()


def test_map_async_error_callback_gets_the_first_error(mode):
    results: queue.Queue = queue.Queue()
    errors: queue.Queue = queue.Queue()
    with bf.Pool(2, mode=mode) as pool:
        res = pool.map_async(lambda x: fail_on(x, {3}), range(10), chunksize=1,
                             callback=results.put, error_callback=errors.put)
        with pytest.raises(Boom, match="bad item 3"):
            res.get(timeout=30)
        err = errors.get(timeout=30)
        assert isinstance(err, Boom)
        assert "bad item 3" in str(err)
        assert not res.successful()
        star = pool.starmap_async(int, [("1",), ("x",)], error_callback=errors.put)
        with pytest.raises(ValueError, match="invalid literal"):
            star.get(timeout=30)
        assert isinstance(errors.get(timeout=30), ValueError)
    assert results.empty()
    assert errors.empty()


@pytest.mark.timeout(40)
@pytest.mark.parametrize("how", ["cancel", "terminate"])
def test_map_async_stops_with_its_result_or_its_pool(mode, gate, tmp_path, how):
    task = functools.partial(first_waits_at_gate, gate_path=gate.path, folder=str(tmp_path))
    pool = bf.Pool(1, mode=mode)
    try:
        res = pool.map_async(task, range(10), chunksize=1)
        assert not res.done()
        if how == "cancel":
            assert res.cancel()
            assert res.cancelled()
            gate.release()
            pool.shutdown(wait=True)
        else:
            pool.terminate()
            assert isinstance(res.exception(timeout=30), bf.PoolClosedError)
    finally:
        gate.close()
        pool.terminate()
    ran = sorted(p.name for p in tmp_path.glob("ran-*"))
    assert len(ran) <= (1 if mode == "process" else 0), ran


def test_async_result_successful_before_ready_raises(mode, tmp_path):
    marker = tmp_path / "started"
    gate = threading.Event() if mode in THREADED else None
    try:
        with bf.Pool(1, mode=mode) as pool:
            res = pool.apply_async(first_attempt_blocks, (str(marker), gate))
            assert wait_until(marker.exists, timeout=30)
            assert not res.ready()
            with pytest.raises(ValueError, match="not ready"):
                res.successful()
            if gate is not None:
                gate.set()
                assert res.get(timeout=30) == "first attempt returned"
                assert res.successful()
            else:
                pool.terminate()
                assert isinstance(res.exception(), bf.PoolClosedError)
    finally:
        if gate is not None:
            gate.set()


# --- the map family --------------------------------------------------------------------


def test_map(mode):
    with bf.Pool(2, mode=mode) as pool:
        assert pool.map(square, range(100)) == [i * i for i in range(100)]
        assert pool.map(square, (i for i in range(10))) == [i * i for i in range(10)]


def test_starmap(mode):
    with bf.Pool(2, mode=mode) as pool:
        assert pool.starmap(add, [(1, 2), (3, 4), (5,)]) == [3, 7, 5]
        assert pool.starmap(add, zip(range(50), range(50), strict=True)) == [
            2 * i for i in range(50)]


def test_map_zips_several_iterables(mode):
    """As concurrent.futures' map and the builtin map: one item of each, shortest wins."""
    with bf.Pool(2, mode=mode) as pool:
        assert pool.map(pow, [2, 3, 4], range(5)) == [1, 3, 16]
        assert pool.map(add, range(100), itertools.count(1), chunksize=7) == [
            2 * i + 1 for i in range(100)]
        assert pool.map(lambda a, b, c: a + b + c, "ab", "cd", "efg") == ["ace", "bdf"]
        assert pool.map(pow, [2, 3], []) == []


def first_waits_at_gate(i, gate_path, folder):
    """Task 0 waits at the gate; the others leave a marker that they ran."""
    if i == 0:
        wait_at_gate(gate_path)
    else:
        Path(folder, f"ran-{i}").touch()
    return i


@pytest.mark.timeout(40)
def test_map_timeout_cancels_what_has_not_run(mode, gate, tmp_path):
    task = functools.partial(first_waits_at_gate, gate_path=gate.path, folder=str(tmp_path))
    with bf.Pool(1, mode=mode) as pool:
        assert pool.map(square, range(5), timeout=30) == [0, 1, 4, 9, 16]
        run = InThread(lambda: pool.map(task, range(10), chunksize=1, timeout=0.3))
        gave_up = run.finished(20)  # a hang detector, not a speed requirement
        gate.release()  # task 0 may go now, whatever happened
        assert gave_up, "map(timeout=) kept waiting"
        with pytest.raises(bf.ResultTimeoutError, match=r"did not finish within 0\.3 s") as info:
            run.result(10)
        assert isinstance(info.value, TimeoutError)
        assert isinstance(info.value, multiprocessing.TimeoutError)
        assert pool.map(square, range(3)) == [0, 1, 4]  # the pool goes on
    # Tasks 1..9 were cancelled, except the one chunk a process worker may
    # already hold in its pipe behind the running task.
    ran = sorted(p.name for p in tmp_path.glob("ran-*"))
    assert len(ran) <= (1 if mode == "process" else 0), ran


def test_imap_is_ordered(mode):
    with bf.Pool(2, mode=mode) as pool:
        assert list(pool.imap(square, range(200))) == [i * i for i in range(200)]
        assert list(pool.imap(square, iter(range(30)), chunksize=4)) == [
            i * i for i in range(30)]


def test_istarmap(mode):
    with bf.Pool(2, mode=mode) as pool:
        assert list(pool.istarmap(add, [(i, i) for i in range(40)])) == [
            2 * i for i in range(40)]


def test_imap_unordered(mode):
    with bf.Pool(2, mode=mode) as pool:
        got = list(pool.imap_unordered(square, range(200)))
        assert sorted(got) == [i * i for i in range(200)]


@pytest.mark.parametrize("chunksize", [1, 3, 7, 1000, "auto"])
def test_map_chunksizes(mode, chunksize):
    with bf.Pool(2, mode=mode) as pool:
        expected = [i * i for i in range(101)]
        assert pool.map(square, range(101), chunksize=chunksize) == expected
        assert list(pool.imap(square, range(101), chunksize=chunksize)) == expected
        assert sorted(pool.imap_unordered(square, range(101), chunksize=chunksize)) == expected
        assert pool.starmap(add, [(i, i) for i in range(101)], chunksize=chunksize) == [
            2 * i for i in range(101)]


def test_empty_inputs(mode):
    with bf.Pool(2, mode=mode) as pool:
        assert pool.map(square, []) == []
        assert pool.map(square, iter(())) == []
        assert pool.starmap(add, []) == []
        assert list(pool.imap(square, [])) == []
        assert list(pool.imap(square, iter([]))) == []
        assert list(pool.imap_unordered(square, [])) == []
        assert list(pool.istarmap(add, [])) == []
        # the pool still works after empty calls
        assert pool.map(square, [3]) == [9]


# --- what can be a task ----------------------------------------------------------------


def test_lambdas_closures_nested_functions_and_methods(mode):
    k = 5

    def nested(x):
        return x + k

    calc = Calculator(10)
    with bf.Pool(2, mode=mode) as pool:
        assert pool.submit(lambda x: x * 2, 21).result() == 42
        assert pool.map(lambda x: x + 1, range(5)) == [1, 2, 3, 4, 5]
        assert pool.map(nested, range(3)) == [5, 6, 7]
        assert pool.map(make_closure(4), range(3)) == [0, 4, 8]
        assert pool.submit(calc.shift, 1).result() == 11
        assert pool.map(calc.shift, range(3)) == [10, 11, 12]
        assert pool.map(Calculator.scale, range(3)) == [0, 3, 6]
        assert pool.map(Calculator.negate, range(3)) == [0, -1, -2]
        assert pool.submit(Calculator.scale, 2).result() == 6
        assert list(pool.imap(lambda x: -x, range(3))) == [0, -1, -2]
        assert pool.apply_async(lambda: "lambda via apply_async").get(30) == (
            "lambda via apply_async")


def test_local_class_instances_travel(mode):
    class Point:
        def __init__(self, x, y):
            self.x, self.y = x, y

        def norm1(self):
            return abs(self.x) + abs(self.y)

    with bf.Pool(2, mode=mode) as pool:
        assert pool.map(Point.norm1, [Point(1, -2), Point(3, 4)]) == [3, 7]
        back = pool.submit(lambda: Point(5, 6)).result()
        assert (back.x, back.y) == (5, 6)


# --- errors ------------------------------------------------------------------------------


def test_task_exception_keeps_type_and_traceback(mode):
    original = Boom("kaboom 42")
    with bf.Pool(2, mode=mode) as pool:
        fut = pool.submit(raise_it, original)
        with pytest.raises(Boom, match="kaboom 42") as info:
            fut.result()
    exc = info.value
    assert type(exc) is Boom
    if mode in REMOTE_MODES:
        cause = exc.__cause__
        assert isinstance(cause, bf.RemoteTraceback)
        assert "raise_it" in cause.text
        assert "kaboom 42" in cause.text
        assert "Traceback" in cause.text
        assert "raise_it" in str(cause)
    else:
        assert exc is original
        frames = [f.name for f in traceback.extract_tb(exc.__traceback__)]
        assert "raise_it" in frames


def test_task_exception_in_map_keeps_type(mode):
    with bf.Pool(2, mode=mode) as pool, pytest.raises(Boom, match="bad item 4") as info:
        pool.map(lambda x: fail_on(x, {4}), range(10))
    if mode in REMOTE_MODES:
        assert isinstance(info.value.__cause__, bf.RemoteTraceback)
        assert "fail_on" in info.value.__cause__.text


def test_map_raises_the_first_error(mode):
    # One worker and chunks of one: tasks run in input order, so the first
    # error is both the earliest in the input and the first to happen.
    with bf.Pool(1, mode=mode) as pool:
        with pytest.raises(Boom, match=r"bad item 3$"):
            pool.map(lambda x: fail_on(x, {3, 7, 15}), range(20), chunksize=1)
        with pytest.raises(Boom, match=r"bad item 3$"):
            pool.starmap(fail_on, [(x, {3, 7, 15}) for x in range(20)], chunksize=1)
        # and the pool is still usable
        assert pool.map(square, range(5)) == [0, 1, 4, 9, 16]


def test_map_error_with_several_workers_is_one_of_the_failures(mode):
    with bf.Pool(2, mode=mode) as pool, pytest.raises(Boom) as info:
        pool.map(lambda x: fail_on(x, {10, 60}), range(100))
    assert str(info.value) in {"bad item 10", "bad item 60"}


def test_imap_continues_after_an_error(mode):
    with bf.Pool(2, mode=mode) as pool:
        it = pool.imap(lambda x: fail_on(x, {3, 6}), range(10), chunksize=2)
        assert [next(it), next(it), next(it)] == [0, 1, 4]
        with pytest.raises(Boom, match="bad item 3"):
            next(it)
        assert next(it) == 16
        assert next(it) == 25
        with pytest.raises(Boom, match="bad item 6"):
            next(it)
        assert list(it) == [49, 64, 81]


def test_imap_unordered_continues_after_an_error(mode):
    with bf.Pool(2, mode=mode) as pool:
        it = pool.imap_unordered(lambda x: fail_on(x, {5}), range(20), chunksize=3)
        values, errors = [], []
        while True:
            try:
                values.append(next(it))
            except StopIteration:
                break
            except Boom as exc:
                errors.append(str(exc))
        assert errors == ["bad item 5"]
        assert sorted(values) == [i * i for i in range(20) if i != 5]


def test_imap_unordered_over_an_endless_iterator_is_lazy(mode):
    pulled = 0

    def endless():
        nonlocal pulled
        for i in itertools.count():
            pulled += 1
            yield i

    # Read ahead by at most the documented window: for tasks this tiny, chunks
    # grow to thousands, and 16,384 tasks per worker is the cap (and auto mode
    # measures a dozen more first).
    read_ahead = 2 * MAX_IN_FLIGHT_PER_WORKER + 100
    with bf.Pool(2, mode=mode) as pool:
        it = pool.imap_unordered(square, endless())
        first = list(itertools.islice(it, 50))
        it.close()
        assert len(first) == 50
        assert len(set(first)) == 50
        assert all(int(v**0.5) ** 2 == v for v in first)
        assert pulled < read_ahead
        # the pool is still usable after the iterator was closed
        assert pool.map(square, range(3)) == [0, 1, 4]
    assert pulled < read_ahead


def test_imap_over_an_endless_iterator_is_lazy(mode):
    counter = itertools.count()
    pulled = []

    def endless():
        for i in counter:
            pulled.append(i)
            yield i

    with bf.Pool(2, mode=mode) as pool:
        it = pool.imap(square, endless(), chunksize=2)
        assert list(itertools.islice(it, 50)) == [i * i for i in range(50)]
        it.close()
        assert len(pulled) < 10_000


# --- workers: initializer, state, id, recycling -----------------------------------------


def state_and_pid(x):
    return bf.worker_id(), bf.worker_state(), os.getpid(), x


def test_initializer_state_and_worker_id(mode):
    with bf.Pool(2, mode=mode, initializer=init_state, initargs=("model-v1",)) as pool:
        results = pool.map(state_and_pid, range(40), chunksize=1)
    assert [x for *_, x in results] == list(range(40))
    for wid, state, pid, _ in results:
        assert wid in (0, 1)
        assert state["tag"] == "model-v1"
        # the state was built by the initializer in the process running the task
        assert state["pid"] == pid
    if mode == "process":
        assert all(pid != os.getpid() for _, _, pid, _ in results)
        # one state per worker process, not one per task
        assert len({(wid, pid) for wid, _, pid, _ in results}) <= 2


def refuse_to_start():
    raise Boom("the initializer failed")


@pytest.mark.timeout(30)
def test_failing_initializer(mode):
    with bf.Pool(2, mode=mode, initializer=refuse_to_start) as pool:
        with pytest.raises(bf.InitializerError) as info:
            pool.submit(square, 2).result(timeout=30)
        assert "the initializer failed" in str(info.value) or isinstance(
            info.value.__cause__, Boom)
        with pytest.raises(bf.InitializerError):
            pool.map(square, range(4))
    assert issubclass(bf.InitializerError, RuntimeError)


def test_worker_id_in_range(mode):
    with bf.Pool(3, mode=mode) as pool:
        ids = pool.map(lambda _: bf.worker_id(), range(60), chunksize=1)
    assert set(ids) <= {0, 1, 2}


def test_context_outside_a_worker():
    assert bf.worker_id() is None
    assert bf.cancelled() is False
    with pytest.raises(RuntimeError):
        bf.worker_state()


def test_worker_state_is_none_without_initializer(mode):
    with bf.Pool(1, mode=mode) as pool:
        assert pool.submit(bf.worker_state).result() is None


_seen_threads: list[threading.Thread] = []


def record_thread(x):
    _seen_threads.append(threading.current_thread())
    return x, os.getpid()


def test_max_tasks_per_worker_replaces_workers(mode):
    if mode in CLUSTER_MODES:
        pytest.skip("a cluster's worker processes are the cluster's: bingfa does not replace "
                    "them, and refuses max_tasks_per_worker with a ValueError")
    _seen_threads.clear()
    with bf.Pool(1, mode=mode, max_tasks_per_worker=2) as pool:
        results = pool.map(record_thread, range(6), chunksize=1)
        more = [pool.submit(record_thread, i).result() for i in range(6, 10)]
    assert [x for x, _ in results + more] == list(range(10))
    if mode == "process":
        pids = {pid for _, pid in results}
        assert len(pids) >= 3
        assert os.getpid() not in pids
        assert len({pid for _, pid in results + more}) >= 5
    else:
        assert len({id(t) for t in _seen_threads}) >= 5
    _seen_threads.clear()


# --- progress ------------------------------------------------------------------------------


def test_progress_bar(mode, capsys):
    with bf.Pool(2, mode=mode) as pool:
        assert pool.map(square, range(30), progress=True) == [i * i for i in range(30)]
        assert list(pool.imap(square, range(30), progress=True)) == [i * i for i in range(30)]
    assert bf.map(square, range(10), mode=mode, workers=2, progress=True) == [
        i * i for i in range(10)]
    err = capsys.readouterr().err
    assert "30" in err


def test_progress_callable(mode):
    calls = []
    with bf.Pool(2, mode=mode) as pool:
        assert pool.map(square, range(25), progress=lambda d, t: calls.append((d, t))) == [
            i * i for i in range(25)]
    assert calls
    assert calls[-1] == (25, 25)
    assert all(t == 25 for _, t in calls)
    dones = [d for d, _ in calls]
    assert dones == sorted(dones)

    calls.clear()
    with bf.Pool(2, mode=mode) as pool:
        assert list(pool.imap(square, range(25), progress=lambda d, t: calls.append((d, t)))
                    ) == [i * i for i in range(25)]
    assert calls[-1] == (25, 25)


def _progress_run(pool, mode, call, items, report):
    star = [(x,) for x in items]
    if call == "map":
        return pool.map(square, items, chunksize=3, progress=report)
    if call == "starmap":
        return pool.starmap(square, star, chunksize=3, progress=report)
    if call == "imap":
        return list(pool.imap(square, items, chunksize=3, progress=report))
    if call == "imap_unordered":
        return sorted(pool.imap_unordered(square, items, chunksize=3, progress=report))
    if call == "istarmap":
        return list(pool.istarmap(square, star, chunksize=3, progress=report))
    if call == "bf.map":
        return bf.map(square, items, mode=mode, workers=2, chunksize=3, progress=report)
    assert call == "bf.imap"
    return list(bf.imap(square, items, mode=mode, workers=2, chunksize=3, progress=report))


@pytest.mark.parametrize(
    "call", ["map", "starmap", "imap", "imap_unordered", "istarmap", "bf.map", "bf.imap"])
def test_progress_callable_hears_every_task_in_order(mode, call):
    """(1, n), (2, n), ..., (n, n): once per task, though results come by chunks."""
    calls = []

    def report(done, total):
        calls.append((done, total))

    with bf.Pool(2, mode=mode) as pool:
        assert _progress_run(pool, mode, call, list(range(10)), report) == [
            i * i for i in range(10)]
        assert calls == [(i, 10) for i in range(1, 11)]
        calls.clear()
        assert _progress_run(pool, mode, call, [], report) == []
        assert calls == []  # no task, no call
        if call.startswith(("imap", "istarmap")):
            calls.clear()
            unsized = ((x,) for x in range(7)) if call == "istarmap" else iter(range(7))
            got = list(getattr(pool, call)(square, unsized, chunksize=3, progress=report))
            assert sorted(got) == [i * i for i in range(7)]
            assert calls == [(i, None) for i in range(1, 8)]


def test_progress_rejects_garbage(mode):
    with bf.Pool(1, mode=mode) as pool, pytest.raises(TypeError):
        pool.map(square, range(3), progress="yes please")


# --- timeouts and retries ------------------------------------------------------------------


def _block_on_three(gate):
    """A task that blocks on item 3: on ``gate`` if given, else for good."""

    def maybe_block(x):
        if x == 3:
            if gate is not None:
                gate.wait(60)
            else:
                block_forever()
        return x * x

    return maybe_block


@pytest.mark.timeout(30)
def test_task_timeout(mode):
    gate = threading.Event()
    seen = []
    finished = threading.Event()

    def stuck():
        gate.wait(60)
        seen.append(bf.cancelled())
        finished.set()
        return "too late"

    task = stuck if mode in THREADED else block_forever
    with bf.Pool(2, mode=mode, task_timeout=1.0) as pool:
        fut = pool.submit(task)
        try:
            with pytest.raises(bf.TaskTimeoutError) as info:
                fut.result(timeout=30)
            assert isinstance(info.value, TimeoutError)
            assert info.value.timeout == 1.0
            assert info.value.task
            # the pool carries on
            assert pool.map(square, range(10)) == [i * i for i in range(10)]
        finally:
            gate.set()
    if mode in THREADED:
        assert finished.wait(30)
        assert seen == [True]


def poll_until_cancelled(gate_path):
    """A long task that stops early once the pool says it was cancelled."""
    rounds = 0
    while not bf.cancelled():
        rounds += 1
        threading.Event().wait(0.01)  # the work between two checks
    wait_at_gate(gate_path)
    return rounds


@pytest.mark.timeout(30)
def test_a_timed_out_task_can_see_it_and_stop(mode, gate):
    results: queue.Queue = queue.Queue()

    def task(path):
        rounds = poll_until_cancelled(path)
        results.put(rounds)
        return rounds

    fn = task if mode in THREADED else poll_until_cancelled
    with bf.Pool(1, mode=mode, task_timeout=1.0) as pool:
        with pytest.raises(bf.TaskTimeoutError):
            pool.submit(fn, gate.path).result(timeout=30)
        gate.release()
        if mode in THREADED:
            # the abandoned thread saw bf.cancelled() and returned by itself
            assert results.get(timeout=30) > 0
        assert pool.submit(square, 6).result(timeout=30) == 36


@pytest.mark.timeout(30)
def test_task_timeout_fails_only_that_task(mode):
    gate = threading.Event()
    maybe_block = _block_on_three(gate if mode in THREADED else None)

    with bf.Pool(2, mode=mode, task_timeout=1.0) as pool:
        outcomes = {}
        try:
            it = pool.imap(maybe_block, range(8), chunksize=1)
            for i in range(8):
                try:
                    outcomes[i] = next(it)
                except bf.TaskTimeoutError as exc:
                    outcomes[i] = exc
        finally:
            gate.set()  # leaving the block waits for the abandoned thread
    assert isinstance(outcomes.pop(3), bf.TaskTimeoutError)
    assert outcomes == {i: i * i for i in range(8) if i != 3}


@pytest.mark.timeout(30)
def test_retries_rerun_a_timed_out_task(mode, tmp_path):
    marker = tmp_path / "attempted"
    gate = threading.Event() if mode in THREADED else None
    with bf.Pool(1, mode=mode, task_timeout=1.0, retries=1) as pool:
        try:
            fut = pool.submit(first_attempt_blocks, str(marker), gate)
            assert fut.result(timeout=30) == "second attempt"
        finally:
            if gate is not None:
                gate.set()
    assert marker.read_text() == "first attempt"


@pytest.mark.timeout(30)
def test_without_retries_a_timed_out_task_fails(mode, tmp_path):
    marker = tmp_path / "attempted"
    gate = threading.Event() if mode in THREADED else None
    with bf.Pool(1, mode=mode, task_timeout=1.0) as pool:
        try:
            with pytest.raises(bf.TaskTimeoutError):
                pool.submit(first_attempt_blocks, str(marker), gate).result(timeout=30)
            assert pool.submit(square, 3).result() == 9
        finally:
            if gate is not None:
                gate.set()


# --- nesting and async -------------------------------------------------------------------


@pytest.mark.parametrize("inner_mode", ["thread", "process"])
def test_nested_pools(mode, inner_mode):
    with bf.Pool(2, mode=mode) as pool:
        results = pool.map(lambda n: inner_pool_sum(n, inner_mode), [5, 10], chunksize=1)
    assert [total for total, _ in results] == [30, 285]
    for _, ids in results:
        assert ids <= {0, 1}


def test_future_is_awaitable(mode):
    with bf.Pool(2, mode=mode) as pool:

        async def main():
            a = await pool.submit(square, 7)
            b, c = await asyncio.gather(pool.submit(add, 1, 2), pool.submit(square, 3))
            d = await asyncio.wrap_future(pool.submit(square, 5))
            e = await pool.apply_async(add, (4, 5))
            with pytest.raises(Boom, match="awaited"):
                await pool.submit(raise_boom, "awaited")
            return a, b, c, d, e

        assert asyncio.run(main()) == (49, 3, 9, 25, 9)


def test_cancelling_the_awaiting_coroutine_cancels_a_queued_task(mode, gate, tmp_path):
    marker = tmp_path / "ran"
    with bf.Pool(1, mode=mode) as pool:
        running = pool.submit(gated, gate.path, "running")
        ahead = [pool.submit(square, i) for i in range(2)]
        last = pool.submit(Path.touch, marker)

        async def main():
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(last, 0.05)

        asyncio.run(main())
        assert last.cancelled()
        gate.release()
        assert running.result(timeout=30) == "running"
        assert [f.result(timeout=30) for f in ahead] == [0, 1]
    assert not marker.exists()


def test_callbacks_may_submit_more_work(mode):
    chained: queue.Queue = queue.Queue()
    with bf.Pool(2, mode=mode) as pool:
        pool.apply_async(square, (3,), callback=lambda r: chained.put(pool.submit(square, r)))
        assert chained.get(timeout=30).result(timeout=30) == 81
        fut = pool.submit(add, 1, 2)
        fut.add_done_callback(lambda f: chained.put(pool.submit(add, f.result(), 10)))
        assert chained.get(timeout=30).result(timeout=30) == 13


def test_future_works_with_concurrent_futures(mode):
    with bf.Pool(2, mode=mode) as pool:
        futures = [pool.submit(square, i) for i in range(20)]
        done, not_done = concurrent.futures.wait(futures, timeout=30)
        assert not not_done
        assert sorted(f.result() for f in done) == [i * i for i in range(20)]
        futures = [pool.submit(square, i) for i in range(20)]
        got = [f.result() for f in concurrent.futures.as_completed(futures, timeout=30)]
        assert sorted(got) == [i * i for i in range(20)]
        bad = pool.submit(raise_boom, "waited")
        concurrent.futures.wait([bad], timeout=30, return_when=concurrent.futures.FIRST_EXCEPTION)
        assert isinstance(bad.exception(), Boom)


# --- bad input, lifecycle ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"workers": 0}, "workers"),
        ({"workers": -1}, "workers"),
        ({"task_timeout": -1}, "task_timeout"),
        ({"task_timeout": float("nan")}, "task_timeout"),
        ({"task_timeout": True}, "task_timeout"),
        ({"task_timeout": "1"}, "task_timeout"),
        ({"retries": -1}, "retries"),
        ({"max_tasks_per_worker": 0}, "max_tasks_per_worker"),
    ],
)
def test_bad_pool_arguments(mode, kwargs, name):
    kwargs = dict(kwargs)
    workers = kwargs.pop("workers", 1)
    with pytest.raises(ValueError, match=name):
        bf.Pool(workers, mode=mode, **kwargs)


def test_unknown_mode():
    with pytest.raises(ValueError, match="mode"):
        bf.Pool(1, mode="quantum")
    with pytest.raises(ValueError, match="mode"):
        bf.map(square, [1], mode="quantum")


def test_bad_chunksize(mode):
    with bf.Pool(1, mode=mode) as pool:
        for bad in (0, -1, "big"):
            with pytest.raises(ValueError, match="chunksize"):
                pool.map(square, range(3), chunksize=bad)
            with pytest.raises(ValueError, match="chunksize"):
                pool.imap(square, range(3), chunksize=bad)
            with pytest.raises(ValueError, match="chunksize"):
                pool.imap_unordered(square, range(3), chunksize=bad)
            with pytest.raises(ValueError, match="chunksize"):
                pool.starmap(add, [(1, 2)], chunksize=bad)
        assert pool.map(square, range(3)) == [0, 1, 4]
    with pytest.raises(ValueError, match="chunksize"):
        bf.map(square, range(3), mode=mode, workers=1, chunksize=0)
    with pytest.raises(ValueError, match="chunksize"):
        list(bf.imap(square, range(3), mode=mode, workers=1, chunksize=0))


def test_non_callable_task(mode):
    with bf.Pool(1, mode=mode) as pool:
        with pytest.raises(TypeError):
            pool.submit(42)
        with pytest.raises(TypeError):
            pool.map("not a function", range(3))


@pytest.mark.parametrize("how", ["close", "shutdown", "terminate"])
def test_submitting_after_close_raises(mode, how):
    pool = bf.Pool(1, mode=mode)
    fut = pool.submit(square, 4)
    assert fut.result() == 16
    getattr(pool, how)()
    with pytest.raises(bf.PoolClosedError):
        pool.submit(square, 1)
    with pytest.raises(bf.PoolClosedError):
        pool.apply_async(square, (1,))
    with pytest.raises(bf.PoolClosedError):
        pool.map(square, range(3))
    with pytest.raises(bf.PoolClosedError):
        pool.imap(square, range(3))
    with pytest.raises(bf.PoolClosedError):
        pool.starmap(add, [(1, 2)])
    if how == "close":
        pool.join()
    assert isinstance(bf.PoolClosedError("x"), RuntimeError)


def test_join_needs_close(mode):
    pool = bf.Pool(2, mode=mode)
    futures = [pool.submit(square, i) for i in range(10)]
    with pytest.raises(ValueError, match="close"):
        pool.join()
    pool.close()
    pool.join()
    assert [f.result() for f in futures] == [i * i for i in range(10)]


def test_close_lets_submitted_work_finish(mode):
    pool = bf.Pool(2, mode=mode)
    futures = [pool.submit(square, i) for i in range(30)]
    pool.close()
    pool.join()
    assert [f.result(timeout=0) for f in futures] == [i * i for i in range(30)]


def test_shutdown_waits_for_work(mode):
    pool = bf.Pool(2, mode=mode)
    futures = [pool.submit(square, i) for i in range(30)]
    pool.shutdown(wait=True)
    assert [f.result(timeout=0) for f in futures] == [i * i for i in range(30)]


def test_with_block_exit_waits_for_submitted_work(mode):
    with bf.Pool(2, mode=mode) as pool:
        futures = [pool.submit(square, i) for i in range(30)]
    assert all(f.done() for f in futures)
    assert [f.result() for f in futures] == [i * i for i in range(30)]


@pytest.mark.timeout(30)
def test_with_block_exit_on_exception_terminates(mode, tmp_path):
    marker = tmp_path / "started"
    gate = threading.Event() if mode in THREADED else None
    futures = []

    def leave_with_an_error():
        with bf.Pool(1, mode=mode) as pool:
            futures.append(pool.submit(first_attempt_blocks, str(marker), gate))
            futures.extend(pool.submit(square, i) for i in range(5))
            assert wait_until(marker.exists, timeout=30)
            raise KeyError("leaving")

    try:
        with pytest.raises(KeyError, match="leaving"):
            leave_with_an_error()
    finally:
        if gate is not None:
            gate.set()
    running, *queued = futures
    # the block did not wait for the stuck task: it failed it
    assert running.done()
    assert isinstance(running.exception(), bf.PoolClosedError)
    for fut in queued:
        assert fut.done()
        assert fut.cancelled() or isinstance(fut.exception(), bf.PoolClosedError)


@pytest.mark.timeout(30)
def test_terminate_then_leaving_the_block_does_not_wait(mode, tmp_path):
    """After terminate() the stuck task is abandoned (thread) or killed (process)."""
    marker = tmp_path / "started"
    gate = threading.Event() if mode in THREADED else None

    def terminate_then_leave():
        with bf.Pool(1, mode=mode) as pool:
            fut = pool.submit(first_attempt_blocks, str(marker), gate)
            assert wait_until(marker.exists, timeout=30)
            pool.terminate()
            return fut.exception(timeout=30)

    run = InThread(terminate_then_leave)
    try:
        left = run.finished(5)  # a hang detector, not a speed requirement
    finally:
        if gate is not None:
            gate.set()
    error = run.result(30)
    assert left, "leaving the block after terminate() waited for the stuck task"
    assert isinstance(error, bf.PoolClosedError)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("how", ["kept", "raised"])
def test_leaving_the_block_with_an_unfinished_imap(mode, how):
    """Leaving the block does not wait for imap input nobody will ever pull."""
    iterators = []

    def leave_early():
        with bf.Pool(2, mode=mode) as pool:
            if how == "kept":
                it = pool.imap(square, itertools.count())
                iterators.append(it)
                assert next(it) == 0
            else:
                # list() raises on item 3 and the caller moves on. (The test
                # keeps a reference only to unblock a hang below; the error's
                # traceback keeps the iterator alive anyway.)
                it = pool.imap(lambda x: fail_on(x, {3}), itertools.count(), chunksize=2)
                iterators.append(it)
                with pytest.raises(Boom):
                    list(it)
        return "left"

    run = InThread(leave_early)
    left = run.finished(5)  # a hang detector, not a speed requirement
    if not left:
        # unblock it, so the test fails cleanly instead of leaking the pool
        for it in iterators:
            it.close()
    assert run.result(30) == "left"
    assert left, "leaving the block waited for an imap that was never finished"


def test_a_closed_pool_cannot_be_entered_again(mode):
    pool = bf.Pool(1, mode=mode)
    with pool:
        assert pool.submit(square, 3).result(timeout=30) == 9
    with pytest.raises(bf.PoolClosedError, match="closed"), pool:
        pytest.fail("entered a pool that its first with block closed")
    closed = bf.Pool(1, mode=mode)
    closed.close()
    with pytest.raises(ValueError, match="closed"):  # what multiprocessing raises
        closed.__enter__()
    closed.join()


def test_repr(mode):
    with bf.Pool(2, mode=mode) as pool:
        assert mode in repr(pool)
        assert "bingfa" in repr(pool.submit(square, 2))


# --- one-shot helpers -----------------------------------------------------------------------


def test_bf_map(mode):
    assert bf.map(square, range(20), mode=mode, workers=2) == [i * i for i in range(20)]
    assert bf.map(lambda x: x - 1, range(5), mode=mode, workers=2, chunksize=2) == [
        -1, 0, 1, 2, 3]
    with pytest.raises(Boom, match="bad item 2"):
        bf.map(lambda x: fail_on(x, {2}), range(5), mode=mode, workers=2)
    assert bf.map(square, [], mode=mode, workers=1) == []


def test_bf_map_takes_pool_options(mode):
    got = bf.map(identity_worker, range(6), mode=mode, workers=2, initializer=init_state,
                 initargs=("opt",))
    assert [x for _, _, x in got] == list(range(6))
    assert all(state["tag"] == "opt" for _, state, _ in got)


def test_bf_imap(mode):
    assert list(bf.imap(square, range(20), mode=mode, workers=2)) == [
        i * i for i in range(20)]
    assert sorted(bf.imap(square, range(20), mode=mode, workers=2, ordered=False)) == [
        i * i for i in range(20)]
    assert list(bf.imap(lambda x: x, [], mode=mode, workers=1)) == []


def test_bf_imap_closed_early_stops_its_pool(mode):
    it = bf.imap(square, itertools.count(), mode=mode, workers=2)
    assert [next(it) for _ in range(10)] == [i * i for i in range(10)]
    it.close()


# --- more edges ---------------------------------------------------------------------------


def gated(path, value):
    wait_at_gate(path)
    return value


def test_result_with_a_timeout_on_a_running_task(mode, gate):
    with bf.Pool(1, mode=mode) as pool:
        fut = pool.submit(gated, gate.path, "through")
        with pytest.raises(TimeoutError):
            fut.result(timeout=0.05)
        with pytest.raises(TimeoutError):
            fut.exception(timeout=0.05)
        assert not fut.done()
        res = pool.apply_async(gated, (gate.path, "async result"))
        with pytest.raises(TimeoutError):
            res.get(timeout=0.05)
        res.wait(0.05)
        assert not res.ready()
        gate.release(2)
        assert fut.result(timeout=30) == "through"
        assert res.get(timeout=30) == "async result"


def test_get_timing_out_is_a_multiprocessing_and_a_builtin_timeout(mode, gate):
    with bf.Pool(1, mode=mode) as pool:
        res = pool.apply_async(gated, (gate.path, "late"))
        queued = pool.starmap_async(gated, [(gate.path, "queued")])
        for waited in (res, queued):
            with pytest.raises(multiprocessing.TimeoutError):
                waited.get(timeout=0.05)
            with pytest.raises(TimeoutError) as info:
                waited.get(timeout=0)
            assert isinstance(info.value, bf.ResultTimeoutError)
            assert isinstance(info.value, bf.BingfaError)
            assert "may still be running" in str(info.value)
        gate.release(2)
        assert res.get(timeout=30) == "late"
        assert queued.get(timeout=30) == ["queued"]
        # A task's own TimeoutError is its answer, not the wait timing out.
        own = pool.apply_async(raise_it, (TimeoutError("the task's own"),))
        with pytest.raises(TimeoutError, match="the task's own") as info:
            own.get(timeout=30)
        assert not isinstance(info.value, bf.ResultTimeoutError)


def test_waits_follow_the_timeout_rule(mode, gate):
    """NaN and non-numbers are errors, a passed deadline does not wait, inf waits for good."""
    with bf.Pool(1, mode=mode) as pool:
        fut = pool.submit(gated, gate.path, "fut")
        res = pool.apply_async(gated, (gate.path, "res"))
        for bad in (float("nan"), "1", True):
            for wait in (fut.result, fut.exception, res.get, res.wait):
                with pytest.raises(ValueError, match="timeout"):
                    wait(timeout=bad)
            with pytest.raises(ValueError, match="timeout"):
                pool.map(square, [1], timeout=bad)
        with pytest.raises(TimeoutError):
            fut.result(timeout=-1)  # deadline - now, after the deadline
        with pytest.raises(bf.ResultTimeoutError):
            res.get(timeout=-5)
        with pytest.raises(bf.ResultTimeoutError):
            pool.map(square, [1], timeout=-1)
        gate.release(2)
        assert fut.result(timeout=float("inf")) == "fut"  # the stdlib overflows here
        assert res.get(timeout=float("inf")) == "res"
        assert pool.map(square, [2], timeout=float("inf")) == [4]


def test_task_timeout_zero_and_inf(mode, gate):
    """0 leaves a task no time (as bf.run's timeout=0 does); inf is no limit."""
    with bf.Pool(1, mode=mode, task_timeout=0) as pool:
        with pytest.raises(bf.TaskTimeoutError):
            pool.submit(gated, gate.path, "never").result(timeout=30)
        gate.release()
    with bf.Pool(1, mode=mode, task_timeout=float("inf")) as pool:
        assert pool.submit(square, 3).result(timeout=30) == 9


def test_cancel_queued_tasks(mode, gate, tmp_path):
    """Tasks waiting behind a busy worker have not started: cancel() stops them."""
    with bf.Pool(1, mode=mode) as pool:
        running = pool.submit(gated, gate.path, "first")
        assert wait_until(running.running, timeout=20)
        markers = [tmp_path / f"ran-{i}" for i in range(4)]
        queued = [pool.submit(Path.touch, m) for m in markers]
        assert [f.running() for f in queued] == [False] * 4
        assert [f.cancel() for f in queued] == [True] * 4
        assert all(f.cancelled() for f in queued)
        gate.release()
        assert running.result(timeout=30) == "first"
        assert pool.submit(square, 4).result(timeout=30) == 16
    assert [m.exists() for m in markers] == [False] * 4


@pytest.mark.parametrize("spelling", ["cancel_futures", "cancel_pending"])
def test_shutdown_cancel_futures(mode, gate, tmp_path, spelling):
    pool = bf.Pool(1, mode=mode)
    running = pool.submit(gated, gate.path, "running")
    assert wait_until(running.running, timeout=20)
    markers = [tmp_path / f"ran-{i}" for i in range(4)]
    pending = [pool.submit(Path.touch, m) for m in markers]
    pool.shutdown(wait=False, **{spelling: True})
    gate.release()
    assert running.result(timeout=30) == "running"
    pool.join()
    for fut in pending:
        assert fut.done()
        assert fut.cancelled() or isinstance(fut.exception(), bf.PoolClosedError), fut
    assert [m.exists() for m in markers] == [False] * 4


def test_many_threads_share_one_pool(mode):
    barrier = threading.Barrier(6)

    def client(k):
        barrier.wait()
        got = []
        for i in range(20):
            got.append(pool.submit(add, k, i).result(timeout=30))
        got += pool.map(lambda x: x + k, range(50))
        got += list(pool.imap_unordered(lambda x: x - k, range(30)))
        return got

    with bf.Pool(2, mode=mode) as pool:
        threads = [InThread(client, k) for k in range(6)]
        results = [t.result(60) for t in threads]
    for k, got in enumerate(results):
        assert got[:20] == [k + i for i in range(20)]
        assert got[20:70] == [x + k for x in range(50)]
        assert sorted(got[70:]) == [x - k for x in range(30)]


def test_dropped_pool_cleans_up(mode):
    pool = bf.Pool(2, mode=mode)
    assert pool.submit(square, 5).result(timeout=30) == 25
    del pool
    gc.collect()
    # the leak check (conftest) waits for its workers to go


def test_submit_passes_any_keyword(mode):
    with bf.Pool(1, mode=mode) as pool:
        assert pool.submit(lambda **kw: kw, fn=1, self=2, args=3).result() == {
            "fn": 1, "self": 2, "args": 3}
        assert pool.apply(lambda *a, **kw: (a, kw), [1, 2], {"k": 3}) == ((1, 2), {"k": 3})


def test_default_worker_count(mode):
    with bf.Pool(mode=mode) as pool:
        assert pool.workers >= 1
        assert pool.map(square, range(20)) == [i * i for i in range(20)]


def test_large_arguments_and_results(mode):
    blob = os.urandom(1 << 16) * 200  # 13 MB
    with bf.Pool(2, mode=mode) as pool:
        assert pool.submit(len, blob).result(timeout=30) == len(blob)
        assert pool.submit(bytes, 20_000_000).result(timeout=30) == bytes(20_000_000)
        pieces = [blob[i:i + 1_000_000] for i in range(0, 8_000_000, 1_000_000)]
        assert pool.map(bytes.upper, pieces, chunksize=3) == [p.upper() for p in pieces]


def test_many_tiny_tasks(mode):
    with bf.Pool(2, mode=mode) as pool:
        assert pool.map(square, range(100_000)) == [i * i for i in range(100_000)]
        assert sum(pool.imap_unordered(square, range(50_000))) == sum(
            i * i for i in range(50_000))


def test_a_stream_of_quick_submits(mode):
    """Thousands of quick submits (grouped into batches once measured) all resolve."""
    with bf.Pool(2, mode=mode) as pool:
        futures = [pool.submit(add, i, 1) for i in range(5000)]
        assert [f.result(timeout=60) for f in futures] == [i + 1 for i in range(5000)]
        callbacks = []
        done = threading.Event()

        def record(value):
            callbacks.append(value)
            if len(callbacks) == 2000:
                done.set()

        for i in range(2000):
            pool.apply_async(add, (i, 2), callback=record)
        assert done.wait(60)
        assert sorted(callbacks) == [i + 2 for i in range(2000)]


def test_input_iterator_that_raises(mode):
    def items():
        yield from range(5)
        raise LookupError("the input broke")

    with bf.Pool(2, mode=mode) as pool:
        with pytest.raises(LookupError, match="the input broke"):
            pool.map(square, items())
        it = pool.imap(square, items(), chunksize=1)
        got = []
        try:
            got.extend(it)
        except LookupError as exc:
            got.append(exc)
        # the results of the items read before the error are not lost, and
        # the input's own error comes after them
        assert got[:-1] == [0, 1, 4, 9, 16]
        assert isinstance(got[-1], LookupError)
        assert str(got[-1]) == "the input broke"
        assert pool.map(square, range(3)) == [0, 1, 4]


def test_progress_with_unsized_input(mode):
    calls = []
    with bf.Pool(2, mode=mode) as pool:
        got = list(pool.imap(square, iter(range(40)), progress=lambda d, t: calls.append(d)))
        assert got == [i * i for i in range(40)]
        assert list(pool.imap_unordered(square, iter(range(10)), progress=True))
    assert calls[-1] == 40


@pytest.fixture
def pools(mode):
    """Pools of ``mode`` by worker count, made on first use, shared by a test's examples."""
    made: dict[int, bf.Pool] = {}

    def get(workers):
        if workers not in made:
            made[workers] = bf.Pool(workers, mode=mode)
        return made[workers]

    yield get
    for pool in made.values():
        pool.shutdown()


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(items=st.lists(st.integers(-1000, 1000), max_size=200),
       chunksize=st.one_of(st.just("auto"), st.integers(1, 50)),
       workers=st.integers(1, 3))
def test_map_family_agrees_with_builtin_map(pools, items, chunksize, workers):
    expected = [x * x for x in items]
    pool = pools(workers)
    assert pool.map(square, items, chunksize=chunksize) == expected
    assert list(pool.imap(square, items, chunksize=chunksize)) == expected
    assert sorted(pool.imap_unordered(square, items, chunksize=chunksize)) == sorted(expected)
    assert pool.starmap(add, [(x, x) for x in items], chunksize=chunksize) == [
        2 * x for x in items]


def prelude(mode):
    """What a script of the suite starts with: gevent mode needs a monkey-patched interpreter."""
    return "from gevent import monkey\nmonkey.patch_all()\n" if mode == "gevent" else ""


_CTRL_C_SCRIPT = """
import os, sys, threading
from pathlib import Path

import psutil

import bingfa as bf

def slow(x, folder):
    Path(folder, f"{os.getpid()}-{threading.get_ident()}-{x}").touch()
    threading.Event().wait(120)
    return x

def run(pool, call, folder):
    me = psutil.Process()
    helpers = ("forkserver", "resource_tracker", "_zygote")
    workers = [p.pid for p in me.children(recursive=True)
               if p.ppid() != me.pid
               or not any(h in " ".join(p.cmdline()) for h in helpers)]
    print(" ".join(map(str, workers)), flush=True)
    items = [(i, folder) for i in range(100)]
    if call == "map":
        pool.starmap(slow, items, chunksize=1)
    elif call == "submit":
        # the waiting main thread reads results itself (process mode)
        pool.submit(slow, 0, folder).result()
    else:
        for _ in pool.istarmap(slow, items, chunksize=1):
            pass


if __name__ == "__main__":
    mode, call, folder, block = sys.argv[1:]
    if block == "with":
        with bf.Pool(2, mode=mode) as pool:
            run(pool, call, folder)
    else:  # a pool never closed: the exit handler must not wait for its tasks
        run(bf.Pool(2, mode=mode), call, folder)
    print("returned", flush=True)
"""


@pytest.mark.parametrize("block", ["with", "bare"])
@pytest.mark.parametrize("call", ["map", "imap", "submit"])
def test_ctrl_c_stops_a_map(mode, call, block, tmp_path):
    script = tmp_path / "ctrl_c.py"
    script.write_text(prelude(mode) + _CTRL_C_SCRIPT)
    started = tmp_path / "started"
    started.mkdir()
    proc = subprocess.Popen([sys.executable, str(script), mode, call, str(started), block],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pids: list[int] = []
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert wait_until(lambda: any(started.iterdir()), timeout=20)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)  # a hang detector
        assert "KeyboardInterrupt" in err
        assert "returned" not in out
        # As Python exits on Ctrl-C (killed by SIGINT, or status 1 once an exit
        # handler ran): not a crash while the interpreter finalizes.
        assert proc.returncode in (1, -signal.SIGINT), f"exit status {proc.returncode}:\n{err}"
        if mode == "process":
            assert len(pids) == 2
        assert wait_until(lambda: not any(pid_alive(p) for p in pids), timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
        for pid in pids:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
