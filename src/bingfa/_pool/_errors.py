"""The pool's error that needs :mod:`multiprocessing`: :class:`ResultTimeoutError`.

It lives here rather than with the rest of the tree in ``_core._errors``:
deriving from ``multiprocessing.TimeoutError`` imports ``multiprocessing``
(about a millisecond once the pool's own imports are in), which the pool pays
anyway and ``bingfa run`` must not.
"""

from __future__ import annotations

import multiprocessing

from .._core._errors import BingfaError

__all__ = ["ResultTimeoutError"]


class ResultTimeoutError(BingfaError, multiprocessing.TimeoutError, TimeoutError):
    """Waiting for a result timed out; the task may still be running.

    Raised by :meth:`AsyncResult.get <bingfa.AsyncResult.get>` (also for
    ``map_async``) and by :meth:`Pool.map <bingfa.Pool.map>` with
    ``timeout=``. Unlike :class:`~bingfa.TaskTimeoutError` it says nothing
    about the task: only the caller stopped waiting. Code written for the
    standard library catches it either way: it is a
    ``multiprocessing.TimeoutError`` (what ``multiprocessing``'s
    ``AsyncResult.get`` raises) and a builtin :class:`TimeoutError` (what
    ``concurrent.futures`` raises).
    """


ResultTimeoutError.__module__ = "bingfa"
