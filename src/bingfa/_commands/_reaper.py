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
stdin a pipe through which the caller says ``?TIME`` just before starting a
command, ``+PID`` once it runs and ``-PID`` just before reaping it
(:func:`announce`, :func:`track`, :func:`untrack`: one small write each,
nothing waited for). When the caller dies, however it dies, the reaper ends
the sessions of the commands it was told about and not told to forget
(SIGTERM, then SIGKILL after :data:`GRACE` seconds) and exits; if the caller
died between a ``?TIME`` and its ``+PID``, also those of the caller's orphans
that lead a session and started since TIME (:func:`_orphans`). A process that
forks gets a reaper of its own on its first command, so a process-pool worker
killed on a task timeout takes its commands with it.

This module must run with nothing but the standard library (no bingfa, no
site-packages) as the top-level module ``_reaper``: keep its imports to
built-in modules and ``select`` (``posix``, ``sys``, ``time``, ``_signal``,
``_functools``, ``itertools``), and nothing relative.
"""

# No "from __future__ import annotations" (the __future__ module is one more
# import for the reaper to start with): names known only to type checkers
# are quoted.
import _signal  # type: ignore[import-not-found]  # the signal module costs bingfa run 6 ms
import posix as os  # os without its Python half: a sixth of the reaper's start-up
import sys
import time
from _functools import partial  # type: ignore[import-not-found]  # functools is not loaded
from itertools import starmap

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from typing import Any

__all__ = ["GRACE", "announce", "call_into", "defer", "kill_sessions", "signal_sessions",
           "start_due", "start_if_due", "track", "untrack", "withdraw"]

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


# --- starting a child without losing it ------------------------------------------------


def call_into(box: "list[Any]", func: "Callable[..., Any]", *args: "Any",
              **kwargs: "Any") -> None:
    """Append ``func(*args, **kwargs)`` to ``box``, with no Python line run in between.

    A signal handler that raises (Ctrl-C) runs between two lines of Python,
    so ``pid = os.posix_spawn(...)`` can start a child and lose its pid.
    Here the call and the append happen in C: once ``func`` has returned, its
    result is in ``box``, whatever the handler does next.
    """
    box.extend(starmap(partial(func, *args, **kwargs), ((),)))


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


def _processes() -> "Iterator[tuple[int, str, tuple[int, int, int, int]]]":
    """Every live process: ``(pid, its /proc name, (ppid, pgid, sid, start time))``."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return
    for name in names:
        if name.isdigit():
            stat = _stat(name)
            if stat is not None:
                yield int(name), name, stat


def members(sids: "Iterable[int]") -> dict[int, tuple[int, int, int]]:
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
    for pid, _, (ppid, pgid, sid, start) in _processes():
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


