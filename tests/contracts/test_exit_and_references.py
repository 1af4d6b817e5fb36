"""Contract: what a task's ``sys.exit`` does, what a pool keeps alive, what happens at exit."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
import weakref

import pytest

import bingfa as bf

PY = sys.executable


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
    script = tmp_path / "pending.py"
    script.write_text(textwrap.dedent(f'''\
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
