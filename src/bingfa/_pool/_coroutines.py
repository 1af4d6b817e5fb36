"""Whether a callable makes coroutines: asked without importing asyncio."""

from __future__ import annotations

import inspect
from typing import Any

__all__ = ["is_coroutine_function"]


def is_coroutine_function(fn: Any) -> bool:
    """Whether calling ``fn`` makes a coroutine: an ``async def`` function or method,
    a ``functools.partial`` of one, or an object whose ``__call__`` is one."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None))  # noqa: B004 - the method itself is what is asked about
