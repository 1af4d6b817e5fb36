"""Nothing a command starts outlives its end, nor the caller's death.

Two promises, tested with real processes and real signals:

- An early end (timeout, ``break``, closing a stream, Ctrl-C) ends the
  command's whole session: also a grandchild that moved to a process group of
  its own, and one that called ``setsid`` while its parent ran. The
  grandchildren here ignore SIGTERM, so only the final SIGKILL sweep ends them.
- A Python caller that dies (SIGKILL, or SIGTERM with no handler: no atexit
  runs) has its commands ended within 2 seconds by its reaper, and so does a
  process-pool worker killed on a task timeout.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from conftest import pid_alive, wait_until

import bingfa as bf

PY = sys.executable
# What the brief of this feature promises: the commands of a dead caller are
# gone within 2 s of its death.
AFTER_DEATH = 2.0

# A command with a grandchild that escapes: ``how`` is ``setpgid`` (a process
# group of its own, as GNU timeout or a job-control shell makes) or
# ``setsid`` (a session of its own; the command, its parent, keeps running).
# The grandchild ignores SIGTERM and lets go of the output pipes, as a daemon
# would; it writes its pid to ``pidfile`` once it has escaped.
ESCAPER = """\
import os, signal, sys, time
how, pidfile = sys.argv[1], sys.argv[2]
if os.fork() == 0:
    if how == "setpgid":
        os.setpgid(0, 0)
    else:
        os.setsid()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    with open(pidfile + ".part", "w") as f:
        f.write(str(os.getpid()))
    os.rename(pidfile + ".part", pidfile)
    time.sleep(100)
    os._exit(0)
print("started", flush=True)
time.sleep(100)
"""

HOW = ["setpgid", "setsid"]


@pytest.fixture
def escaper(tmp_path: Path) -> Path:
    path = tmp_path / "escaper.py"
    path.write_text(ESCAPER)
    return path


def read_pid(path: Path, timeout: float = 15) -> int:
    """The pid a process wrote to ``path`` (``echo $$ > path`` creates it empty first)."""
    assert wait_until(lambda: path.exists() and path.read_text().strip().isdigit(), timeout), \
        f"{path} was never written"
    return int(path.read_text())


def kill_leftovers(*pids: int) -> None:
    """After a failure: no sleeper outlives the test."""
    for pid in pids:
        try:
            psutil.Process(pid).kill()
        except psutil.Error:
            pass


def escaped_grandchild_must_die(pidfile: Path, timeout: float = 5) -> None:
    grandchild = read_pid(pidfile)
    try:
        assert wait_until(lambda: not pid_alive(grandchild), timeout), \
            "the escaped grandchild survived"
    finally:
        kill_leftovers(grandchild)


# --- early ends reach the whole session ----------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("how", HOW)
def test_a_timeout_ends_a_grandchild_that_escaped_the_group(escaper, tmp_path, how):
    pidfile = tmp_path / "grandchild"
    r = bf.run([PY, str(escaper), how, str(pidfile)], timeout=1, text=True)
    assert r.timed_out
    assert r.stdout == "started\n"
    escaped_grandchild_must_die(pidfile)


@pytest.mark.timeout(30)
def test_a_timeout_ends_an_escaped_grandchild_that_holds_the_pipes(tmp_path):
    # This one keeps stdout: the command is finished only once bingfa stops
    # reading, a second after the kill; the grandchild must not be left behind.
    pidfile = tmp_path / "grandchild"
    script = (f"python3 -c 'import os, signal, time; os.setpgid(0, 0); "
              f"signal.signal(signal.SIGTERM, signal.SIG_IGN); "
              f"open(\"{pidfile}\", \"w\").write(str(os.getpid())); time.sleep(100)' & "
              f"echo started; sleep 100")
    started = time.monotonic()
    r = bf.run(["sh", "-c", script], timeout=1, text=True)
    assert r.timed_out
    assert time.monotonic() - started < 20
    escaped_grandchild_must_die(pidfile)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("how", HOW)
def test_leaving_run_many_early_ends_escaped_grandchildren(escaper, tmp_path, how):
    pidfile = tmp_path / "grandchild"
    with bf.run_many([["true"], [PY, str(escaper), how, str(pidfile)]], jobs=2) as run:
        assert next(run).ok
        read_pid(pidfile)
    escaped_grandchild_must_die(pidfile)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("how", HOW)
def test_closing_a_stream_ends_escaped_grandchildren(escaper, tmp_path, how):
    pidfile = tmp_path / "grandchild"
    with bf.stream([PY, str(escaper), how, str(pidfile)]) as lines:
        assert next(lines) == ("stdout", "started")
        read_pid(pidfile)
    escaped_grandchild_must_die(pidfile)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("how", HOW)
def test_a_run_many_halt_ends_escaped_grandchildren(escaper, tmp_path, how):
    pidfile = tmp_path / "grandchild"
    commands = [[PY, str(escaper), how, str(pidfile)],
                ["sh", "-c", f"until [ -s {pidfile} ]; do sleep 0.01; done; exit 1"]]
    with pytest.raises(bf.CommandError, match="halted"):
        list(bf.run_many(commands, jobs=2, halt="now,fail=1", timeout=20))
    escaped_grandchild_must_die(pidfile)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("how", HOW)
def test_ctrl_c_ends_escaped_grandchildren(escaper, tmp_path, how):
    pidfile = tmp_path / "grandchild"
    script = f"import bingfa as bf; bf.run([{PY!r}, {str(escaper)!r}, {how!r}, {str(pidfile)!r}])"
    proc = subprocess.Popen([PY, "-c", script], stderr=subprocess.PIPE)
    try:
        read_pid(pidfile)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
        assert b"KeyboardInterrupt" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    escaped_grandchild_must_die(pidfile)


# --- a caller that dies takes its commands with it -----------------------------------------

# Starts ``argv`` with the API named by argv[1] and leaves it running; then waits
# to be killed. Threads are daemons, so nothing holds the process but us.
CALLER = """\
import asyncio, sys, threading, time
import bingfa as bf
api, cmd = sys.argv[1], sys.argv[2:]
if api == "run":
    threading.Thread(target=bf.run, args=(cmd,), daemon=True).start()
