"""Naming a task in an error message: ``parse('x', base=16)``, shortened.

Shared by the pool (which knows a task's place in a map) and process workers
(which know only the call), so both name a task the same way.
"""

from __future__ import annotations

import reprlib
from collections.abc import Callable
from typing import Any

from .._core._serialization import describe
from ._batch import CALL_KW, CALL_ONE

__all__ = ["call_arguments", "describe_call", "name_of", "short_repr"]

_repr = reprlib.Repr()
_repr.maxstring = 30
_repr.maxother = 30
_repr.maxlist = _repr.maxtuple = _repr.maxdict = 4

short_repr = _repr.repr


def name_of(fn: Callable[..., Any]) -> str:
    """A function's qualified name, or a description of a callable without one."""
    return getattr(fn, "__qualname__", None) or describe(fn)


def call_arguments(item: Any, call: int) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The positional and keyword arguments a batch item stands for."""
    if call == CALL_ONE:
        return (item,), {}
    if call == CALL_KW:
        return tuple(item[0]), dict(item[1])
    return tuple(item), {}


def describe_call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """The call, as ``fn(args...)``, each argument shortened."""
    parts = [short_repr(a) for a in args] + [f"{k}={short_repr(v)}" for k, v in kwargs.items()]
    return f"{name_of(fn)}({', '.join(parts)})"
