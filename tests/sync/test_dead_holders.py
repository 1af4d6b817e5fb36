"""A process that dies holding a lock does not take the lock along; a creator
that dies leaves nothing in /dev/shm."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from conftest import wait_until

import bingfa as bf


def count_until_told(lock, total, counted, died, holding, times):
    """Locked increments, half before the holder holds for good, half after.

    A LockOwnerDiedError is counted, and the thread goes on.
    """
    done = 0
    while done < times:
        if done == times // 2 and holding is not None:
            assert holding.wait(30)
        try:
            with lock:
                total.value += 1
                counted.value += 1
            done += 1
        except bf.LockOwnerDiedError:
            with died.get_lock():
                died.value += 1


def hold_forever_in_one_thread(lock, total, counted, died, holding, ready, times):
    """Four threads counting; the fourth stops inside the lock and stays there.

    Only the lock under test is in use when this process is killed: its other
    threads wait for that lock, and ``ready`` says ``holding.set()`` is over.
    """
    workers = [threading.Thread(target=count_until_told,
                                args=(lock, total, counted, died, None, times))
               for _ in range(3)]
    for t in workers:
        t.start()
    for _ in range(times // 2):
        with lock:
            total.value += 1
            counted.value += 1
    lock.acquire()
    total.value += 1  # the holder dies between these two writes: a torn update
    holding.set()
    ready.value = 1
    time.sleep(600)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("make", [bf.Lock, bf.RLock])
def test_a_holder_killed_mid_section_hands_the_lock_on(make):
    lock, total, died, holding = make(), bf.Value("q", 0), bf.Value("i", 0), bf.Event()
    counted_there, counted_here = bf.Value("q", 0), bf.Value("q", 0)
    times = 300
    ready = bf.Value("i", 0)
    holder = bf.Process(hold_forever_in_one_thread,
                        args=(lock, total, counted_there, died, holding, ready, times))
    holder.start()
    here = [threading.Thread(target=count_until_told,
                             args=(lock, total, counted_here, died, holding, times))
            for _ in range(4)]
    for t in here:
        t.start()
    assert holding.wait(30)
    assert wait_until(lambda: ready.value == 1, timeout=30)
    os.kill(holder.pid, signal.SIGKILL)
    with pytest.raises(bf.WorkerCrashedError):
        holder.result(timeout=30)
    for t in here:
        t.join(30)
        assert not t.is_alive()
    # Exactly one acquirer was told; every thread here finished its count.
    assert died.value == 1
    assert counted_here.value == 4 * times
    # The dead process's torn update is the one increment nobody counted.
    assert total.value == counted_here.value + counted_there.value + 1
    assert lock.acquire(timeout=5)
    lock.release()


def hold_and_signal(lock, holding):
    lock.acquire()
    holding.set()
    time.sleep(600)


def wait_in_slices_forever(cond):
    while True:
        cond.wait(0.05)


def kill_once_holding(holding, holder):
    assert holding.wait(30)
    os.kill(holder.pid, signal.SIGKILL)


@pytest.mark.timeout(60)
def test_a_condition_waiter_learns_that_the_lock_holder_died():
    cond, holding = bf.Condition(bf.Lock()), bf.Event()
    holder = bf.Process(hold_and_signal, args=(cond, holding))
    killer = threading.Thread(target=kill_once_holding, args=(holding, holder))
    with cond:
        holder.start()
        killer.start()
        # Each wait lends the lock out; the holder takes it and is killed with
        # it, and the wait that cannot take it back is told why.
        with pytest.raises(bf.LockOwnerDiedError) as caught:
            wait_in_slices_forever(cond)
        assert caught.value.pid == holder.pid
        assert cond._lock._is_owned()  # held again: the with block releases it
    killer.join()
    with pytest.raises(bf.WorkerCrashedError):
        holder.result(timeout=30)


SCRIPT = textwrap.dedent("""
    import os, sys, time
    import bingfa as bf
    keep = [bf.Lock(), bf.RLock(), bf.Semaphore(2), bf.Event(), bf.Condition(),
            bf.Barrier(2), bf.Value("d", 1.0)]
    print(" ".join(n for n in os.listdir("/dev/shm") if f"bf-{os.getpid()}-" in n), flush=True)
    if sys.argv[1] == "sleep":
        time.sleep(600)
""")


def _ours(names: list[str]) -> list[str]:
    return [n for n in names if n in os.listdir("/dev/shm")]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_nothing_is_left_in_dev_shm(how, tmp_path):
    script = tmp_path / "locks.py"
    script.write_text(SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), "sleep" if how == "sigkill" else "exit"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    names = proc.stdout.readline().split()
    assert len(names) >= 10  # semaphores and blocks, all named after the creator
    if how == "sigkill":
        assert _ours(names) == names
        proc.kill()
    _, err = proc.communicate(timeout=30)
    # At a normal exit the process removes them itself, so multiprocessing's
    # resource tracker has nothing to warn about; after SIGKILL the tracker
    # removes them (and says so).
    if how == "exit":
        assert "leaked" not in err, err
    assert wait_until(lambda: not _ours(names), timeout=30), _ours(names)


EXIT_SCRIPT = textwrap.dedent("""
    import time
    import bingfa as bf

    def f(lock, i):
        time.sleep(0.02)
        with lock:
            return i

    pool = bf.Pool(2, mode="process")   # left open: its queued work runs at exit
    lock = bf.Lock()
    for i in range(4):
        pool.apply_async(f, (lock, i), callback=print,
                         error_callback=lambda e: print("error", e))
""")


@pytest.mark.timeout(60)
def test_a_pool_left_open_at_exit_can_still_open_the_locks_its_tasks_name(tmp_path):
    script = tmp_path / "exit.py"
    script.write_text(EXIT_SCRIPT)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=50)
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.split()) == ["0", "1", "2", "3"]


def take_the_semaphore_and_die(lock):
    """Die between taking the lock's semaphore and writing the holder's token (the gap)."""
    lock._sem.acquire()
    os._exit(1)


@pytest.mark.timeout(60)
def test_a_holder_killed_before_its_token_is_written_is_the_documented_gap():
    lock = bf.Lock()
    child = bf.Process(take_the_semaphore_and_die, (lock,))
    child.start()
    child.join(30)
    assert child.exitcode == 1
    # Nothing names the holder: a waiter waits as for a live one; timeout= bounds it.
    assert lock.acquire(timeout=0.3) is False


@pytest.mark.timeout(60)
def test_a_lock_told_its_holders_are_never_silent_takes_a_silent_one_over():
    lock = bf.Lock()
    lock._give_up_on_silent_holders(0.3)  # what a channel's locks are told
    child = bf.Process(take_the_semaphore_and_die, (lock,))
    child.start()
    child.join(30)
    with pytest.raises(bf.LockOwnerDiedError, match="could not be named") as died:
        lock.acquire(timeout=10)
    assert died.value.pid is None
    assert lock.acquire(timeout=1)  # free again
    lock.release()
