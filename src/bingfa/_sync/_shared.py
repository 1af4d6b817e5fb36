"""What every cross-process primitive stands on: named semaphores, a shared
block of words, the life of their names, and who is alive.

A primitive is a few POSIX named semaphores (``/dev/shm/sem.bf-...``, the
C ``_multiprocessing.SemLock``, whose uncontended acquire never enters the
kernel) and one shared memory block (``/dev/shm/bf-...``) of 64-bit words for
its state (a lock's owner, a barrier's count, a value). Both are reached *by
name*, so a primitive pickles into any process, not only into children forked
after it was made.

Names and their lifetime. A name carries the creating process's pid, and the
creator alone unlinks it: when its object is collected, when the interpreter
exits, or, should the creator die without running any Python (SIGKILL), by
multiprocessing's resource tracker, which watches the creator and its forked
children. Unlinking removes only the name: every process that has the
primitive open keeps using it; a process that tries to open it afterwards gets
:class:`FileNotFoundError` with a message saying why. So keep the creating
object alive while others may still receive it, as with multiprocessing.

One object per primitive per process. Unpickling a primitive that this
process already has returns that very object, so that a thread's hold on an
``RLock`` is seen whichever copy of the handle it comes through.
"""

from __future__ import annotations

import _multiprocessing  # type: ignore[import-not-found]  # no stubs: see SemLock below
import _posixshmem  # type: ignore[import-not-found]
import atexit
import ctypes
import itertools
import os
import sys
import threading
import weakref
from typing import TYPE_CHECKING, Any, TypeVar

from .._core._proctree import start_time
from .._core._shm import map_shared, new_name, unmap
from .._core._timeouts import limit_seconds

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Protocol

    class SemLock(Protocol):
        """What bingfa uses of ``_multiprocessing.SemLock``, which has no stubs."""

        name: str
        maxvalue: int

        def acquire(self, block: bool = True, timeout: float | None = None) -> bool: ...
        def release(self) -> None: ...
        def _is_zero(self) -> bool: ...
        def _get_value(self) -> int: ...

__all__ = [
    "ALIVE_CHECK_EVERY",
    "SEM_VALUE_MAX",
    "Block",
    "SemLock",
    "Shared",
    "acquire_blocking",
    "check_acquire_timeout",
    "check_count",
    "is_alive",
    "make_semaphore",
    "open_semaphore",
    "owner_token",
    "track_memory",
]

C = TypeVar("C")

# The largest value a semaphore may hold.
SEM_VALUE_MAX: int = _multiprocessing.SemLock.SEM_VALUE_MAX
_SEMAPHORE = 1  # _multiprocessing's kind for a plain counting semaphore
# A blocked acquire wakes this often (seconds) to see whether a dead process
# holds what it waits for. A release wakes it at once; this bounds only how
# long a dead holder goes unnoticed.
ALIVE_CHECK_EVERY = 0.1

_WORD = 8


def check_acquire_timeout(blocking: bool, timeout: float) -> float | None:
    """An acquire's ``timeout`` (given), by bingfa's rule for limits (see
    ``_core/_timeouts``): ValueError if it is negative or NaN, or without blocking;
    ``inf`` means no limit."""
    if not blocking:
        raise ValueError("can't specify a timeout for a non-blocking call")
    return limit_seconds(timeout)


def check_count(name: str, count: int, least: int = 0) -> int:
    """``count`` if it is an int of at least ``least``, else TypeError or ValueError."""
    if not isinstance(count, int) or isinstance(count, bool):
        raise TypeError(f"{name} must be an int, not {type(count).__name__}")
    if count < least:
        raise ValueError(f"{name} must be at least {least}, not {count}")
    return count


def acquire_blocking(sem: SemLock, timeout: float | None) -> bool:
    """``sem.acquire(True, timeout)``, without stopping other greenlets under gevent.

    A semaphore wait blocks its OS thread. Once gevent has patched threading,
    that thread runs every greenlet of the process: blocking it would stop the
    very greenlet that is to release the semaphore (gevent#936's hang, here).
    Then the wait runs on a thread of gevent's pool, and only the calling
    greenlet waits.
    """
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None or not monkey.is_module_patched("threading"):
        return bool(sem.acquire(True, timeout))
    from gevent import get_hub  # type: ignore[import-untyped,import-not-found,unused-ignore]

    return bool(get_hub().threadpool.apply(sem.acquire, (True, timeout)))


