"""bingfa RPC on the wire: addresses, the handshake, frames and messages.

A connection starts with a fixed-size binary handshake, decoded without any
serializer, so nothing a stranger sends is deserialized before it proves it
knows the secret::

    server -> client  HELLO   b"BFRPC" version flags nonce_s(32)
    client -> server  LOGIN   b"BFRPC" version nonce_c(32) proof_c(32)
    server -> client  WELCOME b"\\x01" proof_s(32)      (or b"\\x00": rejected)

``flags`` says whether a secret is required and which serializer follows.
With a secret, ``proof_c = HMAC-SHA256(secret, b"client" + nonce_s + nonce_c)``
and ``proof_s`` the same with ``b"server"``: each side proves it knows the
secret without sending it, and fresh nonces on both sides make replays
useless. Without a secret the proofs are zeros.

Then each message is a frame: a 4-byte big-endian length, then that many
bytes of serialized message. The length is checked against the limit before
anything is allocated. Messages are arrays whose first item is their kind:

    CALL    [0, id, method, args, kwargs, timeout, window]
    RESULT  [1, id, value]
    ERROR   [2, id, type name, message, args, traceback]
    STREAM  [3, id]            the result is a stream; items follow
    ITEM    [4, id, value]
    END     [5, id]
    CREDIT  [6, id, n]         the client can take n more items
    CANCEL  [7, id]            the client gave up: stop the handler
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Callable
from typing import Any, NamedTuple

__all__ = [
    "HEADER",
    "MAX_HEADER_SIZE",
    "Address",
    "FrameReader",
    "parse_address",
]

CALL, RESULT, ERROR, STREAM, ITEM, END, CREDIT, CANCEL = range(8)

MAGIC = b"BFRPC"
VERSION = 1
NONCE_SIZE = 32
PROOF_SIZE = 32
HELLO_SIZE = len(MAGIC) + 2 + NONCE_SIZE
LOGIN_SIZE = len(MAGIC) + 1 + NONCE_SIZE + PROOF_SIZE
WELCOME_SIZE = 1 + PROOF_SIZE
FLAG_SECRET = 1
FLAG_PICKLE = 2
ACCEPTED, REJECTED = b"\x01", b"\x00"
_ZERO_PROOF = bytes(PROOF_SIZE)

HEADER = struct.Struct(">I")
MAX_HEADER_SIZE = HEADER.size
pack_header = HEADER.pack
unpack_header = HEADER.unpack_from


class Address(NamedTuple):
    """Where a server listens: ``tcp`` with host and port, or ``unix`` with a path."""

    scheme: str
    host: str
    port: int
    path: str

    def __str__(self) -> str:
        if self.scheme == "unix":
            return f"unix://{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp://{host}:{self.port}"


def parse_address(address: str) -> Address:
    """``tcp://HOST:PORT`` or ``unix:///PATH`` as an :class:`Address`.

    Raises:
        ValueError: anything else, a port out of 0..65535, or an empty host or path.
    """
    if not isinstance(address, str):
        raise TypeError(f"an address is a string such as 'tcp://127.0.0.1:8000', "
                        f"not {address!r}")
    scheme, sep, rest = address.partition("://")
    if not sep or scheme not in ("tcp", "unix"):
        raise ValueError(f"address {address!r} does not parse: use tcp://HOST:PORT or "
                         "unix:///PATH")
    if scheme == "unix":
        if not rest:
            raise ValueError(f"address {address!r} has no socket path")
        return Address("unix", "", 0, rest)
    if rest.startswith("["):  # [::1]:8000
        host, close, port_text = rest[1:].partition("]")
        if not close or not port_text.startswith(":"):
            raise ValueError(f"address {address!r} does not parse: use tcp://[IPv6]:PORT")
        port_text = port_text[1:]
    else:
        host, colon, port_text = rest.rpartition(":")
        if not colon:
            raise ValueError(f"address {address!r} has no port: use tcp://HOST:PORT")
    if not host:
        raise ValueError(f"address {address!r} has no host")
    if not port_text.isdigit():
        raise ValueError(f"address {address!r}: the port {port_text!r} is not a number")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"address {address!r}: port {port} is out of range 0..65535")
    return Address("tcp", host, port, "")


# -- handshake ----------------------------------------------------------------------------


def hello(secret: bytes | None, pickle: bool) -> tuple[bytes, bytes]:
    """The server's HELLO, and its nonce."""
    nonce = os.urandom(NONCE_SIZE)
    flags = (FLAG_SECRET if secret else 0) | (FLAG_PICKLE if pickle else 0)
    return MAGIC + bytes([VERSION, flags]) + nonce, nonce


