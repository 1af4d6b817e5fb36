"""The Pool contract in async mode, with coroutine functions.

The shared contract suite calls plain functions, which async mode refuses by
design (a plain function there is a TypeError): these are its cases again with
``async def`` tasks, run both ways a user runs them, from plain code (the pool
runs a loop of its own) and inside a running loop (``async with``). The asyncio
faces (``amap``, ``aimap``...) are also checked on thread and process pools.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import gc
import itertools
import sys
import threading
import traceback

import pytest

import bingfa as bf

# no_stalled_loop (tests/conftest.py): a coroutine-facing call that blocked its loop fails.
pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("no_stalled_loop")]


class Boom(Exception):
    """A task's own exception type."""


async def square(x):
    await asyncio.sleep(0)
    return x * x


async def add(a, b=0, *, c=0):
    await asyncio.sleep(0)
    return a + b + c


async def fail_on(x, bad):
    await asyncio.sleep(0)
    if x in bad:
        raise Boom(f"bad item {x}")
    return x * x


async def exits(code):
    sys.exit(code)


def run(coro):
    """Run ``coro`` on a fresh loop (in debug mode: see ``no_stalled_loop``)."""
    return asyncio.run(coro)


# --- from plain code: the pool runs its own loop -----------------------------------


def test_submit_map_imap_and_starmap_from_plain_code():
    with bf.Pool(4, mode="async") as pool:
        assert pool.mode == "async"
        assert pool.submit(add, 1, 2, c=3).result(timeout=10) == 6
        assert pool.map(square, range(50)) == [x * x for x in range(50)]
        assert pool.map(add, [1, 2], [10, 20]) == [11, 22]
        assert pool.starmap(add, [(1, 2), (3, 4)]) == [3, 7]
        assert list(pool.imap(square, iter(range(20)))) == [x * x for x in range(20)]
        assert sorted(pool.imap_unordered(square, range(20))) == [x * x for x in range(20)]
        assert list(pool.istarmap(add, [(1, 1), (2, 2)])) == [2, 4]
        assert pool.apply(add, (4, 5)) == 9


def test_apply_async_and_map_async_callbacks():
    results, errors = [], []
    done = threading.Event()
    with bf.Pool(2, mode="async") as pool:
        pool.apply_async(add, (1, 2), callback=results.append)
        pool.apply_async(fail_on, (1, {1}), error_callback=errors.append)
        pool.map_async(square, range(4), callback=lambda r: (results.append(r), done.set()))
        assert done.wait(10)
    assert sorted(map(str, results)) == sorted(["3", "[0, 1, 4, 9]"])
    assert len(errors) == 1
    assert isinstance(errors[0], Boom)


def test_errors_keep_their_type_and_their_traceback():
    with bf.Pool(2, mode="async") as pool:
        with pytest.raises(Boom, match="bad item 3") as info:
            pool.map(fail_on, range(10), [{3}] * 10)
        frames = [f.name for f in traceback.extract_tb(info.value.__traceback__)]
        assert "fail_on" in frames
        outcomes = []
        for i in range(5):
            try:
                outcomes.append(pool.submit(fail_on, i, {2}).result(timeout=10))
            except Boom as exc:
                outcomes.append(str(exc))
        assert outcomes == [0, 1, "bad item 2", 9, 16]
        with pytest.raises(SystemExit) as exit_info:
            pool.submit(exits, 3).result(timeout=10)
        assert exit_info.value.code == 3
        assert pool.submit(add, 1, 1).result(timeout=10) == 2  # the pool goes on


def test_imap_raises_each_error_in_its_turn_and_goes_on():
    with bf.Pool(3, mode="async") as pool:
        it = pool.istarmap(fail_on, [(i, {1, 4}) for i in range(6)], chunksize=1)
        seen = []
        for _ in range(6):
            try:
                seen.append(next(it))
            except Boom as exc:
                seen.append(str(exc))
        assert seen == [0, "bad item 1", 4, 9, "bad item 4", 25]


