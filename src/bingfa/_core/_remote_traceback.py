"""Carrying a task's exception, with its traceback, from a worker to the caller.

The exception and its formatted traceback travel separately: a traceback
object cannot be pickled, and an exception may fail to pickle or unpickle (a
custom ``__init__`` that pickle cannot replay, a lock in its attributes). In
that case the caller still gets the traceback text inside a
:class:`~bingfa.SerializationError`.
"""

from __future__ import annotations

import traceback
from typing import Any

from ._errors import RemoteTraceback, SerializationError
from ._own_frames import without_own_frames
from ._serialization import dumps, loads

__all__ = ["ErrorPayload", "capture", "rebuild", "with_remote_traceback"]

# (pickled exception or None, formatted traceback, "module.Type", pickling error)
ErrorPayload = tuple[bytes | None, str, str, str | None]


def _type_name(exc: BaseException) -> str:
    cls = type(exc)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def capture(exc: BaseException) -> ErrorPayload:
    """Turn an exception raised in a worker into something that can be sent.

    The traceback text starts at the user's code: the worker's own frames
    above it are left out.
    """
    text = "".join(traceback.format_exception(
        type(exc), exc, without_own_frames(exc.__traceback__)))
    try:
        data: bytes | None = dumps(exc)
        problem = None
    except Exception as pickling_error:
        data = None
        problem = f"{type(pickling_error).__name__}: {pickling_error}"
    return data, text, _type_name(exc), problem


def with_remote_traceback(exc: BaseException, text: str) -> BaseException:
    """Attach the worker's traceback as the exception's ``__cause__``."""
    exc.__cause__ = RemoteTraceback(text)
    return exc


def rebuild(payload: ErrorPayload) -> BaseException:
    """The exception to raise in the caller, with the worker's traceback as its cause."""
    data, text, type_name, problem = payload
    if data is None:
        err: BaseException = SerializationError(
            f"the task raised {type_name}, which could not be serialized to be sent "
            f"back ({problem}); its traceback is attached"
        )
        return with_remote_traceback(err, text)
    try:
        exc: Any = loads(data)
    except BaseException as unpickling_error:  # SystemExit from __setstate__ too: never escapes
        err = SerializationError(
            f"the task raised {type_name}, which could not be deserialized "
            f"({type(unpickling_error).__name__}: {unpickling_error}); its traceback is attached"
        )
        return with_remote_traceback(err, text)
    if not isinstance(exc, BaseException):
        return with_remote_traceback(
            SerializationError(f"the task raised {type_name}, which unpickled as {type(exc)!r}"),
            text,
        )
    if isinstance(exc, SystemExit) and exc.code is None and exc.args:
        # Once distributed is imported, tblib's exception pickling rebuilds
        # an exception without its __init__: a SystemExit keeps its args but
        # loses its code, and sys.exit(3) would end the caller with 0.
        exc.code = exc.args[0] if len(exc.args) == 1 else exc.args  # type: ignore[assignment]
    return with_remote_traceback(exc, text)
