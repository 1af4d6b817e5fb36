"""bingfa.integrations.twisted on real reactors: Deferreds to and from futures, defer_to_pool.

A reactor cannot be restarted in one process, so each scenario is a small
script run by a fresh interpreter, once on Twisted's default reactor and once
on its asyncio reactor. The script prints JSON lines; the test reads them.
Tasks that must wait for the test (to be cancelled while they run, or to hold
a pool's only worker) wait at a *gate*: a TCP server on 127.0.0.1 in the
script's reactor, which each waiting task connects to, tells its pid, and
blocks on until the script releases it. Nothing sleeps to synchronise.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("twisted")  # a dev dependency: installed wherever the tests run

pytestmark = pytest.mark.timeout(90)

REACTORS = ["default", "asyncio"]
SCRIPT_TIMEOUT = 60

PRELUDE = '''\
import concurrent.futures
import json
import os
import socket
import sys
import threading
import traceback

if sys.argv[1] == "asyncio":
    from twisted.internet import asyncioreactor
    asyncioreactor.install()

import psutil
from twisted.internet import defer, protocol, reactor, task, threads
from twisted.protocols.basic import LineReceiver

import bingfa as bf
from bingfa.integrations.twisted import defer_to_pool, from_deferred, to_deferred

assert type(reactor).__name__ == {"default": "EPollReactor", "asyncio": "AsyncioSelectorReactor"}[
    sys.argv[1]], type(reactor)


def report(**values):
    print(json.dumps(values), flush=True)


class MyError(Exception):
    pass


def boom(x):
    raise MyError(f"bad {x}")


def formatted(error):
    """The error as Python would print it, its causes (a remote traceback) included."""
    return "".join(traceback.format_exception(error))


def wait_at_gate(port):
    """In a task: tell the gate which process and thread we are, then wait for its go."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(f"{os.getpid()} {threading.get_ident()}\\n".encode())
        s.recv(16)  # b"go", or b"" if the gate closed
    return os.getpid()


class _GateProtocol(LineReceiver):
    delimiter = b"\\n"

    def lineReceived(self, line):
        self.factory.arrived(self, *map(int, line.split()))

    def connectionLost(self, reason=None):
        self.factory.connections.discard(self)


class Gate(protocol.ServerFactory):
    """A TCP server tasks wait at: next_arrival() fires with (pid, thread id) of each."""

    protocol = _GateProtocol

    def __init__(self):
        self.connections = set()
        self.arrivals = []
        self.waiting = []
        self.port = reactor.listenTCP(0, self, interface="127.0.0.1")
        self.number = self.port.getHost().port

    def arrived(self, proto, pid, tid):
        self.connections.add(proto)
        if self.waiting:
            self.waiting.pop(0).callback((pid, tid))
        else:
            self.arrivals.append((pid, tid))

    def next_arrival(self):
        if self.arrivals:
            return defer.succeed(self.arrivals.pop(0))
        d = defer.Deferred()
        self.waiting.append(d)
        return d

    def release(self):
        for proto in list(self.connections):
            proto.transport.write(b"go\\n")

    def close(self):
        for proto in list(self.connections):
            proto.transport.loseConnection()
        return self.port.stopListening()


def outcome(d):
    """A Deferred for ("ok", value) or ("error", type name) of d, which never fails."""
    return d.addCallbacks(lambda v: ("ok", v), lambda f: ("error", type(f.value).__name__))


