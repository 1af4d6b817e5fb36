"""Edge cases of the engines found in review: each once hung, leaked or misreported.

Scenarios that hang the process they run in (or leave a worker that cannot
be cleaned up) run in a child Python process with a deadline, so a hang
fails one test instead of the session.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import os
import subprocess
import sys
import textwrap
import threading

import pytest
from conftest import InThread, wait_at_gate, wait_until

import bingfa as bf

pytestmark = pytest.mark.timeout(90)

SRC = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "src")


def double(x):
    return 2 * x


def identity(x):
    return x


def _explode():
    raise ValueError("cannot unpickle this in the worker")


class UnpickleBomb:
    def __reduce__(self):
        return (_explode, ())


def crash_on(x, bad):
    if x == bad:
        os._exit(9)
    return x


def wait_then(path, value):
    wait_at_gate(path)
    return value


def crash_at_gate(path):
    wait_at_gate(path)
    os._exit(3)


def _run_script(body: str, timeout: float = 60) -> str:
    """Run ``body`` in a fresh interpreter; its stdout. A hang fails the test."""
    code = "import os, sys, threading, time\nimport bingfa as bf\n" + textwrap.dedent(body)
    env = dict(os.environ, PYTHONPATH=os.path.abspath(SRC))
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=timeout, env=env)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the scenario hung for {timeout} s; output so far: {exc.stdout!r}")
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


# --- a draining pool strands queued work ---------------------------------------------------
def test_draining_pool_replaces_retired_workers_until_the_queue_is_empty():
    # _process.py _handle: a retired worker is replaced only "if not self._draining".
    with bf.Pool(2, mode="process", max_tasks_per_worker=1) as pool:
        futures = [pool.submit(double, i) for i in range(6)]
    assert [f.result(timeout=20) for f in futures] == [2 * i for i in range(6)]


def test_draining_pool_replaces_a_timed_out_worker_until_the_queue_is_empty(gate):
    # _process.py _check_deadlines: the killed worker is replaced only "if not self._draining".
    with bf.Pool(1, mode="process", task_timeout=0.5) as pool:
        stuck = pool.submit(wait_then, gate.path, "late")
        queued = pool.submit(double, 21)
    assert isinstance(stuck.exception(timeout=20), bf.TaskTimeoutError)
    assert queued.result(timeout=20) == 42


# --- a worker that retires after a load failure ---------------------------------------------
def test_worker_retires_when_its_last_task_failed_to_load():
    # _process.py _handle, KIND_LOAD_FAILED: no "p.retiring and not p.inflight" check,
    # so the slot keeps a worker that may take no more work.
    with bf.Pool(1, mode="process", max_tasks_per_worker=1) as pool:
        assert pool.submit(identity, UnpickleBomb()).exception(timeout=20) is not None
        assert pool.submit(double, 4).result(timeout=20) == 8


# --- shutdown(cancel_futures=True) ----------------------------------------------------------
def test_cancel_futures_ends_a_map_waiting_in_another_thread():
    # _jobs.py ManyJob.cancel: neither completes the job nor records an error, and
    # Pool._map waits for "completed == n or first_error".
    out = _run_script("""
        gate = threading.Event()
        def wait(x):
            gate.wait()
            return x
        if __name__ == "__main__":
            pool = bf.Pool(2, mode="thread")
            t = threading.Thread(target=lambda: pool.map(wait, range(50), chunksize=1), daemon=True)
            t.start()
            while not pool._scheduler._maps: time.sleep(0.01)
            pool.shutdown(wait=False, cancel_futures=True)
            gate.set()
            t.join(15)
            print("HUNG" if t.is_alive() else "OK", flush=True)
            os._exit(0)
    """)
    assert out.strip() == "OK"


def test_cancel_futures_ends_an_imap():
    # Same cause; an imap consumer spins (input not done) or waits for ever.
    out = _run_script("""
        if __name__ == "__main__":
            pool = bf.Pool(2, mode="process")
            it = pool.imap(abs, range(10_000), chunksize=1)
            assert next(it) == 0
            pool.shutdown(wait=True, cancel_futures=True)
            t = threading.Thread(target=lambda: sum(1 for _ in it), daemon=True)
            t.start(); t.join(15)
            print("HUNG" if t.is_alive() else "OK", flush=True)
            os._exit(0)
    """)
    assert out.strip() == "OK"


def test_cancel_futures_settles_a_submit_waiting_for_its_retry(tmp_path):
    from conftest import Gate

    with Gate(tmp_path) as a_gate, Gate(tmp_path) as b_gate:
        pool = bf.Pool(1, mode="process", retries=1)
        try:
            a = pool.submit(crash_at_gate, a_gate.path)
            b = pool.submit(wait_then, b_gate.path, "b")
            a_gate.release()
            # a crashes; its replacement worker takes b, and a's retry queues behind b.
            assert wait_until(lambda: b.running(), timeout=20)
            pool.shutdown(wait=False, cancel_futures=True)
            b_gate.close()
            assert b.result(timeout=20) == "b"
            # Cancelled, or failed: anything but a future that never settles.
            assert wait_until(a.done, timeout=10), "the retried submit never settled"
        finally:
            a_gate.close()
            b_gate.close()
            pool.terminate()


# --- thread mode -----------------------------------------------------------------------------
def test_thread_map_runs_on_every_worker():
    # A map is one wake-up: it must reach every worker, whether the threads
    # are still to be started (the first map) or parked waiting for work.
    barrier = threading.Barrier(4, timeout=10)

    def meet(_):
        barrier.wait()
        return threading.get_ident()

    with bf.Pool(4, mode="thread") as pool:
        assert len(set(pool.map(meet, range(4), chunksize=1))) == 4  # threads start
        # Every worker parked, waiting for work: the next map is the only wake-up.
        assert wait_until(lambda: len(pool._engine._idle) == 4, timeout=10)
        assert len(set(pool.map(meet, range(4), chunksize=1))) == 4


def test_thread_workers_start_as_work_arrives():
    """As ThreadPoolExecutor's: a pool of many threads costs nothing until it runs tasks."""
    before = threading.active_count()
    with bf.Pool(10_000, mode="thread") as pool:
        assert threading.active_count() == before
        assert pool.submit(abs, -1).result(timeout=10) == 1
        assert threading.active_count() <= before + 2  # one worker, maybe a second


def test_thread_calls_made_one_at_a_time_take_turns_on_two_threads():
    """A spare thread waits idle, and the one idle longest is woken (see hand_over)."""
    with bf.Pool(10, mode="thread") as pool:
        for _ in range(3):  # the first worker, then its spare
            pool.submit(threading.get_ident).result(timeout=10)
        assert wait_until(lambda: len(pool._engine._idle) == 2, timeout=10)
        ran_on = [pool.submit(threading.get_ident).result(timeout=10) for _ in range(10)]
        # Never the thread that ran the call before (it waits at the back of
        # the line); a third may join if a caller outruns a worker going idle.
        assert all(a != b for a, b in itertools.pairwise(ran_on))
        assert 2 <= len(set(ran_on)) <= len(pool._engine._threads)


def test_thread_pools_with_an_initializer_start_no_spare():
    """A spare would run the initializer (a model to load, say) for nothing."""
    started: list[int] = []
    with bf.Pool(10, mode="thread", initializer=lambda: started.append(1)) as pool:
        for _ in range(5):
            pool.submit(abs, -1).result(timeout=10)
        assert len(pool._engine._threads) == 1
    assert started == [1]


def test_thread_shutdown_does_not_wait_for_an_abandoned_task():
    release = threading.Event()
    pool = bf.Pool(2, mode="thread", task_timeout=0.2)
    try:
        err = pool.submit(release.wait).exception(timeout=20)
        assert isinstance(err, bf.TaskTimeoutError)
        stopping = InThread(pool.shutdown)
        assert stopping.finished(10), "shutdown waits for the abandoned task (watchdog)"
    finally:
        release.set()
        pool.terminate()


# --- error attribution ---------------------------------------------------------------------
def test_map_crash_after_a_retry_names_its_task():
    # _jobs.py Job.fail: a retry batch is untracked for a quick function, so the
    # second crash cannot be blamed on a task.
    with bf.Pool(1, mode="process", retries=1) as pool:
        pool.starmap(crash_on, [(i, -1) for i in range(2000)])  # measured as quick
        with pytest.raises(bf.WorkerCrashedError) as info:
            pool.starmap(crash_on, [(i, 3) for i in range(10)])
        assert info.value.task is not None
        assert "3" in info.value.task


