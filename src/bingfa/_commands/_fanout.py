"""Many commands, ``parallel`` at a time: the scheduler of ``bf.run_many`` and ``bingfa run``.

:class:`Fanout` pulls jobs lazily from an iterator (an endless stream of
arguments on standard input works), starts them on a
:class:`~._loop.CommandLoop` as slots free up, retries failures, applies the
halt rule, and yields finished jobs in input order or as they finish. Leaving
the iteration early, by ``break``, an exception or Ctrl-C, ends every command
still running, sessions and all.
"""

from __future__ import annotations

import heapq
import time

from .._core._errors import CommandNotFoundError
from ._loop import CommandLoop

TYPE_CHECKING = False  # no typing, re or dataclasses: bingfa run starts fast
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping
    from typing import Any

    from ._loop import Running

__all__ = ["PENDING", "Fanout", "Halt", "Job", "parse_halt"]

# A source of jobs may yield this: no job yet, but more may come, and its
# wake-up fd (see Fanout's ``wakeup``) turns readable when one does. So an
# argument stream that is slow to arrive (``tail -f | bingfa run``) never
# keeps finished jobs from being reported or timeouts from being enforced.
PENDING: Any = object()

# With keep_order, how far past the oldest unfinished job new jobs may start:
# finished results wait in memory for it, so this bounds that memory.
ORDER_WINDOW_PER_JOB = 64
ORDER_WINDOW_MIN = 1024

class Halt:
    """When to stop early, as GNU parallel's ``--halt``.

    After ``count`` jobs (or ``percent`` % of all the jobs) failed, succeeded,
    or finished either way (``kind`` ``"fail"``, ``"success"`` or ``"done"``):
    ``now`` kills the jobs still running; ``soon`` lets them finish but starts
    no more.
    """

    __slots__ = ("count", "kind", "now", "percent")

    def __init__(self, now: bool, kind: str, count: int | None = None,
                 percent: int | None = None) -> None:
        self.now = now
        self.kind = kind
        self.count = count
        self.percent = percent

    @property
    def on_failure(self) -> bool:
        """Whether failures are what it counts."""
        return self.kind == "fail"

    def threshold(self, total: int | None) -> float:
        """How many jobs it takes, out of ``total`` (needed for a percentage)."""
        if self.percent is None:
            assert self.count is not None
            return self.count
        assert total is not None, "a halt percentage needs the number of jobs"
        return total * self.percent / 100


# GNU parallel's older forms of --halt, still accepted by it.
_HALT_SHORTHANDS = {"1": "soon,fail=1", "2": "now,fail=1", "-1": "soon,success=1",
                    "-2": "now,success=1"}
HALT_FORMS = ("now or soon, then fail=N, success=N or done=N with N a whole number, 1 or "
              "more, or a share of all the jobs such as fail=10% (up to 100%)")


def parse_halt(spec: str | None) -> Halt | None:
    """``"now,fail=1"``, ``"soon,fail=3"``, ``"now,success=1"``, ``"soon,done=50%"``...

    Also GNU parallel's short forms: ``0`` or ``never`` (no halt: None), ``1``
    (``soon,fail=1``), ``2`` (``now,fail=1``), ``-1`` and ``-2`` (``soon`` and
    ``now,success=1``), ``N%`` (``soon,fail=N%``).

    Raises:
        ValueError: anything else, naming the forms that are understood.
    """
    if spec is None:
        return None
    if not isinstance(spec, str):
        raise TypeError(f"halt must be a string such as 'now,fail=1', not {spec!r}")
    text = spec.strip()
    if text in ("0", "never"):
        return None
    text = _HALT_SHORTHANDS.get(text, text)
    if text.endswith("%") and "," not in text:
        text = "soon,fail=" + text
    when, _, rule = text.partition(",")
    kind, _, amount = rule.partition("=")
    number = amount[:-1] if amount.endswith("%") else amount
    if (when not in ("now", "soon") or kind not in ("fail", "success", "done")
            or not (number.isdigit() and number.isascii() and int(number) >= 1)
            or (number != amount and int(number) > 100)):
        raise ValueError(f"halt {spec!r} is not understood: use {HALT_FORMS}")
    if number != amount:
        return Halt(now=when == "now", kind=kind, percent=int(number))
    return Halt(now=when == "now", kind=kind, count=int(number))


