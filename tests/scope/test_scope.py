"""bf.scope(): nothing outlives the block; the first failure cancels the rest."""

# PT012: a scope raises when its whole block ends, so the block is what runs
# under pytest.raises, several statements and all.
# ruff: noqa: PT012

from __future__ import annotations

import contextvars
import os
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest
from conftest import wait_until

import bingfa as bf

PY = sys.executable


def wait_until_cancelled() -> str:
    while not bf.cancelled():
        time.sleep(0.005)
    return "saw it"


def fail(message: str, after: float = 0.0) -> None:
    time.sleep(after)
    raise ValueError(message)


def sleep_forever() -> None:
    time.sleep(300)


def start_grandchild(path: str) -> None:
    """A process child that starts a program of its own, writes its pid, and waits."""
    child = subprocess.Popen(["sleep", "300"])
    with open(path, "w") as fh:
        fh.write(str(child.pid))
    time.sleep(300)


@pytest.mark.timeout(30)
def test_leaving_the_block_waits_for_every_kind_of_child():
    with bf.scope() as s:
        a = s.spawn(lambda x: x * 2, 21)
        b = s.spawn(os.getpid, mode="process")
        c = s.run(["sh", "-c", "sleep 0.2; echo done"], text=True)
    assert a.result() == 42
    assert b.result() != os.getpid()
    assert c.result().stdout == "done\n"
    assert c.result().returncode == 0


@pytest.mark.timeout(30)
def test_the_first_failure_cancels_the_rest_and_only_it_is_raised():
    started = time.monotonic()
    with pytest.raises(ExceptionGroup) as caught, bf.scope() as s:
        thread = s.spawn(wait_until_cancelled)
        process = s.spawn(sleep_forever, mode="process")
        command = s.run(["sleep", "300"])
        s.spawn(fail, "boom", 0.2)
    assert time.monotonic() - started < 20
    assert [repr(e) for e in caught.value.exceptions] == ["ValueError('boom')"]
    assert thread.cancelled()
    assert process.cancelled()
    assert command.cancelled()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("failures", [1, 2, 10])
def test_with_on_error_wait_every_failure_is_in_the_group(failures):
    with pytest.raises(ExceptionGroup) as caught, bf.scope(on_error="wait") as s:
        for i in range(failures):
            s.spawn(fail, f"failure {i}")
        ok = s.spawn(lambda: "finished anyway")
    group = caught.value
    assert sorted(str(e) for e in group.exceptions) == sorted(
        f"failure {i}" for i in range(failures))
    assert all(type(e) is ValueError for e in group.exceptions)
    assert ok.result() == "finished anyway"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("method", [None, "fork"])
def test_a_cancelled_process_child_leaves_no_grandchild(tmp_path, method):
    pid_file = tmp_path / "grandchild.pid"
    with pytest.raises(ExceptionGroup), bf.scope() as s:
        child = s.spawn(start_grandchild, str(pid_file), mode="process", start_method=method)
        while not pid_file.exists() or not pid_file.read_text():
            time.sleep(0.01)
        s.spawn(fail, "stop them")
    assert child.cancelled()
    grandchild = int(pid_file.read_text())
    gone = not psutil.pid_exists(grandchild)
    if not gone:
        try:
            gone = psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            gone = True
    assert gone, f"the grandchild {grandchild} outlived its scope"


@pytest.mark.timeout(30)
def test_a_timeout_cancels_everything_and_raises_task_timeout_error():
    started = time.monotonic()
    with pytest.raises(bf.TaskTimeoutError) as caught, bf.scope(timeout=0.3) as s:
        waiting = s.spawn(wait_until_cancelled)
        s.spawn(sleep_forever, mode="process")
        s.run("sleep 300")
    assert isinstance(caught.value, TimeoutError)
    assert caught.value.timeout == 0.3
    assert waiting.cancelled()
    assert time.monotonic() - started < 20


@pytest.mark.timeout(30)
def test_cancel_from_another_thread_ends_the_block_without_an_error():
    with bf.scope() as s:
        child = s.spawn(wait_until_cancelled)
        threading.Timer(0.1, s.cancel).start()
        command = s.run(["sleep", "300"])
    assert s.cancelled
    assert child.cancelled()
    assert command.cancelled()


