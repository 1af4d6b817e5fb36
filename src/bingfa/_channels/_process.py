"""Process mode: a channel in shared memory that any process it reaches can use.

One shared block holds the channel's state words, a table of producer slots
and the ring of records (see ``_ring``, which owns the record format and the
two words that publish and take records). The state words besides the ring's:
``CLOSED``, ``PRODUCERS_LEFT`` (-1 when ``close()`` closes at once), the
``PUTS`` and ``GETS`` totals, the ``CREATOR``'s pid; the slots hold the tokens (see
``_sync._shared.owner_token``) of processes inside ``with ch.producer():``.

The put and get locks are :class:`bingfa.Lock`\\ s, so a process killed while
holding one does not block the others: the next one takes the lock over.
A producer killed in the middle of a put has published nothing (or all of
its record); a consumer killed in the middle of a get has taken its items or
not, and loses at most what it was taking. Waiting is done on two "bells",
semaphores that a put (a get) rings when it finds them silent; a waiter
looks again after each ring, and in slices of ``ALIVE_CHECK_EVERY`` whatever
happens, so a ring that went to someone else, or a producer that died
without ringing, never leaves it waiting.
"""

from __future__ import annotations

import os
import struct
import time
import weakref
from pickle import dumps as _c_dumps
from typing import TYPE_CHECKING, Any

from .._core._errors import LockOwnerDiedError
from .._core._janitor import watch_this_process
from .._core._out_of_band import OUT_OF_BAND_MIN, frame_parts, loads_body, parts_size
from .._core._serialization import (
    PROTOCOL,
    dumps,
    loads,
    serialization_error,
    unpickling_error,
)
from .._core._shm import read_segment, unlink
from .._sync._lock import Lock
from .._sync._shared import (
    ALIVE_CHECK_EVERY,
    Block,
    Shared,
    acquire_blocking,
    is_alive,
    make_semaphore,
    open_semaphore,
    owner_token,
)
from ._channel import (
    Channel,
    ChannelStatistics,
    check_max_items,
    check_maxsize,
    check_producers,
    deadline_of,
)
from ._errors import ChannelClosedError, ChannelEmpty, ChannelFull
from ._ring import (
    BATCH,
    COUNT_MASK,
    COUNT_SHIFT,
    HEAD,
    IN_SLOT,
    INLINE,
    MAX_BATCH,
    SPILL,
    TAIL,
    Ring,
)
from ._segments import WORDS as _SEGMENT_WORDS
from ._segments import SegmentSlots

if TYPE_CHECKING:
    import pickle
    from collections.abc import Iterable

    from .._sync._shared import SemLock

__all__ = ["ProcessChannel"]

DEFAULT_MAXSIZE = 1024
# The ring holds this many bytes per item of maxsize, within these bounds.
_BYTES_PER_ITEM = 1024
_RING_MIN = 1 << 20
_RING_MAX = 1 << 26
# Items whose pickle is bigger than this part of the ring go through a segment.
_INLINE_SHARE = 4
# put_many packs up to this many items into one record.
_BATCH_ITEMS = 128
# How many looks a waiter makes before it sleeps on a bell (a few microseconds).
_SPINS = 100
# How long the nowait forms wait for the other side's lock, held for a moment.
_NOWAIT_PATIENCE = 0.01
# Seconds one of the channel's locks may stay held with no holder's token
# before it is taken over (see Lock._give_up_on_silent_holders).
_SILENT_HOLDER_LIMIT = 1.0

# The block's words: the state, the producer slots, then the ring.
CLOSED, PRODUCERS_LEFT, PUTS, GETS, CREATOR = 2, 3, 4, 5, 6  # 0, 1: the ring's TAIL, HEAD
_SLOTS_AT = 8
_SLOTS = 64
_SEGMENTS_AT = _SLOTS_AT + _SLOTS
_RING_AT = _SEGMENTS_AT + _SEGMENT_WORDS
# An IN_SLOT record's payload: the slot, the item's length in it.
_IN_SLOT = struct.Struct("<IQ")

Record = tuple[int, bytes, int]  # kind, payload, items


def _ring_size(maxsize: int) -> int:
    wanted = min(max(maxsize * _BYTES_PER_ITEM, _RING_MIN), _RING_MAX)
    return 1 << (wanted - 1).bit_length()  # a power of two: positions wrap with it


