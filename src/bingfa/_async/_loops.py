"""Making event loops: uvloop's when it is installed, asyncio's otherwise."""

from __future__ import annotations

import asyncio

__all__ = ["new_event_loop"]


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new event loop for a thread bingfa runs: uvloop's when it is installed.

    uvloop (``pip install 'bingfa[uvloop]'``) takes a few microseconds off
    every callback; the standard loop does just the same work without it.
    """
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop
