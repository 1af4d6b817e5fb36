"""The RPC server: an asyncio loop that reads calls and runs handlers where they belong.

- ``async def`` handlers run on the server's event loop, as tasks; a deadline
  or a client's cancel cancels the task.
- Plain functions run in a bingfa :class:`~bingfa.Pool` (threads unless you pass
  another), where :func:`bingfa.cancelled` tells them their call was given up.
  A function marked with :func:`quick` (it never blocks) runs on the loop
  directly instead, which saves two thread switches per call; a call of it
  that takes longer than :data:`SLOW_ON_LOOP` sends it to the pool for good.
  Only with the server's own thread pool: a pool you pass always runs the
  handler. Timing alone cannot tell that a function never blocks (a
  ``queue.get`` is quick until the queue is empty, and then it would stop
  the whole server), so this is the author's promise, not bingfa's guess.
- Generators and async generators stream: items go out as the client grants
  credit, so a slow consumer holds the handler back instead of filling memory.

Per connection: a handshake first (see :mod:`._wire`), a size limit checked
from the frame header, a cap on calls in flight (beyond it the connection is
simply not read), handshake and idle timeouts. A malformed frame closes that
connection, never the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import socket
import ssl
import threading
import time
import types
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Generator
from types import TracebackType
from typing import Any, TypeVar, cast

from .._async._loops import new_event_loop
from .._core._context import CancelFlag, WorkerContext, current, set_thread_context
from .._core._errors import SerializationError
from .._core._interrupts import start_without_sigint
from . import _same_host as same_host
from ._codec import Codec, cannot_encode, codec_for, plain_msgpack
from ._errors import describe
from ._lane import Job, Lane, LaneThread
from ._lane import available as lane_available
from ._limits import MAX_INFLIGHT_BYTES
from ._wire import (
    CALL,
    CANCEL,
    CREDIT,
    END,
    ERROR,
    HEADER,
    ITEM,
    LOGIN_SIZE,
    REJECTED,
    RESULT,
    STREAM,
    WELCOME_SIZE,
    Address,
    check_login,
    hello,
    pack_header,
    parse_address,
    welcome,
)

__all__ = ["Server", "quick", "serve"]

F = TypeVar("F", bound=Callable[..., Any])
logger = logging.getLogger("bingfa.rpc")

perf_counter = time.perf_counter
_LATER = (types.GeneratorType, types.CoroutineType)  # results that are not results yet

SLOW_ON_LOOP = 2e-3       # a quick call longer than this is slow...
SLOW_IN_A_ROW = 3         # ...and this many slow calls in a row send it to the pool for good
BACKLOG = 512
FLUSH_EVERY = 16          # answers to a batch of calls leave in pieces of this many
JOIN_AT_MOST = 256 * 1024  # answers written together are joined into one block up to this
POST_AT_ONCE = 64 * 1024   # a pool call's answer this big is posted from its thread at once
ONE_FRAME = 4096          # a lane thread reads a lone frame up to this big without slicing
# Answer bytes one connection may have waiting for its client to read (the
# default of serve(max_unread_bytes=)); beyond it its calls do not start and
# its streams pause until the client catches up.
MAX_UNREAD_BYTES = 32 * 2**20
DEFAULT_WINDOW = 64       # stream items in flight when the client does not say
POOL_THREADS = 32
STREAM_THREADS = 64


class _Method:
    """A served callable, what kind it is, and how quick it has been."""

    __slots__ = ("doc", "fn", "inline", "kind", "name", "signature", "slow_calls")

    def __init__(self, name: str, fn: Callable[..., Any]) -> None:
        self.name = name
        self.fn = fn
        if inspect.iscoroutinefunction(fn):
            self.kind = "coroutine"
        elif inspect.isasyncgenfunction(fn):
            self.kind = "async generator"
        elif inspect.isgeneratorfunction(fn):
            self.kind = "generator"
        else:
            self.kind = "function"
        try:
            self.signature = str(inspect.signature(fn))
        except (TypeError, ValueError):
            self.signature = "(...)"
        self.doc = inspect.getdoc(fn) or ""
        # Run where the call is read (the loop, or a lane thread), never handed to
        # another thread: marked quick, and the pool is the server's own (set by it).
        self.inline = False
        self.slow_calls = 0  # quick calls in a row that took longer than SLOW_ON_LOOP

    def timed(self, seconds: float) -> None:
        """A quick call took ``seconds``: several slow ones in a row demote the function.

        Wall time, since a function that blocks (the harm this guards against)
        uses no CPU while it does. One slow call proves nothing: a garbage
        collection or a preemption on a busy host makes any call slow now and
        then, and demoting ``add`` for good over that would cost every later
        call two thread switches. A function that blocks does it again.
        """
        if seconds > SLOW_ON_LOOP:
            self.slow_calls += 1
            if self.slow_calls >= SLOW_IN_A_ROW:
                self.demote()
        elif self.slow_calls:
            self.slow_calls = 0

    def demote(self) -> None:
        """A quick function was slow after all: to the pool, for good."""
        self.inline = False

    def describe(self) -> dict[str, str]:
        return {"signature": self.signature, "doc": self.doc, "kind": self.kind}


QUICK_MARK = "__bingfa_rpc_quick__"


def quick(fn: F) -> F:
    """Mark a function as one that never blocks: the server runs it on its event loop.

    That saves two thread switches per call (tens of microseconds). Only mark
    functions that compute and return: no I/O, no locks, no waiting, or every
    client of the server waits with them. One call longer than 2 ms sends the
    function back to the thread pool for good::

        class Calculator:
            @bf.rpc.quick
            def add(self, a, b):
                return a + b
    """
    if not callable(fn):
        raise TypeError(f"quick() marks a function, not {fn!r}")
    setattr(fn, QUICK_MARK, True)
    return fn


def _methods_of(target: Any) -> dict[str, _Method]:
    if isinstance(target, dict):
        items = list(target.items())
        for name, fn in items:
            if not isinstance(name, str) or not callable(fn):
                raise TypeError(f"a dict target maps names to functions; {name!r} -> {fn!r} "
                                "is not that")
    else:
        if isinstance(target, type):
            _refuse_unbound_methods(target)
        items = [(name, getattr(target, name)) for name in dir(target)
                 if not name.startswith("_")]
        items = [(name, fn) for name, fn in items if callable(fn) and not isinstance(fn, type)]
    methods = {name: _Method(name, fn) for name, fn in items if not name.startswith("_")}
    if not methods:
        raise ValueError(f"{target!r} has no public methods to serve")
    return methods


def _refuse_unbound_methods(cls: type) -> None:
    """TypeError for a class (not an instance) whose served methods would need ``self``.

    Served as is, every call would fail with a confusing "missing argument
    'self'". A class of static and class methods alone serves fine. The
    server does not instantiate it for you: which arguments, and whether one
    instance is what you want, are yours to say (``bingfa rpc serve
    mod:Class`` does instantiate it, without arguments, as a command line must).
    """
    unbound = sorted(name for name in dir(cls) if not name.startswith("_")
                     and isinstance(inspect.getattr_static(cls, name), types.FunctionType))
    if unbound:
        listed = ", ".join(unbound[:5]) + (", ..." if len(unbound) > 5 else "")
        raise TypeError(f"serve() was given the class {cls.__qualname__}, not an instance: its "
                        f"methods ({listed}) need one. Pass an instance, such as "
                        f"{cls.__qualname__}()")


def _run_with_flag(fn: Callable[..., Any], args: list[Any], kwargs: dict[str, Any],
                   flag: CancelFlag, held_back: Callable[[], bool] | None = None) -> Any:
    """Run a handler in a pool thread, with ``bf.cancelled()`` answering for its call.

    ``held_back()`` true: the call's connection has too many answers unread;
    the handler does not start and :data:`_DEFERRED` says so.
    """
    if flag.is_set:
        raise CallAbandoned  # given up on while it waited for a thread: do not start it
    if held_back is not None and held_back():
        return _DEFERRED
    ctx = current()
    own = ctx is None
    if own:
        ctx = WorkerContext(-1)
        set_thread_context(ctx)
    assert ctx is not None
    previous = ctx.cancel_flag
    ctx.cancel_flag = flag
    try:
        return fn(*args, **kwargs)
    finally:
        ctx.cancel_flag = previous
        if own:
            set_thread_context(None)


def _run_pooled(conn: _Connection, call: _Call, fn: Callable[..., Any], args: list[Any],
                kwargs: dict[str, Any]) -> Any:
    """A plain function's call in a pool thread: its RESULT frame, encoded right here.

    The pool may run calls in batches and hand their values back only at
    the batch's end: a big answer is posted here at once, so that it counts
    against the connection's unread bytes, and the calls after it in the
    batch see the connection held back and do not start (see
    :meth:`_Connection.held_back`). Small answers go with the batch, which
    wakes the loop once for all of them.
    """
    value = _run_with_flag(fn, args, kwargs, call.flag, conn.held_back)
    if value is _DEFERRED or type(value) in _LATER:
        return value  # a call to start later, a stream or a coroutine: the loop's to handle
    server = conn.server
    try:
        frame = server._frame([RESULT, call.id, value])
    except SerializationError as exc:
        return _Unsendable(server._cannot_encode_result(call.method, value, exc))
    if len(frame) < POST_AT_ONCE:
        return frame  # bytes from here are always a frame: see _pool_done
    server._post_frame(conn, frame, done=call)
    return _POSTED


class _Unsendable:
    """A pool call's result that could not be encoded: the error to send instead."""

    __slots__ = ("error",)

    def __init__(self, error: SerializationError) -> None:
        self.error = error


class CallAbandoned(Exception):
    """A queued call whose client gave up (deadline or cancel) before it started."""


class _Call:
    """One call in flight on a connection."""

    # What most calls never set is a class default, not set per call: one is
    # made for every call, and a lane thread makes it on its way to the handler.
    __slots__ = ("__dict__", "flag", "id", "method", "size")
    task: asyncio.Task[Any] | None = None
    coro: Coroutine[Any, Any, Any] | None = None  # an async handler's, until it starts
    # A pool call's (method, args, kwargs, window), to start it again once put off.
    job: tuple[_Method, list[Any], dict[str, Any], int | None] | None = None
    timer: asyncio.TimerHandle | None = None
    stream: _Credits | None = None
    deadline: float | None = None  # a lane call's, in time.monotonic() (the lane's watchman)

    def __init__(self, call_id: int, method: str, size: int = 0) -> None:
        self.id = call_id
        self.method = method  # its name, for errors
        self.size = size  # bytes of its frame, counted against MAX_INFLIGHT_BYTES
        self.flag = CancelFlag()


class _Credits:
    """How many stream items the client will still take; thread- and loop-safe."""

    def __init__(self, window: int) -> None:
        self.available = window
        self.cond = threading.Condition()
        self.event = asyncio.Event()
        self.closed = False

    def grant(self, n: int) -> None:
        with self.cond:
            self.available += n
            self.cond.notify_all()
        self.event.set()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        self.event.set()

    def wake(self) -> None:
        """Have the stream look again whether it may go on (its connection's answers drained)."""
        with self.cond:
            self.cond.notify_all()
        self.event.set()


