"""Measuring a function's first tasks, in threads, to learn where the rest should run.

A :class:`Probe` holds the tasks of one function that came before anything is
known about it. Its supervisor thread runs a few of them on the auto pool's
threads, wrapped so that each records its thread, its start and end, and its
CPU time; reading other threads' CPU clocks, it measures two windows:

* one task at a time: how much of its wall time a task spends on a CPU (time
  queued for a core, on a busy host, left out);
* two at once: how much CPU two threads get together, against one. Work that
  holds the GIL gets about the same; work that releases it about twice as much
  on two free cores (see ``_decide`` for how this is read on a busy host).

The windows last ``SOLO_WINDOW`` and ``WINDOW`` seconds of running tasks (or
fewer tasks, when they are few and short; longer on a busy host, until the
tasks have had some CPU), so a function is known after some 50 milliseconds
however long its tasks are: a long task is read mid-way, not waited for. The
tasks measured keep running where they started and keep their futures; every
task held meanwhile goes where the decision says, except a map's own items,
which it takes back (:meth:`Probe.reclaim`) to map them with the rest.
"""

from __future__ import annotations

import functools
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from contextvars import Context
from dataclasses import dataclass, field
from typing import Any

from ..._core._futures import Future
from ._counters import NOTHING, Spent, gone_by, of_thread, own, runnable, thread_clock
from ._decide import TINY_TASK, WAITS_BELOW

__all__ = ["HeldTask", "Probe", "Window"]

WINDOW = 0.03  # s of tasks running two at a time, at least
SOLO_WINDOW = 0.015  # s of one running alone: it has no GIL to share, nothing to wait for
ENOUGH_CPU = 0.03  # ... and, on a busy host, CPU s each task had in it
BUSY_HOST = 0.1  # ... which it is when its tasks spent this share queued for a core
LONGEST_WINDOW = 0.2  # s: ... but no longer than this
RECHECK = 0.01  # s between looks at a window that has not had enough yet
SOLO_TASKS = 4  # at most this many tasks in the one-at-a-time window
PAIR_TASKS = 8  # ... and in the two-at-once window
PARTNER_WAIT = WINDOW  # s to wait for a second task when none is held
# A first task this far from computing waits: no second window is needed.
WAITS_BELOW_HINT = 0.25