def test_a_plain_function_is_a_clear_type_error():
    with bf.Pool(2, mode="async") as pool:
        for call in (lambda: pool.submit(abs, -1), lambda: pool.map(abs, [1]),
                     lambda: pool.imap(abs, [1])):
            with pytest.raises(TypeError, match="mode='async' runs coroutine functions"):
                call()


def test_at_most_workers_coroutines_run_at_once():
    running = peak = 0

    async def counted(_):
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.001)
        running -= 1

    with bf.Pool(7, mode="async") as pool:
        pool.map(counted, range(200))
    assert peak == 7


def test_task_timeout_cancels_the_coroutine_and_retries_run_it_again():
    attempts = []
    cancelled = []

    async def slow_first(x):
        attempts.append(x)
        try:
            if len(attempts) == 1:
                await asyncio.Event().wait()  # never set: only the timeout ends it
            return x
        except asyncio.CancelledError:
            cancelled.append(x)
            raise

    with bf.Pool(2, mode="async", task_timeout=0.2) as pool:
        with pytest.raises(bf.TaskTimeoutError, match=r"did not finish within 0\.2 s"):
            pool.submit(slow_first, 1).result(timeout=10)
        assert cancelled == [1]
    attempts.clear()
    cancelled.clear()
    with bf.Pool(2, mode="async", task_timeout=0.2, retries=1) as pool:
        assert pool.submit(slow_first, 5).result(timeout=10) == 5
    assert attempts == [5, 5]
    assert cancelled == [5]


def test_a_tasks_own_timeout_error_is_not_the_pools():
    async def own_timeout():
        raise TimeoutError("mine")

    with bf.Pool(1, mode="async", task_timeout=5) as pool:
        with pytest.raises(TimeoutError, match="mine") as info:
            pool.submit(own_timeout).result(timeout=10)
        assert not isinstance(info.value, bf.TaskTimeoutError)


def test_contextvars_travel_to_the_tasks():
    var = contextvars.ContextVar("var", default="unset")

    async def read(_):
        return var.get()

    var.set("submitter")
    with bf.Pool(2, mode="async") as pool:
        assert pool.submit(read, 0).result(timeout=10) == "submitter"
        assert set(pool.map(read, range(10))) == {"submitter"}


def test_an_initializer_runs_once_before_the_tasks():
    async def state(_):
        return bf.worker_state()

    async def init(tag):
        await asyncio.sleep(0)
        return {"tag": tag}

    with bf.Pool(3, mode="async", initializer=init, initargs=("ready",)) as pool:
        assert pool.map(state, range(5)) == [{"tag": "ready"}] * 5


def test_a_failing_initializer_breaks_the_pool_with_a_clear_error():
    async def bad_init():
        raise Boom("no model")

    with (bf.Pool(2, mode="async", initializer=bad_init) as pool,
          pytest.raises(bf.InitializerError, match="Boom: no model")):
        pool.submit(square, 2).result(timeout=10)


def test_max_tasks_per_worker_is_refused():
    with pytest.raises(ValueError, match="max_tasks_per_worker has no meaning"):
        bf.Pool(2, mode="async", max_tasks_per_worker=5)


