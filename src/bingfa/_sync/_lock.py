"""bf.Lock and bf.RLock: one lock for threads and processes, that survives a dead holder.

The lock is a named semaphore of value 1 (an uncontended acquire and release
are one atomic instruction each, no system call) and a shared word naming its
holder: the holding process's token (pid and start time, see
:func:`._shared.owner_token`), written just after the semaphore is taken and
cleared just before it is given back, so the word is non-zero exactly while a
process holds the lock.

A waiter blocks on the semaphore in slices of :data:`._shared.ALIVE_CHECK_EVERY`
seconds (a release wakes it at once). Between slices it reads the word: if it
names a process that has died, the waiter takes the lock over: under a second
semaphore (the *guard*, so that two waiters cannot both take over) it checks
the word again and writes its own token there, leaving the semaphore taken.
It then gives the lock back and raises :class:`~bingfa.LockOwnerDiedError`
naming the dead pid; later acquires proceed as usual. Nothing of this touches
the uncontended path, which is one semaphore operation and one write.

The gap: a process killed while one of its threads has taken the semaphore
but not yet written the word (or has cleared the word but not yet released)
leaves the lock held with the word zero, and that death is not seen; waiters
then wait as for a live holder (``timeout=`` bounds them). The window is a few
bytecodes, but a thread may wait there for the GIL while its process's other
threads run, so in a busy multi-threaded process it can last milliseconds.
Closing it needs acquirers to announce themselves before they block (a slot
each, as Condition's waiters have), which the uncontended path cannot afford
in Python.

Threads: as with :class:`threading.Lock`, a held ``Lock`` may be released by
any thread or process; releasing one that is not held raises RuntimeError. An
``RLock`` belongs to one thread of one process, which may take it again; its
depth is kept in the process, beside the shared word.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from threading import get_ident
from typing import TYPE_CHECKING

from .._core._errors import LockOwnerDiedError
from ._shared import (
    ALIVE_CHECK_EVERY,
    Block,
    Shared,
    acquire_blocking,
    check_acquire_timeout,
    is_alive,
    make_semaphore,
    open_semaphore,
    owner_token,
)

if TYPE_CHECKING:
    from types import TracebackType

    from ._shared import SemLock

__all__ = ["Lock", "RLock"]

_me = owner_token()


def _refresh_token() -> None:
    global _me
    _me = owner_token()


os.register_at_fork(after_in_child=_refresh_token)

_NOT_HELD = "release unlocked lock"
# How many times a contended acquire tries again before it sleeps (about 2 µs).
_SPINS = 50
# What Lock._wait reports.
_TAKEN = object()
_DEAD_HOLDER = object()
# The pid of the dead holder that this thread took a lock over from, for
# the error that follows at once.
_last_dead = threading.local()
# How long a waiter waits for the guard before trying again at its next slice.
_GUARD_WAIT = 1.0
# The block's words: the holder's token, and how long (ms) the lock may be
# held with no token before a waiter takes it over (0: never; see
# Lock._give_up_on_silent_holders).
_HOLDER, _SILENT_LIMIT_MS = 0, 1
_WORDS = 2


class Lock(Shared):
    """A lock shared by threads and processes; pass it to any task, handle or spawn.

    Like :class:`threading.Lock` (``acquire``, ``release``, ``locked``, ``with``),
    and like it, any thread or process may release a held lock. Every wait
    takes ``timeout=``. A process that dies holding the lock does not take it
    along: the next acquirer takes it over and raises
    :class:`~bingfa.LockOwnerDiedError`, leaving the lock free for the acquire
    after. Pickles by name: an unrelated process that receives it while its
    creator still holds the object opens the same lock.
    """

    __slots__ = ("__weakref__", "_block", "_guard", "_key", "_sem", "_words")

    _sem: SemLock
    _guard: SemLock
    _block: Block
    _words: memoryview

    def __init__(self) -> None:
        name, self._sem = make_semaphore(1, 1)
        guard_name, self._guard = make_semaphore(1, 1)
        self._block = Block(_WORDS)
        self._words = self._block.words
        self._created(name, (name, guard_name), self._block.name)

    def _state(self) -> tuple[object, ...]:
        return (self._sem.name, self._guard.name, self._block.name)

    def _attach(self, sem: str, guard: str, block: str) -> None:
        self._sem = open_semaphore(sem, 1)
        self._guard = open_semaphore(guard, 1)
        self._block = Block(_WORDS, block)
        self._words = self._block.words

    # -- the public face ------------------------------------------------------
    # __exit__ repeats release's few lines rather than call it: a Python call
    # costs as much as the semaphore operation itself.

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Take the lock; False if ``blocking`` is false or ``timeout`` passes first.

        Raises:
            LockOwnerDiedError: the previous holder died holding the lock (it
                is free again when this is raised).
            ValueError: a negative timeout, or a timeout without blocking.
        """
        if timeout is not None:
            timeout = check_acquire_timeout(blocking, timeout)
        if self._sem.acquire(False):
            self._words[0] = _me
            return True
        if not blocking:
            return False
        return self._acquire_slowly(timeout)

    def release(self) -> None:
        """Give the lock back; RuntimeError if it is not held."""
        self._words[0] = 0
        try:
            self._sem.release()
        except ValueError:
            raise RuntimeError(_NOT_HELD) from None

    def locked(self) -> bool:
        """Whether some thread or process holds the lock now."""
        return bool(self._sem._is_zero())

    __enter__ = acquire

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._words[0] = 0
        try:
            self._sem.release()
        except ValueError:
            raise RuntimeError(_NOT_HELD) from None

    def __repr__(self) -> str:
        state = "locked" if self.locked() else "unlocked"
        return f"<bingfa.{type(self).__name__} {state} {self._key}>"

    # -- waiting and taking over ----------------------------------------------

    def _acquire_slowly(self, timeout: float | None) -> bool:
        # Spin a little first: a holder in another process usually lets go
        # within a microsecond or two, and sleeping in the kernel and being
        # woken costs several. (Measured with benchmarks/sync.py: two processes
        # taking turns run twice as fast.)
        acquire = self._sem.acquire
        for _ in range(_SPINS):
            if acquire(False):
                self._words[0] = _me
                return True
        outcome = self._wait(timeout)
        if outcome is _DEAD_HOLDER:
            self._owner_died()
        return outcome is _TAKEN

    def _wait(self, timeout: float | None) -> object:
        """Block until the lock is this process's or ``timeout`` passes.

        Returns :data:`_TAKEN`, :data:`_DEAD_HOLDER` (taken over from a
        process that died holding it; its pid is in ``_last_dead.pid``) or
        None (timed out).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        silent_since: float | None = None  # when the lock was first seen held with no token
        while True:
            if deadline is None:
                wait = ALIVE_CHECK_EVERY
            else:
                wait = min(ALIVE_CHECK_EVERY, deadline - time.monotonic())
                if wait <= 0:
                    return None
            if acquire_blocking(self._sem, wait):
                self._words[0] = _me
                return _TAKEN
            if self._took_over():
                return _DEAD_HOLDER
            limit = self._words[_SILENT_LIMIT_MS]
            if not limit or self._words[_HOLDER]:
                silent_since = None
            elif silent_since is None:
                silent_since = time.monotonic()
            elif (time.monotonic() - silent_since) * 1000 >= limit and self._took_silent_over():
                return _DEAD_HOLDER

    def _took_over(self) -> bool:
        """Take the lock if the process holding it has died."""
        holder = self._words[0]
        if holder == 0 or is_alive(holder):
            return False
        if not acquire_blocking(self._guard, _GUARD_WAIT):
            return False
        try:
            # Another waiter may have taken over (and released) between the
            # read above and the guard: only the first one sees the dead token.
            if self._words[0] != holder:
                return False
            self._words[0] = _me
            _last_dead.pid = holder & 0xFFFF_FFFF
            return True
        finally:
            self._guard.release()

    def _give_up_on_silent_holders(self, seconds: float) -> None:
        """Take the lock over once it has been held ``seconds`` with no holder's token.

        That is the gap of the module's docstring: a process killed between
        taking the semaphore and writing its token. For a lock whose holders
        never stop between the two for anything like ``seconds`` (a channel's,
        whose critical sections take microseconds), a lock that stays held
        with no token that long was taken by a process that died; a live one
        would have written its token. Only for such locks: in general a
        thread may wait for the GIL there.
        """
        self._words[_SILENT_LIMIT_MS] = max(1, round(seconds * 1000))

    def _took_silent_over(self) -> bool:
        """Take a lock held with no token (see _give_up_on_silent_holders)."""
        if not acquire_blocking(self._guard, _GUARD_WAIT):
            return False
        try:
            if self._words[_HOLDER] != 0:
                return False  # its holder spoke up meanwhile
            if self._sem.acquire(False):
                self._sem.release()  # it was given back meanwhile: take it the usual way
                return False
            self._words[_HOLDER] = _me
            _last_dead.pid = None
            return True
        finally:
            self._guard.release()

    def _owner_died(self) -> None:
        self.release()
        pid = _last_dead.pid
        who = "a process that could not be named" if pid is None else f"process {pid}"
        raise LockOwnerDiedError(
            f"{who} died holding the lock {self._key}; it is free again, but what "
            "it protected may be half-updated", pid=pid)

    # -- what Condition needs ---------------------------------------------------

    def _is_owned(self) -> bool:
        return bool(self._words[0] == _me)

    def _release_save(self) -> object:
        self.release()
        return None

    def _acquire_restore(self, saved: object) -> int:
        """Take the lock back after a wait; the pid of a holder that died with it, or 0."""
        if self._sem.acquire(False):
            self._words[0] = _me
            return 0
        return int(_last_dead.pid or 0) if self._wait(None) is _DEAD_HOLDER else 0


_rlocks: weakref.WeakSet[RLock] = weakref.WeakSet()


def _forget_holders() -> None:
    # A forked child has only the thread that forked; whatever the parent's
    # threads held is the parent's, not the child's.
    for lock in _rlocks:
        lock._holder = None
        lock._depth = 0


os.register_at_fork(after_in_child=_forget_holders)


class RLock(Lock):
    """A reentrant :class:`Lock`: the thread that holds it may take it again.

    Like :class:`threading.RLock`: only the holding thread may release it
    (others get RuntimeError), and it is free once released as many times as
    it was taken.
    """

    __slots__ = ("_depth", "_holder")

    _holder: int | None
    _depth: int

    def __init__(self) -> None:
        super().__init__()
        self._holder = None
        self._depth = 0
        _rlocks.add(self)

    def _attach(self, sem: str, guard: str, block: str) -> None:
        super()._attach(sem, guard, block)
        self._holder = None
        self._depth = 0
        _rlocks.add(self)

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Take the lock, or take it once more if this thread holds it; see :meth:`Lock.acquire`."""
        me = get_ident()
        if self._holder == me:
            self._depth += 1
            return True
        if timeout is not None:
            timeout = check_acquire_timeout(blocking, timeout)
        if self._sem.acquire(False):
            self._words[0] = _me
        elif not blocking or not self._acquire_slowly(timeout):
            return False
        self._holder = me
        self._depth = 1
        return True

    def release(self) -> None:
        """Undo one acquire; RuntimeError unless this thread holds the lock."""
        if self._holder != get_ident():
            raise RuntimeError("cannot release un-acquired lock")
        depth = self._depth - 1
        self._depth = depth
        if not depth:
            self._holder = None
            self._words[0] = 0
            self._sem.release()

    __enter__ = acquire

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    def _owner_died(self) -> None:
        # The lock is this thread's (taken over): record it so that release works.
        self._holder = get_ident()
        self._depth = 1
        super()._owner_died()

    def _is_owned(self) -> bool:
        return self._holder == get_ident()

    def _release_save(self) -> object:
        depth = self._depth
        self._depth = 1
        self.release()
        return depth

    def _acquire_restore(self, saved: object) -> int:
        died = super()._acquire_restore(saved)
        assert isinstance(saved, int)
        self._holder = get_ident()
        self._depth = saved
        return died
