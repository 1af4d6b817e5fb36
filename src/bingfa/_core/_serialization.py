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
    """A short, safe description of an object for error messages.

    The object's repr, shortened, and its type after it where the repr does not
    already say what the object is: ``<unlocked _thread.lock object at 0x...>``
    and ``Point(x=1)`` stand alone, ``'abc'`` and ``[1, 2]`` speak for themselves,
    a custom repr ``hello`` becomes ``hello (mod.Greeting)``.
    """
    kind = type(obj)
    name = f"{kind.__module__}.{kind.__qualname__}"
    try:
        text = _repr.repr(obj)
    except Exception:
        return f"<unrepresentable {name} object>"
    # The repr of these is their literal: naming the type after it adds nothing.
    literal = (int, float, complex, bool, str, bytes, bytearray, list, tuple, dict, set,
               frozenset, type(None))
    if kind in literal or text.startswith("<") or kind.__qualname__ in text:
        return text
    return f"{text} ({name})"


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


def serialization_error(what: str, obj: Any, cause: BaseException, *,
                        unpickling: bool = False) -> SerializationError:
    """A :class:`SerializationError` saying once what could not be (un)pickled, and why.

    Args:
        what: the thing and whose it is: ``"argument 2 of f(1, <lock>)"``,
            ``"the result of f(1)"``, ``"the task's function"``.
        obj: the object that failed. When data could not be *unpickled* there
            is no object yet: then a ``str`` describing the data (``"542 bytes"``)
            stands in for it, and implies ``unpickling``.
        cause: the pickler's exception, attached as ``__cause__``; its message
            says why.
        unpickling: the failure happened while unpickling.

    The object is described after ``what`` unless ``what`` shows it already (a
    task named by its call, ``f(1, <lock>)``, shows its arguments): then only
    the type of an object it abbreviated is added, and only if the reason does
    not name it either.
    """
    why = str(cause) or type(cause).__name__

    def safe_repr(part: Any) -> str | None:
        try:
            return repr(part)
        except Exception:
            return None

    def parts_of(value: Any, depth: int = 2) -> list[Any]:
        # A call's arguments, ((args), {kwargs}), are the objects they hold.
        if depth and isinstance(value, tuple | list | dict):
            values = value.values() if isinstance(value, dict) else value
            return [leaf for v in values for leaf in parts_of(v, depth - 1)]
        return [value]

    def description() -> str:
        parts = parts_of(obj)
        reprs = [safe_repr(part) for part in parts]
        # A task's description shortens a long repr in the middle, keeping
        # about its first dozen characters: those say the object is shown.
        if not parts or any(text is None or text[:12] not in what for text in reprs):
            return describe(obj)
        # Shown: name the types of those it cut short, unless the reason does.
        missing: list[str] = []
        for part, text in zip(parts, reprs, strict=True):
            kind = type(part)
            name = f"{kind.__module__}.{kind.__qualname__}"
            if text is not None and text not in what and kind.__qualname__ not in why \
                    and name not in missing:
                missing.append(name)
        return ", ".join(missing)

    if isinstance(obj, str):
        # A str always pickles: this is a description of data that did not load.
        unpickling, about = True, obj
    else:
        # Callers with no flag to pass say it in words; the verb says it now.
        if "(unpickling failed)" in what:
            unpickling, what = True, what.replace(" (unpickling failed)", "")
        about = description()
    verb = "unpickle" if unpickling else "pickle"
    subject = f"{what} ({about})" if about else what
    err = SerializationError(f"cannot {verb} {subject}: {why}")
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
