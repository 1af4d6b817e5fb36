"""bf.Channel against multiprocessing.Queue, faster-fifo, queue.Queue and asyncio.Queue.

Every workload runs each implementation in turn, ``--repeats`` times
interleaved, and prints medians and ratios:

- **small, process**: one producer process puts ``--messages`` items (an int;
  a tuple of about 100 bytes), one consumer process takes them; one
  ``put``/``get`` per item. Messages per second from the consumer's first get
  to its last. Peers: ``multiprocessing.Queue``, faster-fifo's ``Queue``.
- **batches, process**: the same with ``put_many``/``get_many`` of 100 items
  (faster-fifo's ``put_many``/``get_many`` too), against multiprocessing's
  single put/get.
- **thread**: one producer thread, one consumer thread, ``maxsize=1000``;
  against ``queue.Queue``.
- **async**: a producer and a consumer coroutine on one event loop,
  ``maxsize=1000``; against ``asyncio.Queue``.
- **big array**: one 256 MiB numpy array from one process to another, from the
  put to the consumer having touched every page of it; against
  ``multiprocessing.Queue``. GB/s.
- **stream of arrays**: ``--stream`` arrays of 8 MiB one after another from
  one process to another, the consumer touching every page of each and
  letting it go; against ``multiprocessing.Queue``, and the floor: the same
  bytes written into shared memory that is already there (bingfa writes each
  array into a segment a consumer has let go of).

    python benchmarks/channels.py [--messages N] [--repeats N] [--big-mib N] [--stream N]

Targets (issue #9): small messages at least 2x multiprocessing.Queue and at
least faster-fifo; batches at least 10x multiprocessing.Queue's single
put/get; thread mode at least 1x queue.Queue; async at most 1.2x
asyncio.Queue's time; the big array at least 10x multiprocessing.Queue and at
least 2 GB/s.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import queue
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import bingfa as bf

try:
    import faster_fifo
except ImportError:  # pip install 'bingfa[bench]'
    faster_fifo = None

FORK = multiprocessing.get_context("fork")
# Each message a distinct object, made before the clock starts (a batch of one
# object a hundred times would pickle as one object and ninety-nine references).
SMALL: dict[str, Callable[[int], Any]] = {
    "int": lambda i: i * 7919,
    "tuple": lambda i: (f"{i:a>40}", i, i * 0.5, f"{i:b>30}", (i, i + 1, i + 2)),
}
BATCH = 100


# -- process to process ---------------------------------------------------------

def _produce(kind: str, q: Any, n: int, shape: str, go: Any) -> None:
    items = [SMALL[shape](i) for i in range(n)]
    batches = [items[i:i + BATCH] for i in range(0, n, BATCH)]
    go.wait()
    if kind == "bingfa":
        for item in items:
            q.put(item)
        q.close()
    elif kind == "bingfa batches":
        for batch in batches:
            q.put_many(batch)
        q.close()
    elif kind == "faster-fifo batches":
        for batch in batches:
            q.put_many(batch, timeout=60)
        q.put(None, timeout=60)
    else:
        put = q.put
        for item in items:
            put(item)
        put(None)


def _consume(kind: str, q: Any, n: int, out: Any) -> None:
    got = 0
    start = None
    if kind == "bingfa":
        for _ in q:
            if start is None:
                start = time.perf_counter()
            got += 1
    elif kind == "bingfa batches":
        while True:
            try:
                batch = q.get_many(BATCH)
            except bf.ChannelClosedError:
                break
            if start is None:
                start = time.perf_counter()
            got += len(batch)
    elif kind == "faster-fifo batches":
        while True:
            batch = q.get_many(max_messages_to_get=BATCH, timeout=60)
            if start is None:
                start = time.perf_counter()
            if batch[-1] is None:
                got += len(batch) - 1
                break
            got += len(batch)
    else:
        get = q.get
        while True:
            item = get(timeout=60) if kind == "faster-fifo" else get()
            if start is None:
                start = time.perf_counter()
            if item is None:
                break
            got += 1
    out.put((got, time.perf_counter() - (start or time.perf_counter())))


def _make_queue(kind: str) -> Any:
    if kind.startswith("bingfa"):
        return bf.Channel(maxsize=1000, mode="process")
    if kind.startswith("faster-fifo"):
        return faster_fifo.Queue(max_size_bytes=1000 * 256)
    return FORK.Queue(1000)


def between_processes(kind: str, n: int, shape: str) -> float:
    """Messages per second, one producer process to one consumer process."""
    q = _make_queue(kind)
    go, out = FORK.Event(), FORK.SimpleQueue()
    procs = [FORK.Process(target=_produce, args=(kind, q, n, shape, go)),
             FORK.Process(target=_consume, args=(kind, q, n, out))]
    for p in procs:
        p.start()
    go.set()
    got, seconds = out.get()
    for p in procs:
        p.join()
    assert got == n, (kind, got, n)
    return n / seconds


# -- threads and coroutines ---------------------------------------------------------

def between_threads(make: Callable[[], Any], n: int) -> float:
    """Messages per second, one producer thread to one consumer thread."""
    q = make()

    def produce() -> None:
        put = q.put
        for i in range(n):
            put(i)
        put(None)

    t = threading.Thread(target=produce)
    start = time.perf_counter()
    t.start()
    get = q.get
    while get() is not None:
        pass
    seconds = time.perf_counter() - start
    t.join()
    return n / seconds


def between_coroutines(kind: str, n: int) -> float:
    """Messages per second, one producer coroutine to one consumer, one loop."""

    async def main() -> float:
        if kind == "bingfa":
            ch = bf.Channel(maxsize=1000)
            put, get = ch.aput, ch.aget
        else:
            aq: asyncio.Queue[Any] = asyncio.Queue(1000)
            put, get = aq.put, aq.get

        async def produce() -> None:
            for i in range(n):
                await put(i)
            await put(None)

        start = time.perf_counter()
        task = asyncio.create_task(produce())
        while await get() is not None:
            pass
        await task
        return n / (time.perf_counter() - start)

    return asyncio.run(main())


# -- one big array -----------------------------------------------------------------

def _send_big(kind: str, q: Any, mib: int, go: Any, started: Any) -> None:
    array = np.ones(mib * 1024 * 1024 // 8)
    go.wait()
    started.put(time.perf_counter())
    q.put(array)
    if kind == "bingfa":
        q.close()


def big_array(kind: str, mib: int) -> float:
    """Seconds from the put of a ``mib`` MiB array to the consumer touching all of it."""
    q = bf.Channel(mode="process") if kind == "bingfa" else FORK.Queue()
    go, started = FORK.Event(), FORK.SimpleQueue()
    p = FORK.Process(target=_send_big, args=(kind, q, mib, go, started))
    p.start()
    go.set()
    array = q.get()
    touched = float(array[::512].sum())  # one read per 4 KiB page
    end = time.perf_counter()
    begin = started.get()
    p.join()
    assert touched == len(array[::512])
    del array
    return end - begin


# -- a stream of arrays ---------------------------------------------------------------

STREAM_MIB = 8


def _send_stream(kind: str, q: Any, count: int, go: Any, started: Any) -> None:
    # Eight arrays in turn: multiprocessing.Queue pickles in a thread of its
    # own after put() returns, so one array changed at once would be sent
    # changed (four in the queue, as many in its feeder's hands at most).
    arrays = [np.ones(STREAM_MIB * 1024 * 1024 // 8) for _ in range(8)]
    go.wait()
    started.put(time.perf_counter())
    for i in range(count):
        array = arrays[i % len(arrays)]
        array[0] = i  # each one its own
        q.put(array)
    if kind == "bingfa":
        q.close()


def stream_of_arrays(kind: str, count: int) -> float:
    """Seconds from the first put of ``count`` 8 MiB arrays to the consumer touching the last."""
    q = bf.Channel(maxsize=4, mode="process") if kind == "bingfa" else FORK.Queue(4)
    go, started = FORK.Event(), FORK.SimpleQueue()
    p = FORK.Process(target=_send_stream, args=(kind, q, count, go, started))
    p.start()
    go.set()
    for i in range(count):
        array = q.get()
        assert array[0] == i
        float(array[::512].sum())  # one read per 4 KiB page
        del array
    end = time.perf_counter()
    begin = started.get()
    p.join()
    return end - begin


def warm_shared_copies(count: int) -> float:
    """Seconds to write ``count`` 8 MiB arrays into existing shared memory: the stream's floor."""
    array = np.ones(STREAM_MIB * 1024 * 1024 // 8)
    path = f"/dev/shm/bingfa-bench-warm-{os.getpid()}"
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, array.nbytes)
        view = memoryview(array).cast("B")
        os.pwritev(fd, [view], 0)  # the pages exist before the clock starts
        start = time.perf_counter()
        for _ in range(count):
            done = 0
            while done < array.nbytes:
                done += os.pwritev(fd, [view[done:]], done)
        return time.perf_counter() - start
    finally:
        os.close(fd)
        os.unlink(path)


