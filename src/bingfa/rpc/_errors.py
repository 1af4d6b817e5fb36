"""The errors of bingfa RPC, and how a remote exception is sent and rebuilt.

A handler's exception travels as its type's qualified name, its message, its
arguments (when they can be serialized) and its traceback. The client rebuilds
it with its own type when that type is a builtin exception, one of bingfa's, or
registered with :func:`register_error`; otherwise it raises
:class:`RemoteError`, which names the remote type. Only registered constructors
are ever called: nothing from the network picks what code runs.
"""

from __future__ import annotations

import builtins
import traceback
from typing import Any

from .._core import _errors as core
from .._core._errors import BingfaError, RemoteTraceback

__all__ = [
    "AuthenticationError", "ConnectionLostError", "RPCTimeoutError", "RemoteError",
    "describe", "rebuild", "register_error",
]


class RemoteError(BingfaError):
    """A handler raised an exception whose type this side does not know.

    Attributes:
        remote_type: the qualified name of the remote exception's type.
        remote_args: its arguments, when they could be sent.
    """

    def __init__(self, message: str, remote_type: str = "", remote_args: Any = None) -> None:
        super().__init__(message)
        self.remote_type = remote_type
        self.remote_args = remote_args

    def __str__(self) -> str:
        return f"{self.remote_type}: {self.args[0]}" if self.remote_type else str(self.args[0])

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.args[0], self.remote_type, self.remote_args))


class ConnectionLostError(BingfaError, ConnectionError):
    """The connection to the server closed while a call was waiting for its answer.

    The next call on the same client connects again.
    """


class RPCTimeoutError(BingfaError, TimeoutError):
    """A call did not finish within its timeout; the server was told to cancel it."""


class AuthenticationError(BingfaError, PermissionError):
    """The handshake failed: a wrong or missing secret, on either side."""


for _cls in (RemoteError, ConnectionLostError, RPCTimeoutError, AuthenticationError):
    _cls.__module__ = "bingfa.rpc"

_registered: dict[str, type[BaseException]] = {}


def _name(cls: type) -> str:
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def register_error(cls: type[BaseException]) -> type[BaseException]:
    """Re-raise ``cls`` with its own type when a handler raises it (a decorator too).

    Register it on the client (and it must exist on the server under the same
    module and name). It is rebuilt as ``cls(*args)`` when its arguments could
    be sent, else as ``cls(message)``.
    """
    if not (isinstance(cls, type) and issubclass(cls, BaseException)):
        raise TypeError(f"register_error() takes an exception class, not {cls!r}")
    _registered[_name(cls)] = cls
    return cls


for _cls in (RemoteError, ConnectionLostError, RPCTimeoutError, AuthenticationError):
    register_error(_cls)
for _export in core.__all__:
    _obj = getattr(core, _export)
    if isinstance(_obj, type) and issubclass(_obj, BingfaError):
        register_error(_obj)


def describe(exc: BaseException, with_traceback: bool) -> tuple[str, str, Any, str | None]:
    """(type name, message, args, traceback text) of a handler's exception."""
    text = None
    if with_traceback:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return _name(type(exc)), str(exc), list(exc.args), text


def _public_error(type_name: str) -> type[BaseException] | None:
    """One of bingfa's public errors defined outside the core tree, by its name.

    ``bingfa.ResultTimeoutError`` lives with the pool, which this module does
    not import (the client does not need a pool); it is looked up, and
    registered, when a server first sends one. Only names bingfa exports are
    looked up, so the network still picks nothing but bingfa's own errors.
    """
    module, _, name = type_name.rpartition(".")
    if module != "bingfa":
        return None
    import bingfa

    if name not in bingfa._HOMES:
        return None
    obj = getattr(bingfa, name)
    if isinstance(obj, type) and issubclass(obj, BingfaError):
        register_error(obj)
        return obj
    return None


def rebuild(type_name: str, message: str, args: Any, text: str | None) -> BaseException:
    """The exception to raise on the client for a remote one."""
    cls = _registered.get(type_name) or _public_error(type_name)
    if cls is None and "." not in type_name:
        candidate = getattr(builtins, type_name, None)
        if isinstance(candidate, type) and issubclass(candidate, Exception):
            cls = candidate
    exc: BaseException
    if cls is None:
        exc = RemoteError(message, type_name, args)
    else:
        try:
            exc = cls(*args) if isinstance(args, list) else cls(message)
        except Exception:
            try:
                exc = cls(message)
            except Exception:
                exc = RemoteError(message, type_name, args)
    if text:
        exc.__cause__ = RemoteTraceback(text)
    return exc
