"""The frames process workers and their parent exchange over pipes.

Every frame is an 8-byte little-endian length and a payload whose first byte
says what it is. Batch frames carry a fixed binary header, then the pickled
function (only the first time a worker sees it), then the pickled items: the
two pickles are separate so that a worker which cannot unpickle the items can
still say which batch failed, and why.

A worker also has a small shared-memory *progress slot*: before each task it
writes which batch and which task it is on and when that task started. It
costs a few stores per task and lets the parent blame the right task when the
worker crashes, and notice a task that overruns its timeout, without a message
per task.
"""

from __future__ import annotations

import struct

__all__ = [
    "BATCH",
    "DONE",
    "FORGET",
    "FRAME",
    "INIT_FAILED",
    "KIND_STOP",
    "LOAD_FAILED",
    "READY",
    "pack_names",
    "unpack_names",
]

FRAME = struct.Struct("<Q")
# Parts one writev takes at most (Linux allows 1024; a result may have more
# out-of-band buffers than that).
WRITEV_MAX = 512

# parent -> worker
BATCH = struct.Struct("<BQqBBI")  # kind, seq, fn id, call style, tracked, len(fn bytes)
FORGET = struct.Struct("<Bq")  # kind, fn id the worker may drop
KIND_BATCH = 1
KIND_FORGET = 2
# Exit when idle. End-of-file on the pipe cannot be relied on for this: a
# process forked by other code in the parent (a fork-based pool started after
# ours) inherits the parent's end of every pipe and keeps it open.
KIND_STOP = 3

# worker -> parent
# kind, seq, seconds spent, how many lent segments the worker let go of; then
# their names (see pack_names), then pickled (values, errors)
DONE = struct.Struct("<BQdH")
LOAD_FAILED = struct.Struct("<BQB")  # kind, seq, 1 if the function failed else 0; then error
READY = 3
INIT_FAILED = 4
KIND_DONE = 1
KIND_LOAD_FAILED = 2

# progress slot: one int64 each
SLOT_SEQ = 0  # seq of the batch being run
SLOT_INDEX = 1  # task index in that batch (-1: untracked, LOADING: not started yet)
SLOT_STARTED = 2  # time.monotonic_ns() when that task started
# Written by the pool: the seq of a batch to stop before its next task, so
# that the tasks it has not started go to a worker with nothing to do.
SLOT_STOP = 3
SLOT_BYTES = 64
# SLOT_INDEX while the worker reads and unpickles a batch: the batch is the
# worker's (a crash now is blamed on it), but no task has started, so no
# task's time runs yet (a large argument does not count against task_timeout).
LOADING = -2


_NAME = struct.Struct("<H")


def pack_names(names: list[str]) -> bytes:
    """Names one after the other, each after its length (u16)."""
    return b"".join(_NAME.pack(len(encoded)) + encoded
                    for encoded in (name.encode() for name in names))


def unpack_names(data: bytes | memoryview, offset: int, count: int) -> tuple[list[str], int]:
    """``count`` names that :func:`pack_names` wrote at ``offset``; and the offset after them."""
    names = []
    for _ in range(count):
        (size,) = _NAME.unpack_from(data, offset)
        offset += _NAME.size
        names.append(bytes(data[offset:offset + size]).decode())
        offset += size
    return names, offset