elif api == "run_many":
    threading.Thread(target=lambda: list(bf.run_many([cmd] * 2, jobs=2)), daemon=True).start()
elif api == "stream":
    lines = bf.stream(cmd)
elif api == "arun":
    threading.Thread(target=asyncio.run, args=(bf.arun(cmd),), daemon=True).start()
time.sleep(100)
"""
COMMANDS_OF = {"run": 1, "run_many": 2, "stream": 1, "arun": 1}


def start_caller(tmp_path: Path, api: str, *cmd: str) -> subprocess.Popen:
    script = tmp_path / "caller.py"
    script.write_text(CALLER)
    return subprocess.Popen([PY, str(script), api, *cmd])


def children_named(pid: int, name: str) -> list[psutil.Process]:
    try:
        return [p for p in psutil.Process(pid).children() if name in " ".join(p.cmdline())]
    except psutil.Error:
        return []


def kill_caller(caller: subprocess.Popen, sig: int) -> float:
    """Send ``sig`` to the caller and wait for its death; when it died."""
    caller.send_signal(sig)
    assert caller.wait(timeout=20) == -sig
    return time.monotonic()


@pytest.mark.timeout(40)
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
@pytest.mark.parametrize("api", list(COMMANDS_OF))
def test_the_commands_of_a_caller_that_dies_are_ended(tmp_path, api, sig):
    caller = start_caller(tmp_path, api, "sleep", "30")
    sleeps: list[int] = []
    try:
        assert wait_until(lambda: len(children_named(caller.pid, "sleep")) == COMMANDS_OF[api],
                          15), "the commands never started"
        sleeps = [p.pid for p in children_named(caller.pid, "sleep")]
        # It starts just after the first command.
        assert wait_until(lambda: children_named(caller.pid, "_commands/_reaper.py"), 15)
        (reaper,) = [p.pid for p in children_named(caller.pid, "_commands/_reaper.py")]
        died = kill_caller(caller, sig)
        assert wait_until(lambda: not any(pid_alive(p) for p in sleeps), AFTER_DEATH), \
            "a command outlived its caller"
        assert time.monotonic() - died < AFTER_DEATH + 0.5
        # and, its work done, the reaper goes too
        assert wait_until(lambda: not pid_alive(reaper), 10)
    finally:
        if caller.poll() is None:
            caller.kill()
            caller.wait()
        kill_leftovers(*sleeps)


@pytest.mark.timeout(40)
@pytest.mark.parametrize("how", HOW)
def test_a_dead_callers_commands_are_ended_with_their_escaped_grandchildren(escaper, tmp_path,
                                                                            how):
    pidfile = tmp_path / "grandchild"
    caller = start_caller(tmp_path, "run", PY, str(escaper), how, str(pidfile))
    grandchild = 0
    try:
        grandchild = read_pid(pidfile)
        kill_caller(caller, signal.SIGKILL)
        # SIGTERM is ignored: the SIGKILL after the reaper's grace period ends it
        assert wait_until(lambda: not pid_alive(grandchild), AFTER_DEATH), \
            "the escaped grandchild outlived the caller"
    finally:
        if caller.poll() is None:
            caller.kill()
            caller.wait()
        kill_leftovers(grandchild)


@pytest.mark.timeout(40)
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_caller_killed_between_a_start_and_its_bookkeeping_leaves_nothing(tmp_path, sig):
    # The thread that starts a command may lose its CPU (for long, on a busy
    # machine) after the start and before it tells the reaper the pid. Here
    # it stops right there for good, and the caller is killed: the command
    # must die all the same.
    script = tmp_path / "caller.py"
    script.write_text(textwrap.dedent("""\
        import threading, time
        import bingfa as bf
        from bingfa._commands import _spawn

        def stuck(pid):
            print(pid, flush=True)
            time.sleep(100)

        _spawn.track = stuck
        threading.Thread(target=bf.run, args=(["sleep", "30"],), daemon=True).start()
        time.sleep(100)
    """))
    caller = subprocess.Popen([PY, str(script)], stdout=subprocess.PIPE, text=True)
    pid = 0
    try:
        pid = int(caller.stdout.readline())
        assert pid_alive(pid)
        kill_caller(caller, sig)
        assert wait_until(lambda: not pid_alive(pid), AFTER_DEATH), \
            "a command started just before its caller died outlived it"
    finally:
        if caller.poll() is None:
            caller.kill()
            caller.wait()
        caller.stdout.close()
        kill_leftovers(pid)


@pytest.mark.timeout(60)
def test_a_pool_worker_killed_on_a_task_timeout_takes_its_commands(tmp_path):
    pidfile = tmp_path / "pid"
    command = ["sh", "-c", f"echo $$ > {pidfile}; exec sleep 100"]
    with bf.Pool(1, mode="process", task_timeout=3) as pool:
        future = pool.submit(bf.run, command)
        pid = read_pid(pidfile)
        try:
            with pytest.raises(bf.TaskTimeoutError):
                future.result(timeout=30)
            # The pool killed the worker (SIGTERM, SIGKILL 0.2 s later).
            assert wait_until(lambda: not pid_alive(pid), AFTER_DEATH + 0.5), \
                "a command outlived the worker that ran it"
        finally:
            kill_leftovers(pid)


@pytest.mark.timeout(60)
def test_a_killed_reaper_is_replaced_and_told_what_runs(tmp_path):
    # Commands started before the reaper died are still ended when the caller
    # dies: the new reaper hears of every command still running.
    script = tmp_path / "caller.py"
    pidfile = tmp_path / "pid"
    script.write_text(textwrap.dedent(f"""\
        import os, signal, sys, threading, time
        import bingfa as bf
        threading.Thread(target=bf.run, daemon=True,
                         args=(["sh", "-c", "echo $$ > {pidfile}; exec sleep 100"],)).start()
        sys.stdin.readline()  # the test killed the reaper
        print(bf.run(["true"]).returncode, flush=True)  # a new one starts
        time.sleep(100)
    """))
    caller = subprocess.Popen([PY, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    pid = 0
    try:
        pid = read_pid(pidfile)
        assert wait_until(lambda: children_named(caller.pid, "_commands/_reaper.py"), 15)
        (first,) = children_named(caller.pid, "_commands/_reaper.py")
        first.kill()
        assert wait_until(lambda: first.status() == psutil.STATUS_ZOMBIE, 10)
        caller.stdin.write("go\n")
        caller.stdin.flush()
        assert caller.stdout.readline() == "0\n"
        second = [p for p in children_named(caller.pid, "_commands/_reaper.py")
                  if p.pid != first.pid]
        assert len(second) == 1, "no new reaper"
        assert not pid_alive(first.pid)  # the dead one was reaped, not left a zombie
        kill_caller(caller, signal.SIGKILL)
        assert wait_until(lambda: not pid_alive(pid), AFTER_DEATH), \
            "a command outlived its caller after its first reaper died"
    finally:
        if caller.poll() is None:
            caller.kill()
            caller.wait()
        for stream in (caller.stdin, caller.stdout):
            stream.close()
        kill_leftovers(pid)


@pytest.mark.timeout(60)
def test_a_forked_child_gets_a_reaper_of_its_own(tmp_path):
    # The parent's reaper watches the parent: a child's commands must die
    # with the child, not wait for the parent.
    pidfile = tmp_path / "pid"
    script = tmp_path / "caller.py"
    script.write_text(textwrap.dedent(f"""\
        import os, sys, threading, time
        import bingfa as bf
        bf.run(["true"])  # the parent's reaper
        child = os.fork()
        if child == 0:
            threading.Thread(target=bf.run, daemon=True,
                             args=(["sh", "-c", "echo $$ > {pidfile}; exec sleep 100"],)).start()
            time.sleep(100)
            os._exit(0)
        print(child, flush=True)
        os.waitpid(child, 0)
        time.sleep(100)
    """))
    parent = subprocess.Popen([PY, str(script)], stdout=subprocess.PIPE, text=True)
    pid = 0
    try:
        child = int(parent.stdout.readline())
        pid = read_pid(pidfile)
        assert wait_until(lambda: len(children_named(child, "_commands/_reaper.py")) == 1, 15)
        os.kill(child, signal.SIGKILL)
        assert wait_until(lambda: not pid_alive(pid), AFTER_DEATH), \
            "the forked child's command outlived it"
        assert parent.poll() is None  # the parent, and its reaper, carry on
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()
        kill_leftovers(pid)
