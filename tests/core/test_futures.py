"""bingfa's Future and the light condition it waits on (``_core._future_condition``).

The Future keeps ``concurrent.futures.Future``'s state under the same names
(the stdlib's ``wait`` and ``as_completed`` read them), but its condition is
one object, not eight: these tests pin both halves.
"""

from __future__ import annotations

import concurrent.futures
import gc
import threading
import time

import pytest

import bingfa as bf
from bingfa._core._future_condition import FutureCondition

DEADLINE = 10.0


def _until(check, what: str) -> None:
    """Wait (yielding the CPU) until ``check()`` holds; fail after DEADLINE."""
    deadline = time.monotonic() + DEADLINE
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.001)


def _sleeping(condition: FutureCondition) -> int:
    with condition:
        return len(condition._sleepers or ())


def test_a_future_keeps_the_stdlib_futures_state_under_the_same_names():
    ours, theirs = bf.Future(), concurrent.futures.Future()
    assert sorted(vars(ours)) == sorted(vars(theirs))
    assert ours._state == theirs._state
    assert not ours.done()
    assert not ours.running()
    assert ours.set_running_or_notify_cancel()
    ours.set_result(3)
    assert ours.result() == 3
    assert ours.done()


def test_a_pending_future_costs_the_collector_far_fewer_objects_than_the_stdlibs():
    def tracked_per_future(make) -> float:
        gc.collect()
        before = len(gc.get_objects())
        futures = [make() for _ in range(1000)]
        grown = len(gc.get_objects()) - before - 1  # the list itself
        del futures
        return grown / 1000

    ours = tracked_per_future(bf.Future)
    theirs = tracked_per_future(concurrent.futures.Future)
    assert ours <= 4.5, ours  # the future, its condition and its two lists
    assert theirs >= ours + 5, (ours, theirs)


def test_every_thread_waiting_for_a_result_wakes_when_it_is_set():
    future: bf.Future[int] = bf.Future()
    got: list[int] = []

    def wait() -> None:
        got.append(future.result(timeout=DEADLINE))

    threads = [threading.Thread(target=wait) for _ in range(3)]
    for t in threads:
        t.start()
    _until(lambda: _sleeping(future._condition) == 3, "three waiting threads")
    future.set_result(7)
    for t in threads:
        t.join(DEADLINE)
    assert got == [7, 7, 7]
    assert _sleeping(future._condition) == 0


def test_a_wait_that_times_out_leaves_nothing_behind():
    future: bf.Future[int] = bf.Future()
    with pytest.raises(concurrent.futures.TimeoutError):
        future.result(timeout=0.01)
    with pytest.raises(concurrent.futures.TimeoutError):
        future.exception(timeout=0)
    assert _sleeping(future._condition) == 0
    future.set_exception(KeyError("k"))
    assert isinstance(future.exception(timeout=0), KeyError)


def test_the_stdlibs_wait_and_as_completed_take_bingfa_futures_beside_their_own():
    ours: bf.Future[str] = bf.Future()
    theirs: concurrent.futures.Future[str] = concurrent.futures.Future()
    done, pending = concurrent.futures.wait([ours, theirs], timeout=0.01)
    assert not done
    assert pending == {ours, theirs}

    threading.Timer(0.05, ours.set_result, ("ours",)).start()
    done, pending = concurrent.futures.wait(
        [ours, theirs], timeout=DEADLINE, return_when=concurrent.futures.FIRST_COMPLETED)
    assert done == {ours}
    assert pending == {theirs}

    theirs.set_result("theirs")
    order = [f.result() for f in concurrent.futures.as_completed([ours, theirs], DEADLINE)]
    assert sorted(order) == ["ours", "theirs"]
    # the stdlib's waiter was taken off our future again
    assert ours._waiters == []


def test_cancelling_wakes_a_waiter_with_cancelled_error():
    future: bf.Future[int] = bf.Future()
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            future.result(timeout=DEADLINE)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=wait)
    t.start()
    _until(lambda: _sleeping(future._condition) == 1, "a waiting thread")
    assert future.cancel()
    t.join(DEADLINE)
    assert len(errors) == 1
    assert isinstance(errors[0], concurrent.futures.CancelledError)


def test_the_condition_needs_its_lock_to_wait_or_notify():
    condition = FutureCondition()
    with pytest.raises(RuntimeError, match="un-acquired"):
        condition.wait(0)
    with pytest.raises(RuntimeError, match="un-acquired"):
        condition.notify()
    with pytest.raises(RuntimeError, match="un-acquired"):
        condition.notify_all()
    with condition:
        assert condition.wait(0) is False
        assert condition.wait(-1) is False  # a negative wait does not wait, as the stdlib's
        condition.notify_all()  # nobody waits: nothing to do


def test_notify_wakes_as_many_as_asked_and_a_reentrant_holder_gets_its_holds_back():
    condition = FutureCondition()
    woke: list[bool] = []
    holds_after: list[bool] = []

    def wait() -> None:
        with condition:
            with condition:  # held twice while waiting
                woke.append(condition.wait(DEADLINE))
                holds_after.append(condition._is_owned())
            holds_after.append(condition._is_owned())

    threads = [threading.Thread(target=wait) for _ in range(3)]
    for t in threads:
        t.start()
    _until(lambda: _sleeping(condition) == 3, "three waiting threads")
    with condition:
        condition.notify(2)
    _until(lambda: len(woke) == 2, "two threads woken")
    assert _sleeping(condition) == 1
    with condition:
        condition.notify_all()
    for t in threads:
        t.join(DEADLINE)
    assert woke == [True, True, True]
    assert holds_after == [True] * 6
    assert condition.acquire(blocking=False)  # nobody kept it
    condition.release()
