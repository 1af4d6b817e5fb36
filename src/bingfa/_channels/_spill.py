"""Big items of a process channel: one shared memory segment each, beside the ring.

An item whose pickle is large, or that hands big buffers over out of band
(numpy arrays, ``pickle.PickleBuffer``), does not go through the ring: it is
written once into a segment of its own, and the ring carries the segment's
name. The consumer maps the segment, unlinks its name at once (from then on
the memory lives exactly as long as the objects built on it), and builds the
item on the mapped memory: a numpy array comes out as a view of the segment,
not a copy.

Who removes a name: the consumer, as soon as it has the segment open; the
producer, if the put fails before the record is published; the channel's
creator, for records still unread when it drops the channel or exits.
"""

from __future__ import annotations

import _posixshmem  # type: ignore[import-not-found]
import ctypes
import os
import weakref

from .._core._out_of_band import Part, loads_body
from .._sync._shared import _libc, _map_shared, _new_name

__all__ = ["read", "unlink", "write"]


def write(parts: list[Part]) -> str:
    """A new segment holding ``parts`` back to back; its name."""
    size = sum(map(len, parts))
    while True:
        name = _new_name("c")
        try:
            fd = _posixshmem.shm_open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        break
    try:
        os.ftruncate(fd, size)
        written = 0
        pending = [memoryview(part).cast("B") for part in parts]
        while pending:
            done = os.pwritev(fd, pending, written)
            written += done
            pending = _after(pending, done)
    except BaseException:
        unlink(name)
        raise
    finally:
        os.close(fd)
    return name


def _after(views: list[memoryview], done: int) -> list[memoryview]:
    """What of ``views`` is left to write once ``done`` bytes are written."""
    while views and done >= views[0].nbytes:
        done -= views[0].nbytes
        views = views[1:]
    if views and done:
        views = [views[0][done:], *views[1:]]
    return views


def read(name: str) -> object:
    """The item in segment ``name``, built on its memory; the name is unlinked."""
    fd = _posixshmem.shm_open(name, os.O_RDWR, 0o600)
    try:
        unlink(name)
        size = os.fstat(fd).st_size
        if size == 0:
            raise ValueError(f"the channel's segment {name!r} is empty")
        address = _map_shared(fd, size)
    finally:
        os.close(fd)
    memory = (ctypes.c_char * size).from_address(address)
    weakref.finalize(memory, _libc().munmap, address, size).atexit = False
    return loads_body(memoryview(memory).cast("B"))


def unlink(name: str) -> None:
    """Remove a segment's name; nothing if it is gone already."""
    try:
        _posixshmem.shm_unlink(name)
    except FileNotFoundError:
        pass
