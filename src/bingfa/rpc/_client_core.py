"""What the thread-safe and the asyncio RPC clients share.

The login (the client's half of the handshake, without I/O), the stream
flow-control window, and how an answer that cannot be decoded fails only its
own call. Both clients import from here; neither imports the other's core.
"""

from __future__ import annotations

import contextlib
import ssl

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

__all__ = ["SECRET_REQUIRED", "STREAM_WINDOW", "Login", "secret_bytes", "undecodable_answer"]

# How the error for a missing secret starts: the command line words its own hint.
SECRET_REQUIRED = "the server requires a secret"

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

    def finish(self, answer: bytes, tls: ssl.SSLContext | None) -> Codec:
        """The codec to speak, given the server's WELCOME (empty if it hung up).

        ``tls`` is the client's TLS context, if any: it decides, with the
        secret, whether the server is trusted with pickle.

        Raises:
            AuthenticationError: a wrong or missing secret, a server that cannot
                prove it knows ours, or pickle from a server that is not trusted.
        """
        secret, flags = self.secret, self.flags
        if not check_welcome(answer, secret, self.server_nonce, self.client_nonce):
            if not secret and flags & FLAG_SECRET:
                raise AuthenticationError(f"{SECRET_REQUIRED}: pass secret=")
            raise AuthenticationError("the server rejected the handshake: wrong secret")
        if flags & FLAG_PICKLE:
            # Unpickling runs whatever code the data names: only a server that
            # proved who it is may send pickle. A secret is proved by the
            # handshake just checked; TLS proves it only when the context
            # verifies the server's certificate (CERT_NONE, common in
            # development, accepts any server, or anyone in the middle).
            if not secret and not server_verified(tls):
                raise AuthenticationError(untrusted_pickle(tls))
            return PICKLE
        return MSGPACK


def server_verified(tls: ssl.SSLContext | None) -> bool:
    """Whether a client's TLS context makes sure of the server's identity."""
    return tls is not None and tls.verify_mode == ssl.CERT_REQUIRED


def untrusted_pickle(tls: ssl.SSLContext | None) -> str:
    """Why the client refuses a pickle server it cannot trust, and what to do."""
    if tls is None:
        why = "this client has no secret and no TLS"
    else:
        why = (f"this client has no secret, and its TLS context does not verify the server "
               f"(verify_mode={tls.verify_mode.name})")
    return (f"the server uses pickle, and unpickling its answers would let it (or anyone "
            f"between us) run code in this client; {why}. Pass the server's secret= , or a "
            f"tls= context that verifies the server's certificate (verify_mode=ssl."
            f"CERT_REQUIRED, e.g. ssl.create_default_context(cafile=...))")
