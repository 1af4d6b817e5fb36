"""Process mode: a channel in shared memory that any process it reaches can use.

The items live in a ring of bytes in shared memory, after the state's 64-bit
words in the same block:

- ``TAIL`` and ``HEAD``: how many records were ever published and taken (24
  bits, modulo) above their byte positions (40 bits, modulo; the ring's size
  is a power of two that divides 2**40). Producers write ``TAIL`` only under
  the put lock, consumers ``HEAD`` only under the get lock, each as one
  aligned 8-byte store: a record is published, or taken, all at once. A
  producer killed in the middle of writing a record has not published it;
  one killed after has.
- ``CLOSED``, ``PRODUCERS_LEFT`` (-1 when ``close()`` closes at once),
  the ``PUTS`` and ``GETS`` totals, and a table of producer slots: the tokens
  (see ``_sync._shared.owner_token``) of processes inside
  ``with ch.producer():``.

A record is an 8-byte header (payload length, kind) and the payload, padded
to 8 bytes: ``INLINE`` (a pickle), ``SPILL`` (the name of a segment holding a
big item, see ``_spill``) or ``WRAP`` (the ring's end is unused; go on at 0).

The put and get locks are :class:`bingfa.Lock`\\ s, so a process killed while
holding one does not block the others: the next one takes the lock over
(a consumer killed after taking a record loses that record, nothing more).
Waiting is done on two "bells", semaphores that a put (a get) rings when it
finds them silent; a waiter looks again after each ring, and in slices of
``ALIVE_CHECK_EVERY`` whatever happens, so a ring that went to someone else
or a producer that died without ringing never leaves it waiting.
"""

from __future__ import annotations

import os
import struct
import time
import weakref
from typing import TYPE_CHECKING, Any

from .._core._errors import LockOwnerDiedError
from .._core._out_of_band import frame_parts
from .._core._serialization import dumps, serialization_error, unpickling_error
from .._sync._lock import Lock
from .._sync._shared import (
    ALIVE_CHECK_EVERY,
    Block,
    Shared,
    is_alive,
    make_semaphore,
    open_semaphore,
    owner_token,
)
from . import _spill
from ._channel import Channel, ChannelStatistics, check_maxsize, check_producers, deadline_of
from ._errors import ChannelClosedError, ChannelEmpty, ChannelFull

if TYPE_CHECKING:
    import pickle

    from .._sync._shared import SemLock

__all__ = ["ProcessChannel"]

DEFAULT_MAXSIZE = 1024
# The ring holds this many bytes per item of maxsize, within these bounds.
_BYTES_PER_ITEM = 1024
_RING_MIN = 1 << 20
_RING_MAX = 1 << 26
# Items whose pickle is bigger than this part of the ring go through a segment.
_INLINE_SHARE = 4
# How many looks a waiter makes before it sleeps on a bell (a few microseconds).
_SPINS = 100

_POS_BITS = 40
_POS_MASK = (1 << _POS_BITS) - 1
_COUNT_MASK = (1 << 24) - 1
_HEADER = struct.Struct("<II")
INLINE, SPILL, WRAP = 0, 1, 2

