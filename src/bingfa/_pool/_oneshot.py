"""``bf.map`` and ``bf.imap``: a pool made for one call."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar, overload

from .._core._progress import ProgressArg
from .._core._timeouts import wait_seconds
from ._jobs import AUTO
from ._pool import ChunkSize, Mode, Pool, _chunksize, _map_inputs

__all__ = ["imap", "map"]

T = TypeVar("T")
T2 = TypeVar("T2")
R = TypeVar("R")


@overload
def map(fn: Callable[[T], R], iterable: Iterable[T], /, *, timeout: float | None = None,
        mode: Mode | str | None = None, workers: int | None = None,
        chunksize: ChunkSize = AUTO, progress: ProgressArg = False,
        **pool_options: Any) -> list[R]: ...


@overload
def map(fn: Callable[[T, T2], R], iterable: Iterable[T], iterable2: Iterable[T2], /, *,
        timeout: float | None = None, mode: Mode | str | None = None,
        workers: int | None = None, chunksize: ChunkSize = AUTO,
        progress: ProgressArg = False, **pool_options: Any) -> list[R]: ...


@overload
def map(fn: Callable[..., R], iterable: Iterable[Any], /, *iterables: Iterable[Any],
        timeout: float | None = None, mode: Mode | str | None = None,
        workers: int | None = None, chunksize: ChunkSize = AUTO,
        progress: ProgressArg = False, **pool_options: Any) -> list[R]: ...


def map(fn: Callable[..., R], /, *iterables: Any, timeout: float | None = None,
        mode: Mode | str | None = None, workers: int | None = None,
        chunksize: ChunkSize = AUTO, progress: ProgressArg = False,
        **pool_options: Any) -> list[R]:
    """Apply ``fn`` to every item on a pool made for the call; results in order.

    Takes :meth:`Pool.map`'s arguments (several iterables are zipped;
    ``timeout`` counts from this call, the pool's start included) and the
    :class:`Pool` options (``task_timeout``, ``retries``, ``processes``, ...)
    as keywords. The pool is gone when it returns; on a timeout, an error or
    Ctrl-C its workers are stopped at once.

    Example::

        squares = bf.map(lambda x: x * x, range(1000), mode="process", progress=True)
    """
    started = time.monotonic()
    wait = wait_seconds(timeout)
    items, call, chunksize = _map_inputs(iterables, chunksize)
    with Pool(workers, mode=mode, **pool_options) as pool:
        result: list[R] = pool._map(fn, items, call, chunksize, progress, started, wait)
        return result


def imap(fn: Callable[[T], R], iterable: Iterable[T], *, mode: Mode | str | None = None,
         workers: int | None = None, ordered: bool = True, chunksize: ChunkSize = AUTO,
         progress: ProgressArg = False, **pool_options: Any) -> Iterator[R]:
    """Lazily apply ``fn`` to every item on a pool made for the iteration.

    Results come in input order, or as they finish with ``ordered=False``. The
    pool starts at the first ``next()`` and stops when the iteration ends or
    the iterator is closed.
    """
    _chunksize(chunksize)
    with Pool(workers, mode=mode, **pool_options) as pool:
        if ordered:
            yield from pool.imap(fn, iterable, chunksize=chunksize, progress=progress)
        else:
            yield from pool.imap_unordered(fn, iterable, chunksize=chunksize, progress=progress)
