"""bf.to_thread, bf.to_process, bf.run_async and bf.from_thread: real threads, real processes.

Every coroutine here runs under the stall check (``no_stalled_loop``):
the bridges must never hold up the loop that awaits them. After each test the
shared threads and process pool are let go (as at interpreter exit) and the
leak check then makes sure that really left nothing behind; one test checks
that they also go by themselves once idle.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import gc
import os
import subprocess
import sys
import textwrap
import threading
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import pid_alive, wait_at_gate, wait_until

import bingfa as bf
from bingfa._async import _shared
from bingfa._async._bridges import close_shared_pools
from bingfa._async._shared import PROCESSES
from bingfa._async._threads import THREADS, max_threads

# no_stalled_loop (tests/conftest.py): a bridge that held up its loop fails the test.
pytestmark = pytest.mark.usefixtures("no_stalled_loop")

request_id: contextvars.ContextVar[str] = bf.propagate(
    contextvars.ContextVar("bridges_request_id", default="-"))
not_carried: contextvars.ContextVar[str] = contextvars.ContextVar(
    "bridges_not_carried", default="-")


class BridgeError(Exception):
    """An error of the test's own, to tell it from anything bingfa raises."""


@pytest.fixture(autouse=True)
def _let_shared_pools_go() -> Iterator[None]:
    """After each test, stop the shared pools; the leak check then looks at what is left."""
    yield
    close_shared_pools()


# -- functions the tasks run ------------------------------------------------------

def fail_in_worker(message: str) -> None:
    raise BridgeError(message)


def read_vars() -> tuple[str, str]:
    return request_id.get(), not_carried.get()


def report_pid_then_block(fifo: str, gate: str) -> None:
    """Tell the test which process runs this task, then block until the gate opens."""
    fd = os.open(fifo, os.O_WRONLY)
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
    finally:
        os.close(fd)
    wait_at_gate(gate)


async def double(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


async def fail_async(message: str) -> None:
    await asyncio.sleep(0)
    raise BridgeError(message)


class Fifo:
    """A FIFO the loop reads without blocking; kept open for writing too, so never at EOF."""

    def __init__(self, folder: Path) -> None:
        self.path = str(folder / "report")
        os.mkfifo(self.path)
        self.fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK)

    async def line(self) -> str:
        loop = asyncio.get_running_loop()
        got: asyncio.Future[str] = loop.create_future()
        data = b""

        def readable() -> None:
            nonlocal data
            data += os.read(self.fd, 4096)
            if b"\n" in data and not got.done():
                got.set_result(data.split(b"\n")[0].decode())

        loop.add_reader(self.fd, readable)
        try:
            return await asyncio.wait_for(got, 30)
        finally:
            loop.remove_reader(self.fd)

    def close(self) -> None:
        os.close(self.fd)


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Fifo]:
    f = Fifo(tmp_path)
    yield f
    f.close()


# -- to_thread ---------------------------------------------------------------------

@pytest.mark.timeout(30)
def test_to_thread_returns_the_result_from_another_thread():
    async def main():
        ticks = 0

        def work(a, b, *, c):
            return a + b + c, threading.get_ident()

        async def tick():
            nonlocal ticks
            ticks += 1

        value, ident = await bf.to_thread(work, 1, 2, c=3)
        await tick()
        results = await asyncio.gather(*[bf.to_thread(pow, 2, i) for i in range(20)])
        return value, ident, results, ticks

    value, ident, results, ticks = asyncio.run(main())
    assert value == 6
    assert ident != threading.get_ident()
    assert results == [2 ** i for i in range(20)]
    assert ticks == 1


@pytest.mark.timeout(30)
def test_to_thread_raises_the_functions_error_with_its_traceback():
    async def main():
        with pytest.raises(BridgeError, match="from a thread") as caught:
            await bf.to_thread(fail_in_worker, "from a thread")
        return caught.value

    error = asyncio.run(main())
    frames = traceback.extract_tb(error.__traceback__)
    assert frames[-1].name == "fail_in_worker"
    assert frames[-1].line == "raise BridgeError(message)"
    # bingfa's worker loop is cut out between the await and the function
    assert not any("/bingfa/_async/_threads.py" in f.filename for f in frames)


@pytest.mark.timeout(30)
def test_to_thread_turns_stop_iteration_into_runtime_error():
    async def main():
        with pytest.raises(RuntimeError, match="StopIteration") as caught:
            await bf.to_thread(next, iter([]))
        return caught.value

    assert isinstance(asyncio.run(main()).__cause__, StopIteration)