def fresh_shared_copy(mib: int, read: bool = False) -> float:
    """Seconds to write a ``mib`` MiB array into new shared memory: the floor for one transfer.

    An array in a process's own memory reaches another process only by being
    written somewhere both can see, and new shared pages are allocated as
    they are written. The fastest way here is ``pwritev`` into a new tmpfs
    file (a memcpy into a fresh mapping is slower: a page fault per page). No
    receiver is counted, so no implementation can take less.

    With ``read``, the floor with a reader: the memory is also mapped and
    every page touched, all in one process with nothing sent at all. What the
    big-array workload times (from the put to the consumer having read every
    page) cannot take less than this here.
    """
    import mmap

    array = np.ones(mib * 1024 * 1024 // 8)
    path = f"/dev/shm/bingfa-bench-floor-{os.getpid()}"
    start = time.perf_counter()
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, array.nbytes)
        view, done = memoryview(array).cast("B"), 0
        while done < array.nbytes:
            done += os.pwritev(fd, [view[done:]], done)
        if read:
            mapping = mmap.mmap(fd, array.nbytes)
            mapped = np.frombuffer(mapping, dtype=np.float64)
            float(mapped[::512].sum())  # one read per 4 KiB page
        seconds = time.perf_counter() - start
        if read:
            del mapped
            mapping.close()
    finally:
        os.close(fd)
        os.unlink(path)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--big-mib", type=int, default=256)
    parser.add_argument("--stream", type=int, default=64, help="8 MiB arrays in the stream")
    args = parser.parse_args()
    n = args.messages - args.messages % BATCH

    process_kinds = ["bingfa", "multiprocessing"]
    if faster_fifo is not None:
        process_kinds.append("faster-fifo")
    else:
        print("faster-fifo is not installed (pip install 'bingfa[bench]'): its rows are left out")
    batch_kinds = ["bingfa batches"] + (["faster-fifo batches"] if faster_fifo else [])
    rates: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        for shape in SMALL:
            for kind in process_kinds + batch_kinds:
                rates.setdefault(f"{shape}|{kind}", []).append(between_processes(kind, n, shape))
        rates.setdefault("thread|bingfa", []).append(
            between_threads(lambda: bf.Channel(maxsize=1000), n))
        rates.setdefault("thread|queue.Queue", []).append(
            between_threads(lambda: queue.Queue(1000), n))
        rates.setdefault("async|bingfa", []).append(between_coroutines("bingfa", n))
        rates.setdefault("async|asyncio.Queue", []).append(between_coroutines("asyncio", n))
        rates.setdefault("big|bingfa", []).append(big_array("bingfa", args.big_mib))
        rates.setdefault("big|multiprocessing", []).append(
            big_array("multiprocessing", args.big_mib))
        rates.setdefault("big|floor", []).append(fresh_shared_copy(args.big_mib))
        rates.setdefault("big|floor read", []).append(fresh_shared_copy(args.big_mib, read=True))
        for kind in ("bingfa", "multiprocessing"):
            rates.setdefault(f"stream|{kind}", []).append(stream_of_arrays(kind, args.stream))
        rates.setdefault("stream|floor", []).append(warm_shared_copies(args.stream))

    med = {key: statistics.median(values) for key, values in rates.items()}
    print(f"median of {args.repeats} interleaved runs; {n:,} messages each")
    for shape in SMALL:
        mp_rate = med[f"{shape}|multiprocessing"]
        print(f"\n{shape} messages, process to process (messages/s)")
        for kind in process_kinds + batch_kinds:
            rate = med[f"{shape}|{kind}"]
            print(f"  {kind:22s} {rate:12,.0f}/s   {rate / mp_rate:6.2f}x multiprocessing.Queue")
        if faster_fifo is not None:
            ratio = med[f"{shape}|bingfa"] / med[f"{shape}|faster-fifo"]
            print(f"  bingfa / faster-fifo single: {ratio:.2f}x; batches: "
                  f"{med[f'{shape}|bingfa batches'] / med[f'{shape}|faster-fifo batches']:.2f}x")
    ratio = med["thread|bingfa"] / med["thread|queue.Queue"]
    print(f"\nthreads: bingfa {med['thread|bingfa']:,.0f}/s, queue.Queue "
          f"{med['thread|queue.Queue']:,.0f}/s: {ratio:.2f}x")
    ratio = med["async|asyncio.Queue"] / med["async|bingfa"]
    print(f"async: bingfa {med['async|bingfa']:,.0f}/s, asyncio.Queue "
          f"{med['async|asyncio.Queue']:,.0f}/s: bingfa takes {ratio:.2f}x the time")
    gb = args.big_mib / 1024 * 1.073741824
    ours, theirs = med["big|bingfa"], med["big|multiprocessing"]
    print(f"{args.big_mib} MiB array: bingfa {ours * 1e3:.1f} ms ({gb / ours:.2f} GB/s), "
          f"multiprocessing.Queue {theirs * 1e3:.1f} ms ({gb / theirs:.2f} GB/s): "
          f"{theirs / ours:.1f}x faster")
    floor = med["big|floor"]
    print(f"  floor, one write into fresh shared memory: {floor * 1e3:.1f} ms "
          f"({gb / floor:.2f} GB/s), so at best {theirs / floor:.1f}x multiprocessing.Queue; "
          f"bingfa takes {ours / floor:.2f}x the floor")
    floor = med["big|floor read"]
    print(f"  floor with a reader (write, map, touch every page; one process): "
          f"{floor * 1e3:.1f} ms, so at best {theirs / floor:.1f}x multiprocessing.Queue; "
          f"bingfa takes {ours / floor:.2f}x this floor")
    ours, theirs, floor = med["stream|bingfa"], med["stream|multiprocessing"], med["stream|floor"]
    gb = args.stream * STREAM_MIB / 1024 * 1.073741824
    print(f"{args.stream} arrays of {STREAM_MIB} MiB: bingfa {ours * 1e3:.1f} ms "
          f"({gb / ours:.2f} GB/s), multiprocessing.Queue {theirs * 1e3:.1f} ms "
          f"({gb / theirs:.2f} GB/s): {theirs / ours:.1f}x faster")
    print(f"  floor, the same bytes into shared memory that exists: {floor * 1e3:.1f} ms "
          f"({gb / floor:.2f} GB/s): bingfa takes {ours / floor:.2f}x the floor")


if __name__ == "__main__":
    main()
