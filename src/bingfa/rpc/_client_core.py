"""What the thread-safe and the asyncio RPC clients share.

The login (the client's half of the handshake, without I/O), the stream
flow-control window, and how an answer that cannot be decoded fails only its
own call. Both clients import from here; neither imports the other's core.
"""

from __future__ import annotations

import contextlib

from .._core._errors import SerializationError
from ._codec import MSGPACK, PICKLE, Codec, plain_msgpack
from ._errors import AuthenticationError
from ._wire import (
    ERROR,
    FLAG_PICKLE,
    FLAG_SECRET,
    ITEM,
    RESULT,
    check_welcome,
    login,
    read_hello,
)

__all__ = ["STREAM_WINDOW", "Login", "secret_bytes", "undecodable_answer"]

# Items a stream may send ahead of its consumer before it waits for credit.
STREAM_WINDOW = 64


def undecodable_answer(payload: memoryview, exc: Exception) -> tuple[int, int, BaseException]:
    """(kind, call id, error) for an answer this side cannot decode.

    The answer carries a type the server registered and the client did not,
    say: that call fails alone, with SerializationError, and the connection
    carries on. Raises ``exc`` when even the call id cannot be read.
    """
    skeleton = None
    with contextlib.suppress(Exception):
        skeleton = plain_msgpack(payload)  # extension types left undecoded
    if (type(skeleton) is list and len(skeleton) >= 3 and skeleton[0] in (RESULT, ERROR, ITEM)
            and type(skeleton[1]) is int):
        error = SerializationError(f"the client cannot decode the server's answer: {exc}")
        return skeleton[0], skeleton[1], error
    raise exc


def secret_bytes(secret: bytes | str | None) -> bytes | None:
    if isinstance(secret, str):
        return secret.encode()
    if secret is not None and not isinstance(secret, bytes):
        raise TypeError(f"secret must be bytes or str, not {type(secret).__name__}")
    return secret


class Login:
    """The client's side of the handshake, without I/O: both clients drive it.

    ``Login(hello, secret)`` checks the server's HELLO and makes ``message``,
    the LOGIN to send; :meth:`finish` checks the server's answer and says
    which codec follows.
    """

    def __init__(self, hello: bytes, secret: bytes | None) -> None:
        self.flags, self.server_nonce = read_hello(hello)
        self.secret = secret
        if secret and not self.flags & FLAG_SECRET:
            raise AuthenticationError("the server does not ask for a secret, so it cannot "
                                      "prove it knows ours: refusing to talk to it")
        self.message, self.client_nonce = login(secret, self.server_nonce)

    def finish(self, answer: bytes, allow_pickle: bool) -> Codec:
        """The codec to speak, given the server's WELCOME (empty if it hung up).

        Raises:
            AuthenticationError: a wrong or missing secret, a server that cannot
                prove it knows ours, or pickle from a server that is not trusted.
        """
        secret, flags = self.secret, self.flags
        if not check_welcome(answer, secret, self.server_nonce, self.client_nonce):
            if not secret and flags & FLAG_SECRET:
                raise AuthenticationError("the server requires a secret: pass secret=")
            raise AuthenticationError("the server rejected the handshake: wrong secret")
        if flags & FLAG_PICKLE:
            if not allow_pickle:
                raise AuthenticationError("the server uses pickle; a client unpickles only "
                                          "from a server that proved it knows the secret "
                                          "(or over TLS)")
            return PICKLE
        return MSGPACK
