"""bf.Value: one number in shared memory, with a lock for compound updates.

A Value *is* a ctypes structure laid over its shared block, with one field,
``value``: reading and writing it is ctypes' C code, with no Python frame in
between, as fast as multiprocessing's unlocked ``RawValue``. Each letter gets
a subclass of its own (the field's type differs), made once; ``bf.Value(...)``
returns an instance of the right one, and ``isinstance(v, bf.Value)`` holds.
"""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING, Any

from ._lock import Lock, RLock
from ._shared import Block, Shared

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

__all__ = ["Value"]

# array's letters and the ctypes type each one stores as (all fit in a word).
_CTYPES: dict[str, type[ctypes._SimpleCData[Any]]] = {
    "b": ctypes.c_byte, "B": ctypes.c_ubyte, "h": ctypes.c_short, "H": ctypes.c_ushort,
    "i": ctypes.c_int, "I": ctypes.c_uint, "l": ctypes.c_long, "L": ctypes.c_ulong,
    "q": ctypes.c_longlong, "Q": ctypes.c_ulonglong, "f": ctypes.c_float,
    "d": ctypes.c_double, "?": ctypes.c_bool, "c": ctypes.c_char,
}


def _typecode_of(typecode_or_type: object) -> str:
    # ctypes' simple types (c_int, c_double, ...) name their letter in _type_,
    # so multiprocessing's spellings work too.
    code = getattr(typecode_or_type, "_type_", typecode_or_type)
    if not isinstance(code, str) or code not in _CTYPES:
        raise TypeError(f"typecode must be one of {', '.join(_CTYPES)} or a ctypes simple "
                        f"type such as ctypes.c_int, not {typecode_or_type!r}")
    return code


class Value(Shared, ctypes.Structure):
    """One shared number (or bool, or byte) that threads and processes read and write.

    ``Value("i", 0)``, ``Value("d", 1.5)``, ``Value(ctypes.c_long)``: the
    letter is :mod:`array`'s. Each read or write of ``.value`` is whole (no
    torn reads); an update that reads then writes (``v.value += 1``) is not:
    do it under ``with v.get_lock():`` (or ``with v:``). ``lock`` is the
    lock to use (a :class:`~bingfa.Lock` or :class:`~bingfa.RLock`; a new RLock
    by default).
    """

    _typecode: str
    _lock: Lock
    _block: Block

    if TYPE_CHECKING:
        value: Any  # the field each letter's subclass declares

    def __new__(cls, typecode_or_type: object, value: Any = 0, *,
                lock: Lock | None = None) -> Value:
        code = _typecode_of(typecode_or_type)
        if lock is None:
            lock = RLock()
        elif not isinstance(lock, Lock):
            raise TypeError("lock must be a bingfa.Lock or bingfa.RLock, "
                            f"not {type(lock).__name__}")
        block = Block(1)
        obj = _laid_over(block, code, lock)
        obj._created(block.name, (), block.name)  # from here, dropping it removes the block
        if code == "c" and value == 0:
            value = b"\0"
        try:
            obj.value = value
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"cannot store {value!r} in a Value of typecode {code!r}: "
                            f"{exc}") from None
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass  # __new__ did it all (ctypes' __init__ would take the arguments as fields)

    def _state(self) -> tuple[object, ...]:
        return (self._block.name, self._typecode, self._lock)

    @classmethod
    def _opened(cls, *state: Any) -> Value:
        block, typecode, lock = state
        return _laid_over(Block(1, block), typecode, lock)

    def __reduce__(self) -> tuple[Callable[..., Shared], tuple[object, ...]]:
        # Rebuilt through this class: the letter's subclass is made at run time.
        rebuild, (_, key, state) = super().__reduce__()
        return rebuild, (Value, key, state)

    @property
    def typecode(self) -> str:
        """The :mod:`array` letter of the stored type."""
        return self._typecode

    def get_lock(self) -> Lock:
        """The lock that guards compound updates (``with v.get_lock(): v.value += 1``)."""
        return self._lock

    def __enter__(self) -> bool:
        return self._lock.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._lock.release()

    def __repr__(self) -> str:
        return f"<bingfa.Value({self._typecode!r}, {self.value!r})>"


_LAYOUTS: dict[str, type[Value]] = {}


def _laid_over(block: Block, typecode: str, lock: Lock) -> Value:
    """A Value of ``typecode`` whose field is the first bytes of ``block``."""
    layout = _LAYOUTS.get(typecode)
    if layout is None:
        layout = type("Value", (Value,), {"_fields_": [("value", _CTYPES[typecode])],
                                          "__module__": Value.__module__,
                                          "__doc__": Value.__doc__})
        _LAYOUTS[typecode] = layout
    obj = block.as_ctype(layout)
    obj._block, obj._typecode, obj._lock = block, typecode, lock
    return obj