@pytest.mark.timeout(30)
def test_check_cancelled_stops_a_thread_at_a_safe_point():
    steps = []
    first_step = threading.Event()

    def careful():
        for i in range(10_000):
            bf.check_cancelled()
            steps.append(i)
            first_step.set()
            time.sleep(0.001)

    with bf.scope() as s:
        child = s.spawn(careful)
        first_step.wait()
        s.cancel()
    assert child.cancelled()
    assert 0 < len(steps) < 10_000
    bf.check_cancelled()  # outside a task: nothing to do


@pytest.mark.timeout(30)
def test_an_error_in_the_block_cancels_the_children_and_joins_the_group():
    with pytest.raises(ExceptionGroup) as caught, bf.scope() as s:
        child = s.spawn(wait_until_cancelled)
        raise KeyError("in the block")
    assert [repr(e) for e in caught.value.exceptions] == ["KeyError('in the block')"]
    assert child.cancelled()


@pytest.mark.timeout(30)
def test_cancelling_the_outer_scope_cancels_the_inner_one():
    inner_children = []
    inner_started = threading.Event()

    def opens_a_scope():
        with bf.scope() as inner:  # in a thread child: nested under the outer scope
            inner_children.append(inner.spawn(wait_until_cancelled))
            inner_children.append(inner.run(["sleep", "300"]))
            inner_started.set()
        return "inner ended"

    with bf.scope() as outer:
        opener = outer.spawn(opens_a_scope)
        inner_started.wait()
        outer.cancel()
    assert all(child.cancelled() for child in inner_children)
    assert opener.cancelled()


@pytest.mark.timeout(30)
def test_an_inner_failure_stays_in_its_block_unless_it_propagates():
    with bf.scope() as outer:
        survivor = outer.spawn(lambda: "outer child")
        try:
            with bf.scope() as inner:
                inner.spawn(fail, "inner")
        except ExceptionGroup as group:
            handled = [str(e) for e in group.exceptions]
    assert handled == ["inner"]
    assert survivor.result() == "outer child"
    with pytest.raises(ExceptionGroup) as caught, bf.scope() as outer, bf.scope() as inner:
        inner.spawn(fail, "inner")
    (nested,) = caught.value.exceptions
    assert isinstance(nested, ExceptionGroup)
    assert [str(e) for e in nested.exceptions] == ["inner"]


@pytest.mark.timeout(30)
def test_starting_work_in_a_finished_or_cancelling_scope_is_refused():
    with bf.scope() as s:
        s.cancel()
        with pytest.raises(bf.ScopeClosedError, match="cancelling"):
            s.spawn(print)
    for start in (lambda: s.spawn(print), lambda: s.run(["true"]),
                  lambda: s.spawn(print, mode="process")):
        with pytest.raises(bf.ScopeClosedError, match="ended"):
            start()
    with pytest.raises(bf.ScopeClosedError, match="once"), s:
        pass


@pytest.mark.timeout(30)
def test_bad_arguments_say_what_is_wrong():
    with pytest.raises(ValueError, match="on_error"):
        bf.scope(on_error="ignore")
    with pytest.raises(ValueError, match="timeout"):
        bf.scope(timeout=-1)
    with bf.scope() as s:
        with pytest.raises(ValueError, match="mode must be"):
            s.spawn(print, mode="greenlet")
        with pytest.raises(TypeError, match="coroutine function"):
            s.spawn(print, mode="async")
        with pytest.raises(ValueError, match="start_method"):
            s.spawn(print, start_method="fork")
        with pytest.raises(TypeError, match="callable"):
            s.spawn(42)
        with pytest.raises(ValueError, match="empty"):
            s.run([])
    # A program that does not exist fails its child, as its exit 127 would.
    with pytest.raises(ExceptionGroup) as caught, bf.scope() as s:
        missing = s.run(["no-such-program-bingfa"])
    assert isinstance(missing.exception(), bf.CommandNotFoundError)
    assert caught.value.exceptions == (missing.exception(),)


