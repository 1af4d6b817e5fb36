"""bf.Condition and bf.Event, for threads and processes at once.

A condition is its lock, two semaphores (*wake-ups* and *acks*, both from 0)
and a shared block: ``sleepers``, the waiters still counted as waiting, and a
table of :data:`_SLOTS` words where each waiter writes its process's token
while it waits (so a waiter that dies can be told from a slow one).

- ``wait`` (lock held) counts itself in ``sleepers``, takes a slot, releases
  the lock and blocks on *wake-ups*. However it leaves (woken, timed out,
  interrupted) it clears its slot, releases *acks* once, and takes the lock
  back.
- ``notify(n)`` (lock held) first counts out the waiters that left on their
  own since the last notify (one ack each), then releases ``k = min(n,
  sleepers)`` wake-ups and, still holding the lock, waits for ``k`` acks:
  ``k`` waiters have left their wait, so no wake-up is still meant for a
  waiter that is asleep. Only then does it drain the wake-ups a waiter that
  timed out at that moment left unused. As no thread can start waiting while
  the notifier holds the lock, a wake-up never goes to a waiter that arrived
  after the notify (the lost wake-up that stalls a barrier).

A waiter whose process dies while it waits never acks: the notifier, when an
ack is slow, looks for slots of dead processes and counts each as its ack. A
waiter killed in the instant between clearing its slot and acking cannot be
seen; the notifier then gives up after :data:`_ACK_PATIENCE` seconds.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, TypeVar

from .._core._errors import LockOwnerDiedError
from .._core._timeouts import limit_seconds
from ._lock import Lock, RLock
from ._shared import (
    ALIVE_CHECK_EVERY,
    Block,
    Shared,
    acquire_blocking,
    check_count,
    is_alive,
    make_semaphore,
    open_semaphore,
    owner_token,
)

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

    from ._shared import SemLock

__all__ = ["Condition", "Event"]

T = TypeVar("T")

_SLEEPERS = 0
# Waiters at once whose death a notifier can see (more may wait: those beyond
# the table are simply not watched).
_SLOTS = 32
# How long a notifier waits for acks that neither come nor belong to a dead
# waiter it can see, before it goes on.
_ACK_PATIENCE = 5.0


class Condition(Shared):
    """A condition variable shared by threads and processes.

    Like :class:`threading.Condition`: ``wait(timeout=None)``,
    ``wait_for(predicate, timeout=None)``, ``notify(n=1)``, ``notify_all()``,
    ``with``; ``lock`` is a :class:`~bingfa.Lock` or :class:`~bingfa.RLock`
    (a new RLock by default). Waiting or notifying without holding the lock
    raises RuntimeError. ``notify`` returns once the threads it woke have left
    their wait (they then queue for the lock).
    """

    __slots__ = ("__weakref__", "_acks", "_block", "_key", "_lock", "_wakeups", "_words")

    _lock: Lock
    _wakeups: SemLock
    _acks: SemLock
    _block: Block
    _words: memoryview

    def __init__(self, lock: Lock | None = None) -> None:
        if lock is None:
            lock = RLock()
        elif not isinstance(lock, Lock):
            raise TypeError(f"lock must be a bingfa.Lock or bingfa.RLock, not {type(lock).__name__}"
                            " (threading's and multiprocessing's locks do not cross processes"
                            " the same way)")
        self._lock = lock
        name, self._wakeups = make_semaphore(0)
        acks, self._acks = make_semaphore(0)
        self._block = Block(1 + _SLOTS)
        self._words = self._block.words
        self._created(name, (name, acks), self._block.name)

    def _state(self) -> tuple[object, ...]:
        return (self._lock, self._wakeups.name, self._acks.name, self._block.name)

    def _attach(self, lock: Lock, wakeups: str, acks: str, block: str) -> None:
        self._lock = lock
        self._wakeups = open_semaphore(wakeups)
        self._acks = open_semaphore(acks)
        self._block = Block(1 + _SLOTS, block)
        self._words = self._block.words

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Take the condition's lock (see :meth:`Lock.acquire`)."""
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        """Release the condition's lock."""
        self._lock.release()

    def __enter__(self) -> bool:
        return self._lock.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._lock.release()

    def wait(self, timeout: float | None = None) -> bool:
        """Release the lock, wait for a notification or ``timeout``, take the lock back.

        Returns False if the timeout passed without a notification.

        Raises:
            RuntimeError: the lock is not held by the caller.
            LockOwnerDiedError: while waiting, a process died holding the lock
                (the lock is held again when this is raised).
        """
        timeout = limit_seconds(timeout)
        if not self._lock._is_owned():
            raise RuntimeError("cannot wait on un-acquired lock")
        words = self._words
        words[_SLEEPERS] += 1
        slot = self._take_slot()
        saved = self._lock._release_save()
        woken = False
        try:
            woken = acquire_blocking(self._wakeups, timeout)
        finally:
            if slot:
                words[slot] = 0
            self._acks.release()
            died = self._lock._acquire_restore(saved)
        if died:
            raise LockOwnerDiedError(
                f"process {died} died holding the lock of {self!r} while this thread waited; "
                "the lock is held again, but what it protected may be half-updated", pid=died)
        return woken

    def _take_slot(self) -> int:
        words = self._words
        for slot in range(1, 1 + _SLOTS):
            if not words[slot]:
                words[slot] = owner_token()
                return slot
        return 0

    def wait_for(self, predicate: Callable[[], T], timeout: float | None = None) -> T:
        """Wait until ``predicate()`` is true or ``timeout`` passes; its last value."""
        timeout = limit_seconds(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        result = predicate()
        while not result:
            if deadline is None:
                self.wait()
            else:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.wait(left)
            result = predicate()
        return result

    def notify(self, n: int = 1) -> None:
        """Wake up to ``n`` waiting threads (of any process)."""
        check_count("n", n)
        if not self._lock._is_owned():
            raise RuntimeError("cannot notify on un-acquired lock")
        words = self._words
        while self._acks.acquire(False):  # waiters that left on their own
            words[_SLEEPERS] -= 1
        woken = min(n, words[_SLEEPERS])
        if woken <= 0:
            return
        words[_SLEEPERS] -= woken
        for _ in range(woken):
            self._wakeups.release()
        self._await_acks(woken)
        while self._wakeups.acquire(False):  # left by a waiter that timed out meanwhile
            pass

    def _await_acks(self, count: int) -> None:
        give_up = time.monotonic() + _ACK_PATIENCE
        while count > 0:
            if acquire_blocking(self._acks, ALIVE_CHECK_EVERY):
                count -= 1
                continue
            dead = self._clear_dead_slots()
            # A dead waiter never acks: count it as the ack it owes, or, past
            # the ones awaited, as a sleeper no longer there.
            owed = min(dead, count)
            count -= owed
            self._words[_SLEEPERS] -= dead - owed
            if not dead and time.monotonic() > give_up:
                return

    def _clear_dead_slots(self) -> int:
        words = self._words
        dead = 0
        for slot in range(1, 1 + _SLOTS):
            token = words[slot]
            if token and not is_alive(token):
                words[slot] = 0
                dead += 1
        return dead

    def notify_all(self) -> None:
        """Wake every waiting thread."""
        self.notify(max(self._words[_SLEEPERS], 0))

    def __repr__(self) -> str:
        return f"<bingfa.Condition({self._lock!r}) sleepers={self._words[_SLEEPERS]}>"


_FLAG = 0


class Event(Shared):
    """A flag that threads and processes wait for; like :class:`threading.Event`."""

    __slots__ = ("__weakref__", "_block", "_cond", "_key", "_words")

    _cond: Condition
    _block: Block
    _words: memoryview

    def __init__(self) -> None:
        self._cond = Condition(Lock())
        self._block = Block(1)
        self._words = self._block.words
        self._created(self._block.name, (), self._block.name)

    def _state(self) -> tuple[object, ...]:
        return (self._cond, self._block.name)

    def _attach(self, cond: Condition, block: str) -> None:
        self._cond = cond
        self._block = Block(1, block)
        self._words = self._block.words

    def is_set(self) -> bool:
        """Whether the flag is set."""
        return bool(self._words[_FLAG])

    def set(self) -> None:
        """Set the flag and wake everyone waiting for it."""
        with self._cond:
            self._words[_FLAG] = 1
            self._cond.notify_all()

    def clear(self) -> None:
        """Reset the flag."""
        with self._cond:
            self._words[_FLAG] = 0

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the flag is set (True) or ``timeout`` passes (False)."""
        timeout = limit_seconds(timeout)
        if self._words[_FLAG]:
            return True
        with self._cond:
            return bool(self._cond.wait_for(self.is_set, timeout))

    def __repr__(self) -> str:
        return f"<bingfa.Event {'set' if self.is_set() else 'unset'} {self._key}>"