class _Connection(asyncio.Protocol):
    """One client connection: handshake, frames in, frames out."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.loop = server._loop
        self.codec = server._codec
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.ready = False
        self.closed = False
        self.calls: dict[int, _Call] = {}
        self.out: list[bytes] = []
        self.flush_scheduled = False
        self.reading = False
        self.write_paused = False
        self.inflight_bytes = 0  # request bytes of the calls in flight
        # Answer bytes the client has not read: made in pool threads and not yet
        # handed to the transport (changed under the server's _post_lock), and
        # in the transport's buffer (as of the last look). Over the limit, the
        # connection is "over": no call starts and streams pause until it drains.
        self.unread_limit = server.max_unread_bytes
        self.posted_bytes = 0
        self.out_bytes = 0  # in self.out, not yet handed to the transport
        self.buffered = 0
        self.over = False
        self.drained = asyncio.Event()
        self.deferred: deque[_Call] = deque()  # pool calls put off while over
        self.streams_waiting = False  # a stream thread saw the limit passed before the loop did
        self.needed = 4  # bytes the buffered frame needs before it can be read
        self.paused = False
        self.nonce = b""
        self.timer: asyncio.TimerHandle | None = None
        self.last_activity = time.monotonic()
        # Read by the server's lane threads instead of the loop (see _lane.py),
        # through a descriptor of its own: lane_sock. One thread reads at a
        # time (lane_reading); lane_buffer keeps a frame that came in pieces.
        self.lane: Lane | None = None
        self.lane_sock: socket.socket | None = None
        self.lane_fd = -1
        self.lane_reading = threading.Lock()
        self.lane_buffer = bytearray()
        self.lane_needed = 4
        self.spin_misses = 0  # see Lane._poll_next
        # Frames reach the socket whole: the loop's transport writes and the
        # lane threads' sends take this lock. A send that went out in part
        # leaves the rest in ``partial``, which the loop writes before anything.
        self.write_lock = threading.Lock()
        self.partial: bytes | memoryview | None = None
        self.lane_out: list[bytes] = []  # answers held to go out together
        self.lane_out_bytes = 0
        # What lane threads read and left to the loop, that it has not
        # dispatched yet because no more calls may start (see _blocked): the
        # lane reads no more of the connection until these are gone.
        self.lane_held: deque[tuple[Any, Any, Exception | None]] = deque()

    # -- connection life ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server._connections.add(self)
        greeting, self.nonce = hello(self.server._secret, self.codec.name == "pickle")
        transport.write(greeting)
        self.timer = self.loop.call_later(self.server.handshake_timeout, self._handshake_expired)

    def _handshake_expired(self) -> None:
        if not self.ready:
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server._connections.discard(self)
        if self.lane is not None:
            self.lane.remove(self)
            # No lane thread reads or writes through it any more, nor will.
            with self.lane_reading, self.write_lock:
                if self.lane_sock is not None:
                    self.lane_sock.close()
                self.lane_out.clear()
                self.lane_out_bytes = 0
                self.partial = None
        if self.timer is not None:
            self.timer.cancel()
        for call in list(self.calls.values()):
            self._cancel(call)
        self.calls.clear()
        self.deferred.clear()
        self.out.clear()
        self.out_bytes = 0
        self.drained.set()  # nothing waits for a client that is gone

    def abort(self) -> None:
        """Drop the connection at once (bad handshake, malformed frame, shutdown)."""
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()

    # -- reading -----------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        if not self.ready:
            buffer += data
            if len(buffer) < LOGIN_SIZE:
                return
            if not self._handshake(bytes(buffer[:LOGIN_SIZE])):
                return
            data = bytes(buffer[LOGIN_SIZE:])
            buffer.clear()
            if self.server._lane is not None:
                self._enter_lane(self.server._lane, data)
                if self.lane is not None:
                    return
        self.last_activity = time.monotonic()
        if buffer:
            buffer += data
            if len(buffer) < self.needed or self._blocked():
                return  # a big frame still coming in pieces: no copy until it is whole
            data = bytes(buffer)
            buffer.clear()
        self._process(data)

    def _undecodable(self, payload: memoryview, exc: Exception) -> None:
        """A frame that does not decode: fail its call if it says which, else drop the connection.

        A well-formed call with an argument of a type this side does not know
        (registered only on the client, say) fails alone, with
        SerializationError; other calls on the connection carry on.
        """
        call_id = None
        if self.codec.name == "msgpack":
            with contextlib.suppress(Exception):
                skeleton = plain_msgpack(payload)  # extension types left undecoded
                if (type(skeleton) is list and len(skeleton) == 7 and skeleton[0] == CALL
                        and type(skeleton[1]) is int and skeleton[1] not in self.calls):
                    call_id = skeleton[1]
        if call_id is None:
            raise exc
        self._error(call_id, SerializationError(f"the server cannot decode the call: {exc}"))

    def _blocked(self) -> bool:
        """Whether no more calls may start: too many in flight, or the client is not reading."""
        return (self.paused or self.write_paused or self.over
                or self.inflight_bytes > MAX_INFLIGHT_BYTES)

    def _process(self, data: bytes) -> None:
        """Run the frames in ``data`` (which starts at a frame boundary); keep the rest."""
        limit = self.server.max_message_size
        pos = 0
        end = len(data)
        loads = self.codec.loads
        view = memoryview(data)
        self.reading = True  # replies wait for the one write at the end
        try:
            while end - pos >= 4 and not self._blocked():
                (size,) = HEADER.unpack_from(data, pos)
                if size == 0 or size > limit:
                    # Refused from the header alone: nothing that size is allocated.
                    self.abort()
                    return
                if end - pos - 4 < size:
                    break
                payload = view[pos + 4:pos + 4 + size]
                pos += 4 + size
                try:
                    message = loads(payload)
                except Exception as exc:
                    self._undecodable(payload, exc)  # fails that call, or the connection
                    continue
                self._dispatch(message, size)
                if self.closed:
                    return
                if len(self.out) >= FLUSH_EVERY:
                    self._flush()  # the client can start on these while we do the rest
        except Exception:
            self.abort()  # malformed: this connection goes, the server stays
            return
        finally:
            view.release()
            if pos < end and not self.closed:
                self.buffer += data[pos:]
                self.needed = (4 + HEADER.unpack_from(data, pos)[0]) if end - pos >= 4 else 4
                if self.needed - 4 > limit:
                    self.abort()  # a header over the limit, read while the calls were paused
            self.reading = False
            self._flush()
            if self._blocked() and self.transport is not None and not self.closed:
                self.transport.pause_reading()  # until _unblocked: the buffer stays small

    def _unblocked(self) -> None:
        """Calls may start again: read the socket, and the frames that waited meanwhile."""
        if self.closed or self._blocked():
            return
        if self.lane is not None:
            self._dispatch_held()  # then its threads read it (never the transport again)
            return
        assert self.transport is not None
        self.transport.resume_reading()
        if self.buffer and len(self.buffer) >= self.needed:
            data = bytes(self.buffer)
            self.buffer.clear()
            self._process(data)

    def pause_writing(self) -> None:
        # The client does not read its answers: stop taking its calls, so
        # what waits to be sent cannot grow without bound.
        self.write_paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._check_unread()
        self.loop.call_soon(self._unblocked)

    # -- answers the client has not read ------------------------------------------------

    def held_back(self) -> bool:
        """Whether the client has more answer bytes unread than allowed (from any thread)."""
        return (self.posted_bytes + self.out_bytes + self.buffered + self.lane_out_bytes
                > self.unread_limit)

    def _check_unread(self) -> None:
        """Look at the bytes waiting for the client: hold its calls back, or let them go.

        Called after every write, when the transport drains, and when a call
        or a stream in a thread finds the limit passed. The connection cannot
        stay held back with nothing left to look again: bytes posted by
        threads have a drain (and so a write) on its way, and bytes in the
        transport's buffer, over the limit, are far over its high-water mark
        (64 KiB), so it has paused writing and calls resume_writing once the
        client has read them.
        """
        transport = self.transport
        self.buffered = transport.get_write_buffer_size() if transport is not None else 0
        if self.held_back():
            if not self.over:
                self.over = True
                self.drained.clear()
        elif self.over or self.deferred or self.streams_waiting:
            self.over = False
            self.streams_waiting = False
            self.drained.set()
            deferred, self.deferred = self.deferred, deque()
            for call in deferred:
                if call.id in self.calls and call.job is not None:
                    self._submit(call, *call.job)
            for call in list(self.calls.values()):  # lane threads add calls meanwhile
                if call.stream is not None:
                    call.stream.wake()
            self.loop.call_soon(self._unblocked)

    def _defer(self, call: _Call) -> None:
        """A pool call found its connection held back as it was to start: start it later."""
        if call.id not in self.calls or self.closed:
            return  # cancelled or expired meanwhile
        self.deferred.append(call)
        self._check_unread()  # the answers may have drained already: then it starts now

    def _handshake(self, login: bytes) -> bool:
        server = self.server
        client_nonce = check_login(login, server._secret, self.nonce)
        assert self.transport is not None
        if client_nonce is None:
            self.transport.write(REJECTED + bytes(WELCOME_SIZE - 1))
            self.transport.close()
            self.closed = True
            return False
        self.transport.write(welcome(server._secret, self.nonce, client_nonce))
        self.ready = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if server.idle_timeout is not None:
            self.timer = self.loop.call_later(server.idle_timeout, self._idle_check)
        return True

    def _idle_check(self) -> None:
        idle = time.monotonic() - self.last_activity
        timeout = self.server.idle_timeout
        assert timeout is not None
        if self.calls or idle < timeout:
            self.timer = self.loop.call_later(max(timeout - idle, 0.1), self._idle_check)
        else:
            self.transport.close() if self.transport is not None else None

    def _dispatch(self, message: Any, size: int) -> None:
        kind = message[0]
        if kind == CALL:
            _, call_id, name, args, kwargs, timeout, window = message
            # type() checks: a malformed call must not reach a handler, and
            # this runs for every call.
            if (type(call_id) is not int or type(name) is not str or type(args) is not list
                    or (kwargs is not None and type(kwargs) is not dict)
                    or (timeout is not None and (type(timeout) not in (int, float)
                                                 or not timeout >= 0))  # NaN too
                    or (window is not None and (type(window) is not int or window < 1))):
                raise ValueError("malformed call")
            method = self.server._methods.get(name)
            if method is not None and method.inline:
                self._run_inline(call_id, method, args, kwargs or {}, window)
            else:
                self._call(call_id, name, method, args, kwargs or {}, timeout, window, size)
        elif kind == CREDIT:
            _, call_id, n = message
            call = self.calls.get(call_id)
            if call is not None and call.stream is not None and type(n) is int and n > 0:
                call.stream.grant(n)
        elif kind == CANCEL:
            call = self.calls.get(message[1])
            if call is not None:
                self._cancel(call)
        else:
            raise ValueError(f"unexpected message kind {kind!r}")

    # -- running calls -----------------------------------------------------------------

    def _call(self, call_id: int, name: str, method: _Method | None, args: list[Any],
              kwargs: dict[str, Any], timeout: float | None, window: int | None,
              size: int) -> None:
        server = self.server
        if method is None:
            if name == "__methods__":
                self._reply(call_id, name,
                            {n: m.describe() for n, m in server._methods.items()})
            elif name == same_host.METHOD:
                self._reply(call_id, name,
                            server._same_host[1] if server._same_host is not None else None)
            else:
                self._error(call_id, AttributeError(
                    f"the server has no method {name!r}; it serves: "
                    f"{', '.join(sorted(server._methods))}"))
            return
        call = self._open(_Call(call_id, name, size), timeout)
        if method.kind in ("coroutine", "async generator"):
            try:
                started = method.fn(*args, **kwargs)  # wrong arguments fail right here
            except Exception as exc:
                self._finish(call)
                self._error(call_id, exc)
                return
            if method.kind == "coroutine":
                self._start_coroutine(call, started)
            else:
                self._streaming(call, window)
                call.task = self.loop.create_task(self._astream(call, started))
        elif method.kind == "generator":
            self._streaming(call, window)
            self._send(call_id, [STREAM, call_id])
            future = server._threads.submit(self._stream_in_thread, call, method.fn, args, kwargs)
            future.add_done_callback(lambda f, c=call: self._pool_done(c, f, None))
        else:
            self._submit(call, method, args, kwargs, window)

    def _streaming(self, call: _Call, window: int | None) -> None:
        """``call`` turned out to be a stream: credit it, and lift its deadline.

        A stream's ``timeout`` bounds the wait for each item, on the client:
        a long stream whose items come on time is not cut off.
        """
        call.stream = _Credits(window or DEFAULT_WINDOW)
        timer = call.timer
        if timer is not None:
            call.timer = None
            if threading.current_thread() is self.server._thread_of_loop:
                timer.cancel()
            else:
                self.loop.call_soon_threadsafe(timer.cancel)

    def _open(self, call: _Call, timeout: float | None) -> _Call:
        """Count ``call`` in flight (pausing reads at the cap) and arm its deadline."""
        if call.id in self.calls:
            raise ValueError(f"call id {call.id} is already in flight")  # closes the connection
        self.calls[call.id] = call
        self.inflight_bytes += call.size
        if len(self.calls) >= self.server.max_concurrent_calls and not self.paused:
            self.paused = True
            assert self.transport is not None
            self.transport.pause_reading()
        if timeout is not None:
            call.timer = self.loop.call_later(max(timeout, 0), self._expire, call)
        return call

    def _run_inline(self, call_id: int, method: _Method, args: list[Any],
                    kwargs: dict[str, Any], window: int | None) -> None:
        """Run a function marked quick on the loop; slow calls send it to the pool for good."""
        start = perf_counter()
        try:
            value = method.fn(*args, **kwargs)
        except Exception as exc:
            self._error(call_id, exc)
            return
        finally:
            method.timed(perf_counter() - start)
        if type(value) in _LATER:  # rare: it returned a generator or a coroutine
            method.demote()
            call = self._open(_Call(call_id, method.name), None)
            if isinstance(value, types.CoroutineType):
                self._start_coroutine(call, value)
            else:
                self._streaming(call, window)
                self._send(call_id, [STREAM, call_id])
                future = self.server._threads.submit(self._stream_in_thread, call,
                                                  lambda: value, [], {})
                future.add_done_callback(lambda f, c=call: self._pool_done(c, f, None))
            return
        try:
            frame = self.server._frame_on_loop([RESULT, call_id, value])
        except SerializationError as exc:
            self._error(call_id, self.server._cannot_encode_result(method.name, value, exc))
            return
        self._write(frame)

    def _submit(self, call: _Call, method: _Method, args: list[Any], kwargs: dict[str, Any],
                window: int | None) -> None:
        server = self.server
        call.job = (method, args, kwargs, window)
        if self.over:  # the client does not read its answers: no more until it does
            self.deferred.append(call)
            return
        if server._pool_is_threads:
            # The thread looks again as the call starts: answers made since
            # (by the calls ahead of it in the pool) count too.
            # (A thread pool never groups tasks: a call that blocks holds up
            # only itself.)
            future = server._pool.submit(_run_pooled, self, call, method.fn, args, kwargs)
        else:  # a process pool: only the function and its arguments travel
            future = server._pool.submit(method.fn, *args, **kwargs)
        future.add_done_callback(lambda f, c=call: self._pool_done(c, f, window))

    def _pool_done(self, call: _Call, future: Any, window: int | None) -> None:
        """Where the pool's future completes (a pool thread): hand the outcome to the loop."""
        server = self.server
        try:
            value = future.result()
        except BaseException as exc:
            server._post_error(self, call, exc)
            return
        if value is _POSTED:
            return  # a result, already on its way
        if type(value) is bytes and server._pool_is_threads:
            # From _run_pooled: the encoded RESULT (a process pool's bytes are
            # the handler's own value, encoded below).
            server._post_frame(self, value, done=call)
        elif value is _DEFERRED:
            server._call_on_loop(lambda: self._defer(call))
        elif isinstance(value, _Unsendable):
            server._post_error(self, call, value.error)
        elif value is _END:
            server._post_frame(self, server._frame([END, call.id]), done=call)
        elif value is _STOPPED:
            server._post_frame(self, b"", done=call)
        elif inspect.isgenerator(value) or inspect.iscoroutine(value):
            self._later(call, value, window)
        else:
            try:
                frame = server._frame([RESULT, call.id, value])
            except SerializationError as exc:
                server._post_error(self, call, server._cannot_encode_result(call.method, value,
                                                                            exc))
                return
            server._post_frame(self, frame, done=call)

    def _later(self, call: _Call, value: Any, window: int | None) -> None:
        """From a thread: a plain function returned a generator (it streams, from a
        thread of its own) or a coroutine (a task on the loop, which the call's
        deadline or cancel can cancel)."""
        server = self.server
        if inspect.isgenerator(value):
            self._streaming(call, window)
            server._post_frame(self, server._frame([STREAM, call.id]))
            stream = server._threads.submit(self._stream_in_thread, call, lambda: value, [], {})
            stream.add_done_callback(lambda f, c=call: self._pool_done(c, f, None))
            return

        def start() -> None:
            if call.id in self.calls:
                self._start_coroutine(call, value)
            else:  # expired or cancelled while the function ran
                value.close()

        server._call_on_loop(start)

    # -- read by lane threads (see _lane.py) -------------------------------------------

    def _enter_lane(self, lane: Lane, data: bytes) -> None:
        """From its handshake on, the lane's threads read this connection.

        They read it through a descriptor of their own, while the transport,
        its reading paused for good, still writes and closes it.
        """
        if data:
            self._process(data)  # what came with the login: read here, as before
        transport = self.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        if self.closed or transport is None or sock is None:
            return
        try:
            own = socket.socket(fileno=os.dup(sock.fileno()))
        except OSError:
            return  # out of descriptors: the loop goes on reading it
        own.setblocking(False)
        transport.pause_reading()
        self.lane_buffer += self.buffer  # a frame begun with the login
        self.lane_needed = self.needed
        self.buffer.clear()
        self.lane_sock = own
        self.lane_fd = own.fileno()
        self.lane = lane
        lane.add(self)

    def lane_blocked(self) -> bool:
        """Whether no more of its calls may be read now (see _blocked), counting lane calls."""
        return (self._blocked() or len(self.calls) >= self.server.max_concurrent_calls
                or bool(self.lane_held))

    def lane_frames(self, data: bytes) -> list[Job] | None:
        """The frames in ``data`` (after what was kept): calls a lane thread runs are
        registered and returned; everything else goes to the loop, in order.

        None if the connection is being dropped (a frame of a size refused, a
        call id in flight twice).
        """
        buffer = self.lane_buffer
        if buffer:
            buffer += data
            if len(buffer) < self.lane_needed:
                return []  # a big frame still coming in pieces: no copy until it is whole
            data = bytes(buffer)
            buffer.clear()
        end = len(data)
        # For the loop: (message, its size, None), or (None, payload, the decoding error).
        for_loop: list[tuple[Any, Any, Exception | None]] = []
        if (4 < end <= ONE_FRAME and HEADER.unpack_from(data)[0] == end - 4
                and end - 4 <= self.server.max_message_size):
            # One whole small frame, as a lone caller sends: no slicing by views.
            jobs: list[Job] = []
            try:
                message = self.codec.loads(data[4:])
            except Exception as exc:
                for_loop.append((None, data[4:], exc))
            else:
                job = self._lane_job(message)
                if job is None:
                    for_loop.append((message, end - 4, None))
                elif job is _DROP:
                    return None
                else:
                    jobs.append(job)
        else:
            split = self._lane_split(data, for_loop)
            if split is None:
                return None
            jobs = split
        if for_loop:
            self.server._call_on_loop(lambda: self._from_lane(for_loop))
        return jobs

    def _lane_split(self, data: bytes, for_loop: list[tuple[Any, Any, Exception | None]]
                    ) -> list[Job] | None:
        """Frame by frame: the jobs in ``data``; what is not a job goes to ``for_loop``."""
        limit = self.server.max_message_size
        loads = self.codec.loads
        jobs: list[Job] = []
        pos, end = 0, len(data)
        view = memoryview(data)
        try:
            while end - pos >= 4:
                (size,) = HEADER.unpack_from(data, pos)
                if size == 0 or size > limit:
                    self.lane_lost("a frame of a size refused")  # from the header alone
                    return None
                if end - pos - 4 < size:
                    break
                payload = view[pos + 4:pos + 4 + size]
                pos += 4 + size
                try:
                    message = loads(payload)
                except Exception as exc:
                    for_loop.append((None, bytes(payload), exc))
                    continue
                job = self._lane_job(message)
                if job is None:
                    for_loop.append((message, size, None))
                elif job is _DROP:
                    return None
                else:
                    jobs.append(job)
        finally:
            view.release()
        if pos < end:
            self.lane_buffer += data[pos:]
            self.lane_needed = (4 + HEADER.unpack_from(data, pos)[0]) if end - pos >= 4 else 4
        return jobs

    def _lane_job(self, message: Any) -> Any:
        """A well-formed call of a plain function: registered, as the job a lane thread
        runs. None: the loop's to handle. _DROP: drop the connection.

        (type() checks: this runs for every call.)
        """
        if (type(message) is not list or len(message) != 7 or message[0] != CALL
                or type(message[2]) is not str):
            return None
        _, call_id, name, args, kwargs, timeout, window = message
        method = self.server._methods.get(name)
        if (method is None or method.kind != "function" or type(call_id) is not int
                or type(args) is not list or (kwargs is not None and type(kwargs) is not dict)
                or (timeout is not None and (type(timeout) not in (int, float)
                                             or not timeout >= 0))  # NaN too
                or (window is not None and (type(window) is not int or window < 1))):
            return None
        calls = self.calls
        if call_id in calls:
            self.lane_lost(f"call id {call_id} is already in flight")
            return _DROP
        call = calls[call_id] = _Call(call_id, name)
        if timeout is not None:
            # The lane's watchman keeps the deadline (see Lane.timed): it ends
            # the call as the loop's timer would, within a tick of it.
            call.deadline = time.monotonic() + timeout
            lane = self.lane
            if lane is not None:
                lane.timed[call] = self
        return (self, call, method, args, kwargs or {}, window)

    def _from_lane(self, messages: list[tuple[Any, Any, Exception | None]]) -> None:
        """On the loop: what a lane thread read and left to it, in the order it came."""
        self.lane_held.extend(messages)
        self._dispatch_held()

    def _dispatch_held(self) -> None:
        """Dispatch what lane threads left to the loop, while calls may start; once all
        of it is, the lane may read the connection again."""
        held = self.lane_held
        if self.closed:
            held.clear()
            return
        self.reading = True  # replies wait for the one write at the end
        try:
            while held and not self._blocked():
                message, size, error = held.popleft()
                if error is not None:
                    self._undecodable(size, error)  # fails that call, or the connection
                else:
                    self._dispatch(message, size)
                if self.closed:
                    return
        except Exception:
            self.abort()  # malformed: this connection goes, the server stays
            return
        finally:
            self.reading = False
            self._flush()
        if not held and self.lane is not None:
            self.lane.unpark(self)

    def lane_lost(self, why: str | None) -> None:
        """From a lane thread: the client closed (``why`` None) or broke the connection."""
        def lost() -> None:
            if self.closed or self.transport is None:
                return
            if why is None:
                self.transport.close()  # what is written still goes out
            else:
                self.abort()

        self.server._call_on_loop(lost)

    def lane_expired(self, call: _Call) -> None:
        """From the lane's watchman: a lane call's deadline passed."""
        self.server._call_on_loop(lambda: self._expire(call))

    def lane_run(self, job: Job, me: LaneThread) -> bytes | None:
        """In a lane thread: run one call; the frame to answer with, or None for none."""
        _, call, method, args, kwargs, window = job
        if call.flag.is_set or self.closed:
            return None  # given up on while it waited (cancelled, connection gone)
        if self.over or (self.posted_bytes + self.out_bytes + self.buffered
                         + self.lane_out_bytes > self.unread_limit):  # held_back(), inline
            # The client does not read its answers: the loop starts it once it does.
            call.job = (method, args, kwargs, window)
            self.server._call_on_loop(lambda: self._defer(call))
            return None
        ctx = me.ctx
        ctx.cancel_flag = call.flag
        inline = method.inline
        start = perf_counter() if inline else 0.0
        try:
            value = method.fn(*args, **kwargs)
        except BaseException as exc:
            return self._lane_done(call, self._error_frame(call.id, exc, me.dumps))
        finally:
            ctx.cancel_flag = None
            if inline:
                method.timed(perf_counter() - start)
        if type(value) in _LATER:
            self._later(call, value, window)  # a stream or a coroutine: still in flight
            return None
        try:
            data = me.dumps([RESULT, call.id, value])
        except SerializationError as exc:
            error = self.server._cannot_encode_result(call.method, value, exc)
            return self._lane_done(call, self._error_frame(call.id, error, me.dumps))
        # _lane_done(), inline: this runs for every call.
        calls = self.calls
        ended = calls.pop(call.id, None)
        if call.deadline is not None and self.lane is not None:
            self.lane.timed.pop(call, None)
        if ended is not call:
            if ended is not None:
                calls[call.id] = ended
            return None
        self.last_activity = time.monotonic()
        lane = self.lane
        if lane is not None and lane.parked and self in lane.parked:
            lane.unpark(self)
        return pack_header(len(data)) + data

    def _lane_done(self, call: _Call, frame: bytes) -> bytes | None:
        """A lane call ended: ``frame`` is to be sent, unless the call was ended already."""
        calls = self.calls
        ended = calls.pop(call.id, None)
        if call.deadline is not None and self.lane is not None:
            self.lane.timed.pop(call, None)
        if ended is not call:  # cancelled or expired while it ran: the client has its answer
            if ended is not None:
                calls[call.id] = ended  # a later call that took the same id: not ours
            return None
        self.last_activity = time.monotonic()  # the idle clock starts when a call ends
        lane = self.lane
        if lane is not None and self in lane.parked:
            lane.unpark(self)  # parked for its number of calls in flight
        return frame

    def lane_answer(self, frame: bytes, hold: bool) -> None:
        """From a lane thread: send an answer, or hold it to go with the next ones.

        The lane holds answers while its threads run more calls back to back
        (``hold``), and sends them as soon as nobody may be coming to (see
        Lane.flush_dirty).
        """
        with self.write_lock:
            out = self.lane_out
            if not hold and not out:
                # _send_now(), inline, for what it does most: all of it at once.
                sock = self.lane_sock
                transport = self.transport
                if (sock is not None and self.partial is None and not self.posted_bytes
                        and not self.closed and transport is not None
                        and not transport.get_write_buffer_size()):
                    try:
                        sent = sock.send(frame)
                    except (BlockingIOError, InterruptedError):
                        sent = 0
                    except OSError:
                        return  # broken: the thread reading it, or the transport, hears of it
                    if sent != len(frame):
                        self._send_left(frame, sent)
                    return
                self._send_now(frame)
                return
            if self.closed:
                return
            if hold and len(frame) < POST_AT_ONCE:
                if not out and self.lane is not None:
                    self.lane.dirty.add(self)
                out.append(frame)
                self.lane_out_bytes += len(frame)
                return
            if out:
                out.append(frame)
                frame = b"".join(out)
                out.clear()
                self.lane_out_bytes = 0
            self._send_now(frame)

    def lane_flush(self) -> None:
        """Send the answers held for this connection."""
        with self.write_lock:
            out = self.lane_out
            if not out or self.closed:
                return
            frame = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
            self.lane_out_bytes = 0
            self._send_now(frame)

    def _send_now(self, frame: bytes) -> None:
        """Send ``frame`` (``write_lock`` held): straight to the socket when nothing waits.

        Anything the loop still has to write (a send that went out in part,
        answers posted to it, bytes in the transport's buffer) goes first: then
        the frame goes behind it, through the loop.
        """
        sock = self.lane_sock
        transport = self.transport
        sent = 0
        if (sock is not None and self.partial is None and not self.posted_bytes
                and not self.closed and transport is not None
                and not transport.get_write_buffer_size()):
            try:
                sent = sock.send(frame)
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                return  # broken: the thread reading it, or the transport, hears of it
            if sent == len(frame):
                return
        self._send_left(frame, sent)

    def _send_left(self, frame: bytes, sent: int) -> None:
        """What a lane thread could not send of ``frame`` goes through the loop
        (``write_lock`` held): a rest before anything else, a whole frame behind
        whatever waits."""
        if self.closed:
            return
        if sent:
            rest = memoryview(frame)[sent:]  # no copy of what may be megabytes
            self.partial = rest
            with self.server._post_lock:
                self.posted_bytes += len(rest)  # unread, until the loop writes it
            self.server._call_on_loop(self._flush)
        else:
            self.server._post_frame(self, frame)

    def _start_coroutine(self, call: _Call, coro: Any) -> None:
        """Run a handler's coroutine as the call's task, which its deadline or cancel cancels."""
        call.coro = coro
        call.task = self.loop.create_task(self._await(call, coro))

    async def _await(self, call: _Call, coro: Any) -> None:
        try:
            while self.over and not self.closed:  # answers unread: wait until they are
                await self.drained.wait()
            value = await coro
        except asyncio.CancelledError:
            self._finish(call)
            return
        except Exception as exc:
            self._finish(call)
            self._error(call.id, exc)
            return
        self._finish(call)
        self._reply(call.id, call.method, value)

    async def _astream(self, call: _Call, agen: AsyncIterator[Any]) -> None:
        credits = call.stream
        assert credits is not None
        self._send(call.id, [STREAM, call.id])
        try:
            async for item in agen:
                while (credits.available <= 0 or self.over) and not credits.closed:
                    credits.event.clear()
                    await credits.event.wait()
                if credits.closed:
                    break
                credits.available -= 1
                try:
                    frame = self.server._frame([ITEM, call.id, item])
                except SerializationError as exc:
                    # The stream ends here, as a generator's in a thread does.
                    self._finish(call)
                    self._error(call.id, self.server._cannot_encode_item(call.method, item, exc))
                    return
                self._write(frame)
        except asyncio.CancelledError:
            self._finish(call)
            return
        except Exception as exc:
            self._finish(call)
            self._error(call.id, exc)
            return
        finally:
            with contextlib.suppress(Exception):
                await agen.aclose()  # type: ignore[attr-defined]
        self._finish(call)
        self._send(call.id, [END, call.id])

    def _stream_in_thread(self, call: _Call, fn: Callable[..., Generator[Any, None, None]],
                          args: list[Any], kwargs: dict[str, Any]) -> Any:
        """Iterate a sync generator in a pool thread, within the client's credit.

        The whole iteration runs under the call's flag, so the generator's
        body sees :func:`bingfa.cancelled` turn true when the client gives up.
        """
        return _run_with_flag(self._iterate, [call, fn, args, kwargs], {}, call.flag)

    def _iterate(self, call: _Call, fn: Callable[..., Generator[Any, None, None]],
                 args: list[Any], kwargs: dict[str, Any]) -> Any:
        credits = call.stream
        assert credits is not None
        generator = fn(*args, **kwargs)
        server = self.server
        try:
            for item in generator:
                with credits.cond:
                    # Within the client's credit, and while it reads its answers.
                    while not credits.closed:
                        if credits.available > 0 and not self.over:
                            if not self.held_back():
                                break
                            # Over the limit by answers the loop has not looked
                            # at yet: it looks now, and wakes this stream once
                            # the client has read them (see _check_unread).
                            self.streams_waiting = True
                            server._call_on_loop(self._check_unread)
                        credits.cond.wait()
                    if credits.closed:
                        return _STOPPED
                    credits.available -= 1
                try:
                    frame = server._frame([ITEM, call.id, item])
                except SerializationError as exc:  # ends the stream: the client hears why
                    err = server._cannot_encode_item(call.method, item, exc)
                    raise err from err.__cause__
                server._post_frame(self, frame)
                if call.flag.is_set:
                    return _STOPPED
        finally:
            generator.close()
        return _END

    def _expire(self, call: _Call) -> None:
        from ._errors import RPCTimeoutError

        if call.id in self.calls:
            self._cancel(call)
            self._error(call.id, RPCTimeoutError("the call's deadline passed on the server"))

    def _cancel(self, call: _Call) -> None:
        call.flag.set()
        if call.task is not None:
            call.task.cancel()
            coro = call.coro
            if (isinstance(coro, types.CoroutineType)
                    and inspect.getcoroutinestate(coro) == inspect.CORO_CREATED):
                # The task was cancelled before it awaited the handler (a deadline
                # of microseconds, a cancel read with the call): the coroutine
                # never runs, and unclosed it would warn "never awaited".
                coro.close()
        if call.stream is not None:
            call.stream.close()
        self._finish(call)

    def _finish(self, call: _Call) -> None:
        if self.calls.pop(call.id, None) is None:
            return
        if call.timer is not None:
            call.timer.cancel()
        if call.deadline is not None and self.lane is not None:
            self.lane.timed.pop(call, None)
        self.last_activity = time.monotonic()  # the idle clock starts when a call ends
        was_blocked = self._blocked()
        self.inflight_bytes -= call.size
        if self.paused and len(self.calls) <= self.server.max_concurrent_calls // 2:
            self.paused = False
        if was_blocked and not self._blocked():
            self.loop.call_soon(self._unblocked)
        elif self.lane is not None and self in self.lane.parked:
            self.lane.unpark(self)  # parked for its number of calls in flight

    # -- writing -----------------------------------------------------------------------

    def _reply(self, call_id: int, method: str, value: Any) -> None:
        try:
            frame = self.server._frame([RESULT, call_id, value])
        except SerializationError as exc:
            self._error(call_id, self.server._cannot_encode_result(method, value, exc))
            return
        self._write(frame)

    def _error(self, call_id: int, exc: BaseException) -> None:
        self._write(self._error_frame(call_id, exc, self.server._codec.dumps))

    def _error_frame(self, call_id: int, exc: BaseException,
                     dumps: Callable[[Any], bytes]) -> bytes:
        """The ERROR frame for ``exc`` (from any thread, with that thread's encoder)."""
        type_name, message, args, text = describe(exc, self.server.expose_tracebacks)
        try:
            data = dumps([ERROR, call_id, type_name, message, args, text])
        except SerializationError:  # its arguments cannot travel: the message still can
            data = dumps([ERROR, call_id, type_name, message, None, text])
        return pack_header(len(data)) + data

    def _send(self, call_id: int, message: list[Any]) -> None:
        try:
            frame = self.server._frame(message)
        except SerializationError as exc:
            self._error(call_id, exc)
            return
        self._write(frame)

    def _write(self, frame: bytes) -> None:
        if self.closed:
            return
        self.out.append(frame)
        self.out_bytes += len(frame)
        if (not self.over  # held_back(), inline: this runs for every answer
                and self.posted_bytes + self.out_bytes + self.buffered + self.lane_out_bytes
                > self.unread_limit):
            # Answers made on the loop (async handlers, quick functions) pile up
            # here until the next flush: hold the connection back at once, so
            # the handlers already scheduled do not start.
            self.over = True
            self.drained.clear()
        if not self.flush_scheduled and not self.reading:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_scheduled = False
        if (self.out or self.partial is not None) and not self.closed \
                and self.transport is not None:
            with self.write_lock:  # no lane thread sends meanwhile: frames stay whole
                partial = self.partial
                if partial is not None:
                    # The rest of a lane thread's send that went out in part: first.
                    self.partial = None
                    self.transport.write(partial)
                    with self.server._post_lock:
                        self.posted_bytes -= len(partial)
                out, self.out = self.out, []
                size = self.out_bytes
                # Counted as buffered before the write (which may let other threads
                # run): a thread that looks meanwhile must not see them gone.
                self.buffered += size
                self.out_bytes = 0
                if not out:
                    pass
                elif len(out) == 1:
                    self.transport.write(out[0])
                elif size > JOIN_AT_MOST:
                    # Big answers go out as they are: joining them would copy them
                    # all into one more block as big as all of them together.
                    self.transport.writelines(out)
                else:
                    self.transport.write(b"".join(out))
            # _check_unread(), only when there is something to decide: this
            # runs after every batch of answers.
            buffered = self.buffered = self.transport.get_write_buffer_size()
            if (self.over or self.deferred or self.streams_waiting
                    or self.posted_bytes + buffered > self.unread_limit):
                self._check_unread()


