"""Process pools, commands and futures in a gevent program: nothing blocks the hub.

gevent#936: once gevent has monkey-patched threading, ``multiprocessing``'s
pools and queues hang. bingfa's must not, and waiting on them must let the
other greenlets run. Each case runs an interpreter that calls
``gevent.monkey.patch_all()`` first. The work waited for can only finish once
a greenlet of that interpreter has run (it opens a gate the work waits at), so
a wait that blocked the hub would never end: the case proves the hub kept
running without measuring any time.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("gevent")  # a dev dependency: installed wherever the tests run

PRELUDE = '''\
from gevent import monkey
monkey.patch_all()

import os
import sys
import gevent
import bingfa as bf

# A gate: what waits reads a byte from this FIFO; opening it never blocks as
# this process keeps it open for writing too.
GATE = os.path.join(sys.argv[1], "gate")
os.mkfifo(GATE)
keep = os.open(GATE, os.O_RDWR)
ticks = 0


def open_gate(n):
    """A greenlet: ticks a few times (yielding each time), then lets n waiters through."""
    global ticks
    for _ in range(3):
        gevent.sleep(0.001)
        ticks += 1
    os.write(keep, b"x" * n)


def through_gate(x):
    """Waits at the gate: in select, which is gevent's where this runs as a greenlet."""
    import select

    fd = os.open(GATE, os.O_RDONLY | os.O_NONBLOCK)
    try:
        while True:
            try:
                return x * 10 if os.read(fd, 1) == b"x" else None
            except BlockingIOError:
                select.select([fd], [], [])  # another waiter may take the byte first
    finally:
        os.close(fd)
'''


def run_patched(tmp_path, code: str) -> list[str]:
    script = tmp_path / "patched.py"
    script.write_text(PRELUDE + textwrap.dedent(code))
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True,
                          text=True, timeout=40, cwd=tmp_path)
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return done.stdout.splitlines()


@pytest.mark.timeout(100)
def test_a_process_pool_waits_without_blocking_the_hub(tmp_path):
    out = run_patched(tmp_path, """
        with bf.Pool(2, mode="process") as pool:
            g = gevent.spawn(open_gate, 4)
            print("map", pool.map(through_gate, range(4), chunksize=1))
            g.join()
            g = gevent.spawn(open_gate, 1)
            print("submit", pool.submit(through_gate, 5).result(timeout=60))
            g.join()
            g = gevent.spawn(open_gate, 3)
            print("imap", sorted(pool.imap_unordered(through_gate, range(3), chunksize=1)))
            g.join()
            g = gevent.spawn(open_gate, 2)
            print("apply_async", pool.apply_async(through_gate, (7,)).get(timeout=60),
                  pool.map_async(through_gate, [8]).get(timeout=60))
            g.join()
        print("ticks", ticks)
    """)
    assert out == ["map [0, 10, 20, 30]", "submit 50", "imap [0, 10, 20]",
                   "apply_async 70 [80]", "ticks 12"]


@pytest.mark.timeout(100)
def test_greenlets_wait_on_futures_while_others_run(tmp_path):
    out = run_patched(tmp_path, """
        results = []

        def wait_for(fut):
            results.append(fut.result(timeout=60))

        for mode in ("process", "thread", "gevent"):
            results.clear()
            with bf.Pool(2, mode=mode) as pool:
                futures = [pool.submit(through_gate, i) for i in (1, 2)]
                # Two greenlets block on the futures; a third opens the gate.
                waiters = [gevent.spawn(wait_for, f) for f in futures]
                gevent.joinall([*waiters, gevent.spawn(open_gate, 2)], timeout=60,
                               raise_error=True)
            print(mode, sorted(results))
    """)
    assert out == ["process [10, 20]", "thread [10, 20]", "gevent [10, 20]"]


@pytest.mark.timeout(100)
def test_commands_run_without_blocking_the_hub(tmp_path):
    out = run_patched(tmp_path, """
        g = gevent.spawn(open_gate, 1)
        done = bf.run(["head", "-c", "1", GATE], timeout=60)
        g.join()
        print("run", done.returncode, done.stdout)

        g = gevent.spawn(open_gate, 1)
        with bf.stream(["sh", "-c", 'echo first; head -c 1 "$0"; echo; echo last', GATE],
                       timeout=60) as lines:
            print("stream", [line for _, line in lines])
        g.join()
        print("returncode", lines.result.returncode)

        # Several at once, from greenlets.
        jobs = [gevent.spawn(bf.run, ["head", "-c", "1", GATE], timeout=60) for _ in range(3)]
        gevent.joinall([*jobs, gevent.spawn(open_gate, 3)], timeout=60, raise_error=True)
        print("many", [j.value.stdout for j in jobs])
        print("ticks", ticks)
    """)
    assert out == ["run 0 b'x'", "stream ['first', 'x', 'last']", "returncode 0",
                   "many [b'x', b'x', b'x']", "ticks 9"]
