"""What a function and its data would cost to send to a process: their pickled bytes."""

from __future__ import annotations

import pickle
from typing import Any

from ..._core._serialization import dumps, dumps_function

__all__ = ["pickled_bytes", "pickled_function"]


def pickled_bytes(obj: Any) -> int | None:
    """Bytes ``obj`` travels as to a process worker (big buffers included); None: unpicklable.

    Pickled as a process pool would (``__main__`` by value), so what cannot
    reach a worker shows here first.
    """
    buffers: list[pickle.PickleBuffer] = []
    try:
        data = dumps(obj, main_by_value=True, out_of_band=buffers)
    except Exception:
        return None
    return len(data) + sum(buffer.raw().nbytes for buffer in buffers)


def pickled_function(fn: Any) -> bytes | None:
    """What ``fn`` travels as to a process worker (with the state it carries by
    value), as a process pool pickles it; None: unpicklable."""
    try:
        return dumps_function(fn)
    except Exception:
        return None
