"""bf.Process and bf.Thread: handles whose results and errors come back."""

from __future__ import annotations

import concurrent.futures
import ctypes
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest

import bingfa as bf

PY = sys.executable


def double(x: int) -> int:
    return x * 2


def refuse() -> None:
    raise ValueError("child says no")


def kill_myself() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def segfault() -> None:
    ctypes.string_at(0)


def start_grandchild_and_wait(path: str) -> None:
    child = subprocess.Popen(["sleep", "300"])
    with open(path, "w") as fh:
        fh.write(str(child.pid))
    time.sleep(300)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("method", [None, "fork", "spawn"])
def test_a_process_gives_its_result_back(method):
    p = bf.Process(double, args=(21,), start_method=method)
    assert p.pid is None
    assert p.exitcode is None
    p.start()
    assert p.pid not in (None, os.getpid())
    assert p.result(timeout=20) == 42
    assert p.exitcode == 0
    assert not p.is_alive()
    assert p.future.done()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("method", [None, "fork"])
def test_a_process_raises_the_childs_error_with_its_traceback(method):
    p = bf.Process(refuse, start_method=method)
    p.start()
    with pytest.raises(ValueError, match="child says no") as caught:
        p.result()
    assert "refuse" in str(caught.value.__cause__)
    assert p.exitcode == 1


@pytest.mark.timeout(30)
@pytest.mark.parametrize("method", [None, "fork"])
@pytest.mark.parametrize(("target", "args", "exitcode", "error"), [
    (sys.exit, (3,), 3, SystemExit),
    (os._exit, (7,), 7, bf.WorkerCrashedError),
    (kill_myself, (), -signal.SIGKILL, bf.WorkerCrashedError),
    (segfault, (), -signal.SIGSEGV, bf.WorkerCrashedError),
])
def test_how_a_process_ended_is_told(target, args, exitcode, error, method):
    p = bf.Process(target, args=args, start_method=method)
    p.start()
    p.join(timeout=20)
    assert isinstance(p.exception(), error)
    assert p.exitcode == exitcode
    if error is bf.WorkerCrashedError:
        crash = p.exception()
        assert (crash.signal, crash.exitcode) in ((-exitcode, None), (None, exitcode))


@pytest.mark.timeout(30)
@pytest.mark.parametrize("method", [None, "fork"])
@pytest.mark.parametrize("stop", ["terminate", "kill"])
def test_terminate_and_kill_end_the_whole_tree(tmp_path, stop, method):
    pid_file = tmp_path / "grandchild.pid"
    p = bf.Process(start_grandchild_and_wait, args=(str(pid_file),), start_method=method)
    p.start()
    while not pid_file.exists() or not pid_file.read_text():
        time.sleep(0.01)  # the child writes it once its grandchild runs
    grandchild = psutil.Process(int(pid_file.read_text()))
    child = psutil.Process(p.pid)
    getattr(p, stop)()
    p.join(timeout=20)
    assert p.future.cancelled()
    # join waited for the child itself to be gone, not only for its outcome
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    assert p.exitcode == (-signal.SIGTERM if stop == "terminate" else -signal.SIGKILL)
    _, alive = psutil.wait_procs([grandchild], timeout=5)
    assert not alive
    with pytest.raises(concurrent.futures.CancelledError):
        p.result()


@pytest.mark.timeout(30)
def test_a_handle_runs_once_and_only_after_start():
    p = bf.Process(double, args=(1,))
    with pytest.raises(RuntimeError, match="start\\(\\) first"):
        p.result()
    with pytest.raises(RuntimeError, match="start\\(\\) first"):
        p.join()
    p.start()
    with pytest.raises(RuntimeError, match="started already"):
        p.start()
    assert p.result() == 2
    p.terminate()  # after the end: nothing to do
    assert p.exitcode == 0
    with pytest.raises(TypeError, match="callable"):
        bf.Thread(42)


@pytest.mark.timeout(30)
def test_a_thread_in_a_with_block_is_joined_and_its_error_raised():
    def count():
        n = 0
        while not bf.cancelled() and n < 3:
            n += 1
        return threading.current_thread().name, n

    with bf.Thread(count, name="LoopThread") as t:
        pass
    assert t.result() == ("LoopThread", 3)
    assert not t.is_alive()
    with pytest.raises(ValueError, match="child says no"), bf.Thread(refuse):
        pass


@pytest.mark.timeout(30)
def test_an_error_in_the_block_stops_the_thread_and_wins():
    def until_cancelled():
        while not bf.cancelled():
            time.sleep(0.001)
        return "stopped"

    with pytest.raises(KeyError), bf.Thread(until_cancelled) as t:
        raise KeyError("the block's own")
    assert t.future.cancelled()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["forkserver", "fork"])
def test_a_dropped_process_handle_is_ended_at_exit_and_prints_reach_the_parent(tmp_path,
                                                                               method):
    script = tmp_path / "example.py"
    script.write_text(textwrap.dedent('''\
        import os, sys, time
        import bingfa as bf

        def run_proc(name):
            # One write each (print makes two), so the two processes' lines never mix.
            sys.stdout.write(f"Run child process {name} ({os.getpid()})...\\n")
            sys.stdout.flush()
            time.sleep(300)

        p = bf.Process(run_proc, args=("test",), start_method=sys.argv[1])
        p.start()
        sys.stdout.write(f"child {p.pid}\\n")
        sys.stdout.flush()
        while not p.is_alive():
            pass
        time.sleep(0.5)  # let it print (a demonstration script, not a test)
    '''))
    started = time.monotonic()
    done = subprocess.run([PY, str(script), method], capture_output=True, text=True,
                          timeout=50, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 30
    lines = done.stdout.splitlines()
    (child,) = [int(line.split()[1]) for line in lines if line.startswith("child ")]
    assert f"Run child process test ({child})..." in lines
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE
