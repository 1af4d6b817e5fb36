"""A client on the server's own host talks to it over a Unix socket, not TCP.

A call over loopback TCP runs the kernel's whole TCP path twice; a Unix
stream socket skips it. Measured here (docs/benchmarks.md), one caller: a
p50 of 34 µs instead of 50 on an idle host, and from as good to 27 µs better
beside two busy loops.

So a TCP server without TLS (on Linux) also listens on a Unix socket of its
own, in the abstract namespace (no file to clean up; gone with the server),
under a random name. A client that connected to a loopback address asks
for that name right after the handshake (the call ``__same_host__``, before
any other), connects to it, logs in there too, and drops the TCP connection.
Where the name cannot be reached (the TCP port was forwarded from another
host or network namespace, a server without one), it keeps the TCP connection.

Nothing is trusted that TCP did not already give: the name comes from the
server the client reached over TCP, a name that is held cannot be taken by
another process, and the login (with the secret, when there is one) runs
again on the Unix socket.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from typing import Any

from ._errors import ConnectionLostError
from ._wire import CALL, HEADER, RESULT, Address

__all__ = ["MAX_ANSWER", "METHOD", "answer_size", "ask_frame", "connect_nowait", "listen",
           "name_in", "worth_asking"]

METHOD = "__same_host__"  # the call that asks the server for its Unix socket's name
MAX_ANSWER = 4096  # bytes: a name, or an error from a server that has no such call
# The IPv6 addresses that reach this host: loopback, and unspecified (what a
# server bound to "::" says it listens on; a connection to it stays here).
IPV6_THIS_HOST = (socket.inet_pton(socket.AF_INET6, "::1"),
                  socket.inet_pton(socket.AF_INET6, "::"))


def listen(backlog: int) -> tuple[socket.socket, str] | None:
    """A listening Unix socket under a fresh abstract name, and the name; None where
    there is no abstract namespace (not Linux) or it fails."""
    if not sys.platform.startswith("linux"):
        return None
    name = f"\0bingfa-rpc-{os.urandom(16).hex()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(name)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        return None
    return sock, name


def worth_asking(address: Address) -> bool:
    """Whether a client of ``address`` (no TLS) may be on the server's host: a loopback
    address, or an unspecified one (``0.0.0.0``, ``::``: a connection to it stays here)."""
    if address.scheme != "tcp":
        return False
    host = address.host
    if host == "localhost":
        return True
    # (Parsed here rather than with ipaddress: a client need not import it.)
    try:
        packed = socket.inet_pton(socket.AF_INET, host)
    except OSError:
        pass
    else:
        return packed[0] == 127 or packed == bytes(4)  # 127.0.0.0/8, 0.0.0.0
    try:
        return socket.inet_pton(socket.AF_INET6, host) in IPV6_THIS_HOST
    except OSError:
        return False


def ask_frame(dumps: Any) -> bytes:
    """The frame of the ``__same_host__`` call (call id 1), encoded with ``dumps``."""
    data: bytes = dumps([CALL, 1, METHOD, [], None, None, None])
    return HEADER.pack(len(data)) + data


def answer_size(header: bytes) -> int:
    """The size of the answer whose frame header is ``header``.

    Raises:
        ConnectionLostError: more than a name could take (the stream cannot be
            trusted to be where the client thinks it is).
    """
    (size,) = HEADER.unpack(header)
    if size > MAX_ANSWER:
        raise ConnectionLostError(f"the server answered its first call with {size} bytes")
    return int(size)


def name_in(loads: Callable[[bytes], Any], answer: bytes) -> str | None:
    """The Unix socket's name in the server's answer; None for any other answer (a
    server without one answers None, an older server an error)."""
    try:
        message = loads(answer)
    except Exception:  # the connection is fine: it has no Unix socket to offer
        return None
    if (type(message) is list and len(message) == 3 and message[0] == RESULT
            and message[1] == 1 and type(message[2]) is str
            and message[2].startswith("\0bingfa-rpc-")):
        return message[2]
    return None


def connect_nowait(name: str) -> socket.socket | None:
    """A non-blocking Unix socket connected to ``name``; None if this process cannot
    reach it (not on the server's host, or its queue of connections is full)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        sock.connect(name)
    except OSError:
        sock.close()
        return None
    return sock