@dataclass
class HeldTask:
    """One call waiting to be run: where its result goes, and the caller's context."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    future: Future[Any]
    context: Context
    # A map's item: the map takes it back, if it has not run, once the mode is known.
    owner: object | None = None
    # Once handed to a pool: its job there and the pool, to stop it (scopes, bridges).
    job: Any = None
    pool: Any = None


@dataclass
class Sample:
    """One measured task: its thread, its times (perf_counter) and what it spent.

    A thread's counters run from the thread's start: ``at_start`` is their
    reading as the task began, ``spent`` what the task took once it ended,
    ``read`` what it had taken at each window edge it was running across.
    """

    clock: int | None = None  # the thread's CPU clock, to read it from another thread
    native_id: int = 0
    started: float = 0.0  # 0: not begun
    ended: float | None = None
    call_seconds: float | None = None  # the call alone, without the measuring around it
    at_start: Spent | None = None  # None until the call begins
    spent: Spent = NOTHING
    read: dict[int, Spent] = field(default_factory=dict)

    def spent_at(self, edge: int, when: float) -> Spent:
        """What it had spent at a window edge read at ``when``."""
        if not self.started or when < self.started:
            return NOTHING
        if self.ended is not None and self.ended <= when:
            return self.spent
        return self.read.get(edge, NOTHING)

    def busy_between(self, opened: float, closed: float) -> float:
        """Wall seconds it ran between two times."""
        if not self.started:
            return 0.0
        end = closed if self.ended is None else min(self.ended, closed)
        return max(0.0, end - max(self.started, opened))


@dataclass
class _Lanes:
    """The window under way: how many tasks at once, how many in all, which ran."""

    want: int
    most: int
    running: list[Sample]
    ran: list[Sample]
    started: int = 0
    offered: int = 0  # the most tasks there were to run at once (running and held)


@dataclass(frozen=True)
class Window:
    """One measuring window: its length, and what its tasks spent and ran in it."""

    seconds: float
    busy: float  # task-seconds: the sum over tasks of the time each ran in the window
    cpu: float  # CPU seconds they got
    queued: float  # seconds they were ready to run but waited for a CPU
    offered: int = 1  # the most tasks there were to run at once (running and held)

    @property
    def cpu_ratio(self) -> float:
        """CPU seconds per second a task could have run: near 1 computing, near 0 waiting.

        Time spent in the run queue is left out (where the system tells it),
        so work that computes on a busy host still counts as computing. Time
        waiting for the GIL is not: two threads sharing it show about 0.5.
        """
        # All of it queued says nothing of waiting: count what ran as computing.
        could = max(self.busy - self.queued, self.cpu)
        return min(1.0, self.cpu / could) if could > 0 else 0.0


def _measured(probe: Probe, sample: Sample, fn: Callable[..., Any], /, *args: Any,
              **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, recording its thread and what it spent into ``sample``.

    The readings bracket the call alone: taking the probe's lock may block,
    and wait for the GIL, which is not the task's doing.
    """
    clock = thread_clock(threading.get_ident())
    native_id = threading.get_native_id()
    with probe.cond:
        sample.clock, sample.native_id = clock, native_id
        sample.started = time.perf_counter()
        probe.cond.notify_all()
    sample.at_start = at_start = own()  # read at the edges only once it is set
    called = time.perf_counter()
    try:
        return fn(*args, **kwargs)
    finally:
        returned = time.perf_counter()
        spent = gone_by(own(), at_start)
        with probe.cond:
            sample.call_seconds = returned - called
            sample.ended = returned
            sample.spent = spent
            probe.cond.notify_all()
        probe._top_up()  # the next task, now, from this thread


def _gone(*_: Any) -> Any:
    raise RuntimeError("this probe is over")


