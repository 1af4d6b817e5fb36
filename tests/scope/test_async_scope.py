"""async with bf.scope(): the same rules on an event loop, with coroutine children."""

# PT012: a scope raises when its whole block ends, so the block is what runs
# under pytest.raises, several statements and all.
# ruff: noqa: PT012

from __future__ import annotations

import asyncio
import contextvars
import os
import time

import pytest

import bingfa as bf


async def double(x: int, delay: float = 0.0) -> int:
    await asyncio.sleep(delay)
    return x * 2


async def fail_soon(message: str) -> None:
    await asyncio.sleep(0.01)
    raise ValueError(message)


@pytest.mark.timeout(30)
def test_every_kind_of_child_in_an_async_block():
    async def main():
        async with bf.scope() as s:
            a = s.spawn(double, 21, mode="async")
            b = s.spawn(os.getpid, mode="process")
            c = s.run(["echo", "hi"], text=True)
            d = s.spawn(sum, [1, 2])
        return await a, b.result(), c.result().stdout, await d

    a, pid, out, d = asyncio.run(main())
    assert (a, out, d) == (42, "hi\n", 3)
    assert pid != os.getpid()


@pytest.mark.timeout(30)
def test_the_first_failure_cancels_coroutines_and_processes():
    async def main():
        with pytest.raises(ExceptionGroup) as caught:
            async with bf.scope() as s:
                slow = s.spawn(double, 1, 300, mode="async")
                process = s.spawn(time.sleep, 300, mode="process")
                s.spawn(fail_soon, "async failure", mode="async")
        return caught.value, slow, process

    group, slow, process = asyncio.run(main())
    assert [str(e) for e in group.exceptions] == ["async failure"]
    assert slow.cancelled()
    assert process.cancelled()


@pytest.mark.timeout(30)
def test_the_loop_runs_while_the_block_waits():
    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.005)

        task = asyncio.create_task(ticker())
        async with bf.scope() as s:
            s.spawn(time.sleep, 0.3, mode="process")
            s.spawn(time.sleep, 0.3)
        task.cancel()
        return ticks

    assert asyncio.run(main()) > 5


@pytest.mark.timeout(30)
def test_a_timeout_cancels_the_coroutines():
    async def main():
        with pytest.raises(bf.TaskTimeoutError):
            async with bf.scope(timeout=0.1) as s:
                child = s.spawn(double, 1, 300, mode="async")
        return child

    assert asyncio.run(main()).cancelled()


@pytest.mark.timeout(30)
def test_cancelling_the_task_that_runs_the_block_stops_its_children():
    async def main():
        started = asyncio.Event()
        children = []

        async def holder():
            async with bf.scope() as s:
                children.append(s.spawn(double, 1, 300, mode="async"))
                children.append(s.spawn(time.sleep, 300, mode="process"))
                started.set()
                await asyncio.sleep(300)

        task = asyncio.create_task(holder())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return children

    children = asyncio.run(main())
    assert all(child.cancelled() for child in children)


@pytest.mark.timeout(30)
def test_async_children_see_the_blocks_contextvars():
    var = contextvars.ContextVar("var", default="unset")

    async def read():
        return var.get()

    async def main():
        var.set("block")
        async with bf.scope() as s:
            child = s.spawn(read, mode="async")
        return await child

    assert asyncio.run(main()) == "block"


@pytest.mark.timeout(30)
def test_async_mode_needs_a_coroutine_function():
    with bf.scope() as s:  # a plain block: on a loop of the scope's own
        doubled = s.spawn(double, 1, mode="async")
    assert doubled.result() == 2
    with pytest.raises(ExceptionGroup) as caught, bf.scope() as s:
        s.spawn(abs, -1, mode="async")
    (error,) = caught.value.exceptions
    assert isinstance(error, TypeError)
    assert "coroutine function" in str(error)

    async def main():
        async with bf.scope() as s:
            s.spawn(lambda: 1, mode="async")

    with pytest.raises(ExceptionGroup) as caught:
        asyncio.run(main())
    (error,) = caught.value.exceptions
    assert isinstance(error, TypeError)
    assert "coroutine function" in str(error)