def read_hello(data: bytes) -> tuple[int, bytes]:
    """The flags and the nonce of a HELLO; ValueError if it is none."""
    if len(data) != HELLO_SIZE or not data.startswith(MAGIC):
        raise ValueError("the peer is not a bingfa RPC server")
    if data[len(MAGIC)] != VERSION:
        raise ValueError(f"the server speaks bingfa RPC version {data[len(MAGIC)]}, "
                         f"this client {VERSION}")
    return data[len(MAGIC) + 1], data[len(MAGIC) + 2:]


def _proof(secret: bytes | None, who: bytes, first: bytes, second: bytes) -> bytes:
    if not secret:
        return _ZERO_PROOF
    return hmac.new(secret, who + first + second, hashlib.sha256).digest()


def login(secret: bytes | None, server_nonce: bytes) -> tuple[bytes, bytes]:
    """The client's LOGIN, and its nonce."""
    nonce = os.urandom(NONCE_SIZE)
    proof = _proof(secret, b"client", server_nonce, nonce)
    return MAGIC + bytes([VERSION]) + nonce + proof, nonce


def check_login(data: bytes, secret: bytes | None, server_nonce: bytes) -> bytes | None:
    """The client's nonce if its LOGIN is right (and proves the secret), else None."""
    if len(data) != LOGIN_SIZE or not data.startswith(MAGIC) or data[len(MAGIC)] != VERSION:
        return None
    start = len(MAGIC) + 1
    nonce = data[start:start + NONCE_SIZE]
    proof = data[start + NONCE_SIZE:]
    if secret and not hmac.compare_digest(proof, _proof(secret, b"client", server_nonce,
                                                         nonce)):
        return None
    return nonce


def welcome(secret: bytes | None, server_nonce: bytes, client_nonce: bytes) -> bytes:
    """The server's answer to a good LOGIN: accepted, and its own proof."""
    return ACCEPTED + _proof(secret, b"server", client_nonce, server_nonce)


def check_welcome(data: bytes, secret: bytes | None, server_nonce: bytes,
                  client_nonce: bytes) -> bool:
    """Whether the server accepted us and, with a secret, proved it knows it too."""
    if len(data) != WELCOME_SIZE or data[:1] != ACCEPTED:
        return False
    if not secret:
        return True
    return hmac.compare_digest(data[1:], _proof(secret, b"server", client_nonce,
                                                server_nonce))


class FrameReader:
    """Cuts the bytes a client reads into messages.

    A frame that arrives in pieces waits in a buffer, and is copied out only
    once it is whole: a big answer read 64 KiB at a time costs one copy, not
    one per piece.
    """

    def __init__(self, loads: Callable[[Any], Any], limit: int = 2**31,
                 undecodable: Callable[[memoryview, Exception], None] | None = None) -> None:
        self.loads = loads
        self.limit = limit
        # Called with a frame that does not decode (and the error), which it
        # may settle alone; without it, or if it raises, the error goes up.
        self.undecodable = undecodable
        self._buffer = bytearray()
        self._needed = 4  # bytes the buffered frame needs before it can be read

    @property
    def buffered(self) -> int:
        """Bytes of a frame begun and not yet whole."""
        return len(self._buffer)

    def feed(self, data: bytes, deliver: Callable[[Any], None]) -> None:
        """Hand every whole message in ``data`` (after what was buffered) to ``deliver``.

        Raises:
            ValueError: a frame over the limit; whatever ``loads`` raises.
        """
        buffer = self._buffer
        if buffer:
            buffer += data
            if len(buffer) < self._needed:
                return
            data = bytes(buffer)
            buffer.clear()
        pos = 0
        end = len(data)
        loads = self.loads
        view = memoryview(data)
        try:
            while end - pos >= 4:
                (size,) = HEADER.unpack_from(data, pos)
                if size > self.limit:
                    raise ValueError(f"a frame of {size} bytes is over the limit")
                if end - pos - 4 < size:
                    break
                payload = view[pos + 4:pos + 4 + size]
                pos += 4 + size
                try:
                    message = loads(payload)
                except Exception as exc:
                    if self.undecodable is None:
                        raise
                    self.undecodable(payload, exc)
                    continue
                deliver(message)
        finally:
            view.release()
            if pos < end:
                buffer += data[pos:]
                self._needed = (4 + HEADER.unpack_from(data, pos)[0]) if end - pos >= 4 else 4