_END = object()
_STOPPED = object()
_DEFERRED = object()  # a pool call that did not start: its connection is held back
_POSTED = object()  # a pool call whose result was sent from its thread
_DROP = object()  # a lane thread found the connection must be dropped


class Server:
    """A bingfa RPC server; see :func:`bingfa.rpc.serve`.

    Attributes:
        address: the address clients connect to (``tcp://127.0.0.1:PORT`` with
            the real port when 0 was asked for).
    """

    def __init__(self, target: Any, address: str, *, secret: bytes | str | None = None,
                 tls: ssl.SSLContext | None = None, serializer: str = "msgpack",
                 pool: Any = None, max_message_size: int = 64 * 2**20,
                 expose_tracebacks: bool = True, max_concurrent_calls: int = 256,
                 max_unread_bytes: int = MAX_UNREAD_BYTES, handshake_timeout: float = 10.0,
                 idle_timeout: float | None = None, grace: float = 5.0) -> None:
        parsed = parse_address(address)
        self._codec: Codec = codec_for(serializer)
        self._loop_dumps = self._codec.reusable_dumps()
        if isinstance(secret, str):
            secret = secret.encode()
        if secret is not None and not isinstance(secret, bytes):
            raise TypeError(f"secret must be bytes or str, not {type(secret).__name__}")
        if secret is not None and len(secret) < 16:
            raise ValueError("the secret must be at least 16 bytes long")
        if tls is not None and not isinstance(tls, ssl.SSLContext):
            raise TypeError(f"tls must be an ssl.SSLContext, not {type(tls).__name__}")
        if serializer == "pickle" and not secret and not (
                tls is not None and tls.verify_mode == ssl.CERT_REQUIRED):
            raise ValueError(
                "serializer='pickle' lets any client run code on this server: it needs a "
                "secret= or a tls= context that verifies client certificates "
                "(verify_mode=ssl.CERT_REQUIRED)")
        if not isinstance(max_message_size, int) or max_message_size < 1024:
            raise ValueError("max_message_size must be an int >= 1024 bytes")
        if not isinstance(max_concurrent_calls, int) or max_concurrent_calls < 1:
            raise ValueError("max_concurrent_calls must be an int >= 1")
        # Above the transports' high-water mark (64 KiB), so that a connection
        # over it has paused writing and hears when it drains.
        if (not isinstance(max_unread_bytes, int) or isinstance(max_unread_bytes, bool)
                or max_unread_bytes < 2**20):
            raise ValueError(f"max_unread_bytes must be an int >= 1 MiB (1048576), "
                             f"not {max_unread_bytes!r}")
        self._methods = _methods_of(target)
        for method in self._methods.values():
            # Only our own thread pool may be bypassed, and only for a promise.
            method.inline = (pool is None and method.kind == "function"
                             and getattr(method.fn, QUICK_MARK, False) is True)
        self._secret = secret
        self._tls = tls
        self.max_message_size = max_message_size
        self.max_concurrent_calls = max_concurrent_calls
        self.max_unread_bytes = max_unread_bytes
        self.expose_tracebacks = expose_tracebacks
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        self.grace = grace
        self._own_pool = pool is None
        self._pool = pool
        self._pool_is_threads = True
        self._threads: Any = None       # where generators run
        self._own_threads: Any = None
        self._sock = self._listen(parsed)
        self._unix_path = parsed.path if parsed.scheme == "unix" else None
        # Clients on this host switch to it (see _same_host): not with TLS,
        # whose protection a Unix socket would quietly drop.
        self._same_host = (same_host.listen(BACKLOG) if parsed.scheme == "tcp" and tls is None
                           else None)
        self.address = self._public_address(parsed)
        warn_if_exposed(self.address, secret, tls)
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._thread_of_loop: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._same_host_server: asyncio.base_events.Server | None = None
        self._connections: set[_Connection] = set()
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._stopping: asyncio.Event | None = None
        self._posted: deque[tuple[_Connection, bytes, _Call | None]] = deque()
        self._post_scheduled = False
        self._post_lock = threading.Lock()
        self._closed = False
        self._idle: asyncio.Event | None = None
        self._lane: Lane | None = None  # reads connections and runs plain calls (_lane.py)

    # -- set-up ------------------------------------------------------------------------

    @staticmethod
    def _listen(address: Address) -> socket.socket:
        """A listening socket at ``address``; an OSError that names it if that fails."""
        sock = None
        try:
            if address.scheme == "unix":
                with contextlib.suppress(FileNotFoundError):
                    if os.path.exists(address.path) and not _is_socket(address.path):
                        raise ValueError(f"{address.path!r} exists and is not a socket")
                    os.unlink(address.path)
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.bind(address.path)
            else:
                infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
                family, _, _, _, sockaddr = infos[0]
                sock = socket.socket(family, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(sockaddr)
            sock.listen(BACKLOG)
            sock.setblocking(False)
        except OSError as exc:
            if sock is not None:
                sock.close()
            # "Address already in use" alone does not say which: the same
            # type and errno, and the address in the message.
            if exc.errno is None:
                raise type(exc)(f"cannot listen on {address}: {exc}") from exc
            raise type(exc)(exc.errno, f"cannot listen on {address}: "
                                       f"{exc.strerror or exc}") from exc
        except BaseException:
            if sock is not None:
                sock.close()
            raise
        return sock

    def _public_address(self, address: Address) -> str:
        if address.scheme == "unix":
            return str(address)
        host, port = self._sock.getsockname()[:2]
        return str(Address("tcp", host, port, ""))

    # -- running -----------------------------------------------------------------------

    async def _start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread_of_loop = threading.current_thread()
        self._stopping = asyncio.Event()
        from .._pool._pool import Pool

        if self._pool is None:
            self._pool = Pool(POOL_THREADS, mode="thread")
            if self._tls is None and lane_available():
                # Plain calls run on the thread that read them. Not with a pool
                # of the caller's (it runs every handler), nor with TLS, whose
                # socket only the loop may drive.
                self._lane = Lane(POOL_THREADS, self._codec.reusable_dumps,
                                  "bingfa-rpc-thread")
        self._pool_is_threads = getattr(self._pool, "mode", None) == "thread"
        # Generators stream from threads of their own, whatever the pool: their
        # items are handed to this loop as they come, and streams a client
        # leaves open cannot take the threads that plain calls need.
        self._threads = self._own_threads = Pool(STREAM_THREADS, mode="thread")
        if self._sock.family == socket.AF_UNIX:
            self._server = await self._loop.create_unix_server(
                lambda: _Connection(self), sock=self._sock, ssl=self._tls, backlog=BACKLOG)
        else:
            self._server = await self._loop.create_server(
                lambda: _Connection(self), sock=self._sock, ssl=self._tls, backlog=BACKLOG)
        if self._same_host is not None:
            self._same_host_server = await self._loop.create_unix_server(
                lambda: _Connection(self), sock=self._same_host[0], backlog=BACKLOG)

    async def _stop(self) -> None:
        """Stop accepting; let calls in flight finish within the grace period; close."""
        listening = [srv for srv in (self._server, self._same_host_server) if srv is not None]
        for srv in listening:
            srv.close()
        deadline = self._loop.time() + self.grace
        while any(c.calls for c in self._connections) and self._loop.time() < deadline:
            await asyncio.sleep(0.01)
        for conn in list(self._connections):
            for call in list(conn.calls.values()):
                conn._cancel(call)
            conn._flush()
            if conn.transport is not None:
                conn.transport.close()
        for srv in listening:
            await srv.wait_closed()
        if self._lane is not None:
            self._lane.stop()  # a thread still in a call exits when it returns
        for pool in (self._pool if self._own_pool else None, self._own_threads):
            if pool is not None:
                # The grace period is over: queued calls are dropped, and a
                # handler still running finishes on its own (it sees
                # bf.cancelled()); the server does not wait for it.
                pool.shutdown(wait=False, cancel_futures=True)
        if self._unix_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._unix_path)

    async def serve_async(self) -> None:
        """Serve on the running event loop until :meth:`close` is called."""
        await self._start()
        self._started.set()
        await self._until_stopped()

    async def _until_stopped(self) -> None:
        assert self._stopping is not None
        try:
            await self._stopping.wait()
        finally:
            await self._stop()

    def serve_forever(self) -> None:
        """Serve in this thread until :meth:`close` is called (from elsewhere) or Ctrl-C."""
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            runner.run(self.serve_async())

    def _run_thread(self) -> None:
        try:
            with asyncio.Runner(loop_factory=new_event_loop) as runner:
                runner.run(self.serve_async())
        finally:
            self._started.set()

    def start(self) -> Server:
        """Serve in a background thread; returns once the server is listening."""
        if self._thread is not None:
            raise RuntimeError("this server is already running")
        self._thread = threading.Thread(target=self._run_thread, name="bingfa-rpc-server",
                                        daemon=True)
        start_without_sigint(self._thread)
        self._started.wait()
        return self

    def close(self) -> None:
        """Stop serving: calls in flight get the grace period, then connections close."""
        if self._closed:
            return
        self._closed = True
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stopping.set)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        elif loop is None:
            self._sock.close()
            if self._same_host is not None:
                self._same_host[0].close()

    async def aclose(self) -> None:
        """:meth:`close` from the server's own event loop."""
        if not self._closed:
            self._closed = True
            assert self._stopping is not None
            self._stopping.set()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    async def __aenter__(self) -> Server:
        await self._start()
        self._started.set()
        self._task = asyncio.get_running_loop().create_task(self._until_stopped())
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()
        await self._task

    # -- plumbing shared by connections -------------------------------------------------

    def _frame(self, message: list[Any]) -> bytes:
        """``message`` as a frame, from any thread."""
        data = self._codec.dumps(message)
        return pack_header(len(data)) + data

    def _frame_on_loop(self, message: list[Any]) -> bytes:
        """``message`` as a frame, from the loop's thread (with its own reused encoder)."""
        data = self._loop_dumps(message)
        return pack_header(len(data)) + data

    def _cannot_encode_result(self, method: str, value: Any,
                              exc: SerializationError) -> SerializationError:
        return cannot_encode("the server", f"the result of method {method!r}", value,
                             self._codec, exc)

    def _cannot_encode_item(self, method: str, item: Any,
                            exc: SerializationError) -> SerializationError:
        return cannot_encode("the server", f"an item streamed by method {method!r}", item,
                             self._codec, exc)

    def _post_error(self, conn: _Connection, call: _Call, exc: BaseException) -> None:
        """From a pool thread: the call failed; the loop sends the error."""
        def fail() -> None:
            if call.id in conn.calls:  # not cancelled or expired meanwhile
                conn._finish(call)
                conn._error(call.id, exc)

        self._call_on_loop(fail)

    def _post_frame(self, conn: _Connection, frame: bytes, done: _Call | None = None) -> None:
        """From any thread: queue ``frame`` for ``conn`` (and end the call ``done``).

        Results from many pool threads cost the loop one wake-up per batch,
        not one per result.
        """
        with self._post_lock:
            self._posted.append((conn, frame, done))
            conn.posted_bytes += len(frame)
            if self._post_scheduled:
                return
            self._post_scheduled = True
        try:
            self._loop.call_soon_threadsafe(self._drain_posted)
        except RuntimeError:  # the loop is closed: the server is gone
            pass

    def _drain_posted(self) -> None:
        with self._post_lock:
            posted, self._posted = self._posted, deque()
            self._post_scheduled = False
        touched = set()
        for conn, frame, done in posted:
            if done is not None:
                if done.id not in conn.calls:
                    continue  # cancelled or expired: the client has its answer
                conn._finish(done)
            if frame and not conn.closed:
                conn.out.append(frame)
                conn.out_bytes += len(frame)
                touched.add(conn)
        # Uncounted only now that they count in conn.out: a thread that looks
        # meanwhile (to start a call or not) sees them twice rather than not at all.
        with self._post_lock:
            for conn, frame, _ in posted:
                conn.posted_bytes -= len(frame)  # in conn.out now, then the transport
        for conn in touched:
            conn._flush()

    def _call_on_loop(self, fn: Callable[[], Any]) -> None:
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(fn)


