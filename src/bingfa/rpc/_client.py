"""The thread-safe RPC client: one connection shared by many threads, no reader thread.

Calls are multiplexed by request id. Whichever waiting thread finds the
socket free reads it (the leader) and delivers every answer it finds, until
its own arrives. A lone caller therefore reads its own answer with no thread
switch at all, and it polls the socket for a moment before it sleeps, which
spares it the wake-up of an idle CPU. When many threads share the
connection, answers that arrive together are read together, and their
callers are woken one at a time, each passing the baton to the next as it
leaves; the last one wakes a caller still waiting, to read.

If the connection drops, every waiting call fails with
:class:`ConnectionLostError` at once (the leader sees the socket close), and the
next call connects again. With ``tls=`` the socket is driven by an asyncio
loop in a helper thread instead, since an SSL socket must not be read and
written by two threads at once.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import select
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Iterator
from types import TracebackType
from typing import Any

from .._core._busy import host_busy
from .._core._errors import SerializationError
from .._core._interrupts import start_without_sigint
from .._core._timeouts import limit_seconds
from . import _same_host as same_host
from ._client_core import STREAM_WINDOW, Login, secret_bytes, undecodable_answer
from ._codec import Codec, arguments_error
from ._errors import ConnectionLostError, RPCTimeoutError, rebuild
from ._wire import (
    CALL,
    CANCEL,
    CREDIT,
    END,
    ERROR,
    HEADER,
    HELLO_SIZE,
    ITEM,
    RESULT,
    STREAM,
    WELCOME_SIZE,
    FrameReader,
    pack_header,
    parse_address,
)

__all__ = ["Client", "connect"]

CONNECT_TIMEOUT = 10.0
FOLLOWER_NAP = 0.1
SPIN = 100e-6  # default: seconds a lone reader polls for its answer before it sleeps
SPIN_MISSES = 8  # polls in a row that came up empty: then only every SPIN_PROBE-th read polls
SPIN_PROBE = 16
READ_SIZE = 1 << 18
DONTWAIT = socket.MSG_DONTWAIT
MAX_FRAME = 1 << 31


def open_socket(address: str, timeout: float) -> socket.socket:
    """A connected socket to ``address``; OSError if nobody listens.

    (With TLS the client goes through :class:`_TLSBridge` instead.)
    """
    parsed = parse_address(address)
    if parsed.scheme == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(parsed.path)
        except BaseException:
            sock.close()
            raise
    else:
        sock = socket.create_connection((parsed.host, parsed.port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def switch_to_same_host(sock: socket.socket, codec: Codec, secret: bytes | None,
                        ) -> tuple[socket.socket, Codec]:
    """Over a fresh TCP connection (logged in), ask the server for its Unix socket; if
    this client can reach it, log in there and return it, else the TCP connection.

    (See :mod:`bingfa.rpc._same_host`.) An error of the TCP connection itself
    raises, as a failed handshake would.
    """
    sock.sendall(same_host.ask_frame(codec.reusable_dumps()))
    size = same_host.answer_size(_recv_exactly(sock, HEADER.size))
    name = same_host.name_in(codec.loads, _recv_exactly(sock, size))
    local = same_host.connect_nowait(name) if name is not None else None
    if local is None:
        return sock, codec  # no Unix socket, or not on the server's host after all
    try:
        local.settimeout(sock.gettimeout())
        local_codec = handshake(local, secret)
    except (OSError, ConnectionLostError):
        local.close()  # the server went meanwhile: stay on TCP, which finds out
        return sock, codec
    except BaseException:
        local.close()
        raise
    sock.close()
    return local, local_codec


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionLostError("the server closed the connection during the handshake")
        data += chunk
    return bytes(data)


def handshake(sock: socket.socket, secret: bytes | None) -> Codec:
    """Log in on a fresh plain socket (no TLS); the codec the server speaks.

    Raises:
        AuthenticationError: see :meth:`Login.finish`; ConnectionLostError:
            the server closed the socket before its HELLO.
    """
    login = Login(_recv_exactly(sock, HELLO_SIZE), secret)
    sock.sendall(login.message)
    try:
        answer = _recv_exactly(sock, WELCOME_SIZE)
    except ConnectionLostError:
        answer = b""
    return login.finish(answer, None)


class _Pending:
    """A call waiting for its answer (and, for a stream, its items)."""

    __slots__ = ("done", "error", "items", "lock", "queued", "stream", "value")

    def __init__(self) -> None:
        # Made only when the caller must sleep: a lone caller reads its own
        # answer and never needs one.
        self.lock: threading.Lock | None = None
        self.done = False
        self.value: Any = None
        self.error: BaseException | None = None
        self.stream = False
        self.items: deque[Any] | None = None  # a stream's items not yet taken
        self.queued = False  # answered while asleep: in the connection's wake-up queue

    def wake(self) -> None:
        lock = self.lock
        if lock is not None:
            # (try, not contextlib.suppress: this runs for most calls of a shared
            # client, and suppress costs three Python calls.)
            try:
                lock.release()
            except RuntimeError:  # already awake
                pass


class _Connection:
    """One socket, its pending calls, and the leader/follower reading."""

    def __init__(self, sock: socket.socket, codec: Codec, spin: float) -> None:
        self.sock = sock
        self.codec = codec
        self.spin = spin
        self.spin_misses = 0
        self.pending: dict[int, _Pending] = {}
        # Callers asleep without an answer (one is woken when nobody reads), and
        # callers whose answer came while they slept, woken one at a time in order.
        self.asleep: dict[_Pending, None] = {}
        self.answered: deque[_Pending] = deque()
        self.state = threading.Lock()  # guards both, and the answers delivered into them
        self.ids = itertools.count(1)
        self.send_lock = threading.Lock()
        self.outbox: deque[bytes] = deque()
        self.read_lock = threading.Lock()
        self.reader = FrameReader(codec.loads, undecodable=self._undecodable)
        self.cancels: list[int] = []  # streams to cancel once the reading lets go of state
        # recv() would allocate READ_SIZE bytes for every read; one buffer serves all.
        self.read_buffer = bytearray(READ_SIZE)
        self.read_view = memoryview(self.read_buffer)
        self.dumps = threading.local()  # each thread's reusable encoder
        self.lost: ConnectionLostError | None = None
        sock.settimeout(None)  # blocking, always: deadlines are kept with poll
        self.poller = select.poll()
        self.poller.register(sock, select.POLLIN)
        # The thread that holds read_lock (so that a reader's own sends may read too).
        self.reading_thread: int | None = None
        # For a send that finds the socket full (only the send_lock holder uses them).
        self._writable = select.poll()
        self._writable.register(sock, select.POLLOUT)
        self._readable_or_writable = select.poll()
        self._readable_or_writable.register(sock, select.POLLIN | select.POLLOUT)

    def send(self, frame: bytes) -> None:
        """Send ``frame``, together with whatever other threads queued meanwhile.

        A system call on loopback costs tens of microseconds (it wakes the
        server), so threads that call at the same time share one: a thread
        that finds another sending leaves its frame in the outbox, and the
        sender takes it along before it lets go.
        """
        outbox = self.outbox
        if not outbox and self.send_lock.acquire(blocking=False):
            try:  # alone: straight out, no queue
                try:
                    sent = self.sock.send(frame, DONTWAIT)  # most often all of it, at once
                except BlockingIOError:
                    sent = 0
                if sent != len(frame):
                    self._send_rest(frame, sent)
            except OSError as exc:
                self._lose(f"sending failed: {exc}")
            finally:
                self.send_lock.release()
            frame = b""
        if frame:
            outbox.append(frame)
        while outbox and self.send_lock.acquire(blocking=False):
            try:
                while outbox:
                    frames = [outbox.popleft() for _ in range(len(outbox))]
                    self._send_rest(frames[0] if len(frames) == 1 else b"".join(frames), 0)
            except OSError as exc:
                self._lose(f"sending failed: {exc}")
            finally:
                self.send_lock.release()
            # Frames queued after our last look, while we still held the lock,
            # are ours to send: loop.
        if self.lost is not None:
            raise self.lost

    def _send_rest(self, data: bytes, sent: int) -> None:
        """Write ``data`` from ``sent`` on (``send_lock`` held), reading answers while the
        socket is full.

        The server stops reading a connection whose answers its client does
        not read (that is its backpressure). A thread that blocked in
        ``sendall`` while it is also the one that would read (say it iterates
        a stream and sends a big call) would wait for ever: so while the
        socket takes no more, this thread reads what has arrived, when the
        reading is free or already its own, and hands it out as a reader does.
        """
        sock = self.sock
        view = memoryview(data)[sent:]
        try:
            while view:
                try:
                    view = view[sock.send(view, DONTWAIT):]
                    continue
                except BlockingIOError:
                    pass
                if self.lost is not None:
                    raise self.lost
                me = threading.get_ident()
                reading = self.reading_thread == me or self.read_lock.acquire(blocking=False)
                if not reading:
                    # Another thread reads: it takes the answers out. Look again
                    # now and then, in case it stops and the reading is ours.
                    self._writable.poll(FOLLOWER_NAP * 1000)
                else:
                    ours = self.reading_thread != me
                    self.reading_thread = me
                    try:
                        events = self._readable_or_writable.poll(FOLLOWER_NAP * 1000)
                        if any(event & ~select.POLLOUT for _, event in events):
                            self._read_available()
                    finally:
                        if ours:
                            self.reading_thread = None
                            self.read_lock.release()
                    if self.answered or self.asleep:
                        self._move_on()  # hand out what was read, or the reading
        finally:
            view.release()

    def _read_available(self) -> None:
        """Read what has arrived without waiting (``read_lock`` held), and deliver it."""
        try:
            size = self.sock.recv_into(self.read_buffer, 0, DONTWAIT)
        except BlockingIOError:
            return
        except OSError as exc:
            self._lose(f"the connection broke: {exc}")
            return
        if not size:
            self._lose("the server closed the connection")
            return
        with self.state:
            self._parse(self.read_view[:size].tobytes())
        if self.cancels:
            self._send_cancels()  # queued in the outbox: this thread holds send_lock

    def frame(self, message: list[Any]) -> bytes:
        """``message`` as a frame, with this thread's reused encoder."""
        local = self.dumps
        try:
            dumps = local.fn
        except AttributeError:
            dumps = local.fn = self.codec.reusable_dumps()
        data: bytes = dumps(message)
        return pack_header(len(data)) + data

    def wait_alone(self, call_id: int, pending: _Pending, deadline: float | None) -> bool | None:
        """A lone call's wait for its answer, with as little in the way as can be.

        Called with no other call in flight (the caller looks). With nobody
        reading, the caller reads the socket itself: when what comes is its
        own answer alone in one frame (what a lone call gets), it takes it
        right there, without the machinery that hands answers between threads.
        True: answered; False: the deadline passed; None: wait the general way
        (another call came in meanwhile, the answer is not all there, a
        stream...), with whatever was read already handed out.
        """
        if self.lost is not None or self.reader.buffered:
            return None
        if not self.read_lock.acquire(blocking=False):
            return None
        self.reading_thread = threading.get_ident()
        try:
            size = (self._spin(deadline) if self.spin and not host_busy() else -1)
            if size < 0:
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or not self.poller.poll(remaining * 1000):
                        return False
                size = self.sock.recv_into(self.read_buffer)
            if not size:
                self._lose("the server closed the connection")
                return None
            view = self.read_view
            if size > 4 and HEADER.unpack_from(self.read_buffer)[0] == size - 4:
                try:
                    message = self.codec.loads(view[4:size])
                except Exception:
                    message = None
                if (type(message) is list and len(message) == 3 and message[0] == RESULT
                        and message[1] == call_id):
                    pending.value = message[2]
                    pending.done = True
                    self.pending.pop(call_id, None)
                    return True
            with self.state:
                self._parse(view[:size].tobytes())
            if self.cancels:
                self._send_cancels()
            return None
        except OSError as exc:
            self._lose(f"the connection broke: {exc}")
            return None
        finally:
            self.reading_thread = None
            self.read_lock.release()
            if self.answered or self.asleep:
                self._move_on()  # calls that came in meanwhile: one of them reads now

    def wait(self, pending: _Pending, ready: Any, deadline: float | None) -> bool:
        """Wait until ``ready()``; False if ``deadline`` (monotonic) passed first."""
        try:
            while not ready():
                if self.lost is not None:
                    raise self.lost
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                if self.read_lock.acquire(blocking=False):
                    self.reading_thread = threading.get_ident()
                    try:
                        self._read(ready, deadline)
                    finally:
                        self.reading_thread = None
                        self.read_lock.release()
                    continue
                self._sleep(pending, ready, remaining)
        finally:
            if self.answered or self.asleep:
                self._move_on()
        return True

    def _sleep(self, pending: _Pending, ready: Any, remaining: float | None) -> None:
        """Sleep until an answer for ``pending`` arrives, or the reading is ours to take."""
        lock = pending.lock
        if lock is None:
            lock = threading.Lock()
            lock.acquire()  # released by whoever wakes us
            pending.lock = lock
        with self.state:
            # A second look, under the lock the reader delivers under: an answer
            # that landed, or a reader that let go, is seen here or finds us asleep.
            if ready() or not self.read_lock.locked():
                return
            self.asleep[pending] = None
        try:
            # Never asleep for long: should a wake-up ever go astray, this
            # caller looks again whether the socket needs a reader.
            lock.acquire(timeout=FOLLOWER_NAP if remaining is None
                         else min(remaining, FOLLOWER_NAP))
        finally:
            with self.state:
                self.asleep.pop(pending, None)
                if pending.queued:  # woke on its own before its turn: leave the queue
                    pending.queued = False
                    self.answered.remove(pending)

    def _move_on(self) -> None:
        """Pass the baton as this thread leaves: wake the next answered caller, or a reader.

        Answers that arrive together are handed out one at a time, each woken
        caller waking the next as it leaves. Woken all at once they would only
        queue up for the GIL, and every one of them costs a wake-up twice.
        """
        with self.state:
            answered = self.answered
            if answered:
                follower = answered.popleft()
                follower.queued = False
            elif self.asleep and not self.read_lock.locked():
                follower = next(iter(self.asleep))  # nobody reads: this caller will
            else:
                return
        follower.wake()

    def _read(self, ready: Any, deadline: float | None) -> None:
        sock = self.sock
        while not ready() and self.lost is None:
            if self.answered:
                self._move_on()  # answers are waiting to be handed out: start that first
            try:
                # Only a lone call polls: beside other threads' calls, polling would
                # take the GIL from the very callers it is reading answers for.
                size = (self._spin(deadline)
                        if self.spin and len(self.pending) <= 1 and not host_busy() else -1)
                if size < 0:
                    if deadline is not None:
                        # Wait with poll, not a socket timeout: that would also apply
                        # to another thread's sendall of a big call, and cut it.
                        remaining = deadline - time.monotonic()
                        if remaining <= 0 or not self.poller.poll(remaining * 1000):
                            return
                    size = sock.recv_into(self.read_buffer)
            except OSError as exc:
                self._lose(f"the connection broke: {exc}")
                return
            if not size:
                self._lose("the server closed the connection")
                return
            with self.state:
                self._parse(self.read_view[:size].tobytes())
            if self.cancels:
                self._send_cancels()

    def _spin(self, deadline: float | None) -> int:
        """Poll the socket for a moment before sleeping on it: bytes read, or -1 if none came.

        On a virtual machine an idle CPU is halted, and waking it costs tens
        of microseconds: often more than the call itself. A lone caller that
        keeps its CPU busy for the length of a quick round trip gets its
        answer without that wake-up. Calls slower than the spin stop it: after
        SPIN_MISSES empty polls in a row, only every SPIN_PROBE-th read polls,
        so a connection to slow methods wastes almost no CPU on it.
        """
        misses = self.spin_misses
        if misses >= SPIN_MISSES:
            self.spin_misses = misses + 1
            if misses % SPIN_PROBE:
                return -1
        sock, buffer = self.sock, self.read_buffer
        clock, pause = time.monotonic, os.sched_yield
        end = clock() + self.spin
        if deadline is not None and deadline < end:
            end = deadline
        while True:
            try:
                size = sock.recv_into(buffer, 0, socket.MSG_DONTWAIT)
            except BlockingIOError:
                if clock() > end:
                    self.spin_misses = misses + 1
                    return -1
                # Should the server run on this very CPU, let it answer.
                pause()
            else:
                self.spin_misses = 0
                return size

    def _parse(self, data: bytes) -> None:
        try:
            self.reader.feed(data, self._deliver)
        except Exception as exc:
            self._lose(f"the server sent something that does not parse: {exc}")

    def _undecodable(self, payload: memoryview, exc: Exception) -> None:
        """An answer that does not decode fails its call alone; a stream is cancelled."""
        kind, call_id, error = undecodable_answer(payload, exc)
        pending = self.pending.get(call_id)
        if pending is None:
            return
        if kind == ITEM:
            self.cancels.append(call_id)
        pending.error = error
        pending.done = True
        del self.pending[call_id]
        self._queue_if_asleep(pending)

    def _send_cancels(self) -> None:
        cancels, self.cancels = self.cancels, []
        with contextlib.suppress(ConnectionLostError):
            for call_id in cancels:
                self.send(_frame(self.codec, [CANCEL, call_id]))

    def _deliver(self, message: Any) -> None:
        """Record one answer (with ``state`` held); queue its caller, if asleep, to be woken."""
        kind, call_id = message[0], message[1]
        pending = self.pending.get(call_id)
        if pending is None:
            return  # an answer to a call given up on
        if kind == RESULT:
            pending.value = message[2]
            pending.done = True
            del self.pending[call_id]
        elif kind == ERROR:
            pending.error = rebuild(message[2], message[3], message[4], message[5])
            pending.done = True
            del self.pending[call_id]
        elif kind == STREAM:
            pending.stream = True
            pending.items = deque()
            pending.done = True
        elif kind in (ITEM, END):
            if pending.items is None:
                raise ValueError("a stream item before the stream began")
            pending.items.append(message[2] if kind == ITEM else _END)
            if kind == END:
                del self.pending[call_id]
        # _queue_if_asleep, inline: this runs for every answer.
        if self.asleep.pop(pending, 0) is None:
            pending.queued = True
            self.answered.append(pending)

    def _queue_if_asleep(self, pending: _Pending) -> None:
        if self.asleep.pop(pending, 0) is None:
            pending.queued = True
            self.answered.append(pending)

    def _lose(self, why: str) -> None:
        if self.lost is None:
            self.lost = ConnectionLostError(why)
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
        for pending in list(self.pending.values()):
            pending.wake()

    def close(self) -> None:
        self._lose("the client was closed")
        self.sock.close()


