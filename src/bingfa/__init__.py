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

    from . import bench as bench
    from . import rpc as rpc
    from ._async._bridges import from_thread as from_thread
    from ._async._bridges import run_async as run_async
    from ._async._bridges import to_process as to_process
    from ._async._bridges import to_thread as to_thread
    from ._channels._channel import Channel as Channel
    from ._channels._channel import ChannelStatistics as ChannelStatistics
    from ._channels._errors import ChannelClosedError as ChannelClosedError
    from ._channels._errors import ChannelEmpty as ChannelEmpty
    from ._channels._errors import ChannelFull as ChannelFull
    from ._commands._result import CommandResult as CommandResult
    from ._commands._run import arun as arun
    from ._commands._run import run as run
    from ._commands._run_many import CommandRun as CommandRun
    from ._commands._run_many import run_many as run_many
    from ._commands._stream import CommandStream as CommandStream
    from ._commands._stream import OutputLine as OutputLine
    from ._commands._stream import stream as stream
    from ._core._context import cancelled as cancelled
    from ._core._context import check_cancelled as check_cancelled
    from ._core._context import worker_id as worker_id
    from ._core._context import worker_state as worker_state
    from ._core._errors import BackendUnavailableError as BackendUnavailableError
    from ._core._errors import BingfaError as BingfaError
    from ._core._errors import CommandError as CommandError
    from ._core._errors import CommandNotFoundError as CommandNotFoundError
    from ._core._errors import DeadlockError as DeadlockError
    from ._core._errors import InitializerError as InitializerError
    from ._core._errors import LockOwnerDiedError as LockOwnerDiedError
    from ._core._errors import PoolClosedError as PoolClosedError
    from ._core._errors import RemoteTraceback as RemoteTraceback
    from ._core._errors import ScopeClosedError as ScopeClosedError
    from ._core._errors import SerializationError as SerializationError
    from ._core._errors import TaskTimeoutError as TaskTimeoutError
    from ._core._errors import WorkerCrashedError as WorkerCrashedError
    from ._core._futures import Future as Future
    from ._core._propagate import propagate as propagate
    from ._pool._errors import ResultTimeoutError as ResultTimeoutError
    from ._pool._oneshot import imap as imap
    from ._pool._oneshot import map as map
    from ._pool._pool import Pool as Pool
    from ._pool._results import AsyncResult as AsyncResult
    from ._scope._handles import Process as Process
    from ._scope._handles import Thread as Thread
    from ._scope._scope import Scope as Scope
    from ._scope._scope import scope as scope
    from ._sync._barrier import Barrier as Barrier
    from ._sync._barrier import BrokenBarrierError as BrokenBarrierError
    from ._sync._condition import Condition as Condition
    from ._sync._condition import Event as Event
    from ._sync._lock import Lock as Lock
    from ._sync._lock import RLock as RLock
    from ._sync._semaphore import BoundedSemaphore as BoundedSemaphore
    from ._sync._semaphore import Semaphore as Semaphore
    from ._sync._value import Value as Value

# public name -> the private module that defines it
_HOMES = {
    "AsyncResult": "_pool._results",
    "BackendUnavailableError": "_core._errors",
    "Barrier": "_sync._barrier",
    "BingfaError": "_core._errors",
    "BoundedSemaphore": "_sync._semaphore",
    "BrokenBarrierError": "_sync._barrier",
    "Channel": "_channels._channel",
    "ChannelClosedError": "_channels._errors",
    "ChannelEmpty": "_channels._errors",
    "ChannelFull": "_channels._errors",
    "ChannelStatistics": "_channels._channel",
    "CommandError": "_core._errors",
    "CommandNotFoundError": "_core._errors",
    "CommandResult": "_commands._result",
    "CommandRun": "_commands._run_many",
    "CommandStream": "_commands._stream",
    "Condition": "_sync._condition",
    "DeadlockError": "_core._errors",
    "Event": "_sync._condition",
    "Future": "_core._futures",
    "InitializerError": "_core._errors",
    "Lock": "_sync._lock",
    "LockOwnerDiedError": "_core._errors",
    "OutputLine": "_commands._stream",
    "Pool": "_pool._pool",
    "PoolClosedError": "_core._errors",
    "Process": "_scope._handles",
    "RLock": "_sync._lock",
    "RemoteTraceback": "_core._errors",
    "ResultTimeoutError": "_pool._errors",
    "Scope": "_scope._scope",
    "ScopeClosedError": "_core._errors",
    "Semaphore": "_sync._semaphore",
    "SerializationError": "_core._errors",
    "TaskTimeoutError": "_core._errors",
    "Thread": "_scope._handles",
    "Value": "_sync._value",
    "WorkerCrashedError": "_core._errors",
    "arun": "_commands._run",
    "cancelled": "_core._context",
    "from_thread": "_async._bridges",
    "check_cancelled": "_core._context",
    "imap": "_pool._oneshot",
    "map": "_pool._oneshot",
    "propagate": "_core._propagate",
    "run": "_commands._run",
    "run_async": "_async._bridges",
    "run_many": "_commands._run_many",
    "scope": "_scope._scope",
    "stream": "_commands._stream",
    "to_process": "_async._bridges",
    "to_thread": "_async._bridges",
    "worker_id": "_core._context",
    "worker_state": "_core._context",
}

# public subpackages, also loaded on first use: bf.rpc, bf.bench
_SUBPACKAGES = ("bench", "rpc")

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
    if (isinstance(obj, type) or callable(obj)) and obj.__module__.startswith(f"{__name__}."):
        # Public objects live in private modules; show them where users import
        # them (but leave the standard library's, such as BrokenBarrierError, alone).
        try:
            obj.__module__ = "bingfa"
        except (AttributeError, TypeError):
            pass
    globals()[name] = obj
    return obj


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES, *_SUBPACKAGES})


del TYPE_CHECKING
