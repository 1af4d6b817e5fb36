"""Chaos: a map while a helper SIGKILLs a random worker every 50 ms.

Every task must come out exactly once, with its value or ``WorkerCrashedError``;
the pool must still work afterwards, and nothing may be left behind (the leak
check sees to processes and /dev/shm).
"""

from __future__ import annotations

import collections
import os
import random
import re
import signal
import threading
import time

import psutil
import pytest

import bingfa as bf
from bingfa._pool._engines._launcher import zygote_pid

TASKS = 5000
KILL_EVERY = 0.05


def _make_work():
    # A nested function travels by value: a fresh worker need not import
    # this test module (and pytest with it) before it can run it, so the
    # kills land on work, not on imports.
    def work(i):
        time.sleep(0.0005)  # the work itself: long enough that kills land mid-map
        return i, i * i

    return work


def _workers() -> list[int]:
    zygote = zygote_pid()
    if zygote is None:
        return []
    try:
        return [p.pid for p in psutil.Process(zygote).children()]
    except psutil.NoSuchProcess:
        return []


def _kill_randomly(stop: threading.Event, kills: list[int]) -> None:
    chooser = random.Random(1234)
    while not stop.wait(KILL_EVERY):  # the chaos's own rhythm, not a synchronisation
        workers = _workers()
        if workers:
            pid = chooser.choice(workers)
            try:
                os.kill(pid, signal.SIGKILL)
                kills.append(pid)
            except ProcessLookupError:
                pass


def _task_index(crash: bf.WorkerCrashedError) -> int:
    """The index of the task a crash failed, from its description ("work task #12 (12)")."""
    match = re.search(r"#(\d+)", crash.task or "")
    assert match, crash
    return int(match.group(1))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("retries", [0, 2])
def test_every_task_comes_out_exactly_once_under_random_kills(retries):
    seen: collections.Counter[int] = collections.Counter()
    crashed = 0
    kills: list[int] = []
    stop = threading.Event()
    with bf.Pool(2, mode="process", retries=retries) as pool:
        pool.submit(abs, 0).result(timeout=30)  # workers up: kills start from here
        killer = threading.Thread(target=_kill_randomly, args=(stop, kills), name="chaos")
        killer.start()
        try:
            results = pool.imap_unordered(_make_work(), range(TASKS))
            while True:
                try:
                    i, square = next(results)
                except StopIteration:
                    break
                except bf.WorkerCrashedError as exc:
                    crashed += 1
                    seen[_task_index(exc)] += 1
                else:
                    assert square == i * i
                    seen[i] += 1
        finally:
            stop.set()
            killer.join()
        # Still a working pool.
        assert pool.map(abs, range(-50, 0)) == list(range(50, 0, -1))
    assert sum(seen.values()) == TASKS
    assert set(seen) == set(range(TASKS))
    assert max(seen.values()) == 1
    assert kills  # the chaos happened
    print(f"retries={retries}: {len(kills)} kills, {crashed} tasks failed")
