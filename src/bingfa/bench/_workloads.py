"""The work ``bingfa bench`` times: each a task function, sized to take a few milliseconds.

Task functions live at module level so that process workers import them by
name. Every kind of work the seed's "多进程 vs 多线程" note names is here:
pure-Python CPU work (holds the GIL), CPU work in C that releases the GIL
(hashlib, zlib, numpy), and waiting (sleeping, and a loopback socket to a
server that answers after a delay, as a remote service would).
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import time
import zlib
from dataclasses import dataclass
from typing import Any

__all__ = ["SERVICE_DELAY", "WORKLOADS", "Workload"]

# A remote service's think time, for the socket workload: the server answers each
# request this many seconds after it came.
SERVICE_DELAY = 0.005
SLEEP = 0.01
REQUEST = b"x" * 1024 + b"\n"
ANSWER_SIZE = 16 * 1024


def cpu_python(n: int) -> int:
    """Pure-Python arithmetic: holds the GIL the whole time."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


_HASH_DATA = b"bingfa" * (1 << 16)  # 384 KiB


def hash_sha256(rounds: int) -> str:
    """SHA-256 of 384 KiB, ``rounds`` times: hashlib releases the GIL on big inputs."""
    digest = b""
    for _ in range(rounds):
        digest = hashlib.sha256(_HASH_DATA + digest[:1]).digest()
    return digest.hex()


_ZLIB_DATA = bytes(range(256)) * 512 + b"bingfa " * 20000  # compressible, 268 KiB


def compress_zlib(rounds: int) -> int:
    """zlib level 6, ``rounds`` times: zlib releases the GIL while it compresses."""
    size = 0
    for _ in range(rounds):
        size += len(zlib.compress(_ZLIB_DATA, 6))
    return size


_ARRAYS: dict[int, Any] = {}


def numpy_ufuncs(rounds: int) -> float:
    """Elementwise numpy on a million floats (ufuncs release the GIL), ``rounds`` times."""
    import numpy as np

    data = _ARRAYS.get(0)
    if data is None:
        data = _ARRAYS[0] = np.random.default_rng(0).random(1_000_000)
        _ARRAYS[1] = np.empty_like(data)
    out = _ARRAYS[1]
    total = 0.0
    for _ in range(rounds):
        np.sqrt(data, out=out)
        np.multiply(out, 3.0, out=out)
        total += float(out[::1000].sum())
    return total


def sleep_io(seconds: float) -> float:
    """Waiting, as for a disk or a remote answer: nothing runs meanwhile."""
    time.sleep(seconds)
    return seconds


async def sleep_io_async(seconds: float) -> float:
    """:func:`sleep_io` as a coroutine."""
    await asyncio.sleep(seconds)
    return seconds


def socket_io(port: int) -> int:
    """One request to the local server, whose answer comes ``SERVICE_DELAY`` s later."""
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(REQUEST)
        got = 0
        while got < ANSWER_SIZE:
            chunk = conn.recv(65536)
            if not chunk:
                break
            got += len(chunk)
    return got


async def socket_io_async(port: int) -> int:
    """:func:`socket_io` as a coroutine."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(REQUEST)
        data = await reader.readexactly(ANSWER_SIZE)
    finally:
        writer.close()
        await writer.wait_closed()
    return len(data)


def noop(x: int) -> int:
    """A round trip with nothing to do: what switching to a worker and back costs."""
    return x


async def noop_async(x: int) -> int:
    """:func:`noop` as a coroutine."""
    return x


@dataclass(frozen=True)
class Workload:
    """One row group of the report: what runs, how big each task is, which modes apply."""

    name: str
    title: str
    fn: Any
    size: Any  # the task's argument (the server's port is filled in for socket_io)
    modes: tuple[str, ...]
    kind: str = "throughput"  # or "latency": the switch cost, µs per round trip
    waits: bool = False  # I/O: many workers, one task per chunk
    async_fn: Any = None
    needs: str | None = None  # a module that must be installed


CPU_MODES = ("serial", "thread", "process")
IO_MODES = ("serial", "thread", "process", "async", "gevent")

WORKLOADS = [
    Workload("cpu", "CPU-bound, pure Python", cpu_python, 60_000, CPU_MODES),
    Workload("hashlib", "CPU-bound in C, GIL released (hashlib)", hash_sha256, 6, CPU_MODES),
    Workload("zlib", "CPU-bound in C, GIL released (zlib)", compress_zlib, 2, CPU_MODES),
    Workload("numpy", "CPU-bound in C, GIL released (numpy)", numpy_ufuncs, 2, CPU_MODES,
             needs="numpy"),
    Workload("sleep", "I/O-bound, sleeping (10 ms)", sleep_io, SLEEP, IO_MODES, waits=True,
             async_fn=sleep_io_async),
    Workload("socket", "I/O-bound, loopback socket (5 ms server)", socket_io, 0, IO_MODES,
             waits=True, async_fn=socket_io_async),
    Workload("switch", "switch cost (one round trip)", noop, 1,
             ("serial", "thread", "process", "async", "gevent", "rpc"), kind="latency",
             async_fn=noop_async),
]
