"""RPC over loopback TCP: bingfa.rpc beside its peers and a raw-socket floor, in one run.

Every server runs in a process of its own (this script started with ``--serve``),
so client and server use one core each, as real loopback RPC does. The remote
function is ``add(a, b) -> a + b`` on small ints. Implementations:

  floor          a raw asyncio server echoing 4-byte length-prefixed frames the size of
                 an encoded call: the transport alone, no encoding and no dispatch
  floor-unix     (A only) the floor's echo over a Unix socket: the least of the transport
                 bingfa's clients move to when the server is on their host
  floor-poll     (A only) the floor, its client polling the socket for up to 100 µs before
                 it blocks, as bingfa's client does by default: what polling alone buys
  floor-shared   (B only) the floor's server, and the least a client can do with one
                 connection for all threads: each frame tagged with its thread's number,
                 a reader thread waking the thread whose frame came back
  floor-msgpack  the least an RPC does here: calls and answers encoded with msgpack and
                 matched by call id, the method looked up by name, all answers to one
                 read sent in one write; nothing else (no errors, deadlines, streams or
                 flow control). In B one connection for all threads (a reader thread
                 wakes each caller); in A the caller reads its own answer
  mp.connection  multiprocessing.connection Listener/Client, a thread per connection
  rpyc           a Service exposing add, on a ThreadedServer
  pyro5-serpent  Pyro5, serializer serpent
  pyro5-msgpack  Pyro5, serializer msgpack
  xmlrpc         SimpleXMLRPCServer with ThreadingMixIn, HTTP/1.1 keep-alive
  grpc           gRPC with generic handlers on bytes (msgpack payloads, no .proto), if installed
  bingfa         bingfa.rpc.serve / connect / aconnect, add marked @bf.rpc.quick (it runs
                 on the server's event loop)
  bingfa-plain   the same, add a plain function (not marked), as most served functions are
                 (bingfa and bingfa-plain: their client, given the server's loopback TCP
                 address, moves to the server's own Unix socket, as any client on the
                 server's host does by default)
  bingfa-tcp     bingfa (quick) with connect(unix_when_local=False): kept on TCP, as the
                 floor is
  bingfa-nopoll  (A only) bingfa.rpc.connect(spin=0): bingfa (quick) without the polling

Scenarios (the implementations run interleaved: every repeat runs each of them
once, in a rotating order, so the noise of a shared machine hits them alike;
the tables show medians over the repeats and ratios):

  A  sequential add: one client, ``--calls`` calls after 500 warm-up calls, each
     timed with perf_counter_ns; p50 and p99 in microseconds.
     Target: bingfa and bingfa-plain p50 <= floor p50 + 15 µs (idle or busy).
  B  8 threads, one connection: 8 client threads call add in a loop for
     ``--duration`` seconds, sharing one connection where the library supports
     it, else one connection per thread (a note per implementation says which); calls/s.
     Targets, idle: bingfa >= 0.9x floor-shared, >= 2x rpyc, >= 1.5x pyro5-msgpack;
     bingfa-plain >= 4x rpyc. With --busy: both >= 2x rpyc and >= 1.5x pyro5-msgpack.
     Also printed (Linux): the CPU time a call takes in the client and in the
     server, and the CPUs the two used; calls/s = CPUs used / CPU time per call,
     so on a busy host this tells a cheaper call from a larger share of the CPUs.
  C  64 in flight on one asyncio connection, for the implementations with an
     asyncio client (floor: 64 pipelined frames; grpc.aio; bingfa.aconnect); calls/s.
     Target, idle: bingfa >= 100,000 calls/s.

``--busy N`` runs N processes that spin on the CPU beside the benchmark for its
whole run, as on a loaded host (the figures change most there for clients
that poll, and for servers that hand calls between threads). They are stopped
at the end, on an error or Ctrl-C, and exit by themselves if this script dies.
The load averages are printed at the start and after each scenario.

Every client looks its remote method up once per connection, as a hot loop
would (an rpyc ``conn.root.add`` lookup is a round trip of its own), and the
first call of every connection is checked to return 42 for add(20, 22).

Targets are informational: the exit status is 0 whether they pass or not. An
implementation whose server does not start, or whose calls fail or hang, is
reported and left out; until bingfa.rpc exists ("bingfa.rpc: not available
yet"), its rows and the target lines are skipped and the peers are measured
alone. Every server process is stopped at the end, and exits by itself if this
script dies. A default run takes about 3 minutes.

Install, from the repository root::

    pip install -e '.[bench]'   # rpyc, Pyro5 (with serpent), grpcio; msgpack comes with bingfa

gRPC is optional: without grpcio its rows are skipped (``pip install grpcio``).

Run::

    python benchmarks/rpc.py [--only A,B,C] [--repeats 5] [--calls 5000] [--duration 2]
                             [--peers floor,rpyc,...] [--busy N] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import itertools
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import msgpack

SCENARIOS = ("A", "B", "C")
HOST = "127.0.0.1"
WARMUP_CALLS = 500  # scenario A, before the timed calls
THREADS = 8  # scenario B
THREAD_WARMUP_CALLS = 50  # scenario B, per thread, before the timed window
IN_FLIGHT = 64  # scenario C
ASYNC_WARMUP_SECONDS = 0.2  # scenario C, before the timed window
SERVER_START_TIMEOUT = 30.0  # seconds for a server process to publish its address
LISTEN_BACKLOG = 64  # room for all of scenario B's connects at once
# Time limits, far above any healthy run, past which a measurement counts as hung.
SETUP_LIMIT = 60.0  # seconds to connect and warm up
HANG_GRACE = 10.0  # seconds past the end of a timed window
SLOWEST_CALL = 0.01  # seconds per call in scenario A
POLL_SECONDS = 100e-6  # floor-poll: as long as bingfa's client polls by default

# An encoded call of the size a compact RPC protocol sends: [type, id, method, args].
FLOOR_PAYLOAD = msgpack.packb([0, 1, "add", [1, 2]])
FLOOR_FRAME = len(FLOOR_PAYLOAD).to_bytes(4, "big") + FLOOR_PAYLOAD

GRPC_METHOD = "/bench.Calculator/Add"
MP_AUTHKEY = b"bingfa-bench"
PYRO_OBJECT_ID = "calculator"

TARGET_P50_OVER_FLOOR_US = 15.0  # A, quick and plain, idle or busy
TARGET_THREADS_X_FLOOR_SHARED = 0.9  # B, quick, idle host
TARGET_THREADS_X_RPYC = 2.0  # B, quick, idle host
TARGET_THREADS_X_PYRO5_MSGPACK = 1.5  # B, quick, idle host
TARGET_PLAIN_THREADS_X_RPYC = 4.0  # B, plain, idle host
TARGET_BUSY_THREADS_X_RPYC = 2.0  # B, quick and plain, beside busy loops
TARGET_BUSY_THREADS_X_PYRO5_MSGPACK = 1.5  # B, quick and plain, beside busy loops
TARGET_IN_FLIGHT_CALLS_PER_S = 100_000  # C, quick, idle host


# --- the served function -----------------------------------------------------


def add(a: int, b: int) -> int:
    return a + b


class Calculator:
    """The object bingfa serves: its public methods are the remote API."""

    def add(self, a: int, b: int) -> int:
        return a + b


# --- clients, as the scenarios see them --------------------------------------


@dataclass
class SyncClient:
    """A connected blocking client: ``add`` is the remote method, looked up once."""

    add: Callable[[int, int], Any]
    close: Callable[[], None]


@dataclass
class AsyncClient:
    add: Callable[[int, int], Awaitable[Any]]
    aclose: Callable[[], Awaitable[None]]


def tcp_address(port: int) -> str:
    return f"tcp://{HOST}:{port}"


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


# --- implementations: server side (in its own process) and client side -------


class Implementation:
    """One row of the tables. Subclasses say how to serve ``add`` and how to call it."""

    key = ""  # the name in --peers and in the tables
    modules: tuple[str, ...] = ()  # what must be importable for it to run
    computes = True  # False for the floor, which echoes instead of adding
    shares_connection = False  # scenario B: one client for all threads, else one per thread
    threads_note = ""  # scenario B: how the threads use it, and why that is fair
    has_async_client = False  # takes part in scenario C
    scenarios = "AB"  # the sync scenarios it takes part in

    def missing(self) -> str | None:
        """Why it cannot run here, or None."""
        absent = [name for name in self.modules if importlib.util.find_spec(name) is None]
        return f"not installed: {', '.join(absent)}" if absent else None

    def serve(self, publish: Callable[[str], None]) -> None:
        """In the server process: start serving, publish the address, block forever."""
        raise NotImplementedError

    def connect(self, address: str) -> SyncClient:
        raise NotImplementedError

    def connect_one_caller(self, address: str) -> SyncClient:
        """Scenario A's client, for one thread calling in turn: ``connect``'s unless a
        lone caller can do with less."""
        return self.connect(address)

    async def aconnect(self, address: str) -> AsyncClient:
        raise NotImplementedError

    def in_flight_rate(self, address: str, duration: float) -> float:
        """Scenario C: calls/s with IN_FLIGHT calls kept in flight on one asyncio client."""
        return asyncio.run(self._tasks_in_flight(address, duration))

    async def _tasks_in_flight(self, address: str, duration: float) -> float:
        client = await self.aconnect(address)
        try:
            answer = await client.add(20, 22)
            if answer != 42:
                raise RuntimeError(f"{self.key}: add(20, 22) returned {answer!r}")
            await run_tasks_for(client.add, IN_FLIGHT, ASYNC_WARMUP_SECONDS)
            calls, elapsed = await run_tasks_for(client.add, IN_FLIGHT, duration)
        finally:
            await client.aclose()
        return calls / elapsed


async def run_tasks_for(call: Callable[[int, int], Awaitable[Any]], tasks: int,
                        duration: float) -> tuple[int, float]:
    """``tasks`` coroutines each awaiting ``call(1, 2)`` in a loop until the deadline."""
    start = time.perf_counter()
    deadline = start + duration

    async def loop_until_deadline() -> int:
        calls = 0
        while time.perf_counter() < deadline:
            await call(1, 2)
            calls += 1
        return calls

    counts = await asyncio.gather(*(loop_until_deadline() for _ in range(tasks)))
    return sum(counts), time.perf_counter() - start


# floor: raw asyncio, length-prefixed frames ----------------------------------


def complete_frames(buffer: bytearray) -> tuple[int, int]:
    """How many whole 4-byte-length-prefixed frames start the buffer, and their bytes."""
    count = end = 0
    while len(buffer) - end >= 4:
        size = int.from_bytes(buffer[end:end + 4], "big")
        if len(buffer) - end - 4 < size:
            break
        end += 4 + size
        count += 1
    return count, end


class EchoServerProtocol(asyncio.Protocol):
    """Echoes every whole frame back; all frames of one read go back in one write."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        _, end = complete_frames(self.buffer)
        if end and self.transport is not None:
            self.transport.write(bytes(self.buffer[:end]))
            del self.buffer[:end]


