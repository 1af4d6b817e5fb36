"""Nothing a caller starts outlives it: ending a command's session, and the reaper.

Every command runs in a session of its own (``setsid``, see :mod:`._spawn`), so
its session id is its pid. Two things are built on that here.

**Ending a session** (:func:`signal_sessions`, :func:`kill_sessions`). An early
end (timeout, halt, Ctrl-C, a signal to ``bingfa run``) signals the command's
process group, then every process of its *session* that left the group (GNU
``timeout``, a job-control shell, anything calling ``setpgid``), and every
descendant of those that is still linked to them (a grandchild that called
``setsid`` while its parent runs). They are found by reading ``/proc/PID/stat``
of every process: a scan of a few milliseconds, paid only by early ends; a
command that exits by itself has its group killed, as before. A daemon that
left the session *and* lost its parent (double fork and ``setsid``) is no
longer the command's: it is left alone, as everywhere.

Pid reuse: a group or session id cannot be handed to a new process while the
command's leader is unreaped, and the loop ends sessions before it reaps. A
process found by the scan is signalled through a pidfd, after checking that
the pidfd's process still has the start time the scan saw, so a pid reused
between the scan and the signal is never hit.

**The reaper.** A caller that dies cannot end its commands: nothing runs in a
process killed by SIGKILL, nor (no ``atexit``) by SIGTERM without a handler.
So the first command a process starts also starts its reaper, a Python
process running :func:`main` of this file with only the standard library
(``python -I -S -c ... .../bingfa/_commands/_reaper.py CALLER_PID``). It runs
in a session of its own, so that Ctrl-C, a hang-up or a signal to the caller's
process group does not reach it, holds a pidfd on the caller, and reads on its
stdin a pipe through which the caller says ``+PID`` after starting a command
and ``-PID`` just before reaping it (:func:`track`, :func:`untrack`: one small
write each, nothing waited for). When the caller dies, however it dies, the
reaper ends the sessions of the commands it was told about and not told to
forget (SIGTERM, then SIGKILL after :data:`GRACE` seconds) and exits. A
process that forks gets a reaper of its own on its first command, so a
process-pool worker killed on a task timeout takes its commands with it.

This module must run with nothing but the standard library (no bingfa, no
site-packages) as the top-level module ``_reaper``: keep its imports to
``os``, ``sys``, ``select``, ``time`` and ``_signal``, and nothing relative.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # the signal module costs bingfa run 6 ms
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["GRACE", "kill_sessions", "signal_sessions", "track", "untrack"]

SIGTERM: int = _signal.SIGTERM
SIGKILL: int = _signal.SIGKILL

# Seconds the reaper gives the commands of a dead caller between SIGTERM and
# SIGKILL (the loop's KILL_GRACE); all of it stays within 2 s of the death.
GRACE = 0.5
# How many times the SIGKILL scan is repeated while it finds new processes
# (ones forked by a member between a scan and its signal).
_KILL_ROUNDS = 20
# How long the reaper waits for the caller's pidfd once the pipe ends: the
# kernel closes a dying process's files just before it reports the exit.
_EOF_WAIT = 2.0
# After reading the news, the reaper watches only the caller for this long,
# so that a caller starting hundreds of commands a second wakes it ten times
# a second, not twice per command (its CPU is the commands' CPU). The pipe
# holds thousands of lines meanwhile, and the caller's death is seen at once.
_READ_EVERY = 0.1


# --- ending sessions -------------------------------------------------------------------


def _stat(pid: str) -> tuple[int, int, int, int] | None:
    """``(ppid, pgid, sid, start time)`` of a live process; None if gone or a zombie."""
    try:
        fd = os.open("/proc/" + pid + "/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.read(fd, 1024)
    except OSError:
        return None
    finally:
        os.close(fd)
    # "pid (comm) state ppid pgrp session ... starttime ...": comm may hold
    # spaces and parentheses, so the fields are counted from its last ")".
    fields = data[data.rfind(b")") + 2:].split(b" ", 20)
    if len(fields) < 20 or fields[0] in (b"Z", b"X", b"x"):
        return None
    return int(fields[1]), int(fields[2]), int(fields[3]), int(fields[19])


def members(sids: Iterable[int]) -> dict[int, tuple[int, int, int]]:
    """The live processes of the sessions ``sids`` and their descendants.

    Returns ``{pid: (start time, process group, session)}``, the session being
    the one of ``sids`` the process belongs to or descends from. A descendant
    outside the sessions counts while it is still linked to a member by its
    parent (a grandchild that called ``setsid``, its parent still running).
    """
    sessions = set(sids)
    me = os.getpid()
    found: dict[int, tuple[int, int, int]] = {}
    others: dict[int, tuple[int, int, int]] = {}  # pid -> (ppid, start, pgid)
    try:
        names = os.listdir("/proc")
    except OSError:
        return found
    for name in names:
        if not name.isdigit():
            continue
        stat = _stat(name)
        if stat is None:
            continue
        pid = int(name)
        ppid, pgid, sid, start = stat
        if sid in sessions and pid != me:
            found[pid] = (start, pgid, sid)
        else:
            others[pid] = (ppid, start, pgid)
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in others.items():
        children.setdefault(ppid, []).append(pid)
    # From every member, and every leader (one that runs is in ``found``).
    todo = [(pid, owner) for pid, (_, _, owner) in found.items()]
    todo += [(sid, sid) for sid in sessions]
    while todo:
        parent, owner = todo.pop()
        for child in children.pop(parent, ()):
            if child != me:
                _, start, pgid = others[child]
                found[child] = (start, pgid, owner)
                todo.append((child, owner))
    return found


def _signal_exactly(pid: int, start: int, sig: int) -> bool:
    """Send ``sig`` to ``pid`` only if it is still the process that started at ``start``."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return False
    try:
        stat = _stat(str(pid))
        if stat is None or stat[3] != start:
            return False  # gone, and maybe its pid given to someone else
        _signal.pidfd_send_signal(fd, sig)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


