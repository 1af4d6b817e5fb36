"""bf.Pool as a drop-in for multiprocessing.Pool and concurrent.futures executors.

What code written for the standard library passes to its pools must mean the
same to a bf.Pool: the constructor's spellings and positional order,
``shutdown(cancel_futures=)``, ``map``'s positional chunksize, the errors it
catches. (What holds in every mode is in the contract suite.)
"""

from __future__ import annotations

import functools
import gc
import multiprocessing
import os
import subprocess
import sys
import textwrap
import weakref

import pytest
from conftest import InThread, wait_at_gate, wait_until

import bingfa as bf


def square(x):
    return x * x


def getpid(_=None):
    return os.getpid()


def init_state(tag):
    return {"tag": tag, "pid": os.getpid()}


def state_and_pid(_):
    return bf.worker_state(), os.getpid()


def gated(path, value):
    wait_at_gate(path)
    return value


# --- the constructor ------------------------------------------------------------------------


def test_processes_means_a_process_pool():
    """bf.Pool(processes=n) stands in for multiprocessing.Pool(processes=n)."""
    with bf.Pool(processes=2) as pool:
        assert pool.mode == "process"
        assert pool.workers == 2
        pids = set(pool.map(getpid, range(8), chunksize=1))
        assert os.getpid() not in pids
    with bf.Pool(processes=2, mode="thread") as pool:  # an explicit mode wins
        assert (pool.mode, pool.workers) == ("thread", 2)


def test_max_workers_and_a_positional_count_keep_threads():
    with bf.Pool(max_workers=3) as pool:
        assert (pool.mode, pool.workers) == ("thread", 3)
        assert set(pool.map(getpid, range(4))) == {os.getpid()}
    with bf.Pool(3) as pool:
        assert (pool.mode, pool.workers) == ("thread", 3)


def test_multiprocessing_positional_order():
    """processes, initializer, initargs, maxtasksperchild: multiprocessing.Pool's order."""
    with bf.Pool(1, init_state, ("positional",), 2, mode="process") as pool:
        results = pool.map(state_and_pid, range(6), chunksize=1)
    assert all(state["tag"] == "positional" for state, _ in results)
    # a worker is replaced after two tasks: at least three processes ran them
    assert len({pid for _, pid in results}) >= 3


def test_multiprocessing_keywords():
    with bf.Pool(processes=1, initializer=init_state, initargs=("kw",),
                 maxtasksperchild=2) as pool:
        assert pool.mode == "process"
        results = pool.map(state_and_pid, range(6), chunksize=1)
    assert all(state["tag"] == "kw" for state, _ in results)
    assert len({pid for _, pid in results}) >= 3


@pytest.mark.timeout(60)
def test_concurrent_futures_keywords_and_a_multiprocessing_context():
    """ProcessPoolExecutor's spellings; a context gives its start method and processes."""
    spawn = multiprocessing.get_context("spawn")
    with bf.Pool(max_workers=1, mp_context=spawn, initializer=init_state, initargs=("cf",),
                 max_tasks_per_child=2) as pool:
        assert pool.mode == "process"
        assert pool.start_method == "spawn"
        # A spawned worker is this process's own child (a forkserver one is the zygote's).
        assert pool.submit(os.getppid).result(timeout=50) == os.getpid()
        results = pool.map(state_and_pid, range(4), chunksize=1)
    assert all(state["tag"] == "cf" for state, _ in results)
    assert len({pid for _, pid in results}) >= 2
    with bf.Pool(1, context=multiprocessing.get_context("fork")) as pool:  # multiprocessing's
        assert pool.mode == "process"
        assert pool.start_method == "fork"
        assert pool.submit(os.getppid).result(timeout=30) == os.getpid()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"workers": 2, "processes": 3},
        {"workers": 2, "max_workers": 2},
        {"processes": 1, "max_workers": 1},
        {"max_tasks_per_worker": 1, "maxtasksperchild": 1},
        {"maxtasksperchild": 1, "max_tasks_per_child": 1},
        {"start_method": "spawn", "mp_context": "spawn context"},
        {"context": "a context", "mp_context": "another"},
    ],
    ids=lambda kw: "+".join(kw),
)
def test_one_setting_given_twice_is_a_type_error(kwargs):
    first, second = list(kwargs)
    with pytest.raises(TypeError, match=f"{first} and {second} are the same setting"):
        bf.Pool(**kwargs)


def test_a_positional_count_and_a_keyword_count_are_the_same_setting():
    with pytest.raises(TypeError, match="workers and processes"):
        bf.Pool(2, processes=3)


def test_bad_values_name_the_spelling_used():
    with pytest.raises(ValueError, match="processes"):
        bf.Pool(processes=0)
    with pytest.raises(ValueError, match="max_workers must be greater than 0"):
        bf.Pool(max_workers=-1)  # ThreadPoolExecutor's message, which its users may match
    for bad in (0, -1, 0.5, "12"):  # multiprocessing's own test of maxtasksperchild
        with pytest.raises(ValueError, match="maxtasksperchild"):
            bf.Pool(1, maxtasksperchild=bad)
    with pytest.raises(TypeError, match="mp_context must be a multiprocessing context"):
        bf.Pool(1, mp_context="spawn")
    with pytest.raises(ValueError, match="mp_context only applies to mode='process'"):
        bf.Pool(1, mode="thread", mp_context=multiprocessing.get_context("spawn"))


