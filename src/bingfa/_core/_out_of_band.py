"""Big buffers beside the pickle, not inside it: one copy fewer at each end, or none.

A plain pickle copies a numpy array's 8 MiB into the pickle's bytes, and
unpickling copies them out again. With pickle protocol 5, objects that support
it (numpy arrays, ``pickle.PickleBuffer``) hand their memory over as buffers
instead. Buffers under ``OUT_OF_BAND_MIN`` stay in the pickle: a batch of ten
thousand small arrays is one pickle, and none of them keeps another's memory
alive. The others go one of two ways:

- beside the pickle in the same stream (the sender writes the memory to the
  pipe as it is; the receiver builds the objects on the bytes it read);
- with ``shared=True``, those of ``SHARED_MIN`` bytes or more through a shared
  memory segment each (see ``_shm``): the sender writes the memory once, and
  the receiver maps it and builds the objects on the mapping, copying nothing.
  Below that size a segment's set-up costs more than the pipe's copies.

A body starts with pickle's PROTO opcode (``0x80``) when nothing travelled out
of band; otherwise with ``OUT_OF_BAND`` and a table:

    b"B" | count (u32) | pickle length (u64) | each buffer's length (u64) ...
    | each segment's name (u16 length, bytes) ... | pickle | buffer | buffer ...

A length with its top bit set is a buffer in a segment (named after the
lengths, in order); the others follow the pickle, in order. With the next bit
set too, the segment is lent (see ``_segment_cache``): the receiver keeps its
name, and reports when it has let go of it.
"""

from __future__ import annotations

import pickle
import struct
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._segment_cache import SegmentCache

__all__ = ["OUT_OF_BAND_MIN", "SHARED_MIN", "collector", "frame_parts", "let_go",
           "loads_body", "parts_size", "segment_names", "shared_bytes"]

OUT_OF_BAND_MIN = 1 << 16  # smaller buffers are copied into the pickle
# Buffers this big go through shared memory where the caller allows it: from
# 256 KiB on, a segment beats the pipe's two copies by a fifth or more; at 128
# KiB it loses by half (benchmarks/shared_threshold.py, docs/benchmarks.md).
SHARED_MIN = 1 << 18
OUT_OF_BAND = ord("B")
_COUNT = struct.Struct("<BI")
_LENGTH = struct.Struct("<Q")
_NAME = struct.Struct("<H")
_IN_SEGMENT = 1 << 63
_LENT = 1 << 62
_FLAGS = _IN_SEGMENT | _LENT

Part = bytes | memoryview


def collector(buffers: list[pickle.PickleBuffer]) -> Callable[[pickle.PickleBuffer], bool]:
    """A pickler's ``buffer_callback`` that sends big buffers out of band, into ``buffers``."""

    def keep_in_band(buffer: pickle.PickleBuffer) -> bool:
        if buffer.raw().nbytes < OUT_OF_BAND_MIN:
            return True  # copied into the pickle
        buffers.append(buffer)
        return False

    return keep_in_band


def frame_parts(data: bytes, buffers: list[pickle.PickleBuffer], shared: bool = False,
                cache: SegmentCache | None = None) -> list[Part]:
    """A pickle and its out-of-band buffers as parts to write one after the other.

    With ``shared``, buffers of ``SHARED_MIN`` bytes or more are written to
    segments instead (lent from ``cache`` where it has room), which the
    receiver's :func:`loads_body` maps; :func:`segment_names` lists them, for
    a sender whose receiver may never read the parts.
    """
    if not buffers:
        return [data]
    views = [buffer.raw() for buffer in buffers]
    lengths: list[int] = []
    names: list[bytes] = []
    inline: list[memoryview] = []
    try:
        for view in views:
            if shared and view.nbytes >= SHARED_MIN:
                if cache is not None:
                    name, lent = cache.write(view)
                else:
                    from ._shm import write_segment

                    name, lent = write_segment([view]), False
                names.append(name.encode())
                lengths.append(view.nbytes | _IN_SEGMENT | (_LENT if lent else 0))
            else:
                lengths.append(view.nbytes)
                inline.append(view)
    except BaseException:
        for written in names:
            if cache is not None:
                cache.abandon(written.decode())
            else:
                _unlink_all([written])
        raise
    table = [_COUNT.pack(OUT_OF_BAND, len(views)), _LENGTH.pack(len(data)),
             *(_LENGTH.pack(length) for length in lengths),
             *(_NAME.pack(len(name)) + name for name in names)]
    return [b"".join(table), data, *inline]


