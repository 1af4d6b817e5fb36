"""One thread, one epoll: many external commands at once, with no thread per command.

A :class:`CommandLoop` starts commands (:mod:`._spawn`), reads their pipes
as data arrives (so no command ever blocks on a full pipe), writes their input,
and watches a pidfd per command to learn when it exits. Timeouts are a heap of
deadlines checked between polls. It is the engine under ``bf.run_many``,
``bf.stream`` and ``bingfa run``; they decide what to start and when.

A command is finished when its leader has exited *and* both its output pipes
are closed (background members of its group may still be writing). Then
whatever is left of its process group is killed and the leader is reaped.
Ending a command early (timeout, halt, Ctrl-C) is SIGTERM to its whole
session (its group, members that left the group, and their descendants: see
:mod:`._reaper`), then SIGKILL after :data:`KILL_GRACE` seconds; if something
outside the session still holds its pipes, bingfa stops reading them
:data:`DRAIN_AFTER_KILL` seconds later. A command that was ended early, or
that left something holding its pipes, has its whole session killed before
it is reaped, not only its group.
"""

from __future__ import annotations

import heapq
import os
import select
import time

from .._core import _signals as signals
from ._reaper import kill_sessions, signal_sessions, start_due, start_if_due
from ._spawn import DRAIN_AFTER_KILL, KILL_GRACE, spawn

TYPE_CHECKING = False  # no typing at run time: bingfa run starts fast
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping
    from typing import Any

    from ._reaper import Seen
    from ._spawn import Child

    OutputSink = Callable[[int, bytes], None]  # (1 for stdout or 2 for stderr, data)

__all__ = ["CommandLoop", "Running"]

READ_SIZE = 1 << 16
_LONGEST_WAIT = 86400.0  # seconds one epoll wait may last (see CommandLoop.poll)


# What a registered fd is, for the event handler.
_STDOUT, _STDERR, _STDIN, _EXIT, _WAKE = 1, 2, 0, 3, 4


class Running:
    """One run of one command inside a :class:`CommandLoop`."""

    __slots__ = (
        "_exited",
        "_input",
        "_open",
        "_seen",
        "_stage",
        "_swept",
        "argv",
        "child",
        "ended",
        "err",
        "killed",
        "out",
        "received",
        "returncode",
        "sink",
        "started",
        "tag",
        "timed_out",
        "wall_start",
    )

    def __init__(self, tag: Any, argv: list[str], child: Child, sink: OutputSink | None,
                 data: bytes | None, started: float) -> None:
        self.tag = tag                # the caller's: what this run is for
        self.argv = argv
        self.child = child
        self.out: list[bytes] = []    # collected output, unless a sink takes it
        self.err: list[bytes] = []
        self.sink = sink
        self.received = 0             # bytes read from stdout and stderr
        self.started = started
        self.wall_start = time.time() - (time.perf_counter() - started)
        self.ended = 0.0
        self.returncode = 0
        self.timed_out = False
        self.killed = False           # ended by bingfa (timeout, halt, interrupt)
        self._open = (child.stdout is not None) + (child.stderr is not None)
        self._exited = False
        self._input = memoryview(data) if data else None
        self._stage = 0               # 0 running, 1 TERM sent, 2 KILL sent, 3 draining
        self._swept = False           # its whole session was killed
        self._seen: Seen = {}         # what its SIGTERM reached beyond its group

    @property
    def duration(self) -> float:
        """Seconds from start to exit."""
        return self.ended - self.started

    @property
    def stdout(self) -> bytes:
        """Everything it wrote to standard output (empty when a sink took it)."""
        return b"".join(self.out)

    @property
    def stderr(self) -> bytes:
        """Everything it wrote to standard error (empty when a sink took it)."""
        return b"".join(self.err)

    @property
    def signal(self) -> int | None:
        """The signal that ended it, or None."""
        return -self.returncode if self.returncode < 0 else None


def _epoll() -> tuple[select.epoll, bool]:
    """A new epoll object, and whether waits on it must go through gevent's hub.

    ``gevent.monkey.patch_all()`` takes ``select.epoll`` away, since blocking
    in it would block every greenlet. The original still watches the
    commands: the loop waits for its fd with gevent's ``select`` first, then
    collects the events without blocking (see :meth:`CommandLoop.poll`).
    """
    epoll = getattr(select, "epoll", None)
    if epoll is not None:
        return epoll(), False
    import sys

    original: type[select.epoll] = sys.modules["gevent.monkey"].get_original("select", "epoll")
    return original(), True


