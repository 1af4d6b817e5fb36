"""Big buffers beside the pickle, not inside it: one copy fewer at each end.

A plain pickle copies a numpy array's 8 MiB into the pickle's bytes, and
unpickling copies them out again. With pickle protocol 5, objects that support
it (numpy arrays, ``pickle.PickleBuffer``) hand their memory over as buffers
instead: the sender writes that memory to the pipe as it is, and the receiver
builds the objects straight on the bytes it read. Buffers under
``OUT_OF_BAND_MIN`` stay in the pickle: a batch of ten thousand small arrays
is one pickle, and none of them keeps another's memory alive.

A body starts with pickle's PROTO opcode (``0x80``) when nothing travelled out
of band; otherwise with ``OUT_OF_BAND`` and a table of lengths:

    b"B" | count (u32) | pickle length (u64) | each buffer's length (u64) ...
    | pickle | buffer | buffer ...
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Callable
from typing import Any

__all__ = ["OUT_OF_BAND_MIN", "collector", "frame_parts", "loads_body", "parts_size"]

OUT_OF_BAND_MIN = 1 << 16  # smaller buffers are copied into the pickle
OUT_OF_BAND = ord("B")
_COUNT = struct.Struct("<BI")
_LENGTH = struct.Struct("<Q")

Part = bytes | memoryview


def collector(buffers: list[pickle.PickleBuffer]) -> Callable[[pickle.PickleBuffer], bool]:
    """A pickler's ``buffer_callback`` that sends big buffers out of band, into ``buffers``."""

    def keep_in_band(buffer: pickle.PickleBuffer) -> bool:
        if buffer.raw().nbytes < OUT_OF_BAND_MIN:
            return True  # copied into the pickle
        buffers.append(buffer)
        return False

    return keep_in_band


def frame_parts(data: bytes, buffers: list[pickle.PickleBuffer]) -> list[Part]:
    """A pickle and its out-of-band buffers as parts to write one after the other."""
    if not buffers:
        return [data]
    views = [buffer.raw() for buffer in buffers]
    table = [_COUNT.pack(OUT_OF_BAND, len(views)), _LENGTH.pack(len(data)),
             *(_LENGTH.pack(view.nbytes) for view in views)]
    return [b"".join(table), data, *views]


def parts_size(parts: list[Part]) -> int:
    """The bytes ``parts`` add up to."""
    return sum(map(len, parts))  # a part's memoryview has format B: its len is its bytes


def loads_body(body: memoryview) -> Any:
    """What :func:`dumps_parts` pickled, from its parts written back to back.

    Objects that travelled out of band are built on ``body``'s memory when it is
    writable (arrays the receiver may change), else on a copy of theirs.
    """
    if not body.nbytes or body[0] != OUT_OF_BAND:
        return pickle.loads(body)
    _, count = _COUNT.unpack_from(body)
    pos = _COUNT.size
    lengths = [_LENGTH.unpack_from(body, pos + i * _LENGTH.size)[0] for i in range(count + 1)]
    pos += (count + 1) * _LENGTH.size
    data = body[pos:pos + lengths[0]]
    pos += lengths[0]
    buffers: list[Any] = []
    for size in lengths[1:]:
        view = body[pos:pos + size]
        buffers.append(bytearray(view) if body.readonly else view)
        pos += size
    if pos != body.nbytes:
        raise ValueError(f"a body of {body.nbytes} bytes whose table says {pos}")
    return pickle.loads(data, buffers=buffers)
