"""Thread-mode tasks see the submitter's contextvars, each in a copy of its own."""

from __future__ import annotations

import contextvars
import threading
import traceback

import pytest

import bingfa as bf

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def read() -> str:
    return request_id.get()


def read_and_set(tag: str) -> tuple[str, str]:
    seen = request_id.get()
    request_id.set(tag)  # in this task's copy only
    return seen, request_id.get()


@pytest.mark.timeout(30)
def test_submit_map_and_imap_see_the_submitters_values():
    with bf.Pool(2, mode="thread") as pool:
        token = request_id.set("r-1")
        try:
            assert pool.submit(read).result() == "r-1"
            assert pool.apply_async(read).get() == "r-1"
            assert pool.map(lambda _: request_id.get(), range(50)) == ["r-1"] * 50
            it = pool.imap(lambda _: request_id.get(), range(20))
            request_id.set("r-2")  # the imap took its context when it was made
            assert list(it) == ["r-1"] * 20
            assert pool.submit(read).result() == "r-2"
        finally:
            request_id.reset(token)
        assert pool.submit(read).result() == "-"


@pytest.mark.timeout(30)
def test_what_a_task_sets_reaches_neither_the_caller_nor_the_next_task():
    # One worker thread, so every task runs on the same thread, one after the other.
    with bf.Pool(1, mode="thread") as pool:
        token = request_id.set("caller")
        try:
            results = pool.map(read_and_set, [f"t{i}" for i in range(10)], chunksize=10)
            assert results == [("caller", f"t{i}") for i in range(10)]
            assert [pool.submit(read_and_set, "x").result() for _ in range(3)] == [
                ("caller", "x")] * 3
            assert request_id.get() == "caller"
        finally:
            request_id.reset(token)


@pytest.mark.timeout(30)
def test_a_thread_local_leaks_between_tasks_where_a_contextvar_does_not():
    local = threading.local()

    def remember(i: int) -> tuple[object, str]:
        before = getattr(local, "last", None)
        local.last = i
        seen = request_id.get()
        request_id.set(f"task {i}")
        return before, seen

    token = request_id.set("caller")
    try:
        with bf.Pool(1, mode="thread") as pool:
            out = [pool.submit(remember, i).result() for i in range(3)]
    finally:
        request_id.reset(token)
    assert out == [(None, "caller"), (0, "caller"), (1, "caller")]


@pytest.mark.timeout(30)
def test_a_tasks_traceback_starts_at_the_task():
    def boom() -> None:
        raise ValueError("no")

    with bf.Pool(1, mode="thread") as pool, pytest.raises(ValueError, match="no") as caught:
        pool.submit(boom).result()
    frames = [frame.name for frame in traceback.extract_tb(caught.value.__traceback__)]
    assert frames[-1] == "boom"
    assert "in_context" not in frames