class ProcessChannel(Channel, Shared):
    """A :class:`~bingfa.Channel` in shared memory, for threads of any process (``mode="process"``).

    Pickles by name: pass it to pool tasks, ``bf.Process`` and scope spawns.
    As with bingfa's locks, the creating object must stay alive while other
    processes may still receive it; when it is dropped (or its process
    exits), unread big items are freed.
    """

    __slots__ = ("__weakref__", "_block", "_get_lock", "_held", "_inline_max", "_items_bell",
                 "_key", "_maxsize", "_put_lock", "_ring", "_room_bell", "_segments",
                 "_slot_lock", "_words")

    mode = "process"

    _items_bell: SemLock
    _room_bell: SemLock

    def __init__(self, maxsize: int | None = None, mode: str = "process", *,
                 producers: int | None = None) -> None:
        maxsize = check_maxsize(maxsize, DEFAULT_MAXSIZE)
        if maxsize == 0:
            raise ValueError("a process channel needs a bound: maxsize must be at least 1 "
                             f"(None gives {DEFAULT_MAXSIZE})")
        if maxsize > COUNT_MASK // 2:
            raise ValueError(f"maxsize must be at most {COUNT_MASK // 2}, not {maxsize}")
        left = check_producers(producers)
        capacity = _ring_size(maxsize)
        items_name, items_bell = make_semaphore(0)
        room_name, room_bell = make_semaphore(0)
        block = Block(_RING_AT + capacity // 8)
        locks = Lock(), Lock(), Lock()
        for lock in locks:
            # Held for microseconds at a time: one held a second with no
            # holder's token belongs to a process killed as it took it.
            lock._give_up_on_silent_holders(_SILENT_HOLDER_LIMIT)
        block.words[CREATOR] = os.getpid()
        self._setup(maxsize, block, items_bell, room_bell, *locks)
        self._words[PRODUCERS_LEFT] = -1 if left is None else left
        self._created(block.name, (items_name, room_name), block.name,
                      self._segments.make_names())
        # Before the names go, the segments of big items nobody took.
        weakref.finalize(self, _unlink_one_offs, os.getpid(), self._segments)
        # Should this process be killed, they go all the same.
        watch_this_process()

    def _setup(self, maxsize: int, block: Block, items_bell: SemLock, room_bell: SemLock,
               put_lock: Lock, get_lock: Lock, slot_lock: Lock) -> None:
        self._maxsize = maxsize
        self._block = block
        self._words = block.words
        self._ring = Ring(block.words, block.as_bytes()[_RING_AT * 8:])
        self._segments = SegmentSlots(block.words, _SEGMENTS_AT, block.name, block.words[CREATOR])
        self._inline_max = self._ring.capacity // _INLINE_SHARE
        self._items_bell = items_bell
        self._room_bell = room_bell
        self._put_lock = put_lock
        self._get_lock = get_lock
        self._slot_lock = slot_lock
        # Items taken from the ring behind one that failed to unpickle: they
        # come out first at the next get, in order.
        self._held: list[Any] = []

    def _state(self) -> tuple[object, ...]:
        return (self._maxsize, self._ring.capacity, self._block.name, self._items_bell.name,
                self._room_bell.name, self._put_lock, self._get_lock, self._slot_lock)

    def _attach(self, maxsize: int, capacity: int, block: str, items_bell: str, room_bell: str,
                put_lock: Lock, get_lock: Lock, slot_lock: Lock) -> None:
        self._setup(maxsize, Block(_RING_AT + capacity // 8, block), open_semaphore(items_bell),
                    open_semaphore(room_bell), put_lock, get_lock, slot_lock)

    # -- put ---------------------------------------------------------------------

    def put(self, item: Any, timeout: float | None = None) -> None:
        record = self._record(item)
        # The common case first, in as few steps as possible: a small item,
        # the put lock free, room in the ring.
        if record[0] == INLINE and not self._words[CLOSED] and self._put_lock.acquire(False):
            try:
                written = self._ring.write(INLINE, record[1], 1, self._maxsize)
                if written:
                    self._words[PUTS] += 1
            finally:
                self._put_lock.release()
            if written:
                self._ring_bell(self._items_bell)
                return
        self._put_records([record], deadline_of(timeout), False)

    def put_nowait(self, item: Any) -> None:
        self._put_records([self._record(item)], None, True)

    def put_many(self, items: Iterable[Any], timeout: float | None = None) -> None:
        deadline = deadline_of(timeout)
        chunk = max(1, min(_BATCH_ITEMS, self._maxsize, MAX_BATCH))
        batch: list[Any] = []
        for item in items:
            batch.append(item)
            if len(batch) == chunk:
                self._put_records(self._batch_records(batch), deadline, False)
                batch = []
        if batch:
            self._put_records(self._batch_records(batch), deadline, False)

    def _put_records(self, records: list[Record], deadline: float | None, nowait: bool) -> None:
        """Publish ``records`` in order; unpublished ones are freed if this raises."""
        written = 0
        try:
            if self._words[CLOSED]:
                raise ChannelClosedError("put to a closed channel")
            if nowait:
                # A producer waiting for room holds the put lock: then there is none.
                if not self._take(self._put_lock, time.monotonic() + _NOWAIT_PATIENCE):
                    raise ChannelFull("the channel is full")
            elif not self._take(self._put_lock, deadline):
                raise ChannelFull("no room in the channel within the timeout")
            try:
                for record in records:
                    self._write(record, None if nowait else deadline, nowait)
                    written += 1
            finally:
                self._put_lock.release()
        except BaseException:
            for record in records[written:]:
                self._discard(record)
            raise
        finally:
            if written:
                self._ring_bell(self._items_bell)

    def _record(self, item: Any) -> Record:
        """``item`` as a record (a big one written to a segment)."""
        try:
            # The C pickler alone, the common case: nothing out of band (a
            # big buffer stops it at once), nothing of __main__.
            data = _c_dumps(item, PROTOCOL, buffer_callback=_small_buffers_only)
        except Exception:
            pass
        else:
            if len(data) <= self._inline_max and b"__main__" not in data:
                return INLINE, data, 1
        buffers: list[pickle.PickleBuffer] = []
        try:
            data = dumps(item, main_by_value=True, out_of_band=buffers)
        except Exception as exc:
            raise serialization_error("the item put to the channel", item, exc) from exc
        if not buffers and len(data) <= self._inline_max:
            return INLINE, data, 1
        parts = frame_parts(data, buffers)
        size = parts_size(parts)
        self._take(self._slot_lock, None)
        try:
            slot = self._segments.claim(size)
        finally:
            self._slot_lock.release()
        if slot is not None:
            self._segments.fill(slot, parts)
            return IN_SLOT, _IN_SLOT.pack(slot, size), 1
        return SPILL, self._segments.write_one_off(parts).encode(), 1

    def _discard(self, record: Record) -> None:
        """Free a record that was not published (its segment, if it has one)."""
        kind, payload, _ = record
        if kind == SPILL:
            unlink(payload.decode())
        elif kind == IN_SLOT:
            self._segments.free(_IN_SLOT.unpack(payload)[0])

    def _decode(self, kind: int, payload: memoryview) -> Any:
        """A record's item (a batch's list of items), or a _Failed; never raises."""
        small = kind == INLINE or kind == BATCH  # the common case, tested first
        try:
            if small:
                return loads(payload)
            if kind == IN_SLOT:
                return loads_body(self._segments.read(*_IN_SLOT.unpack(payload)))
            return loads_body(read_segment(bytes(payload).decode()))  # SPILL
        except Exception as exc:
            what = "an item of the channel" if small else "a big item of the channel"
            return _Failed(unpickling_error(what, exc))

    def _batch_records(self, items: list[Any]) -> list[Record]:
        """``items`` as one batch record, or one record each if that cannot be."""
        if len(items) > 1:
            buffers: list[pickle.PickleBuffer] = []
            try:
                data = dumps(items, main_by_value=True, out_of_band=buffers)
            except Exception:
                data = None  # the item at fault is found below, one by one
            if data is not None and not buffers and len(data) <= self._inline_max:
                return [(BATCH, data, len(items))]
        records: list[Record] = []
        try:
            for item in items:
                records.append(self._record(item))
        except BaseException:
            for record in records:
                self._discard(record)
            raise
        return records

    def _write(self, record: Record, deadline: float | None, nowait: bool) -> None:
        """Publish a record, waiting for room unless ``nowait`` (put lock held)."""
        kind, payload, items = record
        words = self._words
        write = self._ring.write
        maxsize = self._maxsize
        while True:
            if words[CLOSED]:
                raise ChannelClosedError("put to a closed channel")
            if write(kind, payload, items, maxsize):
                words[PUTS] += items
                return
            if nowait:
                raise ChannelFull(f"the channel is full ({maxsize} items)")
            self._ring_bell(self._items_bell)  # let consumers make room
            if not self._wait_bell(self._room_bell, deadline):
                raise ChannelFull(f"the channel stayed full ({maxsize} items)")

    # -- get ---------------------------------------------------------------------

    def get(self, timeout: float | None = None) -> Any:
        # The common case first: an item there, the get lock free.
        if not self._held and self._get_lock.acquire(False):
            try:
                items = self._ring.read(1, self._decode)
                if items is not None:
                    self._words[GETS] += 1
            finally:
                self._get_lock.release()
            if items is not None:
                self._after_get()
                item = items[0]
                if type(item) is _Failed:
                    raise item.error
                return item
        return self._get(1, deadline_of(timeout), False)[0]

    def get_nowait(self) -> Any:
        return self._get(1, None, True)[0]

    def get_many(self, max_items: int, timeout: float | None = None) -> list[Any]:
        check_max_items(max_items)
        return self._get(max_items, deadline_of(timeout), False)

    def _get(self, max_items: int, deadline: float | None, nowait: bool) -> list[Any]:
        """Take between 1 and ``max_items`` items, waiting for the first unless ``nowait``."""
        read = self._ring.read
        decode = self._decode
        words = self._words
        while True:
            lock_by = time.monotonic() + _NOWAIT_PATIENCE if nowait else deadline
            if not self._take(self._get_lock, lock_by):
                raise ChannelEmpty("the channel is busy with another consumer" if nowait
                                   else "no item came within the timeout")
            taken: list[Any] = []
            read_any = False
            try:
                if self._held:
                    taken = self._from_held(max_items)
                else:
                    while len(taken) < max_items:
                        items = read(max_items - len(taken), decode)
                        if items is None:
                            break
                        read_any = True
                        taken += items
                        words[GETS] += len(items)
                    if _Failed in map(type, taken):
                        self._held += taken
                        taken = self._from_held(max_items)
            finally:
                self._get_lock.release()
                if read_any:
                    self._after_get()
            if taken:
                return taken
            if words[CLOSED]:
                self._ring_bell(self._items_bell)  # pass the end on to other consumers
                raise ChannelClosedError("the channel is closed and drained")
            if nowait:
                raise ChannelEmpty("the channel is empty")
            if not self._wait_for_items(deadline):
                raise ChannelEmpty("no item came within the timeout")

    def _from_held(self, max_items: int) -> list[Any]:
        """Items taken earlier, up to the next that failed; raises that one's error if first.

        Get lock held: the list is this process's, shared by its threads.
        """
        held = self._held
        first = held[0]
        if type(first) is _Failed:
            del held[0]
            raise first.error
        count = 1
        while count < min(max_items, len(held)) and type(held[count]) is not _Failed:
            count += 1
        items = held[:count]
        del held[:count]
        return items

    def _after_get(self) -> None:
        room = self._room_bell
        if room._is_zero():
            room.release()
        words = self._words
        if words[TAIL] >> COUNT_SHIFT != words[HEAD] >> COUNT_SHIFT:
            self._ring_bell(self._items_bell)  # more for whoever waits next

    def _wait_for_items(self, deadline: float | None) -> bool:
        """Wait until items may be there or the channel closed; False if time ran out."""
        words = self._words
        seen = words[TAIL]
        for _ in range(_SPINS):
            if words[TAIL] != seen or words[CLOSED]:
                return True
        if self._producers_died():
            return True
        return self._wait_bell(self._items_bell, deadline)

    # -- locks and bells -------------------------------------------------------------

    def _take(self, lock: Lock, deadline: float | None) -> bool:
        """Acquire ``lock`` by ``deadline``; a dead holder's lock is taken over quietly.

        A holder killed in the middle of a put has published nothing, and one
        killed in the middle of a get has taken its items or not: either way
        the ring is whole, so there is nothing to repair.
        """
        if lock.acquire(False):
            return True
        while True:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return lock.acquire(True, timeout) if timeout != 0.0 else lock.acquire(False)
            except LockOwnerDiedError:
                continue  # the lock is free again: take it

    @staticmethod
    def _ring_bell(bell: SemLock) -> None:
        if bell._is_zero():
            bell.release()

    @staticmethod
    def _wait_bell(bell: SemLock, deadline: float | None) -> bool:
        """Wait for a ring, at most one slice; False only if ``deadline`` has passed."""
        if deadline is None:
            acquire_blocking(bell, ALIVE_CHECK_EVERY)
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        acquire_blocking(bell, min(ALIVE_CHECK_EVERY, left))
        return True

    # -- closing, producers and counts -------------------------------------------------

    def close(self) -> None:
        self._take(self._slot_lock, None)
        try:
            self._count_done()
        finally:
            self._slot_lock.release()

    def _count_done(self) -> None:
        """One producer finished (slot lock held): close if it was the last, or no count."""
        words = self._words
        if words[CLOSED]:
            return
        if words[PRODUCERS_LEFT] > 0:
            words[PRODUCERS_LEFT] -= 1
            if words[PRODUCERS_LEFT] > 0:
                return
        words[CLOSED] = 1
        self._items_bell.release()  # each woken consumer passes the end on
        self._room_bell.release()

    def _producer_started(self) -> object:
        token = owner_token()
        self._take(self._slot_lock, None)
        try:
            for slot in range(_SLOTS_AT, _SLOTS_AT + _SLOTS):
                if self._words[slot] == 0:
                    self._words[slot] = token
                    return slot
        finally:
            self._slot_lock.release()
        return None  # more producers inside `with` than slots: counted, not watched

    def _producer_done(self, token: object) -> None:
        self._take(self._slot_lock, None)
        try:
            if isinstance(token, int) and self._words[token] == owner_token():
                self._words[token] = 0
            self._count_done()
        finally:
            self._slot_lock.release()

    def _producers_died(self) -> bool:
        """Count producers whose process died inside ``with ch.producer()``; whether any did."""
        words = self._words
        dead = [slot for slot in range(_SLOTS_AT, _SLOTS_AT + _SLOTS)
                if words[slot] and not is_alive(words[slot])]
        if not dead:
            return False
        self._take(self._slot_lock, None)
        try:
            for slot in dead:
                token = words[slot]
                if token and not is_alive(token):
                    words[slot] = 0
                    self._count_done()
        finally:
            self._slot_lock.release()
        return True

    @property
    def closed(self) -> bool:
        return bool(self._words[CLOSED])

    def qsize(self) -> int:
        return self._ring.pending()

    def statistics(self) -> ChannelStatistics:
        words = self._words
        left = words[PRODUCERS_LEFT]
        return ChannelStatistics(self.mode, self.qsize(), self._maxsize, words[PUTS], words[GETS],
                                 bool(words[CLOSED]), None if left < 0 else left)

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return (f"<bingfa.Channel mode='process' {state} items={self.qsize()} "
                f"maxsize={self._maxsize}>")

    # -- async ---------------------------------------------------------------------

    async def _wait_async(self, want_item: bool, deadline: float | None) -> None:
        # A semaphore cannot wake an event loop: wait for the bell in a thread
        # of the loop's executor, one slice at a time.
        import asyncio  # loaded already: this runs in an event loop

        bell = self._items_bell if want_item else self._room_bell
        await asyncio.get_running_loop().run_in_executor(None, self._wait_bell, bell, deadline)
        if want_item:
            self._producers_died()


class _BigBuffer(Exception):
    """A buffer worth sending out of band: pickle the item the long way."""


def _small_buffers_only(buffer: pickle.PickleBuffer) -> bool:
    if buffer.raw().nbytes >= OUT_OF_BAND_MIN:
        raise _BigBuffer
    return True  # into the pickle


class _Failed:
    """What could not be unpickled: its error, raised to whoever took it."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


def _unlink_one_offs(creator: int, segments: SegmentSlots) -> None:
    """Unlink the channel's one-off segments still there (in the creating process only)."""
    if os.getpid() == creator:  # not a forked child: the channel is not its to empty
        segments.unlink_one_offs()