# {pid: (start time, session)}: processes found in the sessions, by one scan or several
Seen = dict[int, tuple[int, int]]


def signal_sessions(sids: Iterable[int], sig: int, known: Seen | None = None,
                    skip: dict[int, int] | None = None) -> Seen:
    """Send ``sig`` to the sessions ``sids``: each one's process group, then the rest.

    The rest is every other member of the sessions and their descendants (see
    :func:`members`), and the processes of ``known`` (found by an earlier call:
    a grandchild that called ``setsid`` is no longer linked to the session once
    its parent has died), each checked and signalled through a pidfd. A
    process in one of the groups is not signalled twice (a second SIGTERM
    often means "stop now" to a program that was shutting down cleanly), nor
    is one in ``skip`` (``{pid: start time}``) with the same start time.

    Returns every process found, signalled by its group or one by one.
    """
    groups = set(sids)
    # Looked at before anything is signalled: a grandchild that left the
    # session is found through its parent, which the signal may end at once.
    found = members(groups)
    for sid in groups:
        try:
            os.killpg(sid, sig)
        except OSError:
            pass  # no group left, or not ours to signal (a setuid program)
    seen: Seen = {}
    for pid, (start, pgid, owner) in found.items():
        seen[pid] = (start, owner)
        if pgid not in groups and (skip is None or skip.get(pid) != start):
            _signal_exactly(pid, start, sig)
    for pid, (start, owner) in (known or {}).items():
        if pid not in seen and (skip is None or skip.get(pid) != start) and _signal_exactly(
                pid, start, sig):
            seen[pid] = (start, owner)
    return seen