_END = object()


class RemoteStream(Iterator[Any]):
    """The items of a generator on the server, as the client takes them.

    The server runs ahead by at most a window of items; taking items grants it
    more. Closing the stream (or leaving a ``with`` block, or dropping it)
    cancels the generator on the server.
    """

    def __init__(self, client: Client, conn: _Connection, call_id: int, pending: _Pending,
                 timeout: float | None) -> None:
        self._client = client
        self._conn = conn
        self._id = call_id
        self._pending = pending
        self._timeout = timeout
        self._taken = 0
        self._finished = False

    def __iter__(self) -> RemoteStream:
        return self

    def __next__(self) -> Any:
        if self._finished:
            raise StopIteration
        pending = self._pending
        items = pending.items
        assert items is not None
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        if not items and pending.error is None:
            try:
                arrived = self._conn.wait(pending, lambda: bool(items) or pending.error is not None,
                                          deadline)
            except BaseException:
                self._finished = True
                raise
            if not arrived:
                self.close()
                raise RPCTimeoutError(f"no stream item within {self._timeout} s")
        if pending.error is not None and not items:
            self._finished = True
            raise pending.error
        item = items.popleft()
        if item is _END:
            self._finished = True
            raise StopIteration
        self._taken += 1
        if self._taken >= STREAM_WINDOW // 2:
            self._conn.send(_frame(self._conn.codec, [CREDIT, self._id, self._taken]))
            self._taken = 0
        return item

    def close(self) -> None:
        """Stop: the generator on the server is cancelled."""
        if not self._finished:
            self._finished = True
            if self._conn.pending.pop(self._id, None) is not None and self._conn.lost is None:
                with contextlib.suppress(Exception):
                    self._conn.send(_frame(self._conn.codec, [CANCEL, self._id]))

    def __enter__(self) -> RemoteStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def _frame(codec: Codec, message: list[Any]) -> bytes:
    data = codec.dumps(message)
    return pack_header(len(data)) + data