@pytest.mark.timeout(30)
def test_to_thread_refuses_what_cannot_be_called():
    async def main():
        with pytest.raises(TypeError, match="callable"):
            await bf.to_thread(42)  # type: ignore[arg-type]

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_cancelling_to_thread_makes_bf_cancelled_true_in_the_thread():
    finished = threading.Event()
    polls: list[bool] = []

    def cooperative(loop, started):
        loop.call_soon_threadsafe(started.set_result, None)
        stop = threading.Event()  # never set: its wait is the polling interval
        while not bf.cancelled():
            polls.append(False)
            stop.wait(0.005)
        polls.append(True)
        finished.set()
        return "ignored"

    async def main():
        loop = asyncio.get_running_loop()
        started = loop.create_future()
        task = asyncio.create_task(bf.to_thread(cooperative, loop, started))
        await started
        assert not bf.cancelled()  # the caller's own flag is not the thread's
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task  # at once: the thread is not waited for

    asyncio.run(main())
    assert finished.wait(10), "the thread never saw bf.cancelled() turn true"
    assert polls[-1] is True
    assert polls.count(True) == 1


@pytest.mark.timeout(30)
def test_a_call_cancelled_while_it_waits_for_a_thread_never_runs():
    release = threading.Event()
    ran: list[str] = []

    def block(loop, started):
        loop.call_soon_threadsafe(started.set_result, None)
        release.wait()

    async def main():
        loop = asyncio.get_running_loop()
        starts = [loop.create_future() for _ in range(max_threads())]
        blockers = [asyncio.create_task(bf.to_thread(block, loop, s)) for s in starts]
        await asyncio.gather(*starts)  # every thread is busy now
        queued = asyncio.create_task(bf.to_thread(ran.append, "ran"))
        await asyncio.sleep(0)  # one loop step: the call is made and waits for a thread
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        release.set()
        await asyncio.gather(*blockers)
        return await bf.to_thread(len, "abc")  # the threads serve calls again

    assert asyncio.run(main()) == 3
    assert ran == []


@pytest.mark.timeout(30)
def test_a_timeout_around_to_thread_cancels_it_too():
    saw_it = threading.Event()

    def slow(loop, started):
        loop.call_soon_threadsafe(started.set_result, None)
        stop = threading.Event()  # never set: its wait is the polling interval
        while not bf.cancelled():
            stop.wait(0.005)
        saw_it.set()

    async def main():
        loop = asyncio.get_running_loop()
        started = loop.create_future()
        # Once it runs: a call cancelled before its thread took it never runs at all.
        task = asyncio.create_task(bf.to_thread(slow, loop, started))
        await started
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(task, 0.05)

    asyncio.run(main())
    assert saw_it.wait(10)


@pytest.mark.timeout(30)
def test_contextvars_travel_to_the_thread_and_not_back():
    def read_and_set():
        seen = not_carried.get(), request_id.get()
        not_carried.set("set in the thread")
        return seen

    async def main():
        not_carried.set("from the caller")
        request_id.set("r-1")
        seen = await bf.to_thread(read_and_set)
        return seen, not_carried.get()

    seen, after = contextvars.copy_context().run(asyncio.run, main())
    assert seen == ("from the caller", "r-1")
    assert after == "from the caller"


# -- to_process -------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_to_process_runs_in_another_process():
    async def main():
        pid = await bf.to_process(os.getpid)
        square = await bf.to_process(lambda x: x * x, 12)  # functions travel by value
        both = await asyncio.gather(bf.to_process(os.getpid), bf.to_process(pow, 3, 4))
        return pid, square, both

    pid, square, both = asyncio.run(main())
    assert pid != os.getpid()
    assert square == 144
    assert both[1] == 81


@pytest.mark.timeout(60)
def test_to_process_raises_the_error_with_the_workers_traceback():
    async def main():
        with pytest.raises(BridgeError, match="from a process") as caught:
            await bf.to_process(fail_in_worker, "from a process")
        return caught.value

    error = asyncio.run(main())
    assert isinstance(error.__cause__, bf.RemoteTraceback)
    assert "fail_in_worker" in error.__cause__.text
    assert "raise BridgeError(message)" in error.__cause__.text


