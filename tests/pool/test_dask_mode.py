"""mode="dask" on real clusters: one the pool owns, a joined ``dask scheduler``, a given client.

The shared contract suite runs on dask too (tests/contracts/test_dask_contract.py);
these are what only a cluster has: owning or joining it, sharing objects on it,
losing a worker mid-map, and the best-effort task timeout.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from conftest import InThread, child_processes, wait_until
from dask_cluster import cli_cluster

import bingfa as bf

distributed = pytest.importorskip("distributed")

pytestmark = pytest.mark.timeout(60)


class Boom(Exception):
    """A task's own exception type."""


def square(x):
    return x * x


def raise_boom(message):
    raise Boom(message)


def kill_own_worker_once(marker, x):
    """Kills the worker running it on the first attempt; returns ``x`` on the next."""
    path = Path(marker)
    if not path.exists():
        path.write_text("killed")
        os.kill(os.getpid(), signal.SIGKILL)
    return x


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A scheduler and two single-threaded workers; a worker that dies fails its task at once."""
    folder = tmp_path_factory.mktemp("dask")
    env = {"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"}
    with cli_cluster(folder, workers=2, threads=1, env=env) as c:
        yield c


def semaphores_of(pids):
    """The named semaphores (in /dev/shm) that processes ``pids`` have open."""
    names = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/maps") as maps:
                names.update(line.split("/dev/shm/", 1)[1].strip()
                             for line in maps if "/dev/shm/sem." in line)
        except OSError:  # gone meanwhile
            continue
    return names


def test_a_pool_owns_a_local_cluster_and_closes_it():
    before = set(child_processes())
    with bf.Pool(mode="dask") as pool:
        assert pool.map(square, range(50)) == [i * i for i in range(50)]
        workers = set(child_processes()) - before
        assert workers  # its worker processes are children of this process
        # The nannies' queues: closed with them, not left in /dev/shm.
        semaphores = semaphores_of(workers)
        assert semaphores
        info = pool._engine._client.scheduler_info()
        assert info["address"].startswith("tcp://127.0.0.1:")
        assert len(info["workers"]) >= 1
        assert all(w["nthreads"] == 1 for w in info["workers"].values())
    assert wait_until(lambda: not (set(child_processes()) - before), timeout=10)
    assert not [name for name in semaphores if os.path.exists(f"/dev/shm/{name}")]


@pytest.mark.timeout(90)
def test_a_cluster_that_will_not_stop_in_time_leaves_no_semaphores(tmp_path):
    # The tests' own clusters (tests/dask_cluster.py): nannies that ignore
    # SIGTERM are killed after 15 s, but their resource trackers are not, and
    # unlink the queues' semaphores once the nannies are gone (killed with
    # them, they left 12 in /dev/shm).
    with cli_cluster(tmp_path, workers=2, threads=1) as c:
        semaphores = semaphores_of([*c.workers, *c.worker_pids()])
        assert semaphores
        for nanny in c.workers:
            os.kill(nanny, signal.SIGSTOP)  # frozen: SIGTERM waits, SIGKILL does not
    assert not [name for name in semaphores if os.path.exists(f"/dev/shm/{name}")]


def test_joining_a_scheduler_never_shuts_it_down(cluster):
    with bf.Pool(2, mode="dask", address=cluster.address) as pool:
        assert pool.map(square, range(100)) == [i * i for i in range(100)]
        assert pool.submit(square, 7).result(timeout=30) == 49
    assert cluster.scheduler_alive()
    with bf.Pool(2, mode="dask", address=cluster.address) as pool:  # joined again
        assert pool.submit(square, 3).result(timeout=30) == 9
    assert cluster.scheduler_alive()


def test_a_given_client_is_not_closed(cluster):
    with distributed.Client(cluster.address, set_as_default=False) as client:
        with bf.Pool(2, mode="dask", client=client) as pool:
            assert sorted(pool.imap_unordered(square, range(20))) == [i * i for i in range(20)]
        assert client.status == "running"
        assert client.submit(square, 5).result() == 25


def test_errors_keep_their_type_and_the_remote_traceback(cluster):
    with bf.Pool(2, mode="dask", address=cluster.address) as pool:
        with pytest.raises(Boom, match="from the cluster") as info:
            pool.submit(raise_boom, "from the cluster").result(timeout=30)
        cause = info.value.__cause__
        assert isinstance(cause, bf.RemoteTraceback)
        assert "raise_boom" in cause.text
        with pytest.raises(ZeroDivisionError):
            pool.map(lambda x: 1 // (x - 3), range(10))
        results = list(pool.imap(lambda x: 1 // (x - 3), range(5), chunksize=2).__iter__()
                       .__class__.__mro__)  # imap objects are iterators
        assert results


def test_lambdas_and_closures_travel(cluster):
    k = 7

    def add_k(x):
        return x + k

    with bf.Pool(2, mode="dask", address=cluster.address) as pool:
        assert pool.map(lambda x: x * 3, range(5)) == [0, 3, 6, 9, 12]
        assert pool.map(add_k, range(3)) == [7, 8, 9]
        assert pool.starmap(lambda a, b: a - b, [(5, 1), (9, 4)]) == [4, 5]
        assert pool.apply_async(lambda: "closure ok").get(timeout=30) == "closure ok"


def test_share_puts_an_object_on_the_cluster_once(cluster):
    table = {i: str(i) * 3 for i in range(1000)}
    with bf.Pool(2, mode="dask", address=cluster.address) as pool:
        handle = pool.share(table)
        assert "Dask" in repr(handle)
        assert pool.submit(len, handle).result(timeout=30) == 1000
        assert pool.map(lambda i, t: t[i], range(5), [handle] * 5) == [
            "000", "111", "222", "333", "444"]
        # nested inside other arguments, and by keyword
        assert pool.submit(lambda d, *, t: t[d["i"]], {"i": 9}, t=handle).result() == "999"
        assert pool.starmap(lambda pair: pair[1][pair[0]], [((1, handle),)]) == ["111"]
        # The table travels to the cluster once, as the scattered future the
        # handle names; a task gets it from its worker, not from the pool.
        # (How many copies a worker keeps is Dask's: it may fetch the data
        # again after moving a task, so that is not asserted here.)
        held = pool._engine._client.has_what()  # worker -> the keys it holds
        assert any(handle.key in keys for keys in held.values())


def test_auto_batching_makes_large_batches_of_tiny_tasks(cluster):
    with bf.Pool(4, mode="dask", address=cluster.address) as pool:
        engine = pool._engine
        first = next(engine._names)
        assert pool.map(square, range(10_000)) == [i * i for i in range(10_000)]
        batches = next(engine._names) - first - 1
    # 10,000 tasks of a microsecond: a few dozen batches, not thousands of Dask tasks.
    assert batches <= 100, batches


def test_workers_bounds_the_batches_in_flight(cluster, gate):
    from conftest import wait_at_gate

    with bf.Pool(1, mode="dask", address=cluster.address) as pool:
        first = pool.submit(wait_at_gate, gate.path)
        queued = [pool.submit(square, i) for i in range(3)]
        assert wait_until(first.running, timeout=20)
        # one batch in flight: the others wait in the pool, where they can be cancelled
        assert [f.cancel() for f in queued] == [True, True, True]
        gate.release()
        assert first.result(timeout=30) is True


def poll_until_cancelled(marker):
    """Runs until bingfa.cancelled() turns true on the worker, then leaves a marker."""
    while not bf.cancelled():
        threading.Event().wait(0.01)
    Path(marker).write_text("saw the cancel")
    return "stopped"


def test_task_timeout_is_best_effort(cluster, tmp_path):
    marker = tmp_path / "cancelled"
    with bf.Pool(1, mode="dask", address=cluster.address, task_timeout=0.5) as pool:
        with pytest.raises(bf.TaskTimeoutError, match="cannot stop a running task") as info:
            pool.submit(poll_until_cancelled, str(marker)).result(timeout=30)
        assert info.value.timeout == 0.5
        # Dask cannot kill the task, but the task can see it was given up on
        assert wait_until(marker.exists, timeout=20)
        assert pool.map(square, range(5)) == [0, 1, 4, 9, 16]


def test_a_task_that_kills_its_worker_fails_with_worker_crashed(cluster, tmp_path):
    with bf.Pool(2, mode="dask", address=cluster.address) as pool:
        with pytest.raises(bf.WorkerCrashedError, match="worker died") as info:
            pool.submit(kill_own_worker_once, str(tmp_path / "once"), 1).result(timeout=40)
        assert info.value.task
        assert pool.submit(square, 4).result(timeout=40) == 16
    with bf.Pool(2, mode="dask", address=cluster.address, retries=1) as pool:
        assert pool.submit(kill_own_worker_once, str(tmp_path / "twice"), 2).result(
            timeout=40) == 2


def slow_square(x):
    threading.Event().wait(0.05)
    return x * x


def test_a_worker_killed_mid_map_never_hangs(cluster):
    """Its tasks fail with WorkerCrashedError, and retries= runs them again."""
    assert wait_until(lambda: len(cluster.worker_pids()) == 2, timeout=30)
    victim = cluster.worker_pids()[0]
    with bf.Pool(4, mode="dask", address=cluster.address, retries=3) as pool:
        it = pool.imap(slow_square, range(200), chunksize=1)
        got = [next(it) for _ in range(10)]
        os.kill(victim, signal.SIGKILL)
        run = InThread(lambda: got + list(it))
        assert run.finished(50), "the map hung after a worker was killed"
        assert run.result() == [i * i for i in range(200)]
    # without retries: only the lost tasks fail, the map's other results arrive
    assert wait_until(lambda: len(cluster.worker_pids()) == 2, timeout=30)
    victim = cluster.worker_pids()[1]
    with bf.Pool(4, mode="dask", address=cluster.address) as pool:
        it = pool.imap_unordered(slow_square, range(100), chunksize=1)
        outcomes = [next(it) for _ in range(5)]
        os.kill(victim, signal.SIGKILL)

        def rest():
            while True:
                try:
                    outcomes.append(next(it))
                except StopIteration:
                    return outcomes
                except bf.WorkerCrashedError as exc:
                    outcomes.append(exc)

        run = InThread(rest)
        assert run.finished(50), "the map hung after a worker was killed"
        done = run.result()
    crashed = [o for o in done if isinstance(o, bf.WorkerCrashedError)]
    assert len(done) == 100
    assert len(crashed) <= 4  # at most the batches in flight on the lost worker


def test_without_distributed_the_error_names_the_extra():
    script = textwrap.dedent("""
        import sys
        sys.modules["distributed"] = None
        import bingfa as bf
        try:
            bf.Pool(mode="dask")
        except bf.BackendUnavailableError as exc:
            assert isinstance(exc, LookupError)
            print(exc.extra, "|", exc)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    extra, message = out.stdout.strip().split(" | ")
    assert extra == "dask"
    assert "pip install 'bingfa[dask]'" in message


def test_work_pending_when_the_interpreter_exits_still_runs(cluster, tmp_path):
    script = tmp_path / "pending.py"
    script.write_text(textwrap.dedent(f'''\
        import time
        from pathlib import Path
        import bingfa as bf

        pool = bf.Pool(2, mode="dask", address={cluster.address!r})   # never closed

        def work(i):
            time.sleep(0.01)
            Path({str(tmp_path)!r}, f"done-{{i}}").touch()

        for i in range(10):
            pool.submit(work, i)
    '''))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=50, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.glob("done-*")) == sorted(
        f"done-{i}" for i in range(10))
    assert cluster.scheduler_alive()