# -- who is alive --------------------------------------------------------------

def _token_of(pid: int, start: int) -> int:
    # 31 bits of the start time above the pid: the token is a positive int64,
    # never 0 (the word's "nobody"), and a pid reused by a later process gives
    # another token.
    return ((start & 0x7FFF_FFFF) << 32) | pid


_own_token = 0


def _make_own_token() -> None:
    global _own_token
    pid = os.getpid()
    start = start_time(pid)
    _own_token = _token_of(pid, start if start is not None and start >= 0 else 0)


_make_own_token()
os.register_at_fork(after_in_child=_make_own_token)


def owner_token() -> int:
    """This process's token: its pid and start time in one positive 64-bit word."""
    return _own_token


def is_alive(token: int) -> bool:
    """Whether the process a token names still runs (a zombie does not)."""
    pid = token & 0xFFFF_FFFF
    start = start_time(pid)
    if start is None:
        return False
    return start < 0 or (start & 0x7FFF_FFFF) == token >> 32


# -- names ---------------------------------------------------------------------

# The names this process made and has still to unlink, by serial number:
# (creating pid, semaphores, block, other shared memory names). Unlinked when
# the primitive is collected (a finalizer) or at exit (_unlink_at_exit),
# whichever comes first.
_to_unlink: dict[int, tuple[int, tuple[str, ...], str | None, tuple[str, ...]]] = {}
_unlink_serial = itertools.count()


def _unlink_all(serial: int) -> None:
    names = _to_unlink.pop(serial, None)
    if names is None:
        return  # done already
    creator, semaphores, block, memory = names
    if os.getpid() != creator:  # a forked child exiting normally: not its to remove
        return
    from multiprocessing import resource_tracker

    for name in semaphores:
        try:
            _multiprocessing.sem_unlink(name)
        except OSError:
            pass
        resource_tracker.unregister(name, "semaphore")
    for name in (*memory, *([] if block is None else [block])):
        try:
            _posixshmem.shm_unlink(name)
        except OSError:
            pass
        resource_tracker.unregister(name, "shared_memory")


@atexit.register
def _unlink_at_exit() -> None:
    """At exit, unlink the names still in use here, once the pools have finished.

    A pool left open runs its queued tasks at exit, and a task's arguments
    may name a primitive its worker has still to open: that pool work comes
    first, whichever exit handler was registered first.
    """
    lifetime = sys.modules.get("bingfa._pool._lifetime")
    if lifetime is not None:
        lifetime.finish_at_exit()
    # Not through the finalizers: weakref's own exit handler, which may run
    # before this one, turns every finalizer off.
    for serial in list(_to_unlink):
        _unlink_all(serial)


def _track(name: str, kind: str) -> None:
    # multiprocessing's resource tracker unlinks the names of a creator that
    # died without running Python (SIGKILL): it outlives the creator and the
    # children forked from it, and cleans up when the last of them is gone.
    from multiprocessing import resource_tracker

    resource_tracker.register(name, kind)


def track_memory(name: str) -> None:
    """Have shared memory ``name`` unlinked should this process die without running Python."""
    _track(name, "shared_memory")


def make_semaphore(value: int,
                   maxvalue: int = SEM_VALUE_MAX) -> tuple[str, SemLock]:
    """A new named counting semaphore, tracked for unlinking: (name, semaphore)."""
    while True:
        name = new_name("s")
        try:
            sem = _multiprocessing.SemLock(_SEMAPHORE, value, maxvalue, name, False)
        except FileExistsError:
            continue
        _track(name, "semaphore")
        return name, sem


def open_semaphore(name: str, maxvalue: int = SEM_VALUE_MAX) -> SemLock:
    """The semaphore ``name`` made by another process."""
    try:
        return _multiprocessing.SemLock._rebuild(0, _SEMAPHORE, maxvalue, name)  # type: ignore[no-any-return]
    except FileNotFoundError:
        raise FileNotFoundError(_GONE.format(name=name)) from None


def _create_block(size: int) -> tuple[int, str]:
    """A new shared memory object of ``size`` bytes, tracked: (descriptor, name)."""
    while True:
        name = new_name("m")
        try:
            fd: int = _posixshmem.shm_open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        try:
            os.ftruncate(fd, size)
        except BaseException:
            os.close(fd)
            _posixshmem.shm_unlink(name)
            raise
        _track(name, "shared_memory")
        return fd, name


