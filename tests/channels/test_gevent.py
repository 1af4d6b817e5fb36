"""Channels and locks once gevent has patched threading: nothing hangs (gevent#936).

Each case runs a real interpreter that calls ``gevent.monkey.patch_all()`` first,
as gevent programs do.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("gevent")  # a dev dependency: installed wherever the tests run

SCRIPT = textwrap.dedent('''\
    from gevent import monkey
    monkey.patch_all()

    import os
    import gevent
    import bingfa as bf

    for mode in ("thread", "process"):
        # Greenlets of one process on both ends; a put that must wait for room
        # and a get that must wait for an item each let the other side run.
        ch = bf.Channel(maxsize=2, mode=mode, producers=2)

        def produce(name):
            with ch.producer():
                for i in range(50):
                    ch.put((name, i))

        got = []
        consumer = gevent.spawn(lambda: got.extend(ch))
        gevent.joinall([gevent.spawn(produce, "a"), gevent.spawn(produce, "b"), consumer],
                       timeout=60, raise_error=True)
        assert sorted(got) == sorted((n, i) for n in "ab" for i in range(50)), got
        print(mode, "greenlets", len(got))

    # A forked child puts; greenlets here wait for it without blocking each other.
    ch = bf.Channel(maxsize=4, mode="process")
    pid = os.fork()
    if pid == 0:
        for i in range(100):
            ch.put(i)
        ch.close()
        os._exit(0)
    ticks = []
    ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.001)) for _ in range(20)])
    got = list(ch)
    ticker.join(30)
    os.waitpid(pid, 0)
    assert got == list(range(100)), got
    print("child", len(got), "ticks", len(ticks))

    # A bingfa lock contended by greenlets: the holder sleeps (yields) inside it.
    lock = bf.Lock()
    order = []

    def hold(name):
        with lock:
            order.append(name)
            gevent.sleep(0.01)

    gevent.joinall([gevent.spawn(hold, n) for n in range(5)], timeout=30, raise_error=True)
    print("lock", sorted(order))
''')


@pytest.mark.timeout(120)
def test_nothing_hangs_under_gevent_monkey_patching(tmp_path):
    script = tmp_path / "with_gevent.py"
    script.write_text(SCRIPT)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=100, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "thread greenlets 100",
        "process greenlets 100",
        "child 100 ticks 20",
        "lock [0, 1, 2, 3, 4]",
    ]