def kill_sessions(sids: Iterable[int], known: Seen | None = None) -> None:
    """SIGKILL the sessions ``sids`` and ``known`` (see :func:`signal_sessions`).

    Repeated while a scan finds a process the last one did not: a member may
    fork between a scan and its signal. A process that got SIGKILL can fork
    no more, so this ends quickly.
    """
    groups = set(sids)
    if not groups and not known:
        return
    done: dict[int, int] = {}
    for _ in range(_KILL_ROUNDS):
        seen = signal_sessions(groups, SIGKILL, known, done)
        if all(done.get(pid) == start for pid, (start, _) in seen.items()):
            return
        done.update((pid, start) for pid, (start, _) in seen.items())
        known = None  # signalled: from now on only what the scan finds matters


# --- the caller's side: telling the reaper ---------------------------------------------

_lock = None  # a _thread.RLock, made with the first message
_writer = -1  # our end of the pipe to the reaper; -1: none yet
_reaper = -1  # a pidfd on the reaper
_pending = b""  # what the pipe could not take yet (a reaper that is slow to read)
_live: set[int] = set()  # commands started and not yet reaped, for a new reaper
_failures = 0  # reapers that died on us; after a few, commands run without one
_MAX_FAILURES = 3
_MAX_PENDING = 1 << 16
# How the reaper starts: this file imported as a top-level module, so that its
# cached bytecode is used (run as a script, it would be compiled every time),
# with only the standard library (-I -S: no site-packages, no PYTHON* settings).
_BOOT = ("import sys; sys.path[0:0] = [sys.argv[1].rpartition('/')[0]]; "
         "import _reaper; _reaper.main(sys.argv[1:])")


def track(pid: int) -> None:
    """Tell the reaper that the command ``pid`` (a session leader) runs."""
    _live.add(pid)
    _tell(b"+%d\n" % pid)


def untrack(pid: int) -> None:
    """Tell the reaper to forget ``pid``: it has exited and is about to be reaped.

    Called before ``waitpid``: once the caller has reaped it, the pid may be
    given to another process, which a reaper acting on old news would kill.
    """
    _live.discard(pid)
    _tell(b"-%d\n" % pid)


def _tell(message: bytes) -> None:
    global _lock, _pending
    if _lock is None:
        import _thread

        _lock = _thread.RLock()
    with _lock:
        if _writer < 0:
            if _failures >= _MAX_FAILURES or not _start():
                return
            if message[:1] == b"+":
                return  # _start told it every live command, this one included
        data = _pending + message if _pending else message
        try:
            written = os.write(_writer, data)
        except BlockingIOError:
            written = 0
        except OSError:
            _replace()  # it died (EPIPE), or our end was closed under us
            return
        # Never waited for: a write the pipe cannot take now goes with the next one.
        _pending = data[written:]
        if len(_pending) > _MAX_PENDING:
            _replace()  # it stopped reading: a stuck reaper is no reaper


def _replace() -> None:
    """Drop the reaper we have (killing it, if it still runs) and start another."""
    global _writer, _reaper, _failures
    _failures += 1
    writer, reaper, _writer, _reaper = _writer, _reaper, -1, -1
    try:
        os.close(writer)
    except OSError:
        pass
    # Through its pidfd: the pid of a reaper someone else reaped may be anyone's now.
    try:
        _signal.pidfd_send_signal(reaper, SIGKILL)
    except OSError:
        pass
    try:
        os.waitid(os.P_PIDFD, reaper, os.WEXITED)
    except OSError:
        pass  # already reaped, by someone's waitpid(-1)
    try:
        os.close(reaper)
    except OSError:
        pass
    if _failures < _MAX_FAILURES:
        _start()