def test_progress_reports_every_task(capsys):
    seen = []
    with bf.Pool(4, mode="async") as pool:
        pool.map(square, range(30), progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (30, 30)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_imap_on_endless_input_reads_a_bounded_window():
    read = 0

    def endless():
        nonlocal read
        for i in itertools.count():
            read += 1
            yield i

    with bf.Pool(4, mode="async") as pool:
        it = pool.imap(square, endless())
        first = [next(it) for _ in range(100)]
        assert first == [x * x for x in range(100)]
        assert read < 100 + 20_000  # a window ahead, never the whole (endless) input
        it.close()


def waits_until_cancelled():
    """Two events and a coroutine function that sets the first, then the second when cancelled."""
    started = threading.Event()
    cancelled = threading.Event()

    async def forever():
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    return started, cancelled, forever


def test_terminate_cancels_running_coroutines():
    started, cancelled, forever = waits_until_cancelled()

    pool = bf.Pool(2, mode="async")
    fut = pool.submit(forever)
    assert started.wait(10)
    pool.terminate()
    assert cancelled.wait(10)
    with pytest.raises(bf.PoolClosedError):
        fut.result(timeout=10)


def test_a_stop_from_a_scope_cancels_a_running_coroutine():
    started, cancelled, forever = waits_until_cancelled()

    with bf.Pool(2, mode="async") as pool:
        fut, stop = pool._submit_stoppable(forever, (), {})
        assert started.wait(10)
        stop()
        assert cancelled.wait(10)
        with pytest.raises(concurrent.futures.CancelledError):
            fut.result(timeout=10)
        assert pool.submit(add, 2, 2).result(timeout=10) == 4  # its slot is free again


# --- inside a running loop ----------------------------------------------------------


def test_async_with_on_the_running_loop():
    async def main():
        async with bf.Pool(10, mode="async") as pool:
            assert await pool.submit(add, 1, 2) == 3
            assert await pool.amap(square, range(100)) == [x * x for x in range(100)]
            assert await pool.astarmap(add, [(1, 2), (3, 4)]) == [3, 7]
            assert [x async for x in pool.aimap(square, range(10))] == [
                x * x for x in range(10)]
            assert sorted([x async for x in pool.aimap_unordered(square, range(10))]) == [
                x * x for x in range(10)]
            assert [x async for x in pool.aistarmap(add, [(1, 1)])] == [2]
            assert await pool.amap(square, []) == []
        return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]

    assert run(main()) == []  # no task of the pool outlives its block


def test_aimap_reads_an_async_generator_lazily():
    read = 0

    async def endless():
        nonlocal read
        for i in itertools.count():
            read += 1
            yield i

    async def main():
        async with bf.Pool(5, mode="async") as pool:
            got = []
            async for x in pool.aimap(square, endless()):
                got.append(x)
                if len(got) == 50:
                    break
            return got

    assert run(main()) == [x * x for x in range(50)]
    assert read < 50 + 20_000


def test_a_sync_wait_on_the_loop_that_runs_the_tasks_is_refused():
    async def main():
        async with bf.Pool(2, mode="async") as pool:
            with pytest.raises(bf.DeadlockError, match=r"await pool\.amap"):
                pool.map(square, range(3))
            with pytest.raises(bf.DeadlockError):
                pool.submit(square, 2).result()
            return await pool.submit(square, 3)

    assert run(main()) == 9


def test_errors_through_amap_and_aimap():
    async def main():
        async with bf.Pool(3, mode="async") as pool:
            with pytest.raises(Boom, match="bad item 2"):
                await pool.amap(fail_on, range(5), [{2}] * 5)
            seen = []
            it = pool.aistarmap(fail_on, [(i, {1}) for i in range(3)], chunksize=1)
            for _ in range(3):
                try:
                    seen.append(await it.__anext__())
                except Boom as exc:
                    seen.append(str(exc))
            with pytest.raises(StopAsyncIteration):
                await it.__anext__()
            return seen

    assert run(main()) == [0, "bad item 1", 4]


def test_cancelling_an_amap_cancels_its_tasks_not_started():
    started = []

    async def slow(x):
        started.append(x)
        await asyncio.sleep(10)

    async def main():
        async with bf.Pool(2, mode="async") as pool:
            waiting = asyncio.ensure_future(pool.amap(slow, range(100), chunksize=1))
            while len(started) < 2:
                await asyncio.sleep(0.001)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            with pool._scheduler.lock:  # nothing of the map is left to hand out
                assert not pool._scheduler.has_work()
            pool.terminate()  # the two running sleeps are cancelled

    run(main())
    assert len(started) == 2


