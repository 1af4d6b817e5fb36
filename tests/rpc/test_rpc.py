"""bingfa.rpc: calls, errors, streams, deadlines, reconnection, asyncio, TLS (real sockets)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import decimal
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import trustme
from conftest import wait_until

import bingfa as bf
from bingfa import rpc

PY = sys.executable
ADDRESS = "tcp://127.0.0.1:0"


@rpc.register
@dataclasses.dataclass
class Point:
    x: float
    y: float


@rpc.register_error
class InsufficientFunds(Exception):
    pass


class Unregistered(Exception):
    pass


class Service:
    """A bit of everything a server may serve."""

    def __init__(self) -> None:
        self.cancelled_seen = threading.Event()
        self.async_cancelled = threading.Event()
        self.produced = 0

    def add(self, a, b):
        """Add two things."""
        return a + b

    def echo(self, value):
        return value

    def kw(self, a, *, scale=1):
        return a * scale

    def fail(self, kind):
        if kind == "key":
            raise KeyError("missing")
        if kind == "funds":
            raise InsufficientFunds("balance 3 < 5")
        raise Unregistered("not known to the client")

    def bingfa_error(self, name):
        raise getattr(bf, name)(f"a {name} from the server")

    def count(self, n):
        for i in range(n):
            self.produced += 1
            yield i

    async def acount(self, n):
        for i in range(n):
            yield i
            await asyncio.sleep(0)

    async def slow(self, seconds):
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            self.async_cancelled.set()
            raise
        return seconds

    def later(self, seconds):
        return self.slow(seconds)  # a plain function that returns a coroutine

    def polls(self):
        while not bf.cancelled():
            time.sleep(0.005)
        self.cancelled_seen.set()
        return "stopped"

    def _private(self):
        return "never served"


@pytest.fixture
def service():
    return Service()


@pytest.fixture
def server(service):
    with rpc.serve(service, ADDRESS) as running:
        yield running


@pytest.fixture
def client(server):
    with rpc.connect(server.address) as c:
        yield c


# -- calls and data --------------------------------------------------------------------


def test_calls_as_attributes_and_by_name(client):
    assert client.add(1, 2) == 3
    assert client.call("add", "a", "b") == "ab"
    assert client.kw(2, scale=5) == 10


def test_python_types_survive_the_trip(client):
    values = [
        (1, (2, 3)), {1, 2}, frozenset({"a"}), b"\x00\xff", 2**100, -(2**70), 1.5,
        datetime.datetime(2026, 11, 24, 12, 0, tzinfo=datetime.UTC),
        datetime.date(2026, 1, 2), datetime.time(3, 4, 5), datetime.timedelta(days=2, seconds=3),
        decimal.Decimal("1.10"), complex(1, -2), {"nested": [1, {"x": (None, True)}]},
        Point(1.0, 2.5), {3: "int keys"},
    ]
    for value in values:
        back = client.echo(value)
        assert back == value
        assert type(back) is type(value)


def test_methods_lists_what_is_served(client):
    methods = client.methods()
    assert "_private" not in methods
    assert set(methods) >= {"add", "count", "acount", "slow", "polls"}
    assert methods["add"]["doc"] == "Add two things."
    assert methods["add"]["signature"] == "(a, b)"
    assert methods["slow"]["kind"] == "coroutine"
    assert methods["count"]["kind"] == "generator"


def test_a_dict_of_functions_and_a_unix_socket(tmp_path):
    address = f"unix://{tmp_path}/rpc.sock"
    with rpc.serve({"mul": lambda a, b: a * b}, address) as server:
        assert server.address == address
        with rpc.connect(address) as c:
            assert c.mul(6, 7) == 42
    assert not os.path.exists(tmp_path / "rpc.sock")


def _errors_in_threads(work, count):
    """Run ``work(k)`` in ``count`` threads at once; what they raised."""
    errors = []

    def guarded(k):
        try:
            work(k)
        except BaseException as exc:  # pytest.raises fails with a BaseException
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(k,)) for k in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_many_threads_share_one_client(client):
    def work(k):
        for i in range(300):
            assert client.add(i, k) == i + k

    assert _errors_in_threads(work, 8) == []


def test_threads_mixing_every_kind_of_call_share_one_client(client):
    # Quick calls, coroutines, streams, errors and expiring deadlines at once:
    # answers arrive out of order and in batches, and every caller must get
    # its own, whoever reads the socket and whoever is woken in which order.
    def work(k):
        for i in range(40):
            assert client.add(i, k) == i + k
            if i % 4 == 0:
                assert client.slow(0.001) == 0.001
            if i % 8 == 0:
                assert list(client.count(30)) == list(range(30))
            if i % 10 == 0:
                with pytest.raises(KeyError):
                    client.fail("key")
            if i % 13 == 0:
                with pytest.raises(rpc.RPCTimeoutError):
                    client.slow(5, timeout=0.02)

    assert _errors_in_threads(work, 16) == []
    assert client.add(1, 1) == 2


def test_spin_is_checked_and_zero_never_polls(server):
    for bad in (-1e-6, 2, float("nan"), True):
        with pytest.raises(ValueError, match="spin"):
            rpc.connect(server.address, spin=bad)
    with rpc.connect(server.address, spin=0) as c:
        assert [c.add(i, i) for i in range(50)] == [2 * i for i in range(50)]
        assert c._conn is not None
        assert c._conn.spin_misses == 0


def test_a_client_stops_polling_for_answers_that_come_slowly(server, monkeypatch):
    from bingfa.rpc import _client

    monkeypatch.setattr(_client, "host_busy", lambda: False)  # it polls: see below
    # The longest spin allowed, against calls that always take far longer:
    # after a few empty polls the client sleeps on the socket at once.
    with rpc.connect(server.address, spin=1e-3) as c:
        for _ in range(_client.SPIN_MISSES + 3):
            assert c.slow(0.02) == 0.02
        assert c._conn is not None
        assert c._conn.spin_misses > _client.SPIN_MISSES


def test_sync_handlers_run_in_a_pool_and_coroutines_on_the_loop(server):
    seen = {}

    def where():
        return threading.current_thread().name

    async def awhere():
        return threading.current_thread().name

    with rpc.serve({"where": where, "awhere": awhere}, ADDRESS) as s, rpc.connect(s.address) as c:
        seen["sync"] = c.where()
        seen["async"] = c.awhere()
    assert seen["async"] == "bingfa-rpc-server"
    assert seen["sync"] != "bingfa-rpc-server"


# -- errors ------------------------------------------------------------------------------


def test_remote_exceptions_keep_their_type_and_traceback(client):
    with pytest.raises(KeyError) as info:
        client.fail("key")
    assert isinstance(info.value.__cause__, bf.RemoteTraceback)
    assert "in fail" in str(info.value.__cause__)
    with pytest.raises(InsufficientFunds, match="balance 3 < 5"):
        client.fail("funds")
    with pytest.raises(rpc.RemoteError) as info:
        client.fail("other")
    assert info.value.remote_type.endswith("Unregistered")
    assert isinstance(info.value, bf.BingfaError)


def test_bingfas_own_errors_keep_their_type(client):
    """Also those defined with the pool, which the client never imports itself."""
    for name in ("TaskTimeoutError", "ResultTimeoutError", "PoolClosedError"):
        with pytest.raises(getattr(bf, name), match=f"a {name} from the server") as info:
            client.bingfa_error(name)
        assert type(info.value) is getattr(bf, name)


def test_hidden_tracebacks(service):
    with rpc.serve(service, ADDRESS, expose_tracebacks=False) as s, \
            rpc.connect(s.address) as c, pytest.raises(KeyError) as info:
        c.fail("key")
    assert info.value.__cause__ is None


def test_bad_calls(client, service):
    with pytest.raises(AttributeError, match="no method 'nope'"):
        client.nope()
    with pytest.raises(TypeError, match="argument"):
        client.add(1)
    with pytest.raises(bf.SerializationError, match="object"):
        client.echo(object())
    assert client.add(1, 1) == 2  # the connection is fine after all that


@pytest.mark.parametrize("address", ["nonsense", "tcp://127.0.0.1", "tcp://127.0.0.1:70000",
                                     "tcp://:80", "http://x:1", "unix://"])
def test_addresses_that_do_not_parse(address):
    with pytest.raises(ValueError, match="address"):
        rpc.serve({"f": print}, address)
    with pytest.raises(ValueError, match="address"):
        rpc.connect(address)


def test_bad_server_options():
    with pytest.raises(ValueError, match="pickle"):
        rpc.serve({"f": print}, ADDRESS, serializer="pickle")
    with pytest.raises(ValueError, match="serializer"):
        rpc.serve({"f": print}, ADDRESS, serializer="json")
    with pytest.raises(ValueError, match="no public methods"):
        rpc.serve(object(), ADDRESS)
    with pytest.raises(ValueError, match="16 bytes"):
        rpc.serve({"f": print}, ADDRESS, secret="short")


def test_a_class_is_refused_when_its_methods_need_an_instance():
    with pytest.raises(TypeError) as info:
        rpc.serve(Service, ADDRESS)
    message = str(info.value)
    assert "class Service, not an instance" in message
    assert "add" in message
    assert "Service()" in message

    class Static:
        @staticmethod
        def add(a, b):
            return a + b

        @classmethod
        def name(cls):
            return cls.__name__

    with rpc.serve(Static, ADDRESS) as server, rpc.connect(server.address) as c:
        assert c.add(1, 2) == 3
        assert c.name() == "Static"


def test_pickle_with_a_secret_carries_anything():
    secret = "s" * 32
    with rpc.serve({"echo": lambda x: x}, ADDRESS, serializer="pickle", secret=secret) as s, \
            rpc.connect(s.address, secret=secret) as c:
        assert c.echo(Unregistered("x")).args == ("x",)


# -- deadlines and cancellation ------------------------------------------------------------


def test_a_deadline_cancels_an_async_handler(client, service):
    with pytest.raises(rpc.RPCTimeoutError) as info:
        client.slow(30, timeout=0.2)
    assert isinstance(info.value, TimeoutError)
    assert service.async_cancelled.wait(5)


def test_a_deadline_reaches_a_thread_handler_through_bf_cancelled(client, service):
    with pytest.raises(rpc.RPCTimeoutError):
        client.call("polls", timeout=0.2)
    assert service.cancelled_seen.wait(5)


def test_a_deadline_cancels_a_coroutine_returned_by_a_plain_function(client, service):
    with pytest.raises(rpc.RPCTimeoutError):
        client.later(30, timeout=0.2)
    assert service.async_cancelled.wait(5)
    assert client.later(0) == 0  # and one that finishes in time answers


def test_the_client_default_timeout(server):
    with rpc.connect(server.address, timeout=0.2) as c, pytest.raises(TimeoutError):
        c.slow(30)


# -- streams -------------------------------------------------------------------------------


def test_generators_stream(client):
    assert list(client.count(500)) == list(range(500))
    assert list(client.acount(5)) == [0, 1, 2, 3, 4]


def test_a_slow_consumer_holds_the_generator_back(client, service):
    stream = client.count(100_000)
    assert next(stream) == 0
    # The server runs ahead by at most its window of credit, not the whole stream.
    assert wait_until(lambda: service.produced >= 2)
    time.sleep(0.2)  # let an unbounded producer show itself, if it were one
    assert service.produced <= 200
    for _ in range(100):
        next(stream)
    assert wait_until(lambda: service.produced > 100)
    assert service.produced <= 400
    stream.close()


def test_closing_a_stream_stops_the_generator(client, service):
    with client.count(10**9) as stream:
        assert next(stream) == 0
    produced = service.produced
    time.sleep(0.2)  # a generator that kept going would be visible now
    assert service.produced <= produced + 100
    assert client.add(2, 2) == 4


# -- connection loss and reconnection ----------------------------------------------------


SERVER_SCRIPT = textwrap.dedent("""
    import asyncio, sys
    import bingfa.rpc as rpc

    async def hang():
        print("hanging", flush=True)  # the test kills the server once the call is here
        await asyncio.sleep(100)

    server = rpc.serve({"add": lambda a, b: a + b, "hang": hang}, sys.argv[1])
    print(server.address, flush=True)
    server.serve_forever()
