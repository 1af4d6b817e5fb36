"""mode="ray" on real Ray: a local Ray the pool owns, a cluster it joins, a node that dies.

Ray takes seconds to start, so one ``ray start --head`` serves the module's
tests that join a cluster (``address=``); the pool's own local Ray, and a
cluster that loses a node, are started and stopped inside their tests.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from conftest import pid_alive, wait_until
from ray_cluster import RayHead, leak_check_passes_over_connections_to  # before ray

pytest.importorskip("ray")  # the ray extra: installed wherever the tests run

import bingfa as bf
from bingfa._pool._engines._ray import LEAST_WORK_PER_BATCH, RayEngine
from bingfa._pool._spread import likely_error

pytestmark = pytest.mark.timeout(120)


class Boom(Exception):
    """A task's own exception type."""


def explode(x):
    if x == 3:
        raise Boom(f"bad item {x}")
    return x * x


def pid_then_block(folder):
    Path(folder, f"pid-{os.getpid()}").touch()
    threading.Event().wait(60)  # only the pool's timeout ends it
    return "woke up"


def kill_own_worker_once(x, folder):
    """Item 2 kills the Ray worker running it, the first time only."""
    marker = Path(folder, f"killed-{x}")
    if x == 2 and not marker.exists():
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return x


@pytest.fixture(autouse=True)
def _no_ray_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # a test sets it where it means it


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayHead]:
    """One ``ray start --head`` for the module's tests that join a cluster."""
    cluster = RayHead(tmp_path_factory.mktemp("ray"))
    try:
        # The first connection of a process makes what Ray keeps for the life of
        # the process (its event loops' epoll and eventfds, its log file): made
        # here, before the leak check's first look, as conftest does for uvloop.
        import ray

        ray.init(address=cluster.address, logging_level="WARNING")
        ray.shutdown()
        with leak_check_passes_over_connections_to(cluster):
            yield cluster
    finally:
        cluster.stop()
    assert not cluster.processes()


# A pool's own local Ray runs in a script of its own: Ray keeps a few of its
# process-wide resources (an epoll, a log file) after ray.shutdown(), which the
# leak check of this process would count. The script checks the rest itself.
LOCAL_RAY_SCRIPT = """
import os, sys, threading
from pathlib import Path

import psutil
import ray

import bingfa as bf

def explode(x):
    if x == 3:
        raise ValueError(f"bad item {x}")
    return x

k = 10
assert not ray.is_initialized()
first = bf.Pool(2, mode="ray")
temp_dir = Path(first._engine._session.temp_dir)
assert temp_dir.is_dir()
tree = psutil.Process().children(recursive=True)
assert tree, "Ray's processes should be children of this one"
print(" ".join(str(p.pid) for p in tree), flush=True)
with bf.Pool(2, mode="ray") as second:  # shares the first pool's Ray
    assert second.map(lambda x: x + k, range(5)) == [10, 11, 12, 13, 14]
    try:
        second.map(explode, range(6))
    except ValueError as exc:
        assert isinstance(exc.__cause__, bf.RemoteTraceback), exc.__cause__
        assert "explode" in exc.__cause__.text
    else:
        raise AssertionError("no error")
assert ray.is_initialized()  # the first pool still uses it
assert first.submit(pow, 3, 2).result(timeout=60) == 9
first.shutdown()
assert not ray.is_initialized()
assert not temp_dir.exists(), "the pool's Ray directory was left behind"
assert not [t.name for t in threading.enumerate() if t is not threading.main_thread()]
print("ok", flush=True)
"""


def test_a_pool_starts_and_stops_its_own_local_ray(tmp_path):
    script = tmp_path / "local_ray.py"
    script.write_text(LOCAL_RAY_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=100)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    pids, ok = out.split("\n")[:2]
    assert ok == "ok"
    # every process the pool's Ray started is gone
    assert wait_until(lambda: not any(pid_alive(int(p)) for p in pids.split()), timeout=15)


def test_joining_a_cluster_leaves_it_running(head):
    import ray

    with bf.Pool(4, mode="ray", address=head.address) as pool:
        assert pool.map(abs, range(-50, 0)) == list(range(50, 0, -1))
        assert pool.submit(explode, 2).result(timeout=60) == 4
    assert not ray.is_initialized()  # disconnected ...
    assert head.processes()  # ... but the cluster runs on
    with bf.Pool(2, mode="ray", address=head.address) as pool:
        assert pool.submit(abs, -1).result(timeout=60) == 1