class Probe:
    """The measurement of one function's first tasks, and the tasks held meanwhile.

    Args:
        fn: the function.
        run_measured: runs a held task on a thread, with the given function
            standing in for ``fn`` (the measuring wrapper).
        decided: called on the supervisor thread once the windows are over;
            returns the mode the held tasks go to.
        send: hands a held task over to the pool of a mode.
        lanes: tasks the second window runs at once: 2, or 1 when the
            threads are too few to run two (then there is no second window).
        settled_alone: ``settled_alone(probe, cheap)``, asked after the first
            window whether it settles the question on its own (processes could
            not win whatever the second window showed), to skip the second;
            and, ``cheap`` (without pickling the function), once the first
            task has ended, to end the first window then.
    """

    def __init__(self, fn: Callable[..., Any],
                 run_measured: Callable[[HeldTask, Callable[..., Any]], None],
                 decided: Callable[[Probe], str],
                 send: Callable[[HeldTask, str], None], lanes: int = 2,
                 settled_alone: Callable[[Probe, bool], bool] | None = None) -> None:
        self.fn = fn
        self.lanes = lanes  # tasks at once in the second window (1: no second window)
        self.cond = threading.Condition()
        self.held: deque[HeldTask] = deque()
        self.samples: list[Sample] = []
        self.measured_tasks: list[HeldTask] = []
        self.solo: Window | None = None
        self.pair: Window | None = None
        self.mode: str | None = None  # set once decided
        self.decided = threading.Event()  # the mode is known
        self.done = threading.Event()  # decided, and every held task handed over
        self._lanes: _Lanes | None = None  # the window under way
        # What the function pickles to (None: it cannot be), once sized.
        self.function_pickle: bytes | None = None
        self.function_sized = False
        # What a task's arguments and result pickle to, once sized (bytes each).
        self.carried: tuple[float | None, float | None] = (None, None)
        self._aborted = False
        self._run_measured = run_measured
        self._decided = decided
        self._send = send
        self._settled_alone = settled_alone
        name = getattr(fn, "__name__", type(fn).__name__)
        self.thread = threading.Thread(target=self._supervise, daemon=True,
                                       name=f"bingfa-auto-probe-{name}")

    def hold(self, task: HeldTask) -> bool:
        """Keep ``task`` until the decision; False if it is made already (send it yourself)."""
        with self.cond:
            if self.mode is not None:
                return False
            self.held.append(task)
            self.cond.notify_all()
            return True

    def reclaim(self, owner: object) -> list[HeldTask]:
        """The held tasks of ``owner`` (a map) that have not run, taken back, in order.

        Once the mode is known, a map runs them with the rest of its items,
        in one map where the mode says, rather than have them sent one by one.
        """
        with self.cond:
            mine = [task for task in self.held if task.owner is owner]
            for task in mine:
                self.held.remove(task)
        return mine

    def abort(self) -> list[HeldTask]:
        """Stop measuring (the pool is terminated); the tasks never handed over."""
        with self.cond:
            self._aborted = True
            left = list(self.held)
            self.held.clear()
            self.cond.notify_all()
        return left

    def task_seconds(self) -> float:
        """Wall seconds of one task alone: the median of those run one at a time.

        Tasks run two at a time may have waited for each other (the GIL), so
        they count only when none ended alone; a task still running counts
        for the time it has run so far.
        """
        now = time.perf_counter()
        with self.cond:
            alone = [s.call_seconds for s in self.samples[:SOLO_TASKS]
                     if s.call_seconds is not None]
            ended = alone or [s.call_seconds for s in self.samples
                              if s.call_seconds is not None]
            if ended:
                return statistics.median(ended)
            return max((now - s.started for s in self.samples if s.started), default=0.0)

    # --- the supervisor --------------------------------------------------------------
    def _supervise(self) -> None:
        mode = "thread"  # if anything goes wrong, threads run anything
        try:
            # Aborted (the pool terminated), it has no tasks left to send.
            if self._measure():
                mode = self._decided(self)
        finally:
            with self.cond:
                self.mode = mode
                # A map's own items wait for it to take them back (reclaim).
                left = [task for task in self.held if task.owner is None]
                for task in left:
                    self.held.remove(task)
                # Decided: their futures (and results) are their callers' alone now,
                # before any caller hears of the decision and may drop them.
                self.measured_tasks = []
            self.decided.set()
            try:
                for task in left:
                    self._send(task, mode)
            finally:
                self._let_go()

    def _let_go(self) -> None:
        """Drop the pool and the first tasks, then say it is over.

        A worker thread may keep its last task (this probe's wrapper) for a
        while, and the pool keeps the probe: neither may keep the pool, the
        function (a bound method keeps its object) or the first results alive.
        """
        self._run_measured = self._decided = self._send = self.fn = _gone
        self._settled_alone = None
        self.measured_tasks = []
        self.function_pickle = None  # a closure's may be megabytes
        self.done.set()

    def _measure(self) -> bool:
        """Run the two windows; False if aborted on the way."""
        running: list[Sample] = []
        self.solo = self._window(running, lanes=1, most=SOLO_TASKS, edge=0,
                                 settled=self._settled_so_far,
                                 early=functools.partial(self._settled_so_far, cheap=True))
        if self.solo is None:
            return False
        if self.solo.cpu_ratio < WAITS_BELOW_HINT and self.task_seconds() >= TINY_TASK:
            return True  # it waits: no need to see two at once
        if self.lanes < 2:
            return True
        if self._settled_alone is not None and self._settled_alone(self, False):
            return True
        if not self.held and not running:
            self._wait_for_partner()
        if self.held or running:
            self.pair = self._window(running, lanes=self.lanes, most=PAIR_TASKS, edge=2)
            if self.pair is None:
                return False
        return True

    def _settled_so_far(self, solo: Window, cheap: bool = False) -> bool:
        """Whether the first window, as far as it went, settles it already.

        For work whose data outweighs what processes could save, no reading
        of the CPU clocks would change the answer, and a longer window only
        keeps the second core idle. Asked when a busy host would make the
        window go on (see :meth:`_enough`), and ``cheap``ly once its first
        task has ended: without pickling the function (see ``settled_alone``),
        so that the task measured next is not kept from the GIL for long, and
        only of work that computed (a first call's waits, an import or a
        cache filled, need the rest of the window to be told from waiting).
        """
        if self._settled_alone is None or (cheap and solo.cpu_ratio < WAITS_BELOW):
            return False
        self.solo = solo
        return self._settled_alone(self, cheap)

    def _wait_for_partner(self) -> None:
        deadline = time.monotonic() + PARTNER_WAIT
        with self.cond:
            while not self.held and not self._aborted:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self.cond.wait(left)

    def _top_up(self) -> None:
        """Start held tasks until the window under way has its lanes full.

        Called by the supervisor, and by each measured task as it ends, from
        its worker thread: the next task then starts at once, where waiting
        for the supervisor would mean waiting for the GIL, which the other
        lane may hold for a switch interval. Starting them ahead instead, into
        the pool's queue, would let its other threads run more than the lanes.
        """
        while True:
            with self.cond:
                lanes = self._lanes
                if lanes is None or self._aborted:
                    return
                lanes.running[:] = [s for s in lanes.running if s.ended is None]
                lanes.offered = max(lanes.offered,
                                    min(lanes.want, len(lanes.running) + len(self.held)))
                if (len(lanes.running) >= lanes.want or lanes.started >= lanes.most
                        or not self.held):
                    return
                task = self.held.popleft()
                sample = Sample()
                lanes.running.append(sample)
                lanes.ran.append(sample)
                lanes.started += 1
                self.samples.append(sample)
                self.measured_tasks.append(task)
                # Taken with the task: once the lock is let go, the window may
                # close and the probe end (_let_go) before this thread goes on.
                run, fn = self._run_measured, self.fn
            # A task cancelled before it began never runs the wrapper: count
            # it as over at once, so that no window waits for it.
            task.future.add_done_callback(functools.partial(self._settled, sample))
            run(task, functools.partial(_measured, self, sample, fn))

    def _settled(self, sample: Sample, _future: Any) -> None:
        with self.cond:
            if not sample.started:
                sample.started = sample.ended = time.perf_counter()
            self.cond.notify_all()

    def _window(self, running: list[Sample], lanes: int, most: int, edge: int,
                settled: Callable[[Window], bool] | None = None,
                early: Callable[[Window], bool] | None = None) -> Window | None:
        """Keep ``lanes`` tasks running for a while: what they spent meanwhile.

        One lane: the window opens as its first task begins. More: once that
        many run at once (read at ``edge``), which leaves out the ramp-up: a
        thread starting beside one that holds the GIL may wait several
        switch intervals for its first steps. ``running`` carries a task still
        running over from the last window, and into the next. The window
        closes ``SOLO_WINDOW`` (one lane) or ``WINDOW`` s after it opened, or
        later if its tasks have had
        little CPU (see :meth:`_enough`), reading the tasks still running at
        ``edge + 1``; or as soon as the tasks to keep every lane going run
        out; or when it would go on for lack of CPU and ``settled`` says what
        it saw so far is enough; or when ``early``, asked once a task has
        ended, says so. None: aborted.
        """
        live = [s for s in running if s.ended is None]
        state = _Lanes(want=lanes, most=most, running=live, ran=list(live))
        least = SOLO_WINDOW if lanes == 1 else WINDOW
        with self.cond:
            self._lanes = state
        opened: float | None = None
        try:
            while True:
                self._top_up()
                with self.cond:
                    if self._aborted:
                        return None
                    state.running[:] = [s for s in state.running if s.ended is None]
                    out_of_tasks = state.started >= most or not self.held
                    if opened is None:
                        opened = self._opening(state, lanes, edge)
                        if opened is None and not state.running and out_of_tasks:
                            # Nothing ran at once (though offered: quick tasks
                            # that ended before a second began).
                            return Window(0.0, 0.0, 0.0, 0.0, state.offered)
                    if opened is None:
                        self.cond.wait()
                        continue
                    if not state.running and out_of_tasks:
                        break
                    if lanes > 1 and len(state.running) < lanes and out_of_tasks:
                        break  # no more to keep every lane going: the tail would run alone
                    now = time.perf_counter()
                    if early is not None and any(s.ended is not None for s in state.ran):
                        ask, early = early, None  # each asked once, without the lock
                    elif now - opened < least:
                        self.cond.wait(opened + least - now)
                        continue
                    elif self._enough(state.ran, lanes, edge, opened, now):
                        break
                    elif settled is None:
                        self.cond.wait(RECHECK)
                        continue
                    else:
                        ask, settled = settled, None
                    so_far = self._summary(state, edge, opened,
                                           self._read_clocks(state.running, edge + 1))
                if ask(so_far):
                    break
            with self.cond:
                closed = self._read_clocks(state.running, edge + 1)
        finally:
            with self.cond:
                self._lanes = None
                running[:] = [s for s in state.running if s.ended is None]
        return self._summary(state, edge, opened, closed)

    @staticmethod
    def _summary(state: _Lanes, edge: int, opened: float, closed: float) -> Window:
        """What the window's tasks spent between ``opened`` and ``closed`` (read at
        ``edge`` and ``edge + 1``)."""
        cpu = queued = busy = 0.0
        for sample in state.ran:
            part = gone_by(sample.spent_at(edge + 1, closed), sample.spent_at(edge, opened))
            cpu, queued = cpu + part[0], queued + part[1]
            busy += sample.busy_between(opened, closed)
        return Window(closed - opened, busy, cpu, queued, state.offered)

    @staticmethod
    def _enough(ran: list[Sample], lanes: int, edge: int, opened: float, now: float) -> bool:
        """Whether a window that has lasted its least has seen enough to close.

        On an idle host, its least is enough. On a busy one (its tasks spent
        a tenth of their time queued for a core) a few tens of milliseconds
        say little: a thread gets a core in slices of a few milliseconds. A
        window whose tasks compute then goes on until they have had
        ``ENOUGH_CPU`` s each (at most ``LONGEST_WINDOW`` s); one whose tasks
        mostly wait has said what it had to.
        """
        if now - opened >= LONGEST_WINDOW:
            return True
        cpu = queued = busy = 0.0
        for sample in ran:
            at_start = sample.at_start
            if sample.ended is not None:
                so_far = sample.spent
            elif at_start is not None:
                reading = of_thread(sample.clock, sample.native_id)
                if reading is None:
                    continue
                so_far = gone_by(reading, at_start)
            else:
                continue
            part = gone_by(so_far, sample.spent_at(edge, opened))
            cpu, queued = cpu + part[0], queued + part[1]
            busy += sample.busy_between(opened, now)
        if lanes == 1 and cpu < WAITS_BELOW * max(busy - queued, 0.0) and any(
                sample.ended is None and sample.started and runnable(sample.native_id)
                for sample in ran):
            # Read as waiting, yet ready to run: queued for a core, in a wait
            # the counters do not show yet (see runnable). On a loaded host
            # that would pass pure Python off as waiting: look again later.
            return False
        if queued < BUSY_HOST * busy:
            return True
        return cpu >= ENOUGH_CPU * lanes or cpu < WAITS_BELOW_HINT * lanes * (now - opened)

    def _opening(self, state: _Lanes, lanes: int, edge: int) -> float | None:
        """When the window opens, if now is the time (lock held); None: not yet."""
        if lanes == 1:
            begun = [s.started for s in state.ran if s.started]
            return min(begun) if begun else None
        live = [s for s in state.running if s.started]
        if len(live) >= lanes or (live and len(live) == len(state.running) and not self.held):
            return self._read_clocks(live, edge)
        return None

    @staticmethod
    def _read_clocks(live: list[Sample], edge: int) -> float:
        """Read the CPU clocks of the tasks running now; the time they were read."""
        when = time.perf_counter()
        for sample in live:
            at_start = sample.at_start
            spent = of_thread(sample.clock, sample.native_id) if at_start else None
            if spent is not None and at_start is not None:
                sample.read[edge] = gone_by(spent, at_start)
        return when
