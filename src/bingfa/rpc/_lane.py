"""Plain calls on the thread that read them: the server's own threads.

With its own thread pool (no ``pool=``) and no TLS, a server does not read
its connections on its event loop. Its threads wait together on one epoll
set, in which every connection is armed for one reader at a time
(``EPOLLONESHOT``). When a connection has bytes, the kernel wakes one idle
thread, and that thread serves the connection: it reads the calls, runs the
plain and quick ones itself, writes their answers straight to the socket,
and reads again, until nothing is left; then it arms the connection again
and waits. A call costs the one wake-up the kernel does anyway, where handing
it from the loop to a pool thread and its answer back cost two more thread
switches (and on a busy host, two waits for a CPU).

Answers of calls run back to back go out together, in one system call: a
thread holds its answers while it has more calls to run, and sends them all
once the last one has run.

A call that blocks holds nothing up for long. A watchman thread looks every
millisecond (only while the lane has work):

- a connection whose thread has been at it since the tick before is armed
  again, so that its next calls wake another thread;
- calls that waited in the queue a whole tick wake an idle thread to run them;
- answers held back a whole tick are sent.

And one thread always stays idle to read other connections: a thread about
to run a plain call while it is the last idle one starts another first, up
to the pool's size; beyond that, calls wait in the queue for a thread, as
they would in a pool. (Quick calls run at once: they never block.)

Everything else a connection sends (async handlers, generators, cancels,
credit, calls with a deadline) goes to the event loop in order, as before;
answers the loop writes and answers threads write share a lock, so frames
never interleave. See :class:`~bingfa.rpc._server._Connection` for the
connection's side of all this.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._core._busy import host_busy
from .._core._context import WorkerContext, set_thread_context
from .._core._interrupts import start_without_sigint

if TYPE_CHECKING:
    from ._server import _Call, _Connection, _Method

__all__ = ["Lane", "LaneThread", "available"]

logger = logging.getLogger("bingfa.rpc")

# One connection's call, read and registered, waiting for a thread:
# (connection, call, method, args, kwargs, stream window).
Job = tuple["_Connection", "_Call", "_Method", list[Any], dict[str, Any], "int | None"]

READ_SIZE = 1 << 16  # bytes one read takes from a connection
TICK = 4e-3  # seconds between the watchman's looks
IDLE_TICKS = 16  # ticks without work before the watchman waits to be woken
# Queued calls stuck behind running ones get an idle thread after a tick when the
# threads running calls wait (together they used less than this share of the
# tick's CPU time: they block), else after FAIR_TICKS (they compute: another
# thread would only share the GIL with them, but the calls behind them should
# not wait for ever).
WAITING_SHARE = 0.25
FAIR_TICKS = 8
ARMED = select.EPOLLIN | select.EPOLLONESHOT if hasattr(select, "epoll") else 0
SPIN = 50e-6  # seconds a thread polls a connection it served for its next call
SPIN_MISSES = 8  # polls in a row that came up empty: then only every SPIN_PROBE-th one
SPIN_PROBE = 16
monotonic = time.monotonic


def available() -> bool:
    """Whether this platform has what the lane needs (Linux: epoll, eventfd, and the
    CPU clocks of threads)."""
    return (hasattr(select, "epoll") and hasattr(os, "eventfd")
            and hasattr(time, "pthread_getcpuclockid"))


class LaneThread:
    """What one lane thread keeps: its worker context, its own reused encoder, and
    what the watchman looks at (whether it runs calls, the CPU time it has used)."""

    __slots__ = ("clock", "cpu", "ctx", "dumps", "polled", "poller", "running")

    def __init__(self, ctx: WorkerContext, dumps: Callable[[Any], bytes]) -> None:
        self.ctx = ctx
        self.dumps = dumps
        self.running = False
        self.clock = time.pthread_getcpuclockid(threading.get_ident())
        self.cpu = 0.0  # its CPU time, as of the watchman's last look
        # Its own, for polling a connection: a poll object is for one thread at
        # a time, and two threads may serve one connection (see the watchman).
        self.poller = select.poll()
        self.polled = -1  # the descriptor registered with it


class Lane:
    """The server's threads: they read connections and run the plain calls they read.

    Args:
        threads: how many calls may run at once (the pool's size); one more
            thread exists to read while they all do.
        dumps: makes a reusable encoder for each thread.
        name: the threads' name prefix.
    """

    def __init__(self, threads: int, dumps: Callable[[], Callable[[Any], bytes]],
                 name: str) -> None:
        self.epoll = select.epoll()
        # Written when queued calls want a thread; armed for one reader at a
        # time, so a signal wakes one idle thread.
        self.wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        # Written once, when the server stops; level-triggered, so it wakes every thread.
        self.stop_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.epoll.register(self.wake_fd, ARMED)
        self.epoll.register(self.stop_fd, select.EPOLLIN)
        self.connections: dict[int, _Connection] = {}  # by the fd the lane reads
        self.queue: deque[Job] = deque()
        self.dirty: set[_Connection] = set()  # connections with answers held back
        # Connections left unarmed, because they may not start more calls for
        # now: whoever takes one out of the set (set.remove is atomic) arms it.
        self.parked: set[_Connection] = set()
        # Connections a thread serves (unarmed), and the tick it began at.
        self.busy: dict[_Connection, int] = {}
        # Calls with a deadline (call.deadline), and their connections: the
        # watchman ends those still in flight when it passes.
        self.timed: dict[_Call, _Connection] = {}
        self.lock = threading.Lock()  # guards the counts below
        self.runners = threads
        self.threads = 0  # started and not exited
        self.idle = 0  # threads not running a call: they read, or are about to
        self.slots = 0  # numbers the threads, for bf.worker_id()
        self.signalled = False  # a wake-up for queued calls is on its way
        self.stopping = False
        self.stopped = threading.Event()
        self.fds_closed = False
        self.ticks = 0  # the watchman's clock
        self.watching = False  # the watchman ticks (else it waits for watch_event)
        self.active = False  # a thread served a connection since the last tick
        self.watch_event = threading.Event()
        self.watchman: threading.Thread | None = None
        self.members: list[LaneThread] = []
        self._dumps = dumps
        self._name = name

    # -- connections ---------------------------------------------------------------------

    def add(self, conn: _Connection) -> None:
        """Read ``conn`` from now on (from the loop, once its handshake is done)."""
        fd = conn.lane_fd
        with self.lock:
            if self.stopping:
                return
            self.connections[fd] = conn
            # Registered disarmed, and parked: unpark() arms it if it may be read.
            self.epoll.register(fd, select.EPOLLONESHOT)
            self.parked.add(conn)
            start = self.threads == 0
            if start:
                self.threads += 1
                self.idle += 1
        if start:
            self._start_thread()
        if self.watchman is None:
            self.watchman = threading.Thread(target=self._watch, name=f"{self._name}-watchman",
                                             daemon=True)
            start_without_sigint(self.watchman)
        self.unpark(conn)

    def remove(self, conn: _Connection) -> None:
        """Stop reading ``conn`` (its transport is gone); close the lane's descriptor of it."""
        fd = conn.lane_fd
        with self.lock:
            if self.connections.get(fd) is conn:
                del self.connections[fd]
                with contextlib.suppress(OSError, ValueError):  # closed with the lane
                    self.epoll.unregister(fd)
        self.dirty.discard(conn)
        self.parked.discard(conn)
        self.busy.pop(conn, None)
        timed = self.timed
        if timed:
            for call, owner in list(timed.items()):
                if owner is conn:
                    timed.pop(call, None)

    def arm(self, conn: _Connection) -> None:
        """Let ``conn`` be read again, unless it may not start more calls.

        Parked first, then the look: whoever lets it go on (unpark, after
        changing what lane_blocked looks at) then finds it parked, or this
        look finds it free to go. Either way exactly one of them arms it.
        """
        parked = self.parked
        parked.add(conn)
        if conn.lane_blocked():
            return  # unpark() arms it once it may go on
        try:
            parked.remove(conn)
        except KeyError:
            return  # unpark() took it meanwhile, and armed it
        self._modify(conn)

    def unpark(self, conn: _Connection) -> None:
        """``conn`` may be able to start calls again: arm it if it was left unarmed."""
        parked = self.parked
        if conn in parked and not conn.lane_blocked():
            try:
                parked.remove(conn)
            except KeyError:
                return
            self._modify(conn)

    def _modify(self, conn: _Connection) -> None:
        if not conn.closed:
            # Should the connection close meanwhile and its descriptor's number
            # go to a new one, this arms that one early: it is armed at once anyway.
            with contextlib.suppress(OSError, ValueError):
                self.epoll.modify(conn.lane_fd, ARMED)

    # -- threads -------------------------------------------------------------------------

    def _start_thread(self) -> bool:
        """Start a thread, already counted in ``threads`` and ``idle``; False if it cannot."""
        with self.lock:
            slot = self.slots
            self.slots += 1
        thread = threading.Thread(target=self._work, args=(slot,),
                                  name=f"{self._name}-{slot}", daemon=True)
        try:
            start_without_sigint(thread)
        except RuntimeError:  # "can't start new thread": a system limit
            with self.lock:
                self.threads -= 1
                self.idle -= 1
            return False
        return True

    def _claim(self) -> bool:
        """Whether this idle thread may start a plain call, which may block.

        Only when another thread stays idle to read, or one can be started.
        """
        with self.lock:
            if self.idle >= 2:
                self.idle -= 1
                return True
            if self.threads > self.runners or self.stopping:
                return False
            # A new thread, idle (+1), while this one no longer is (-1).
            self.threads += 1
        if self._start_thread():
            return True
        self._release()  # _start_thread took the new thread's count back: this one stays idle
        return False

    def _release(self) -> None:
        with self.lock:
            self.idle += 1

    def _signal(self) -> None:
        """Calls wait in the queue: wake one idle thread to take them (once on its way)."""
        with self.lock:
            if self.signalled or self.stopping:
                return
            self.signalled = True
        with contextlib.suppress(OSError):
            os.eventfd_write(self.wake_fd, 1)

    def _woken(self) -> None:
        with self.lock:
            self.signalled = False
        with contextlib.suppress(OSError):
            os.eventfd_read(self.wake_fd)
        with contextlib.suppress(OSError, ValueError):
            self.epoll.modify(self.wake_fd, ARMED)

    def flush_dirty(self) -> None:
        """Send every answer held back for being sent together."""
        dirty = self.dirty
        while dirty:
            try:
                conn = dirty.pop()
            except KeyError:
                return
            conn.lane_flush()

    def _work(self, slot: int) -> None:
        ctx = WorkerContext(slot)
        set_thread_context(ctx)
        me = LaneThread(ctx, self._dumps())
        self.members.append(me)
        queue = self.queue
        poll = self.epoll.poll
        connections = self.connections
        stop_fd, wake_fd = self.stop_fd, self.wake_fd
        try:
            while not self.stopping:
                # Queued calls are run by the thread that queued them, and by
                # threads the watchman wakes when they wait a tick: not by every
                # thread that comes by (a spare started to stay idle would run
                # them, start another spare, which would run them...).
                if self.dirty:
                    self.flush_dirty()
                try:
                    events = poll(-1, 1)
                except (OSError, ValueError):  # closed under us: the lane is stopping
                    return
                for fd, _ in events:
                    readable = connections.get(fd)
                    if readable is not None:
                        try:
                            self._serve(readable, me)
                        except Exception:  # a bug: that connection goes, the thread stays
                            logger.exception("bingfa.rpc: serving a connection failed")
                            self.busy.pop(readable, None)
                            readable.lane_lost("the server failed")
                    elif fd == stop_fd:
                        return
                    elif fd == wake_fd:
                        self._woken()
                        if queue:
                            self._run_queued(me)
        finally:
            set_thread_context(None)
            self.members.remove(me)
            with self.lock:
                self.threads -= 1
                self.idle -= 1
                last = self.threads == 0 and self.stopping
            if last:
                self._close_fds()

    def _run_queued(self, me: LaneThread) -> None:
        """Run the queued calls, if this thread may; their answers go out together.

        Should one of them block, the watchman sends the answers held
        meanwhile, and has an idle thread run the calls still queued.
        """
        queue = self.queue
        if queue and self._claim():
            me.running = True
            try:
                while True:
                    try:
                        job = queue.popleft()
                    except IndexError:
                        break
                    conn = job[0]
                    frame = conn.lane_run(job, me)
                    if frame is not None:
                        conn.lane_answer(frame, hold=bool(queue))
            finally:
                me.running = False
                self._release()
        if self.dirty:
            self.flush_dirty()

    def _done_serving(self, conn: _Connection) -> None:
        """Arm ``conn`` again: its calls have run, and their answers are gone.

        After the answers, not before: arming is a system call, and the
        client waits for its answer, not for that.
        """
        self.busy.pop(conn, None)
        self.arm(conn)

    def _serve(self, conn: _Connection, me: LaneThread) -> None:
        """Serve a connection that has bytes: read and run its calls, then arm it again.

        This runs for every call, so the common case (one call read alone) goes
        straight through, in as few Python calls as can be: on a host where
        other work keeps evicting the server from the caches, each one costs a
        few hundred nanoseconds.
        """
        busy = self.busy
        busy[conn] = self.ticks  # the watchman arms it, should this take a tick or more
        self.active = True
        if not self.watching:
            self._wake_watchman()
        queue = self.queue
        while True:
            # Read what it has (one thread at a time).
            reading = conn.lane_reading
            if not reading.acquire(blocking=False):
                busy.pop(conn, None)
                return  # another thread reads it: that one arms it
            try:
                sock = conn.lane_sock
                if conn.closed or sock is None:
                    busy.pop(conn, None)
                    return
                try:
                    data = sock.recv(READ_SIZE)
                except (BlockingIOError, InterruptedError):
                    data = b"-"  # woken for nothing: arm it
                    read: list[Job] | None = []
                except OSError as exc:
                    busy.pop(conn, None)
                    conn.lane_lost(f"the connection broke: {exc}")
                    return
                else:
                    if not data:
                        busy.pop(conn, None)
                        conn.lane_lost(None)  # the client closed it
                        return
                    conn.last_activity = monotonic()
                    read = conn.lane_frames(data)
                if read is None:
                    busy.pop(conn, None)
                    return  # being dropped
                jobs = read
            finally:
                reading.release()
            # A full read: more is likely waiting, read on before arming it.
            last = len(data) < READ_SIZE or conn.lane_blocked()
            if len(jobs) == 1 and not queue:
                # One call read alone: straight through.
                job = jobs[0]
                if job[2].inline:
                    frame = conn.lane_run(job, me)
                else:
                    lock = self.lock
                    with lock:  # _claim(), inline
                        claimed = self.idle >= 2
                        if claimed:
                            self.idle -= 1
                    if claimed or self._claim():
                        me.running = True
                        try:
                            frame = conn.lane_run(job, me)
                        finally:
                            me.running = False
                            with lock:
                                self.idle += 1
                    else:
                        frame = None
                        queue.append(job)  # a thread takes it once one is free
                if frame is not None:
                    conn.lane_answer(frame, hold=bool(queue))
            elif jobs:
                self._run_all(conn, jobs, me)
            if conn.closed:
                busy.pop(conn, None)
                return
            if last:
                if not jobs or not self._poll_next(conn, me):
                    self._done_serving(conn)
                    return
                busy[conn] = self.ticks  # its next call came while it polled: on with it

    def _poll_next(self, conn: _Connection, me: LaneThread) -> bool:
        """Poll ``conn`` a moment for its next call, rather than wait for it asleep: whether
        it came.

        On an idle host, the next call of a client that calls in a loop comes
        within tens of microseconds, and catching it here saves waking this
        thread up for it (on a virtual machine, an idle CPU is halted, and
        waking it costs more than a quick call). Not when every CPU has work
        (see _busy): polling would take a CPU from it. A connection whose next
        call keeps not coming that soon is polled only now and then, as the
        client's spin is.
        """
        misses = conn.spin_misses
        if misses >= SPIN_MISSES:
            conn.spin_misses = misses + 1
            if misses % SPIN_PROBE:
                return False
        if host_busy():
            return False
        fd = conn.lane_fd
        if me.polled != fd:
            if me.polled >= 0:
                me.poller.unregister(me.polled)
            me.poller.register(fd, select.POLLIN)
            me.polled = fd
        poll, clock, pause = me.poller.poll, monotonic, os.sched_yield
        end = clock() + SPIN
        while not poll(0):
            if clock() > end:
                conn.spin_misses = misses + 1
                return False
            pause()  # should the client run on this very CPU, let it call
        conn.spin_misses = 0
        return True

    def _run_all(self, conn: _Connection, jobs: list[Job], me: LaneThread) -> None:
        """Several calls read together: the quick ones now, then the plain ones (queued, so
        that other threads may take them should one block); answers go out together."""
        frames: list[bytes] = []
        plain: list[Job] = []
        for job in jobs:
            if job[2].inline:  # quick: never blocks, so this thread runs it now
                frame = conn.lane_run(job, me)
                if frame is not None:
                    frames.append(frame)
            else:
                plain.append(job)
        if frames:
            conn.lane_answer(frames[0] if len(frames) == 1 else b"".join(frames),
                             hold=bool(plain))
        if plain:
            self.queue.extend(plain)
            self._run_queued(me)

    # -- the watchman -------------------------------------------------------------------

    def _wake_watchman(self) -> None:
        self.watching = True
        self.watch_event.set()

    def _watch(self) -> None:
        """Every tick while there is work: rescue what waits behind a call that blocks."""
        busy, queue, dirty, timed = self.busy, self.queue, self.dirty, self.timed
        last_head: Job | None = None
        stuck = 0  # ticks the queue's head has not moved
        dirty_before = False
        idle_ticks = 0
        while not self.stopping:
            # Not watching from here: a thread that brings work now wakes us.
            self.watching = False
            if not (busy or queue or dirty or timed):
                self.watch_event.wait()
            self.watch_event.clear()
            self.watching = True
            while not self.stopped.wait(TICK):
                self.ticks = now = self.ticks + 1
                for conn, began in list(busy.items()):
                    if now - began >= 2 and busy.pop(conn, None) is not None:
                        # Its thread has been at it since the tick before: its
                        # next calls wake another thread.
                        self.arm(conn)
                waiting = self._runners_waiting()
                try:
                    head: Job | None = queue[0]
                except IndexError:
                    head = None
                if head is not None and head is last_head:
                    stuck += 1
                    if waiting or stuck >= FAIR_TICKS:
                        self._signal()  # an idle thread takes them
                else:
                    stuck = 0
                last_head = head
                if dirty and dirty_before:
                    self.flush_dirty()  # held back a whole tick
                dirty_before = bool(dirty)
                if timed:
                    self._expire(timed)
                # Calls that come one after the other keep it ticking, rather
                # than each waking it: it waits after IDLE_TICKS without work.
                if self.active or busy or queue or dirty or timed:
                    self.active = False
                    idle_ticks = 0
                else:
                    idle_ticks += 1
                    if idle_ticks >= IDLE_TICKS:
                        break

    @staticmethod
    def _expire(timed: dict[_Call, _Connection]) -> None:
        """End the calls whose deadline has passed, on their connection's loop."""
        now = monotonic()
        for call, conn in list(timed.items()):
            deadline = call.deadline
            if deadline is not None and deadline <= now and timed.pop(call, None) is not None:
                conn.lane_expired(call)

    def _runners_waiting(self) -> bool:
        """Whether the threads that run calls used almost no CPU since the last tick:
        they wait (for I/O, a lock, a sleep), and calls queued behind them need another.

        Together, not each: a thread waiting for the GIL uses no CPU either,
        and another thread would only wait for it too.
        """
        used = 0.0
        running = False
        for member in list(self.members):
            if member.running:
                try:
                    cpu = time.clock_gettime(member.clock)
                except OSError:  # it has exited
                    continue
                running = True
                used += cpu - member.cpu
                member.cpu = cpu
        return running and used < WAITING_SHARE * TICK

    # -- stopping ------------------------------------------------------------------------

    def stop(self) -> None:
        """Wake every thread to exit; a thread running a call exits when the call returns."""
        with self.lock:
            if self.stopping:
                return
            self.stopping = True
            nobody = self.threads == 0
        self.stopped.set()
        self.watch_event.set()
        self.queue.clear()
        with contextlib.suppress(OSError):
            os.eventfd_write(self.stop_fd, 1)
        if nobody:
            self._close_fds()

    def _close_fds(self) -> None:
        with self.lock:
            if self.fds_closed:
                return
            self.fds_closed = True
            self.connections.clear()
        self.epoll.close()
        os.close(self.wake_fd)
        os.close(self.stop_fd)
