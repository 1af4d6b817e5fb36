"""A process channel's big items reuse its kept segments, across processes, safely."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

import bingfa as bf
from bingfa._channels._segments import BUDGET, SLOTS, SegmentSlots
from bingfa._core._shm import unlink
from bingfa._sync._shared import Block, is_alive, owner_token

MiB = 1 << 20


def kept_segments(ch) -> set[str]:
    """The channel's kept segments in /dev/shm that hold memory (all are named from the start)."""
    prefix = ch._segments.name(0)[1:-1]
    return {n for n in os.listdir("/dev/shm")
            if n.startswith(prefix) and os.path.getsize(f"/dev/shm/{n}") > 0}


def one_off_segments() -> set[str]:
    mine = f"bf-{os.getpid()}-o-"
    return {n for n in os.listdir("/dev/shm") if n.startswith(mine) and "-o-c" not in n}


@pytest.mark.timeout(60)
def test_items_taken_one_after_another_go_through_one_kept_segment():
    ch = bf.Channel(mode="process")
    for i in range(20):
        ch.put(np.full(MiB // 8, i, dtype=np.int64))  # 1 MiB: bigger than a quarter ring
        assert not one_off_segments()
        array = ch.get(timeout=10)
        assert (array == i).all()
        assert not array.flags.owndata  # built on the kept segment, not a copy
        del array  # let go: the next put writes the same segment
    assert len(kept_segments(ch)) == 1


@pytest.mark.timeout(60)
def test_items_a_consumer_keeps_are_never_written_over():
    ch = bf.Channel(mode="process")
    kept = []
    for i in range(SLOTS + 4):  # more than the slots: the rest go through one-off segments
        ch.put(np.full(MiB // 8, i, dtype=np.int64))
        kept.append(ch.get(timeout=10))
    assert len(kept_segments(ch)) == SLOTS
    for i, array in enumerate(kept):
        assert (array == i).all()
    del kept, array
    ch.put(np.full(MiB // 8, -1, dtype=np.int64))  # the slots are free again
    assert not one_off_segments()
    assert (ch.get(timeout=10) == -1).all()


def produce_arrays(ch, producer, count, size):
    with ch.producer():
        for i in range(count):
            ch.put(np.full(size // 8, producer * 1000 + i, dtype=np.int64))


def check_arrays(ch):
    """Take arrays, hold each a moment while another arrives, and report what each held."""
    seen = []
    previous = None
    for array in ch:
        if previous is not None:
            first = int(previous[0])
            seen.append((first, bool((previous == first).all())))
        previous = array
    if previous is not None:
        first = int(previous[0])
        seen.append((first, bool((previous == first).all())))
    return seen


@pytest.mark.timeout(90)
def test_producers_and_consumers_in_processes_get_every_big_item_once_and_intact():
    ch = bf.Channel(maxsize=4, mode="process", producers=2)
    with bf.scope() as s:
        for p in (1, 2):
            s.spawn(produce_arrays, ch, p, 40, 512 * 1024, mode="process")
        consumers = [s.spawn(check_arrays, ch, mode="process") for _ in range(2)]
    seen = [entry for c in consumers for entry in c.result()]
    assert sorted(first for first, _ in seen) == sorted(
        p * 1000 + i for p in (1, 2) for i in range(40))
    assert all(intact for _, intact in seen)
    assert 1 <= len(kept_segments(ch)) <= SLOTS


def hold_an_item(ch, ready):
    item = ch.get(timeout=30)
    ready.put(owner_token())
    os.kill(os.getpid(), signal.SIGSTOP)  # held until killed
    return item


@pytest.mark.timeout(60)
def test_a_slot_held_by_a_killed_consumer_is_taken_back():
    ch = bf.Channel(mode="process")
    ready = bf.Channel(mode="process")
    ch.put(np.ones(MiB // 8))
    holder = bf.Process(hold_an_item, (ch, ready))
    holder.start()
    token = ready.get(timeout=30)
    slots = ch._segments
    words = ch._block.words
    assert token in list(words)  # the slot names its holder
    holder.kill()
    holder.join(30)
    assert not is_alive(token)  # join waited for it to be gone
    # Every other slot taken by an item kept here: only the dead holder's is left.
    kept = []
    for _ in range(SLOTS - 1):
        ch.put(np.ones(MiB // 8))
        kept.append(ch.get(timeout=10))
    ch.put(np.full(MiB // 8, 5.0))
    assert not one_off_segments()  # went into the slot taken back
    assert (ch.get(timeout=10) == 5.0).all()
    assert len(kept_segments(ch)) == SLOTS
    del kept, slots


@pytest.mark.timeout(30)
def test_slots_keep_within_their_budget_and_pick_the_smallest_that_fits():
    block = Block(3 * SLOTS)
    unlink(block.name)  # the mapping is all this test needs
    slots = SegmentSlots(block.words, 0, block.name, os.getpid())
    small = slots.claim(MiB)
    big = slots.claim(4 * MiB)
    assert (small, big) == (0, 1)
    slots.free(small)
    slots.free(big)
    assert slots.claim(3 * MiB) == big  # big enough, not grown
    assert slots.claim(MiB // 2) == small
    assert slots.claim(BUDGET) is None  # would pass the budget
    slots.free(small)
    assert slots.claim(2 * MiB) == small  # a free one grows before a new one is made
    assert block.words[2] == 2 * MiB


def write_one_off_and_die(ch) -> None:
    """A producer killed after writing a big item's segment, before publishing it."""
    ch._segments.write_one_off([np.ones(MiB // 8)])
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.timeout(60)
def test_the_creator_removes_one_off_segments_left_unread_or_half_put_when_the_channel_goes():
    ch = bf.Channel(mode="process")
    kept = []
    for _ in range(SLOTS):  # every kept segment taken and held: big items go one-off
        ch.put(np.ones(MiB // 8))
        kept.append(ch.get(timeout=10))
    ch.put(np.full(MiB // 8, 2.0))  # unread
    producer = bf.Process(write_one_off_and_die, (ch,))
    producer.start()
    producer.join(30)
    assert producer.exitcode == -signal.SIGKILL
    assert len(one_off_segments()) == 2
    del ch, producer  # the last handles of the channel here (the process's holds one)
    assert not one_off_segments()
    del kept
