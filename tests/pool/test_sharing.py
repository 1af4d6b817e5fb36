"""A process worker with nothing to do takes a share of another worker's running chunk.

A map whose chunk holds many long tasks (the last chunk of an input sorted by
size, or a chunk the caller sized) must not end on one worker while the
others idle: the worker running it is asked to stop before its next task, and
the tasks it has not started are shared out.
"""

from __future__ import annotations

import os
import time

import pytest

import bingfa as bf
from bingfa._pool._batch import CALL_ONE, run_batch

pytestmark = pytest.mark.timeout(60)

TASKS = 30
TASK_SECONDS = 0.02  # long enough that a chunk of TASKS is worth sharing


def slow_pid(x: int) -> tuple[int, int]:
    time.sleep(TASK_SECONDS)  # the task's own work, not a wait for something
    return x, os.getpid()


def slow_or_fail(x: int) -> int:
    time.sleep(TASK_SECONDS)
    if x == 17:
        raise ValueError(f"task {x} fails")
    return x * x


@pytest.fixture
def pool():
    with bf.Pool(2, mode="process") as p:
        yield p


def test_an_idle_worker_takes_a_share_of_a_running_chunk(pool):
    # One chunk for the whole map: without sharing, one worker runs it all.
    results = pool.map(slow_pid, range(TASKS), chunksize=TASKS)
    assert [x for x, _ in results] == list(range(TASKS))
    pids = {pid for _, pid in results}
    assert len(pids) == 2


def test_a_second_map_is_shared_too(pool):
    # The second map's chunk goes out while the pool's manager sleeps: it must
    # still come back to look.
    for _ in range(2):
        results = pool.map(slow_pid, range(TASKS), chunksize=TASKS)
        assert len({pid for _, pid in results}) == 2


def test_a_shared_chunk_keeps_the_order_of_imap(pool):
    got = [x for x, _ in pool.imap(slow_pid, range(TASKS), chunksize=TASKS)]
    assert got == list(range(TASKS))


def test_a_shared_chunk_keeps_every_result_of_imap_unordered(pool):
    got = sorted(x for x, _ in pool.imap_unordered(slow_pid, range(TASKS), chunksize=TASKS))
    assert got == list(range(TASKS))


def test_an_error_in_a_shared_chunk_comes_in_its_place(pool):
    results = pool.imap(slow_or_fail, range(TASKS), chunksize=TASKS)
    assert [next(results) for _ in range(17)] == [x * x for x in range(17)]
    with pytest.raises(ValueError, match="task 17 fails"):
        next(results)


def test_a_batch_stops_where_its_mark_says():
    values, errors = run_batch(lambda x: x * 10, [1, 2, 3, 4, 5], CALL_ONE,
                               mark=lambda i: i == 3)
    assert values == [10, 20, 30]
    assert errors is None


def test_a_batch_whose_mark_never_stops_it_runs_whole():
    seen = []
    values, errors = run_batch(lambda x: x + 1, [1, 2, 3], CALL_ONE, mark=seen.append)
    assert values == [2, 3, 4]
    assert seen == [0, 1, 2]
    assert errors is None
