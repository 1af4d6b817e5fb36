"""Contract: what a task's ``sys.exit`` does, what a pool keeps alive, what happens at exit."""

from __future__ import annotations

import functools
import gc
import subprocess
import sys
import textwrap
import weakref

import pytest
from conftest import wait_at_gate, wait_until

import bingfa as bf

PY = sys.executable


def prelude(mode):
    """What a script of the suite starts with: gevent mode needs a monkey-patched interpreter."""
    return "from gevent import monkey\nmonkey.patch_all()\n" if mode == "gevent" else ""


def exit_on(x, code):
    if x == code:
        sys.exit(code)
    return x


@pytest.mark.timeout(60)
def test_sys_exit_in_a_task_reaches_the_caller_as_system_exit(mode):
    with bf.Pool(2, mode=mode) as pool:
        with pytest.raises(SystemExit) as info:
            pool.submit(sys.exit, 3).result()
        assert info.value.code == 3
        with pytest.raises(SystemExit) as info:
            pool.starmap(exit_on, [(1, 4), (2, 4), (4, 4), (5, 4)])
        assert info.value.code == 4
        # imap hands out the results around it, and the exit in its turn.
        results = pool.istarmap(exit_on, [(1, 2), (2, 2), (3, 2)])
        assert next(results) == 1
        with pytest.raises(SystemExit):
            next(results)
        assert next(results) == 3
        # The pool carries on.
        assert pool.map(abs, [-1, -2]) == [1, 2]


class Marker:
    """An argument whose lifetime the tests follow."""

    def __init__(self, n):
        self.n = n

    def times(self, x):
        return self.n * x


class Payload:
    """An argument and a result whose lifetime the tests follow."""

    def __init__(self, n):
        self.n = n


def live_payloads(_=None):
    gc.collect()
    return sum(isinstance(o, Payload) for o in gc.get_objects())


@pytest.mark.timeout(60)
def test_the_pool_keeps_nothing_of_finished_tasks(mode):
    with bf.Pool(1, mode=mode) as pool:
        owner = Marker(3)
        owner_ref = weakref.ref(owner)
        assert pool.submit(owner.times, 2).result() == 6
        assert pool.map(owner.times, range(20)) == [3 * x for x in range(20)]
        assert list(pool.imap(owner.times, range(5))) == [0, 3, 6, 9, 12]
        argument = Payload(5)
        argument_ref = weakref.ref(argument)
        assert pool.submit(lambda p: Payload(p.n + 1), argument).result().n == 6
        del owner, argument
        gc.collect()
        # Neither the function cache nor the timings hold the bound method's
        # object; no worker thread holds the last batch's argument.
        assert owner_ref() is None
        assert argument_ref() is None
        # Nor does a worker process keep its last batch's argument or result
        # (checked inside it).
        if mode == "process":
            assert pool.submit(live_payloads).result() == 0


@pytest.mark.timeout(60)
def test_work_pending_when_the_interpreter_exits_still_runs(mode, tmp_path):
    if mode in ("dask", "ray"):
        pytest.skip("a cluster task writes to its worker's stdout, not the caller's; "
                    "tests/pool/test_dask_mode.py checks this with files")
    script = tmp_path / "pending.py"
    script.write_text(prelude(mode) + textwrap.dedent(f'''\
        import sys, time
        import bingfa as bf

        pool = bf.Pool(2, mode={mode!r})     # never closed, never waited for

        def work(i):
            time.sleep(0.01)
            sys.stdout.write(f"done {{i}}\\n")   # one write: lines from threads do not mix

        for i in range(10):
            pool.submit(work, i)
        endless = pool.imap(abs, iter(int, 1))   # an imap abandoned mid-way
        next(endless)
    '''))
    done = subprocess.run([PY, str(script)], capture_output=True, text=True, timeout=50,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.split("\n")[:-1]) == sorted(f"done {i}" for i in range(10))
    assert done.stderr == ""


def tagged(i):
    return Payload(i)


@pytest.mark.timeout(60)
def test_an_imap_left_with_break_keeps_nothing(mode):
    """``break`` out of an imap: what was queued never runs, late results are not kept."""
    with bf.Pool(2, mode=mode) as pool:
        for ordered in (True, False):
            call = pool.imap if ordered else pool.imap_unordered
            for result in call(tagged, range(100_000), chunksize=1):
                assert isinstance(result, Payload)
                break
            del result
            # The batches in flight when the loop was left finish and come
            # back; a later task runs after them on the same workers.
            assert pool.map(abs, range(-20, 0), chunksize=1) == list(range(20, 0, -1))
            gc.collect()
            assert live_payloads() == 0  # while the pool lives