class CommandLoop:
    """Runs commands concurrently from the calling thread; see the module docstring.

    Not thread-safe: one thread calls :meth:`start` and :meth:`wait`.
    """

    def __init__(self) -> None:
        self._epoll, self._cooperative = _epoll()
        self._environ: dict[str, str] | None = None
        self._devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)  # stdin without input
        self._fds: dict[int, tuple[Running, int]] = {}
        self._running: set[Running] = set()
        self._timers: list[tuple[float, int, Running, int]] = []  # (when, seq, run, stage)
        # Exited, pipes closed, not yet reaped: finished together at the end of
        # a poll, so that the sessions of many stopped runs cost one /proc scan.
        self._ready: dict[Running, None] = {}
        self._seq = 0
        self._closed = False
        self._wakeups: list[int] = []

    def __len__(self) -> int:
        return len(self._running)

    @property
    def running(self) -> frozenset[Running]:
        """The runs started and not yet finished."""
        return frozenset(self._running)

    def watch(self, fd: int) -> None:
        """Also return from :meth:`poll` when the non-blocking ``fd`` turns readable.

        What arrives on it is read and dropped: it is a wake-up call (new
        input for the caller), so :meth:`poll` may block on it even when no
        command runs.
        """
        self._wakeups.append(fd)
        self._epoll.register(fd, select.EPOLLIN)
        self._fds[fd] = (None, _WAKE)  # type: ignore[assignment]

    def fileno(self) -> int:
        """The epoll's fd: readable when :meth:`wait` has something to do (for asyncio)."""
        return self._epoll.fileno()

    def next_deadline(self) -> float | None:
        """The ``time.monotonic()`` at which a timeout or grace period ends next, if any."""
        return self._timers[0][0] if self._timers else None

    def start(self, argv: list[str], *, tag: Any = None, env: Mapping[str, str] | None = None,
              cwd: str | os.PathLike[str] | None = None, input: bytes | None = None,
              timeout: float | None = None, sink: OutputSink | None = None) -> Running:
        """Start ``argv``; it is reported by :meth:`wait` once finished.

        Raises:
            CommandNotFoundError: from :func:`~._spawn.spawn`.
        """
        if env is None:
            if self._environ is None:
                # posix_spawn walks the environment on every call: a plain dict
                # is walked in C, os.environ in Python (a third of the cost of
                # a short job). Taken once, like the moment a Pool forks.
                self._environ = dict(os.environ)
            env = self._environ
        started = time.perf_counter()
        spawned: list[Child] = []  # the child, put there as it is made (see spawn)
        run: Running | None = None
        try:
            spawn(spawned, argv, env=env, cwd=cwd,
                  stdin=self._devnull if input is None else None)
            run = Running(tag, argv, spawned[0], sink, input, started)
            self._watch(run)
        except BaseException:  # Ctrl-C right after the spawn: do not lose the child
            if not spawned:
                raise  # it did not start, or spawn ended it
            child = spawned[0]
            if run is not None:
                self._running.discard(run)
            kill_sessions([child.pid])
            for fd in (child.stdin, child.stdout, child.stderr):
                if fd is not None:
                    self._fds.pop(fd, None)
                    os.close(fd)
            if self._fds.pop(child.pidfd, None) is not None:
                self._epoll.unregister(child.pidfd)
            child.reap()
            raise
        if timeout is not None:
            self._at(time.monotonic() + timeout, run, 1)
        return run

    def _watch(self, run: Running) -> None:
        child = run.child
        self._running.add(run)
        register = self._epoll.register
        for fd, kind in ((child.stdout, _STDOUT), (child.stderr, _STDERR)):
            if fd is not None:
                self._fds[fd] = (run, kind)
                register(fd, select.EPOLLIN)
        self._fds[child.pidfd] = (run, _EXIT)
        register(child.pidfd, select.EPOLLIN)
        if child.stdin is not None:
            if run._input is None:
                os.close(child.stdin)
                child.stdin = None
            else:
                self._fds[child.stdin] = (run, _STDIN)
                register(child.stdin, select.EPOLLOUT)

    def wait(self, timeout: float | None = None) -> list[Running]:
        """Wait up to ``timeout`` seconds (None: until one finishes); the runs that finished."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if end is None else max(0.0, end - time.monotonic())
            finished = self.poll(left)
            if finished or not self._running or (end is not None and left == 0.0):
                return finished

    def poll(self, timeout: float | None = None) -> list[Running]:
        """Handle one round of events (waiting up to ``timeout`` for one); the runs that finished.

        Unlike :meth:`wait` it returns after any output, which is what a sink
        that must hand lines on as they arrive needs.
        """
        finished: list[Running] = []
        if not self._running and not self._wakeups:
            return finished
        self._fire_timers(time.monotonic())
        if self._ready:
            self._finish_ready(finished)
            return finished
        wait = -1.0 if timeout is None else timeout
        if self._timers:
            until_timer = max(0.0, self._timers[0][0] - time.monotonic())
            wait = until_timer if wait < 0 else min(wait, until_timer)
        reaper_due = start_due()
        if reaper_due is not None:  # bingfa run's reaper, deferred: wake up to start it
            until_reaper = max(0.0, reaper_due - time.monotonic())
            wait = until_reaper if wait < 0 else min(wait, until_reaper)
        # epoll takes at most 2**31 - 1 ms (24.8 days) and timeouts go to 30
        # days: a longer wait returns early with nothing, and the caller polls again.
        wait = min(wait, _LONGEST_WAIT)
        if self._cooperative and wait != 0:
            # gevent: wait in the hub (its select) for the epoll fd, then
            # collect the events without blocking.
            select.select([self._epoll.fileno()], [], [], None if wait < 0 else wait)
            wait = 0
        for fd, _ in self._epoll.poll(wait):
            entry = self._fds.get(fd)
            if entry is not None:
                self._handle(fd, entry[0], entry[1])
        self._fire_timers(time.monotonic())
        if reaper_due is not None:
            start_if_due()
        self._finish_ready(finished)
        return finished

    def stop(self, run: Running, grace: float = KILL_GRACE) -> None:
        """End ``run`` early: SIGTERM to its session now, SIGKILL after ``grace``."""
        self.stop_many([run], grace)

    def stop_many(self, runs: Iterable[Running], grace: float = KILL_GRACE) -> None:
        """:meth:`stop` for several runs at once (one look through /proc for them all)."""
        stopping = [run for run in runs if run._stage == 0 and run in self._running]
        for run in stopping:
            run.killed = True
        if stopping:
            self._escalate(stopping, 1, time.monotonic(), grace)

    def stop_all(self, grace: float = KILL_GRACE) -> list[Running]:
        """End every running command and wait until they are all reaped; those runs."""
        self.stop_many(list(self._running), grace)
        ended: list[Running] = []
        while self._running:
            ended += self.wait()
        return ended

    def close(self) -> None:
        """Kill and reap whatever still runs, then release the epoll."""
        if self._closed:
            return
        try:
            self.stop_all()
        except BaseException:
            # A second Ctrl-C during the grace period: no more grace.
            self._kill_now()
            raise
        finally:
            self._closed = True
            self._epoll.close()
            os.close(self._devnull)

    def _kill_now(self) -> None:
        runs = list(self._running)
        kill_sessions([run.child.pid for run in runs], _known(runs))
        for run in runs:
            run.killed = True
            for fd in (run.child.stdin, run.child.stdout, run.child.stderr):
                if fd is not None:
                    self._close_fd(run, fd)
            if self._fds.pop(run.child.pidfd, None) is not None:
                self._epoll.unregister(run.child.pidfd)
            run.returncode = run.child.reap()
            self._running.discard(run)
            self._ready.pop(run, None)

    # -- internals --------------------------------------------------------------------

    def _at(self, when: float, run: Running, stage: int) -> None:
        self._seq += 1
        heapq.heappush(self._timers, (when, self._seq, run, stage))

    def _fire_timers(self, now: float) -> None:
        timers = self._timers
        if not timers or timers[0][0] > now:
            return  # the common case, twice per poll: nothing due
        due: dict[int, list[Running]] = {}  # stage -> runs: escalated together
        while timers and timers[0][0] <= now:
            _, _, run, stage = heapq.heappop(timers)
            if run not in self._running or stage <= run._stage:
                continue  # stale: it finished, or was moved on already
            if stage == 1:
                if run._exited:
                    continue  # it had exited in time; only its pipes were still open
                run.timed_out = True
                run.killed = True
            due.setdefault(stage, []).append(run)
        for stage, runs in sorted(due.items()):
            runs = [run for run in runs if stage > run._stage]
            if runs:
                self._escalate(runs, stage, now, KILL_GRACE)
            for run in runs:
                self._maybe_finish(run)

    def _escalate(self, runs: list[Running], stage: int, now: float, grace: float) -> None:
        for run in runs:
            run._stage = stage
        if stage == 1:
            seen = signal_sessions([run.child.pid for run in runs], signals.SIGTERM)
            for run in runs:
                # Kept for the SIGKILL: a grandchild that left the session is
                # found through its parent, which may be gone by then.
                run._seen = {pid: found for pid, found in seen.items()
                             if found[1] == run.child.pid}
                self._at(now + grace, run, 2)
        elif stage == 2:
            kill_sessions([run.child.pid for run in runs], _known(runs))
            for run in runs:
                run._swept = True
                self._at(now + DRAIN_AFTER_KILL, run, 3)
        else:  # stage 3: the session is dead; whoever still holds the pipes is not ours
            for run in runs:
                for fd in (run.child.stdin, run.child.stdout, run.child.stderr):
                    if fd is not None:
                        self._close_fd(run, fd)

    def _handle(self, fd: int, run: Running, kind: int) -> None:
        if kind == _WAKE:
            try:
                while os.read(fd, READ_SIZE):
                    pass
            except BlockingIOError:
                pass
            return
        if kind == _EXIT:
            self._epoll.unregister(fd)
            del self._fds[fd]
            run._exited = True
            run.ended = time.perf_counter()
            if run._open and run._stage == 0:
                # Something it started still holds its output (a background
                # job, a daemon): its last words get a second, then the pipes
                # are closed and what is left of the group is killed.
                self._at(time.monotonic() + DRAIN_AFTER_KILL, run, 3)
        elif kind == _STDIN:
            self._feed(run, fd)
            return
        else:
            try:
                data = os.read(fd, READ_SIZE)
            except BlockingIOError:
                return
            if data:
                run.received += len(data)
                if run.sink is not None:
                    run.sink(kind, data)
                else:
                    (run.out if kind == _STDOUT else run.err).append(data)
                return
            self._close_fd(run, fd)
        self._maybe_finish(run)

    def _feed(self, run: Running, fd: int) -> None:
        view = run._input
        try:
            if view is not None:
                written = os.write(fd, view[:READ_SIZE])
                run._input = view = view[written:] if written < len(view) else None
        except BlockingIOError:
            return
        except (BrokenPipeError, ConnectionResetError):
            view = None  # it stopped reading: the rest of its input is not wanted
        if view is None:
            self._close_fd(run, fd)

    def _close_fd(self, run: Running, fd: int) -> None:
        if self._fds.pop(fd, None) is None:
            return
        self._epoll.unregister(fd)
        os.close(fd)
        child = run.child
        if fd == child.stdout:
            child.stdout = None
            run._open -= 1
        elif fd == child.stderr:
            child.stderr = None
            run._open -= 1
        elif fd == child.stdin:
            child.stdin = None

    def _maybe_finish(self, run: Running) -> None:
        if run._exited and not run._open and run in self._running:
            self._ready[run] = None

    def _finish_ready(self, finished: list[Running]) -> None:
        """Kill what the runs in ``_ready`` left behind, reap them, add them to ``finished``.

        A run stays in ``_ready`` until it is reaped, so a finish cut short (by
        Ctrl-C) is completed by the next poll.
        """
        if not self._ready:
            return
        ready = list(self._ready)
        # A run ended early may have left processes that ignored SIGTERM
        # anywhere in its session; one that exited by itself but left its
        # pipes held had company too. The others are done with a group kill,
        # which costs no /proc scan.
        sweep = []
        for run in ready:  # a loop, not a comprehension: this runs once per command
            if run._stage and not run._swept:
                sweep.append(run)
        if sweep:
            kill_sessions([run.child.pid for run in sweep], _known(sweep))
            for run in sweep:
                run._swept = True
        for run in ready:
            if run.child.stdin is not None:
                self._close_fd(run, run.child.stdin)
            if not run._swept:
                run.child.signal_group(signals.SIGKILL)
            run.returncode = run.child.reap()
            self._running.discard(run)
            del self._ready[run]
            finished.append(run)


def _known(runs: list[Running]) -> Seen:
    """What the SIGTERMs of ``runs`` reached beyond their groups."""
    known: Seen = {}
    for run in runs:
        known.update(run._seen)
    return known
