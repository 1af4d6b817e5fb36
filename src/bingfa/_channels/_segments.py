"""The segments a process channel's big items travel in, written again and again.

A big item (bigger than a quarter of the ring) travels in a shared memory
segment. Writing it into a new segment allocates the pages as it goes, three
to four times the cost of the copy itself; a channel carries items of the
same few sizes over and over, so it keeps up to ``SLOTS`` segments, with their
pages, and writes the next big items into whichever is free. Any producer of
any process may write one, any consumer read it: their state is in the
channel's block, three words per slot:

    STATE (EMPTY, FREE or BUSY) | HOLDER (a process token, or 0) | SIZE (bytes)

A producer *claims* a free slot (under the channel's slot lock), writes the
item into it with ``HOLDER`` its own token, and publishes a record naming the
slot with ``HOLDER`` 0: from then on the slot belongs to the record. The
consumer that takes the record sets ``HOLDER`` to its token and maps the
segment; what it unpickles is built on the mapping (numpy arrays are not
copied), and when nothing built on it is alive any more, a finalizer marks the
slot ``FREE`` with one store, from whatever thread drops the last reference.

A process that dies holding a slot (a producer killed while writing, a
consumer that never let go) leaves ``HOLDER`` naming a dead process: the next
claim that finds no free slot takes such slots back. A consumer that keeps
what it took keeps its slot; when no slot is free, or the kept bytes would
pass ``BUDGET``, items go through one-off segments, which their getter
unlinks as it maps them.

Segment names are the channel's: its creator's pid, then ``c`` and the block's
key for a kept segment (then the slot), ``s`` and the key for a one-off one
(then a serial number and a random part). The creator makes every slot's name
at once, empty (no memory until a slot is written), and has multiprocessing's
resource tracker watch them as it does the channel's block: when the channel
goes they are unlinked, and if the creator is killed the tracker unlinks them.
One-off names cannot be tracked so (their maker is any producer, their taker
any consumer): when the channel goes the creator removes them by their prefix
(those unread, and those a producer killed while writing left behind), and if
the creator is killed its janitor does (see ``_core/_janitor``).
"""

from __future__ import annotations

import _posixshmem  # type: ignore[import-not-found]
import os
import weakref
from collections.abc import Sequence

from .._core._shm import SEGMENT, read_segment, unlink_named, write_parts, write_segment
from .._sync._shared import is_alive, owner_token, track_memory

__all__ = ["BUDGET", "SLOTS", "WORDS", "SegmentSlots"]

SLOTS = 16
WORDS = 3 * SLOTS  # the block words the slots take
BUDGET = 512 << 20  # bytes kept in all

EMPTY, FREE, BUSY = 0, 1, 2
_STATE, _HOLDER, _SIZE = 0, 1, 2


class SegmentSlots:
    """One process's view of a channel's segment slots (see the module's docstring)."""

    __slots__ = ("__weakref__", "_at", "_creator", "_key", "_prefix", "_words")

    def __init__(self, words: memoryview, at: int, block_name: str, creator: int) -> None:
        self._words = words
        self._at = at
        self._creator = creator
        # "/bf-<pid>-m-<n>-<hex>": the block's serial and random part make the key.
        serial, random_part = block_name.rsplit("-", 2)[1:]
        self._key = serial + random_part
        self._prefix = f"/bf-{creator}-{SEGMENT}-c{self._key}-"

    def name(self, slot: int) -> str:
        """The segment name of ``slot``."""
        return f"{self._prefix}{slot}"

    def make_names(self) -> tuple[str, ...]:
        """Create every slot's segment, empty, and have it tracked (the creator, once)."""
        names = tuple(self.name(slot) for slot in range(SLOTS))
        for name in names:
            os.close(_posixshmem.shm_open(name, os.O_RDWR | os.O_CREAT, 0o600))
            track_memory(name)
        return names

    def _word(self, slot: int, field: int) -> int:
        return self._at + 3 * slot + field

    def claim(self, size: int) -> int | None:
        """A slot to write ``size`` bytes into, now BUSY and held here; None if none can be.

        The channel's slot lock must be held. Prefers the smallest free slot
        big enough, then a free one to grow, then a new one; if none of those,
        the slots of dead holders are taken back and looked at again.
        """
        slot = self._pick(size)
        if slot is None and self._take_back_from_the_dead():
            slot = self._pick(size)
        if slot is not None:
            words = self._words
            words[self._word(slot, _HOLDER)] = owner_token()
            words[self._word(slot, _STATE)] = BUSY
            if words[self._word(slot, _SIZE)] < size:
                words[self._word(slot, _SIZE)] = size
        return slot

    def _pick(self, size: int) -> int | None:
        words = self._words
        kept = 0
        fits: tuple[int, int] | None = None  # (size, slot) of the smallest big enough
        smaller = empty = None
        for slot in range(SLOTS):
            state = words[self._word(slot, _STATE)]
            have = words[self._word(slot, _SIZE)]
            kept += have
            if state == EMPTY:
                empty = slot if empty is None else empty
            elif state == FREE:
                if have >= size:
                    if fits is None or have < fits[0]:
                        fits = have, slot
                elif smaller is None:
                    smaller = slot
        if fits is not None:
            return fits[1]
        if smaller is not None and kept + size - words[self._word(smaller, _SIZE)] <= BUDGET:
            return smaller
        if empty is not None and kept + size <= BUDGET:
            return empty
        return None

    def _take_back_from_the_dead(self) -> bool:
        words = self._words
        taken = False
        for slot in range(SLOTS):
            holder = words[self._word(slot, _HOLDER)]
            if words[self._word(slot, _STATE)] == BUSY and holder and not is_alive(holder):
                words[self._word(slot, _STATE)] = FREE
                taken = True
        return taken

    def fill(self, slot: int, parts: Sequence[bytes | memoryview]) -> None:
        """Write ``parts`` into claimed ``slot``, then give it to the record about to carry it.

        On failure the slot is freed again.
        """
        try:
            fd = _posixshmem.shm_open(self.name(slot), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                size = self._words[self._word(slot, _SIZE)]
                if os.fstat(fd).st_size < size:
                    os.ftruncate(fd, size)
                write_parts(fd, parts)
            finally:
                os.close(fd)
        except BaseException:
            self.free(slot)
            raise
        self._words[self._word(slot, _HOLDER)] = 0

    def read(self, slot: int, length: int) -> memoryview:
        """The first ``length`` bytes of ``slot``, mapped; the slot is freed when they are gone."""
        self._words[self._word(slot, _HOLDER)] = owner_token()
        try:
            mapping = read_segment(self.name(slot), given=False)
        except BaseException:
            self.free(slot)
            raise
        weakref.finalize(mapping.obj, self.free, slot)
        return mapping[:length]

    def write_one_off(self, parts: Sequence[bytes | memoryview]) -> str:
        """A new segment of the channel's holding ``parts``: its name."""
        return write_segment(parts, owner=self._creator, kind=f"{SEGMENT}-s{self._key}")

    def unlink_one_offs(self) -> None:
        """Remove the one-off segments of the channel still there (for its creator, at the end)."""
        unlink_named(f"bf-{self._creator}-{SEGMENT}-s{self._key}-")

    def free(self, slot: int) -> None:
        """Let producers write ``slot`` again (one store: safe from any thread, any time)."""
        self._words[self._word(slot, _STATE)] = FREE