class Job:
    """One command of the fan-out, through all its attempts, and how it ended."""

    __slots__ = (
        "argv",
        "attempts",
        "build",
        "display",
        "duration",
        "halted",
        "info",
        "killed",
        "received",
        "returncode",
        "seq",
        "slot",
        "stderr",
        "stdout",
        "timed_out",
        "wall_start",
    )

    def __init__(self, seq: int, argv: list[str] | None, display: list[str] | str | None = None,
                 build: Callable[[int], list[str]] | None = None, info: Any = None) -> None:
        self.seq = seq               # 1-based position in the input
        self.argv = argv             # what runs; None until ``build(slot)`` makes it
        self.display = display       # what the user is shown; defaults to argv
        self.build = build
        self.info = info             # the caller's: the arguments it was made from
        self.attempts = 0
        self.slot = 0                # 1..jobs: which of the parallel slots it ran in
        self.returncode = 0
        self.stdout = b""
        self.stderr = b""
        self.received = 0
        self.wall_start = 0.0
        self.duration = 0.0
        self.timed_out = False
        self.killed = False          # bingfa ended it (timeout, halt, Ctrl-C)
        self.halted = False          # ended because of the halt rule, not its own failure

    @property
    def ok(self) -> bool:
        """Whether its last attempt exited 0 in time."""
        return self.returncode == 0 and not self.timed_out

    @property
    def signal(self) -> int | None:
        """The signal that ended its last attempt, or None."""
        return -self.returncode if self.returncode < 0 else None

    def _record(self, run: Running) -> None:
        self.returncode = run.returncode
        self.stdout = run.stdout
        self.stderr = run.stderr
        self.received = run.received
        self.wall_start = run.wall_start
        self.duration = run.duration
        self.timed_out = run.timed_out
        self.killed = run.killed

    def _not_found(self, error: CommandNotFoundError) -> None:
        # As a shell would report it: status 127 and a line on stderr naming it.
        self.returncode = 127
        self.wall_start = time.time()
        self.duration = 0.0
        self.stdout = b""
        self.stderr = f"bingfa: {error}\n".encode()
        self.received = 0


