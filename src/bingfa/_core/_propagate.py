"""``bf.propagate(var)``: a ContextVar whose value travels with process-mode tasks.

Threads of this process can share the caller's contextvars (thread-mode tasks
run in a copy of them), but a worker process has contextvars of its own, and a
``ContextVar`` cannot be pickled. So a registered variable travels by name: the
module that defines it and the name it is bound to there. At submit time the
values of the registered variables set in the caller's context are taken
along with the task's function; in the worker, the task runs in a fresh
context where each is set on that module's variable, the very object the
task's code reads.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import sys
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["Carrying", "carried", "propagate", "reduce_context_var", "resolve"]

V = TypeVar("V")

# variable -> (module, name) where workers find it
_registered: dict[contextvars.ContextVar[Any], tuple[str, str]] = {}


def propagate(var: contextvars.ContextVar[V]) -> contextvars.ContextVar[V]:
    """Carry ``var``'s value into every process-mode task and process handle.

    ``var`` must be bound to a name at the top level of a module (workers find
    it there by importing the module): ``request_id = bf.propagate(ContextVar(
    "request_id"))``. The value it has where the work is submitted is set in
    the task's own context in the worker; it must be picklable. Threads need
    none of this: thread-mode tasks see the caller's contextvars already.

    Returns:
        ``var``, so that the call can wrap its definition.

    Raises:
        TypeError: ``var`` is not a ``contextvars.ContextVar``.
        ValueError: ``var`` is not bound to a name at a module's top level.
    """
    if not isinstance(var, contextvars.ContextVar):
        raise TypeError(f"bf.propagate() takes a contextvars.ContextVar, not {var!r}")
    where = _home_of(var, sys._getframe(1).f_globals)
    if where is None:
        # Maybe it is being defined right now: `x = bf.propagate(ContextVar(...))`
        # binds the name only when this returns. Look again at the first use.
        _pending.append((var, sys._getframe(1).f_globals))
    else:
        _registered[var] = where
    return var


_pending: list[tuple[contextvars.ContextVar[Any], dict[str, Any]]] = []


def _home_of(var: contextvars.ContextVar[Any],
             namespace: dict[str, Any]) -> tuple[str, str] | None:
    """The (module, name) ``var`` is bound to in ``namespace``, else in any loaded module."""
    module = namespace.get("__name__")
    for name, value in namespace.items():
        if value is var and isinstance(module, str):
            return module, name
    for module_name, loaded in list(sys.modules.items()):
        for name, value in list(getattr(loaded, "__dict__", {}).items()):
            if value is var:
                return module_name, name
    return None


def _settle_pending() -> None:
    while _pending:
        var, namespace = _pending.pop()
        where = _home_of(var, namespace)
        if where is None:
            raise ValueError(f"bf.propagate({var!r}): the variable must be bound to a name at "
                             "the top level of a module, where worker processes can find it")
        _registered[var] = where


def carried(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn``, carrying the caller's values of the registered variables, if any is set."""
    if _pending:
        _settle_pending()
    if not _registered:
        return fn
    context = contextvars.copy_context()
    values = tuple((module, name, context[var]) for var, (module, name) in _registered.items()
                   if var in context)
    return Carrying(fn, values) if values else fn


class Carrying:
    """A task's function, and the contextvars values to set around it in the worker."""

    def __init__(self, fn: Callable[..., Any], values: tuple[tuple[str, str, Any], ...]) -> None:
        self.fn = fn
        self.values = values
        # Errors and progress name the task by its function, not by this wrapper.
        self.__name__ = getattr(fn, "__name__", type(fn).__name__)
        self.__qualname__ = getattr(fn, "__qualname__", self.__name__)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return contextvars.copy_context().run(self._run, args, kwargs)

    def _run(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        for module, name, value in self.values:
            resolve(module, name).set(value)
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return repr(self.fn)


# In a worker: variables of modules it does not have (the user's __main__, which
# a forkserver or spawn worker never runs), made once per (module, name).
_stand_ins: dict[tuple[str, str], contextvars.ContextVar[Any]] = {}
_NO_DEFAULT = object()


def resolve(module: str, name: str, default: Any = _NO_DEFAULT) -> contextvars.ContextVar[Any]:
    """The ContextVar ``module.name`` of this process, or its stand-in if it has none.

    Functions that travel by value bring the variables they use this way (see
    ``_by_value``), and :class:`Carrying` sets values on the same objects.
    """
    loaded = sys.modules.get(module)
    if loaded is None and module != "__main__":
        with contextlib.suppress(ImportError):
            loaded = importlib.import_module(module)
    var = getattr(loaded, name, None)
    if isinstance(var, contextvars.ContextVar):
        return var
    key = (module, name)
    stand_in = _stand_ins.get(key)
    if stand_in is None:
        stand_in = (contextvars.ContextVar(name) if default is _NO_DEFAULT
                    else contextvars.ContextVar(name, default=default))
        _stand_ins[key] = stand_in
    return stand_in


def reduce_context_var(var: contextvars.ContextVar[Any]) -> tuple[Any, ...]:
    """How a function that travels by value takes a ContextVar along: by its module and name.

    Raises:
        TypeError: it is bound to no name at a module's top level (so it cannot
            be found again), as pickling any ContextVar fails.
    """
    where = _registered.get(var) or _home_of(var, {})
    if where is None:
        raise TypeError(f"cannot pickle {var!r}: it is bound to no name at the top level "
                        "of a module")
    try:
        default = contextvars.Context().run(var.get)
    except LookupError:
        return resolve, where
    return resolve, (*where, default)
