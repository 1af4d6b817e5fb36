"""Turning functions, arguments and results into bytes and back.

Functions always go through cloudpickle, so lambdas, closures, nested
functions and anything defined in ``__main__`` or a notebook travel by value.
A function is pickled once and cached (see :class:`FunctionCache`).

Data (arguments and results) goes through the C pickler first: it is several
times faster than cloudpickle on small objects, and the fast path matters when a
task takes microseconds. Only when it fails (a lambda inside the arguments, a
local class) does cloudpickle take over. When ``__main__`` cannot be imported by
a worker (an interactive session, ``python -c``, a notebook), objects from it
cannot travel by reference, so data then always goes through cloudpickle.
"""

from __future__ import annotations

import pickle
import reprlib
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import cloudpickle

from ._errors import SerializationError

__all__ = [
    "FunctionCache",
    "describe",
    "dumps",
    "dumps_function",
    "loads",
    "main_is_importable",
    "serialization_error",
]

PROTOCOL = pickle.HIGHEST_PROTOCOL

_repr = reprlib.Repr()
_repr.maxstring = 40
_repr.maxother = 60


def describe(obj: Any) -> str:
    """A short, safe description of an object for error messages."""
    try:
        text = _repr.repr(obj)
    except Exception:
        text = "<unrepresentable>"
    return f"{type(obj).__module__}.{type(obj).__qualname__} object {text}"


def main_is_importable() -> bool:
    """Whether a spawned or forkserver worker can import the parent's ``__main__``."""
    main = sys.modules.get("__main__")
    return main is not None and getattr(main, "__file__", None) is not None


def dumps(obj: Any, by_value: bool = False) -> bytes:
    """Pickle data, with the C pickler when it can and cloudpickle when it must."""
    if not by_value:
        try:
            return pickle.dumps(obj, PROTOCOL)
        except Exception:
            pass
    data: bytes = cloudpickle.dumps(obj, PROTOCOL)
    return data


def dumps_function(fn: Callable[..., Any]) -> bytes:
    """Pickle a function by value where it has to be (cloudpickle)."""
    data: bytes = cloudpickle.dumps(fn, PROTOCOL)
    return data


loads = pickle.loads


def serialization_error(what: str, obj: Any, cause: BaseException) -> SerializationError:
    """A :class:`SerializationError` naming ``what`` failed, with ``cause`` attached."""
    err = SerializationError(f"cannot serialize {what} ({describe(obj)}): {cause}")
    err.__cause__ = cause
    return err


def find_unpicklable(values: Iterable[tuple[str, Any]]) -> tuple[str, Any, Exception] | None:
    """The first ``(name, value)`` that cannot be pickled, with its error."""
    for name, value in values:
        try:
            cloudpickle.dumps(value, PROTOCOL)
        except Exception as exc:
            return name, value, exc
    return None


class FunctionCache:
    """Pickled functions, keyed by identity, with a bounded number kept.

    A map sends its function to each worker once; ``submit`` in a loop with the
    same function pickles it once. The cache holds a strong reference to each
    function so that an ``id()`` is never reused while cached.
    """

    def __init__(self, capacity: int = 128) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[int, tuple[Callable[..., Any], int, bytes]] = OrderedDict()
        self._next_id = 0
        self._lock = threading.Lock()

    def get(self, fn: Callable[..., Any]) -> tuple[int, bytes]:
        """The ``(function id, pickled bytes)`` of ``fn``.

        Raises:
            SerializationError: when even cloudpickle cannot pickle ``fn``.
        """
        key = id(fn)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] is fn:
                self._entries.move_to_end(key)
                return entry[1], entry[2]
        try:
            data = dumps_function(fn)
        except Exception as exc:
            raise serialization_error("the task's function", fn, exc) from exc
        with self._lock:
            self._next_id += 1
            fn_id = self._next_id
            self._entries[key] = (fn, fn_id, data)
            if len(self._entries) > self._capacity:
                self._entries.popitem(last=False)
        return fn_id, data