def test_ray_address_in_the_environment_means_join(head, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", head.address)
    with bf.Pool(2, mode="ray") as pool:
        assert pool._engine._session.temp_dir is None  # joined, not started
        assert pool.map(abs, [-1, -2]) == [1, 2]
    assert head.processes()


def test_errors_keep_their_type_and_the_remote_traceback(head):
    with bf.Pool(2, mode="ray", address=head.address) as pool:
        with pytest.raises(Boom, match="bad item 3") as info:
            pool.submit(explode, 3).result(timeout=60)
        cause = info.value.__cause__
        assert isinstance(cause, bf.RemoteTraceback)
        assert "explode" in cause.text
        assert "bad item 3" in cause.text
        it = pool.imap(explode, range(6), chunksize=2)
        got = []
        for _ in range(6):
            try:
                got.append(next(it))
            except Boom as exc:
                got.append(str(exc))
        assert got == [0, 1, 4, "bad item 3", 16, 25]


def test_lambdas_closures_and_local_classes(head):
    class Point:
        def __init__(self, x):
            self.x = x

    factor = 3
    with bf.Pool(2, mode="ray", address=head.address) as pool:
        assert pool.map(lambda x: x * factor, range(4)) == [0, 3, 6, 9]
        assert pool.submit(lambda p: p.x, Point(7)).result(timeout=60) == 7


def test_task_timeout_kills_the_worker_process(head, tmp_path):
    with bf.Pool(2, mode="ray", address=head.address, task_timeout=1.0) as pool:
        fut = pool.submit(pid_then_block, str(tmp_path))
        with pytest.raises(bf.TaskTimeoutError, match="killed") as info:
            fut.result(timeout=60)
        assert info.value.timeout == 1.0
        (marker,) = tmp_path.glob("pid-*")
        pid = int(marker.name.split("-")[1])
        assert wait_until(lambda: not pid_alive(pid), timeout=15)
        assert pool.map(abs, [-1, -2, -3]) == [1, 2, 3]  # the pool carries on


def test_a_worker_killed_mid_map_fails_only_its_task_or_is_retried(head, tmp_path):
    with bf.Pool(2, mode="ray", address=head.address) as pool:
        outcomes = []
        for x in range(5):
            try:
                outcomes.append(pool.submit(kill_own_worker_once, x, str(tmp_path)).result(60))
            except bf.WorkerCrashedError as exc:
                outcomes.append(exc)
        assert isinstance(outcomes.pop(2), bf.WorkerCrashedError)
        assert outcomes == [0, 1, 3, 4]
    (tmp_path / "killed-2").unlink()
    with bf.Pool(2, mode="ray", address=head.address, retries=1) as pool:
        assert pool.map(kill_own_worker_once, range(6), [str(tmp_path)] * 6, chunksize=1) == [
            0, 1, 2, 3, 4, 5]
    (tmp_path / "killed-2").unlink()
    with bf.Pool(2, mode="ray", address=head.address) as pool:
        # in a batch of several, the others run again (uncharged), alone
        assert pool.map(kill_own_worker_once, range(6), [str(tmp_path)] * 6, chunksize=6) == [
            0, 1, 2, 3, 4, 5]


def test_share_puts_an_object_once_and_tasks_receive_the_object(head):
    table = {i: str(i) * 3 for i in range(1000)}
    with bf.Pool(2, mode="ray", address=head.address) as pool:
        handle = pool.share(table)
        assert type(handle).__name__ == "ObjectRef"
        assert pool.map(lambda key, t: t[key], range(5), [handle] * 5) == [
            "000", "111", "222", "333", "444"]
        assert pool.submit(lambda t, *, key: t[key], handle, key=7).result(timeout=60) == "777"
        assert pool.starmap(lambda t, key: len(t) + key, [(handle, 1), (handle, 2)]) == [
            1001, 1002]
        assert pool.submit(len, handle).result(timeout=60) == 1000


@pytest.fixture
def launched(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the batches Ray pools hand to Ray, in order, while the test runs."""
    sizes: list[int] = []
    launch = RayEngine._launch

    def counting(self, run):
        sizes.append(len(run.batch.items))
        launch(self, run)

    monkeypatch.setattr(RayEngine, "_launch", counting)
    return sizes


def test_ten_thousand_tiny_tasks_go_in_large_batches(head, launched):
    with bf.Pool(mode="ray", address=head.address) as pool:
        assert pool.map(abs, range(-10_000, 0)) == list(range(10_000, 0, -1))
    assert sum(launched) == 10_000
    assert len(launched) < 150, launched  # not ten thousand Ray tasks
    assert max(launched) >= 500, launched


def five_ms(x):
    time.sleep(0.005)
    return x


def timed_steady(pool, fn, tasks: int, cpus: int = 2) -> bool:
    """Whether ``fn``'s tasks were timed steady enough for a map of ``tasks`` to be
    cut evenly: a CPU's share strays by less than the least chunk (see _spread.py)."""
    timings = pool._scheduler.timings
    variation, per_task = timings.variation_of(fn), timings.of(fn)
    return variation is not None and likely_error(
        variation, tasks // cpus, per_task) <= LEAST_WORK_PER_BATCH


def first_cut_over_the_cpus(pool, fn, tasks: int, cpus: int = 2) -> int:
    """What a map of ``tasks`` of ``fn`` starts with: what is left over the CPUs, or
    over twice them if the tasks timed so far varied enough (see _spread.py)."""
    timings = pool._scheduler.timings
    if timings.variation_of(fn) is None or timed_steady(pool, fn, tasks, cpus):
        return tasks // cpus
    return tasks // cpus // 2


def test_a_long_map_timed_steady_is_cut_evenly_over_the_clusters_cpus(head, launched):
    with bf.Pool(mode="ray", address=head.address) as pool:
        assert pool.workers >= 8  # more batches in flight than the head's 2 CPUs
        assert pool.map(five_ms, range(40)) == list(range(40))  # the tasks, timed
        steady = timed_steady(pool, five_ms, 400)
        launched.clear()
        assert pool.map(five_ms, range(400)) == list(range(400))
    assert sum(launched) == 400
    if steady:  # idle, 5 ms sleeps vary by a few percent: half the map each
        assert launched == [200, 200]
    else:  # beside busy programs they may vary by tens of percent: over 4, shrinking
        assert launched[0] == 100, launched
        assert launched[-1] <= 20, launched


def test_a_long_map_not_timed_task_by_task_shrinks_to_its_end(head, launched):
    with bf.Pool(mode="ray", address=head.address) as pool:
        # Its time per task known (as after a map of tasks too short to time
        # one by one), not how much they vary: the guided cut, which balances
        # the CPUs whatever the tasks do.
        pool._scheduler.timings.note(five_ms, 0.005)
        assert pool.map(five_ms, range(400)) == list(range(400))
    assert sum(launched) == 400
    # What is left over the 2 CPUs, then shrinking down to 10 tasks (50 ms);
    # over the 8 batches in flight, or in 0.5 s batches, it took 20 or more.
    assert launched[0] == 200, launched
    assert len(launched) <= 16, launched
    assert launched[-1] <= 20, launched


def nap(seconds):
    time.sleep(seconds)
    return seconds


def test_a_map_whose_tasks_vary_is_cut_over_twice_the_cpus(head, launched):
    # One task in five takes 40 ms among 2 ms ones, shuffled: a chunk of half
    # the map (what one cut per CPU gives) would stray by about 0.1 s. Sleeps
    # of the same mean vary by a few percent idle: they keep one cut per CPU.
    uneven = [0.04 if i % 5 == 0 else 0.002 for i in range(100)]
    random.Random(7).shuffle(uneven)
    steady = [sum(uneven) / len(uneven)] * len(uneven)  # the same work, evenly
    with bf.Pool(mode="ray", address=head.address) as pool:
        timings = pool._scheduler.timings
        assert pool.map(nap, steady) == steady  # the task's time (and steadiness), learnt
        steady_expected = first_cut_over_the_cpus(pool, nap, len(steady))
        launched.clear()
        assert pool.map(nap, steady) == steady
        steady_first = launched[0]
        steady_variation = timings.variation_of(nap)
        assert pool.map(nap, uneven) == uneven  # how much these tasks vary, learnt
        uneven_variation = timings.variation_of(nap)
        launched.clear()
        assert pool.map(nap, uneven) == uneven
        uneven_first = launched[0]
    assert sum(launched) == 100
    # Timed on the workers: 1.6 for these tasks (standard deviation over mean);
    # the even sleeps 0.01 to 0.2, as busy as the machine is.
    assert uneven_variation is not None
    assert uneven_variation > 1.0
    assert steady_variation is not None
    assert steady_variation < uneven_variation
    assert steady_first == steady_expected, (steady_first, steady_variation)
    assert uneven_first == 25  # over twice the CPUs: 100 / 4


# Ray's test cluster (ray.cluster_utils) runs its head in the process that makes
# it, keeping some of Ray's process-wide resources there; so it runs in a script.
# Ray writes the cluster's address to $RAY_TMPDIR/ray (else /tmp/ray, the
# machine's): the test points RAY_TMPDIR at a folder of its own.
NODE_LOSS_SCRIPT = """
import os, sys, time
from pathlib import Path

from ray.cluster_utils import Cluster

import bingfa as bf

folder = sys.argv[1]

def mark_then_sleep(i):
    Path(folder, f"running-{i}-{os.getpid()}").touch()
    time.sleep(3)  # long enough to be running when the node goes
    return i

cluster = Cluster(shutdown_at_exit=False)
try:
    # The head has no CPU: every task runs on the added node.
    cluster.add_node(num_cpus=0, include_dashboard=False)
    node = cluster.add_node(num_cpus=2)
    print(" ".join(str(p.pid) for p in __import__("psutil").Process().children(recursive=True)),
          flush=True)
    with bf.Pool(4, mode="ray", address=cluster.address) as pool:
        futures = [pool.submit(mark_then_sleep, i) for i in range(6)]
        deadline = time.monotonic() + 60
        while len(list(Path(folder).glob("running-*"))) < 2:  # two run on the node
            assert time.monotonic() < deadline, "no task started"
            time.sleep(0.05)
        cluster.remove_node(node, allow_graceful=False)
        cluster.add_node(num_cpus=2)  # where what is left can run
        outcomes = []
        for future in futures:
            try:
                outcomes.append(future.result(timeout=90))
            except bf.WorkerCrashedError:
                outcomes.append("crashed")
    print(" ".join(map(str, outcomes)), flush=True)
finally:
    cluster.shutdown()
"""


@pytest.mark.timeout(180)
def test_a_node_removed_mid_map_fails_only_its_tasks_and_never_hangs(tmp_path,
                                                                      tmp_path_factory):
    ray_tmp = tmp_path_factory.mktemp("r")
    (ray_tmp / "ray").mkdir()
    script = tmp_path / "node_loss.py"
    script.write_text(NODE_LOSS_SCRIPT)
    marks = tmp_path / "marks"
    marks.mkdir()
    proc = subprocess.Popen([sys.executable, str(script), str(marks)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "RAY_TMPDIR": str(ray_tmp)})
    try:
        out, err = proc.communicate(timeout=150)  # a hang detector
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    pids, outcomes = out.strip().split("\n")[-2:]
    outcomes = outcomes.split()
    assert len(outcomes) == 6
    crashed = outcomes.count("crashed")
    assert 1 <= crashed <= 4, outcomes  # only the ones that ran on the removed node
    assert sorted(int(o) for o in outcomes if o != "crashed") == sorted(
        i for i in range(6) if str(i) in outcomes)
    assert wait_until(lambda: not any(pid_alive(int(p)) for p in pids.split()), timeout=30)


def test_backend_unavailable_when_ray_is_missing():
    code = textwrap.dedent("""
        import sys
        sys.modules["ray"] = None
        import bingfa as bf
        try:
            bf.Pool(mode="ray")
        except bf.BackendUnavailableError as exc:
            assert exc.extra == "ray", exc.extra
            print(exc)
        else:
            raise SystemExit("no error")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "pip install 'bingfa[ray]'" in done.stdout


def test_max_tasks_per_worker_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="max_tasks_per_worker has no meaning in mode='ray'"):
        bf.Pool(2, mode="ray", max_tasks_per_worker=3)


def is_ray_agent(proc: psutil.Process) -> bool:
    """Ray's dashboard or runtime-env agent (they name themselves ``ray::...Agent``)."""
    try:
        return " ".join(proc.cmdline()).strip().endswith("Agent")
    except psutil.Error:
        return False


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL],
                         ids=["SIGINT", "SIGTERM", "SIGKILL"])
def test_a_process_killed_while_its_pool_runs_leaves_no_ray_behind(tmp_path, how):
    # Ctrl-C unwinds the pool; at SIGTERM Ray's own handler ends the process
    # at once, as SIGKILL does: then the process's janitor removes the Ray's
    # directory, once Ray's processes saw their driver gone.
    script = tmp_path / "victim.py"
    script.write_text(textwrap.dedent("""
        import sys, threading
        import bingfa as bf
        pool = bf.Pool(2, mode="ray")
        pool.submit(abs, -1).result()
        print(pool._engine._session.temp_dir, flush=True)
        threading.Event().wait(60)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    tree: list[psutil.Process] = []
    try:
        temp_dir = Path(proc.stdout.readline().strip())
        assert temp_dir.is_dir()
        assert temp_dir.name.startswith(f"bingfa-{proc.pid}-ray-")
        tree = psutil.Process(proc.pid).children(recursive=True)
        assert tree
        # After SIGKILL, Ray's two agents live on until they notice their
        # raylet gone (a minute or two here): Ray's, not bingfa's, to end.
        agents = [p for p in tree if is_ray_agent(p)] if how == signal.SIGKILL else []
        proc.send_signal(how)
        proc.wait(timeout=30)
        rest = [p for p in tree if p not in agents]
        assert wait_until(lambda: not any(pid_alive(p.pid) for p in rest), timeout=30)
        assert wait_until(lambda: not temp_dir.exists(), timeout=20), (
            "the pool's Ray directory was left behind")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        for leftover in tree:
            with contextlib.suppress(psutil.Error):
                leftover.kill()


INTERRUPTED_SCRIPT = """
import os, sys, threading
from pathlib import Path
import bingfa as bf

def block(folder):
    Path(folder, str(os.getpid())).touch()
    threading.Event().wait(60)

address, folder, ending = sys.argv[1:]
pool = bf.Pool(2, mode="ray", address=address)  # never closed: left to the exit handlers
future = pool.submit(block, folder)
if ending == "waiting":
    future.result()  # Ctrl-C comes here
else:
    print("ending", flush=True)  # and comes while the exit handler drains the pool
"""


def interrupt_while_a_task_runs(head: RayHead, tmp_path: Path, ending: str) -> tuple[int, str]:
    """Run INTERRUPTED_SCRIPT, Ctrl-C it once its task runs: its exit status and stderr.

    Checks that the Ray worker that ran the task is gone after.
    """
    script = tmp_path / "interrupted.py"
    script.write_text(INTERRUPTED_SCRIPT)
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    proc = subprocess.Popen([sys.executable, str(script), head.address, str(folder), ending],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        if ending == "ending":
            assert proc.stdout.readline().strip() == "ending"
        assert wait_until(lambda: any(folder.iterdir()), timeout=60)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    worker = int(next(folder.iterdir()).name)
    assert wait_until(lambda: not pid_alive(worker), timeout=15)
    return proc.returncode, err


def test_ctrl_c_while_a_task_runs_exits_cleanly_and_ends_the_task(head, tmp_path):
    """Ctrl-C in a script whose pool is never closed, its task still running: the
    process exits as Python does on Ctrl-C, not by a crash while it finalizes (it
    died of SIGSEGV in about one exit of six when bingfa stopped the pool from its
    exit handler), and the Ray worker running the task goes too. Several exits:
    the crash did not come every time."""
    for _ in range(6):
        status, err = interrupt_while_a_task_runs(head, tmp_path, "waiting")
        assert "KeyboardInterrupt" in err
        assert status in (1, -signal.SIGINT), f"exit status {status}:\n{err}"


def test_ctrl_c_while_the_exit_handler_drains_a_pool_stops_it(head, tmp_path):
    """A script ends with a task of a pool it never closed still running: the exit
    handler waits for it; a Ctrl-C then stops the pool and the task, without a hang
    (the handlers after Ray's must not wait for a pool on a Ray that has gone)."""
    status, err = interrupt_while_a_task_runs(head, tmp_path, "ending")
    assert status in (0, 1, -signal.SIGINT), f"exit status {status}:\n{err}"