@pytest.mark.timeout(30)
def test_a_running_thread_pool_task_is_told_and_a_queued_one_cancelled():
    with bf.Pool(1, mode="thread") as pool:
        with pytest.raises(ExceptionGroup) as caught, bf.scope() as s:
            running = s.submit(pool, wait_until_cancelled)
            queued = s.submit(pool, lambda: "never")
            s.spawn(fail, "stop", 0.1)
        assert [str(e) for e in caught.value.exceptions] == ["stop"]
        assert running.cancelled()  # it saw bf.cancelled() and stopped; the scope waited
        assert queued.cancelled()
        assert pool.submit(abs, -1).result(timeout=10) == 1


@pytest.mark.timeout(60)
def test_a_running_auto_pool_task_is_told_wherever_it_runs():
    """Held by auto's probe the first time, then on the pool auto chose."""
    with bf.Pool(2, mode="auto") as pool:
        for attempt in range(2):
            with pytest.raises(ExceptionGroup) as caught, bf.scope() as s:
                running = s.submit(pool, wait_until_cancelled)
                s.spawn(fail, f"stop {attempt}", 0.1)
            assert [str(e) for e in caught.value.exceptions] == [f"stop {attempt}"]
            assert running.cancelled()  # it saw bf.cancelled() and stopped
        assert pool.mode == "thread"  # it waits: threads
        assert pool.submit(abs, -1).result(timeout=10) == 1


def grandchild_gone(pid_file) -> bool:
    grandchild = int(pid_file.read_text())
    try:
        return psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.timeout(30)