""")


def _server_process(address, script=SERVER_SCRIPT):
    proc = subprocess.Popen([PY, "-c", script, address], stdout=subprocess.PIPE, text=True)
    return proc, proc.stdout.readline().strip()


@pytest.mark.timeout(30)
def test_a_killed_server_gives_connection_lost_promptly_and_a_restart_reconnects():
    proc, address = _server_process(ADDRESS)
    try:
        client = rpc.connect(address)
        assert client.add(1, 2) == 3
        errors = []

        def call_hang():
            try:
                client.hang()
            except Exception as exc:
                errors.append((exc, time.monotonic()))

        caller = threading.Thread(target=call_hang)
        caller.start()
        assert proc.stdout.readline().strip() == "hanging"
        proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        caller.join(5)
        assert errors, "the call did not fail"
        exc, when = errors[0]
        assert isinstance(exc, rpc.ConnectionLostError)
        assert isinstance(exc, ConnectionError)
        assert when - killed < 1.0
        proc.wait()
        proc.stdout.close()
        proc, _ = _server_process(address)  # the same port again
        assert client.add(2, 3) == 5
        client.close()
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


# -- asyncio -------------------------------------------------------------------------------


def test_the_asyncio_client(server, service):
    async def main():
        async with await rpc.aconnect(server.address) as c:
            assert await c.add(1, 2) == 3
            results = await asyncio.gather(*(c.add(i, i) for i in range(200)))
            assert results == [2 * i for i in range(200)]
            assert [x async for x in await c.acount(4)] == [0, 1, 2, 3]
            assert [x async for x in await c.count(70)] == list(range(70))
            with pytest.raises(KeyError):
                await c.fail("key")
            with pytest.raises(rpc.RPCTimeoutError):
                await c.call("slow", 30, timeout=0.2)
            assert "add" in await c.methods()

    asyncio.run(main())
    assert service.async_cancelled.wait(5)


def test_async_with_serve_on_the_running_loop():
    async def main():
        async with rpc.serve({"add": lambda a, b: a + b}, ADDRESS) as server:
            client = await rpc.aconnect(server.address)
            assert await client.add(40, 2) == 42
            await client.aclose()

    asyncio.run(main())


# -- security --------------------------------------------------------------------------------


def test_a_secret_is_required_and_checked(service):
    secret = b"k" * 32
    with rpc.serve(service, ADDRESS, secret=secret) as server:
        with rpc.connect(server.address, secret=secret) as c:
            assert c.add(1, 1) == 2
        with pytest.raises(rpc.AuthenticationError):
            rpc.connect(server.address)
        with pytest.raises(rpc.AuthenticationError):
            rpc.connect(server.address, secret=b"x" * 32)


@pytest.fixture(scope="module")
def certificates():
    ca = trustme.CA()
    return ca, ca.issue_cert("127.0.0.1"), ca.issue_cert("client")


def test_tls_with_client_certificates(certificates, service):
    import ssl

    ca, server_cert, client_cert = certificates
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_cert.configure_cert(server_ctx)
    ca.configure_trust(server_ctx)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    client_cert.configure_cert(client_ctx)
    with rpc.serve(service, ADDRESS, tls=server_ctx, serializer="pickle") as server:
        with rpc.connect(server.address, tls=client_ctx) as c:
            assert c.add(1, 2) == 3
            assert list(c.count(3)) == [0, 1, 2]
        anonymous = ssl.create_default_context()
        ca.configure_trust(anonymous)
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            rpc.connect(server.address, tls=anonymous).add(1, 1)


# -- shutdown --------------------------------------------------------------------------------


def test_shutdown_lets_calls_in_flight_finish():
    started = threading.Event()

    async def work():
        started.set()
        await asyncio.sleep(0.3)
        return "finished"

    results = []
    server = rpc.serve({"work": work}, ADDRESS).start()
    client = rpc.connect(server.address)
    caller = threading.Thread(target=lambda: results.append(client.work()))
    caller.start()
    assert started.wait(5)
    server.close()
    caller.join(5)
    client.close()
    assert results == ["finished"]


# -- command line ------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_bingfa_rpc_serve_and_call(tmp_path):
    (tmp_path / "calc.py").write_text(textwrap.dedent("""
        class Calc:
            def add(self, a, b):
                return a + b

            def count(self, n):
                yield from range(n)
    """))
    secret_file = tmp_path / "secret"
    secret_file.write_text("s" * 32 + "\n")
    cli = [PY, "-m", "bingfa._cli", "rpc"]
    server = subprocess.Popen([*cli, "serve", "calc:Calc", "--address", ADDRESS,
                               "--secret-file", str(secret_file)], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        banner = server.stdout.readline()
        assert banner.startswith("serving calc:Calc at tcp://127.0.0.1:")
        address = banner.split()[3]

        def call(*args):
            return subprocess.run([*cli, "call", address, *args, "--secret-file",
                                   str(secret_file)], capture_output=True, text=True, timeout=30)

        assert call("add", "1", "2").stdout == "3\n"
        assert call("add", '"a"', '"b"').stdout == '"ab"\n'
        assert call("count", "3").stdout == "0\n1\n2\n"
        missing = call("nope")
        assert missing.returncode == 1
        assert "no method 'nope'" in missing.stderr
        not_json = call("add", "x", "1")
        assert not_json.returncode == 2
        assert "not JSON" in not_json.stderr
        no_secret = subprocess.run([*cli, "call", address, "add", "1", "2"],
                                   capture_output=True, text=True, timeout=30)
        assert no_secret.returncode == 1
        assert "secret" in no_secret.stderr
        server.send_signal(signal.SIGINT)
        assert server.wait(10) == 0
    finally:
        server.kill()
        server.wait()
        server.stdout.close()
        server.stderr.close()


def bingfa_rpc(*args, cwd=None):
    """``python -m bingfa rpc ARGS``, as a user runs it; its outcome."""
    return subprocess.run([PY, "-m", "bingfa", "rpc", *args], capture_output=True, text=True,
                          timeout=30, cwd=cwd, stdin=subprocess.DEVNULL)


def one_line_error(done, command, *words, status=2):
    """Assert ``done`` failed with ``status`` and one line naming ``words``, nothing else."""
    assert done.returncode == status, (done.returncode, done.stderr)
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr  # no traceback, no usage line
    assert lines[0].startswith(f"bingfa rpc {command}: error: "), lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


@pytest.mark.timeout(120)
def test_bingfa_rpc_errors_are_one_line_that_names_what_failed(tmp_path):
    (tmp_path / "calc.py").write_text(textwrap.dedent("""
        class Calc:
            def add(self, a, b):
                return a + b

        class NeedsArgs:
            def __init__(self, factor):
                self.factor = factor

            def scale(self, x):
                return x * self.factor
    """))
    (tmp_path / "broken.py").write_text("raise RuntimeError('fails at import')\n")
    (tmp_path / "typo.py").write_text("def f(:\n")
    secret_file = tmp_path / "secret"
    secret_file.write_text("s" * 32)

    def serve(*args, status=2, words=()):
        return one_line_error(bingfa_rpc("serve", *args, cwd=tmp_path), "serve", *words,
                              status=status)

    serve("broken:Calc", words=("'broken'", "RuntimeError: fails at import"))
    serve("typo:Calc", words=("'typo'", "SyntaxError"))
    serve("absent:Calc", words=("'absent'", "No module named"))
    serve("calc:Nope", words=("'calc'", "'Nope'"))
    serve("calc:NeedsArgs", words=("calc:NeedsArgs", "without arguments", "factor"))
    serve("calc:Calc", "--serializer", "pickle", words=("--secret-file",))
    serve("calc:Calc", "--secret-file", str(tmp_path / "nope"), words=(str(tmp_path / "nope"),))
    short = tmp_path / "short-secret"
    short.write_text("too short")
    serve("calc:Calc", "--secret-file", str(short), words=(str(short), "at least 16"))
    serve("calc:Calc", "--address", "nonsense", words=("'nonsense'",))
    with socket.create_server(("127.0.0.1", 0)) as taken:
        address = f"tcp://127.0.0.1:{taken.getsockname()[1]}"
        serve("calc:Calc", "--address", address, status=1, words=(address, "in use"))
    missing_dir = f"unix://{tmp_path}/no-such-dir/rpc.sock"
    serve("calc:Calc", "--address", missing_dir, status=1, words=(missing_dir,))

    with socket.create_server(("127.0.0.1", 0)) as closed:
        nobody = f"tcp://127.0.0.1:{closed.getsockname()[1]}"
    one_line_error(bingfa_rpc("call", nobody, "add", "1", "2"), "call", nobody, status=1)
    one_line_error(bingfa_rpc("call", nobody, "add", "x"), "call", "argument 1", "not JSON")
    with rpc.serve({"add": lambda a, b: a + b}, ADDRESS, secret=b"s" * 32) as server:
        line = one_line_error(bingfa_rpc("call", server.address, "add", "1", "2"), "call",
                              server.address, "requires a secret", "--secret-file", status=1)
        assert "secret=" not in line  # the library's hint, not the command line's
        done = bingfa_rpc("call", server.address, "add", "1", "2", "--secret-file",
                          str(secret_file))
        assert (done.returncode, done.stdout) == (0, "3\n"), done.stderr


# -- pools -------------------------------------------------------------------------------


def _where(a, b):
    return a * b, os.getpid()


def _countdown(n):
    yield from range(n, 0, -1)


@pytest.mark.timeout(60)
def test_a_process_pool_runs_the_handlers():
    with bf.Pool(2, mode="process") as pool, \
            rpc.serve({"mul": _where, "countdown": _countdown}, ADDRESS, pool=pool) as server, \
            rpc.connect(server.address) as c:
        results = [c.mul(6, 7) for _ in range(20)]  # never inlined: every call is the pool's
        assert {value for value, _ in results} == {42}
        assert os.getpid() not in {pid for _, pid in results}
        # generators stream from the server's own threads, beside the pool
        assert list(c.countdown(3)) == [3, 2, 1]


def test_an_object_that_cannot_travel_to_a_process_pool_says_so():
    with bf.Pool(1, mode="process") as pool, \
            rpc.serve(Service(), ADDRESS, pool=pool) as server, \
            rpc.connect(server.address) as c, \
            pytest.raises(bf.SerializationError, match="cannot"):
        c.add(1, 2)


# -- regressions found in review ---------------------------------------------------------


def test_one_call_at_a_time_per_connection_still_serves_every_call():
    with rpc.serve({"add": lambda a, b: a + b}, ADDRESS, max_concurrent_calls=1) as server, \
            rpc.connect(server.address, timeout=10) as c:
        assert [c.add(i, 1) for i in range(5)] == [1, 2, 3, 4, 5]


@pytest.mark.timeout(60)
def test_reading_resumes_after_big_requests_finish():
    def size(data):
        time.sleep(0.2)
        return len(data)

    big = b"x" * (9 * 2**20)  # two of these exceed the bytes allowed in flight
    with rpc.serve({"size": size, "add": lambda a, b: a + b}, ADDRESS) as server, \
            rpc.connect(server.address, timeout=20) as c:
        threads = [threading.Thread(target=c.size, args=(big,)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert c.add(1, 2) == 3


def test_calls_run_on_the_thread_that_read_them_and_none_blocks_the_server():
    release = threading.Event()

    def wait_for_release():
        return release.wait(20)  # blocks: it must not stop the server

    @rpc.quick
    def where():
        return threading.current_thread().name

    def plain_where():
        return threading.current_thread().name

    functions = {"where": where, "plain_where": plain_where, "block": wait_for_release,
                 "add": lambda a, b: a + b}
    with rpc.serve(functions, ADDRESS) as server, rpc.connect(server.address, timeout=20) as c:
        # The server's own threads read its connections and run the calls they
        # read, quick or plain: no hop to a pool thread (whose names differ).
        assert c.where().startswith("bingfa-rpc-thread-")
        assert c.plain_where().startswith("bingfa-rpc-thread-")
        blocked = threading.Thread(target=c.block)
        blocked.start()
        with rpc.connect(server.address, timeout=5) as other:
            assert other.add(2, 2) == 4  # the server still answers
        assert c.add(3, 3) == 6  # ... on the blocked call's connection too
        release.set()
        blocked.join()
    with pytest.raises(TypeError):
        rpc.quick(42)


def test_a_stream_longer_than_its_timeout_is_not_cut_off():
    def ticks(n):
        for i in range(n):
            time.sleep(0.05)
            yield i

    with rpc.serve({"ticks": ticks}, ADDRESS) as server, rpc.connect(server.address) as c:
        assert list(c.call("ticks", 12, timeout=0.3)) == list(range(12))


def test_a_timeout_must_be_a_number_of_seconds(server, client):
    for bad in (-1, float("nan"), True, "1"):
        with pytest.raises(ValueError, match="timeout"):
            client.call("add", 1, 2, timeout=bad)
        with pytest.raises(ValueError, match="timeout"):
            rpc.connect(server.address, timeout=bad)
        with pytest.raises(ValueError, match="timeout"):
            asyncio.run(rpc.aconnect(server.address, timeout=bad))
    # inf is no limit; the client's default then does not apply
    with rpc.connect(server.address, timeout=float("inf")) as c:
        assert c.add(1, 2) == 3


def test_a_zero_timeout_has_already_passed(server, client):
    """As in subprocess, bf.run and the pools: 0 is allowed and leaves no time."""
    with pytest.raises(rpc.RPCTimeoutError):
        client.slow(30, timeout=0)
    assert client.add(1, 2) == 3

    async def main():
        async with await rpc.aconnect(server.address) as c:
            with pytest.raises(rpc.RPCTimeoutError):
                await c.call("slow", 30, timeout=0)
            return await c.add(2, 3)

    assert asyncio.run(main()) == 5


def test_leaving_an_async_stream_stops_the_generator(server, service):
    async def main():
        async with await rpc.aconnect(server.address) as c:
            async with await c.count(10**9) as stream:
                async for item in stream:
                    assert item == 0
                    break
            produced = service.produced
            await asyncio.sleep(0.2)  # a generator that kept going would show now
            assert service.produced <= produced + 100
            assert await c.add(1, 1) == 2

    asyncio.run(main())


def test_a_generator_sees_bf_cancelled_when_its_client_gives_up():
    saw_cancel = threading.Event()

    def forever():
        yield 1
        while not bf.cancelled():  # working on the next item when the client leaves
            time.sleep(0.005)
        saw_cancel.set()
        yield 2

    with rpc.serve({"forever": forever}, ADDRESS) as server, rpc.connect(server.address) as c:
        stream = c.forever()
        assert next(stream) == 1
        stream.close()
        assert saw_cancel.wait(10)


class OnlyTheClientKnows:
    def __init__(self, x):
        self.x = x


@pytest.mark.timeout(30)
def test_an_argument_the_server_cannot_decode_fails_only_its_call():
    # A server in another process, which has not registered the client's type.
    proc, address = _server_process(ADDRESS)
    rpc.register(OnlyTheClientKnows, name="tests.only-the-client-knows")
    try:
        with rpc.connect(address) as c:
            with pytest.raises(bf.SerializationError, match="cannot decode"):
                c.add(OnlyTheClientKnows(1), 2)
            assert c.add(1, 2) == 3  # the same connection carries on
    finally:
        from bingfa.rpc import _codec

        entry = _codec._by_name.pop("tests.only-the-client-knows")
        _codec._by_type.pop(entry.cls)
        proc.kill()
        proc.wait()
        proc.stdout.close()


SERVER_WITH_ITS_OWN_TYPE = textwrap.dedent("""
    import dataclasses, sys
    import bingfa.rpc as rpc

    @dataclasses.dataclass
    class OnlyTheServerKnows:
        value: int

    rpc.register(OnlyTheServerKnows, name="tests.only-the-server-knows")

    def make():
        return OnlyTheServerKnows(1)

    def items():
        yield 1
        yield OnlyTheServerKnows(2)
        yield 3

    # No await between the yields: the stream's start, its items and what
    # ends it leave the server in one write, and so reach the client in one
    # read, usually before its call() has returned the stream.
    async def aitems():
        yield 1
        yield 2
        yield OnlyTheServerKnows(3)
        yield 4

    async def afails():
        yield 1
        yield 2
        raise KeyError("after two items")

    server = rpc.serve({"make": make, "items": items, "aitems": aitems, "afails": afails,
                        "add": lambda a, b: a + b}, sys.argv[1])
    print(server.address, flush=True)
    server.serve_forever()
