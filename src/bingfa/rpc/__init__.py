"""bingfa RPC: Python-to-Python calls, safe by default, asyncio-native, fast.

>>> import bingfa as bf
>>> with bf.rpc.serve({"add": lambda a, b: a + b}, "tcp://127.0.0.1:0") as server:
...     with bf.rpc.connect(server.address) as client:
...         client.add(1, 2)
3

See ``docs/rpc.md``.
"""

from ._aclient import AsyncClient, aconnect
from ._client import Client, connect
from ._codec import register
from ._errors import (
    AuthenticationError,
    ConnectionLostError,
    RemoteError,
    RPCTimeoutError,
    register_error,
)
from ._server import Server, quick, serve

__all__ = [
    "AsyncClient",
    "AuthenticationError",
    "Client",
    "ConnectionLostError",
    "RPCTimeoutError",
    "RemoteError",
    "Server",
    "aconnect",
    "connect",
    "quick",
    "register",
    "register_error",
    "serve",
]

for _name in ("AsyncClient", "Client", "Server", "aconnect", "connect", "quick", "register",
              "register_error", "serve"):
    globals()[_name].__module__ = "bingfa.rpc"
del _name
