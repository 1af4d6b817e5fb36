"""Faults found by probing a process pool from outside.

Workers killed as they start, tasks whose programs outlive a killed worker, an
argument that takes long to arrive: each case with real processes and real
signals, and psutil to find what is left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from conftest import pid_alive, wait_at_gate, wait_until

import bingfa as bf

PY = sys.executable


# --- workers killed as they start ------------------------------------------------------


def _start_slowly(folder: str, gate: str) -> None:
    """An initializer that says who it is, then waits for the test to let it go."""
    Path(folder, str(os.getpid())).touch()
    wait_at_gate(gate)


def _new_pid(folder: Path, seen: set[int]) -> int:
    found: list[int] = []

    def appeared() -> bool:
        found[:] = [int(p.name) for p in folder.iterdir() if int(p.name) not in seen]
        return bool(found)

    assert wait_until(appeared, timeout=20)
    seen.add(found[0])
    return found[0]


@pytest.mark.timeout(90)
def test_workers_killed_as_they_start_are_replaced_and_never_break_the_pool(tmp_path, gate):
    """The OOM killer or a chaos tool may hit a worker before it is ready, again and again."""
    folder = tmp_path / "starting"
    folder.mkdir()
    with bf.Pool(1, mode="process", initializer=_start_slowly,
                 initargs=(str(folder), gate.path)) as pool:
        seen: set[int] = set()
        for _ in range(12):  # well past any count "in a row", and past the rate limit
            pid = _new_pid(folder, seen)
            os.kill(pid, signal.SIGKILL)
        gate.close()  # the next worker starts
        assert pool.submit(abs, -5).result(timeout=30) == 5
        assert pool.map(abs, range(-3, 0)) == [3, 2, 1]


def _exit_at_start() -> None:
    os._exit(3)


@pytest.mark.timeout(60)
def test_workers_that_exit_as_they_start_break_the_pool_with_one_line():
    with bf.Pool(1, mode="process", initializer=_exit_at_start) as pool:
        err = pool.submit(abs, 1).exception(timeout=30)
    assert isinstance(err, bf.InitializerError)
    assert str(err).startswith("worker processes exit with code 3 as they start, 3 times in "
                               "a row: the pool cannot run tasks")
    assert "\n" not in str(err)


# --- a killed worker takes what its task started with it --------------------------------


def _start_programs_and_wait(folder: str, how: str) -> None:
    """Start a program (and a grandchild that leaves its process group), then block."""
    if how == "subprocess":
        child = subprocess.Popen(["sh", "-c", "setsid sleep 60 & echo $! > grandchild; sleep 60"],
                                 cwd=folder)
        Path(folder, "child").write_text(str(child.pid))
    else:
        # bf.run starts its command in a session of its own: still our descendant.
        def run() -> None:
            bf.run(["sh", "-c", "echo $$ > child; sleep 60"], cwd=folder)

        threading.Thread(target=run, daemon=True).start()
    threading.Event().wait(120)


def _pids(folder: Path, names: list[str]) -> list[int]:
    pids: list[int] = []

    def written() -> bool:
        try:
            pids[:] = [int((folder / n).read_text()) for n in names]
        except (FileNotFoundError, ValueError):
            return False
        return True

    assert wait_until(written, timeout=20)
    return pids


def _stop_a_task(folder: Path, how: str, stop: str, names: list[str], pids: list[int]) -> None:
    timeout = 1.0 if stop == "task_timeout" else None
    with bf.Pool(1, mode="process", task_timeout=timeout) as pool:
        fut = pool.submit(_start_programs_and_wait, str(folder), how)
        pids += _pids(folder, names)
        assert all(pid_alive(p) for p in pids)
        if stop == "terminate":
            pool.terminate()
        elif stop == "error in with":
            raise KeyError("an error in the with block")
        fut.result(timeout=30)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["subprocess", "bf.run"])
@pytest.mark.parametrize("stop", ["task_timeout", "terminate", "error in with"])
def test_stopping_a_task_ends_the_programs_it_started(tmp_path, how, stop):
    names = ["child", "grandchild"] if how == "subprocess" else ["child"]
    pids: list[int] = []
    try:
        with pytest.raises((bf.TaskTimeoutError, bf.PoolClosedError, KeyError)):
            _stop_a_task(tmp_path, how, stop, names, pids)
        assert wait_until(lambda: not any(pid_alive(p) for p in pids), timeout=2)
    finally:
        for pid in pids:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


_ORPHANING_SCRIPT = '''\
import subprocess, sys, threading
import bingfa as bf

def start(folder):
    child = subprocess.Popen(["sleep", "60"])
    return child.pid

with bf.Pool(1, mode="process") as pool:
    print(pool.submit(start, sys.argv[1]).result(), flush=True)
    threading.Event().wait(60)
'''


@pytest.mark.timeout(60)
def test_a_killed_parent_takes_its_workers_programs_with_it(tmp_path):
    script = tmp_path / "example.py"
    script.write_text(_ORPHANING_SCRIPT)
    proc = subprocess.Popen([PY, str(script), str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    program = 0
    try:
        program = int(proc.stdout.readline())
        assert pid_alive(program)
        proc.kill()
        proc.wait(timeout=10)
        assert wait_until(lambda: not pid_alive(program), timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
        if program and pid_alive(program):
            psutil.Process(program).kill()  # it holds the script's stdout
        proc.communicate()


# --- the task's clock starts with the task ----------------------------------------------


def _arrive_slowly():
    time.sleep(1.0)  # stands for a large argument on a slow pipe: it is not the task's time
    return "arrived"


class SlowToArrive:
    """An argument whose unpickling in the worker takes a second."""

    def __reduce__(self):
        return (_arrive_slowly, ())


@pytest.mark.timeout(60)
def test_task_timeout_does_not_count_the_arguments_transfer():
    with bf.Pool(1, mode="process", task_timeout=0.3) as pool:
        assert pool.submit(str, SlowToArrive()).result(timeout=30) == "arrived"
        with pytest.raises(bf.TaskTimeoutError):
            pool.submit(time.sleep, 5).result(timeout=30)
