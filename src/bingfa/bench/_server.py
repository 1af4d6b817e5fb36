"""``bingfa bench``'s servers, each in a process of its own, so that it competes for no
GIL with what is timed.

``python -m bingfa.bench._server socket`` serves the socket workload and
prints its port; ``python -m bingfa.bench._server rpc`` serves :func:`noop`
over ``bf.rpc`` and prints its address. Both serve until the bench ends them,
or until the bench dies without ending them (SIGKILL). A module of its own,
outside what ``bingfa.bench`` imports, so that running it with ``-m`` loads it
once.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

from ._workloads import ANSWER_SIZE, SERVICE_DELAY, noop

__all__ = ["answer_late_server", "serve_noop_over_rpc"]

PARENT_LOOK = 0.2  # seconds between looks for whether the bench is still there


def orphaned(parent: int) -> bool:
    """Whether the bench that started this process (``parent``) is gone: then this
    process has been handed to another parent."""
    return os.getppid() != parent


def answer_late_server() -> None:
    """Serve the socket workload, each request answered after a delay; print the port."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readline()
            await asyncio.sleep(SERVICE_DELAY)
            writer.write(b"y" * ANSWER_SIZE)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def main() -> None:
        parent = os.getppid()
        server = await asyncio.start_server(answer, "127.0.0.1", 0, backlog=1024)
        print(server.sockets[0].getsockname()[1], flush=True)
        async with server:
            while not orphaned(parent):
                await asyncio.sleep(PARENT_LOOK)

    asyncio.run(main())


def serve_noop_over_rpc() -> None:
    """Serve :func:`noop` with ``bf.rpc`` on a free loopback port; print the address."""
    from ..rpc import serve

    parent = os.getppid()
    with serve({"noop": noop}, "tcp://127.0.0.1:0") as server:
        print(server.address, flush=True)
        while not orphaned(parent):
            time.sleep(PARENT_LOOK)


if __name__ == "__main__":
    if sys.argv[1:] == ["rpc"]:
        serve_noop_over_rpc()
    else:
        answer_late_server()