class _TLSBridge:
    """A sync face for :class:`AsyncClient`, whose loop runs in a helper thread.

    Used with ``tls=``: asyncio's TLS runs on memory buffers in one thread,
    where an SSL socket would be read and written by several.
    """

    def __init__(self, address: str, secret: bytes | None, tls: ssl.SSLContext,
                 timeout: float | None) -> None:
        import asyncio

        from ._aclient import AsyncClient

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="bingfa-rpc-tls")
        start_without_sigint(self._thread)
        self._client = AsyncClient(address, secret=secret, tls=tls, timeout=timeout)
        try:
            self._wait(self._client._connection())
        except BaseException:
            self.close()
            raise

    def _wait(self, coro: Any) -> Any:
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any],
             timeout: float | None) -> Any:
        value = self._wait(self._client.call(method, *args, timeout=timeout, **kwargs))
        if hasattr(value, "__anext__"):
            return _SyncStream(self, value)
        return value

    def close(self) -> None:
        if self._loop.is_running():
            with contextlib.suppress(Exception):
                self._wait(self._client.aclose())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
        self._loop.close()


class _SyncStream(Iterator[Any]):
    """An async stream of the TLS bridge, iterated from a thread."""

    def __init__(self, bridge: _TLSBridge, stream: Any) -> None:
        self._bridge = bridge
        self._stream = stream

    def __next__(self) -> Any:
        try:
            return self._bridge._wait(self._stream.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None

    def close(self) -> None:
        """Stop: the generator on the server is cancelled."""
        self._bridge._wait(self._stream.aclose())

    def __enter__(self) -> _SyncStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Client:
    """A connection to a bingfa RPC server, shared safely by any number of threads.

    Call methods as attributes, ``client.add(1, 2)``, or with
    :meth:`call`. See :func:`bingfa.rpc.connect`.
    """

    def __init__(self, address: str, *, secret: bytes | str | None = None,
                 tls: ssl.SSLContext | None = None, timeout: float | None = None,
                 spin: float = SPIN, unix_when_local: bool = True) -> None:
        parsed = parse_address(address)  # ValueError now, not at the first call
        timeout = limit_seconds(timeout)
        if isinstance(spin, bool) or not 0 <= spin <= 1:  # NaN too
            raise ValueError(f"spin must be between 0 and 1 second, got {spin!r}")
        if not isinstance(unix_when_local, bool):
            raise TypeError(f"unix_when_local must be True or False, not {unix_when_local!r}")
        self._ask_same_host = (unix_when_local and tls is None
                               and same_host.worth_asking(parsed))
        self.address = address
        self.timeout = timeout
        self._spin = float(spin)
        self._secret = secret_bytes(secret)
        self._tls = tls
        self._conn: _Connection | None = None
        self._connect_lock = threading.Lock()
        self._closed = False
        self._bridge: _TLSBridge | None = None
        if tls is not None:
            self._bridge = _TLSBridge(address, self._secret, tls, timeout)
        else:
            self._connection()  # connect now: a wrong address or secret fails here

    def _connection(self) -> _Connection:
        conn = self._conn
        if conn is not None and conn.lost is None:
            return conn
        with self._connect_lock:
            if self._closed:
                raise ConnectionLostError("the client is closed")
            conn = self._conn
            if conn is None or conn.lost is not None:
                if conn is not None:
                    conn.sock.close()  # lost: whoever used it has had its error
                sock = open_socket(self.address, CONNECT_TIMEOUT)
                try:
                    sock.settimeout(CONNECT_TIMEOUT)
                    codec = handshake(sock, self._secret)
                    if self._ask_same_host:
                        sock, codec = switch_to_same_host(sock, codec, self._secret)
                except BaseException:
                    sock.close()
                    raise
                conn = self._conn = _Connection(sock, codec, self._spin)
            return conn

    def call(self, method: str, /, *args: Any, timeout: float | None = None,
             **kwargs: Any) -> Any:
        """Call ``method`` on the server with ``args`` and ``kwargs``; its result.

        ``timeout`` (default: the client's) is a deadline that also travels to
        the server, which cancels the handler when it passes. A generator
        method returns a :class:`RemoteStream` to iterate.

        Raises:
            RPCTimeoutError: the deadline passed.
            ConnectionLostError: the connection dropped before the answer came.
            SerializationError: an argument cannot be sent (nothing was sent).
            AttributeError: the server has no such method. Any exception the
                handler raised, rebuilt (see :class:`RemoteError`).
        """
        timeout = self.timeout if timeout is None else limit_seconds(timeout)
        if timeout == 0:
            # The deadline has passed already: fail without sending anything
            # (as gRPC does), rather than start a handler only to cancel it.
            raise RPCTimeoutError(f"{method}() was not sent: its timeout is 0")
        if self._bridge is not None:
            return self._bridge.call(method, args, kwargs, timeout)
        conn = self._conn
        if conn is None or conn.lost is not None:
            conn = self._connection()
        call_id = next(conn.ids)
        try:
            frame = conn.frame([CALL, call_id, method, list(args), kwargs or None, timeout,
                                STREAM_WINDOW])
        except SerializationError as exc:
            err = arguments_error(method, args, kwargs, conn.codec, exc)
            raise err from err.__cause__
        pending = _Pending()
        conn.pending[call_id] = pending
        try:
            conn.send(frame)
            deadline = None if timeout is None else time.monotonic() + timeout
            # The lone call's shortcut; with other calls in flight, the general way.
            answered = (conn.wait_alone(call_id, pending, deadline)
                        if len(conn.pending) == 1 else None)
            if answered is None:
                answered = conn.wait(pending, lambda: pending.done, deadline)
            if not answered:
                raise RPCTimeoutError(f"{method}() did not answer within {timeout} s")
        except BaseException:
            if conn.pending.pop(call_id, None) is not None and conn.lost is None:
                with contextlib.suppress(Exception):
                    conn.send(_frame(conn.codec, [CANCEL, call_id]))
            raise
        if pending.stream:
            # A stream's error (an item this side cannot decode, the generator
            # raising) may already be here with items before it: the stream
            # hands those out first, then raises it.
            return RemoteStream(self, conn, call_id, pending, timeout)
        if pending.error is not None:
            raise pending.error
        return pending.value

    def methods(self) -> dict[str, dict[str, str]]:
        """What the server serves: name -> signature, docstring and kind."""
        result: dict[str, dict[str, str]] = self.call("__methods__")
        return result

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        # A partial (C code) of call(): one Python frame less per call. Kept
        # as an attribute, so later lookups skip __getattr__ altogether.
        method = functools.partial(self.call, name)
        object.__setattr__(self, name, method)
        return method

    def close(self) -> None:
        """Close the connection; calls still waiting get ConnectionLostError."""
        with self._connect_lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
            if self._bridge is not None:
                self._bridge.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def connect(address: str, *, secret: bytes | str | None = None,
            tls: ssl.SSLContext | None = None, timeout: float | None = None,
            spin: float = SPIN, unix_when_local: bool = True) -> Client:
    """Connect to a bingfa RPC server; a thread-safe :class:`Client`.

    Args:
        address: what the server's ``address`` says (``tcp://HOST:PORT`` or
            ``unix:///PATH``).
        secret: the server's secret, when it has one.
        tls: an :class:`ssl.SSLContext` for the client side.
        timeout: the default deadline of every call, in seconds.
        spin: seconds a lone caller polls the socket for its answer before it
            sleeps (100 µs by default; 0 never polls). Answers that come within
            it skip the wake-up of an idle CPU, which is what a quick call
            costs most on a virtual machine; when answers keep taking longer,
            the client stops polling by itself.
        unix_when_local: with a loopback address (``tcp://127.0.0.1:...``,
            ``localhost``, ``::1``, or ``0.0.0.0``) and no TLS, move to the
            server's own Unix socket once connected, when it has one this
            process can reach (a call takes about two thirds of the time);
            False stays on TCP.

    Raises:
        ValueError: an address that does not parse, or a bad ``timeout`` or
            ``spin``. OSError: nobody listens.
        AuthenticationError: a wrong or missing secret.
    """
    return Client(address, secret=secret, tls=tls, timeout=timeout, spin=spin,
                  unix_when_local=unix_when_local)