class PipelinedEchoClient(asyncio.Protocol):
    """Scenario C's floor: keeps a fixed number of frames in flight, no futures, no tasks."""

    def __init__(self, in_flight: int) -> None:
        self.in_flight = in_flight
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.replies = 0
        self.outstanding = 0
        self.deadline = 0.0
        self.drained: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    async def run_for(self, duration: float) -> tuple[int, float]:
        """Send until the deadline, then wait for the last replies: (replies, seconds)."""
        assert self.transport is not None
        self.replies, self.outstanding = 0, self.in_flight
        self.drained = asyncio.get_running_loop().create_future()
        start = time.perf_counter()
        self.deadline = start + duration
        self.transport.write(FLOOR_FRAME * self.in_flight)
        await self.drained
        return self.replies, time.perf_counter() - start

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        count, end = complete_frames(self.buffer)
        del self.buffer[:end]
        self.replies += count
        self.outstanding -= count
        if time.perf_counter() < self.deadline:
            assert self.transport is not None
            self.transport.write(FLOOR_FRAME * count)  # one new request per reply
            self.outstanding += count
        elif self.outstanding == 0 and self.drained is not None:
            self.drained.set_result(None)



def serve_protocol(protocol: Callable[[], asyncio.Protocol],
                   publish: Callable[[str], None], unix_name: str | None = None) -> None:
    """Serve ``protocol`` on an asyncio loop, on a free port of HOST (or at the Unix
    socket ``unix_name``), for ever."""
    async def serve_forever() -> None:
        loop = asyncio.get_running_loop()
        if unix_name is not None:
            server = await loop.create_unix_server(protocol, unix_name)
            publish(f"unix://{unix_name}")
        else:
            server = await loop.create_server(protocol, HOST, 0)
            publish(tcp_address(server.sockets[0].getsockname()[1]))
        await server.serve_forever()

    asyncio.run(serve_forever())

def receive_exactly(sock: socket.socket, size: int) -> bytes:
    data = sock.recv(size)
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the echo server closed the connection")
        data += chunk
    return data