@pytest.mark.timeout(60)
def test_cancelling_to_process_kills_the_worker_and_a_new_one_serves_the_next_call(
        fifo, gate):
    async def main():
        task = asyncio.create_task(bf.to_process(report_pid_then_block, fifo.path, gate.path))
        pid = int(await fifo.line())
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return pid

    pid = asyncio.run(main())
    assert pid != os.getpid()
    assert wait_until(lambda: not pid_alive(pid), timeout=10), f"worker {pid} still runs"

    async def again():
        return await bf.to_process(os.getpid), await bf.to_process(pow, 2, 5)

    new_pid, value = asyncio.run(again())
    assert value == 32
    assert new_pid != pid
    assert pid_alive(new_pid)


@pytest.mark.timeout(60)
def test_propagated_contextvars_travel_to_the_process():
    async def main():
        request_id.set("r-42")
        not_carried.set("stays here")
        return await bf.to_process(read_vars)

    assert contextvars.copy_context().run(asyncio.run, main()) == ("r-42", "-")


@pytest.mark.timeout(60)
def test_idle_threads_and_processes_go_by_themselves(monkeypatch):
    monkeypatch.setattr(_shared, "IDLE_SECONDS", 0.2)

    async def main():
        return await bf.to_thread(threading.get_ident), await bf.to_process(os.getpid)

    _, worker_pid = asyncio.run(main())
    assert wait_until(lambda: not THREADS.threads(), timeout=10)
    assert wait_until(lambda: PROCESSES.running() is None, timeout=10)
    assert wait_until(lambda: not pid_alive(worker_pid), timeout=10)
    # and they come back when called again
    _, again = asyncio.run(main())
    assert again != worker_pid


