"""Pickling by value, with cloudpickle: lambdas, closures, ``__main__``'s functions.

Imported only when something cannot be pickled by reference (see
``_serialization``): cloudpickle and what it imports cost more than the rest
of a process pool's imports.
"""

from __future__ import annotations

import contextvars
import io
import pickle
import types
from collections import ChainMap
from collections.abc import Callable
from typing import Any

import cloudpickle

from ._propagate import reduce_context_var

__all__ = ["dumps", "dumps_function"]

PROTOCOL = pickle.HIGHEST_PROTOCOL


def dumps(obj: Any, buffer_callback: Callable[[pickle.PickleBuffer], bool] | None = None) -> bytes:
    """``obj`` pickled by cloudpickle: what cannot be found by name travels by value.

    ``buffer_callback`` is pickle's (protocol 5): where big buffers go.
    """
    data: bytes = cloudpickle.dumps(obj, PROTOCOL, buffer_callback=buffer_callback)
    return data


def dumps_function(fn: Any) -> tuple[bytes, set[str]]:
    """``fn`` pickled by value where it has to be, and the files its code came from."""
    with io.BytesIO() as buffer:
        pickler = _FunctionPickler(buffer)
        pickler.dump(fn)
        return buffer.getvalue(), pickler.filenames


class _FunctionPickler(cloudpickle.Pickler):  # type: ignore[misc]
    """cloudpickle, except that code keeps its file name, and notes which files it used.

    cloudpickle renames every file it pickles code from to ``<dynamic-code>``
    (for byte-identical pickles), which leaves a worker's traceback with no
    file, no line and no source. bingfa pickles each function once, so it has
    no use for that; it wants the real file.
    """

    def __init__(self, file: io.BytesIO) -> None:
        self.filenames: set[str] = set()
        # The C pickler reads dispatch_table when it is initialised.
        self.dispatch_table = ChainMap({types.CodeType: self._reduce_code,
                                        contextvars.ContextVar: reduce_context_var},
                                       cloudpickle.Pickler.dispatch_table)
        super().__init__(file, protocol=PROTOCOL)

    def _reduce_code(self, code: types.CodeType) -> Any:
        rebuild, args = cloudpickle.cloudpickle._code_reduce(code)
        self.filenames.add(code.co_filename)
        # Put the real file name back where cloudpickle wrote its placeholder.
        args = tuple(code.co_filename if a == "<dynamic-code>" else a for a in args)
        return rebuild, args
