"""Segments a sender writes big buffers into again and again.

Writing a buffer into a new segment allocates its pages as it goes, and here
that costs three to four times the copy itself (a fresh 8 MiB segment takes
about 3 ms, an 8 MiB copy into pages that exist under 1 ms). A process pool
sends arrays of the same few sizes over and over, so its process keeps the
segments it wrote, with their pages, and writes the next buffers into them.

A kept segment is lent, never given: the receiver maps it without unlinking
the name, and says when it has let go of it (when nothing built on the
mapping is alive any more). Only then is it written again. A receiver that
keeps something built on it (a task that stores its argument), or one that
never answers (it died), makes the segment *abandoned*: its name is unlinked
and it is never written again, so nobody's memory changes under them.

What is kept is bounded (``BUDGET`` bytes, ``MOST`` segments, one descriptor
each); past that, buffers go through one-off segments that the receiver
unlinks, as without a cache.
"""

from __future__ import annotations

import os

from ._shm import create_segment, unlink, write_parts, write_segment

__all__ = ["SegmentCache"]

BUDGET = 512 << 20
MOST = 64


class _Segment:
    __slots__ = ("fd", "name", "size")

    def __init__(self, name: str, fd: int, size: int) -> None:
        self.name = name
        self.fd = fd
        self.size = size


class SegmentCache:
    """Segments this process lends to receivers, reused once they give them back.

    Not thread-safe: its owner (a pool's engine) calls it under its own lock.
    """

    def __init__(self) -> None:
        self._free: list[_Segment] = []
        self._lent: dict[str, _Segment] = {}
        self._kept_bytes = 0
        self.created = 0  # segments made for keeping (for tests and figures)

    def write(self, view: memoryview) -> tuple[str, bool]:
        """Write ``view`` to a segment: (its name, whether it is lent rather than given)."""
        size = view.nbytes
        segment = self._reusable(size)
        if segment is None:
            if len(self._lent) + len(self._free) >= MOST or self._kept_bytes + size > BUDGET:
                return write_segment([view]), False
            segment = self._make(size)
        try:
            write_parts(segment.fd, [view])
        except BaseException:
            self._drop(segment)
            raise
        self._lent[segment.name] = segment
        return segment.name, True

    def _reusable(self, size: int) -> _Segment | None:
        """A free segment for ``size`` bytes, not more than twice as big."""
        for i, segment in enumerate(self._free):
            if size <= segment.size <= 2 * size:
                return self._free.pop(i)
        return None

    def _make(self, size: int) -> _Segment:
        name, fd = create_segment(size)
        self.created += 1
        self._kept_bytes += size
        return _Segment(name, fd, size)

    def given_back(self, name: str) -> None:
        """The receiver has let go of segment ``name``: it may be written again."""
        segment = self._lent.pop(name, None)
        if segment is not None:
            self._free.append(segment)

    def abandon(self, name: str) -> None:
        """Segment ``name`` is not coming back (kept by the receiver, or lost): unlink it."""
        segment = self._lent.pop(name, None)
        if segment is None:
            unlink(name)  # a one-off segment, or one the receiver never opened
        else:
            self._drop(segment)

    def close(self) -> None:
        """Unlink every segment kept; lent ones stay mapped where they are."""
        for segment in [*self._free, *self._lent.values()]:
            self._drop(segment)
        self._free.clear()
        self._lent.clear()

    def _drop(self, segment: _Segment) -> None:
        os.close(segment.fd)
        unlink(segment.name)
        self._kept_bytes -= segment.size