def signal_sessions(sids: "Iterable[int]", sig: int, known: Seen | None = None,
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


def kill_sessions(sids: "Iterable[int]", known: Seen | None = None) -> None:
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
_not_before = 0.0  # time.monotonic() before which no reaper is started (see defer)
_MAX_FAILURES = 3
_MAX_PENDING = 1 << 16
# How the reaper starts: this file imported as a top-level module, so that its
# cached bytecode is used (run as a script, it would be compiled every time),
# with only the standard library (-I -S: no site-packages, no PYTHON* settings).
_BOOT = ("import sys; sys.path[0:0] = [sys.argv[1].rpartition('/')[0]]; "
         "import _reaper; _reaper.main(sys.argv[1:])")
_NICE = "/usr/bin/nice"
_NICENESS = 10


_TICKS = os.sysconf("SC_CLK_TCK")  # the unit of start times in /proc/PID/stat


def announce() -> None:
    """Tell the reaper that a command is about to start; :func:`track` or :func:`withdraw` follows.

    Between the start of a command and :func:`track`, a few lines of Python
    run, and a caller killed just then (its thread may also wait long for a
    CPU right there) would leave a command nobody knows. So the reaper hears
    of it before it starts, with the time: a caller that dies before saying
    more has its orphaned session leaders started since then ended too.
    """
    _tell(b"?%d\n" % int(time.clock_gettime(time.CLOCK_BOOTTIME) * _TICKS))


def withdraw() -> None:
    """The command announced last did not start."""
    _tell(b"!\n")


def track(pid: int) -> None:
    """Tell the reaper that the command ``pid`` (a session leader), announced, runs."""
    _live.add(pid)
    _tell(b"+%d\n" % pid)


def untrack(pid: int) -> None:
    """Tell the reaper to forget ``pid``: it has exited and is about to be reaped.

    Called before ``waitpid``: once the caller has reaped it, the pid may be
    given to another process, which a reaper acting on old news would kill.
    """
    _live.discard(pid)
    _tell(b"-%d\n" % pid)


def defer(seconds: float) -> None:
    """Start no reaper before ``seconds`` from now (``bingfa run`` only).

    A reaper is an interpreter started once: some 10 ms of CPU. A short
    ``bingfa run`` of many quick jobs (the ``xargs`` case) ends before that
    pays for itself, so ``bingfa run`` starts its reaper only once it is this
    old and still has commands running: only a ``bingfa run`` killed by
    SIGKILL in its first moments can leave commands behind (SIGTERM, SIGHUP
    and Ctrl-C always end them). The command loop wakes up for it
    (:func:`start_due`, :func:`start_if_due`).
    """
    global _not_before
    if _writer < 0:
        _not_before = time.monotonic() + seconds


def start_due() -> float | None:
    """When a deferred reaper is to start (``time.monotonic()``), if one is waiting."""
    return _not_before if _writer < 0 and _live and _not_before else None


def start_if_due() -> None:
    """Start the deferred reaper if its time has come and commands run."""
    global _not_before
    if _not_before and _writer < 0 and _live and time.monotonic() >= _not_before:
        _not_before = 0.0
        _tell(b"")


def _tell(message: bytes) -> None:
    global _lock, _pending
    if _lock is None:
        import _thread

        _lock = _thread.RLock()
    with _lock:
        if _writer < 0:
            if _not_before and time.monotonic() < _not_before:
                return  # deferred: _start tells the reaper what runs, when it starts
            if _failures >= _MAX_FAILURES or not _start():
                return
            if message[:1] != b"?":
                return  # _start told it every live command: a + or - is old news
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
    os.set_blocking(writer, False)  # never wait for the reaper
    # What it must hear first goes into the pipe before it starts: a caller
    # killed right after the start (its thread may wait long for a CPU)
    # leaves it there to be read.
    _pending = b"".join(b"+%d\n" % live for live in list(_live))
    if _pending:
        _pending = _pending[os.write(writer, _pending):]  # a new pipe takes 64 KiB at once
    started: list[int] = []
    argv = [exe, "-I", "-S", "-c", _BOOT, __file__, str(os.getpid())]
    if os.access(_NICE, os.X_OK):
        # Its start-up (an interpreter: some 10 ms of CPU) then yields to the
        # caller and its commands, instead of taking a core from them; it still
        # gets CPU when it must act, only less of it under heavy load.
        argv[:0] = [_NICE, "-n", str(_NICENESS)]
    try:
        call_into(started, os.posix_spawn, argv[0], argv, {},
                  file_actions=[(os.POSIX_SPAWN_DUP2, reader, 0),
                                (os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0),
                                (os.POSIX_SPAWN_OPEN, 2, "/dev/null", os.O_WRONLY, 0)],
                  setsid=True)
    except OSError:
        os.close(writer)
        _failures = _MAX_FAILURES
        return False
    except BaseException:
        if started:  # a signal right after it started: keep it, it is ours
            _writer = writer
        else:
            os.close(writer)
        raise
    finally:
        os.close(reader)
    _writer = writer
    try:
        _reaper = os.pidfd_open(started[0])
    except OSError:
        pass  # no fd left: it runs all the same; only replacing it is harder
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


class _News:
    """What the caller told the reaper."""

    def __init__(self) -> None:
        self.sessions: set[int] = set()  # its commands still running
        # When each command announced and not yet tracked nor withdrawn was
        # about to start (start-time ticks). "+" and "!" drop the latest:
        # with threads starting commands at once they may not pair up, and
        # keeping the earliest times errs on the side of a wider search.
        self.announced: list[int] = []
        self.partial = bytearray()  # a line not read whole yet

    def read(self) -> int:
        """Apply what the caller wrote on our stdin: _NEWS, _NOTHING (would block) or _EOF."""
        try:
            data = os.read(0, 1 << 16)
        except BlockingIOError:
            return _NOTHING
        except OSError:
            return _EOF
        if not data:
            return _EOF
        self.partial += data
        *lines, rest = self.partial.split(b"\n")
        self.partial[:] = rest
        for line in lines:
            kind, text = line[:1], line[1:]
            if kind == b"!":
                if self.announced:
                    self.announced.pop()
                continue
            try:
                number = int(text)
            except ValueError:
                continue
            if kind == b"+":
                self.sessions.add(number)
                if self.announced:
                    self.announced.pop()
            elif kind == b"-":
                self.sessions.discard(number)
            elif kind == b"?":
                self.announced.append(number)
        return _NEWS


def _orphans(since: int, known: set[int]) -> set[int]:
    """Commands the dead caller started and could not tell us about.

    Session leaders of our user, started at ``since`` or later, whose parent
    is now ours: when the caller died, its children and we were handed to
    the same process (init, or the nearest subreaper).
    """
    me, parent, uid = os.getpid(), os.getppid(), os.getuid()
    found: set[int] = set()
    for pid, name, (ppid, _, sid, start) in _processes():
        if sid == pid != me and ppid == parent and start >= since and pid not in known:
            try:
                if os.stat("/proc/" + name).st_uid == uid:
                    found.add(pid)
            except OSError:
                pass
    return found


def _end(sessions: set[int]) -> None:
    """The caller is dead: SIGTERM its commands' sessions, SIGKILL what is left."""
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
    news = _News()
    # With the pidfd open, our parent still being the caller proves the pidfd
    # is on the caller, not on a process that got its pid after it died.
    if watch is not None and os.getppid() == caller:
        poller = select.poll()
        poller.register(0, select.POLLIN)
        poller.register(watch, select.POLLIN)
        while True:
            if any(fd == watch for fd, _ in poller.poll()):
                break
            if news.read() == _EOF:
                # Our pipe ended: the caller is dying (a process's files close
                # just before its exit is reported), or it moved to a new reaper.
                if not select.select([watch], [], [], _EOF_WAIT)[0]:
                    return
                break
            if select.select([watch], [], [], _READ_EVERY)[0]:
                break
    # The caller is gone; what it wrote before it died is still in the pipe.
    os.set_blocking(0, False)
    while news.read() == _NEWS:
        pass
    if news.announced:
        news.sessions |= _orphans(min(news.announced), news.sessions)
    _end(news.sessions)