def _start() -> bool:
    """Start this process's reaper and tell it what runs; whether it started."""
    global _writer, _reaper, _pending, _failures
    exe = sys.executable
    if not exe:  # an embedded interpreter: nothing to run the reaper with
        _failures = _MAX_FAILURES
        return False
    reader, writer = os.pipe2(os.O_CLOEXEC)
    try:
        pid = os.posix_spawn(
            exe, [exe, "-I", "-S", "-c", _BOOT, __file__, str(os.getpid())], {},
            file_actions=[(os.POSIX_SPAWN_DUP2, reader, 0),
                          (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                          (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0)],
            setsid=True)
        pidfd = os.pidfd_open(pid)
    except OSError:
        os.close(writer)
        _failures = _MAX_FAILURES
        return False
    finally:
        os.close(reader)
    os.set_blocking(writer, False)
    _writer, _reaper = writer, pidfd
    _pending = b"".join(b"+%d\n" % live for live in list(_live))
    if _pending:
        try:
            _pending = _pending[os.write(writer, _pending):]
        except OSError:
            pass  # a full pipe, or a reaper gone at once: the next message sees to it
    return True


def _forget() -> None:
    """In a forked child: the parent's reaper and commands are not ours."""
    global _lock, _writer, _reaper, _pending, _failures
    for fd in (_writer, _reaper):
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass
    _lock = None
    _writer, _reaper, _pending, _failures = -1, -1, b"", 0
    _live.clear()


os.register_at_fork(after_in_child=_forget)


# --- the reaper process ----------------------------------------------------------------

_EOF, _NOTHING, _NEWS = 0, 1, 2


def _read_news(sessions: set[int], partial: bytearray) -> int:
    """Apply what the caller wrote on our stdin: _NEWS, _NOTHING (would block) or _EOF."""
    try:
        data = os.read(0, 1 << 16)
    except BlockingIOError:
        return _NOTHING
    except OSError:
        return _EOF
    if not data:
        return _EOF
    partial += data
    *lines, rest = partial.split(b"\n")
    partial[:] = rest
    for line in lines:
        try:
            pid = int(line[1:])
        except ValueError:
            continue
        if line[:1] == b"+":
            sessions.add(pid)
        elif line[:1] == b"-":
            sessions.discard(pid)
    return _NEWS


def _end(sessions: set[int]) -> None:
    """The caller is dead: SIGTERM its commands' sessions, SIGKILL what is left."""
    import time

    if not sessions:
        return
    seen = signal_sessions(sessions, SIGTERM)
    deadline = time.monotonic() + GRACE
    while time.monotonic() < deadline and (members(sessions) or any(
            _stat(str(pid)) is not None for pid in seen)):
        time.sleep(0.02)  # polling the scan for the grace period, not synchronising
    kill_sessions(sessions, seen)


def main(argv: list[str]) -> None:
    """Watch the caller ``argv[1]``; when it dies, end its commands (see the docstring).

    ``argv[0]`` is this file's path (on the reaper's command line, so that it
    can be told what it is).
    """
    import select

    for sig in (_signal.SIGINT, _signal.SIGHUP, _signal.SIGQUIT):
        _signal.signal(sig, _signal.SIG_IGN)
    os.chdir("/")  # hold none of the caller's directories busy
    caller = int(argv[1])
    try:
        watch: int | None = os.pidfd_open(caller)
    except OSError:
        watch = None
    sessions: set[int] = set()
    partial = bytearray()
    # With the pidfd open, our parent still being the caller proves the pidfd
    # is on the caller, not on a process that got its pid after it died.
    if watch is not None and os.getppid() == caller:
        poller = select.poll()
        poller.register(0, select.POLLIN)
        poller.register(watch, select.POLLIN)
        while True:
            if any(fd == watch for fd, _ in poller.poll()):
                break
            if _read_news(sessions, partial) == _EOF:
                # Our pipe ended: the caller is dying (a process's files close
                # just before its exit is reported), or it moved to a new reaper.
                if not select.select([watch], [], [], _EOF_WAIT)[0]:
                    return
                break
            if select.select([watch], [], [], _READ_EVERY)[0]:
                break
    # The caller is gone; what it wrote before it died is still in the pipe.
    os.set_blocking(0, False)
    while _read_news(sessions, partial) == _NEWS:
        pass
    _end(sessions)

