"""bingfa (并发): one structured, fast API for every kind of Python concurrency.

>>> import bingfa as bf
>>> bf.map(abs, [-1, -2, 3])
[1, 2, 3]
"""

from ._commands import CommandResult as CommandResult
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
from ._version import __version__ as __version__

__all__ = [
    "AsyncResult",
    "BackendUnavailableError",
    "BingfaError",
    "CommandError",
    "CommandNotFoundError",
    "CommandResult",
    "Future",
    "InitializerError",
    "Pool",
    "PoolClosedError",
    "RemoteTraceback",
    "SerializationError",
    "TaskTimeoutError",
    "WorkerCrashedError",
    "__version__",
    "cancelled",
    "imap",
    "map",
    "run",
    "worker_id",
    "worker_state",
]

# Public classes live in private modules; show them where users import them.
for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type) or callable(_obj):
        try:
            _obj.__module__ = "bingfa"
        except (AttributeError, TypeError):
            pass
del _name, _obj
