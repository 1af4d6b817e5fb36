"""mode="gevent": what only greenlets do, and the errors when gevent cannot be used.

The contract suite runs on gevent mode too (tests/contracts/test_gevent_contract.py).
Each case here runs a fresh interpreter: gevent mode needs ``patch_all()``
before anything else, and some cases need it missing.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("gevent")  # a dev dependency: installed wherever the tests run

PATCH = "from gevent import monkey\nmonkey.patch_all()\n"


def run_script(tmp_path, code: str, patched: bool = True) -> list[str]:
    """Run ``code`` in a fresh interpreter (patched first if asked); its stdout lines."""
    script = tmp_path / "script.py"
    script.write_text((PATCH if patched else "") + textwrap.dedent(code))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=50, cwd=tmp_path)
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return done.stdout.splitlines()


@pytest.mark.timeout(60)
def test_without_monkey_patching_a_clear_error(tmp_path):
    out = run_script(tmp_path, """
        import bingfa as bf

        try:
            bf.Pool(2, mode="gevent")
        except bf.DeadlockError as exc:
            print(type(exc).__name__, "|", exc)
    """, patched=False)
    assert len(out) == 1
    assert out[0].startswith("DeadlockError | ")
    assert "monkey.patch_all()" in out[0]


@pytest.mark.timeout(60)
def test_patching_after_importing_bingfa_is_refused(tmp_path):
    script = """
        import bingfa as bf
        bf.worker_id()  # bingfa's per-worker state exists now, made for real threads
        from gevent import monkey
        monkey.patch_all()

        try:
            bf.Pool(2, mode="gevent")
        except bf.DeadlockError as exc:
            print("refused:", exc)
    """
    out = run_script(tmp_path, script, patched=False)
    assert len(out) == 1
    assert out[0].startswith("refused: ")
    assert "imported before gevent.monkey.patch_all()" in out[0]


@pytest.mark.timeout(60)
def test_without_gevent_installed_backend_unavailable(tmp_path):
    out = run_script(tmp_path, """
        import sys
        sys.modules["gevent"] = None  # as if it were not installed
        import bingfa as bf

        try:
            bf.Pool(2, mode="gevent")
        except bf.BackendUnavailableError as exc:
            print(exc.extra, "|", exc, "|", isinstance(exc, LookupError))
    """, patched=False)
    assert out == ["gevent | mode='gevent' needs gevent, which is not installed: "
                   "pip install 'bingfa[gevent]' | True"]


@pytest.mark.timeout(60)
def test_a_hundred_sleeps_run_at_once(tmp_path):
    out = run_script(tmp_path, """
        import gevent
        from gevent.event import Event
        import bingfa as bf

        def measure(workers, tasks):
            running = peak = 0
            full = Event()

            def task(i):
                nonlocal running, peak
                running += 1
                peak = max(peak, running)
                if running == workers:
                    full.set()
                # Every task waits until `workers` of them run together (a
                # deadline, not a sleep: it only matters if that never happens).
                full.wait(20)
                gevent.sleep(0.001)
                running -= 1
                return i

            with bf.Pool(workers, mode="gevent") as pool:
                assert pool.map(task, range(tasks), chunksize=1) == list(range(tasks))
                return peak, full.is_set()

        print(*measure(100, 100))
        print(*measure(10, 200))
    """)
    assert out == ["100 True", "10 True"]


@pytest.mark.timeout(60)
def test_task_timeout_kills_the_greenlet(tmp_path):
    out = run_script(tmp_path, """
        import time
        import gevent
        from gevent.event import Event
        import bingfa as bf

        stopped = Event()
        events = []

        def stuck():
            try:
                gevent.sleep(30)
                events.append("woke up")  # must never happen
            except BaseException as exc:
                events.append("interrupted")
                raise
            finally:
                events.append(f"cancelled={bf.cancelled()}")
                stopped.set()
            return "too late"

        with bf.Pool(2, mode="gevent", task_timeout=0.2) as pool:
            fut = pool.submit(stuck)
            try:
                fut.result(timeout=20)
            except bf.TaskTimeoutError as exc:
                print("timed out", exc.timeout, "stuck" in exc.task)
            print("stopped", stopped.wait(20))
            print(*events)
            print(pool.map(abs, [-1, -2]))  # the pool carries on
            # A task that never yields cannot be interrupted; it still overran.
            def spin():
                until = time.monotonic() + 0.4
                while time.monotonic() < until:  # computes, never yields to the hub
                    pass
                return "done"

            busy = pool.submit(spin)
            print("busy", type(busy.exception(timeout=20)).__name__)
        print("after", events)
    """)
    assert out == [
        "timed out 0.2 True",
        "stopped True",
        "interrupted cancelled=True",
        "[1, 2]",
        "busy TaskTimeoutError",
        "after ['interrupted', 'cancelled=True']",
    ]


@pytest.mark.timeout(60)
def test_stopping_a_running_task_kills_its_greenlet(tmp_path):
    out = run_script(tmp_path, """
        import concurrent.futures
        import gevent
        from gevent.event import Event
        import bingfa as bf

        started, finished = Event(), Event()
        events = []

        def long_task():
            started.set()
            try:
                gevent.sleep(30)
                events.append("finished")
            finally:
                finished.set()

        with bf.Pool(2, mode="gevent") as pool:
            # what a scope does to cancel a child it spawned on a pool
            fut, stop = pool._submit_stoppable(long_task, (), {})
            assert started.wait(20)
            stop()
            try:
                fut.result(timeout=20)
            except concurrent.futures.CancelledError:
                print("cancelled")
            print("greenlet ended", finished.wait(20), events)
            with bf.scope(timeout=20) as s:
                child = s.spawn(pool.submit, abs, -5)
            print("scope", child.result().result(timeout=20))
    """)
    assert out == ["cancelled", "greenlet ended True []", "scope 5"]


@pytest.mark.timeout(60)
def test_terminate_kills_running_greenlets_and_none_are_left(tmp_path):
    out = run_script(tmp_path, """
        import gc
        import gevent
        from gevent.event import Event
        from greenlet import greenlet
        import bingfa as bf

        def live_greenlets():
            gc.collect()
            return sum(1 for o in gc.get_objects()
                       if isinstance(o, greenlet) and not o.dead and o is not gevent.getcurrent()
                       and o is not gevent.get_hub())

        before = live_greenlets()
        ended = []
        started = []
        five_started = Event()

        def long_task(i):
            started.append(i)
            if len(started) == 5:
                five_started.set()
            try:
                gevent.sleep(30)
            finally:
                ended.append(i)

        pool = bf.Pool(5, mode="gevent")
        futures = [pool.submit(long_task, i) for i in range(8)]
        print("started", five_started.wait(20))
        print("running", sum(f.running() for f in futures))
        pool.terminate()
        print("errors", {type(f.exception(timeout=20)).__name__ for f in futures})
        print("ended", sorted(ended))
        print("left", live_greenlets() - before)

        def whoami(_):
            gevent.sleep(0)  # yield, so that the other workers get their turn
            return bf.worker_id(), bf.worker_state()

        with bf.Pool(50, mode="gevent", initializer=lambda: "state") as pool:
            ids = pool.map(whoami, range(500), chunksize=1)
        print("ids", len({i for i, _ in ids}) > 1, all(0 <= i < 50 for i, _ in ids),
              {s for _, s in ids})
        print("left", live_greenlets() - before)
    """)
    assert out == [
        "started True",
        "running 5",
        "errors {'PoolClosedError'}",
        "ended [0, 1, 2, 3, 4]",
        "left 0",
        "ids True True {'state'}",
        "left 0",
    ]
