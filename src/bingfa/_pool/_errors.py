"""The pool's error that needs :mod:`multiprocessing`: :class:`ResultTimeoutError`.

Deriving from ``multiprocessing.TimeoutError`` means importing
``multiprocessing`` (about 2 ms even after the pool's own imports), which
neither ``bingfa run`` nor a thread pool otherwise needs. So the class is made
on first use: when a wait times out, or when someone names
``bf.ResultTimeoutError`` (an ``except`` clause, pickle, RPC). There is only
ever one such class; it is made under a lock.
"""

from __future__ import annotations

import threading
from typing import Any

from .._core._errors import BingfaError

TYPE_CHECKING = False  # not typing's: see bingfa/__init__.py
if TYPE_CHECKING:
    import multiprocessing

    class ResultTimeoutError(BingfaError, multiprocessing.TimeoutError, TimeoutError):
        """Waiting for a result timed out; the task may still be running."""

__all__ = ["ResultTimeoutError", "result_timeout_error"]

_made: list[type[BaseException]] = []
_lock = threading.Lock()

_DOC = """Waiting for a result timed out; the task may still be running.

    Raised by :meth:`AsyncResult.get <bingfa.AsyncResult.get>` (also for
    ``map_async``) and by :meth:`Pool.map <bingfa.Pool.map>` with
    ``timeout=``. Unlike :class:`~bingfa.TaskTimeoutError` it says nothing
    about the task: only the caller stopped waiting. Code written for the
    standard library catches it either way: it is a
    ``multiprocessing.TimeoutError`` (what ``multiprocessing``'s
    ``AsyncResult.get`` raises) and a builtin :class:`TimeoutError` (what
    ``concurrent.futures`` raises).
    """


def _result_timeout_class() -> type[BaseException]:
    """The one ResultTimeoutError class, made on first use."""
    if not _made:
        with _lock:
            if not _made:
                import multiprocessing

                cls = type("ResultTimeoutError",
                           (BingfaError, multiprocessing.TimeoutError, TimeoutError),
                           {"__doc__": _DOC, "__module__": "bingfa"})
                _made.append(cls)
    return _made[0]


def result_timeout_error(message: str) -> ResultTimeoutError:
    """A new :class:`ResultTimeoutError` with ``message``."""
    error: ResultTimeoutError = _result_timeout_class()(message)  # type: ignore[assignment]
    return error


def __getattr__(name: str) -> Any:
    # PEP 562: ``ResultTimeoutError`` is made when first named.
    if name == "ResultTimeoutError":
        return _result_timeout_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
