"""The ring of a process channel: records in shared bytes, published by one word each way.

Two 64-bit words say what the ring holds. ``TAIL`` is written by producers
(under the put lock), ``HEAD`` by consumers (under the get lock), each as one
aligned store, so a record is published, and items are taken, all at once or
not at all. Each word packs three counters:

    count (19 bits, items, modulo) | offset (12 bits) | position (32 bits, bytes, modulo)

``count`` is how many items were ever published (``TAIL``) or taken
(``HEAD``): their difference is what the channel holds, which ``maxsize``
bounds. ``position`` is where the next record goes (``TAIL``) or the first
unread one starts (``HEAD``); the ring's size is a power of two that divides
2**32, so positions wrap with it. ``offset`` (``HEAD`` only) is how many items
of the first record, a batch, consumers have taken already.

A record is a 16-byte header (payload length, kind, items) and the payload,
padded to 16 bytes. Kinds: ``INLINE``, one item's pickle; ``BATCH``, the pickle
of a list of items (``put_many``), which consumers may take part of;
``SPILL``, the name of a segment holding one big item (see ``_core._shm``);
``IN_SLOT``, where in the channel's kept segments one big item is (see
``_segments``);
``WRAP``, the ring's end is unused, go on at 0.
"""

from __future__ import annotations

import struct
from typing import Any

__all__ = ["BATCH", "COUNT_MASK", "COUNT_SHIFT", "HEAD", "INLINE", "IN_SLOT", "MAX_BATCH", "SPILL",
           "TAIL", "Ring"]

TAIL, HEAD = 0, 1
INLINE, BATCH, SPILL, WRAP, IN_SLOT = 0, 1, 2, 3, 4

_POS_BITS = 32
_OFFSET_BITS = 12
COUNT_SHIFT = _POS_BITS + _OFFSET_BITS
_POS_MASK = (1 << _POS_BITS) - 1
_OFFSET_MASK = (1 << _OFFSET_BITS) - 1
COUNT_MASK = (1 << 19) - 1  # 63 bits in all: the word stays a positive int64
MAX_BATCH = _OFFSET_MASK
_HEADER = struct.Struct("<IIII")


def _span(length: int) -> int:
    """The bytes a record with a ``length``-byte payload takes, header included.

    A multiple of 16, so that the space left at the ring's end, when a record
    does not fit there, always holds a WRAP header.
    """
    return (_HEADER.size + length + 15) & ~15


class Ring:
    """One process's view of a channel's ring: its words and its bytes."""

    __slots__ = ("capacity", "data", "words")

    def __init__(self, words: memoryview, data: memoryview) -> None:
        self.words = words
        self.data = data
        self.capacity = len(data)  # a power of two

    def pending(self) -> int:
        """Items published and not yet taken."""
        words = self.words
        return ((words[TAIL] >> COUNT_SHIFT) - (words[HEAD] >> COUNT_SHIFT)) & COUNT_MASK

    def fits(self, length: int) -> bool:
        """Whether a record of ``length`` bytes can ever fit (in an empty ring)."""
        return _span(length) <= self.capacity // 2

    def write(self, kind: int, payload: bytes, items: int, maxsize: int) -> bool:
        """Publish one record if there is room for it now (put lock held)."""
        words = self.words
        tail = words[TAIL]
        head = words[HEAD]
        count = tail >> COUNT_SHIFT
        if ((count - (head >> COUNT_SHIFT)) & COUNT_MASK) + items > maxsize:
            return False
        position = tail & _POS_MASK
        length = len(payload)
        size = (_HEADER.size + length + 15) & ~15  # _span, inlined: this is the hot path
        capacity = self.capacity
        index = position & (capacity - 1)
        waste = capacity - index if index + size > capacity else 0
        if ((position - (head & _POS_MASK)) & _POS_MASK) + waste + size > capacity:
            return False
        data = self.data
        if waste:
            _HEADER.pack_into(data, index, 0, WRAP, 0, 0)
            index = 0
        _HEADER.pack_into(data, index, length, kind, items, 0)
        start = index + _HEADER.size
        data[start:start + length] = payload
        words[TAIL] = ((((count + items) & COUNT_MASK) << COUNT_SHIFT)
                       | ((position + waste + size) & _POS_MASK))
        return True

    def read(self, max_items: int, decode: Any) -> list[Any] | None:
        """Take up to ``max_items`` items of the first record (get lock held); None if empty.

        ``decode(kind, payload)`` turns a record's payload into its item (or
        for a batch, its list of items); it must not raise. The items are
        taken (``HEAD`` moved) whatever it returns.
        """
        words = self.words
        head = words[HEAD]
        count = head >> COUNT_SHIFT
        if count == words[TAIL] >> COUNT_SHIFT:
            return None
        data = self.data
        capacity = self.capacity
        position = head & _POS_MASK
        index = position % capacity
        length, kind, items, _ = _HEADER.unpack_from(data, index)
        if kind == WRAP:
            position += capacity - index
            index = 0
            length, kind, items, _ = _HEADER.unpack_from(data, 0)
        start = index + _HEADER.size
        value = decode(kind, data[start:start + length])
        offset = (head >> _POS_BITS) & _OFFSET_MASK
        if kind == BATCH and type(value) is list:
            taken = value[offset:offset + max_items]
            done = offset + len(taken)
            took = len(taken)
        else:
            # One item; or a batch that failed to load, whose error stands for
            # what is left of it.
            taken = [value]
            done = items
            took = items - offset
        count = (count + took) & COUNT_MASK
        if done >= items:
            words[HEAD] = (count << COUNT_SHIFT) | ((position + _span(length)) & _POS_MASK)
        else:
            words[HEAD] = (count << COUNT_SHIFT) | (done << _POS_BITS) | (head & _POS_MASK)
        return taken
