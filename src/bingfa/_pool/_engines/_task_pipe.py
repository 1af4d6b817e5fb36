"""A worker's end of its task pipe, which it polls a moment before it sleeps on it.

A worker that finished its batch and finds no next one would go to sleep in
``read``, and the parent's next task would then have to wake it. On a virtual
machine an idle CPU is halted, and waking it is most of what a short task's
round trip costs (``submit(f).result()`` in a loop, ``benchmarks/pools.py``
scenario c: 195 µs a round trip here, 90 µs with the worker polling). So,
while the host has a CPU to spare (see ``_busy``), the worker polls the pipe
for up to ``SPIN`` seconds first. A worker whose next task keeps not coming
that soon (a pool between maps, a slow consumer) then polls only every
``SPIN_PROBE``-th time, and costs next to nothing while it waits.

Kept free of heavy imports: every worker imports it.
"""

from __future__ import annotations

import io
import os
import select
import time
from typing import Any

from ..._core._busy import host_busy

__all__ = ["SPIN", "SPIN_MISSES", "SPIN_PROBE", "TaskPipe"]

SPIN = 100e-6  # seconds a worker polls its pipe for the next task before it sleeps
SPIN_MISSES = 8  # polls in a row that came up empty: then only every SPIN_PROBE-th one
SPIN_PROBE = 16


class TaskPipe(io.RawIOBase):
    """The read end of a worker's task pipe (a blocking descriptor), for an
    :class:`io.BufferedReader`: each raw read first polls, as the module says."""

    def __init__(self, fd: int, spin: float = SPIN) -> None:
        super().__init__()
        self._fd = fd
        self._spin = spin
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)
        self.misses = 0  # polls in a row in which nothing came (read by tests)

    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def readinto(self, buffer: Any) -> int:
        if self._spin:
            self._wait_a_moment()
        return os.readv(self._fd, [buffer])

    def _wait_a_moment(self) -> None:
        """Poll the pipe for up to ``spin`` seconds, unless that does not pay here."""
        misses = self.misses
        if misses >= SPIN_MISSES:
            self.misses = misses + 1
            if misses % SPIN_PROBE:
                return
        poll = self._poll.poll
        if poll(0):
            self.misses = 0  # already there (a batch queued, a frame larger than the buffer)
            return
        if host_busy(partners=1):  # the parent's thread that takes our result runs now
            return
        # No sched_yield between looks (as the RPC client makes): measured
        # here, it gave back most of what polling gains.
        clock = time.monotonic
        end = clock() + self._spin
        while not poll(0):
            if clock() > end:
                self.misses = misses + 1
                return
        self.misses = 0
