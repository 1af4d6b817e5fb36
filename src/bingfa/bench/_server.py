"""The socket workload's server: ``python -m bingfa.bench._server`` prints its port, serves.

A module of its own, outside what ``bingfa.bench`` imports, so that running it
with ``-m`` loads it once.
"""

from __future__ import annotations

import asyncio
import os

from ._workloads import ANSWER_SIZE, SERVICE_DELAY

__all__ = ["answer_late_server"]


def answer_late_server() -> None:
    """Serve the socket workload until killed: each request answered after a delay.

    Runs in a process of its own (``python -m bingfa.bench._server``), so it
    competes for no GIL with what is timed; prints its port once it listens.
    """

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
            # Until the bench ends it, or dies without ending it (SIGKILL):
            # then this process has been handed to another parent.
            while os.getppid() == parent:
                await asyncio.sleep(0.2)

    asyncio.run(main())


if __name__ == "__main__":
    answer_late_server()
