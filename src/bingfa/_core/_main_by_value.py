"""Plain functions of ``__main__`` sent by value with the C pickler, without cloudpickle.

A worker that did not fork from its parent (a forkserver or spawn worker, a
zygote's child) has no copy of the parent's ``__main__``, so a function
defined there has to travel by value. cloudpickle can send any function that
way, but importing it costs a fresh interpreter about 20 ms: in a forkserver
pool's cold start that was the largest single piece of the zygote's boot, and
each replacement worker paid it again.

Most functions handed to a pool are plain: defined at the top of a script or
a notebook (or a lambda there), no closure, naming only modules, builtins,
data and other such functions. Those go here: their code (marshal) and the
globals they name, rebuilt in the worker around one fresh namespace, so that
functions calling each other (or themselves) still find each other. As with
cloudpickle, the globals are a snapshot taken when the function is pickled.

Anything else (a closure, a class or a non-plain function of ``__main__``
among the globals, defaults or annotations, a module that cannot be imported
by name, data the C pickler refuses) makes :func:`dumps` return None, and
cloudpickle takes over.
"""

from __future__ import annotations

import builtins
import importlib
import io
import marshal
import pickle
import sys
import types
from collections.abc import Callable
from typing import Any

__all__ = ["dumps"]

_MAIN = "__main__"
PROTOCOL = pickle.HIGHEST_PROTOCOL

# One function: its code (marshal), the global names it is bound to in the
# namespace, and what FunctionType does not take from the code.
_Record = tuple[bytes, list[str], str, str, Any, Any, Any, Any, dict[str, Any]]


class _NotPlain(Exception):
    """Something in the function's reach needs cloudpickle."""


def dumps(obj: Any, buffer_callback: Callable[[pickle.PickleBuffer], bool] | None = None,
          ) -> tuple[bytes, set[str]] | None:
    """``obj`` pickled, plain ``__main__`` functions in it by value; and their code's files.

    None means something in it is not plain (see the module's docstring) and
    cloudpickle must send it. ``buffer_callback`` is pickle's (protocol 5).
    """
    with io.BytesIO() as buffer:
        pickler = _Pickler(buffer, buffer_callback)
        try:
            pickler.dump(obj)
        except Exception:
            return None  # _NotPlain, or data only cloudpickle can carry
        return buffer.getvalue(), pickler.filenames


def _snapshot(fn: types.FunctionType) -> tuple[list[_Record], dict[str, Any], set[str]]:
    """``fn`` and the plain functions it reaches through its globals, with the other globals.

    Returns the records (``fn``'s first), the other global values it names,
    and the files of their code.
    """
    functions = {id(fn): fn}
    bound_to: dict[int, list[str]] = {id(fn): []}
    values: dict[str, Any] = {}
    pending = [fn]
    while pending:
        function = pending.pop()
        namespace = function.__globals__
        for name in _global_names(function.__code__):
            if name not in namespace or name in values:
                continue
            value = namespace[name]
            if not _is_plain(value):
                values[name] = value
                continue
            if id(value) not in functions:
                functions[id(value)] = value
                bound_to[id(value)] = []
                pending.append(value)
            if name not in bound_to[id(value)]:
                bound_to[id(value)].append(name)
    records = [_record(function, bound_to[key]) for key, function in functions.items()]
    filenames: set[str] = set()
    for function in functions.values():
        filenames |= _code_files(function.__code__)
    return records, values, filenames


def _is_plain(value: Any) -> bool:
    if type(value) is not types.FunctionType or value.__closure__ is not None:
        return False
    main = sys.modules.get(_MAIN)
    return (getattr(value, "__module__", None) == _MAIN and main is not None
            and value.__globals__ is vars(main))


def _record(function: types.FunctionType, names: list[str]) -> _Record:
    return (marshal.dumps(function.__code__), names, function.__name__, function.__qualname__,
            function.__defaults__, function.__kwdefaults__, function.__doc__,
            function.__annotations__, dict(function.__dict__))


def _global_names(code: types.CodeType) -> set[str]:
    """Every name ``code`` (and the code nested in it) may look up as a global.

    ``co_names`` holds attribute names too (``sqrt`` of ``math.sqrt``), so this
    can name a few globals the code never reads: they travel anyway, as with
    cloudpickle before it learnt to read bytecode, at no cost but their bytes.
    """
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


def _code_files(code: types.CodeType) -> set[str]:
    files = {code.co_filename}
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            files |= _code_files(const)
    return files


def _rebuild(records: list[_Record], values: dict[str, Any]) -> types.FunctionType:
    """The functions of ``records`` in one new namespace with ``values``; the first of them."""
    namespace: dict[str, Any] = {"__builtins__": builtins, "__name__": _MAIN, **values}
    functions = []
    for code, names, name, qualname, defaults, kwdefaults, doc, hints, attrs in records:
        function = types.FunctionType(marshal.loads(code), namespace, name, defaults)
        function.__qualname__ = qualname
        function.__kwdefaults__ = kwdefaults
        function.__doc__ = doc
        function.__annotations__ = hints
        function.__dict__.update(attrs)
        for bound in names:
            namespace[bound] = function
        functions.append(function)
    return functions[0]


class _Pickler(pickle.Pickler):
    """The C pickler: plain ``__main__`` functions by value, modules by name.

    A worker cannot import ``__main__``: a class or another function of it
    (a default, an annotation, a global that is not a plain function) means
    cloudpickle has to carry it.
    """

    def __init__(self, file: io.BytesIO,
                 buffer_callback: Callable[[pickle.PickleBuffer], bool] | None) -> None:
        super().__init__(file, PROTOCOL, buffer_callback=buffer_callback)
        self.filenames: set[str] = set()

    def reducer_override(self, obj: Any) -> Any:
        if _is_plain(obj):
            records, values, filenames = _snapshot(obj)
            self.filenames |= filenames
            return _rebuild, (records, values)
        if isinstance(obj, types.ModuleType):
            name = obj.__name__
            if (name == _MAIN or sys.modules.get(name) is not obj
                    or (obj.__spec__ is None and name not in sys.builtin_module_names)):
                raise _NotPlain(name)
            return importlib.import_module, (name,)
        if isinstance(obj, type | types.FunctionType) and obj.__module__ == _MAIN:
            raise _NotPlain(obj.__qualname__)
        return NotImplemented