@pytest.mark.timeout(60)
def test_a_script_that_used_the_bridges_exits_at_once_and_leaves_no_process(tmp_path):
    # timeout=30 below: a script whose exit waited for its stuck thread would hang
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent("""
        import asyncio, os, threading
        import bingfa as bf

        def forever():
            threading.Event().wait()

        async def main():
            worker = await bf.to_process(os.getpid)
            await bf.to_thread(print, "thread ok")
            try:  # a thread that never returns must not hold up the exit
                await asyncio.wait_for(bf.to_thread(forever), 0.05)
            except TimeoutError:
                print("thread timed out")
            stuck = asyncio.create_task(bf.to_process(forever))
            await asyncio.sleep(0)
            print("worker", worker, flush=True)
            # main returns with a task still running: asyncio.run cancels it

        asyncio.run(main())
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    assert "thread ok" in done.stdout
    assert "thread timed out" in done.stdout
    worker = int(done.stdout.split("worker")[1])
    assert wait_until(lambda: not pid_alive(worker), timeout=10)


# -- run_async --------------------------------------------------------------------

@pytest.mark.timeout(30)
def test_run_async_from_the_main_thread():
    assert threading.current_thread() is threading.main_thread()
    assert bf.run_async(double(21)) == 42
    assert bf.run_async(double, 5) == 10
    assert bf.run_async(asyncio.sleep(0, result="awaitable")) == "awaitable"


@pytest.mark.timeout(30)
def test_run_async_raises_the_coroutines_error_with_its_traceback():
    with pytest.raises(BridgeError, match="in a coroutine") as caught:
        bf.run_async(fail_async, "in a coroutine")
    frames = traceback.extract_tb(caught.value.__traceback__)
    assert frames[-1].name == "fail_async"


@pytest.mark.timeout(30)
def test_run_async_from_a_worker_thread_while_a_loop_runs_in_another():
    def in_worker():
        assert threading.current_thread() is not threading.main_thread()
        return bf.run_async(double, 4)

    async def main():
        # the main thread's loop runs all along, and keeps serving its tasks
        other = asyncio.create_task(double(1))
        value = await bf.to_thread(in_worker)
        return value, await other

    assert asyncio.run(main()) == (8, 2)

    # and from a plain thread of our own while a loop runs in this one
    results: list[int] = []
    loops: list[asyncio.AbstractEventLoop] = []
    loop_runs = threading.Event()
    finished: list[asyncio.Future[None]] = []

    def plain():
        loop_runs.wait()
        results.append(bf.run_async(double(7)))
        loops[0].call_soon_threadsafe(finished[0].set_result, None)

    async def with_plain_thread():
        loop = asyncio.get_running_loop()
        loops.append(loop)
        finished.append(loop.create_future())
        loop_runs.set()
        await finished[0]  # the loop runs on while the thread runs its own

    # started before the loop: Thread.start() on the loop's thread could stall it
    thread = threading.Thread(target=plain)
    thread.start()
    try:
        asyncio.run(with_plain_thread())
    finally:
        loop_runs.set()
        thread.join()
    assert results == [14]


@pytest.mark.timeout(30)
def test_run_async_inside_a_running_loop_raises_instead_of_hanging():
    async def main():
        coroutine = double(1)
        with pytest.raises(bf.DeadlockError, match="inside a running event loop"):
            bf.run_async(coroutine)
        with pytest.raises(RuntimeError):  # DeadlockError is a RuntimeError
            bf.run_async(double, 1)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(main())
        gc.collect()
    # the refused coroutine was closed, not left to warn "never awaited"
    assert not [w for w in caught if "never awaited" in str(w.message)]


@pytest.mark.timeout(30)
def test_run_async_refuses_what_it_cannot_run():
    with pytest.raises(TypeError, match="coroutine"):
        bf.run_async(42)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="returned int"):
        bf.run_async(lambda: 42)  # type: ignore[arg-type,return-value]
    coroutine = double(1)
    with pytest.raises(TypeError, match="arguments"):
        bf.run_async(coroutine, 1)  # type: ignore[call-overload]


# -- from_thread ------------------------------------------------------------------

@pytest.mark.timeout(30)
def test_from_thread_runs_the_coroutine_on_the_loop_that_started_the_thread():
    def in_thread(x):
        value = bf.from_thread(double, x)
        on_loop = bf.from_thread(threading.get_ident)  # a plain function: called there
        with pytest.raises(BridgeError, match="back on the loop"):
            bf.from_thread(fail_async, "back on the loop")
        return value, on_loop

    async def main():
        return await bf.to_thread(in_thread, 21)

    value, loop_thread = asyncio.run(main())
    assert value == 42
    assert loop_thread == threading.get_ident()


@pytest.mark.timeout(30)
def test_from_thread_without_a_loop_says_so():
    with pytest.raises(RuntimeError, match="no event loop to go back to"):
        bf.from_thread(double, 1)

    errors: list[BaseException] = []

    def plain_thread():
        try:
            bf.from_thread(double, 1)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=plain_thread)
    thread.start()
    thread.join()
    assert len(errors) == 1
    assert isinstance(errors[0], RuntimeError)
    assert "bf.to_thread" in str(errors[0])


@pytest.mark.timeout(30)
def test_from_thread_on_the_loops_own_thread_raises_instead_of_hanging():
    async def main():
        with pytest.raises(bf.DeadlockError, match="own thread"):
            bf.from_thread(double, 1)

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_cancelling_to_thread_cancels_the_coroutine_its_thread_waits_for():
    outcome: list[str] = []
    returned = threading.Event()

    async def wait_forever(started):
        started.set_result(None)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            outcome.append("coroutine cancelled")
            raise

    def in_thread(started):
        try:
            bf.from_thread(wait_forever, started)
        except concurrent.futures.CancelledError:
            outcome.append("from_thread raised CancelledError")
        with pytest.raises(concurrent.futures.CancelledError):
            bf.from_thread(double, 1)  # after the cancel: refused at once
        returned.set()

    async def main():
        started = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(bf.to_thread(in_thread, started))
        await started
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # let the cancelled coroutine run its except clause before the loop ends
        for _ in range(5):
            await asyncio.sleep(0)

    asyncio.run(main())
    assert returned.wait(10)
    assert sorted(outcome) == ["coroutine cancelled", "from_thread raised CancelledError"]


def test_from_thread_in_a_thread_pool_task_submitted_from_a_coroutine():
    async def shout(word):
        await asyncio.sleep(0)
        return word.upper(), threading.get_ident()

    def task(word):
        return bf.from_thread(shout, word)

    async def main():
        loop_thread = threading.get_ident()
        with bf.Pool(2, mode="thread") as pool:
            one = await pool.submit(task, "a")
            many = await pool.amap(task, ["b", "c"])
        assert {ident for _, ident in [one, *many]} == {loop_thread}
        return [word for word, _ in [one, *many]]

    assert asyncio.run(main()) == ["A", "B", "C"]
    # Submitted from plain code: there is no loop to reach.
    with (bf.Pool(1, mode="thread") as pool,
          pytest.raises(RuntimeError, match="no event loop")):
        pool.submit(task, "d").result(timeout=10)
