"""An event loop on a thread of its own, for coroutines spawned by a plain ``with bf.scope()``."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from .._core._interrupts import start_without_sigint

if TYPE_CHECKING:
    import asyncio

__all__ = ["LoopThread"]

# How long closing waits for the coroutines still running (they were
# cancelled: this is only their clean-up) before it leaves them.
_CLOSE_WAIT = 5.0


class LoopThread:
    """An event loop (new unless given) run on a daemon thread (SIGINT blocked) until closed."""

    def __init__(self, name: str, loop: asyncio.AbstractEventLoop | None = None) -> None:
        if loop is None:
            import asyncio

            loop = asyncio.new_event_loop()
        self.loop: asyncio.AbstractEventLoop = loop
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        start_without_sigint(self._thread)

    @property
    def ident(self) -> int | None:
        """The thread's identifier (``threading.get_ident()`` there)."""
        return self._thread.ident

    def _run(self) -> None:
        import asyncio

        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            # Whatever still runs was cancelled by the scope: let it clean up.
            pending = asyncio.all_tasks(self.loop)
            for task in pending:
                task.cancel()
            if pending:
                self.loop.run_until_complete(asyncio.wait(pending, timeout=_CLOSE_WAIT))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    def close(self) -> None:
        """Stop the loop, cancel what it still runs, and join its thread."""
        if self._thread.is_alive():
            try:
                self.loop.call_soon_threadsafe(self.loop.stop)
            except RuntimeError:
                pass  # stopped and closed already, by its owner: the thread is on its way out
            self._thread.join()