_FORKED_CHILD = """
import os, sys, threading, time
import bingfa as bf

pool = bf.Pool(2, mode={mode!r})
release = threading.Event()
running = pool.submit(release.wait if {mode!r} == "thread" else time.sleep, 1)
assert pool.submit(abs, -1).result() == 1
pid = os.fork()
if pid == 0:
    # The child: the pool is its parent's. Nothing here may hang.
    failures = []
    for name, use in [("result", lambda: running.result(timeout=3)),
                      ("result without timeout", lambda: running.result()),
                      ("submit", lambda: pool.submit(abs, -2)),
                      ("map", lambda: pool.map(abs, [1, 2])),
                      ("imap", lambda: list(pool.imap(abs, [1, 2])))]:
        try:
            use()
            failures.append(name + ": no error")
        except bf.PoolClosedError as exc:
            if "os.fork()" not in str(exc):
                failures.append(name + ": " + str(exc))
    pool.shutdown()  # the parent's to stop: a no-op here
    print("child", failures, flush=True)
    sys.exit(0)  # runs the exit handlers: they leave the parent's pool alone
_, status = os.waitpid(pid, 0)
release.set()
running.result(timeout=30)
print("parent", os.waitstatus_to_exitcode(status), pool.map(abs, [-3, -4]), flush=True)
pool.shutdown()
"""


@pytest.mark.timeout(60)
def test_a_pool_inherited_through_fork_fails_at_once_in_the_child(mode, tmp_path):
    script = tmp_path / "forked.py"
    script.write_text(prelude(mode) + _FORKED_CHILD.format(mode=mode))
    done = subprocess.run([PY, "-W", "ignore::DeprecationWarning", str(script)],
                          capture_output=True, text=True, timeout=50, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["child []", "parent 0 [3, 4]"], done.stderr


def gated_abs(gate, x):
    wait_at_gate(gate)
    return abs(x)


@pytest.mark.timeout(60)
def test_a_callback_that_waits_on_its_own_process_pool_is_refused(gate):
    caught: list[BaseException] = []

    def wait_in_callback(_result):
        try:
            pool.map(abs, [1, 2])
        except bf.DeadlockError as exc:
            caught.append(exc)
        try:
            pool.submit(abs, 3).result(timeout=5)
        except bf.DeadlockError as exc:
            caught.append(exc)

    with bf.Pool(2, mode="process") as pool:
        # The tasks wait at the gate until their callbacks are in place.
        done = pool.apply_async(gated_abs, (gate.path, -1), callback=wait_in_callback)
        fut = pool.submit(gated_abs, gate.path, -2)
        fut.add_done_callback(wait_in_callback)
        gate.release(2)
        assert done.get(timeout=30) == 1
        assert fut.result(timeout=30) == 2
        pool.submit(abs, 0).result(timeout=30)  # both callbacks have run by now
    assert len(caught) == 4, caught
    assert all(isinstance(exc, RuntimeError) for exc in caught)


def note_done(path, x):
    with open(path, "a") as f:
        f.write(f"{x}\n")
    return x


@pytest.mark.timeout(60)
@pytest.mark.parametrize("ordered", [True, False], ids=["imap", "imap_unordered"])
def test_an_imap_reads_ahead_of_its_consumer_by_a_bounded_window(mode, ordered, tmp_path):
    """Backpressure counts results not yet taken, not tasks not yet run."""
    done_file = tmp_path / "done"
    done_file.touch()
    pulled = 0

    def source():
        nonlocal pulled
        for i in range(100_000):
            pulled += 1
            yield i

    workers, chunk = 2, 5
    window = 4 * workers * chunk  # documented: IN_FLIGHT_PER_WORKER chunks per worker
    with bf.Pool(workers, mode=mode) as pool:
        call = pool.imap if ordered else pool.imap_unordered
        results = call(functools.partial(note_done, str(done_file)), source(), chunksize=chunk)
        for taken in range(1, 40):
            next(results)
            # Let every task read so far finish: a consumer slower than its
            # workers. The input is only read inside next(), so nothing more
            # is pulled while we wait.
            assert wait_until(lambda: len(done_file.read_text().split()) >= pulled, timeout=20)
            assert pulled - taken <= window, (taken, pulled)
        assert pulled > window // 2  # it does read ahead
        results.close()
