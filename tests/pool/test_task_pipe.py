"""A process worker's task pipe polls a moment for the next task before it sleeps."""

from __future__ import annotations

import io
import os
import sys

import pytest

import bingfa as bf
from bingfa._core import _busy
from bingfa._pool._engines._task_pipe import SPIN_MISSES, SPIN_PROBE, TaskPipe

pytestmark = pytest.mark.timeout(30)


class CountingPoll:
    """The pipe's poll object, counting the looks it is asked for."""

    def __init__(self, poll):
        self._poll = poll
        self.looks = 0

    def poll(self, timeout):
        self.looks += 1
        return self._poll.poll(timeout)


@pytest.fixture
def host(request):
    """The host as the test says it is (idle unless marked), not as it is now."""
    _busy.reset(busy=getattr(request, "param", False))
    yield
    _busy.reset()


@pytest.fixture
def pipe():
    read_fd, write_fd = os.pipe()
    task_pipe = TaskPipe(read_fd)
    task_pipe._poll = CountingPoll(task_pipe._poll)
    yield task_pipe, write_fd
    os.close(read_fd)
    os.close(write_fd)


def test_what_is_there_is_read_at_once(host, pipe):
    task_pipe, write_fd = pipe
    reader = io.BufferedReader(task_pipe, buffer_size=1 << 16)
    os.write(write_fd, b"frame one")
    assert reader.read(5) == b"frame"
    assert reader.read(4) == b" one"
    assert task_pipe.misses == 0
    assert task_pipe._poll.looks == 1  # one look, and it was there


def test_nothing_within_the_spin_is_a_miss(host, pipe):
    task_pipe, _ = pipe
    task_pipe._wait_a_moment()
    assert task_pipe.misses == 1
    assert task_pipe._poll.looks > 1  # it polled, until the spin ran out


def test_after_misses_in_a_row_it_polls_only_now_and_then(host, pipe):
    task_pipe, write_fd = pipe
    for _ in range(SPIN_MISSES):
        task_pipe._wait_a_moment()
    assert task_pipe.misses == SPIN_MISSES
    polled = []
    for _ in range(2 * SPIN_PROBE):
        before = task_pipe._poll.looks
        task_pipe._wait_a_moment()
        polled.append(task_pipe._poll.looks > before)
    assert sum(polled) == 2  # once every SPIN_PROBE-th time
    # A task that is there when it looks puts it back to polling every time.
    os.write(write_fd, b"x")
    while task_pipe.misses:
        task_pipe._wait_a_moment()
    assert os.read(task_pipe.fileno(), 1) == b"x"


@pytest.mark.parametrize("host", [True], indirect=True)
def test_a_busy_host_is_not_polled(host, pipe):
    task_pipe, _ = pipe
    task_pipe._wait_a_moment()
    assert task_pipe._poll.looks == 1  # the one look whether a task is there
    assert task_pipe.misses == 0


def report_task_pipe(_: int) -> tuple[str, bool]:
    """Run in a worker: what its task pipe is, and whether asyncio came with it."""
    import gc

    pipes = [type(o).__name__ for o in gc.get_objects() if isinstance(o, TaskPipe)]
    return ",".join(pipes), "asyncio" in sys.modules


def test_a_process_worker_reads_its_tasks_through_one(host):
    with bf.Pool(1, mode="process") as pool:
        assert [pool.submit(report_task_pipe, i).result() for i in range(3)] == [
            ("TaskPipe", False)] * 3
