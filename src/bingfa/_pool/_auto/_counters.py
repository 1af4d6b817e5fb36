"""What a thread has spent: CPU time, and time queued for a core.

Each is counted by the system from the thread's start; a task's share is the
difference of two readings. Read by the thread itself, or by another thread
(the probe's supervisor reads the tasks still running as a window closes).

* CPU seconds: the thread's CPU clock (``CLOCK_THREAD_CPUTIME_ID``).
* Queued seconds: time ready to run, waiting for a core held by something
  else (Linux's ``schedstat``). On a busy host a computing task spends a good
  part of its time there; it is not the task waiting for anything.

Where the system does not tell (not Linux), the time queued reads as zero.

(The times a thread blocked, which Linux counts too, would seem to tell a
thread waiting for the GIL; but two threads of numpy block as often, on the
memory they map and unmap, so they say nothing here.)
"""

from __future__ import annotations

import time

__all__ = ["NOTHING", "Spent", "gone_by", "of_thread", "own", "runnable", "thread_clock"]

Spent = tuple[float, float]  # CPU seconds, queued seconds
NOTHING: Spent = (0.0, 0.0)

_proc = [True]  # whether /proc tells the time queued (Linux), until a read says otherwise


def thread_clock(ident: int) -> int | None:
    """The CPU clock of the thread ``ident`` (``threading.get_ident()``), to read from elsewhere."""
    try:
        return time.pthread_getcpuclockid(ident)
    except (AttributeError, OSError):  # not on this platform
        return None


def own() -> Spent:
    """What the calling thread has spent."""
    return time.thread_time(), _queued("/proc/thread-self")


def of_thread(clock: int | None, native_id: int) -> Spent | None:
    """What another thread has spent (None: it has ended, or this system cannot tell)."""
    if clock is None:
        return None
    try:
        cpu = time.clock_gettime(clock)
    except OSError:  # the thread has ended meanwhile
        return None
    return cpu, _queued(f"/proc/self/task/{native_id}")


def runnable(native_id: int) -> bool:
    """Whether a thread of this process is running or ready to run now (not blocked).

    The time queued that another thread reads is as of the thread's last turn
    on a core: a thread queued now has a wait under way that no reading
    shows yet. Its state tells it is computing, not waiting.
    """
    try:
        with open(f"/proc/self/task/{native_id}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"R"
    except (OSError, IndexError):
        return False


def gone_by(later: Spent, earlier: Spent) -> Spent:
    """What was spent between two readings."""
    return max(0.0, later[0] - earlier[0]), max(0.0, later[1] - earlier[1])


def _queued(folder: str) -> float:
    if not _proc[0]:
        return 0.0
    try:
        with open(folder + "/schedstat", "rb") as f:
            return int(f.read().split()[1]) / 1e9
    except FileNotFoundError:  # the thread has ended
        return 0.0
    except (OSError, IndexError, ValueError):
        _proc[0] = False
        return 0.0