def test_a_running_process_pool_task_is_killed_with_its_tree(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    with bf.Pool(1, mode="process") as pool:
        with pytest.raises(ExceptionGroup) as caught, bf.scope() as s:
            running = s.submit(pool, start_grandchild, str(pid_file))
            while not pid_file.exists() or not pid_file.read_text():
                time.sleep(0.01)
            s.spawn(fail, "stop")
        assert [str(e) for e in caught.value.exceptions] == ["stop"]
        assert running.cancelled()
        assert wait_until(lambda: grandchild_gone(pid_file), timeout=10)
        # The pool replaced the worker it killed and goes on.
        assert pool.submit(abs, -2).result(timeout=20) == 2


@pytest.mark.timeout(30)
def test_thread_children_see_the_spawners_contextvars():
    var = contextvars.ContextVar("var", default="unset")
    var.set("spawner")

    def read_and_set():
        seen = var.get()
        var.set("child")
        return seen

    with bf.scope() as s:
        child = s.spawn(read_and_set)
    assert child.result() == "spawner"
    assert var.get() == "spawner"


@pytest.mark.timeout(60)
def test_ctrl_c_in_a_scope_stops_every_child_at_once(tmp_path):
    script = tmp_path / "example.py"
    script.write_text(textwrap.dedent('''\
        import time
        import bingfa as bf

        def forever():
            time.sleep(300)

        with bf.scope() as s:
            s.spawn(forever, mode="process")
            s.run(["sleep", "300"])
            s.spawn(lambda: [time.sleep(0.01) for _ in iter(bf.cancelled, True)])
            print("started", flush=True)
            time.sleep(300)
    '''))
    child = subprocess.Popen([PY, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, cwd=tmp_path)
    try:
        assert child.stdout.readline() == "started\n"
        me = psutil.Process(child.pid)
        family = me.children(recursive=True)
        assert len(family) >= 2
        sent = time.monotonic()
        child.send_signal(2)
        _, err = child.communicate(timeout=20)
        took = time.monotonic() - sent
    finally:
        child.kill()
        child.wait()
    assert child.returncode != 0
    assert "KeyboardInterrupt" in err
    assert took < 5, took  # (the bar is 0.5 s; the test leaves room for a busy host)
    # The zygote notices its parent's death through a pidfd, a moment later.
    _, left = psutil.wait_procs(family, timeout=5)
    assert not left, left


def _blocked_signals(status_path: str) -> int:
    with open(status_path) as fh:
        for line in fh:
            if line.startswith("SigBlk:"):
                return int(line.split()[1], 16)
    raise AssertionError(f"no SigBlk in {status_path}")


@pytest.mark.timeout(30)
def test_ctrl_c_is_left_to_the_main_thread_and_commands_start_with_a_clean_mask():
    """bingfa's threads block SIGINT, so Linux hands Ctrl-C to the main thread (the
    only one Python runs handlers in: a signal taken by another thread would not
    wake a main thread asleep in a blocking call); programs they start block nothing."""
    sigint = 1 << (2 - 1)

    def my_mask() -> int:
        return _blocked_signals(f"/proc/self/task/{threading.get_native_id()}/status")

    with bf.scope() as s:
        child_mask = s.spawn(my_mask)
        command = s.run(["grep", "SigBlk", "/proc/self/status"], text=True)
    with bf.Pool(1, mode="thread") as pool:
        worker_mask = pool.submit(my_mask).result()
    assert child_mask.result() & sigint
    assert worker_mask & sigint
    assert int(command.result().stdout.split()[1], 16) == 0
    assert not my_mask() & sigint  # the caller's own mask is as it was


@pytest.mark.timeout(30)
def test_a_spawn_refused_by_a_cancelling_scope_is_not_a_failure_of_its_own():
    settled = threading.Event()
    with pytest.raises(ExceptionGroup) as caught, bf.scope() as s:
        failing = s.spawn(fail, "first")
        # Done-callbacks run in order: the scope's own (which cancels it) first.
        failing.add_done_callback(lambda _: settled.set())
        settled.wait()
        assert s.cancelled
        s.spawn(print)  # refused: the scope is cancelling; the block ends here
    assert [str(e) for e in caught.value.exceptions] == ["first"]


@pytest.mark.timeout(60)
def test_a_scope_killed_with_sigkill_leaves_nothing_behind(tmp_path):
    script = tmp_path / "example.py"
    script.write_text(textwrap.dedent('''\
        import subprocess, sys, time
        import bingfa as bf

        def tree():
            subprocess.Popen(["sleep", "300"])
            print("tree", flush=True)
            time.sleep(300)

        with bf.scope() as s:
            s.spawn(tree, mode="process", start_method="fork")
            s.spawn(tree, mode="process")
            s.run(["sleep", "300"])
            time.sleep(300)
    '''))
    child = subprocess.Popen([PY, str(script)], stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        assert [child.stdout.readline(), child.stdout.readline()] == ["tree\n", "tree\n"]
        family = psutil.Process(child.pid).children(recursive=True)
        assert len([p for p in family if p.name() == "sleep"]) >= 2
        child.kill()
        child.wait(timeout=10)
        # Workers and forked children watch their parent through a pidfd; the
        # reaper ends the command's session: within a few seconds all are gone.
        _, left = psutil.wait_procs(family, timeout=10)
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
    for proc in left:
        proc.kill()
    assert not left, left


async def tick_until_cancelled(ticks):
    import asyncio

    try:
        while True:
            ticks.append(1)
            await asyncio.sleep(0.01)
    except asyncio.CancelledError:
        ticks.append("cancelled")
        raise


async def add_later(a, b):
    import asyncio

    await asyncio.sleep(0.01)
    return a + b


def fail_soon():
    raise KeyError("stop")


@pytest.mark.timeout(30)
def test_a_plain_scope_runs_coroutines_on_a_loop_of_its_own():
    with bf.scope() as s:
        added = s.spawn(add_later, 2, 3, mode="async")
        threaded = s.spawn(sum, [1, 2])
    assert added.result() == 5
    assert threaded.result() == 3
    ticks: list[object] = []
    with pytest.raises(ExceptionGroup) as caught, bf.scope() as s:
        ticking = s.spawn(tick_until_cancelled, ticks, mode="async")
        s.spawn(fail_soon)
    assert [type(e) for e in caught.value.exceptions] == [KeyError]
    assert ticking.cancelled()
    assert ticks[-1] == "cancelled"
    # The loop's thread ended with the block (the leak fixture checks it too).
    assert not [t for t in threading.enumerate() if t.name == "bingfa-scope-loop"]
