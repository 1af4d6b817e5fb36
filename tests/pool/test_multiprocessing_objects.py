"""multiprocessing's Lock, Queue, Value, Array and manager proxies as ``initargs``.

The standard way to share a lock with pool workers is to hand it to their
initializer; with ``multiprocessing.Pool`` on Linux it works because workers
are forked and inherit it. bingfa's default workers are not forked from the
pool's process, so a pool given objects that can only be inherited forks its
workers, as multiprocessing does. Manager proxies need no fork: workers get
the parent's authentication key and connect to the manager.

Each case is a script of its own: multiprocessing keeps a process-wide heap
for Values and Arrays, which would outlive a test run in pytest's process.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

PY = sys.executable

_SHARED = '''\
import multiprocessing, os, sys
import bingfa as bf

def keep(*shared):
    return shared  # the worker's state: bf.worker_state()

def count(i):
    lock, queue, value, array = bf.worker_state()
    with lock:
        value.value += 1
        array[i % len(array)] += 1
    queue.put(i)
    return i

method = None if sys.argv[1] == "default" else sys.argv[1]
lock, queue = multiprocessing.Lock(), multiprocessing.Queue()
value, array = multiprocessing.Value("i", 0), multiprocessing.Array("i", 4)
with bf.Pool(2, mode="process", initializer=keep, initargs=(lock, queue, value, array),
             start_method=method) as pool:
    assert pool.map(count, range(40), chunksize=1) == list(range(40))
print(value.value, list(array), sorted(queue.get(timeout=10) for _ in range(40)) == list(range(40)))
'''

_PROXIES = '''\
import multiprocessing, os, sys
import bingfa as bf

def keep(*shared):
    return shared

def note(i):
    (shared,) = bf.worker_state()
    shared[i] = os.getpid()
    return i

method = None if sys.argv[1] == "default" else sys.argv[1]
with multiprocessing.Manager() as manager:
    shared = manager.dict()
    with bf.Pool(2, mode="process", initializer=keep, initargs=(shared,),
                 start_method=method) as pool:
        pool.map(note, range(10), chunksize=1)
    print(sorted(shared.keys()) == list(range(10)), os.getpid() in shared.values())
'''


def _run(tmp_path, code: str, *args: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "example.py"
    script.write_text(code)
    return subprocess.run([PY, str(script), *args], capture_output=True, text=True,
                          timeout=50, cwd=tmp_path)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["default", "fork"])
def test_locks_queues_values_and_arrays_reach_the_initializer(tmp_path, method):
    done = _run(tmp_path, _SHARED, method)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[0] == "40 [10, 10, 10, 10] True"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["default", "spawn", "fork"])
def test_manager_proxies_reach_the_initializer(tmp_path, method):
    done = _run(tmp_path, _PROXIES, method)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[0] == "True False"


@pytest.mark.timeout(60)
def test_an_explicit_start_method_that_cannot_inherit_says_what_to_do(tmp_path):
    done = _run(tmp_path, _SHARED, "spawn")
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("bingfa.SerializationError:"), done.stderr
    assert "start_method='spawn'" in last
    assert "start_method='fork'" in last
    assert "inheritance" in last
