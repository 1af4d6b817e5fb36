"""Turning functions, arguments and results into bytes and back.

Functions that a worker cannot import travel by value: lambdas, closures,
nested functions and anything defined in ``__main__`` or a notebook (the plain
ones of ``__main__`` without cloudpickle, see ``_main_by_value``).
A function is pickled once and cached (see :class:`FunctionCache`). Its code
keeps the name of the file it came from, so a worker's traceback points at
the user's real file and line; when that "file" exists only in this
process's line cache (a notebook cell), its lines travel with the function.

Data (arguments and results) goes through the C pickler first: it is several
times faster than cloudpickle on small objects, and the fast path matters when a
task takes microseconds. Only when it fails (a lambda inside the arguments, a
local class) does cloudpickle take over. Workers never import the parent's
``__main__`` (see ``_pool/_engines/_launcher.py``), so a C pickle that refers
to ``__main__`` by name would not load there: such data goes through
cloudpickle too, which carries those classes by value.
"""

from __future__ import annotations

import linecache
import os
import pickle
import reprlib
import sys
import threading
import types
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from . import _main_by_value
from ._errors import SerializationError
from ._out_of_band import Part, collector, frame_parts
from ._weakcallables import WeakCallableMap

if TYPE_CHECKING:
    from ._segment_cache import SegmentCache

