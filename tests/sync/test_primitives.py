"""bf.Lock, RLock, Semaphore, BoundedSemaphore, Event, Condition, Barrier and Value:
their rules in one process, and the same objects used from other processes."""

from __future__ import annotations

import ctypes
import pickle
import threading

import pytest

import bingfa as bf

# -- rules, in one process --------------------------------------------------------


@pytest.mark.timeout(10)
@pytest.mark.parametrize("make", [bf.Lock, bf.RLock])
def test_a_lock_acquires_releases_and_times_out(make):
    lock = make()
    assert not lock.locked()
    assert lock.acquire()
    assert lock.locked()
    taken_elsewhere = []
    t = threading.Thread(target=lambda: taken_elsewhere.append(lock.acquire(timeout=0.05)))
    t.start()
    t.join()
    assert taken_elsewhere == [False]
    lock.release()
    assert not lock.locked()
    with lock:
        assert lock.locked()
    assert not lock.locked()


@pytest.mark.timeout(10)
def test_releasing_a_lock_nobody_holds_is_a_runtime_error():
    lock = bf.Lock()
    with pytest.raises(RuntimeError, match="unlocked"):
        lock.release()
    assert lock.acquire()  # still usable, still a lock of value 1
    assert not lock.acquire(blocking=False)
    lock.release()


@pytest.mark.timeout(10)
def test_an_rlock_belongs_to_its_thread():
    lock = bf.RLock()
    with lock, lock:
        errors = []

        def release_from_elsewhere():
            try:
                lock.release()
            except RuntimeError as exc:
                errors.append(exc)

        t = threading.Thread(target=release_from_elsewhere)
        t.start()
        t.join()
        assert len(errors) == 1
        assert lock.locked()
    assert not lock.locked()
    with pytest.raises(RuntimeError):
        lock.release()


@pytest.mark.timeout(10)
@pytest.mark.parametrize("make", [bf.Lock, bf.RLock, bf.Semaphore, bf.BoundedSemaphore])
def test_bad_timeouts_are_refused(make):
    obj = make()
    for bad in (-1, -0.5, float("nan"), True, "1"):
        with pytest.raises(ValueError, match="timeout"):
            obj.acquire(timeout=bad)
    with pytest.raises(ValueError, match="non-blocking"):
        obj.acquire(False, timeout=1)
    assert obj.acquire(timeout=float("inf"))  # bingfa's rule: no limit


@pytest.mark.timeout(10)
def test_bad_counts_are_refused():
    with pytest.raises(ValueError, match="value"):
        bf.Semaphore(-1)
    with pytest.raises(TypeError):
        bf.Semaphore(1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="parties"):
        bf.Barrier(0)
    sem = bf.Semaphore(0)
    with pytest.raises(ValueError, match="n must be"):
        sem.release(0)
    cond = bf.Condition()
    with cond, pytest.raises(ValueError, match="at least 0"):
        cond.notify(-1)
    for bad in (-1, float("nan")):
        with pytest.raises(ValueError, match="timeout"):
            bf.Event().wait(bad)
        with cond, pytest.raises(ValueError, match="timeout"):
            cond.wait(bad)


@pytest.mark.timeout(10)
def test_semaphores_count():
    sem = bf.Semaphore(2)
    assert sem.acquire()
    assert sem.acquire()
    assert not sem.acquire(timeout=0.01)
    assert sem.value == 0
    sem.release(2)
    assert sem.value == 2
    empty = bf.BoundedSemaphore(0)
    with pytest.raises(ValueError, match="too many"):
        empty.release()
    bounded = bf.BoundedSemaphore(2)
    with bounded:
        assert bounded.value == 1
    with pytest.raises(ValueError, match="too many"):
        bounded.release()
    assert bounded.value == 2


@pytest.mark.timeout(10)
def test_a_condition_needs_its_lock():
    cond = bf.Condition()
    with pytest.raises(RuntimeError, match="un-acquired"):
        cond.wait(0)
    with pytest.raises(RuntimeError, match="un-acquired"):
        cond.notify()
    with pytest.raises(TypeError, match=r"bingfa\.Lock"):
        bf.Condition(threading.Lock())  # type: ignore[arg-type]
    with cond:
        assert cond.wait(0.01) is False
        assert cond.wait_for(lambda: 7, 0) == 7