def test_process_pool_executors_positional_order_is_refused_clearly():
    """ProcessPoolExecutor(4, ctx) has the context second: say so, don't call it."""
    with pytest.raises(TypeError, match="mp_context="):
        bf.Pool(2, multiprocessing.get_context("spawn"))


# --- map, as multiprocessing and concurrent.futures spell it ----------------------------------


def test_map_takes_multiprocessings_positional_chunksize():
    with bf.Pool(2) as pool:
        assert pool.map(square, range(10), 3) == [i * i for i in range(10)]
        assert pool.map(square, range(5), None) == [0, 1, 4, 9, 16]
        assert pool.map(square, range(5), chunksize=None) == [0, 1, 4, 9, 16]
        with pytest.raises(TypeError, match="chunksize both"):
            pool.map(square, range(5), 3, chunksize=2)
        with pytest.raises(TypeError, match="at least one iterable"):
            pool.map(square)


def test_bf_map_zips_and_times_out(gate):
    assert bf.map(pow, [2, 3, 4], range(2), workers=2) == [1, 3]
    assert bf.map(pow, [2, 3], [3, 2], mode="process", workers=2, chunksize=1) == [8, 9]
    assert bf.map(square, range(5), timeout=60, workers=2) == [0, 1, 4, 9, 16]
    run = InThread(lambda: bf.map(functools.partial(gated, gate.path), ["a", "b"],
                                  workers=1, timeout=0.3))
    gave_up = run.finished(20)  # a hang detector, not a speed requirement
    gate.close()
    assert gave_up, "bf.map(timeout=) kept waiting"
    with pytest.raises(bf.ResultTimeoutError):
        run.result(10)


def test_bf_map_takes_the_constructors_spellings():
    pids = bf.map(getpid, range(4), processes=2, chunksize=1)
    assert os.getpid() not in pids


# --- shutdown, as concurrent.futures spells it ---------------------------------------------


def test_shutdown_spellings(gate):
    pool = bf.Pool(1)
    try:
        with pytest.raises(TypeError):
            pool.shutdown(False, True)  # keyword-only, as in concurrent.futures
        with pytest.raises(TypeError, match="cancel_pending is the older name"):
            pool.shutdown(wait=False, cancel_futures=True, cancel_pending=True)
        running = pool.submit(gated, gate.path, "ran")
        assert wait_until(running.running, timeout=20)
        queued = pool.submit(square, 3)
        pool.shutdown(wait=False, cancel_futures=True)
        assert queued.cancelled()
        gate.release()
        assert running.result(timeout=30) == "ran"
    finally:
        gate.close()
        pool.shutdown(wait=True)


# --- errors code written for the standard library catches ------------------------------------


def test_a_closed_pool_raises_what_both_libraries_catch():
    pool = bf.Pool(1)
    pool.close()
    for submit in (lambda: pool.submit(square, 1), lambda: pool.map_async(square, [1]),
                   lambda: pool.apply_async(square, (1,))):
        with pytest.raises(ValueError, match="closed"):  # multiprocessing: "Pool not running"
            submit()
        with pytest.raises(RuntimeError):  # concurrent.futures, after shutdown()
            submit()
    pool.join()


def test_multiprocessing_code_runs_unchanged_but_for_the_import(tmp_path):
    """A script written for multiprocessing.Pool, with the class swapped, in a fresh interpreter."""
    script = tmp_path / "mp_script.py"
    script.write_text(textwrap.dedent("""
        import multiprocessing
        import time

        import bingfa as bf

        def sqr(x, wait=0.0):
            time.sleep(wait)
            return x * x

        def mul(x, y):
            return x * y

        if __name__ == "__main__":
            with bf.Pool(processes=2, initializer=None, initargs=(), maxtasksperchild=10,
                         context=multiprocessing.get_context("forkserver")) as p:
                assert p.map(sqr, range(10), 2) == [i * i for i in range(10)]
                assert p.starmap(mul, [(1, 2), (3, 4)], 1) == [2, 12]
                assert p.map_async(sqr, range(5)).get(timeout=30) == [0, 1, 4, 9, 16]
                assert p.starmap_async(mul, [(2, 2)]).get() == [4]
                res = p.apply_async(sqr, (3, 5.0))
                try:
                    res.get(timeout=0.05)
                except multiprocessing.TimeoutError:
                    print("timed out as multiprocessing does")
                assert sorted(p.imap_unordered(sqr, range(4), 1)) == [0, 1, 4, 9]
                p.terminate()
            try:
                with p:
                    pass
            except ValueError:
                print("a closed pool refuses a second with block")
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["timed out as multiprocessing does",
                                        "a closed pool refuses a second with block"]



class Owner:
    def method(self):
        return "ran"


def test_a_finished_tasks_bound_method_does_not_keep_its_object_alive():
    """As in concurrent.futures: the pool's bookkeeping of task durations is no owner.

    (Thread mode: a worker process keeps the functions it was sent, see the
    process engine's function cache.)
    """
    with bf.Pool(1) as pool:
        owner = Owner()
        ref = weakref.ref(owner)
        assert pool.submit(owner.method).result(timeout=30) == "ran"
        assert pool.submit(square, 2).result(timeout=30) == 4  # the worker moved on
        del owner
        gc.collect()
        assert ref() is None, "the pool keeps a finished task's object alive"


def test_thread_name_prefix_names_the_worker_threads():
    import threading

    with bf.Pool(max_workers=2, thread_name_prefix="fetcher") as pool:
        names = set(pool.map(lambda _: threading.current_thread().name, range(50)))
    assert names <= {"fetcher_0", "fetcher_1"}
    assert names