REACTOR_THREAD = threading.get_ident()  # react() runs the reactor on this thread
'''


def run_scenario(tmp_path: Path, reactor: str, body: str) -> dict[str, Any]:
    """Run the prelude and ``body`` in a fresh interpreter on ``reactor``; what it reported."""
    script = tmp_path / f"scenario_{reactor}.py"
    script.write_text(PRELUDE + textwrap.dedent(body))
    try:
        proc = subprocess.run([sys.executable, "-X", "faulthandler", str(script), reactor],
                              capture_output=True, text=True, timeout=SCRIPT_TIMEOUT,
                              cwd=tmp_path)
    except subprocess.TimeoutExpired as e:  # killed: show how far it got
        pytest.fail(f"the scenario hung; it printed:\n{e.stdout}\n{e.stderr}")
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    found: dict[str, Any] = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            found.update(json.loads(line))
    assert found.get("finished") is True, f"{proc.stdout}\n{proc.stderr}"
    return found


@pytest.mark.parametrize("reactor", REACTORS)
def test_results_and_errors_keep_their_type(tmp_path: Path, reactor: str) -> None:
    got = run_scenario(tmp_path, reactor, '''
        thread_pool = bf.Pool(2, mode="thread")
        process_pool = bf.Pool(2, mode="process")
        # Asked for before the reactor runs: it fires once the reactor does.
        early = to_deferred(thread_pool.submit(pow, 2, 5))

        @defer.inlineCallbacks
        def main(reactor):
            fired_on = []
            report(early=(yield early))
            for mode, pool in (("thread", thread_pool), ("process", process_pool)):
                d = defer_to_pool(pool, pow, 2, 10)
                d.addCallback(lambda v: fired_on.append(threading.get_ident()) or v)
                report(**{f"{mode}_result": (yield d)})
                report(**{f"{mode}_kwargs": (yield defer_to_pool(pool, int, "ff", base=16))})
                failures = []
                d = defer_to_pool(pool, boom, 7)
                d.addErrback(lambda f: fired_on.append(threading.get_ident()) or f)
                d.addErrback(failures.append)
                yield d
                error = failures[0].value
                report(**{f"{mode}_error": [type(error).__name__, str(error),
                                             isinstance(error, MyError),
                                             "in boom" in formatted(error)]})
                try:
                    yield defer_to_pool(pool, boom, 8)
                except MyError as e:  # inlineCallbacks re-raises it with its own type
                    report(**{f"{mode}_raised": str(e)})
                # A pool future that is pending (followed twice), then one finished already.
                future = pool.submit(sum, [1, 2, 3])
                twice = yield defer.gatherResults([to_deferred(future), to_deferred(future)])
                report(**{f"{mode}_pending": twice})
                future.result()
                d = to_deferred(future)
                report(**{f"{mode}_finished_fired_at_once": d.called,
                          f"{mode}_finished": (yield d)})
            report(on_reactor_thread=fired_on == [REACTOR_THREAD] * 4)
            # Plain concurrent.futures futures: finished with an error, cancelled, pending.
            failed = concurrent.futures.Future()
            try:
                raise MyError("early")
            except MyError as e:
                failed.set_exception(e)
            failures = []
            yield to_deferred(failed).addErrback(failures.append)
            report(plain_failed=[type(failures[0].value).__name__,
                                 "raise MyError" in formatted(failures[0].value)])
            cancelled = concurrent.futures.Future()
            cancelled.cancel()
            report(plain_cancelled=(yield outcome(to_deferred(cancelled))))
            with concurrent.futures.ThreadPoolExecutor(1) as executor:
                report(executor=(yield to_deferred(executor.submit(divmod, 7, 2))))
            thread_pool.shutdown()
            process_pool.shutdown()
            report(finished=True)

        task.react(main)
    ''')
    assert got["early"] == 32
    for mode in ("thread", "process"):
        assert got[f"{mode}_result"] == 1024
        assert got[f"{mode}_kwargs"] == 255
        assert got[f"{mode}_error"] == ["MyError", "bad 7", True, True]
        assert got[f"{mode}_raised"] == "bad 8"
        assert got[f"{mode}_pending"] == [6, 6]
        assert got[f"{mode}_finished_fired_at_once"] is True
        assert got[f"{mode}_finished"] == 6
    assert got["on_reactor_thread"] is True
    assert got["plain_failed"] == ["MyError", True]
    assert got["plain_cancelled"] == ["error", "CancelledError"]
    assert got["executor"] == [3, 1]


@pytest.mark.parametrize("reactor", REACTORS)
def test_cancelling_the_deferred_of_a_queued_task_drops_it(tmp_path: Path, reactor: str) -> None:
    got = run_scenario(tmp_path, reactor, '''
        @defer.inlineCallbacks
        def main(reactor):
            gate = Gate()
            for mode in ("thread", "process"):
                with bf.Pool(1, mode=mode) as pool:
                    # The only worker waits at the gate; what comes next is queued.
                    holder = defer_to_pool(pool, wait_at_gate, gate.number)
                    yield gate.next_arrival()
                    queued = defer_to_pool(pool, boom, "queued")
                    future = pool.submit(boom, "queued future")
                    also_queued = to_deferred(future)
                    queued.cancel()
                    also_queued.cancel()
                    report(**{f"{mode}_queued": (yield outcome(queued)),
                              f"{mode}_also_queued": (yield outcome(also_queued)),
                              f"{mode}_future_cancelled": future.cancelled()})
                    gate.release()
                    yield holder
                    # FIFO: once this one ran, the cancelled ones would have run before it.
                    report(**{f"{mode}_after": (yield defer_to_pool(pool, pow, 3, 2))})
            yield gate.close()
            report(finished=True)

        task.react(main)
    ''')
    for mode in ("thread", "process"):
        assert got[f"{mode}_queued"] == ["error", "CancelledError"]
        assert got[f"{mode}_also_queued"] == ["error", "CancelledError"]
        assert got[f"{mode}_future_cancelled"] is True
        assert got[f"{mode}_after"] == 9


@pytest.mark.parametrize("reactor", REACTORS)
def test_cancelling_a_running_process_task_terminates_its_worker(tmp_path: Path,
                                                                 reactor: str) -> None:
    got = run_scenario(tmp_path, reactor, '''
        @defer.inlineCallbacks
        def main(reactor):
            gate = Gate()
            with bf.Pool(1, mode="process") as pool:
                d = defer_to_pool(pool, wait_at_gate, gate.number)
                pid, _ = yield gate.next_arrival()
                report(worker_is_child=pid != os.getpid())
                worker = psutil.Process(pid)  # now: once killed, it may be reaped at once
                d.cancel()
                report(cancelled=(yield outcome(d)))
                # The worker is killed by the pool's manager thread, not by this one.
                gone, alive = yield threads.deferToThread(psutil.wait_procs, [worker], timeout=30)
                report(worker_died=not alive)
                report(replaced=(yield defer_to_pool(pool, os.getpid)) not in (pid, os.getpid()))
                # A running task's future through to_deferred: the Deferred fails at once,
                # and the task runs on (to_deferred holds no means to stop it).
                future = pool.submit(wait_at_gate, gate.number)
                d = to_deferred(future)
                still, _ = yield gate.next_arrival()
                d.cancel()
                report(plain_cancelled=(yield outcome(d)), still_running=not future.done())
                gate.release()
                report(ran_on=(yield to_deferred(future)) == still)
            yield gate.close()
            report(finished=True)

        task.react(main)
    ''')
    assert got["worker_is_child"] is True
    assert got["cancelled"] == ["error", "CancelledError"]
    assert got["worker_died"] is True
    assert got["replaced"] is True
    assert got["plain_cancelled"] == ["error", "CancelledError"]
    assert got["still_running"] is True
    assert got["ran_on"] is True


@pytest.mark.parametrize("reactor", REACTORS)
def test_cancelling_a_running_thread_task_raises_its_cancelled_flag(tmp_path: Path,
                                                                     reactor: str) -> None:
    got = run_scenario(tmp_path, reactor, '''
        @defer.inlineCallbacks
        def main(reactor):
            started, saw = defer.Deferred(), defer.Deferred()
            poll = threading.Event()  # never set: its wait is the polling interval

            def polite():
                reactor.callFromThread(started.callback, bf.cancelled())
                while not bf.cancelled():
                    poll.wait(0.005)
                reactor.callFromThread(saw.callback, bf.cancelled())
                return "finished anyway"

            with bf.Pool(2, mode="thread") as pool:
                d = defer_to_pool(pool, polite)
                report(cancelled_at_start=(yield started))
                d.cancel()
                report(deferred=(yield outcome(d)))
                report(task_saw_cancelled=(yield saw))
                report(pool_still_works=(yield defer_to_pool(pool, pow, 2, 3)))
            report(finished=True)

        task.react(main)
    ''')
    assert got["cancelled_at_start"] is False
    assert got["deferred"] == ["error", "CancelledError"]
    assert got["task_saw_cancelled"] is True
    assert got["pool_still_works"] == 8


@pytest.mark.parametrize("reactor", REACTORS)
def test_from_deferred(tmp_path: Path, reactor: str) -> None:
    got = run_scenario(tmp_path, reactor, '''
        import asyncio

        async def awaiting(future):
            return await future

        async def cancel_while_awaiting(future):
            waiter = asyncio.ensure_future(awaiting(future))
            await asyncio.sleep(0)  # one turn of the loop: the waiter is now awaiting
            waiter.cancel()
            try:
                await waiter
            except asyncio.CancelledError:
                return "cancelled"

        def cancellable():
            """A Deferred whose canceller reports the thread it ran on."""
            ran = defer.Deferred()
            d = defer.Deferred(lambda _: ran.callback(threading.get_ident() == REACTOR_THREAD))
            return d, ran

        @defer.inlineCallbacks
        def main(reactor):
            d = defer.Deferred()
            future = from_deferred(d)
            report(pending=not future.done(), is_bingfa=isinstance(future, bf.Future))
            d.callback(5)
            report(value=future.result(timeout=0))
            report(fired_already=from_deferred(defer.succeed("x")).result(timeout=0))
            d = defer.Deferred()
            try:
                raise MyError("from twisted")
            except MyError:
                d.errback()
            error = from_deferred(d).exception(timeout=0)
            report(error=[type(error).__name__, "raise MyError" in formatted(error)])
            d = defer.Deferred()
            future = from_deferred(d)
            d.cancel()
            report(cancelled_by_twisted=future.cancelled())

            # Waited for from another thread: concurrent.futures.wait and result().
            future = from_deferred(task.deferLater(reactor, 0, lambda: "later"))
            done, _ = yield threads.deferToThread(concurrent.futures.wait, [future], 30)
            report(waited=future in done and future.result() == "later")

            # Awaited from an asyncio loop in another thread.
            d = defer.Deferred()
            future = from_deferred(d)
            other_loop = threads.deferToThread(asyncio.run, awaiting(future))
            reactor.callLater(0, d.callback, "to asyncio")
            report(other_loop=(yield other_loop))

            if sys.argv[1] == "asyncio":
                # Awaited from the reactor's own asyncio loop.
                d = task.deferLater(reactor, 0, lambda: "same loop")
                report(same_loop=(yield defer.Deferred.fromFuture(
                    asyncio.ensure_future(awaiting(from_deferred(d))))))
                d, ran = cancellable()
                result = yield defer.Deferred.fromFuture(
                    asyncio.ensure_future(cancel_while_awaiting(from_deferred(d))))
                report(same_loop_cancel=[result, (yield ran), d.called])

            # Cancelling the future cancels the Deferred, on the reactor thread.
            d, ran = cancellable()
            future = from_deferred(d)
            report(cancel_here=[future.cancel(), (yield ran), d.called])
            d, ran = cancellable()
            future = from_deferred(d)
            cancelled = yield threads.deferToThread(future.cancel)
            report(cancel_from_thread=[cancelled, (yield ran), d.called])
            d, ran = cancellable()
            future = from_deferred(d)
            result = yield threads.deferToThread(asyncio.run, cancel_while_awaiting(future))
            report(cancel_from_asyncio=[result, (yield ran), future.cancelled()])
            report(finished=True)

        task.react(main)
    ''')
    assert got["pending"] is True
    assert got["is_bingfa"] is True
    assert got["value"] == 5
    assert got["fired_already"] == "x"
    assert got["error"] == ["MyError", True]
    assert got["cancelled_by_twisted"] is True
    assert got["waited"] is True
    assert got["other_loop"] == "to asyncio"
    if reactor == "asyncio":
        assert got["same_loop"] == "same loop"
        assert got["same_loop_cancel"] == ["cancelled", True, True]
    assert got["cancel_here"] == [True, True, True]
    assert got["cancel_from_thread"] == [True, True, True]
    assert got["cancel_from_asyncio"] == ["cancelled", True, True]


@pytest.mark.parametrize("reactor", REACTORS)
def test_tcp_echo_server_computes_replies_on_a_pool(tmp_path: Path, reactor: str) -> None:
    got = run_scenario(tmp_path, reactor, '''
        def reply_for(text):
            if text == "fail":
                raise MyError(text)
            return f"{text.upper()} {os.getpid()}"

        class Compute(LineReceiver):
            def lineReceived(self, line):
                d = defer_to_pool(self.factory.pool, reply_for, line.decode())
                d.addCallbacks(lambda reply: reply,
                               lambda f: f"ERROR {type(f.value).__name__}")
                d.addCallback(lambda reply: self.sendLine(reply.encode()))

        class Client(LineReceiver):
            def __init__(self, lines):
                self.lines, self.replies, self.done = lines, [], defer.Deferred()

            def connectionMade(self):
                for line in self.lines:
                    self.sendLine(line.encode())

            def lineReceived(self, line):
                self.replies.append(line.decode())
                if len(self.replies) == len(self.lines):
                    self.transport.loseConnection()
                    self.done.callback(self.replies)

        @defer.inlineCallbacks
        def main(reactor):
            for mode in ("thread", "process"):
                with bf.Pool(2, mode=mode) as pool:
                    factory = protocol.ServerFactory.forProtocol(Compute)
                    factory.pool = pool
                    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
                    lines = [f"word{i}" for i in range(20)] + ["fail"]
                    client = Client(lines)
                    yield protocol.ClientCreator(reactor, lambda: client).connectTCP(
                        "127.0.0.1", port.getHost().port)
                    replies = yield client.done
                    yield port.stopListening()
                    words = sorted(r.split()[0] for r in replies if not r.startswith("ERROR"))
                    pids = {int(r.split()[1]) for r in replies if not r.startswith("ERROR")}
                    in_workers = (os.getpid() not in pids) == (mode == "process")
                    report(**{f"{mode}_words": words == sorted(w.upper() for w in lines[:-1]),
                              f"{mode}_errors": [r for r in replies if r.startswith("ERROR")],
                              f"{mode}_in_workers": in_workers})
            report(finished=True)

        task.react(main)
    ''')
    for mode in ("thread", "process"):
        assert got[f"{mode}_words"] is True
        assert got[f"{mode}_errors"] == ["ERROR MyError"]
        assert got[f"{mode}_in_workers"] is True


def test_importing_installs_no_reactor(tmp_path: Path) -> None:
    script = tmp_path / "late_install.py"
    script.write_text(textwrap.dedent('''\
        import sys

        import bingfa as bf
        from bingfa.integrations.twisted import defer_to_pool

        installed_early = "twisted.internet.reactor" in sys.modules
        from twisted.internet import asyncioreactor
        asyncioreactor.install()  # fails if a reactor were installed already
        from twisted.internet import task

        def main(reactor):
            pool = bf.Pool(1)
            d = defer_to_pool(pool, pow, 2, 4)
            d.addCallback(lambda v: print(installed_early, type(reactor).__name__, v))
            return d.addBoth(lambda r: pool.shutdown() or r)

        task.react(main)
    '''))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=SCRIPT_TIMEOUT, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "AsyncioSelectorReactor", "16"]


def test_without_twisted_the_import_names_the_extra(tmp_path: Path) -> None:
    script = tmp_path / "no_twisted.py"
    script.write_text(textwrap.dedent('''\
        import json
        import sys

        sys.modules["twisted"] = None  # as if Twisted were not installed

        import bingfa as bf
        import bingfa.integrations  # the package itself needs nothing

        try:
            import bingfa.integrations.twisted
        except bf.BackendUnavailableError as e:
            print(json.dumps({"extra": e.extra, "message": str(e),
                              "lookup": isinstance(e, LookupError),
                              "cause": type(e.__cause__).__name__}))
    '''))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=SCRIPT_TIMEOUT, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["extra"] == "twisted"
    assert "pip install 'bingfa[twisted]'" in got["message"]
    assert got["lookup"] is True
    assert got["cause"] == "ModuleNotFoundError"
