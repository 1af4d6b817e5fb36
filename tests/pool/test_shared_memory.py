"""Big buffers through shared memory: zero-copy at the receiver, and nothing left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import psutil
import pytest
from conftest import wait_until

import bingfa as bf
from bingfa._core._out_of_band import SHARED_MIN


def describe(a):
    """What the worker got: its sum, whether it owns its memory, and whether it can write."""
    total = float(a.sum())
    owns = bool(a.flags.owndata)
    a[0] = -1.0  # the worker's copy; the parent's array must not change
    return total, owns, bool(a.flags.writeable)


def twice(a):
    return a * 2


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", [None, "fork"], ids=["default", "fork"])
def test_big_arrays_reach_the_worker_and_come_back_on_shared_memory(method):
    big = np.arange(SHARED_MIN // 8 * 4, dtype=np.float64)  # four times the threshold
    small = np.arange(1000, dtype=np.float64)
    with bf.Pool(2, mode="process", start_method=method) as pool:
        total, owns, writeable = pool.submit(describe, big).result(30)
        assert (total, owns, writeable) == (float(big.sum()), False, True)
        assert big[0] == 0.0  # the parent's own array is untouched
        assert pool.submit(describe, small).result(30)[0] == float(small.sum())  # in the pickle
        back = pool.map(twice, [big, big + 1], chunksize=1)
    assert not back[0].flags.owndata  # built on the mapped segment
    assert np.array_equal(back[0], big * 2)
    assert np.array_equal(back[1], (big + 1) * 2)
    back[0][0] = 5.0  # writable, and ours
    assert not _segments_of(os.getpid())


def die_with_it(a):
    os.kill(os.getpid(), signal.SIGKILL)


def make_big(_):
    return np.ones(SHARED_MIN // 8 * 8)


@pytest.mark.timeout(60)
def test_a_worker_killed_with_big_buffers_in_flight_leaves_nothing():
    big = np.ones(SHARED_MIN // 8 * 8)
    with bf.Pool(2, mode="process") as pool:
        with pytest.raises(bf.WorkerCrashedError):
            pool.submit(die_with_it, big).result(30)
        # Several big tasks queued behind a crash; all settle, nothing stays.
        futures = [pool.submit(die_with_it, big) for _ in range(3)]
        futures += [pool.submit(make_big, i) for i in range(4)]
        for f in futures[:3]:
            with pytest.raises(bf.WorkerCrashedError):
                f.result(30)
        assert all(f.result(30).shape == big.shape for f in futures[3:])
    # (the leak fixture checks /dev/shm for this test's processes too)
    assert not _segments_of(os.getpid())


SCRIPT = textwrap.dedent('''\
    import time
    import bingfa as bf
    from bingfa._core._shm import write_segment

    with bf.Pool(2, mode="process") as pool:
        running = pool.submit(time.sleep, 60)
        pool.submit(abs, 1).result()   # the workers are up
        # What a batch sent ahead leaves while its worker has not read it yet:
        # a segment named for this process (sent ahead only to quick workers,
        # so made here by hand to have one for sure).
        write_segment([b"x" * (1 << 20)])
        print("holding", flush=True)
        time.sleep(60)
''')


@pytest.mark.timeout(60)
def test_a_parent_killed_with_big_buffers_in_flight_leaves_nothing_within_2_seconds(tmp_path):
    script = tmp_path / "killed.py"
    script.write_text(SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "holding\n"
        family = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        assert _segments_of(proc.pid)
        proc.kill()
        proc.wait(10)
        assert wait_until(lambda: not _segments_of(*family), timeout=2.0), _segments_of(*family)
    finally:
        proc.kill()
        proc.wait(10)
        proc.stdout.close()
    for pid in family[1:]:  # workers and zygote follow their parent
        assert wait_until(lambda pid=pid: not psutil.pid_exists(pid)
                          or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, timeout=10)


def send_gib(ch):
    ch.put(np.ones(1 << 27))  # 1 GiB of float64
    ch.close()


def _anonymous_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon in /proc/self/status")


@pytest.mark.timeout(120)
def test_a_gib_through_a_channel_is_not_copied_again_in_the_receiver():
    ch = bf.Channel(mode="process")
    with bf.scope() as s:
        s.spawn(send_gib, ch, mode="process")
        before = _anonymous_rss()
        array = ch.get(timeout=60)
        assert float(array[::4096].sum()) == len(array[::4096])  # touch it, page by page
        grown = _anonymous_rss() - before
        assert list(ch) == []
    assert array.nbytes == 1 << 30
    assert grown < 64 << 20, f"the receiver's own memory grew by {grown >> 20} MiB"
    del array


def _segments_of(*pids: int) -> list[str]:
    prefixes = tuple(f"bf-{pid}-o-" for pid in pids)
    return [n for n in os.listdir("/dev/shm") if n.startswith(prefixes)]


def noop(a):
    return a


@pytest.mark.timeout(60)
def test_the_segments_of_arguments_are_written_again_once_the_worker_lets_go():
    arrays = [np.full(SHARED_MIN // 8 * 2, float(i)) for i in range(16)]
    with bf.Pool(2, mode="process") as pool:
        first = pool.map(noop, arrays, chunksize=1)
        made = pool._engine._segments.created
        second = pool.map(noop, arrays, chunksize=1)
        assert pool._engine._segments.created == made  # all written into kept segments
    assert made <= 8  # a few per worker, not one per array
    for i, (a, b) in enumerate(zip(first, second, strict=True)):
        assert float(a[0]) == float(b[-1]) == float(i)


KEPT = []


def keep(a):
    KEPT.append(a)  # the task holds on to its argument: its segment must not be written again
    return float(a[0])


def kept_firsts(_):
    return [float(a[0]) for a in KEPT]


@pytest.mark.timeout(60)
def test_a_segment_a_task_keeps_is_never_written_again():
    with bf.Pool(1, mode="process") as pool:
        firsts = [pool.submit(keep, np.full(SHARED_MIN // 8 * 2, float(i))).result(30)
                  for i in range(6)]
        assert firsts == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
        assert pool.submit(kept_firsts, 0).result(30) == firsts  # nothing overwritten