class Floor(Implementation):
    key = "floor"
    computes = False
    threads_note = ("one blocking socket per thread (a raw socket has no request ids "
                    "to share one); the server is one asyncio loop")
    has_async_client = True

    def serve(self, publish: Callable[[str], None]) -> None:
        serve_protocol(EchoServerProtocol, publish)

    def connect(self, address: str) -> SyncClient:
        # The sync floor is the least a blocking client can do: one sendall, one recv.
        # asyncio's server sets TCP_NODELAY on its side; set it here too.
        sock = socket.create_connection((HOST, port_of(address)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def echo(a: int, b: int) -> bytes:
            sock.sendall(FLOOR_FRAME)
            return receive_exactly(sock, len(FLOOR_FRAME))

        return SyncClient(add=echo, close=sock.close)

    def in_flight_rate(self, address: str, duration: float) -> float:
        async def measure() -> float:
            transport, client = await asyncio.get_running_loop().create_connection(
                lambda: PipelinedEchoClient(IN_FLIGHT), HOST, port_of(address))
            try:
                await client.run_for(ASYNC_WARMUP_SECONDS)
                replies, elapsed = await client.run_for(duration)
            finally:
                transport.close()
            return replies / elapsed

        return asyncio.run(measure())


class FloorUnix(Floor):
    key = "floor-unix"
    scenarios = "A"
    has_async_client = False

    def serve(self, publish: Callable[[str], None]) -> None:
        # An abstract name (Linux): no file to clean up, gone with the process.
        serve_protocol(EchoServerProtocol, publish, unix_name=f"\0bingfa-bench-{os.getpid()}")

    def connect(self, address: str) -> SyncClient:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(address.removeprefix("unix://"))

        def echo(a: int, b: int) -> bytes:
            sock.sendall(FLOOR_FRAME)
            return receive_exactly(sock, len(FLOOR_FRAME))

        return SyncClient(add=echo, close=sock.close)


class FloorPolling(Floor):
    key = "floor-poll"
    scenarios = "A"
    has_async_client = False

    def connect(self, address: str) -> SyncClient:
        # The floor's client, polling for its answer for up to POLL_SECONDS
        # before it blocks, the way bingfa's client does by default.
        sock = socket.create_connection((HOST, port_of(address)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        size = len(FLOOR_FRAME)

        def echo(a: int, b: int) -> bytes:
            sock.sendall(FLOOR_FRAME)
            end = time.perf_counter() + POLL_SECONDS
            while True:
                try:
                    data = sock.recv(size, socket.MSG_DONTWAIT)
                    break
                except BlockingIOError:
                    if time.perf_counter() > end:
                        data = sock.recv(size)
                        break
            if not data:
                raise ConnectionError("the echo server closed the connection")
            if len(data) < size:
                data += receive_exactly(sock, size - len(data))
            return data

        return SyncClient(add=echo, close=sock.close)


def reader_thread_client(sock: socket.socket, take: Callable[[bytes], bytes],
                         add: Callable[[int, int], Any]) -> SyncClient:
    """A client of one socket shared by all threads, ``add`` their side of it.

    One reader thread reads what arrives and hands it, after what was left
    before, to ``take``, which wakes the callers whose answers are whole and
    returns the rest.
    """
    def read() -> None:
        pending = b""
        while True:
            try:
                data = sock.recv(1 << 16)
            except OSError:
                return
            if not data:
                return
            pending = take(pending + data)

    def close() -> None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        reader.join()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return SyncClient(add=add, close=close)

class FloorShared(Floor):
    key = "floor-shared"
    scenarios = "B"
    has_async_client = False
    shares_connection = True
    threads_note = ("one raw socket for all threads: a frame's first byte names its thread, "
                    "a reader thread wakes that thread; no encoding, no lookup by call id")

    def connect(self, address: str) -> SyncClient:
        sock = socket.create_connection((HOST, port_of(address)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        header, payload = FLOOR_FRAME[:4], FLOOR_FRAME[4:]
        size = len(FLOOR_FRAME)
        send_lock = threading.Lock()
        waiters: list[threading.Lock] = []  # by thread number, the byte each frame starts with
        mine = threading.local()

        def wake_callers(pending: bytes) -> bytes:
            whole = len(pending) - len(pending) % size
            for start in range(0, whole, size):
                waiters[pending[start + 4]].release()
            return pending[whole:]

        def echo(a: int, b: int) -> bytes:
            try:
                frame, waiter = mine.frame, mine.waiter
            except AttributeError:
                waiter = threading.Lock()
                waiter.acquire()
                with send_lock:
                    frame = header + bytes([len(waiters)]) + payload[1:]
                    waiters.append(waiter)
                mine.frame, mine.waiter = frame, waiter
            with send_lock:
                sock.sendall(frame)
            waiter.acquire()
            return frame

        return reader_thread_client(sock, wake_callers, echo)



class MsgpackCallServer(asyncio.Protocol):
    """floor-msgpack's server: decodes each call, runs it, answers all of one read at once."""

    def __init__(self) -> None:
        import msgpack

        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.methods = {"add": add}
        self.pack = msgpack_packer()
        self.unpack = msgpack.unpackb

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        answers = []
        pos, end = 0, len(buffer)
        while end - pos >= 4:
            size = int.from_bytes(buffer[pos:pos + 4], "big")
            if end - pos - 4 < size:
                break
            call_id, name, args = self.unpack(buffer[pos + 4:pos + 4 + size])
            pos += 4 + size
            body = self.pack([call_id, self.methods[name](*args)])
            answers.append(len(body).to_bytes(4, "big") + body)
        del buffer[:pos]
        if answers and self.transport is not None:
            self.transport.write(b"".join(answers))


def msgpack_packer() -> Callable[[Any], bytes]:
    import msgpack

    return msgpack.Packer(use_bin_type=True).pack  # type: ignore[no-any-return]


class FloorMsgpack(Floor):
    key = "floor-msgpack"
    scenarios = "AB"
    computes = True
    has_async_client = False
    shares_connection = True
    threads_note = ("one raw socket for all threads, calls in msgpack matched by call id, "
                    "a reader thread waking the caller; the server decodes, looks up, encodes")

    def serve(self, publish: Callable[[str], None]) -> None:
        serve_protocol(MsgpackCallServer, publish)

    def connect(self, address: str) -> SyncClient:
        import msgpack

        sock = socket.create_connection((HOST, port_of(address)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        send_lock = threading.Lock()
        waiting: dict[int, list[Any]] = {}  # call id -> [the caller's lock, the answer]
        call_ids = itertools.count(1)
        mine = threading.local()

        def answer_callers(pending: bytes) -> bytes:
            pos, end = 0, len(pending)
            while end - pos >= 4:
                size = int.from_bytes(pending[pos:pos + 4], "big")
                if end - pos - 4 < size:
                    break
                call_id, value = msgpack.unpackb(pending[pos + 4:pos + 4 + size])
                pos += 4 + size
                slot = waiting.pop(call_id)
                slot[1] = value
                slot[0].release()
            return pending[pos:]

        def call(a: int, b: int) -> Any:
            try:
                pack, lock = mine.pack, mine.lock
            except AttributeError:
                pack, lock = mine.pack, mine.lock = msgpack_packer(), threading.Lock()
                lock.acquire()
            call_id = next(call_ids)
            body = pack([call_id, "add", [a, b]])
            slot = waiting[call_id] = [lock, None]
            with send_lock:
                sock.sendall(len(body).to_bytes(4, "big") + body)
            lock.acquire()
            return slot[1]

        return reader_thread_client(sock, answer_callers, call)

    def connect_one_caller(self, address: str) -> SyncClient:
        # One caller needs no reader thread: it sends its call and reads the answer.
        import msgpack

        sock = socket.create_connection((HOST, port_of(address)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pack, unpack = msgpack_packer(), msgpack.unpackb
        call_ids = itertools.count(1)

        def call(a: int, b: int) -> Any:
            call_id = next(call_ids)
            body = pack([call_id, "add", [a, b]])
            sock.sendall(len(body).to_bytes(4, "big") + body)
            data = sock.recv(1 << 16)  # the whole answer, almost always
            if len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "big"):
                data += receive_exactly(sock, 4 - len(data)) if len(data) < 4 else b""
                data += receive_exactly(sock, 4 + int.from_bytes(data[:4], "big") - len(data))
            answer_id, value = unpack(data[4:])
            if answer_id != call_id:
                raise RuntimeError(f"floor-msgpack: answer {answer_id} to call {call_id}")
            return value

        return SyncClient(add=call, close=sock.close)


# multiprocessing.connection ---------------------------------------------------


def answer_mp_calls(conn: Any) -> None:
    """Server side of one multiprocessing connection: (method, args) in, result out."""
    methods = {"add": add}
    with conn:
        while True:
            try:
                method, args = conn.recv()
            except EOFError:
                return
            conn.send(methods[method](*args))


class MultiprocessingConnection(Implementation):
    key = "mp.connection"
    threads_note = ("one Client per thread: a Connection is not thread-safe; "
                    "the server answers each connection in a thread of its own")

    def serve(self, publish: Callable[[str], None]) -> None:
        from multiprocessing.connection import Listener

        # The default backlog of 1 drops some of scenario B's 8 simultaneous connects;
        # a client whose handshake ACK was dropped can then wait forever.
        with Listener((HOST, 0), backlog=LISTEN_BACKLOG, authkey=MP_AUTHKEY) as listener:
            publish(tcp_address(listener.address[1]))
            while True:
                conn = listener.accept()
                threading.Thread(target=answer_mp_calls, args=(conn,), daemon=True).start()

    def connect(self, address: str) -> SyncClient:
        from multiprocessing.connection import Client

        conn = Client((HOST, port_of(address)), authkey=MP_AUTHKEY)

        def call_add(a: int, b: int) -> int:
            conn.send(("add", (a, b)))
            return conn.recv()

        return SyncClient(add=call_add, close=conn.close)


# rpyc -------------------------------------------------------------------------


class Rpyc(Implementation):
    key = "rpyc"
    modules = ("rpyc",)
    shares_connection = True
    threads_note = ("one shared connection: rpyc's Connection takes a send lock and hands "
                    "replies to their callers by sequence number, so threads may share it "
                    "(no BgServingThread: nothing calls back into the client)")

    def serve(self, publish: Callable[[str], None]) -> None:
        import rpyc
        from rpyc.utils.server import ThreadedServer

        class CalculatorService(rpyc.Service):
            def exposed_add(self, a: int, b: int) -> int:
                return a + b

        server = ThreadedServer(CalculatorService, hostname=HOST, port=0)
        publish(tcp_address(server.port))
        server.start()

    def connect(self, address: str) -> SyncClient:
        import rpyc

        conn = rpyc.connect(HOST, port_of(address))
        # Looked up once: every ``conn.root.add`` would cost a round trip of its own.
        return SyncClient(add=conn.root.add, close=conn.close)


# Pyro5 ------------------------------------------------------------------------


class Pyro(Implementation):
    modules = ("Pyro5", "serpent", "msgpack")
    threads_note = ("one Proxy per thread, as Pyro5 documents (a proxy belongs to the "
                    "thread that made it); the daemon serves them from its thread pool")

    def __init__(self, serializer: str) -> None:
        self.serializer = serializer
        self.key = f"pyro5-{serializer}"

    def serve(self, publish: Callable[[str], None]) -> None:
        from Pyro5.api import Daemon, expose

        @expose
        class ExposedCalculator:
            def add(self, a: int, b: int) -> int:
                return a + b

        with Daemon(host=HOST, port=0) as daemon:
            daemon.register(ExposedCalculator(), objectId=PYRO_OBJECT_ID)
            publish(tcp_address(daemon.sock.getsockname()[1]))
            daemon.requestLoop()

    def connect(self, address: str) -> SyncClient:
        from Pyro5.api import Proxy

        proxy = Proxy(f"PYRO:{PYRO_OBJECT_ID}@{HOST}:{port_of(address)}")
        proxy._pyroSerializer = self.serializer
        proxy._pyroBind()
        return SyncClient(add=proxy.add, close=proxy._pyroRelease)


# xmlrpc -----------------------------------------------------------------------


class XmlRpc(Implementation):
    key = "xmlrpc"
    threads_note = ("one ServerProxy per thread: a ServerProxy (and its HTTPConnection) is "
                    "not thread-safe; ThreadingMixIn serves each connection in a thread")

    def serve(self, publish: Callable[[str], None]) -> None:
        from socketserver import ThreadingMixIn
        from xmlrpc.server import SimpleXMLRPCRequestHandler, SimpleXMLRPCServer

        class KeepAliveHandler(SimpleXMLRPCRequestHandler):
            # HTTP/1.0 (the default) closes the connection after every call, which
            # would time TCP set-up instead of RPC; the client keeps HTTP/1.1 alive.
            protocol_version = "HTTP/1.1"
            # The response goes out as a header write and a body write: without
            # TCP_NODELAY, Nagle's algorithm holds the body for the client's delayed ACK.
            disable_nagle_algorithm = True

        class ThreadedXMLRPCServer(ThreadingMixIn, SimpleXMLRPCServer):
            daemon_threads = True
            request_queue_size = LISTEN_BACKLOG  # the default, 5, is less than 8 connects

        with ThreadedXMLRPCServer((HOST, 0), requestHandler=KeepAliveHandler,
                                  logRequests=False) as server:
            server.register_function(add)
            publish(tcp_address(server.server_address[1]))
            server.serve_forever()

    def connect(self, address: str) -> SyncClient:
        from xmlrpc.client import ServerProxy

        proxy = ServerProxy(f"http://{HOST}:{port_of(address)}/")
        return SyncClient(add=proxy.add, close=proxy("close"))


# gRPC -------------------------------------------------------------------------


async def grpc_add(request: bytes, context: Any) -> bytes:
    a, b = msgpack.unpackb(request)
    return msgpack.packb(a + b)


class Grpc(Implementation):
    key = "grpc"
    modules = ("grpc",)
    shares_connection = True
    threads_note = ("one shared Channel: gRPC channels are thread-safe and multiplex "
                    "calls as HTTP/2 streams; the server is grpc.aio")
    has_async_client = True

    def serve(self, publish: Callable[[str], None]) -> None:
        import grpc

        async def serve_forever() -> None:
            # Generic handler on raw bytes (no serializers), so no .proto compilation.
            handler = grpc.method_handlers_generic_handler(
                "bench.Calculator", {"Add": grpc.unary_unary_rpc_method_handler(grpc_add)})
            server = grpc.aio.server()
            server.add_generic_rpc_handlers((handler,))
            port = server.add_insecure_port(f"{HOST}:0")
            await server.start()
            publish(tcp_address(port))
            await server.wait_for_termination()

        asyncio.run(serve_forever())

    def connect(self, address: str) -> SyncClient:
        import grpc

        channel = grpc.insecure_channel(f"{HOST}:{port_of(address)}")
        grpc.channel_ready_future(channel).result(timeout=10)
        stub = channel.unary_unary(GRPC_METHOD)

        def call_add(a: int, b: int) -> int:
            return msgpack.unpackb(stub(msgpack.packb((a, b))))

        return SyncClient(add=call_add, close=channel.close)

    async def aconnect(self, address: str) -> AsyncClient:
        import grpc

        channel = grpc.aio.insecure_channel(f"{HOST}:{port_of(address)}")
        await channel.channel_ready()
        stub = channel.unary_unary(GRPC_METHOD)

        async def call_add(a: int, b: int) -> int:
            return msgpack.unpackb(await stub(msgpack.packb((a, b))))

        return AsyncClient(add=call_add, aclose=channel.close)


# bingfa -----------------------------------------------------------------------


def bingfa_rpc_problem() -> str | None:
    """Why bingfa.rpc cannot be benchmarked yet (it is being built), or None."""
    try:
        import bingfa.rpc as rpc

        for name in ("serve", "connect", "aconnect"):
            getattr(rpc, name)
    except (ImportError, AttributeError):
        return "bingfa.rpc: not available yet"
    except Exception as error:
        # A half-edited package can fail to import in other ways; still measure the peers.
        return f"bingfa.rpc: not available yet ({type(error).__name__}: {error})"
    return None


class Bingfa(Implementation):
    key = "bingfa"
    shares_connection = True
    threads_note = "one shared client: bingfa.rpc.connect multiplexes calls from many threads"
    has_async_client = True

    def missing(self) -> str | None:
        return bingfa_rpc_problem()

    def serve(self, publish: Callable[[str], None]) -> None:
        import bingfa.rpc

        # add() computes and returns: marked quick, it runs on the server's
        # event loop instead of hopping to a pool thread and back.
        server = bingfa.rpc.serve({"add": bingfa.rpc.quick(add)}, f"tcp://{HOST}:0")
        publish(server.address)
        server.serve_forever()

    def connect(self, address: str) -> SyncClient:
        import bingfa.rpc

        client = bingfa.rpc.connect(address)
        return SyncClient(add=client.add, close=client.close)

    async def aconnect(self, address: str) -> AsyncClient:
        import bingfa.rpc

        client = await bingfa.rpc.aconnect(address)
        return AsyncClient(add=client.add, aclose=client.aclose)


class BingfaPlain(Bingfa):
    key = "bingfa-plain"
    threads_note = ("one shared client, as bingfa; the server's add is a plain function "
                    "(not marked quick), as most served functions are")

    def serve(self, publish: Callable[[str], None]) -> None:
        import bingfa.rpc

        # Plain: what users serve without thinking about where it runs.
        server = bingfa.rpc.serve({"add": add}, f"tcp://{HOST}:0")
        publish(server.address)
        server.serve_forever()


class BingfaTcp(Bingfa):
    key = "bingfa-tcp"
    scenarios = "AB"
    has_async_client = False
    threads_note = "one shared client, as bingfa, kept on TCP (unix_when_local=False)"

    def connect(self, address: str) -> SyncClient:
        import bingfa.rpc

        client = bingfa.rpc.connect(address, unix_when_local=False)
        return SyncClient(add=client.add, close=client.close)


class BingfaNoPolling(Bingfa):
    key = "bingfa-nopoll"
    scenarios = "A"
    has_async_client = False

    def connect(self, address: str) -> SyncClient:
        import bingfa.rpc

        client = bingfa.rpc.connect(address, spin=0)
        return SyncClient(add=client.add, close=client.close)


BINGFA = "bingfa"
BINGFA_PLAIN = "bingfa-plain"
OURS = (BINGFA, BINGFA_PLAIN)  # the rows the ratio columns and the targets are about
FLOOR = "floor"
FLOOR_SHARED = "floor-shared"
FLOOR_MSGPACK = "floor-msgpack"
IMPLEMENTATIONS: dict[str, Implementation] = {
    impl.key: impl for impl in (
        Floor(), FloorUnix(), FloorPolling(), FloorShared(), FloorMsgpack(),
        MultiprocessingConnection(), Rpyc(), Pyro("serpent"), Pyro("msgpack"), XmlRpc(), Grpc(),
        Bingfa(), BingfaPlain(), BingfaTcp(), BingfaNoPolling())}
PEERS = [key for key in IMPLEMENTATIONS if key != BINGFA]


# --- server processes ----------------------------------------------------------


def exit_when_parent_goes() -> None:
    """In a server process: exit as soon as stdin, a pipe from the parent, closes.

    That happens when the parent stops us and also when it dies, even by SIGKILL,
    so no server outlives a benchmark run.
    """
    def wait_for_eof() -> None:
        sys.stdin.buffer.read()
        os._exit(0)

    threading.Thread(target=wait_for_eof, daemon=True).start()


def serve_in_this_process(key: str, address_file: Path) -> None:
    """Entry point of ``--serve``: serve ``key`` and write its address to the file."""
    exit_when_parent_goes()

    def publish(address: str) -> None:
        # Write and rename, so the parent never reads a half-written address.
        partial = address_file.with_suffix(".partial")
        partial.write_text(address)
        partial.replace(address_file)

    IMPLEMENTATIONS[key].serve(publish)


class ServerProcess:
    """One implementation's server in a child process, stopped for sure by ``stop``."""

    def __init__(self, key: str, scratch: Path) -> None:
        self.key = key
        self.address_file = scratch / f"{key}.address"
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve", key,
             "--port-file", str(self.address_file)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        try:
            self.address = self._wait_for_address()
        except BaseException:
            self.stop()  # the caller never gets this object, so stop it here
            raise

    def _wait_for_address(self) -> str:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while not self.address_file.exists():
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.key} server exited with {self.process.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.key} server published no address in "
                                   f"{SERVER_START_TIMEOUT:.0f} s")
            time.sleep(0.02)
        return self.address_file.read_text()

    def stop(self) -> None:
        stop_child(self.process)


def stop_child(process: subprocess.Popen[bytes]) -> None:
    """Close a child's stdin (it exits at once), then terminate it, then kill it."""
    if process.stdin is not None:
        with contextlib.suppress(OSError):
            process.stdin.close()
    for escalate in (lambda: None, process.terminate, process.kill):
        escalate()
        try:
            process.wait(timeout=3)
            return
        except subprocess.TimeoutExpired:
            pass


# The process id of each implementation's server, for the CPU time it uses.
SERVER_PIDS: dict[str, int] = {}


def start_servers(keys: list[str], scratch: Path,
                  stack: contextlib.ExitStack) -> dict[str, str]:
    """Start a server per implementation; return the addresses of those that started."""
    addresses = {}
    for key in keys:
        try:
            server = ServerProcess(key, scratch)
        except (RuntimeError, TimeoutError) as error:
            print(f"{key}: server did not start ({error}); skipped")
            continue
        stack.callback(server.stop)
        addresses[key] = server.address
        SERVER_PIDS[key] = server.process.pid
    return addresses


# --- a busy host ---------------------------------------------------------------


def busy_loop() -> None:
    """Entry point of ``--busy-loop``: keep one CPU busy until the parent goes."""
    exit_when_parent_goes()
    while True:
        pass


def start_busy_loops(count: int, stack: contextlib.ExitStack) -> None:
    """``count`` processes spinning on the CPU for the whole run (``--busy``).

    Each is stopped when ``stack`` closes (the end of the run, an error,
    Ctrl-C), and exits by itself when this script dies, even by SIGKILL: its
    stdin is a pipe from us, and it exits when the pipe closes.
    """
    for _ in range(count):
        process = subprocess.Popen([sys.executable, str(Path(__file__).resolve()),
                                    "--busy-loop"], stdin=subprocess.PIPE,
                                   stdout=subprocess.DEVNULL)
        stack.callback(stop_child, process)


def load() -> dict[str, float]:
    """The load averages, and how many tasks are running right now."""
    one, five, fifteen = os.getloadavg()
    running = 0.0
    with contextlib.suppress(OSError, ValueError, IndexError):
        running = float(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
    return {"1min": one, "5min": five, "15min": fifteen, "running": running}


def print_load(when: str) -> dict[str, float]:
    now = load()
    print(f"load {when}: {now['1min']:.2f} {now['5min']:.2f} {now['15min']:.2f} "
          f"(1, 5, 15 min), {now['running']:.0f} running")
    return now


# --- the scenarios -------------------------------------------------------------


def check_answer(key: str, client: SyncClient) -> None:
    answer = client.add(20, 22)
    if IMPLEMENTATIONS[key].computes and answer != 42:
        raise RuntimeError(f"{key}: add(20, 22) returned {answer!r}")


def percentile(ordered: list[int], fraction: float) -> int:
    """Nearest-rank percentile of an ascending list."""
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def sequential_latencies(key: str, address: str, calls: int) -> dict[str, float]:
    """Scenario A, one repeat: p50 and p99 of ``calls`` timed calls, in microseconds."""
    client = IMPLEMENTATIONS[key].connect_one_caller(address)
    try:
        check_answer(key, client)
        call = client.add
        for _ in range(WARMUP_CALLS):
            call(1, 2)
        latencies = [0] * calls
        clock = time.perf_counter_ns
        for index in range(calls):
            start = clock()
            call(1, 2)
            latencies[index] = clock() - start
    finally:
        client.close()
    latencies.sort()
    return {"p50": percentile(latencies, 0.50) / 1e3, "p99": percentile(latencies, 0.99) / 1e3}


@dataclass
class CpuUse:
    """CPU time per call of one repeat, on each side, and how many CPUs the two used."""

    client_us: float
    server_us: float
    cpus: float


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds process ``pid`` has used (Linux /proc), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def threads_rate(key: str, address: str, duration: float,
                 cpu_use: list[CpuUse] | None = None) -> float:
    """Scenario B, one repeat: calls/s of THREADS threads calling for ``duration`` s.

    With ``cpu_use``, appends the CPU time the calls took in this process and in
    the server's (SERVER_PIDS) over the timed window, where /proc can tell.
    """
    implementation = IMPLEMENTATIONS[key]
    shared = implementation.connect(address) if implementation.shares_connection else None
    window: dict[str, float] = {}
    server_pid = SERVER_PIDS.get(key)

    def start() -> None:
        window["start"] = time.perf_counter()
        window["client_cpu"] = time.process_time()
        server_cpu = None if server_pid is None else process_cpu_seconds(server_pid)
        if server_cpu is not None:
            window["server_cpu"] = server_cpu

    # The barrier's action runs once, when the last thread is connected and warm:
    # every thread's window starts from that one instant.
    start_line = threading.Barrier(THREADS, action=start, timeout=SETUP_LIMIT)
    counts = [0] * THREADS
    ends = [0.0] * THREADS
    errors: list[BaseException] = []

    def call_in_a_loop(index: int) -> None:
        try:
            # Per-thread clients are made in their thread: Pyro5 proxies belong to one.
            client = shared or implementation.connect(address)
            try:
                check_answer(key, client)
                call = client.add
                for _ in range(THREAD_WARMUP_CALLS):
                    call(1, 2)
                start_line.wait()
                deadline = window["start"] + duration
                calls = 0
                while time.perf_counter() < deadline:
                    call(1, 2)
                    calls += 1
                counts[index], ends[index] = calls, time.perf_counter()
            finally:
                if client is not shared:
                    client.close()
        except BaseException as error:
            start_line.abort()
            errors.append(error)

    threads = [threading.Thread(target=call_in_a_loop, args=(index,), daemon=True)
               for index in range(THREADS)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=SETUP_LIMIT + duration + HANG_GRACE)
            if thread.is_alive():
                raise TimeoutError(f"{key}: a client thread hung in {where(thread)}")
    finally:
        if shared is not None:
            shared.close()
    first_real_error = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
    if errors:
        raise (first_real_error or errors)[0]
    calls, elapsed = sum(counts), max(ends) - window["start"]
    server_cpu = None if server_pid is None else process_cpu_seconds(server_pid)
    if cpu_use is not None and calls and server_cpu is not None and "server_cpu" in window:
        client = time.process_time() - window["client_cpu"]
        server = server_cpu - window["server_cpu"]
        cpu_use.append(CpuUse(client / calls * 1e6, server / calls * 1e6,
                              (client + server) / elapsed))
    return calls / elapsed


def where(thread: threading.Thread) -> str:
    """The innermost frames of a thread's stack, for the report of a hung call."""
    frame = sys._current_frames().get(thread.ident or 0)
    if frame is None:
        return "?"
    innermost = traceback.extract_stack(frame)[-3:]
    return " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(innermost))


def in_flight_rate(key: str, address: str, duration: float) -> float:
    """Scenario C, one repeat: calls/s with IN_FLIGHT calls in flight on one connection."""
    return IMPLEMENTATIONS[key].in_flight_rate(address, duration)


@dataclass
class ScenarioRun:
    """Each implementation's per-repeat results in one scenario, and what failed."""

    samples: dict[str, list[Any]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)


def with_time_limit(measure: Callable[[str], Any], key: str, seconds: float) -> Any:
    """``measure(key)`` in a thread of its own, so that a hung call fails the row
    instead of hanging the whole run (and its servers stay stoppable)."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = measure(key)
        except BaseException as error:
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TimeoutError(f"{key}: no result in {seconds:.0f} s, stuck in {where(thread)}")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def run_interleaved(keys: list[str], repeats: int, measure: Callable[[str], Any],
                    time_limit: float) -> ScenarioRun:
    """Run ``measure`` for every implementation, ``repeats`` times, in rotating order.

    Rotation keeps any one implementation from always running right after the
    same neighbour (a peer that leaves the machine hot or busy slows whoever
    follows). An implementation that fails or hangs is reported and left out
    from then on.
    """
    run = ScenarioRun(samples={key: [] for key in keys})
    for repeat in range(repeats if keys else 0):
        shift = repeat % len(keys)
        for key in keys[shift:] + keys[:shift]:
            if key in run.failures:
                continue
            try:
                run.samples[key].append(with_time_limit(measure, key, time_limit))
            except Exception as error:
                run.failures[key] = f"{type(error).__name__}: {error}"
                print(f"  {key}: failed, left out: {run.failures[key]}")
    for key in run.failures:
        del run.samples[key]
    return run


# --- reporting -------------------------------------------------------------------


def print_heading(title: str) -> None:
    print(f"\n== {title} ==")


def print_table(columns: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in [columns, *rows]) for i in range(len(columns))]
    for row in [columns, *rows]:
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:],
                                                                          strict=True)]
        print("  " + "  ".join(cells))


def ratios(values: dict[str, float], over: float | None) -> dict[str, float]:
    """Each value divided by ``over`` (none without it)."""
    return {key: value / over for key, value in values.items()} if over else {}


def print_comparison(columns: list[str], rows: dict[str, list[str]],
                     ours_over_peer: dict[str, dict[str, float]], meaning: str) -> None:
    """The table, with a column per bingfa row measured: its value over each peer's."""
    ours = [key for key in OURS if ours_over_peer.get(key)]
    names = {BINGFA: "quick/peer", BINGFA_PLAIN: "plain/peer"}
    print_table([*columns, *(names[key] for key in ours)],
                [[*row, *(f"{ours_over_peer[mine][key]:.2f}x" if key != mine else "-"
                          for mine in ours)]
                 for key, row in rows.items()])
    if ours:
        print(f"  (quick = bingfa serving add marked @quick, plain = bingfa-plain serving "
              f"it unmarked; x/peer = {meaning})")


def check_target(label: str, value: float, passed: bool, shown: str) -> dict[str, Any]:
    """Print one target line with its verdict; return it for the JSON report."""
    print(f"  target: {label}: {shown} {'PASS' if passed else 'FAIL'}")
    return {"target": label, "value": round(value, 3), "pass": passed}


def report_latency(run: ScenarioRun) -> dict[str, Any]:
    """Scenario A's table: p50 and p99 (medians over repeats); ratios of the p50s."""
    medians = {key: {q: statistics.median(s[q] for s in samples) for q in ("p50", "p99")}
               for key, samples in run.samples.items()}
    p50s = {key: median["p50"] for key, median in medians.items()}
    floor = p50s.get(FLOOR)
    over_floor = ratios(p50s, floor)
    ours_over_peer = {mine: {key: p50s[mine] / p50 for key, p50 in p50s.items()}
                      for mine in OURS if mine in p50s}
    rows = {}
    for key, median in medians.items():
        repeats = [s["p50"] for s in run.samples[key]]
        rows[key] = [key, f"{median['p50']:.1f}", f"{median['p99']:.1f}",
                     f"{min(repeats):.1f}..{max(repeats):.1f}",
                     f"{over_floor[key]:.2f}x" if over_floor else "-"]
    print_comparison(["implementation", "p50 µs", "p99 µs", "p50 min..max", "p50/floor"], rows,
                     ours_over_peer, "its p50 / the peer's p50: below 1 is faster")
    targets = []
    if floor is not None and any(key in p50s for key in OURS):
        print()
        limit = floor + TARGET_P50_OVER_FLOOR_US
        for key in OURS:
            if key in p50s:
                targets.append(check_target(
                    f"{key} p50 <= floor p50 + {TARGET_P50_OVER_FLOOR_US:g} µs "
                    f"(= {limit:.1f} µs)", p50s[key], p50s[key] <= limit,
                    f"{p50s[key]:.1f} µs"))
    return {"unit": "microseconds", "samples": run.samples, "medians": medians,
            "p50_over_floor": over_floor, "ours_p50_over_peer": ours_over_peer,
            "failures": run.failures, "targets": targets}


def report_rate(run: ScenarioRun, notes: dict[str, str] | None = None) -> dict[str, Any]:
    """Scenario B's or C's table: calls/s (median over repeats) and its ratios."""
    medians = {key: statistics.median(samples) for key, samples in run.samples.items()}
    over_floor = ratios(medians, medians.get(FLOOR))
    ours_over_peer = {mine: {key: medians[mine] / rate for key, rate in medians.items()}
                      for mine in OURS if mine in medians}
    rows = {key: [key, f"{rate:,.0f}",
                  f"{min(run.samples[key]):,.0f}..{max(run.samples[key]):,.0f}",
                  f"{over_floor[key]:.2f}x" if over_floor else "-"]
            for key, rate in medians.items()}
    print_comparison(["implementation", "calls/s", "min..max", "x floor"], rows,
                     ours_over_peer, "its calls/s / the peer's: above 1 is faster")
    if notes:
        print("  how the threads call each:")
        for key in medians:
            print(f"    {key}: {notes[key]}")
    return {"unit": "calls per second", "samples": run.samples, "medians": medians,
            "over_floor": over_floor, "ours_over_peer": ours_over_peer,
            "failures": run.failures, "notes": notes or {}}


# A rate target: (which bingfa row, the peer it is measured against or None for an
# absolute figure, the threshold: times the peer's calls/s, or calls/s).
RateTarget = tuple[str, str | None, float]


def rate_targets(medians: dict[str, float], checks: list[RateTarget]) -> list[dict[str, Any]]:
    """Target lines for bingfa's calls/s: absolute (peer None) or times a peer's."""
    checks = [check for check in checks if check[0] in medians]
    if not checks:
        return []
    print()
    targets = []
    for mine, peer, threshold in checks:
        ours = medians[mine]
        if peer is None:
            targets.append(check_target(f"{mine} >= {threshold:,.0f} calls/s", ours,
                                        ours >= threshold, f"{ours:,.0f} calls/s"))
        elif peer in medians:
            times = ours / medians[peer]
            targets.append(check_target(f"{mine} >= {threshold:g}x {peer}", times,
                                        times >= threshold, f"{times:.2f}x"))
        else:
            print(f"  target: {mine} >= {threshold:g}x {peer}: skipped ({peer} not measured)")
    return targets


def threads_targets(busy: int) -> list[RateTarget]:
    """Scenario B's targets: on an idle host, and beside busy-loop processes."""
    if busy:
        # Every CPU has a busy loop to share with: polling and hand-offs cost
        # more, and the bar is leading the peers, for quick and plain alike.
        return [(mine, peer, times) for mine in OURS
                for peer, times in (("rpyc", TARGET_BUSY_THREADS_X_RPYC),
                                    ("pyro5-msgpack", TARGET_BUSY_THREADS_X_PYRO5_MSGPACK))]
    return [
        (BINGFA, FLOOR_SHARED, TARGET_THREADS_X_FLOOR_SHARED),
        (BINGFA, "rpyc", TARGET_THREADS_X_RPYC),
        (BINGFA, "pyro5-msgpack", TARGET_THREADS_X_PYRO5_MSGPACK),
        (BINGFA_PLAIN, "rpyc", TARGET_PLAIN_THREADS_X_RPYC),
    ]


# --- the scenarios, end to end ---------------------------------------------------


def scenario_a(addresses: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    print_heading("A: sequential add, one client")
    print(f"{args.calls:,} timed calls after {WARMUP_CALLS} warm-up calls, each timed; "
          f"medians over {args.repeats} interleaved repeats")
    keys = [key for key in addresses if "A" in IMPLEMENTATIONS[key].scenarios]
    run = run_interleaved(keys, args.repeats,
                          lambda key: sequential_latencies(key, addresses[key], args.calls),
                          time_limit=SETUP_LIMIT + (WARMUP_CALLS + args.calls) * SLOWEST_CALL)
    section = report_latency(run)
    p50s = {key: median["p50"] for key, median in section["medians"].items()}
    # What the echo floor leaves out (encoding, dispatch, the call id) measured
    # on its own: how close any msgpack RPC can come to it here.
    print_beside_floor_msgpack(p50s, FLOOR, lambda figure, base: f"{figure - base:+.1f} µs")
    return section


def scenario_b(addresses: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    print_heading(f"B: {THREADS} threads, one connection")
    print(f"{THREADS} client threads calling add in a loop for {args.duration:g} s; "
          f"medians over {args.repeats} interleaved repeats")
    keys = [key for key in addresses if "B" in IMPLEMENTATIONS[key].scenarios]
    cpu_use: dict[str, list[CpuUse]] = {key: [] for key in keys}
    run = run_interleaved(keys, args.repeats,
                          lambda key: threads_rate(key, addresses[key], args.duration,
                                                   cpu_use[key]),
                          time_limit=2 * SETUP_LIMIT + args.duration + HANG_GRACE)
    notes = {key: IMPLEMENTATIONS[key].threads_note for key in run.samples}
    section = report_rate(run, notes)
    section["cpu_per_call"] = report_cpu_use(
        {key: uses for key, uses in cpu_use.items() if key in run.samples and uses})
    section["targets"] = rate_targets(section["medians"], threads_targets(args.busy))
    # What floor-shared leaves out (encoding, dispatch, matching answers to
    # calls) measured on its own: how close any msgpack RPC can come to it here.
    print_beside_floor_msgpack(section["medians"], FLOOR_SHARED,
                               lambda figure, base: f"{figure / base:.2f}x")
    medians = section["medians"]
    if FLOOR_SHARED in medians and "pyro5-msgpack" in medians:
        # Pyro5 gives each thread a connection and a server thread of its own:
        # what the least work on one shared connection makes against that, here.
        print(f"  floor-shared (the least one shared connection does): "
              f"{medians[FLOOR_SHARED] / medians['pyro5-msgpack']:.2f}x pyro5-msgpack")
    return section


def report_cpu_use(cpu_use: dict[str, list[CpuUse]]) -> dict[str, dict[str, float]]:
    """Print the CPU time a call took on each side, and the CPUs each implementation got.

    On a busy host the calls/s of B are this CPU time per call against the
    CPU share the scheduler gives each implementation's threads: the two
    tell apart a cheaper call from a larger share.
    """
    medians = {key: {"client_us": statistics.median(u.client_us for u in uses),
                     "server_us": statistics.median(u.server_us for u in uses),
                     "cpus": statistics.median(u.cpus for u in uses)}
               for key, uses in cpu_use.items()}
    if medians:
        print("  CPU time per call, client + server (µs, medians), and the CPUs the two used:")
        for key, median in medians.items():
            client, server = median["client_us"], median["server_us"]
            print(f"    {key:<15} {client:6.1f} + {server:6.1f} = {client + server:6.1f}"
                  f"   {median['cpus']:.2f} CPUs")
    return medians


def print_beside_floor_msgpack(figures: dict[str, float], floor: str,
                               compare: Callable[[float, float], str]) -> None:
    """Print floor-msgpack against `floor`, and each of bingfa's against floor-msgpack."""
    if FLOOR_MSGPACK not in figures:
        return
    least = figures[FLOOR_MSGPACK]
    if floor in figures:
        print(f"  floor-msgpack (the least a msgpack RPC does): "
              f"{compare(least, figures[floor])} against {floor}")
    for mine in OURS:
        if mine in figures:
            print(f"  {mine}: {compare(figures[mine], least)} against floor-msgpack")


def scenario_c(addresses: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    print_heading(f"C: {IN_FLIGHT} in flight on one asyncio connection")
    keys = [key for key in addresses if IMPLEMENTATIONS[key].has_async_client]
    print(f"for {args.duration:g} s: floor = {IN_FLIGHT} pipelined frames on one asyncio "
          f"connection; the others = {IN_FLIGHT} tasks each awaiting add in a loop on one "
          f"asyncio client; medians over {args.repeats} interleaved repeats")
    print(f"no asyncio client, not run: {', '.join(sorted(set(addresses) - set(keys))) or '-'}")
    run = run_interleaved(keys, args.repeats,
                          lambda key: in_flight_rate(key, addresses[key], args.duration),
                          time_limit=SETUP_LIMIT + ASYNC_WARMUP_SECONDS + args.duration
                          + HANG_GRACE)
    section = report_rate(run)
    # The in-flight figure is an idle host's target: beside busy loops it is shown only.
    section["targets"] = [] if args.busy else rate_targets(
        section["medians"], [(BINGFA, None, TARGET_IN_FLIGHT_CALLS_PER_S)])
    return section


# --- command line --------------------------------------------------------------------


def name_list(allowed: list[str] | tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [name.strip() for name in text.split(",") if name.strip()]
        unknown = sorted(set(names) - set(allowed))
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated subset of {','.join(allowed)}, got {text!r}")
        return names

    return parse


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text!r}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", type=name_list(SCENARIOS), default=list(SCENARIOS),
                        help="scenarios to run, comma-separated (default: A,B,C)")
    parser.add_argument("--repeats", type=positive_int, default=5,
                        help="interleaved repeats per scenario; medians are reported (default 5)")
    parser.add_argument("--calls", type=positive_int, default=5_000,
                        help="timed calls per repeat in scenario A (default 5000)")
    parser.add_argument("--duration", type=positive_float, default=2.0,
                        help="seconds per repeat in scenarios B and C (default 2)")
    parser.add_argument("--peers", type=name_list(PEERS), default=PEERS,
                        help=f"peers to run beside bingfa (default: {','.join(PEERS)})")
    parser.add_argument("--busy", type=non_negative_int, default=0, metavar="N",
                        help="run N busy-loop processes beside the benchmark for its whole "
                             "run, as on a loaded host (default 0: an idle host)")
    parser.add_argument("--json", type=Path, metavar="PATH",
                        help="also write every sample, median, ratio and target to PATH")
    # The server side of one implementation, started by the benchmark itself.
    parser.add_argument("--serve", choices=list(IMPLEMENTATIONS), help=argparse.SUPPRESS)
    parser.add_argument("--port-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--busy-loop", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args()


def version_of(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, Any]:
    libraries = ("bingfa", "msgpack", "rpyc", "Pyro5", "serpent", "grpcio")
    return {"cpus": os.cpu_count(), "platform": platform.platform(),
            "python": f"{platform.python_implementation()} {platform.python_version()}",
            "libraries": {name: version_of(name) for name in libraries}}


def runnable(keys: list[str]) -> list[str]:
    """The implementations that can run here; print why the others cannot."""
    available = []
    for key in keys:
        why_not = IMPLEMENTATIONS[key].missing()
        if why_not is None:
            available.append(key)
        else:
            print(why_not if key == BINGFA else f"{key}: {why_not}; skipped")
    return available


SCENARIO_RUNNERS = {"A": scenario_a, "B": scenario_b, "C": scenario_c}


def main() -> None:
    args = parse_args()
    if args.busy_loop:
        busy_loop()
        return
    if args.serve:
        serve_in_this_process(args.serve, args.port_file)
        return
    # A SIGTERM unwinds like Ctrl-C does, so servers and busy loops are stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    info = machine()
    libraries = ", ".join(f"{name} {version}" for name, version in info["libraries"].items())
    print(f"machine: {info['cpus']} CPUs, {info['platform']}, {info['python']}; {libraries}")
    keys = runnable([BINGFA, *args.peers])

    report: dict[str, Any] = {"machine": info, "settings": {
        "repeats": args.repeats, "calls": args.calls, "warmup_calls": WARMUP_CALLS,
        "duration": args.duration, "threads": THREADS, "in_flight": IN_FLIGHT,
        "busy": args.busy, "implementations": keys}, "scenarios": {}, "load": {}}
    report["load"]["start"] = print_load("at the start")
    with tempfile.TemporaryDirectory(prefix="bingfa-rpc-bench-") as scratch, \
            contextlib.ExitStack() as children:
        if args.busy:
            print(f"busy: {args.busy} busy-loop processes run beside the benchmark")
            start_busy_loops(args.busy, children)
        addresses = start_servers(keys, Path(scratch), children)
        for scenario in args.only:
            report["scenarios"][scenario] = SCENARIO_RUNNERS[scenario](addresses, args)
            report["load"][scenario] = print_load(f"after {scenario}")

    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
