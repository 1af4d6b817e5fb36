"""The asyncio RPC client: ``client = await bf.rpc.aconnect(address)``.

Calls in flight share one connection and are matched by request id. Frames
written in one pass of the event loop go out in one system call, and every
frame that arrives in one read is answered in one pass, so 64 calls in flight
cost little more than one.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import ssl
from collections import deque
from collections.abc import AsyncIterator, Awaitable
from types import TracebackType
from typing import Any, cast

from .._core._errors import SerializationError
from .._core._timeouts import limit_seconds
from . import _same_host as same_host
from ._client_core import STREAM_WINDOW, Login, secret_bytes, undecodable_answer
from ._codec import MSGPACK, Codec, arguments_error
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

__all__ = ["AsyncClient", "aconnect"]

CONNECT_TIMEOUT = 10.0
# Frames queued in one pass of the loop leave together, but no more than this
# many: a batch sent early keeps the server busy while the rest is made.
FLUSH_EVERY = 16


class _AsyncStream:
    """A stream's items, fed by the protocol."""

    __slots__ = ("ended", "error", "items", "waiter")

    def __init__(self) -> None:
        self.items: deque[Any] = deque()
        self.ended = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class _Protocol(asyncio.Protocol):
    """Frames in, answers to the futures waiting for them."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.codec: Codec = MSGPACK
        self.dumps = MSGPACK.reusable_dumps()  # the loop's thread only
        self.handshaking: asyncio.Future[bytes] | None = None
        self.expect = 0
        self.buffer = bytearray()  # the handshake's bytes
        self.reader: FrameReader | None = None  # frames, once the handshake is over
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.streams: dict[int, _AsyncStream] = {}
        self.lost: ConnectionLostError | None = None
        self.out: list[bytes] = []
        self.flush_scheduled = False
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)

    async def read_exactly(self, size: int) -> bytes:
        self.expect = size
        waiter: asyncio.Future[bytes] = self.loop.create_future()
        self.handshaking = waiter
        self._check_handshake()  # what is here already settles it (and clears handshaking)
        return await waiter

    def _check_handshake(self) -> None:
        waiter = self.handshaking
        if waiter is not None and not waiter.done() and len(self.buffer) >= self.expect:
            data = bytes(self.buffer[:self.expect])
            del self.buffer[:self.expect]
            self.handshaking = None
            waiter.set_result(data)

    def data_received(self, data: bytes) -> None:
        if self.reader is None:  # the handshake is not over: bytes wait for read_exactly
            self.buffer += data
            self._check_handshake()
            return
        try:
            self.reader.feed(data, self._deliver)
        except Exception as exc:
            self._lose(f"the server sent something that does not parse: {exc}")

    def _deliver(self, message: Any) -> None:
        kind, call_id = message[0], message[1]
        if kind in (ITEM, END, ERROR) and call_id in self.streams:
            stream = self.streams[call_id]
            if kind == ITEM:
                stream.items.append(message[2])
            else:
                if kind == ERROR:
                    stream.error = rebuild(message[2], message[3], message[4], message[5])
                stream.ended = True
                del self.streams[call_id]
            stream.wake()
            return
        future = self.pending.pop(call_id, None)
        if future is None or future.done():
            return
        if kind == RESULT:
            future.set_result(message[2])
        elif kind == ERROR:
            future.set_exception(rebuild(message[2], message[3], message[4], message[5]))
        elif kind == STREAM:
            stream = self.streams[call_id] = _AsyncStream()
            future.set_result(stream)

    def undecodable(self, payload: memoryview, exc: Exception) -> None:
        """An answer that does not decode fails its call alone; a stream is cancelled."""
        kind, call_id, error = undecodable_answer(payload, exc)
        stream = self.streams.pop(call_id, None)
        if stream is not None:
            stream.error = error
            stream.ended = True
            stream.wake()
            if kind == ITEM:
                data = self.dumps([CANCEL, call_id])
                self.write(pack_header(len(data)) + data)
            return
        future = self.pending.pop(call_id, None)
        if future is not None and not future.done():
            future.set_exception(error)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lose("the server closed the connection" if exc is None
                   else f"the connection broke: {exc}")

    def _lose(self, why: str) -> None:
        if self.lost is None:
            self.lost = ConnectionLostError(why)
        for future in self.pending.values():
            if not future.done():
                future.set_exception(self.lost)
        self.pending.clear()
        for stream in self.streams.values():
            stream.error = self.lost
            stream.ended = True
            stream.wake()
        self.streams.clear()
        if self.handshaking is not None and not self.handshaking.done():
            self.handshaking.set_exception(self.lost)
        if self.transport is not None:
            self.transport.abort()

    def write(self, frame: bytes) -> None:
        """Queue a frame; everything queued in one pass of the loop leaves together."""
        if self.lost is not None:
            raise self.lost
        out = self.out
        out.append(frame)
        if len(out) >= FLUSH_EVERY:
            self._flush()  # let the server start on these while we queue the rest
        elif not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_scheduled = False
        if self.out and self.transport is not None and self.lost is None:
            out, self.out = self.out, []
            self.transport.write(b"".join(out) if len(out) > 1 else out[0])


class AsyncRemoteStream(AsyncIterator[Any]):
    """The items of a generator on the server, for ``async for``; see :class:`RemoteStream`."""

    def __init__(self, client: AsyncClient, protocol: _Protocol, call_id: int,
                 stream: _AsyncStream, timeout: float | None) -> None:
        self._client = client
        self._protocol = protocol
        self._id = call_id
        self._stream = stream
        self._timeout = timeout
        self._taken = 0
        self._finished = False

    def __aiter__(self) -> AsyncRemoteStream:
        return self

    async def __anext__(self) -> Any:
        stream = self._stream
        if self._finished:
            raise StopAsyncIteration
        while not stream.items and not stream.ended:
            stream.waiter = self._protocol.loop.create_future()
            try:
                await asyncio.wait_for(stream.waiter, self._timeout)
            except TimeoutError:
                await self.aclose()
                raise RPCTimeoutError(f"no stream item within {self._timeout} s") from None
            except BaseException:
                await self.aclose()
                raise
        if stream.items:
            self._taken += 1
            if self._taken >= STREAM_WINDOW // 2:
                self._protocol.write(self._client._frame([CREDIT, self._id, self._taken]))
                self._taken = 0
            return stream.items.popleft()
        self._finished = True
        if stream.error is not None:
            raise stream.error
        raise StopAsyncIteration

    async def __aenter__(self) -> AsyncRemoteStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        # Dropped without aclose (a `break` out of `async for`): still tell the
        # server, so its generator does not wait for credit for ever.
        if not self._finished and self._protocol.lost is None:
            self._finished = True
            if self._protocol.streams.pop(self._id, None) is not None:
                with contextlib.suppress(Exception):
                    frame = self._client._frame([CANCEL, self._id])
                    self._protocol.loop.call_soon_threadsafe(self._protocol.write, frame)

    async def aclose(self) -> None:
        """Stop: the generator on the server is cancelled."""
        if not self._finished:
            self._finished = True
            if self._protocol.streams.pop(self._id, None) is not None:
                with contextlib.suppress(Exception):
                    self._protocol.write(self._client._frame([CANCEL, self._id]))


class _AsyncMethod:
    __slots__ = ("_client", "_name")

    def __init__(self, client: AsyncClient, name: str) -> None:
        self._client = client
        self._name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._client.call(self._name, *args, **kwargs)

    def __repr__(self) -> str:
        return f"<remote async method {self._name!r}>"


class AsyncClient:
    """A connection to a bingfa RPC server for asyncio code; see :func:`bingfa.rpc.aconnect`.

    ``await client.add(1, 2)`` or ``await client.call("add", 1, 2, timeout=1.0)``.
    """

    def __init__(self, address: str, *, secret: bytes | str | None = None,
                 tls: ssl.SSLContext | None = None, timeout: float | None = None,
                 unix_when_local: bool = True) -> None:
        parsed = parse_address(address)
        timeout = limit_seconds(timeout)
        if not isinstance(unix_when_local, bool):
            raise TypeError(f"unix_when_local must be True or False, not {unix_when_local!r}")
        self._ask_same_host = (unix_when_local and tls is None
                               and same_host.worth_asking(parsed))
        self.address = address
        self.timeout = timeout
        self._secret = secret_bytes(secret)
        self._tls = tls
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None
        self._ids = itertools.count(1)
        self._closed = False
        self._methods: dict[str, _AsyncMethod] = {}

    async def _connection(self) -> _Protocol:
        protocol = self._protocol
        if protocol is not None and protocol.lost is None:
            return protocol
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._closed:
                raise ConnectionLostError("the client is closed")
            protocol = self._protocol
            if protocol is None or protocol.lost is not None:
                protocol = await asyncio.wait_for(self._open(), CONNECT_TIMEOUT)
                self._protocol = protocol
            return protocol

    async def _open(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        parsed = parse_address(self.address)
        if parsed.scheme == "unix":
            connecting = loop.create_unix_connection(
                _Protocol, parsed.path, ssl=self._tls, server_hostname=None)
        else:
            connecting = loop.create_connection(
                _Protocol, parsed.host, parsed.port, ssl=self._tls,
                server_hostname=parsed.host if self._tls else None)
        protocol = await self._log_in(connecting)
        if self._ask_same_host:
            protocol = await self._switch_to_same_host(protocol)
        protocol.reader = FrameReader(protocol.codec.loads, undecodable=protocol.undecodable)
        if protocol.buffer:  # frames that came with the welcome
            leftover = bytes(protocol.buffer)
            protocol.buffer.clear()
            protocol.data_received(leftover)
        return protocol

    async def _log_in(self, connecting: Awaitable[tuple[Any, _Protocol]]) -> _Protocol:
        """The connection ``connecting`` makes, logged in; its frames not read yet."""
        _, protocol = await connecting
        try:
            login = Login(await protocol.read_exactly(HELLO_SIZE), self._secret)
            assert protocol.transport is not None
            protocol.transport.write(login.message)
            try:
                answer = await protocol.read_exactly(WELCOME_SIZE)
            except ConnectionLostError:
                answer = b""
            protocol.codec = login.finish(answer, self._tls)
            protocol.dumps = protocol.codec.reusable_dumps()
        except BaseException:
            if protocol.transport is not None:
                protocol.transport.abort()
            raise
        return protocol

    async def _switch_to_same_host(self, protocol: _Protocol) -> _Protocol:
        """Over a fresh TCP connection (logged in), ask the server for its Unix socket; if
        this client can reach it, log in there and return it, else the TCP connection.
        (See :func:`bingfa.rpc._client.switch_to_same_host`.)"""
        assert protocol.transport is not None
        try:
            protocol.transport.write(same_host.ask_frame(protocol.dumps))
            size = same_host.answer_size(await protocol.read_exactly(HEADER.size))
            name = same_host.name_in(protocol.codec.loads, await protocol.read_exactly(size))
            sock = same_host.connect_nowait(name) if name is not None else None
            if sock is None:
                return protocol
            try:
                local = await self._log_in(asyncio.get_running_loop().create_unix_connection(
                    _Protocol, sock=sock))
            except (OSError, ConnectionLostError):
                sock.close()
                return protocol
        except BaseException:
            protocol.transport.abort()
            raise
        protocol.transport.close()
        return local

    def _frame(self, message: list[Any]) -> bytes:
        assert self._protocol is not None
        data = self._protocol.dumps(message)
        return pack_header(len(data)) + data

    async def call(self, method: str, /, *args: Any, timeout: float | None = None,
                   **kwargs: Any) -> Any:
        """Call ``method``; see :meth:`bingfa.rpc.Client.call`. A generator method
        returns an async iterator."""
        timeout = self.timeout if timeout is None else limit_seconds(timeout)
        if timeout == 0:
            # The deadline has passed already: fail without sending anything
            # (as gRPC does), rather than start a handler only to cancel it.
            raise RPCTimeoutError(f"{method}() was not sent: its timeout is 0")
        protocol = self._protocol
        if protocol is None or protocol.lost is not None:
            protocol = await self._connection()
        call_id = next(self._ids)
        try:
            frame = self._frame([CALL, call_id, method, list(args), kwargs or None, timeout,
                                 STREAM_WINDOW])
        except SerializationError as exc:
            err = arguments_error(method, args, kwargs, protocol.codec, exc)
            raise err from err.__cause__
        future: asyncio.Future[Any] = protocol.loop.create_future()
        protocol.pending[call_id] = future
        protocol.write(frame)
        timer = None
        if timeout is not None:
            timer = protocol.loop.call_later(timeout, _expire, future, method, timeout)
        try:
            value = await future
        except BaseException:
            if protocol.pending.pop(call_id, None) is not None and protocol.lost is None:
                with contextlib.suppress(Exception):
                    protocol.write(self._frame([CANCEL, call_id]))
            raise
        finally:
            if timer is not None:
                timer.cancel()
        if isinstance(value, _AsyncStream):
            return AsyncRemoteStream(self, protocol, call_id, value, timeout)
        return value

    async def methods(self) -> dict[str, dict[str, str]]:
        """What the server serves: name -> signature, docstring and kind."""
        result: dict[str, dict[str, str]] = await self.call("__methods__")
        return result

    def __getattr__(self, name: str) -> _AsyncMethod:
        if name.startswith("_"):
            raise AttributeError(name)
        method = self._methods.get(name)
        if method is None:
            method = self._methods[name] = _AsyncMethod(self, name)
        return method

    async def aclose(self) -> None:
        """Close the connection; calls still waiting get ConnectionLostError."""
        self._closed = True
        if self._protocol is not None:
            self._protocol._lose("the client was closed")

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()


def _expire(future: asyncio.Future[Any], method: str, timeout: float) -> None:
    if not future.done():
        future.set_exception(RPCTimeoutError(f"{method}() did not answer within {timeout} s"))


async def aconnect(address: str, *, secret: bytes | str | None = None,
                   tls: ssl.SSLContext | None = None,
                   timeout: float | None = None, unix_when_local: bool = True) -> AsyncClient:
    """Connect to a bingfa RPC server from asyncio; an :class:`AsyncClient`.

    Arguments and errors are those of :func:`bingfa.rpc.connect`.
    """
    client = AsyncClient(address, secret=secret, tls=tls, timeout=timeout,
                         unix_when_local=unix_when_local)
    await client._connection()
    return client