# The words of the block: the state, the producer slots, then the ring.
TAIL, HEAD, CLOSED, PRODUCERS_LEFT, PUTS, GETS = range(6)
_SLOTS_AT = 8
_SLOTS = 64
_RING_AT = _SLOTS_AT + _SLOTS


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

    __slots__ = ("__weakref__", "_block", "_capacity", "_get_lock", "_inline_max",
                 "_items_bell", "_key", "_maxsize", "_put_lock", "_ring", "_room_bell",
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
        if maxsize > _COUNT_MASK // 2:
            raise ValueError(f"maxsize must be at most {_COUNT_MASK // 2}, not {maxsize}")
        left = check_producers(producers)
        capacity = _ring_size(maxsize)
        items_name, items_bell = make_semaphore(0)
        room_name, room_bell = make_semaphore(0)
        block = Block(_RING_AT + capacity // 8)
        self._setup(maxsize, capacity, block, items_bell, room_bell, Lock(), Lock(), Lock())
        self._words[PRODUCERS_LEFT] = -1 if left is None else left
        self._created(block.name, (items_name, room_name), block.name)
        # Before the names go, the segments of big items nobody took.
        weakref.finalize(self, _free_unread, os.getpid(), self._words, self._ring,
                         capacity)

    def _setup(self, maxsize: int, capacity: int, block: Block, items_bell: SemLock,
               room_bell: SemLock, put_lock: Lock, get_lock: Lock, slot_lock: Lock) -> None:
        self._maxsize = maxsize
        self._capacity = capacity
        self._inline_max = capacity // _INLINE_SHARE
        self._block = block
        self._words = block.words
        self._ring = block.as_bytes()[_RING_AT * 8:]
        self._items_bell = items_bell
        self._room_bell = room_bell
        self._put_lock = put_lock
        self._get_lock = get_lock
        self._slot_lock = slot_lock

    def _state(self) -> tuple[object, ...]:
        return (self._maxsize, self._capacity, self._block.name, self._items_bell.name,
                self._room_bell.name, self._put_lock, self._get_lock, self._slot_lock)

    def _attach(self, maxsize: int, capacity: int, block: str, items_bell: str, room_bell: str,
                put_lock: Lock, get_lock: Lock, slot_lock: Lock) -> None:
        self._setup(maxsize, capacity, Block(_RING_AT + capacity // 8, block),
                    open_semaphore(items_bell), open_semaphore(room_bell), put_lock, get_lock,
                    slot_lock)

    # -- put ---------------------------------------------------------------------

    def put(self, item: Any, timeout: float | None = None) -> None:
        deadline = deadline_of(timeout)
        record = self._record(item)
        try:
            if not self._take(self._put_lock, deadline):
                raise ChannelFull("no room in the channel within the timeout")
            try:
                self._write_waiting(record, deadline)
            finally:
                self._put_lock.release()
        except BaseException:
            _discard(record)
            raise
        self._ring_bell(self._items_bell)

    def put_nowait(self, item: Any) -> None:
        record = self._record(item)
        try:
            if self._words[CLOSED]:
                raise ChannelClosedError("put to a closed channel")
            # A producer waiting for room holds the put lock: then there is none.
            if not self._take(self._put_lock, time.monotonic() + 0.01):
                raise ChannelFull("the channel is full")
            try:
                if self._words[CLOSED]:
                    raise ChannelClosedError("put to a closed channel")
                if not self._write(*record):
                    raise ChannelFull(f"the channel is full ({self._maxsize} items)")
            finally:
                self._put_lock.release()
        except BaseException:
            _discard(record)
            raise
        self._ring_bell(self._items_bell)

    def put_many(self, items: Any, timeout: float | None = None) -> None:
        deadline = deadline_of(timeout)
        records = []
        try:
            records = [self._record(item) for item in items]
        except BaseException:
            for record in records:
                _discard(record)
            raise
        written = 0
        try:
            if not self._take(self._put_lock, deadline):
                raise ChannelFull("no room in the channel within the timeout")
            try:
                for record in records:
                    self._write_waiting(record, deadline)
                    written += 1
            finally:
                self._put_lock.release()
        except BaseException:
            for record in records[written:]:
                _discard(record)
            raise
        finally:
            if written:
                self._ring_bell(self._items_bell)

    def _record(self, item: Any) -> tuple[int, bytes]:
        """``item`` as a record's kind and payload (a big one written to a segment)."""
        buffers: list[pickle.PickleBuffer] = []
        try:
            data = dumps(item, main_by_value=True, out_of_band=buffers)
        except Exception as exc:
            raise serialization_error("the item put to the channel", item, exc) from exc
        if not buffers and len(data) <= self._inline_max:
            return INLINE, data
        return SPILL, _spill.write(frame_parts(data, buffers)).encode()

    def _write_waiting(self, record: tuple[int, bytes], deadline: float | None) -> None:
        """Write a record, waiting for room (put lock held)."""
        words = self._words
        while True:
            if words[CLOSED]:
                raise ChannelClosedError("put to a closed channel")
            if self._write(*record):
                return
            self._ring_bell(self._items_bell)  # let consumers make room
            if not self._wait_bell(self._room_bell, deadline):
                raise ChannelFull(f"the channel stayed full ({self._maxsize} items)")

    def _write(self, kind: int, payload: bytes) -> bool:
        """Publish one record if it fits now (put lock held)."""
        words = self._words
        tail = words[TAIL]
        head = words[HEAD]
        count = ((tail >> _POS_BITS) - (head >> _POS_BITS)) & _COUNT_MASK
        if count >= self._maxsize:
            return False
        position = tail & _POS_MASK
        used = (position - (head & _POS_MASK)) & _POS_MASK
        size = (_HEADER.size + len(payload) + 7) & ~7
        capacity = self._capacity
        index = position % capacity
        waste = capacity - index if index + size > capacity else 0
        if used + waste + size > capacity:
            return False
        ring = self._ring
        if waste:
            _HEADER.pack_into(ring, index, 0, WRAP)
            index = 0
        _HEADER.pack_into(ring, index, len(payload), kind)
        start = index + _HEADER.size
        ring[start:start + len(payload)] = payload
        words[TAIL] = ((((tail >> _POS_BITS) + 1) & _COUNT_MASK) << _POS_BITS
                       | ((position + waste + size) & _POS_MASK))
        words[PUTS] += 1
        return True

    # -- get ---------------------------------------------------------------------

    def get(self, timeout: float | None = None) -> Any:
        deadline = deadline_of(timeout)
        while True:
            if not self._take(self._get_lock, deadline):
                raise ChannelEmpty("no item came within the timeout")
            try:
                found, item = self._read()
            finally:
                self._get_lock.release()
            if found:
                self._after_get()
                return _item(item)
            if self._words[CLOSED]:
                self._ring_bell(self._items_bell)  # pass the end on to other consumers
                raise ChannelClosedError("the channel is closed and drained")
            if not self._wait_for_items(deadline):
                raise ChannelEmpty("no item came within the timeout")

    def get_nowait(self) -> Any:
        if not self._take(self._get_lock, time.monotonic() + 0.01):
            raise ChannelEmpty("the channel is busy with another consumer")
        try:
            found, item = self._read()
        finally:
            self._get_lock.release()
        if found:
            self._after_get()
            return _item(item)
        if self._words[CLOSED]:
            raise ChannelClosedError("the channel is closed and drained")
        raise ChannelEmpty("the channel is empty")

    def get_many(self, max_items: int, timeout: float | None = None) -> list[Any]:
        from ._channel import check_max_items

        check_max_items(max_items)
        deadline = deadline_of(timeout)
        while True:
            if not self._take(self._get_lock, deadline):
                raise ChannelEmpty("no item came within the timeout")
            taken: list[Any] = []
            try:
                while len(taken) < max_items:
                    found, item = self._read()
                    if not found:
                        break
                    taken.append(item)
            finally:
                self._get_lock.release()
            if taken:
                self._after_get()
                return [_item(item) for item in taken]
            if self._words[CLOSED]:
                self._ring_bell(self._items_bell)
                raise ChannelClosedError("the channel is closed and drained")
            if not self._wait_for_items(deadline):
                raise ChannelEmpty("no item came within the timeout")

    def _read(self) -> tuple[bool, Any]:
        """Take the first record (get lock held): (True, its item or its error) or (False, None)."""
        words = self._words
        head = words[HEAD]
        tail = words[TAIL]
        if (head >> _POS_BITS) == (tail >> _POS_BITS):
            return False, None
        ring = self._ring
        capacity = self._capacity
        position = head & _POS_MASK
        index = position % capacity
        length, kind = _HEADER.unpack_from(ring, index)
        if kind == WRAP:
            position += capacity - index
            index = 0
            length, kind = _HEADER.unpack_from(ring, 0)
        start = index + _HEADER.size
        payload = ring[start:start + length]
        try:
            if kind == INLINE:
                item: Any = _loads(payload)
            else:
                item = _spill_item(bytes(payload).decode())
        finally:
            size = (_HEADER.size + length + 7) & ~7
            words[HEAD] = ((((head >> _POS_BITS) + 1) & _COUNT_MASK) << _POS_BITS
                           | ((position + size) & _POS_MASK))
            words[GETS] += 1
        return True, item

    def _after_get(self) -> None:
        self._ring_bell(self._room_bell)
        words = self._words
        if (words[HEAD] >> _POS_BITS) != (words[TAIL] >> _POS_BITS):
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
        killed in the middle of a get has taken its record or not: either way
        the ring is whole, so there is nothing to repair.
        """
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
            bell.acquire(True, ALIVE_CHECK_EVERY)
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        bell.acquire(True, min(ALIVE_CHECK_EVERY, left))
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
        words = self._words
        return ((words[TAIL] >> _POS_BITS) - (words[HEAD] >> _POS_BITS)) & _COUNT_MASK

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


def _loads(payload: memoryview) -> Any:
    from .._core._serialization import loads

    try:
        return loads(payload)
    except Exception as exc:
        return _Failed(unpickling_error("an item of the channel", exc))


def _spill_item(name: str) -> Any:
    try:
        return _spill.read(name)
    except Exception as exc:
        return _Failed(unpickling_error("a big item of the channel", exc))


class _Failed:
    """An item that could not be unpickled: its error, raised to whoever took it."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


def _item(item: Any) -> Any:
    if type(item) is _Failed:
        raise item.error
    return item


def _discard(record: tuple[int, bytes]) -> None:
    """Free a record that was not published (its segment, if it has one)."""
    kind, payload = record
    if kind == SPILL:
        _spill.unlink(payload.decode())


def _free_unread(creator: int, words: memoryview, ring: memoryview, capacity: int) -> None:
    """Unlink the segments of big items still in the ring (in the creating process only)."""
    if os.getpid() != creator:
        return  # a forked child: the channel is not its to empty
    head, tail = words[HEAD], words[TAIL]
    position = head & _POS_MASK
    for _ in range(((tail >> _POS_BITS) - (head >> _POS_BITS)) & _COUNT_MASK):
        index = position % capacity
        length, kind = _HEADER.unpack_from(ring, index)
        if kind == WRAP:
            position += capacity - index
            index = 0
            length, kind = _HEADER.unpack_from(ring, 0)
        if kind == SPILL:
            start = index + _HEADER.size
            _spill.unlink(bytes(ring[start:start + length]).decode())
        position += (_HEADER.size + length + 7) & ~7
