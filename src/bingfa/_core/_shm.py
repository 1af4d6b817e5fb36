"""Shared memory segments: names, mappings, and big buffers that travel through them.

Names. Every name bingfa puts in ``/dev/shm`` is ``/bf-<pid>-<kind>-<n>-<hex>``:
the pid of the process that made it (so that whoever cleans up after a dead
process can find what it left: :func:`unlink_left_by`), a letter for what it
is, a serial number and a random part (a name is all it takes to open it).

Mappings go through libc's ``mmap`` by ctypes rather than :mod:`mmap`, whose
objects keep a duplicate of the file descriptor for as long as they live; the
memory is unmapped when the last view of it is gone.

Segments. A big buffer (a numpy array's memory) is written once into a
segment of its own; the receiver maps it, unlinks the name at once (from then
on the memory lives exactly as long as what is built on it), and gets a
writable view, which numpy arrays are built on without a copy. Writing uses
``pwritev``, which fills new tmpfs pages faster than a memcpy into a new
mapping (one page fault per page).
"""

from __future__ import annotations

import _posixshmem  # type: ignore[import-not-found]
import ctypes
import itertools
import mmap
import os
import weakref
from collections.abc import Iterable

__all__ = ["create_segment", "map_shared", "new_name", "read_segment", "unlink",
           "unlink_left_by", "unlink_named", "unmap", "write_parts", "write_segment"]

SEGMENT = "o"  # the kind letter of a big buffer's segment

_serial = itertools.count()


def new_name(kind: str, owner: int | None = None) -> str:
    """A fresh shared memory name (see the module's docstring).

    It carries ``owner``'s pid (this process's by default): the process whose
    death makes the segment an orphan, for :func:`unlink_left_by`.
    """
    pid = os.getpid() if owner is None else owner
    # (os.urandom, as secrets.token_hex does, without importing secrets: it
    # pulls in hmac, hashlib and random, some 5 ms of a pool's cold start.)
    return f"/bf-{pid}-{kind}-{next(_serial)}-{os.urandom(4).hex()}"


_LIBC: ctypes.CDLL | None = None


def _libc() -> ctypes.CDLL:
    global _LIBC
    if _LIBC is None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                              ctypes.c_int, ctypes.c_long]
        libc.munmap.restype = ctypes.c_int
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        _LIBC = libc
    return _LIBC


def map_shared(fd: int, size: int) -> int:
    """Map ``size`` bytes of ``fd`` shared, read and write; the address."""
    address = _libc().mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, fd, 0)
    if address is None or address == ctypes.c_void_p(-1).value:
        errno = ctypes.get_errno()
        raise OSError(errno, f"mmap of shared memory failed: {os.strerror(errno)}")
    return int(address)


def unmap(address: int, size: int) -> None:
    """Undo :func:`map_shared`."""
    _libc().munmap(address, size)


def mapped_bytes(fd: int, size: int) -> memoryview:
    """``size`` bytes of ``fd``, mapped: a writable view that unmaps when the last view goes."""
    address = map_shared(fd, size)
    memory = (ctypes.c_char * size).from_address(address)
    # Never at interpreter exit (finalize's default): code running then may
    # still touch it, and exit frees it anyway.
    weakref.finalize(memory, unmap, address, size).atexit = False
    return memoryview(memory).cast("B")


def create_segment(size: int, owner: int | None = None,
                   kind: str = SEGMENT) -> tuple[str, int]:
    """A new segment of ``size`` bytes: its name (see :func:`new_name`) and an open descriptor."""
    while True:
        name = new_name(kind, owner)
        try:
            fd = _posixshmem.shm_open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        break
    try:
        os.ftruncate(fd, size)
    except BaseException:
        os.close(fd)
        unlink(name)
        raise
    return name, fd


def write_segment(parts: Iterable[bytes | memoryview], owner: int | None = None,
                  kind: str = SEGMENT) -> str:
    """A new segment holding ``parts`` back to back; its name (see :func:`new_name`)."""
    views = [memoryview(part).cast("B") for part in parts]
    name, fd = create_segment(sum(view.nbytes for view in views), owner, kind)
    try:
        write_parts(fd, views)
    except BaseException:
        unlink(name)
        raise
    finally:
        os.close(fd)
    return name


def write_parts(fd: int, parts: Iterable[bytes | memoryview]) -> None:
    """Write ``parts`` back to back from the start of segment ``fd`` (which must be big enough)."""
    views = [memoryview(part).cast("B") for part in parts]
    written = 0
    while views:
        done = os.pwritev(fd, views, written)
        written += done
        views = _after(views, done)


def _after(views: list[memoryview], done: int) -> list[memoryview]:
    """What of ``views`` is left to write once ``done`` bytes are written."""
    while views and done >= views[0].nbytes:
        done -= views[0].nbytes
        views = views[1:]
    if views and done:
        views = [views[0][done:], *views[1:]]
    return views


def read_segment(name: str, given: bool = True) -> memoryview:
    """Segment ``name``, mapped (a writable view); its name is unlinked if ``given``.

    A segment that is only lent (see ``_segment_cache``) keeps its name: its
    sender writes it again once the view, and all built on it, are gone.
    """
    fd = _posixshmem.shm_open(name, os.O_RDWR, 0o600)
    try:
        if given:
            unlink(name)
        size = os.fstat(fd).st_size
        if size == 0:
            return memoryview(b"")
        return mapped_bytes(fd, size)
    finally:
        os.close(fd)


def unlink(name: str) -> None:
    """Remove a shared memory name; nothing if it is gone already."""
    try:
        _posixshmem.shm_unlink(name)
    except FileNotFoundError:
        pass


def unlink_left_by(pid: int, kind: str = SEGMENT) -> None:
    """Remove the segments of ``kind`` that process ``pid`` made and nobody took.

    For whoever outlives a process that died with big buffers in flight: a
    pool after its worker, a worker after its pool's process.
    """
    unlink_named(f"bf-{pid}-{kind}-")


def unlink_named(prefix: str) -> None:
    """Remove every name in ``/dev/shm`` that starts with ``prefix`` (no leading slash)."""
    try:
        names = os.listdir("/dev/shm")
    except OSError:
        return
    for entry in names:
        if entry.startswith(prefix):
            unlink("/" + entry)
