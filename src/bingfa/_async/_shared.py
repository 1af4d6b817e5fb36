"""The process pool behind ``bf.to_process``: shared, started lazily, let go when idle.

One process pool serves every caller in the process, whatever its event
loop or thread (a pool per call would start a process per call; a pool per
loop would multiply idle workers by the loops a program runs). It starts with
the first call and has a worker per usable CPU (a process-mode ``bf.Pool``'s
default). ``bf.to_thread`` has threads of its own (``_threads``), which
follow the same idle rule.

A pool that has had nothing in flight for :data:`IDLE_SECONDS` is shut down
by a small janitor thread, which then exits too; the next call starts a new
pool (about 10 ms from bingfa's zygote on 2 CPUs). So a service that called
``bf.to_process`` once at start-up does not hold a CPU's worth of processes
for good, and a test (ours, or a user's with a leak check of its own) finds
nothing left behind a moment after it ends. At interpreter exit whatever
remains is terminated: every coroutine that could await it has been cancelled
by then (``asyncio.run`` cancels its tasks before it returns).

In a child made by ``os.fork()`` the parent's pools are the parent's: the
child starts its own on its first call.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from .._core._interrupts import start_without_sigint

if TYPE_CHECKING:
    from .._pool._pool import Mode, Pool

__all__ = ["IDLE_SECONDS", "PROCESSES", "SharedPool"]

# Idle time after which a shared pool is shut down. Long enough that a burst
# of calls (the usual pattern) keeps its workers warm; short enough that
# idle workers are gone before a test's leak check looks (it allows 3 s).
IDLE_SECONDS = 2.0


class SharedPool:
    """A pool of one mode, started on first use and shut down when idle.

    Callers bracket each task with :meth:`acquire` and :meth:`release`; the
    pool is only let go by the janitor while nothing is in flight (or by
    :meth:`close`, at once).
    """

    def __init__(self, mode: Mode) -> None:
        self.mode = mode
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._pool: Pool | None = None
        self._busy = 0  # tasks in flight on the current pool
        self._last_used = 0.0
        self._janitor: threading.Thread | None = None
        self._closing = threading.Event()  # set to make the janitor leave at once

    def running(self) -> Pool | None:
        """The pool, if it runs now (for tests and benchmarks)."""
        return self._pool

    def acquire(self) -> Pool:
        """The pool, started if need be, with one more task counted in flight."""
        with self._lock:
            pool = self._pool
            if pool is None:
                pool = self._start()
            self._busy += 1
            return pool

    def acquire_warm(self) -> Pool | None:
        """Like :meth:`acquire` if the pool runs already; ``None`` (nothing counted) if not."""
        with self._lock:
            pool = self._pool
            if pool is not None:
                self._busy += 1
            return pool

    def start(self) -> None:
        """Start the pool if it is not running (so that a later acquire is quick)."""
        with self._lock:
            if self._pool is None:
                self._start()

    def release(self, pool: Pool, *_: Any) -> None:
        """One task on ``pool`` is over (with a future after it: a done-callback)."""
        with self._lock:
            if pool is self._pool:  # not one closed meanwhile, whose tasks no longer count
                self._busy -= 1
                self._last_used = time.monotonic()

    def _start(self) -> Pool:
        """Start a pool and its janitor (lock held)."""
        from .._pool._pool import Pool

        pool = Pool(mode=self.mode)
        # Registered after the pool module's own exit handler (imported just
        # now, at the latest), so it runs first: see _register_exit_handler.
        _register_exit_handler()
        self._pool = pool
        self._last_used = time.monotonic()
        self._closing = threading.Event()
        self._janitor = threading.Thread(
            target=self._watch, args=(pool, self._closing),
            name=f"bingfa-shared-{self.mode}-janitor", daemon=True)
        start_without_sigint(self._janitor)
        return pool

    def _watch(self, pool: Pool, closing: threading.Event) -> None:
        """Shut ``pool`` down once it has been idle for IDLE_SECONDS (the janitor's life)."""
        while True:
            with self._lock:
                if self._pool is not pool:
                    return  # closed by close(), which stops the pool itself
                idle = time.monotonic() - self._last_used
                if self._busy == 0 and idle >= IDLE_SECONDS:
                    self._pool = None
                    break
                # Busy: look again later, rather than be woken at every call
                # (a wake-up per task would cost every task a thread switch).
                wait = IDLE_SECONDS - idle if self._busy == 0 else IDLE_SECONDS
            if closing.wait(max(wait, 0.01)):
                return
        pool.shutdown(wait=True)

    def close(self) -> None:
        """Terminate the pool now, if it runs, and wait for its janitor."""
        with self._lock:
            pool, self._pool = self._pool, None
            janitor, self._janitor = self._janitor, None
            self._busy = 0
            self._closing.set()
        if janitor is not None and janitor is not threading.current_thread():
            janitor.join()
        if pool is not None:
            pool.terminate()

    def forget_after_fork(self) -> None:
        """In a forked child: the parent's pool is not ours to use or stop."""
        self._reset()


PROCESSES = SharedPool("process")

_exit_handler_registered = False


def _register_exit_handler() -> None:
    global _exit_handler_registered
    if not _exit_handler_registered:
        _exit_handler_registered = True
        # Terminate, not drain (bingfa's exit handler for pools nobody
        # closed): nothing can await these results any more.
        atexit.register(PROCESSES.close)


os.register_at_fork(after_in_child=PROCESSES.forget_after_fork)
