"""bingfa (并发): one structured, fast API for every kind of Python concurrency.

>>> import bingfa as bf
>>> bf.map(abs, [-1, -2, 3])
[1, 2, 3]

Names are loaded on first use (PEP 562), so ``import bingfa`` and the
``bingfa`` command start in a few milliseconds: ``bingfa run`` must not pay for
the Pool's imports before it can start its first command.
"""

import sys as _sys

from ._version import __version__ as __version__

TYPE_CHECKING = False  # not from typing: its import alone costs more than the rest
if TYPE_CHECKING:
    from typing import Any

    from . import rpc as rpc
    from ._cmdresult import CommandResult as CommandResult
    from ._commands import arun as arun
    from ._commands import run as run
    from ._context import cancelled as cancelled
    from ._context import worker_id as worker_id
    from ._context import worker_state as worker_state
    from ._errors import BackendUnavailableError as BackendUnavailableError
    from ._errors import BingfaError as BingfaError
    from ._errors import CommandError as CommandError
    from ._errors import CommandNotFoundError as CommandNotFoundError
    from ._errors import InitializerError as InitializerError
    from ._errors import PoolClosedError as PoolClosedError
    from ._errors import RemoteTraceback as RemoteTraceback
    from ._errors import SerializationError as SerializationError
    from ._errors import TaskTimeoutError as TaskTimeoutError
    from ._errors import WorkerCrashedError as WorkerCrashedError
    from ._futures import Future as Future
    from ._pool import AsyncResult as AsyncResult
    from ._pool import Pool as Pool
    from ._pool import imap as imap
    from ._pool import map as map
    from ._run_many import CommandRun as CommandRun
    from ._run_many import run_many as run_many
    from ._stream import CommandStream as CommandStream
    from ._stream import OutputLine as OutputLine
    from ._stream import stream as stream

# public name -> the private module that defines it
_HOMES = {
    "AsyncResult": "_pool",
    "BackendUnavailableError": "_errors",
    "BingfaError": "_errors",
    "CommandError": "_errors",
    "CommandNotFoundError": "_errors",
    "CommandResult": "_cmdresult",
    "CommandRun": "_run_many",
    "CommandStream": "_stream",
    "Future": "_futures",
    "InitializerError": "_errors",
    "OutputLine": "_stream",
    "Pool": "_pool",
    "PoolClosedError": "_errors",
    "RemoteTraceback": "_errors",
    "SerializationError": "_errors",
    "TaskTimeoutError": "_errors",
    "WorkerCrashedError": "_errors",
    "arun": "_commands",
    "cancelled": "_context",
    "imap": "_pool",
    "map": "_pool",
    "run": "_commands",
    "run_many": "_run_many",
    "stream": "_stream",
    "worker_id": "_context",
    "worker_state": "_context",
}

# public subpackages, also loaded on first use: bf.rpc
_SUBPACKAGES = ("rpc",)

__all__ = sorted([*_HOMES, *_SUBPACKAGES, "__version__"])


def __getattr__(name: str) -> "Any":
    if name in _SUBPACKAGES:
        __import__(f"{__name__}.{name}")
        return _sys.modules[f"{__name__}.{name}"]
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'bingfa' has no attribute {name!r}")
    __import__(f"{__name__}.{home}")
    obj = getattr(_sys.modules[f"{__name__}.{home}"], name)
    if isinstance(obj, type) or callable(obj):
        # Public objects live in private modules; show them where users import them.
        try:
            obj.__module__ = "bingfa"
        except (AttributeError, TypeError):
            pass
    globals()[name] = obj
    return obj


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES, *_SUBPACKAGES})


del TYPE_CHECKING