__all__ = [
    "FunctionCache",
    "describe",
    "dumps",
    "dumps_function",
    "dumps_parts",
    "loads",
    "loads_function",
    "serialization_error",
    "unpickling_error",
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


def dumps(obj: Any, main_by_value: bool = False,
          out_of_band: list[pickle.PickleBuffer] | None = None) -> bytes:
    """Pickle data, with the C pickler when it can and cloudpickle when it must.

    Args:
        obj: what to pickle.
        main_by_value: the receiver has no copy of this process's
            ``__main__`` (a forkserver or spawn worker), so anything of
            ``__main__`` must travel by value.
        out_of_band: where big buffers (numpy arrays' memory) go instead of
            into the pickle; see ``_out_of_band``. None: everything in it.
    """
    callback = None if out_of_band is None else collector(out_of_band)
    try:
        data = pickle.dumps(obj, PROTOCOL, buffer_callback=callback)
    except Exception:
        pass
    else:
        # A reference to __main__ shows in the pickle as the module's name.
        # A false alarm (the text in a string) only costs the slower pickler.
        if not (main_by_value and b"__main__" in data):
            return data
    if out_of_band:
        out_of_band.clear()  # the next pickler hands them over again
    plain = _main_by_value.dumps(obj, callback)
    if plain is not None:
        return plain[0]
    if out_of_band:
        out_of_band.clear()
    from . import _by_value  # cloudpickle: imported only when something needs it

    return _by_value.dumps(obj, callback)


def dumps_parts(obj: Any, main_by_value: bool = False, shared: bool = False,
                cache: SegmentCache | None = None) -> list[Part]:
    """:func:`dumps`, with big buffers beside the pickle: parts to write back to back.

    The receiver reads them into one buffer and decodes it with
    :func:`~bingfa._core._out_of_band.loads_body`. ``shared``: the biggest
    buffers go through shared memory, lent from ``cache`` where it has room
    (see ``_out_of_band``).
    """
    buffers: list[pickle.PickleBuffer] = []
    return frame_parts(dumps(obj, main_by_value, buffers), buffers, shared, cache)


def dumps_function(fn: Any, main_inherited: Callable[[Any], bool] | None = None) -> bytes:
    """Pickle a function (or a tuple holding functions) by value where it has to be.

    What :func:`loads_function` gets back is ``fn`` itself; along with it travel
    the source lines of code that has no file on disk (notebook cells,
    ``python -c``), where this process knows them, for the worker's tracebacks.

    A module-level function of an importable module goes by name, with the C
    pickler and without importing cloudpickle (as cloudpickle itself would
    send it); so does one of ``__main__`` when ``main_inherited(fn)`` says
    every worker has it (workers forked after it was defined). Other plain
    functions of ``__main__`` go by value, still without cloudpickle (see
    ``_main_by_value``).
    """
    by_name = _by_name(fn, main_inherited)
    if by_name is not None:
        return by_name
    snapshot = _main_by_value.dumps(fn)
    if snapshot is None:
        from . import _by_value

        snapshot = _by_value.dumps_function(fn)
    pickled, filenames = snapshot
    sources = _sources_without_files(filenames)
    if not sources:
        return pickled
    return pickle.dumps(_WithSources(pickled, sources), PROTOCOL)


_PLAIN_FUNCTIONS = (types.FunctionType, types.BuiltinFunctionType)


def _by_name(fn: Any, main_inherited: Callable[[Any], bool] | None) -> bytes | None:
    """``fn`` pickled by reference, if a worker can find it by its module and name."""
    if type(fn) not in _PLAIN_FUNCTIONS:
        return None
    module, name = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if not module or not name.isidentifier():  # nested ("f.<locals>.g"), lambdas, methods
        return None
    home = sys.modules.get(module)
    if getattr(home, name, None) is not fn:
        return None
    if module == "__main__":
        if main_inherited is None or not main_inherited(fn):
            return None
    elif getattr(home, "__spec__", None) is None and module not in sys.builtin_module_names:
        return None  # made at run time (not importable elsewhere): cloudpickle sends it by value
    registry = sys.modules.get("cloudpickle")
    if registry is not None and module in registry.list_registry_pickle_by_value():
        return None
    try:
        return pickle.dumps(fn, PROTOCOL)
    except Exception:
        return None


class _WithSources:
    """A pickled function and the source lines its tracebacks will need."""

    def __init__(self, pickled: bytes, sources: dict[str, list[str]]) -> None:
        self.pickled = pickled
        self.sources = sources


def _sources_without_files(filenames: set[str]) -> dict[str, list[str]]:
    found = {}
    for name in filenames:
        entry = linecache.cache.get(name)
        # (size, mtime, lines, name); a 1-tuple is a lazy entry with no lines yet.
        if entry is not None and len(entry) == 4 and entry[2] and not os.path.exists(name):
            found[name] = list(entry[2])
    return found


def loads_function(data: bytes | memoryview) -> Any:
    """The function :func:`dumps_function` pickled; its sources go into the line cache."""
    obj = pickle.loads(data)
    if isinstance(obj, _WithSources):
        for name, lines in obj.sources.items():
            # No modification time: linecache.checkcache leaves it alone.
            linecache.cache[name] = (sum(map(len, lines)), None, lines, name)
        obj = pickle.loads(obj.pickled)
    return obj


loads = pickle.loads


def serialization_error(what: str, obj: Any, cause: BaseException) -> SerializationError:
    """A :class:`SerializationError`: ``what`` (``obj``) could not be pickled, because ``cause``.

    Args:
        what: the thing and whose it is: ``"argument 2 of f(1, <lock>)"``,
            ``"the result of f(1)"``, ``"the task's function"``.
        obj: the object that failed. It is described after ``what``, unless
            ``what`` shows it already (a task named by its call shows its
            arguments): then only the type of an object it shortened is added,
            and only if the reason does not name it.
        cause: the pickler's exception, attached as ``__cause__``; its message
            says why.
    """
    why = str(cause) or type(cause).__name__
    about = _description(obj, what, why)
    subject = f"{what} ({about})" if about else what
    err = SerializationError(f"cannot pickle {subject}: {why}")
    err.__cause__ = cause
    return err


def unpickling_error(what: str, cause: BaseException, *objects: Any) -> SerializationError:
    """A :class:`SerializationError`: ``what`` could not be unpickled, because ``cause``.

    ``objects`` are the originals of what did not load, where the sender has
    them (a task's arguments): they are described as :func:`serialization_error`
    does. Data from elsewhere (a worker's result) is described by ``what`` alone.
    """
    why = str(cause) or type(cause).__name__
    about = _description(objects[0], what, why) if objects else ""
    subject = f"{what} ({about})" if about else what
    err = SerializationError(f"cannot unpickle {subject}: {why}")
    err.__cause__ = cause
    return err


def _description(obj: Any, what: str, why: str) -> str:
    """What to say of ``obj`` after ``what``, or ``''`` if ``what`` and ``why`` say it."""
    parts = _parts(obj)
    reprs = [_safe_repr(part) for part in parts]
    # A task's description shortens a long repr in the middle, keeping about
    # its first dozen characters: those say the object is shown already.
    if not parts or any(text is None or text[:12] not in what for text in reprs):
        return describe(obj)
    missing: list[str] = []
    for part, text in zip(parts, reprs, strict=True):
        kind = type(part)
        name = f"{kind.__module__}.{kind.__qualname__}"
        if (text is not None and text not in what and kind.__qualname__ not in why
                and name not in missing):
            missing.append(name)
    return ", ".join(missing)


def _parts(value: Any, depth: int = 2) -> list[Any]:
    """The objects a call's arguments, ``((args), {kwargs})``, hold."""
    if depth and isinstance(value, tuple | list | dict):
        values = value.values() if isinstance(value, dict) else value
        return [leaf for v in values for leaf in _parts(v, depth - 1)]
    return [value]


def _safe_repr(obj: Any) -> str | None:
    try:
        return repr(obj)
    except Exception:
        return None


def find_unpicklable(values: Iterable[tuple[str, Any]]) -> tuple[str, Any, Exception] | None:
    """The first ``(name, value)`` that cannot be pickled, with its error."""
    from . import _by_value

    for name, value in values:
        try:
            _by_value.dumps(value)
        except Exception as exc:
            return name, value, exc
    return None


class FunctionCache:
    """Pickled functions, by identity, with a bounded number kept.

    A map sends its function to each worker once; ``submit`` in a loop with the
    same function pickles it once. Entries hold the function weakly (see
    :class:`~._weakcallables.WeakCallableMap`): the cache never keeps a
    function, or the object of a bound method, alive.
    """

    def __init__(self, capacity: int = 128,
                 main_inherited: Callable[[Any], bool] | None = None) -> None:
        self._main_inherited = main_inherited  # see dumps_function
        self._entries: WeakCallableMap[tuple[int, bytes]] = WeakCallableMap(capacity)
        self._next_id = 0
        self._lock = threading.Lock()

    def seed(self, fn: Callable[..., Any], pickled: bytes) -> None:
        """Keep ``pickled``, made by ``dumps_function(fn)`` elsewhere, as ``fn``'s.

        Unless ``fn`` is known already, or this cache sends some functions of
        ``__main__`` by name (fork): then ``fn`` may pickle smaller here.
        """
        if self._main_inherited is not None or self._entries.get(fn) is not None:
            return
        with self._lock:
            self._next_id += 1
            entry = (self._next_id, pickled)
        self._entries.set(fn, entry)

    def get(self, fn: Callable[..., Any]) -> tuple[int, bytes]:
        """The ``(function id, pickled bytes)`` of ``fn``.

        A function that cannot be held weakly is pickled every time, under a
        fresh id.

        Raises:
            SerializationError: when even cloudpickle cannot pickle ``fn``.
        """
        entry = self._entries.get(fn)
        if entry is not None:
            return entry
        try:
            data = dumps_function(fn, self._main_inherited)
        except Exception as exc:
            raise serialization_error("the task's function", fn, exc) from exc
        with self._lock:
            self._next_id += 1
            entry = (self._next_id, data)
        self._entries.set(fn, entry)
        return entry