def _open_block(name: str) -> int:
    try:
        fd: int = _posixshmem.shm_open(name, os.O_RDWR, 0o600)
    except FileNotFoundError:
        raise FileNotFoundError(_GONE.format(name=name)) from None
    return fd


_GONE = ("bingfa: the synchronisation object {name!r} no longer exists: the process "
         "that made it has exited or dropped it. Keep the object alive in its "
         "creator while other processes may still receive it.")


class Block:
    """``words`` shared 64-bit signed integers, from a new or an existing name.

    Mapped with libc's ``mmap`` through ctypes rather than :mod:`mmap`, whose
    objects keep a duplicate of the file descriptor for as long as they live:
    a program with a thousand locks would hold a thousand descriptors. This
    holds none; the memory is unmapped when the last view of it is gone.
    """

    __slots__ = ("_array", "name", "words")

    name: str
    words: memoryview

    def __init__(self, words: int, name: str | None = None) -> None:
        words = max(words, 1)
        size = words * _WORD
        fd, self.name = _create_block(size) if name is None else (_open_block(name), name)
        try:
            address = map_shared(fd, size)
        finally:
            os.close(fd)  # the mapping keeps the memory
        self._array = (ctypes.c_int64 * words).from_address(address)
        # Unmapped when the last view goes, never at interpreter exit (finalize's
        # default): code running then may still touch it, and exit frees it anyway.
        weakref.finalize(self._array, unmap, address, size).atexit = False
        #: The words, indexable like a list of ints.
        self.words = memoryview(self._array).cast("B").cast("q")

    def as_bytes(self) -> memoryview:
        """The block as writable bytes (the view keeps the mapping alive)."""
        return memoryview(self._array).cast("B")

    def as_ctype(self, ctype: type[C]) -> C:
        """The block's first bytes as an instance of ``ctype`` (a ctypes type, or a
        subclass of one): its reads and writes go to the block."""
        # from_buffer keeps the array, and so the mapping, alive as long as the object.
        return ctype.from_buffer(self._array)  # type: ignore[attr-defined, no-any-return]


# -- one object per primitive per process ----------------------------------------

_instances: weakref.WeakValueDictionary[str, Shared] = weakref.WeakValueDictionary()
_instances_lock = threading.Lock()


class Shared:
    """Base of the cross-process primitives: a key, pickling by name, cleanup.

    A subclass makes its semaphores and block in ``__init__`` and records
    them with :meth:`_created`; another process rebuilds it by calling its
    ``_attach(*state)`` with what :meth:`_state` returned in the creator.
    """

    # No slots of its own (each subclass lists "__weakref__" and "_key"), so
    # that Value can also derive from ctypes.Structure.
    __slots__ = ()

    _key: str

    def _created(self, key: str, semaphores: tuple[str, ...], block: str | None,
                 memory: tuple[str, ...] = ()) -> None:
        """Record a primitive this process made: it will unlink the names.

        ``memory`` names more shared memory the primitive uses; like the
        block's, they are tracked (see :func:`track_memory`).
        """
        self._key = key  # type: ignore[misc]  # a slot of each subclass
        serial = next(_unlink_serial)
        _to_unlink[serial] = (os.getpid(), semaphores, block, memory)
        weakref.finalize(self, _unlink_all, serial).atexit = False  # see _unlink_at_exit
        with _instances_lock:
            _instances[key] = self

    def _state(self) -> tuple[object, ...]:
        """What another process needs to open this primitive (names and parameters)."""
        raise NotImplementedError

    @classmethod
    def _opened(cls, *state: Any) -> Shared:
        """The primitive :meth:`_state` describes, opened in this process."""
        obj: Any = cls.__new__(cls)
        obj._attach(*state)
        return obj  # type: ignore[no-any-return]

    def __reduce__(self) -> tuple[Callable[..., Shared], tuple[object, ...]]:
        return _rebuild, (type(self), self._key, self._state())


def _rebuild(cls: type[Shared], key: str, state: tuple[object, ...]) -> Shared:
    with _instances_lock:
        known = _instances.get(key)
        if known is not None:
            return known
        obj = cls._opened(*state)
        obj._key = key  # type: ignore[misc]  # a slot of each subclass
        _instances[key] = obj
        return obj
