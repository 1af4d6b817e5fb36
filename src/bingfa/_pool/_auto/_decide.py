"""Threads or processes for one function, from what its first tasks showed.

Pure logic, no measuring: :func:`decide` takes a :class:`Measurement` (which
``_probe`` fills in from real tasks, and tests from numbers) and gives a
:class:`Decision` with the reason a user reads in the debug log.

The rules, in order:

* a function or argument that cannot be pickled runs in threads (nothing else
  can run it);
* work that mostly waits (CPU under half the wall time) runs in threads: a
  waiting thread costs nothing and needs no copy of its data;
* on a free-threaded Python, threads run Python code in parallel;
* with one worker or one core, processes cannot run more at once;
* tasks given one at a time (the caller waits for each) have nothing to run
  beside each other;
* work that releases the GIL (two threads got clearly more CPU than one) runs
  in threads: as parallel as processes, without pickling;
* work that holds the GIL, or whose tasks are too short to tell, goes to
  processes when the cost model says they finish sooner: start-up, pickling
  and the hand-overs against the time two or more cores save. Few or tiny
  tasks, and big payloads, stay in threads.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

__all__ = ["Costs", "Decision", "Measurement", "decide"]

# Below this share of its wall time on a CPU, a task is waiting, not computing.
WAITS_BELOW = 0.5
# Whether work lets the GIL go is seen two ways, from two tasks run side by
# side in threads against one alone: how much more CPU the two got together
# than one alone (about 1 taking turns for the GIL, up to 2 side by side,
# less on a busy host, where the second thread shares the cores with
# everything else), and the share of its running time each kept on a CPU
# (time queued for a core left out, which a busy host does not change for
# work side by side, but which hides some of the waiting for the GIL). Their
# mean must reach this. Measured here: pure Python 0.9 to 1.3 (its upper end
# on a host whose other guests take CPU time); hashlib, zlib and numpy 1.5 to
# 1.9. When in doubt, the GIL counts as held and the cost of
# processes decides: taking GIL-free work for GIL-bound costs little in most
# cases (processes run it as fast, unless its data is big, which the costs
# see); the other mistake would run the work one task at a time.
RELEASES_GIL_ABOVE = 1.4
# Processes must promise to finish in at most this share of the threads' time:
# a near tie goes to threads, which cannot fail to pickle and share memory.
PROCESS_MARGIN = 0.9
# Tasks shorter than this are too short for their CPU share to mean anything
# (the clocks' own cost is of their size): they count as computing.
TINY_TASK = 20e-6
# A task alone getting less of a core than this shares the host with other
# busy programs (a little less is a virtual machine's stolen time).
LOADED_BELOW = 0.9
# The tasks assumed still to come when their number is unknown (an endless imap).
UNKNOWN_REMAINING = 1000


@dataclass(frozen=True)
class Costs:
    """What running tasks in threads or processes costs on this machine, beyond the work.

    Defaults are this project's measurements on a 2-core VM; where ``bingfa
    bench`` has run, they are scaled by how its process round trip compares
    (see ``_costs``).
    """

    process_start: float = 0.06  # s: a process pool's start, to its first result
    warm_process_start: float = 0.02  # s: ... when this process has started one before
    # A map's item, handed out in chunks, costs the calling process this much:
    process_item: float = 0.12e-6  # s: pickling it and its result (small ones)
    thread_item: float = 0.3e-6  # s: a thread worker's bookkeeping, under the GIL
    # A task submitted alone:
    process_submit: float = 15e-6
    thread_submit: float = 25e-6
    bytes_per_second: float = 1.0e9  # pickling, copying and unpickling, one way
    # Threads that take turns for the GIL lose this much more to the turns.
    gil_turns: float = 1.1

    def scaled(self, factor: float) -> Costs:
        """These costs on a machine ``factor`` times slower at handing work over."""
        return dataclasses.replace(
            self, process_start=self.process_start * factor,
            warm_process_start=self.warm_process_start * factor,
            process_item=self.process_item * factor, thread_item=self.thread_item * factor,
            process_submit=self.process_submit * factor,
            thread_submit=self.thread_submit * factor)


@dataclass(frozen=True)
class Measurement:
    """What a function's first tasks showed, and where it would run.

    Attributes:
        picklable: the function and the arguments seen could be pickled.
        cpu_ratio: CPU seconds per wall second of one task running alone.
        gil_gain: CPU two threads got together over what one got alone
            (about 2 for work that releases the GIL on two free cores, about 1
            for work that holds it); None when no two tasks ran at once
            (tasks too short to overlap, or given one at a time).
        gil_share: the share of its running time each of two threads spent
            on a CPU, over what one alone did, times two (about 2 side by
            side, 1 taking turns); time queued for a core left out.
        task_seconds: wall seconds of one task alone (at least this, for a
            task still running when the measurement ended).
        payload_bytes: pickled bytes of one task's arguments and result.
        function_bytes: pickled bytes of the function (big for a closure that
            carries its data by value).
        remaining: tasks still to run, None when unknown.
        workers: the pool's workers.
        cores: the cores this process may use.
        free_threaded: the interpreter runs without a GIL.
        processes_running: a process pool is up already (no start-up to pay).
        processes_warm: this process has started process workers before
            (their zygote is up: starting more is quicker).
        one_at_a_time: the caller never had two tasks waiting at once (it
            waits for each result before it submits the next).
        batched: the tasks are a map's, handed out in chunks (else submitted
            one by one).
        alone_share: the share of a core one task alone got while it ran
            (below 1 when other programs keep the cores busy: each process
            would get a share too, not a core).
    """

    picklable: bool
    cpu_ratio: float
    gil_gain: float | None
    task_seconds: float
    payload_bytes: int
    function_bytes: int
    remaining: int | None
    workers: int
    cores: int
    free_threaded: bool = False
    processes_running: bool = False
    processes_warm: bool = False
    gil_share: float | None = None
    one_at_a_time: bool = False
    batched: bool = True
    alone_share: float = 1.0


@dataclass(frozen=True)
class Decision:
    """Where a function's tasks run, and why (the debug log's line)."""

    mode: str
    reason: str


def decide(m: Measurement, costs: Costs | None = None) -> Decision:
    """Threads or processes for the function ``m`` describes."""
    if not m.picklable:
        return Decision("thread", "its function or arguments cannot be pickled, so only "
                                  "threads can run it")
    if m.cpu_ratio < WAITS_BELOW and m.task_seconds >= TINY_TASK:
        return Decision("thread", f"it waits: {m.cpu_ratio:.0%} of its time on a CPU")
    if m.free_threaded:
        return Decision("thread", "this Python is free-threaded: threads run Python code "
                                  "in parallel")
    if m.workers == 1 or m.cores == 1:
        what = "worker" if m.workers == 1 else "core"
        return Decision("thread", f"one {what}: processes could not run more at once")
    if m.one_at_a_time:
        return Decision("thread", "its tasks came one at a time: nothing to run beside "
                                  "each other")
    if m.gil_gain is not None and _releases_gil(m):
        return Decision("thread", f"it releases the GIL: two threads ran {m.gil_gain:.1f}x "
                                  "the CPU of one")
    return _by_cost(m, costs or Costs())


def _releases_gil(m: Measurement) -> bool:
    """Whether the two views of threads side by side, together, say the GIL is let go."""
    assert m.gil_gain is not None
    views = [m.gil_gain] if m.gil_share is None else [m.gil_gain, m.gil_share]
    return sum(views) / len(views) >= RELEASES_GIL_ABOVE


def _by_cost(m: Measurement, costs: Costs) -> Decision:
    """GIL-bound work: processes if they finish clearly sooner than one thread at a time."""
    remaining = UNKNOWN_REMAINING if m.remaining is None else m.remaining
    holds = "it holds the GIL" if m.gil_gain is not None else "whether or not it holds the GIL"
    if remaining <= 0:
        return Decision("thread", f"{holds}, but no tasks are left to spread out")
    parallel = min(m.workers, m.cores, remaining)
    # Threads run the tasks one at a time (the GIL), losing a little to the turns.
    turns = costs.gil_turns if m.workers > 1 else 1.0
    thread_item = costs.thread_item if m.batched else costs.thread_submit
    in_threads = remaining * (m.task_seconds * turns + thread_item)
    # The parent pickles every task and reads every result itself, one at a
    # time; the workers compute side by side.
    copying = m.payload_bytes / costs.bytes_per_second
    overheads = {
        "starting processes": (0.0 if m.processes_running else costs.warm_process_start
                               if m.processes_warm else costs.process_start),
        "sending the state its function carries":
            m.function_bytes / costs.bytes_per_second * parallel,
        "copying its arguments and results": remaining * copying * (1 + 1 / parallel),
        "handing each task over":
            remaining * (costs.process_item if m.batched else costs.process_submit),
    }
    in_processes = (sum(overheads.values())
                    + remaining * m.task_seconds / _speed_up(parallel, m.cores, m.alone_share))
    gain = in_threads / in_processes if in_processes > 0 else float("inf")
    if in_processes <= PROCESS_MARGIN * in_threads:
        return Decision("process", f"{holds}: {parallel} processes should finish its "
                                   f"{_count(m.remaining)} {gain:.1f}x sooner than threads")
    costliest = max(overheads, key=overheads.__getitem__)
    return Decision("thread", f"{holds}, but {costliest} would cost about what "
                              f"processes save ({gain:.1f}x in processes)")


def _speed_up(processes: int, cores: int, alone_share: float) -> float:
    """How much faster ``processes`` run CPU work than one thread, on a host this busy.

    A thread alone that got ``alone_share`` of a core shared the cores with
    about ``cores / alone_share - 1`` other busy threads; the processes join
    them, each getting its share. On an idle host, simply ``processes``.
    """
    if alone_share >= LOADED_BELOW:
        return float(processes)
    others = cores / max(alone_share, 0.05) - 1
    one = min(1.0, cores / (others + 1))
    together = processes * min(1.0, cores / (others + processes))
    return max(1.0, together / one)


def _count(remaining: int | None) -> str:
    return "remaining tasks" if remaining is None else f"{remaining} remaining tasks"