""")


def test_an_answer_the_client_cannot_decode_fails_only_its_call():
    proc, address = _server_process(ADDRESS, SERVER_WITH_ITS_OWN_TYPE)
    try:
        with rpc.connect(address) as c:
            with pytest.raises(bf.SerializationError, match="cannot decode"):
                c.make()
            assert c.add(1, 2) == 3  # the same connection carries on
            stream = c.items()
            assert next(stream) == 1
            with pytest.raises(bf.SerializationError, match="cannot decode"):
                next(stream)
            assert c.add(2, 2) == 4

        async def asynchronously():
            async with await rpc.aconnect(address) as ac:
                with pytest.raises(bf.SerializationError, match="cannot decode"):
                    await ac.make()
                assert await ac.add(1, 2) == 3
                stream = await ac.items()
                assert await stream.__anext__() == 1
                with pytest.raises(bf.SerializationError, match="cannot decode"):
                    await stream.__anext__()
                assert await ac.add(2, 2) == 4

        asyncio.run(asynchronously())
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


async def collect(stream, items):
    """Append what an async stream yields to ``items``, until it ends or raises."""
    async for item in stream:
        items.append(item)


@pytest.mark.timeout(60)
def test_a_stream_hands_out_the_items_before_its_error_however_they_arrive():
    proc, address = _server_process(ADDRESS, SERVER_WITH_ITS_OWN_TYPE)
    try:
        with rpc.connect(address) as c:
            for _ in range(20):
                items = []
                with pytest.raises(bf.SerializationError, match="cannot decode"):
                    items.extend(c.aitems())
                assert items == [1, 2]
                items = []
                with pytest.raises(KeyError, match="after two items"):
                    items.extend(c.afails())
                assert items == [1, 2]
            assert c.add(2, 2) == 4

        async def asynchronously():
            async with await rpc.aconnect(address) as ac:
                for _ in range(20):
                    items = []
                    with pytest.raises(bf.SerializationError, match="cannot decode"):
                        await collect(await ac.aitems(), items)
                    assert items == [1, 2]
                    items = []
                    with pytest.raises(KeyError, match="after two items"):
                        await collect(await ac.afails(), items)
                    assert items == [1, 2]
                assert await ac.add(2, 2) == 4

        asyncio.run(asynchronously())
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


@pytest.mark.timeout(120)
def test_a_thread_reading_a_stream_can_send_a_call_bigger_than_the_socket_takes():
    # The stream fills the socket toward the client and the server, its
    # answers unread, stops reading; the same thread then sends a call far
    # bigger than the socket buffers: it must read while it waits to write.
    def chunks():
        chunk = b"i" * 2**18
        while True:
            yield chunk

    big = b"x" * (32 * 2**20)
    outcome = []
    with rpc.serve({"chunks": chunks, "size": len}, ADDRESS) as server, \
            rpc.connect(server.address) as c:
        def stream_then_call():
            try:
                stream = c.chunks()
                assert next(stream) == b"i" * 2**18
                outcome.append(c.size(big))
                assert next(stream) == b"i" * 2**18  # the stream is still in step
                stream.close()
                outcome.append(c.size(b"small"))
            except BaseException as exc:
                outcome.append(exc)

        caller = threading.Thread(target=stream_then_call)
        caller.start()
        caller.join(30)
        stuck = caller.is_alive()
        c.close()  # a stuck caller fails with ConnectionLostError, and the thread ends
        caller.join(10)
    assert not stuck, "deadlock: the thread sending the big call never finished"
    assert outcome == [len(big), 5]
