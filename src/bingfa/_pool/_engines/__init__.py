"""Engines: how tasks run in each mode. One file per mode; see ``_base``.

Nothing is imported here at module level: a process worker imports this
package on its way to its own module, and must not pay for the others.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .._scheduler import Scheduler
    from ._base import Engine, EngineConfig

__all__ = ["create_engine", "mode_names"]

# mode -> (module, class). Imported on first use, so a mode's dependencies
# cost nothing until a pool of that mode is made.
_ENGINES = {
    "thread": ("._thread", "ThreadEngine"),
    "process": ("._process", "ProcessEngine"),
    "async": ("._async", "AsyncEngine"),
    "gevent": ("._gevent", "GeventEngine"),
    "dask": ("._dask", "DaskEngine"),
    "ray": ("._ray", "RayEngine"),
}


def mode_names() -> tuple[str, ...]:
    """The modes a Pool accepts."""
    return tuple(_ENGINES)


def create_engine(mode: str, scheduler: Scheduler, config: EngineConfig) -> Engine:
    """The engine for ``mode``, not started yet."""
    module_name, class_name = _ENGINES[mode]
    if mode == "process" and config.start_method in (None, "forkserver"):
        # The zygote boots (a fresh interpreter) while this process imports
        # the engine: the two overlap instead of adding up.
        from ._launcher import start_zygote

        start_zygote()
    module = importlib.import_module(module_name, __name__)
    engine: Engine = getattr(module, class_name)(scheduler, config)
    return engine