def test_amap_timeout():
    async def slow(_):
        await asyncio.sleep(10)

    async def main():
        async with bf.Pool(2, mode="async") as pool:
            with pytest.raises(bf.ResultTimeoutError, match="amap"):
                await pool.amap(slow, range(4), timeout=0.1)
            pool.terminate()

    run(main())


def test_leaving_async_with_by_an_error_cancels_the_coroutines():
    cancelled = []

    async def forever(i):
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(i)
            raise

    async def leave_by_an_error():
        async with bf.Pool(3, mode="async") as pool:
            for i in range(3):
                pool.submit(forever, i)
            await asyncio.sleep(0.01)  # let them start (if not, they are cancelled unstarted)
            raise Boom("leave")

    async def main():
        with pytest.raises(Boom):
            await leave_by_an_error()
        return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]

    assert run(main()) == []
    assert sorted(cancelled) == [0, 1, 2]


def test_a_pool_left_open_when_its_loop_ends_fails_its_waiters_instead_of_hanging():
    outcome = []

    async def forever():
        await asyncio.Event().wait()

    async def main():
        pool = bf.Pool(2, mode="async")
        return pool, pool.submit(forever)

    closed_pool = run(main())[0]  # a submit straight after: no wait has noticed the close yet
    with pytest.raises(bf.PoolClosedError, match="event loop"):
        closed_pool.submit(square, 1).result(timeout=10)
    closed_pool.shutdown()
    pool, fut = run(main())  # asyncio.run cancels the task as the loop ends
    with pytest.raises(bf.PoolClosedError, match="event loop"):
        fut.result(timeout=10)
    outcome.append(pool.submit)  # later submits fail at once too
    with pytest.raises(bf.PoolClosedError):
        pool.submit(square, 1)
    pool.shutdown()


# --- the asyncio faces on thread and process pools ----------------------------------


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_async_faces_on_other_modes(mode):
    async def main():
        async with bf.Pool(2, mode=mode) as pool:
            assert await pool.submit(pow, 2, 10) == 1024
            assert await pool.amap(abs, [-1, -2, -3]) == [1, 2, 3]
            assert [x async for x in pool.aimap(abs, range(-3, 0))] == [3, 2, 1]
            assert sorted([x async for x in pool.aimap_unordered(abs, range(-3, 0))]) == [
                1, 2, 3]
            with pytest.raises(ZeroDivisionError):
                await pool.amap(divmod, [1, 2], [1, 0])

    run(main())


def test_closing_or_dropping_an_aimap_cancels_what_has_not_run():
    jobs = []

    async def main():
        async with bf.Pool(2, mode="async") as pool:
            closed = pool.aimap(square, range(10_000), chunksize=1)
            assert await closed.__anext__() == 0
            await closed.aclose()
            jobs.append(closed._job)
            dropped = pool.aimap(square, range(10_000), chunksize=1)
            assert await dropped.__anext__() == 0
            jobs.append(dropped._job)
            del dropped  # collected at once (no cycle): its job stops at the pool's next look
            pool.terminate()

    run(main())
    gc.collect()  # off the loop: a full collection may take longer than a loop may stall
    assert all(job.cancelled for job in jobs)



def test_on_uvloop():
    uvloop = pytest.importorskip("uvloop")  # a dev dependency: installed in CI

    async def main():
        assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
        async with bf.Pool(20, mode="async", task_timeout=5) as pool:
            assert await pool.amap(square, range(200)) == [x * x for x in range(200)]
            return [x async for x in pool.aistarmap(add, [(1, 2), (3, 4)])]

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(main()) == [3, 7]


def test_a_pool_made_in_plain_code_runs_its_own_loop_on_uvloop():
    uvloop = pytest.importorskip("uvloop")

    async def loop_kind(_):
        return type(asyncio.get_running_loop())

    with bf.Pool(2, mode="async") as pool:
        assert pool.submit(loop_kind, 0).result(timeout=10) is uvloop.Loop
