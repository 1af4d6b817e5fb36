"""bf.Semaphore and bf.BoundedSemaphore, for threads and processes at once.

Each is one named semaphore (see :mod:`._shared`). A semaphore has no owner,
so a process that dies after an acquire keeps its unit: release in a
``finally`` or use ``with``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._shared import (
    SEM_VALUE_MAX,
    Shared,
    acquire_blocking,
    check_acquire_timeout,
    check_count,
    make_semaphore,
    open_semaphore,
)

if TYPE_CHECKING:
    from types import TracebackType

    from ._shared import SemLock

__all__ = ["BoundedSemaphore", "Semaphore"]


class Semaphore(Shared):
    """A counter of free units, shared by threads and processes.

    Like :class:`threading.Semaphore`: ``acquire(blocking=True, timeout=None)``
    takes a unit, waiting for one; ``release(n=1)`` gives ``n`` back. A negative
    initial value, timeout or ``n`` below 1 raises ValueError.
    """

    __slots__ = ("__weakref__", "_key", "_sem")

    _sem: SemLock

    def __init__(self, value: int = 1) -> None:
        check_count("value", value)
        if value > SEM_VALUE_MAX:
            raise ValueError(f"value must be at most {SEM_VALUE_MAX}, not {value}")
        name, self._sem = make_semaphore(value, self._limit(value))
        self._created(name, (name,), None)

    def _limit(self, value: int) -> int:
        return SEM_VALUE_MAX

    def _state(self) -> tuple[object, ...]:
        return (self._sem.name, self._sem.maxvalue)

    def _attach(self, name: str, maxvalue: int) -> None:
        self._sem = open_semaphore(name, maxvalue)

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Take one unit; False if ``blocking`` is false or ``timeout`` passes first."""
        if timeout is not None:
            timeout = check_acquire_timeout(blocking, timeout)
        if self._sem.acquire(False):
            return True
        return blocking and acquire_blocking(self._sem, timeout)

    def release(self, n: int = 1) -> None:
        """Give back ``n`` units, waking as many waiters."""
        check_count("n", n, least=1)
        for _ in range(n):
            self._sem.release()

    @property
    def value(self) -> int:
        """The free units now (a snapshot: other threads and processes move it)."""
        return int(self._sem._get_value())

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"<bingfa.{type(self).__name__} value={self.value} {self._key}>"


class BoundedSemaphore(Semaphore):
    """A :class:`Semaphore` that refuses to rise above its initial value.

    A release beyond it raises ValueError, as :class:`threading.BoundedSemaphore` does.
    """

    __slots__ = ()

    def _limit(self, value: int) -> int:
        return value

    def release(self, n: int = 1) -> None:
        """Give back ``n`` units; ValueError if that would pass the initial value."""
        check_count("n", n, least=1)
        if self.value + n > self._sem.maxvalue:
            raise ValueError("Semaphore released too many times")
        for _ in range(n):
            try:
                self._sem.release()
            except ValueError:
                raise ValueError("Semaphore released too many times") from None