# --- scenarios in a child process --------------------------------------------------------------
def test_terminate_kills_a_retired_worker_that_does_not_exit():
    # _process.py _finish_if_drained: terminate kills workers in _slots only; a
    # retired one (in _dying, kill_at None) that does not exit is waited for forever.
    out = _run_script("""
        def leave_thread():
            threading.Thread(target=threading.Event().wait).start()  # non-daemon
            return "ok"
        if __name__ == "__main__":
            pool = bf.Pool(1, mode="process", max_tasks_per_worker=1)
            assert pool.submit(leave_thread).result(timeout=20) == "ok"
            assert pool.submit(abs, -1).result(timeout=20) == 1
            t = threading.Thread(target=pool.terminate, daemon=True)
            t.start(); t.join(15)
            print("HUNG" if t.is_alive() else "OK", flush=True)
            os._exit(0)
    """)
    assert out.strip() == "OK"


def test_error_callback_may_terminate_the_pool():
    # The caller waiting in result() leads the manager's loop and runs callbacks
    # under _poll_lock; terminate() then joins a manager parked until it leaves.
    out = _run_script("""
        def fail():
            raise ValueError("boom")
        if __name__ == "__main__":
            pool = bf.Pool(2, mode="process")
            slow = pool.submit(time.sleep, 3)
            pool.apply_async(fail, error_callback=lambda e: pool.terminate())
            t = threading.Thread(target=lambda: slow.exception(), daemon=True)
            t.start(); t.join(15)
            print("HUNG" if t.is_alive() else "OK", flush=True)
            os._exit(0)
    """)
    assert out.strip() == "OK"


def test_a_worker_that_runs_out_of_memory_reading_its_batch_fails_the_task():
    # _process_worker.py reads a whole batch before marking it started; a worker
    # that dies there is "not running" the batch, which is requeued for ever.
    out = _run_script("""
        import resource
        def limit_memory():
            with open("/proc/self/status") as f:
                vm = next(int(l.split()[1]) for l in f if l.startswith("VmSize")) * 1024
            resource.setrlimit(resource.RLIMIT_AS, (vm + (150 << 20), resource.RLIM_INFINITY))
        if __name__ == "__main__":
            pool = bf.Pool(1, mode="process", initializer=limit_memory)
            assert pool.submit(len, b"x").result(timeout=20) == 1
            fut = pool.submit(len, b"x" * (300 << 20))
            try:
                fut.exception(timeout=30)
                print("OK", flush=True)
            except TimeoutError:
                print("HUNG", flush=True)
            os._exit(0)
    """, timeout=80)
    assert out.strip() == "OK"


def test_a_failing_manager_fails_the_tasks_in_flight(tmp_path):
    # _process.py _manage: break_pool aborts queued jobs only; batches in
    # p.inflight (and posts of the failed step) are dropped, so a map hangs.
    out = _run_script(f"""
        import resource, signal
        d = {str(tmp_path)!r}
        def task(i):
            # Written whole, then renamed: the parent never reads a half-made file.
            with open(os.path.join(d, f"{{i}}.tmp"), "w") as f:
                f.write(str(os.getpid()))
            os.replace(os.path.join(d, f"{{i}}.tmp"), os.path.join(d, f"{{i}}.pid"))
            time.sleep(3)
            return i
        if __name__ == "__main__":
            pool = bf.Pool(2, mode="process")
            out = []
            th = threading.Thread(target=lambda: out.append(pool.map(task, [0, 1], chunksize=1)),
                                  daemon=True)
            th.start()
            while len([n for n in os.listdir(d) if n.endswith(".pid")]) < 2: time.sleep(0.01)
            victim = int(open(os.path.join(d, "0.pid")).read())
            resource.setrlimit(resource.RLIMIT_NOFILE,
                               (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
            hog = []
            try:
                while True: hog.append(os.open("/dev/null", os.O_RDONLY))
            except OSError:
                pass
            os.kill(victim, signal.SIGKILL)
            th.join(15)
            print("HUNG" if th.is_alive() else "OK", flush=True)
            os._exit(0)
    """)
    assert out.strip().splitlines()[-1] == "OK"