@pytest.mark.timeout(10)
def test_a_condition_wakes_its_waiters():
    cond = bf.Condition(bf.Lock())
    items: list[int] = []
    got: list[int] = []

    def consume():
        with cond:
            assert cond.wait_for(lambda: items, timeout=5)
            got.append(items.pop())

    threads = [threading.Thread(target=consume) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(3):
        with cond:
            items.append(i)
            cond.notify()
    for t in threads:
        t.join()
    assert sorted(got) == [0, 1, 2]


@pytest.mark.timeout(10)
def test_an_event():
    event = bf.Event()
    assert not event.is_set()
    assert event.wait(0.01) is False
    t = threading.Timer(0.05, event.set)
    t.start()
    assert event.wait(5) is True
    t.join()
    event.clear()
    assert not event.is_set()


@pytest.mark.timeout(10)
def test_a_barrier_breaks_on_timeout_and_resets():
    barrier = bf.Barrier(2, timeout=0.05)
    with pytest.raises(threading.BrokenBarrierError):
        barrier.wait()
    assert barrier.broken
    with pytest.raises(bf.BrokenBarrierError):
        barrier.wait()
    barrier.reset()
    assert not barrier.broken
    results: list[int] = []
    t = threading.Thread(target=lambda: results.append(barrier.wait(5)))
    t.start()
    results.append(barrier.wait(5))
    t.join()
    assert sorted(results) == [0, 1]


@pytest.mark.timeout(10)
def test_a_failing_barrier_action_breaks_it():
    def action():
        raise OSError("no")

    barrier = bf.Barrier(1, action=action)
    with pytest.raises(OSError, match="no"):
        barrier.wait()
    assert barrier.broken


@pytest.mark.timeout(10)
def test_values_keep_their_type():
    assert bf.Value("d", 1.5).value == 1.5
    assert bf.Value(ctypes.c_int, -3).value == -3
    assert bf.Value("?", True).value is True
    assert bf.Value("c", b"x").value == b"x"
    small = bf.Value("b", 0)
    small.value = 300  # wraps like a C char, as multiprocessing's does
    assert small.value == 44
    with pytest.raises(TypeError, match="typecode"):
        bf.Value("z")
    with pytest.raises(TypeError, match="cannot store"):
        bf.Value("i", "seven")
    with pytest.raises(TypeError):
        bf.Value("i").value = "seven"
    assert isinstance(bf.Value("d"), bf.Value)
    v = bf.Value("q", 0, lock=bf.Lock())
    assert isinstance(v.get_lock(), bf.Lock)
    with v:
        v.value += 1
    assert v.value == 1


@pytest.mark.timeout(10)
def test_unpickling_in_the_same_process_gives_the_same_object():
    for obj in (bf.Lock(), bf.RLock(), bf.Semaphore(3), bf.Event(), bf.Condition(),
                bf.Barrier(2), bf.Value("i", 4)):
        assert pickle.loads(pickle.dumps(obj)) is obj


# -- across processes ------------------------------------------------------------


def add_under_lock(lock, value, times):
    for _ in range(times):
        with lock:
            value.value += 1
    return value.value


def add_with_threads(lock, value, threads, times):
    workers = [threading.Thread(target=add_under_lock, args=(lock, value, times))
               for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("make", [bf.Lock, bf.RLock])
def test_a_lock_guards_threads_of_several_processes_at_once(make):
    lock, value = make(), bf.Value("q", 0)
    with bf.Pool(2, mode="process") as pool:
        jobs = [pool.submit(add_with_threads, lock, value, 4, 500) for _ in range(2)]
        add_with_threads(lock, value, 2, 500)
        for job in jobs:
            job.result(timeout=50)
    assert value.value == 2 * 4 * 500 + 2 * 500


def wait_for_event_then_set_other(event, other):
    assert event.wait(20)
    other.set()
    return "done"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("start_method", [None, "fork", "spawn"])
def test_events_cross_to_process_handles(start_method):
    event, other = bf.Event(), bf.Event()
    p = bf.Process(wait_for_event_then_set_other, args=(event, other), start_method=start_method)
    p.start()
    event.set()
    assert other.wait(20)
    assert p.result(timeout=20) == "done"


def take_a_unit(sem, inside, most):
    with sem:
        with inside.get_lock():
            inside.value += 1
            most.value = max(most.value, inside.value)
        with inside.get_lock():
            inside.value -= 1


@pytest.mark.timeout(60)
def test_a_semaphore_bounds_a_scope_of_processes():
    sem, inside, most = bf.Semaphore(2), bf.Value("i", 0), bf.Value("i", 0)
    with bf.scope(timeout=50) as s:
        for _ in range(6):
            s.spawn(take_a_unit, sem, inside, most, mode="process")
    assert 1 <= most.value <= 2
    assert sem.value == 2


def notify_after_setting(cond, flag):
    with cond:
        flag.value = 1
        cond.notify_all()


@pytest.mark.timeout(60)
def test_a_condition_wakes_a_waiter_in_another_process():
    cond, flag = bf.Condition(), bf.Value("i", 0)
    with cond:
        p = bf.Process(notify_after_setting, args=(cond, flag))
        p.start()
        assert cond.wait_for(lambda: flag.value == 1, timeout=20)
    p.result(timeout=20)


def meet(barrier):
    return barrier.wait(20)


@pytest.mark.timeout(60)
def test_a_barrier_lines_up_processes_and_threads():
    barrier = bf.Barrier(3)
    with bf.Pool(2, mode="process") as pool:
        jobs = [pool.submit(meet, barrier) for _ in range(2)]
        mine = barrier.wait(20)
        indexes = sorted([mine, *(job.result(timeout=20) for job in jobs)])
    assert indexes == [0, 1, 2]


@pytest.mark.timeout(30)
def test_an_object_whose_creator_dropped_it_says_so():
    lock = bf.Lock()
    blob = pickle.dumps(lock)
    name = lock._key
    del lock
    import gc
    gc.collect()
    # In this process the instance is gone too, so unpickling opens by name.
    with pytest.raises(FileNotFoundError, match="no longer exists"):
        pickle.loads(blob)
    assert name.lstrip("/") not in " ".join(__import__("os").listdir("/dev/shm"))