class Fanout:
    """Runs jobs with bounded parallelism; iterate it for the finished :class:`Job` s.

    Args:
        jobs: the iterator of jobs to run, pulled only as slots free up.
        parallel: at most this many at once.
        timeout: seconds per attempt.
        retries: extra attempts for a job that failed or timed out; None for
            as many as it takes.
        halt: when to stop early.
        total: how many jobs there are (for a halt rule with a percentage).
        keep_order: yield in input order (else as they finish).
        wakeup: an fd that turns readable when a PENDING source has a job.

    A job whose program does not exist fails with status 127 and a line on
    its stderr naming the program, as a shell would report it; the others run.
    """

    def __init__(self, jobs: Iterator[Job], *, parallel: int, timeout: float | None = None,
                 retries: int | None = 0, halt: Halt | None = None, total: int | None = None,
                 keep_order: bool = True, env: Mapping[str, str] | None = None,
                 cwd: Any = None, wakeup: int | None = None) -> None:
        self._source = jobs
        self._parallel = parallel
        self._timeout = timeout
        self._retries = retries
        self._halt = halt
        # the count of jobs (failed, succeeded or done) at which the halt rule fires
        self.threshold = 0.0 if halt is None else halt.threshold(total)
        self._keep_order = keep_order
        self._env = env
        self._cwd = cwd
        self._window = max(ORDER_WINDOW_MIN, ORDER_WINDOW_PER_JOB * parallel)
        self.failed = 0              # jobs that failed after all their attempts
        self.succeeded = 0
        self.finished = 0
        self.halted = False          # the halt rule fired
        self.halted_by: Job | None = None  # the job whose end fired it
        self.failed_at_halt = 0      # how many had failed when it fired
        self.started = 0
        self._retry: list[Job] = []  # short: a list beats importing collections
        self._waiting: dict[int, Job] = {}  # finished, held back for input order
        self._next_out = 1                  # with keep_order: the seq to yield next
        self._exhausted = False
        self._awaiting_input = False
        self._wakeup = wakeup

    def __iter__(self) -> Iterator[Job]:
        loop = CommandLoop()
        if self._wakeup is not None:
            loop.watch(self._wakeup)
        try:
            yield from self._drive(loop)
        finally:
            loop.close()  # kills and reaps whatever still runs (break, error, Ctrl-C)

    def _drive(self, loop: CommandLoop) -> Iterator[Job]:
        free = list(range(1, self._parallel + 1))  # a heap: the lowest slot goes first
        while True:
            while not self.halted and free:
                job = self._next_job()
                if job is None:
                    break
                unstarted = self._start(loop, job, heapq.heappop(free))
                if unstarted is not None:
                    heapq.heappush(free, unstarted.slot)
                    was_halted: bool = self.halted
                    yield from self._settle(unstarted)
                    self._halt_now(loop, was_halted)
            if not len(loop) and (self.halted or not self._awaiting_input):
                break
            for run in loop.poll():
                job = run.tag
                heapq.heappush(free, job.slot)
                job._record(run)
                job.halted = job.killed and not job.timed_out and self.halted
                was_halted = self.halted
                yield from self._settle(job)
                self._halt_now(loop, was_halted)
        retries, self._retry = self._retry, []
        for job in retries:  # halted while they waited for another attempt: they failed
            yield from self._settle(job)
        for seq in sorted(self._waiting):  # after a halt: what finished, in order, gaps and all
            yield self._waiting.pop(seq)

    def _halt_now(self, loop: CommandLoop, was_halted: bool) -> None:
        """The halt rule just fired: with ``now``, end the jobs still running."""
        if self.halted and not was_halted and self._halt is not None and self._halt.now:
            loop.stop_many(loop.running)  # one look through /proc for all their sessions

    def _next_job(self) -> Job | None:
        """A retry first, then the next input, unless the order window is full."""
        if self._retry:
            return self._retry.pop(0)
        if self._exhausted:
            return None
        if self._keep_order and self.started - self._next_out + 1 >= self._window:
            return None  # the oldest unfinished job holds back too much finished output
        job = next(self._source, None)
        self._awaiting_input = job is PENDING
        if job is None or job is PENDING:
            self._exhausted = job is None
            return None
        self.started += 1
        return job

    def _start(self, loop: CommandLoop, job: Job, slot: int) -> Job | None:
        """Start one attempt of ``job``; the job itself if it could not start."""
        job.slot = slot
        job.attempts += 1
        if job.build is not None:
            job.argv = job.build(slot)  # {%} is the slot of this attempt
        assert job.argv is not None
        try:
            loop.start(job.argv, tag=job, env=self._env, cwd=self._cwd, timeout=self._timeout)
        except CommandNotFoundError as exc:
            job._not_found(exc)
            return job
        return None

    def _settle(self, job: Job) -> Iterator[Job]:
        """Count a finished attempt: retry it, or yield what may be yielded now."""
        if (not job.ok and not job.halted and not self.halted
                and (self._retries is None or job.attempts <= self._retries)):
            self._retry.append(job)
            return
        self.finished += 1
        if job.ok:
            self.succeeded += 1
        elif not job.halted:
            self.failed += 1
        halt = self._halt
        if halt is not None and not self.halted and not job.halted:
            if halt.kind == "done":
                counted: int | None = self.finished
            elif job.ok:
                counted = self.succeeded if halt.kind == "success" else None
            else:
                counted = self.failed if halt.kind == "fail" else None
            if counted is not None and counted >= self.threshold:
                self.halted = True
                self.halted_by = job
                self.failed_at_halt = self.failed
        if not self._keep_order:
            yield job
            return
        waiting = self._waiting
        waiting[job.seq] = job
        while self._next_out in waiting:
            yield waiting.pop(self._next_out)
            self._next_out += 1