def test_an_imap_iterator_collected_by_the_gc_does_not_deadlock_the_pool():
    # _pool.py _ResultIterator.__del__ -> ManyJob.cancel takes the scheduler's
    # (non-reentrant) lock; the cyclic GC may run it in a thread holding that lock.
    out = _run_script("""
        import gc
        def sq(x):
            return x * x
        class Holder:
            pass
        if __name__ == "__main__":
            pool = bf.Pool(2, mode="thread")
            gc.set_threshold(50, 1, 1)
            def churn():
                for i in range(3000):
                    it = pool.imap(sq, range(50), chunksize=1)
                    next(it)
                    h = Holder(); h.it = it; h.me = h  # freed by the cyclic GC only
                    del it, h
                    pool.submit(sq, i).result()
            t = threading.Thread(target=churn, daemon=True)
            t.start(); t.join(40)
            print("HUNG" if t.is_alive() else "OK", flush=True)
            os._exit(0)
    """)
    assert out.strip() == "OK"


def test_an_idle_pool_whose_workers_die_at_start_stops_restarting_them():
    # _process.py _exited: a worker that dies before READY with nothing in flight is
    # restarted without counting a startup failure: an endless respawn loop.
    pool = bf.Pool(2, mode="process", initializer=os._exit, initargs=(3,))
    try:
        assert wait_until(lambda: pool._scheduler.broken is not None, timeout=10), (
            "the pool keeps starting workers that die at once")
    finally:
        pool.terminate()


# --- a crash while the pool drains ------------------------------------------------------------
def crash_once(marker):
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(7)
    return "survived"


def crash_at_gate_on(x, bad, gate=None):
    if x == bad:
        wait_at_gate(gate)
        os._exit(9)
    return x


def test_draining_pool_runs_the_retry_of_a_task_that_crashed(tmp_path):
    with bf.Pool(1, mode="process", retries=1) as pool:
        fut = pool.submit(crash_once, str(tmp_path / "marker"))
    assert fut.result(timeout=20) == "survived"


def test_draining_pool_reruns_the_chunk_of_a_task_that_crashed(gate):
    pool = bf.Pool(1, mode="process")
    try:
        pool.starmap(crash_at_gate_on, [(i, -1) for i in range(2000)])  # measured quick: untracked
        # One untracked chunk of 8; task 3 crashes the worker, which one is
        # unknown, so all 8 are queued again one by one.
        running = InThread(pool.starmap, crash_at_gate_on, [(i, 3, gate.path) for i in range(8)], 8)
        assert wait_until(lambda: any(p is not None and p.inflight
                                      for p in pool._engine._slots), timeout=20)
        pool.shutdown(wait=False)
        gate.release(2)  # task 3 crashes its worker now, and again when run alone
        assert running.finished(20), "the map never returned"
        with pytest.raises(bf.WorkerCrashedError):
            running.result()
    finally:
        pool.terminate()


@pytest.mark.timeout(60)
def test_thread_submits_from_many_threads_each_run_once():
    """Single tasks go to idle workers, or queue for busy ones, without the scheduler's lock."""
    counts = [0] * 16_000
    lock = threading.Lock()

    def note(i):
        with lock:
            counts[i] += 1
        return i

    with bf.Pool(16, mode="thread") as pool:
        def submit_some(start):
            return [pool.submit(note, i) for i in range(start, start + 2_000)]

        with concurrent.futures.ThreadPoolExecutor(8) as submitters:
            batches = list(submitters.map(submit_some, range(0, 16_000, 2_000)))
        assert [f.result(timeout=30) for b in batches for f in b] == list(range(16_000))
    assert counts == [1] * 16_000


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["cancel_futures", "terminate", "drain"])
def test_thread_queued_submits_are_cancelled_stopped_or_run_never_lost(how):
    """What a busy thread pool holds for its workers: cancel_futures, terminate, drain."""
    release = threading.Event()
    pool = bf.Pool(2, mode="thread")
    try:
        busy = [pool.submit(release.wait) for _ in range(2)]
        assert wait_until(lambda: all(f.running() for f in busy), timeout=10)
        queued = [pool.submit(abs, -i) for i in range(50)]
        if how == "cancel_futures":
            pool.shutdown(wait=False, cancel_futures=True)
            assert all(f.cancelled() for f in queued)
        elif how == "terminate":
            pool.terminate()
            assert all(f.done() for f in queued)
        else:
            pool.shutdown(wait=False)
            release.set()
            assert [f.result(timeout=30) for f in queued] == list(range(50))
    finally:
        release.set()
        pool.terminate()
