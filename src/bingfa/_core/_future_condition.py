"""The condition a Future waits on, made in one object instead of eight.

``concurrent.futures.Future`` makes a ``threading.Condition`` for every
future: the condition, its ``RLock``, five bound methods it keeps as
attributes and a deque of sleepers, eight objects the garbage collector
tracks. A pool with ten thousand tasks queued holds ten thousand of them, and
every collection walks them all; a stream of submits then spends more time in
the collector than in the pool. Most futures are never waited on (their
result is ready when it is asked for, or it is awaited through a done
callback), so this condition *is* its lock, and the list of sleepers is made
only when a thread waits.

It does what the stdlib's futures ask of ``Future._condition`` (``with``,
``acquire``, ``release``, ``wait``, ``notify``, ``notify_all``), with
``threading.Condition``'s rules: waiting and notifying need the lock.
"""

from __future__ import annotations

import _thread
from typing import Any

__all__ = ["FutureCondition"]


# typeshed marks RLock final; the C type allows subclasses (3.6 to 3.13 checked).
class FutureCondition(_thread.RLock):  # type: ignore[misc]
    """A reentrant lock that is also the condition variable of one future."""

    __slots__ = ("_sleepers",)

    def __init__(self) -> None:
        self._sleepers: list[Any] | None = None  # locks of threads in wait()

    def wait(self, timeout: float | None = None) -> bool:
        """Release the lock until notified or ``timeout`` passes; whether notified."""
        if not self._is_owned():  # type: ignore[attr-defined]
            raise RuntimeError("cannot wait on un-acquired lock")
        sleeper = _thread.allocate_lock()
        sleeper.acquire()
        if self._sleepers is None:
            self._sleepers = []
        self._sleepers.append(sleeper)
        # Release however many times this thread holds the lock, and take
        # it back as many times after (what threading.Condition does).
        saved = self._release_save()  # type: ignore[attr-defined]
        notified = False
        try:
            if timeout is None:
                notified = sleeper.acquire()
            else:
                notified = sleeper.acquire(True, timeout) if timeout > 0 else sleeper.acquire(False)
            return notified
        finally:
            self._acquire_restore(saved)  # type: ignore[attr-defined]
            if not notified and self._sleepers is not None:
                try:
                    self._sleepers.remove(sleeper)
                except ValueError:  # notified after the timeout, before the lock came back
                    pass

    def notify(self, n: int = 1) -> None:
        """Wake up to ``n`` waiting threads."""
        if not self._is_owned():  # type: ignore[attr-defined]
            raise RuntimeError("cannot notify on un-acquired lock")
        sleepers = self._sleepers
        if not sleepers:
            return
        woken, self._sleepers = sleepers[:n], sleepers[n:]
        for sleeper in woken:
            sleeper.release()

    def notify_all(self) -> None:
        """Wake every waiting thread."""
        if not self._is_owned():  # type: ignore[attr-defined]
            raise RuntimeError("cannot notify on un-acquired lock")
        sleepers, self._sleepers = self._sleepers, None
        if sleepers:
            for sleeper in sleepers:
                sleeper.release()
