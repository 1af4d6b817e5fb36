"""bingfa.rpc on one host: a client of a loopback TCP address moves to the server's Unix socket."""

from __future__ import annotations

import asyncio
import socket
import ssl
import sys

import pytest
import trustme

from bingfa import rpc
from bingfa.rpc import _same_host
from bingfa.rpc._wire import parse_address

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.skipif(not sys.platform.startswith("linux"),
                       reason="abstract Unix sockets are Linux's"),
]

SECRET = b"s" * 32


class Service:
    def add(self, a: int, b: int) -> int:
        return a + b

    def count(self, n: int):  # a stream, to see frames flow both ways after the move
        yield from range(n)


def family_of(client: rpc.Client) -> int:
    conn = client._conn
    assert conn is not None
    return conn.sock.family


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_a_client_of_a_loopback_address_moves_to_the_unix_socket(host):
    with rpc.serve(Service(), "tcp://127.0.0.1:0") as server:
        address = server.address.replace("127.0.0.1", host)
        with rpc.connect(address) as client:
            assert family_of(client) == socket.AF_UNIX
            assert client.add(1, 2) == 3
            assert list(client.count(3)) == [0, 1, 2]


def test_unix_when_local_false_stays_on_tcp():
    with rpc.serve(Service(), "tcp://127.0.0.1:0") as server, \
            rpc.connect(server.address, unix_when_local=False) as client:
        assert family_of(client) == socket.AF_INET
        assert client.add(2, 3) == 5


def test_the_secret_is_asked_again_on_the_unix_socket():
    with rpc.serve(Service(), "tcp://127.0.0.1:0", secret=SECRET) as server:
        with rpc.connect(server.address, secret=SECRET) as client:
            assert family_of(client) == socket.AF_UNIX
            assert client.add(1, 1) == 2
        with pytest.raises(rpc.AuthenticationError):
            rpc.connect(server.address, secret=b"x" * 32)
        # Straight to the Unix socket, without the secret: refused there too.
        name = server._same_host[1]
        with pytest.raises(rpc.AuthenticationError):
            rpc.connect(f"unix://{name}")


def test_a_unix_socket_out_of_reach_leaves_the_client_on_tcp():
    # What a port forwarded from another host or network namespace gives: a
    # name this process cannot reach. The client stays on TCP, and works.
    with rpc.serve(Service(), "tcp://127.0.0.1:0") as server:
        listening, _ = server._same_host
        server._same_host = (listening, "\0bingfa-rpc-nobody-listens-here")
        with rpc.connect(server.address) as client:
            assert family_of(client) == socket.AF_INET
            assert [client.add(i, i) for i in range(3)] == [0, 2, 4]


def test_a_server_without_a_unix_socket_keeps_its_clients_on_tcp():
    # As where the abstract namespace is missing or the name could not be bound.
    with rpc.serve(Service(), "tcp://127.0.0.1:0") as server:
        server._same_host = None
        with rpc.connect(server.address) as client:
            assert family_of(client) == socket.AF_INET
            assert client.add(4, 4) == 8


def test_the_unix_socket_goes_with_the_server():
    with rpc.serve(Service(), "tcp://127.0.0.1:0") as server:
        name = server._same_host[1]
        reached = _same_host.connect_nowait(name)
        assert reached is not None
        reached.close()
    assert _same_host.connect_nowait(name) is None


def test_a_unix_server_and_a_tls_server_have_none(tmp_path):
    with rpc.serve(Service(), f"unix://{tmp_path / 'rpc.sock'}") as server:
        assert server._same_host is None
        with rpc.connect(server.address) as client:
            assert client.add(1, 1) == 2
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    with rpc.serve(Service(), "tcp://127.0.0.1:0", tls=context) as server:
        assert server._same_host is None
        client_context = ssl.create_default_context()
        ca.configure_trust(client_context)
        with rpc.connect(server.address, tls=client_context) as client:
            assert client.add(1, 2) == 3  # over TLS, as asked: never moved off it


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_the_async_client_moves_too(loop):
    async def calls(address: str) -> tuple[int, int, list[int]]:
        client = await rpc.aconnect(address, secret=SECRET)
        try:
            protocol = client._protocol
            assert protocol is not None
            assert protocol.transport is not None
            family = protocol.transport.get_extra_info("socket").family
            return family, await client.add(2, 2), [i async for i in await client.count(2)]
        finally:
            await client.aclose()

    if loop == "uvloop":
        import uvloop  # a dev dependency: the server uses it when installed

        run = uvloop.run
    else:
        run = asyncio.run
    with rpc.serve(Service(), "tcp://127.0.0.1:0", secret=SECRET) as server:
        assert run(calls(server.address)) == (socket.AF_UNIX, 4, [0, 1])


@pytest.mark.parametrize(("address", "asks"), [
    ("tcp://127.0.0.1:1", True),
    ("tcp://127.8.9.10:1", True),  # all of 127.0.0.0/8 is loopback
    ("tcp://localhost:1", True),
    ("tcp://[::1]:1", True),
    ("tcp://0.0.0.0:1", True),  # what a server bound to all addresses says: this host
    ("tcp://[::]:1", True),
    ("tcp://10.0.0.5:1", False),
    ("tcp://[::2]:1", False),
    ("tcp://example.com:1", False),
    ("unix:///tmp/bingfa.sock", False),
])
def test_only_an_address_of_this_host_asks_for_the_unix_socket(address, asks):
    assert _same_host.worth_asking(parse_address(address)) is asks


def test_a_bad_unix_when_local_is_refused():
    with pytest.raises(TypeError, match="unix_when_local"):
        rpc.connect("tcp://127.0.0.1:9", unix_when_local="yes")
    with pytest.raises(TypeError, match="unix_when_local"):
        rpc.AsyncClient("tcp://127.0.0.1:9", unix_when_local=1)
