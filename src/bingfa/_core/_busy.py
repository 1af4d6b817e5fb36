"""Whether every CPU of the host has work: read rarely and cheaply, for those who poll.

RPC clients and servers poll their sockets for what comes next, and process
workers their task pipes, instead of sleeping on them, because that pays off
while a CPU is idle: an idle virtual CPU is halted, and waking it costs more
than a quick call. When every CPU has work, polling only takes a CPU from work
that could have used it (the server's, say), and each ``sched_yield`` between
polls can hand the CPU to a busy process for a whole time slice: the wait gets
longer, not shorter. So they poll only while the host has a CPU to spare.

The measure is the number of tasks running right now (``procs_running`` in
``/proc/loadavg``), the caller itself left out, against the number of CPUs:
it follows the load within a second (the 1-minute load average, the fallback
where there is no /proc, lags a minute behind), and reading it costs a few
microseconds, at most every CHECK_EVERY seconds. A few samples are averaged,
so that one moment of many tasks does not turn polling off.
"""

from __future__ import annotations

import os
import time

__all__ = ["host_busy"]

CHECK_EVERY = 0.25  # seconds between two looks at the host
SMOOTHING = 0.5  # weight of the newest look in the running average

_cpus = os.cpu_count() or 1
_next_check = 0.0
_average = 0.0  # tasks running besides the caller, averaged over the last looks


def host_busy(partners: int = 0) -> bool:
    """Whether the host's CPUs all have work (as of the last look, at most CHECK_EVERY old).

    ``partners``: tasks the caller knows run because of it, which do not count
    (a process worker looks just after it sent a result, when the parent
    threads that take it are running).
    """
    global _next_check, _average
    now = time.monotonic()
    if now >= _next_check:
        first = _next_check == 0.0
        _next_check = now + CHECK_EVERY
        others = _others_running()
        if others is not None:
            _average = others if first else _average + SMOOTHING * (others - _average)
    return _average - partners >= _cpus


def _others_running() -> float | None:
    """Tasks running on the host now, besides the caller; None if it cannot tell."""
    try:
        with open("/proc/loadavg", "rb") as loadavg:
            running = loadavg.read().split()[3].split(b"/")[0]
        return int(running) - 1  # the caller runs, as it reads this
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def reset(busy: bool | None = None) -> None:
    """Forget the last look (tests): the next call looks again, or ``busy`` holds."""
    global _next_check, _average
    if busy is None:
        _next_check, _average = 0.0, 0.0
    else:
        _next_check, _average = float("inf"), float("inf") if busy else 0.0
