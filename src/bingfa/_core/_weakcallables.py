"""A small map keyed by callables that never keeps a callable (or its object) alive.

Pools remember things per function: its pickled bytes, how long its tasks
take. Keyed by ``id(fn)`` with a strong reference (so the id stays unique),
such a cache would keep every function a program ever mapped alive, and with
a bound method, the object it is bound to, and whatever that object holds.
Here an entry holds only weak references: once the caller drops the function
(or the object of a bound method), the entry is dead and never matches again.

Bound methods are keyed by their function and object, not by the method
object, because ``obj.method`` makes a new one on every access: a loop of
``pool.submit(obj.method, x)`` still hits the same entry.
"""

from __future__ import annotations

import threading
import types
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = ["WeakCallableMap"]

V = TypeVar("V")

# A key, and a check that the entry stored under it still means this callable.
_Key = tuple[int, int]
_Check = Callable[[Callable[..., Any]], bool]


def _key_and_check(fn: Callable[..., Any]) -> tuple[_Key, _Check] | None:
    """How to find ``fn`` again without keeping it alive; ``None`` if it cannot be."""
    if isinstance(fn, types.MethodType):
        func_ref = _weak(fn.__func__)
        self_ref = _weak(fn.__self__)
        if func_ref is None or self_ref is None:
            return None

        def same_method(other: Callable[..., Any]) -> bool:
            return (isinstance(other, types.MethodType) and other.__func__ is func_ref()
                    and other.__self__ is self_ref())

        return (id(fn.__func__), id(fn.__self__)), same_method
    if isinstance(fn, types.BuiltinFunctionType) and (
            fn.__self__ is None or isinstance(fn.__self__, types.ModuleType)):
        # A module's builtin (len, math.sqrt) lives as long as its module:
        # holding it keeps nothing of the user's alive.
        return (id(fn), 0), lambda other, kept=fn: other is kept
    ref = _weak(fn)
    if ref is None:
        return None  # not weakly referenceable (a builtin bound to an object): not cached
    return (id(fn), 0), lambda other: other is ref()


def _weak(obj: Any) -> weakref.ref[Any] | None:
    try:
        return weakref.ref(obj)
    except TypeError:
        return None


class WeakCallableMap(Generic[V]):
    """A bounded, thread-safe map from callables to values; least recently used go first."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[_Key, tuple[_Check, V]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, fn: Callable[..., Any]) -> V | None:
        """The value stored for ``fn``, or ``None``."""
        found = _key_and_check(fn)
        if found is None:
            return None
        key = found[0]
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if not entry[0](fn):
                # The callable it was stored for is gone and its id reused.
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return entry[1]

    def set(self, fn: Callable[..., Any], value: V) -> None:
        """Store ``value`` for ``fn`` (nothing, if ``fn`` cannot be referenced weakly)."""
        found = _key_and_check(fn)
        if found is None:
            return
        key, check = found
        with self._lock:
            self._entries[key] = (check, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
