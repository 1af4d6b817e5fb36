"""Running one batch of tasks: the inner loop every engine shares.

A batch is one function applied to a list of items. How an item becomes the
call's arguments depends on the call style:

- ``CALL_ONE``:  ``fn(item)``                 (``map``, ``imap``)
- ``CALL_STAR``: ``fn(*item)``                (``starmap``)
- ``CALL_KW``:   ``fn(*item[0], **item[1])``  (``submit``, ``apply_async``)

The untracked loop runs at C speed (``list.extend`` over ``map``) and only
notices exceptions; the tracked loop calls ``mark(i)`` before task ``i`` so the
pool can tell which task a crashed or stuck worker was running, and a mark that
returns True stops the batch there (the pool takes back the tasks not started).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from contextvars import Context
from typing import Any

from .._core._own_frames import without_own_frames

__all__ = ["CALL_KW", "CALL_ONE", "CALL_STAR", "call_one", "in_copies_of", "run_batch"]

CALL_ONE = 0
CALL_STAR = 1
CALL_KW = 2

Errors = list[tuple[int, BaseException]]


def _mapper(fn: Callable[..., Any], it: Iterator[Any], call: int) -> Iterator[Any]:
    if call == CALL_ONE:
        return map(fn, it)
    if call == CALL_STAR:
        return itertools.starmap(fn, it)
    return map(_kw_caller(fn), it)


def _kw_caller(fn: Callable[..., Any]) -> Callable[[tuple[Any, Any]], Any]:
    def call_kw(item: tuple[Any, Any]) -> Any:
        return fn(*item[0], **item[1])

    return call_kw


def call_one(fn: Callable[..., Any], item: Any, call: int) -> Any:
    """Run one task of a batch."""
    if call == CALL_ONE:
        return fn(item)
    if call == CALL_STAR:
        return fn(*item)
    return fn(*item[0], **item[1])


def in_copies_of(context: Context, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn``, each call of it run in a fresh copy of ``context``.

    What a task sets in a ContextVar stays in its own copy: neither the
    submitter nor the next task on the same thread sees it.
    """
    copy = context.copy

    def in_context(*args: Any, **kwargs: Any) -> Any:
        return copy().run(fn, *args, **kwargs)

    return in_context


def run_batch(
    fn: Callable[..., Any],
    items: Sequence[Any],
    call: int,
    mark: Callable[[int], bool | None] | None = None,
    context: Context | None = None,
) -> tuple[list[Any], Errors | None]:
    """Apply ``fn`` to every item; return the values and the failures.

    ``values`` has one entry per item (``None`` where the task raised);
    ``errors`` lists ``(index, exception)`` or is ``None`` when all succeeded.
    Every exception is the task's own, ``SystemExit`` included: a task that
    calls ``sys.exit(3)`` gives its caller ``SystemExit(3)``, as
    ``concurrent.futures`` does, and the worker carries on. Each error's
    traceback starts at the task's function, not in this loop. With a
    ``context`` (the submitter's contextvars), each task runs in a copy of it.
    When ``mark(i)`` returns True, task ``i`` and those after it do not run:
    ``values`` then holds one entry per task before it.
    """
    if mark is None and len(items) == 1:
        # One task (a submit, most often): no map object, no loop.
        try:
            if context is None:
                return [call_one(fn, items[0], call)], None
            return [context.copy().run(call_one, fn, items[0], call)], None
        except BaseException as exc:
            return [None], [(0, _trimmed(exc))]
    if context is not None:
        fn = in_copies_of(context, fn)
    values: list[Any] = []
    errors: Errors | None = None
    if mark is None:
        # A map object survives an exception from its function and resumes
        # with the next item, and list.extend keeps what it appended before
        # the exception, so len(values) is the index of the task that raised.
        mapped = _mapper(fn, iter(items), call)
        while True:
            try:
                values.extend(mapped)
                return values, errors
            except BaseException as exc:
                if errors is None:
                    errors = []
                errors.append((len(values), _trimmed(exc)))
                values.append(None)
    append = values.append
    for i, item in enumerate(items):
        if mark(i):
            break
        try:
            append(call_one(fn, item, call))
        except BaseException as exc:
            if errors is None:
                errors = []
            errors.append((i, _trimmed(exc)))
            append(None)
    return values, errors


def _trimmed(exc: BaseException) -> BaseException:
    """``exc``, its traceback starting at the task's function rather than in this loop."""
    return exc.with_traceback(without_own_frames(exc.__traceback__))
