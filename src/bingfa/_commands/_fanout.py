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
    """When to stop early: after ``count`` jobs failed (or succeeded).

    ``now`` kills the jobs still running; ``soon`` lets them finish but starts
    no more.
    """

    __slots__ = ("count", "now", "on_failure")

    def __init__(self, now: bool, on_failure: bool, count: int) -> None:
        self.now = now
        self.on_failure = on_failure
        self.count = count


def parse_halt(spec: str | None) -> Halt | None:
    """``"now,fail=1"``, ``"soon,fail=3"``, ``"now,success=1"``... as a :class:`Halt`.

    Raises:
        ValueError: anything else, naming the forms that are understood.
    """
    if spec is None:
        return None
    if not isinstance(spec, str):
        raise TypeError(f"halt must be a string such as 'now,fail=1', not {spec!r}")
    when, _, rule = spec.strip().partition(",")
    what, _, count = rule.partition("=")
    if when not in ("now", "soon") or what not in ("fail", "success") or not (
            count.isdigit() and count.isascii() and int(count) >= 1):
        raise ValueError(f"halt {spec!r} is not understood: use now,fail=N, soon,fail=N, "
                         "now,success=N or soon,success=N with N >= 1")
    return Halt(now=when == "now", on_failure=what == "fail", count=int(count))


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
        retries: extra attempts for a job that failed or timed out.
        halt: when to stop early.
        keep_order: yield in input order (else as they finish).
        wakeup: an fd that turns readable when a PENDING source has a job.

    A job whose program does not exist fails with status 127 and a line on
    its stderr naming the program, as a shell would report it; the others run.
    """

    def __init__(self, jobs: Iterator[Job], *, parallel: int, timeout: float | None = None,
                 retries: int = 0, halt: Halt | None = None, keep_order: bool = True,
                 env: Mapping[str, str] | None = None, cwd: Any = None,
                 wakeup: int | None = None) -> None:
        self._source = jobs
        self._parallel = parallel
        self._timeout = timeout
        self._retries = retries
        self._halt = halt
        self._keep_order = keep_order
        self._env = env
        self._cwd = cwd
        self._window = max(ORDER_WINDOW_MIN, ORDER_WINDOW_PER_JOB * parallel)
        self.failed = 0              # jobs that failed after all their attempts
        self.succeeded = 0
        self.finished = 0
        self.halted = False          # the halt rule fired
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
        if not job.ok and not job.halted and job.attempts <= self._retries and not self.halted:
            self._retry.append(job)
            return
        self.finished += 1
        if job.ok:
            self.succeeded += 1
        elif not job.halted:
            self.failed += 1
        halt = self._halt
        if halt is not None and not self.halted:
            self.halted = (self.failed if halt.on_failure else self.succeeded) >= halt.count
        if not self._keep_order:
            yield job
            return
        waiting = self._waiting
        waiting[job.seq] = job
        while self._next_out in waiting:
            yield waiting.pop(self._next_out)
            self._next_out += 1
