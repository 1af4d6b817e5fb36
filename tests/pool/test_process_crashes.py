"""Process mode under fire: workers that die, objects that will not (un)pickle,
a parent that is killed or interrupted, every start method.

Each case checks the same three things: the failing task gets a clear error of
the right type, every other task of the same batch completes, and the pool
keeps working afterwards. None of it may hang (each test has a timeout).
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import resource
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import psutil
import pytest
from conftest import InThread, pid_alive, wait_until

import bingfa as bf

pytestmark = pytest.mark.timeout(30)

# --- tasks -------------------------------------------------------------------------------


def square(x):
    return x * x


def identity(x):
    return x


def getpid(_=None):
    return os.getpid()


def crash(kind):
    """Kill the calling worker process in one of several ways."""
    if kind == "segfault":
        ctypes.string_at(0)
    elif kind == "exit":
        os._exit(3)
    elif kind == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif kind == "abort":
        os.abort()
    elif kind == "sigterm":
        os.kill(os.getpid(), signal.SIGTERM)
    raise AssertionError(f"still alive after {kind}")


def crash_on(x, kind, bad=3):
    if x == bad:
        crash(kind)
    return x * x


def crash_once(marker, kind):
    path = Path(marker)
    if not path.exists():
        path.write_text(str(os.getpid()))
        crash(kind)
    return "survived"


def wait_to_be_killed(pid_file):
    Path(pid_file).write_text(str(os.getpid()))
    threading.Event().wait(60)  # safety net only: the test kills this worker
    return "not killed"


def block_forever(_=None):
    threading.Event().wait(60)  # safety net only: the pool kills this worker
    return "woke up"


def block_on(x, bad=3):
    if x == bad:
        block_forever()
    return x * x


def _virtual_memory_size():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * resource.getpagesize()


def allocate_too_much(x, bad=3):
    """Run out of address space under RLIMIT_AS (what a memory cap does to a task)."""
    if x != bad:
        return x * x
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    headroom = 256 << 20
    resource.setrlimit(resource.RLIMIT_AS, (_virtual_memory_size() + headroom, hard))
    try:
        return len(bytes(4 << 30))
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


EXPECTED = {
    # kind -> (exit code, signal)
    "segfault": (None, signal.SIGSEGV),
    "exit": (3, None),
    "sigkill": (None, signal.SIGKILL),
    "abort": (None, signal.SIGABRT),
    "sigterm": (None, signal.SIGTERM),
}


def _outcomes(iterator, n, catch=Exception):
    """``next()`` an imap ``n`` times, keeping results and errors in order."""
    out = []
    for _ in range(n):
        try:
            out.append(next(iterator))
        except catch as exc:
            out.append(exc)
    with pytest.raises(StopIteration):
        next(iterator)
    return out


def _check_crash(err, kind, workers):
    exitcode, sig = EXPECTED[kind]
    assert isinstance(err, bf.WorkerCrashedError), repr(err)
    assert isinstance(err, bf.BingfaError)
    assert err.exitcode == exitcode
    assert err.signal == sig
    assert err.worker_id in range(workers)
    assert err.pid
    assert err.pid != os.getpid()
    assert err.task
    assert "crash_on" in err.task


# --- workers that die --------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_crash_fails_only_that_task(kind):
    with bf.Pool(2, mode="process") as pool:
        # submit: one future per task
        futures = [pool.submit(crash_on, i, kind) for i in range(8)]
        for i, fut in enumerate(futures):
            if i == 3:
                _check_crash(fut.exception(timeout=30), kind, 2)
            else:
                assert fut.result(timeout=30) == i * i

        # a lazy map with several tasks per batch: only the crashing one fails
        got = _outcomes(pool.istarmap(crash_on, [(i, kind) for i in range(12)], chunksize=4), 12)
        _check_crash(got[3], kind, 2)
        assert "#3" in got[3].task
        assert got[:3] + got[4:] == [i * i for i in range(12) if i != 3]

        unordered = _outcomes(pool.imap_unordered(
            lambda x: crash_on(x, kind, bad=7), range(12), chunksize=3), 12)
        crashes = [r for r in unordered if isinstance(r, BaseException)]
        assert len(crashes) == 1
        assert isinstance(crashes[0], bf.WorkerCrashedError)
        assert sorted(r for r in unordered if not isinstance(r, BaseException)) == [
            i * i for i in range(12) if i != 7]

        # map raises the crash
        with pytest.raises(bf.WorkerCrashedError) as info:
            pool.starmap(crash_on, [(i, kind) for i in range(10)])
        _check_crash(info.value, kind, 2)

        # and the pool keeps working, with a full set of workers
        assert pool.map(square, range(50)) == [i * i for i in range(50)]
        pids = set(pool.map(getpid, range(40), chunksize=1))
        assert all(pid_alive(pid) for pid in pids)
        # replacements keep their slot
        assert set(pool.map(lambda _: bf.worker_id(), range(40), chunksize=1)) <= {0, 1}


@pytest.mark.parametrize("kind", ["segfault", "exit", "sigkill"])
def test_retry_recovers_from_a_crash(kind, tmp_path):
    marker = tmp_path / "crashed-once"
    with bf.Pool(1, mode="process", retries=1) as pool:
        assert pool.submit(crash_once, str(marker), kind).result(timeout=30) == "survived"
        assert marker.exists()
        # a task that always crashes still fails once its retries are used up
        with pytest.raises(bf.WorkerCrashedError):
            pool.submit(crash_on, 3, kind).result(timeout=30)
        assert pool.map(square, range(5)) == [0, 1, 4, 9, 16]


def test_retry_in_a_map(tmp_path):
    with bf.Pool(2, mode="process", retries=1) as pool:
        got = pool.starmap(crash_once, [(str(tmp_path / f"m{i}"), "exit") for i in range(3)])
    assert got == ["survived"] * 3


def test_worker_killed_from_outside(tmp_path):
    """kill -9 from outside (the OOM killer does this) while the worker runs a task."""
    pid_file = tmp_path / "pid"
    with bf.Pool(2, mode="process") as pool:
        fut = pool.submit(wait_to_be_killed, str(pid_file))
        others = [pool.submit(square, i) for i in range(10)]
        assert wait_until(lambda: pid_file.exists() and pid_file.read_text(), timeout=20)
        victim = int(pid_file.read_text())
        os.kill(victim, signal.SIGKILL)
        err = fut.exception(timeout=30)
        assert isinstance(err, bf.WorkerCrashedError)
        assert err.signal == signal.SIGKILL
        assert err.pid == victim
        assert err.worker_id in (0, 1)
        assert [f.result(timeout=30) for f in others] == [i * i for i in range(10)]
        assert victim not in set(pool.map(getpid, range(20), chunksize=1))


def test_idle_worker_killed_from_outside():
    with bf.Pool(1, mode="process") as pool:
        victim = pool.submit(getpid).result()
        os.kill(victim, signal.SIGKILL)
        assert wait_until(lambda: not pid_alive(victim), timeout=10)
        assert pool.map(square, range(10)) == [i * i for i in range(10)]
        assert pool.submit(getpid).result() != victim


def test_memory_error_is_an_ordinary_task_error():
    """A MemoryError the task raises is that task's exception, re-raised as such.

    The worker survives an allocation that fails (Python raises MemoryError and
    unwinds), so nothing crashed: the caller gets a MemoryError with the
    worker's traceback, like any other exception. A worker the kernel kills
    for memory (SIGKILL) is a crash, covered by the ``sigkill`` cases.
    """
    with bf.Pool(2, mode="process") as pool:
        with pytest.raises(MemoryError) as info:
            pool.submit(allocate_too_much, 3).result(timeout=30)
        assert isinstance(info.value.__cause__, bf.RemoteTraceback)
        assert "allocate_too_much" in info.value.__cause__.text

        got = _outcomes(pool.imap(allocate_too_much, range(8), chunksize=4), 8, BaseException)
        assert isinstance(got[3], MemoryError)
        assert got[:3] + got[4:] == [i * i for i in range(8) if i != 3]
        assert pool.map(square, range(10)) == [i * i for i in range(10)]


def test_timeout_kills_and_replaces_the_worker():
    with bf.Pool(1, mode="process", task_timeout=1.0) as pool:
        before = pool.submit(getpid).result()
        with pytest.raises(bf.TaskTimeoutError) as info:
            pool.submit(block_forever).result(timeout=30)
        assert isinstance(info.value, TimeoutError)
        assert wait_until(lambda: not pid_alive(before), timeout=10)
        after = pool.submit(getpid).result(timeout=30)
        assert after != before


def test_timeout_fails_only_that_task_in_a_batch():
    with bf.Pool(2, mode="process", task_timeout=1.0) as pool:
        got = _outcomes(pool.imap(block_on, range(10), chunksize=5), 10)
        assert isinstance(got[3], bf.TaskTimeoutError)
        assert got[:3] + got[4:] == [i * i for i in range(10) if i != 3]
        assert pool.map(square, range(10)) == [i * i for i in range(10)]


# --- objects that will not travel ----------------------------------------------------------


class PickleBomb:
    """Raises when pickled."""

    def __reduce__(self):
        raise RuntimeError("refusing to be pickled")


def _refuse_to_unpickle(*_args):
    raise RuntimeError("refusing to be unpickled")


class UnpickleBomb:
    """Pickles fine; raises when unpickled."""

    def __reduce__(self):
        return (_refuse_to_unpickle, ())


class ExitBomb:
    """Pickles fine; its unpickling calls sys.exit(7)."""

    def __reduce__(self):
        return (sys.exit, (7,))


class LockedError(Exception):
    """An exception that cannot be pickled: it holds a lock."""

    def __init__(self, message):
        super().__init__(message)
        self.lock = threading.Lock()


class TwoPartError(Exception):
    """An exception pickle cannot rebuild: ``__init__`` takes two arguments."""

    def __init__(self, first, second):
        super().__init__(f"{first} / {second}")
        self.first, self.second = first, second


def misbehave(x, how, bad=5):
    if x != bad:
        return x * x
    if how == "lock result":
        return threading.Lock()
    if how == "unpickle bomb result":
        return UnpickleBomb()
    if how == "exit bomb result":
        return ExitBomb()
    if how == "locked error":
        raise LockedError("cannot travel")
    if how == "two part error":
        raise TwoPartError("first", "second")
    raise AssertionError(how)


def _check_serialization_error(err, *mentions):
    assert isinstance(err, bf.SerializationError), repr(err)
    assert isinstance(err, TypeError)
    for word in mentions:
        assert word in str(err), (word, str(err))


@pytest.mark.parametrize(
    ("bad_arg", "mention"),
    [(PickleBomb(), "PickleBomb"), (threading.Lock(), "lock")],
    ids=["raises-when-pickled", "lock"],
)
def test_unpicklable_argument(bad_arg, mention):
    with bf.Pool(2, mode="process") as pool:
        fut = pool.submit(identity, bad_arg)
        _check_serialization_error(fut.exception(timeout=30), mention)

        fut = pool.apply_async(identity, (), {"x": bad_arg})
        _check_serialization_error(fut.exception(timeout=30), mention)

        with pytest.raises(bf.SerializationError, match=mention):
            pool.map(identity, [1, 2, bad_arg, 4])

        items = list(range(10))
        items[5] = bad_arg
        got = _outcomes(pool.imap(identity, items, chunksize=4), 10)
        _check_serialization_error(got[5], mention)
        assert got[:5] + got[6:] == [i for i in range(10) if i != 5]

        assert pool.map(square, range(5)) == [0, 1, 4, 9, 16]


def test_argument_that_cannot_be_unpickled_in_the_worker():
    with bf.Pool(2, mode="process") as pool:
        err = pool.submit(identity, UnpickleBomb()).exception(timeout=30)
        _check_serialization_error(err, "UnpickleBomb")
        assert "refusing to be unpickled" in str(err) + str(err.__cause__)

        items = [UnpickleBomb() if i == 5 else i for i in range(10)]
        got = _outcomes(pool.imap(identity, items, chunksize=4), 10)
        _check_serialization_error(got[5], "UnpickleBomb")
        assert got[:5] + got[6:] == [i for i in range(10) if i != 5]

        assert pool.map(square, range(5)) == [0, 1, 4, 9, 16]


def test_unpicklable_result():
    with bf.Pool(2, mode="process") as pool:
        err = pool.submit(misbehave, 5, "lock result").exception(timeout=30)
        _check_serialization_error(err, "lock")

        got = _outcomes(pool.istarmap(misbehave, [(i, "lock result") for i in range(10)],
                                      chunksize=4), 10)
        _check_serialization_error(got[5], "lock")
        assert got[:5] + got[6:] == [i * i for i in range(10) if i != 5]
        assert pool.map(square, range(5)) == [0, 1, 4, 9, 16]


def test_result_that_needs_cloudpickle_is_fine():
    with bf.Pool(1, mode="process") as pool:
        fn = pool.submit(lambda: (lambda y: y + 1)).result(timeout=30)
        assert fn(41) == 42


def test_result_that_cannot_be_unpickled_in_the_parent():
    with bf.Pool(2, mode="process") as pool:
        err = pool.submit(misbehave, 5, "unpickle bomb result").exception(timeout=30)
        assert isinstance(err, bf.SerializationError), repr(err)
        assert "refusing to be unpickled" in str(err) + str(err.__cause__)

        got = _outcomes(pool.istarmap(
            misbehave, [(i, "unpickle bomb result") for i in range(10)], chunksize=4), 10)
        assert isinstance(got[5], bf.SerializationError), repr(got[5])
        assert got[:5] + got[6:] == [i * i for i in range(10) if i != 5]
        assert pool.map(square, range(5)) == [0, 1, 4, 9, 16]


@pytest.mark.timeout(60)
def test_a_result_whose_unpickling_exits_fails_only_its_task():
    with bf.Pool(2, mode="process") as pool:
        err = pool.submit(misbehave, 5, "exit bomb result").exception(timeout=30)
        assert isinstance(err, bf.SerializationError), repr(err)
        assert isinstance(err.__cause__, SystemExit)
        got = _outcomes(pool.istarmap(
            misbehave, [(i, "exit bomb result") for i in range(10)], chunksize=4), 10)
        assert isinstance(got[5], bf.SerializationError), repr(got[5])
        assert got[:5] + got[6:] == [i * i for i in range(10) if i != 5]
        # The pool is whole: its manager thread lives, later work runs.
        assert pool.submit(square, 9).result(timeout=30) == 81
        assert pool.map(square, range(5)) == [0, 1, 4, 9, 16]


@pytest.mark.parametrize(
    ("how", "type_name"),
    [("locked error", "LockedError"), ("two part error", "TwoPartError")],
)
def test_exception_that_cannot_travel(how, type_name):
    with bf.Pool(2, mode="process") as pool:
        err = pool.submit(misbehave, 5, how).exception(timeout=30)
        _check_serialization_error(err, type_name)
        # the worker's traceback still arrives
        assert isinstance(err.__cause__, bf.RemoteTraceback)
        assert "misbehave" in err.__cause__.text

        got = _outcomes(pool.istarmap(misbehave, [(i, how) for i in range(10)], chunksize=4), 10)
        _check_serialization_error(got[5], type_name)
        assert got[:5] + got[6:] == [i * i for i in range(10) if i != 5]
        assert pool.map(square, range(5)) == [0, 1, 4, 9, 16]


def test_unpicklable_function():
    lock = threading.Lock()

    def uses_lock(x):
        with lock:
            return x

    with bf.Pool(2, mode="process") as pool:
        _check_serialization_error(pool.submit(uses_lock, 1).exception(timeout=30), "lock")
        with pytest.raises(bf.SerializationError, match="lock"):
            pool.map(uses_lock, range(10))
        it = pool.imap(uses_lock, range(10))
        with pytest.raises(bf.SerializationError, match="lock"):
            next(it)
        it.close()
        assert pool.map(square, range(5)) == [0, 1, 4, 9, 16]


def test_unpicklable_initializer():
    lock = threading.Lock()
    with pytest.raises(bf.SerializationError, match="lock"):
        bf.Pool(1, mode="process", initializer=lambda: lock)


# --- start methods ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_start_methods(method):
    offset = 10
    with bf.Pool(2, mode="process", start_method=method) as pool:
        assert pool.map(lambda x: x + offset, range(20)) == [x + 10 for x in range(20)]
        assert pool.submit(square, 9).result() == 81
        assert os.getpid() not in set(pool.map(getpid, range(10), chunksize=1))


def test_bad_start_method():
    with pytest.raises(ValueError, match="start_method"):
        bf.Pool(1, mode="process", start_method="teleport")
    with pytest.raises(ValueError, match="start_method"):
        bf.Pool(1, mode="thread", start_method="fork")


# --- the parent dies or is interrupted -----------------------------------------------------

_WORKER_PIDS = textwrap.dedent(
    """
    import psutil

    def worker_pids():
        me = psutil.Process()
        pids = []
        for p in me.children(recursive=True):
            helper = p.ppid() == me.pid and any(
                w in " ".join(p.cmdline()) for w in ("forkserver", "resource_tracker", "_zygote"))
            if not helper:
                pids.append(p.pid)
        return pids
    """
)


def _run_script(tmp_path, body, *args):
    script = tmp_path / "script.py"
    script.write_text(_WORKER_PIDS + textwrap.dedent(body))
    return subprocess.Popen(
        [sys.executable, str(script), *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _cleanup(proc, pids):
    """Leave nothing behind, whatever the test found."""
    if proc.poll() is None:
        proc.kill()
    proc.communicate()
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()


def test_parent_killed_leaves_no_workers(tmp_path):
    proc = _run_script(tmp_path, """
        import os, sys, threading
        import bingfa as bf

        def block():
            threading.Event().wait(120)

        def getpid(_):
            return os.getpid()

        if __name__ == "__main__":
            pool = bf.Pool(2, mode="process")
            pool.map(getpid, range(8))
            pool.submit(block)  # one worker busy, the other idle
            print(" ".join(map(str, worker_pids())), flush=True)
            threading.Event().wait()
    """)
    pids: list[int] = []
    try:
        line = proc.stdout.readline()
        pids = [int(p) for p in line.split()]
        assert len(pids) == 2, (line, proc.stderr.read() if proc.poll() is not None else "")
        assert all(pid_alive(pid) for pid in pids)
        proc.kill()
        proc.wait()
        assert wait_until(lambda: not any(pid_alive(pid) for pid in pids), timeout=5), [
            pid for pid in pids if pid_alive(pid)]
    finally:
        _cleanup(proc, pids)


def test_ctrl_c_stops_a_map_and_leaves_no_workers(tmp_path):
    started = tmp_path / "started"
    started.mkdir()
    proc = _run_script(tmp_path, """
        import os, sys, threading
        from pathlib import Path
        import bingfa as bf

        def slow(x, folder):
            Path(folder, f"{os.getpid()}-{x}").touch()
            threading.Event().wait(120)
            return x

        if __name__ == "__main__":
            with bf.Pool(2, mode="process") as pool:
                print(" ".join(map(str, worker_pids())), flush=True)
                pool.starmap(slow, [(i, sys.argv[1]) for i in range(100)], chunksize=1)
            print("map returned", flush=True)
    """, started)
    pids: list[int] = []
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2
        assert wait_until(lambda: any(started.iterdir()), timeout=20)
        proc.send_signal(signal.SIGINT)
        # a hang detector: a map interrupted by Ctrl-C must end
        out, err = proc.communicate(timeout=10)
        assert "KeyboardInterrupt" in err
        assert "map returned" not in out
        assert proc.returncode != 0
        assert wait_until(lambda: not any(pid_alive(pid) for pid in pids), timeout=5), [
            pid for pid in pids if pid_alive(pid)]
    finally:
        _cleanup(proc, pids)


# --- code the workers cannot import ------------------------------------------------------


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_main_that_workers_cannot_import(method):
    """``python -c`` (like a notebook): functions and classes of __main__ travel by value."""
    code = textwrap.dedent(f"""
        import bingfa as bf

        class Point:
            def __init__(self, x):
                self.x = x

        def double(p):
            return Point(p.x * 2)

        k = 3
        with bf.Pool(2, mode="process", start_method={method!r}) as pool:
            print([p.x for p in pool.map(double, [Point(i) for i in range(5)])])
            print(pool.map(lambda x: x + k, range(3)))
            print(pool.submit(double, Point(21)).result().x)
    """)
    # the timeout is a hang detector
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["[0, 2, 4, 6, 8]", "[3, 4, 5]", "42"]


# --- many quick submits travel in groups -------------------------------------------------


@pytest.mark.parametrize("kind", ["segfault", "exit", "sigkill"])
def test_crash_inside_a_group_of_quick_submits(kind):
    """Queued quick submits are grouped into one batch; a crash still fails only its task."""
    with bf.Pool(1, mode="process") as pool:
        # measure the function as quick, so later submits are grouped
        for i in range(20):
            assert pool.submit(crash_on, i, kind, bad=-1).result(timeout=30) == i * i
        futures = [pool.submit(crash_on, i, kind, bad=150) for i in range(300)]
        outcomes = [f.exception(timeout=60) or f.result() for f in futures]
    for i, outcome in enumerate(outcomes):
        if i == 150:
            _check_crash(outcome, kind, workers=1)
        else:
            assert outcome == i * i, (i, outcome)


def test_unpicklable_result_inside_a_group():
    with bf.Pool(1, mode="process") as pool:
        for i in range(20):
            assert pool.submit(misbehave, i, "lock result", bad=-1).result(timeout=30) == i * i
        futures = [pool.submit(misbehave, i, "lock result", bad=77) for i in range(200)]
        outcomes = [f.exception(timeout=60) or f.result() for f in futures]
    _check_serialization_error(outcomes[77], "lock")
    assert [o for i, o in enumerate(outcomes) if i != 77] == [
        i * i for i in range(200) if i != 77]


def _wait_for_word(conn):
    conn.recv()


@pytest.mark.timeout(60)
def test_shutdown_while_a_forked_stranger_holds_our_pipes():
    """Other code forking after the pool (a fork-based pool, say) must not hang its exit.

    The forked child inherits the parent's end of every worker pipe, so the
    workers never see end-of-file; bingfa must stop them some other way.
    """
    fork = multiprocessing.get_context("fork")
    hold_r, hold_w = fork.Pipe(duplex=False)
    stranger = None

    def use_pool():
        nonlocal stranger
        with bf.Pool(2, mode="process") as pool:
            assert pool.map(square, range(10)) == [i * i for i in range(10)]
            stranger = fork.Process(target=_wait_for_word, args=(hold_r,))
            stranger.start()
            assert pool.submit(square, 3).result(timeout=30) == 9
        return "left"

    run = InThread(use_pool)
    try:
        assert run.finished(20), "the pool's exit hung while a forked child held its pipes"
        assert run.result() == "left"
    finally:
        hold_w.send("go")
        run.result(30)
        if stranger is not None:
            stranger.join(30)
        hold_r.close()
        hold_w.close()
