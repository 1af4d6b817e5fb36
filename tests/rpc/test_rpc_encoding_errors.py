"""Who could not encode what: a server's unsendable result versus a client's argument.

A client must be able to tell "the server cannot send me its answer" (the
server's bug, nothing wrong with the call) from "I cannot send these
arguments" (the caller's): the two messages name their side, the method, and
the part at fault with its type.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

import bingfa as bf
from bingfa import rpc

pytestmark = pytest.mark.timeout(30)

ADDRESS = "tcp://127.0.0.1:0"
OBJECT_REASON = ("cannot send an object of type builtins.object over msgpack RPC: register it "
                 "with bingfa.rpc.register(), or convert it")


class Unsendable:
    """Every way a handler can hand back something msgpack cannot carry."""

    def plain(self):
        return object()

    @rpc.quick
    def quick(self):
        return object()

    async def coroutine(self):
        return object()

    def generator(self):
        yield 1
        yield object()

    async def async_generator(self):
        yield 1
        yield object()

    def nested(self):
        return [1, object()]

    def echo(self, *args, **kwargs):
        return "fine"


@pytest.fixture
def address():
    with rpc.serve(Unsendable(), ADDRESS) as server:
        yield server.address


@pytest.mark.parametrize("method", ["plain", "quick", "coroutine"])
def test_a_result_the_server_cannot_encode_is_the_servers(address, method):
    with rpc.connect(address) as client:
        with pytest.raises(bf.SerializationError) as info:
            client.call(method)
        assert str(info.value) == (f"the server cannot encode the result of method {method!r} "
                                   f"with msgpack: {OBJECT_REASON}")
        assert client.echo() == "fine"  # that call failed alone


@pytest.mark.parametrize("method", ["generator", "async_generator"])
def test_a_streamed_item_the_server_cannot_encode_is_the_servers(address, method):
    with rpc.connect(address) as client:
        # The error may come before the call returns its stream, or after item 1.
        with pytest.raises(bf.SerializationError) as info:
            list(client.call(method))
        assert str(info.value) == (f"the server cannot encode an item streamed by method "
                                   f"{method!r} with msgpack: {OBJECT_REASON}")
        assert client.echo() == "fine"


def test_the_result_type_is_named_when_the_reason_names_another(address):
    with rpc.connect(address) as client, pytest.raises(bf.SerializationError) as info:
        client.nested()
    assert str(info.value) == ("the server cannot encode the result of method 'nested' "
                               f"(builtins.list) with msgpack: {OBJECT_REASON}")


def test_the_asyncio_client_hears_the_same(address):
    async def main() -> tuple[str, str]:
        async with await rpc.aconnect(address) as client:
            with pytest.raises(bf.SerializationError) as result:
                await client.plain()
            with pytest.raises(bf.SerializationError) as argument:
                await client.echo(1, object())
            assert await client.echo() == "fine"
            return str(result.value), str(argument.value)

    result, argument = asyncio.run(main())
    assert result.startswith("the server cannot encode the result of method 'plain' with ")
    assert argument == ("the client cannot encode argument 2 of method 'echo' with msgpack: "
                        + OBJECT_REASON)


def test_an_argument_the_client_cannot_encode_is_the_clients(address):
    with rpc.connect(address) as client:
        with pytest.raises(bf.SerializationError) as positional:
            client.echo(1, object())
        with pytest.raises(bf.SerializationError) as keyword:
            client.echo(1, key=[object()])
        assert client.echo() == "fine"
    assert str(positional.value) == ("the client cannot encode argument 2 of method 'echo' "
                                     f"with msgpack: {OBJECT_REASON}")
    assert str(keyword.value) == ("the client cannot encode keyword argument 'key' of method "
                                  f"'echo' (builtins.list) with msgpack: {OBJECT_REASON}")


def test_with_pickle_the_server_names_its_result_too():
    secret = "a secret of sixteen bytes or more"
    served = {"lock": threading.Lock}
    with rpc.serve(served, ADDRESS, serializer="pickle", secret=secret) as server, \
            rpc.connect(server.address, secret=secret) as client, \
            pytest.raises(bf.SerializationError) as info:
        client.lock()
    assert str(info.value) == ("the server cannot encode the result of method 'lock' with "
                               "pickle: cannot pickle '_thread.lock' object")
