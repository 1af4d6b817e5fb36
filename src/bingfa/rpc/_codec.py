"""How RPC messages become bytes: msgpack with extension types, or pickle.

msgpack (the default) can only build plain data: nothing arriving over the
network is ever turned into code or arbitrary objects. Python types msgpack
lacks travel as extension types:

====  ==================  =====================================
code  type                payload
====  ==================  =====================================
1     tuple               the items, as a msgpack array
2     set                 the items
3     frozenset           the items
4     datetime.datetime   ISO 8601 text (keeps the time zone)
5     datetime.date       ISO 8601 text
6     datetime.time       ISO 8601 text
7     datetime.timedelta  [days, seconds, microseconds]
8     decimal.Decimal     its text
9     int beyond 64 bits  its decimal text
10    complex             [real, imag]
11    a registered type   [its registered name, its encoded state]
====  ==================  =====================================

:func:`register` adds a type of your own, by name, with a function that turns
it into plain data and one that rebuilds it: the receiver only ever calls
constructors it registered itself.

``pickle`` is there for trusted peers and carries anything, which is why
:func:`bingfa.rpc.serve` refuses it without authentication.
"""

from __future__ import annotations

import datetime
import decimal
import functools
import pickle
import threading
from collections.abc import Callable
from typing import Any

import msgpack  # type: ignore[import-untyped]

from .._core._errors import SerializationError

__all__ = ["Codec", "arguments_error", "cannot_encode", "codec_for", "plain_msgpack", "register"]

_TUPLE, _SET, _FROZENSET, _DATETIME, _DATE, _TIME, _TIMEDELTA, _DECIMAL, _BIGINT, _COMPLEX, \
    _CUSTOM = range(1, 12)

_INT64_MIN, _UINT64_MAX = -(2**63), 2**64 - 1


class _Registered:
    __slots__ = ("cls", "decode", "encode", "name")

    def __init__(self, cls: type, name: str, encode: Callable[[Any], Any],
                 decode: Callable[[Any], Any]) -> None:
        self.cls = cls
        self.name = name
        self.encode = encode
        self.decode = decode


_by_type: dict[type, _Registered] = {}
_by_name: dict[str, _Registered] = {}


def register(cls: type, *, name: str | None = None, encode: Callable[[Any], Any] | None = None,
             decode: Callable[[Any], Any] | None = None) -> type:
    """Let instances of ``cls`` travel over msgpack RPC; returns ``cls`` (a decorator too).

    Both ends must register the type under the same ``name`` (default: its
    module and qualified name). ``encode(obj)`` returns plain data (what
    msgpack and the other registered types can carry) and ``decode(data)``
    rebuilds the object. Without them, a dataclass travels as its fields and
    any other class as its ``__dict__``, rebuilt with ``cls(**fields)``.

    Example::

        @bf.rpc.register
        @dataclasses.dataclass
        class Point:
            x: float
            y: float
    """
    if not isinstance(cls, type):
        raise TypeError(f"register() takes a class, not {cls!r}")
    key = name or f"{cls.__module__}.{cls.__qualname__}"
    if encode is None:
        encode = _fields
    if decode is None:
        def decode(data: Any, cls: type = cls) -> Any:
            return cls(**data)
    entry = _Registered(cls, key, encode, decode)
    _by_type[cls] = entry
    _by_name[key] = entry
    return cls


def _fields(obj: Any) -> dict[str, Any]:
    fields = getattr(obj, "__dataclass_fields__", None)
    if fields is not None:
        return {name: getattr(obj, name) for name in fields}
    return dict(vars(obj))


def _default(obj: Any) -> Any:
    kind = type(obj)
    if kind is tuple:
        return msgpack.ExtType(_TUPLE, _pack(list(obj)))
    if kind is set:
        return msgpack.ExtType(_SET, _pack(list(obj)))
    if kind is frozenset:
        return msgpack.ExtType(_FROZENSET, _pack(list(obj)))
    if kind is datetime.datetime:
        return msgpack.ExtType(_DATETIME, obj.isoformat().encode())
    if kind is datetime.date:
        return msgpack.ExtType(_DATE, obj.isoformat().encode())
    if kind is datetime.time:
        return msgpack.ExtType(_TIME, obj.isoformat().encode())
    if kind is datetime.timedelta:
        return msgpack.ExtType(_TIMEDELTA, _pack([obj.days, obj.seconds, obj.microseconds]))
    if kind is decimal.Decimal:
        return msgpack.ExtType(_DECIMAL, str(obj).encode())
    if kind is int:  # only reached beyond 64 bits
        return msgpack.ExtType(_BIGINT, str(obj).encode())
    if kind is complex:
        return msgpack.ExtType(_COMPLEX, _pack([obj.real, obj.imag]))
    entry = _by_type.get(kind)
    if entry is not None:
        return msgpack.ExtType(_CUSTOM, _pack([entry.name, entry.encode(obj)]))
    # Subclasses of the builtins (an IntEnum, a namedtuple, a dict subclass)
    # travel as their base, as json would send them.
    for base, convert in _BASES:
        if isinstance(obj, base):
            return convert(obj)
    raise TypeError(f"cannot send an object of type {kind.__module__}.{kind.__qualname__} "
                    "over msgpack RPC: register it with bingfa.rpc.register(), or convert it")


_BASES: list[tuple[type, Callable[[Any], Any]]] = [
    (bool, bool), (int, int), (float, float), (str, str), (bytes, bytes),
    (tuple, tuple), (list, list), (dict, dict), (set, set), (frozenset, frozenset),
]