def parts_size(parts: list[Part]) -> int:
    """The bytes ``parts`` add up to."""
    return sum(map(len, parts))  # a part's memoryview has format B: its len is its bytes


def _read_table(body: bytes | memoryview) -> tuple[int, list[int], list[str]]:
    """A body's table: where the pickle starts, every buffer's length (flag and all), the names."""
    _, count = _COUNT.unpack_from(body)
    pos = _COUNT.size
    lengths = [_LENGTH.unpack_from(body, pos + i * _LENGTH.size)[0] for i in range(count + 1)]
    pos += (count + 1) * _LENGTH.size
    names = []
    for length in lengths[1:]:
        if length & _IN_SEGMENT:
            (size,) = _NAME.unpack_from(body, pos)
            pos += _NAME.size
            names.append(bytes(body[pos:pos + size]).decode())
            pos += size
    return pos, lengths, names


def segment_names(parts: list[Part]) -> list[str]:
    """The segments :func:`frame_parts` wrote for these parts (none if it wrote none)."""
    first = parts[0]
    if not first or first[0] != OUT_OF_BAND:
        return []
    return _read_table(first)[2]


def shared_bytes(first: Part) -> int:
    """How many bytes a body (or its first part) carries in segments, besides itself."""
    if not first or first[0] != OUT_OF_BAND:
        return 0
    lengths = _read_table(first)[1][1:]
    return sum(length & ~_FLAGS for length in lengths if length & _IN_SEGMENT)


def loads_body(body: memoryview, lent: list[tuple[str, weakref.ref[Any]]] | None = None) -> Any:
    """What :func:`frame_parts` framed, from its parts written back to back.

    Objects that travelled out of band are built on ``body``'s memory when it is
    writable (arrays the receiver may change), else on a copy of theirs; those
    that came through segments, on the segments' mappings. Every given
    segment's name is unlinked, whatever happens; each lent one goes into
    ``lent`` with a weak reference to its mapping, dead once nothing built on
    it is alive (see :func:`let_go`).
    """
    if not body.nbytes or body[0] != OUT_OF_BAND:
        return pickle.loads(body)
    pos, lengths, names = _read_table(body)
    data = body[pos:pos + lengths[0]]
    pos += lengths[0]
    buffers: list[Any] = []
    # (name, flagged length) of each segment, in order; those not reached
    # when something fails are unlinked if given (lent ones are the sender's).
    segments = list(zip(names, [n for n in lengths[1:] if n & _IN_SEGMENT], strict=True))
    reached = 0
    try:
        for length in lengths[1:]:
            if length & _IN_SEGMENT:
                from ._shm import read_segment

                name = segments[reached][0]
                reached += 1
                segment = read_segment(name, given=not length & _LENT)
                if length & _LENT and lent is not None:
                    lent.append((name, weakref.ref(segment.obj)))
                size = length & ~_FLAGS
                if segment.nbytes < size:
                    raise ValueError(f"a segment of {segment.nbytes} bytes whose table says "
                                     f"{size}")
                buffers.append(segment[:size])
            else:
                view = body[pos:pos + length]
                buffers.append(bytearray(view) if body.readonly else view)
                pos += length
    finally:
        _unlink_all([name.encode() for name, length in segments[reached:]
                     if not length & _LENT])
    if pos != body.nbytes:
        raise ValueError(f"a body of {body.nbytes} bytes whose table says {pos}")
    return pickle.loads(data, buffers=buffers)


def let_go(lent: list[tuple[str, weakref.ref[Any]]]) -> tuple[list[str], list[str]]:
    """Lent segments, split: (those nothing here uses any more, those still in use)."""
    free = [name for name, mapping in lent if mapping() is None]
    kept = [name for name, mapping in lent if mapping() is not None]
    return free, kept


def _unlink_all(names: list[bytes]) -> None:
    if names:
        from ._shm import unlink

        for name in names:
            unlink(name.decode())