def warn_if_exposed(address: str, secret: bytes | None, tls: ssl.SSLContext | None) -> bool:
    """Log a warning (logger ``bingfa.rpc``) for a server anyone on the network can call.

    ``address`` is where the server listens (what ``server.address`` says).
    A TCP address that is not loopback, with neither a secret nor TLS, lets
    whoever reaches it call every method. Serving so is allowed (a trusted
    network, a firewall), so it is a warning, not an error. Whether it warned.
    """
    if secret or tls is not None:
        return False
    parsed = parse_address(address)
    if parsed.scheme != "tcp":
        return False
    import ipaddress  # here: it costs milliseconds at import, and only a server asks

    try:
        if ipaddress.ip_address(parsed.host).is_loopback:
            return False
    except ValueError:  # a host name: serve() reports the address it bound, so rarely
        if parsed.host == "localhost":
            return False
    logger.warning(
        "serving %s without a secret or TLS: anyone who can reach that address can call "
        "every method it serves. Pass secret= (bingfa rpc serve --secret-file FILE) or tls=, "
        "or listen on 127.0.0.1 only", address)
    return True


def _is_socket(path: str) -> bool:
    import stat

    return stat.S_ISSOCK(os.stat(path).st_mode)


def serve(target: Any, address: str, *, secret: bytes | str | None = None,
          tls: ssl.SSLContext | None = None, serializer: str = "msgpack", pool: Any = None,
          max_message_size: int = 64 * 2**20, expose_tracebacks: bool = True,
          max_concurrent_calls: int = 256, max_unread_bytes: int = MAX_UNREAD_BYTES,
          handshake_timeout: float = 10.0, idle_timeout: float | None = None,
          grace: float = 5.0) -> Server:
    """Serve ``target``'s public methods (or a dict of functions) at ``address``.

    The socket is bound at once (``server.address`` tells the port when 0 was
    asked for); serving starts with ``with serve(...) as server:`` (a
    background thread), ``async with`` (the running loop) or
    ``server.serve_forever()``.

    Args:
        target: an object, whose public methods are served, or a dict of
            name -> function. A class is refused (TypeError) when its methods
            need an instance: pass ``MyClass()``, not ``MyClass``.
        address: ``tcp://HOST:PORT`` (port 0: any free port) or ``unix:///PATH``.
            A TCP server without TLS (on Linux) also listens on a Unix socket
            of its own, in the abstract namespace, which clients on its host
            move to (see :func:`bingfa.rpc.connect`'s ``unix_when_local``).
        secret: clients must prove they know it (HMAC-SHA256 challenge-response,
            both ways) before any call runs. At least 16 bytes.
        tls: an :class:`ssl.SSLContext` for the server side; with
            ``verify_mode=CERT_REQUIRED`` clients need certificates.
        serializer: ``"msgpack"`` (default: plain data, nothing is ever
            unpickled) or ``"pickle"`` (anything; needs ``secret`` or TLS
            with client certificates).
        pool: a :class:`bingfa.Pool` for plain functions (default: 32 threads).
        max_message_size: the largest frame accepted, checked from its header.
        expose_tracebacks: send handler tracebacks to clients.
        max_concurrent_calls: calls in flight per connection before the
            server stops reading from it.
        max_unread_bytes: answer bytes (32 MiB by default, at least 1 MiB)
            a connection may have waiting for its client to read. Beyond
            it the server stops reading that connection, starts none of its
            calls and pauses its streams until the client reads, so a client
            that sends calls and never reads their answers holds at most
            this much (plus the answers of calls already running).
        handshake_timeout, idle_timeout: seconds before a connection that
            does not log in, or does nothing, is closed.
        grace: seconds calls in flight get to finish when the server stops.

    Raises:
        ValueError: an address that does not parse, a port out of range,
            pickle without authentication, an unknown serializer, a target
            with nothing to serve. TypeError: a class whose methods need an
            instance.
        OSError: the address is in use.
    """
    return Server(target, address, secret=secret, tls=tls, serializer=serializer, pool=pool,
                  max_message_size=max_message_size, expose_tracebacks=expose_tracebacks,
                  max_concurrent_calls=max_concurrent_calls, max_unread_bytes=max_unread_bytes,
                  handshake_timeout=handshake_timeout, idle_timeout=idle_timeout, grace=grace)