# Extension types nest by decoding their payload from inside the decoder, on
# the C stack: a frame of a thousand nested tuples would overflow it and kill
# the process. Nothing real nests this deep.
MAX_EXT_DEPTH = 32
_depth = threading.local()


def _ext_hook(code: int, data: bytes) -> Any:
    depth = getattr(_depth, "value", 0)
    if depth >= MAX_EXT_DEPTH:
        raise ValueError(f"extension types nested more than {MAX_EXT_DEPTH} deep")
    _depth.value = depth + 1
    try:
        return _decode_ext(code, data)
    finally:
        _depth.value = depth


def _decode_ext(code: int, data: bytes) -> Any:
    if code == _TUPLE:
        return tuple(_unpack(data))
    if code == _SET:
        return set(_unpack(data))
    if code == _FROZENSET:
        return frozenset(_unpack(data))
    if code == _DATETIME:
        return datetime.datetime.fromisoformat(data.decode())
    if code == _DATE:
        return datetime.date.fromisoformat(data.decode())
    if code == _TIME:
        return datetime.time.fromisoformat(data.decode())
    if code == _TIMEDELTA:
        days, seconds, micros = _unpack(data)
        return datetime.timedelta(days, seconds, micros)
    if code == _DECIMAL:
        return decimal.Decimal(data.decode())
    if code == _BIGINT:
        return int(data.decode())
    if code == _COMPLEX:
        real, imag = _unpack(data)
        return complex(real, imag)
    if code == _CUSTOM:
        name, state = _unpack(data)
        entry = _by_name.get(name)
        if entry is None:
            raise ValueError(f"received an object of type {name!r}, which is not registered "
                             "here with bingfa.rpc.register()")
        return entry.decode(state)
    return msgpack.ExtType(code, data)


def plain_msgpack(data: bytes | memoryview) -> Any:
    """``data`` decoded with extension types left as they are (to read a bad frame's id)."""
    return msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True)


def _pack(obj: Any) -> bytes:
    data: bytes = msgpack.packb(obj, default=_default, strict_types=True, use_bin_type=True)
    return data


# A partial, not a function: every message read goes through it, and a C
# partial costs no Python frame and no keyword parsing of our own.
_unpack: Callable[[bytes | memoryview], Any] = functools.partial(
    msgpack.unpackb, ext_hook=_ext_hook, raw=False, strict_map_key=False, use_list=True)


class Codec:
    """Turns messages into bytes and back; ``name`` is what the handshake announces."""

    def __init__(self, name: str, dumps: Callable[[Any], bytes],
                 loads: Callable[[bytes | memoryview], Any]) -> None:
        self.name = name
        self._dumps = dumps
        self.loads = loads

    def reusable_dumps(self) -> Callable[[Any], bytes]:
        """A :meth:`dumps` for one thread only, which reuses its encoder (5x cheaper)."""
        if self is not MSGPACK:
            return self.dumps
        packer = msgpack.Packer(default=_default, strict_types=True, use_bin_type=True)
        pack = packer.pack

        def dumps(message: Any) -> bytes:
            try:
                data: bytes = pack(message)
            except Exception as exc:
                packer.reset()  # a failed pack may leave half a message behind
                raise SerializationError(f"cannot encode a message with msgpack: "
                                         f"{exc}") from exc
            return data

        return dumps

    def dumps(self, message: Any) -> bytes:
        """``message`` as bytes; SerializationError naming what could not be sent."""
        try:
            return self._dumps(message)
        except (TypeError, ValueError, OverflowError, pickle.PicklingError, AttributeError,
                RecursionError) as exc:
            raise SerializationError(f"cannot encode a message with {self.name}: "
                                     f"{exc}") from exc


def cannot_encode(who: str, what: str, value: Any, codec: Codec,
                  error: BaseException) -> SerializationError:
    """The error for a part of a message that ``who`` could not encode.

    ``who`` is ``"the server"`` or ``"the client"``, ``what`` the part (``"the
    result of method 'add'"``): a client must be able to tell a server that
    cannot send its answer from its own arguments that cannot be sent. The
    type of ``value`` is named unless the encoder's reason names it already.
    """
    # The codec's own SerializationError is generic: its cause says why.
    reason = error.__cause__ if isinstance(error, SerializationError) and error.__cause__ \
        else error
    why = str(reason) or type(reason).__name__
    kind = type(value)
    named = "" if kind.__qualname__ in why else f" ({kind.__module__}.{kind.__qualname__})"
    err = SerializationError(f"{who} cannot encode {what}{named} with {codec.name}: {why}")
    err.__cause__ = reason
    return err


def arguments_error(method: str, args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any],
                    codec: Codec, error: BaseException) -> SerializationError:
    """The client's error for a call it cannot encode, naming the argument at fault."""
    named = [(f"argument {i}", value) for i, value in enumerate(args, 1)]
    named += [(f"keyword argument {key!r}", value) for key, value in kwargs.items()]
    for name, value in named:
        try:
            codec.dumps(value)
        except SerializationError as exc:
            return cannot_encode("the client", f"{name} of method {method!r}", value, codec, exc)
    # Each argument encodes alone: it is the call itself (a method name that
    # is not a string, say).
    return cannot_encode("the client", f"the call of method {method!r}", method, codec, error)


def _pickle_dumps(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


MSGPACK = Codec("msgpack", _pack, _unpack)
PICKLE = Codec("pickle", _pickle_dumps, pickle.loads)
_CODECS = {"msgpack": MSGPACK, "pickle": PICKLE}


def codec_for(name: str) -> Codec:
    """The codec called ``name``; ValueError for one that does not exist."""
    try:
        return _CODECS[name]
    except KeyError:
        raise ValueError(f"unknown serializer {name!r}: use 'msgpack' or 'pickle'") from None
