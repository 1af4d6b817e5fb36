"""bf.Value: one number in shared memory, with a lock for compound updates."""

from __future__ import annotations

import ctypes
import operator
from typing import TYPE_CHECKING, Any

from ._lock import Lock, RLock
from ._shared import Block, Shared

if TYPE_CHECKING:
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


class Value(Shared):
    """One shared number (or bool, or byte) that threads and processes read and write.

    ``Value("i", 0)``, ``Value("d", 1.5)``, ``Value(ctypes.c_long)``: the
    letter is :mod:`array`'s. Each read or write of ``.value`` is whole (no
    torn reads); an update that reads then writes (``v.value += 1``) is not:
    do it under ``with v.get_lock():`` (or ``with v:``). ``lock`` is the
    lock to use (a :class:`~bingfa.Lock` or :class:`~bingfa.RLock`; a new RLock
    by default).
    """

    __slots__ = ("_block", "_cell", "_lock", "_typecode")

    _block: Block
    _cell: ctypes._SimpleCData[Any]  # the number, a ctypes object over the shared block
    _lock: Lock
    _typecode: str

    def __init__(self, typecode_or_type: object, value: Any = 0, *,
                 lock: Lock | None = None) -> None:
        self._typecode = _typecode_of(typecode_or_type)
        if lock is None:
            lock = RLock()
        elif not isinstance(lock, Lock):
            raise TypeError("lock must be a bingfa.Lock or bingfa.RLock, "
                            f"not {type(lock).__name__}")
        self._lock = lock
        self._block = Block(1)
        self._cell = self._block.as_ctype(_CTYPES[self._typecode])
        self.value = value if self._typecode != "c" or value != 0 else b"\0"
        self._created(self._block.name, (), self._block.name)

    def _state(self) -> tuple[object, ...]:
        return (self._block.name, self._typecode, self._lock)

    def _attach(self, block: str, typecode: str, lock: Lock) -> None:
        self._block = Block(1, block)
        self._cell = self._block.as_ctype(_CTYPES[typecode])
        self._typecode = typecode
        self._lock = lock

    def _set_value(self, new: Any) -> None:
        try:
            self._cell.value = new
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"cannot store {new!r} in a Value of typecode "
                            f"{self._typecode!r}: {exc}") from None

    # The getter is C (no Python frame): reading is what loops do most.
    value = property(operator.attrgetter("_cell.value"), _set_value,
                     doc="The number now.")

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
