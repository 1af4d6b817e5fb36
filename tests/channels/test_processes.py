"""Process channels between real processes: passing, killing, async, big arrays."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
from conftest import wait_until

import bingfa as bf


def produce(ch, producer, count):
    with ch.producer():
        for i in range(count):
            ch.put((producer, i))


def consume_all(ch):
    return list(ch)


@pytest.mark.timeout(60)
def test_a_channel_travels_to_pool_tasks_handles_and_scope_spawns():
    ch = bf.Channel(maxsize=50, mode="process", producers=3)
    with bf.Pool(2, mode="process") as pool:
        in_pool = pool.submit(produce, ch, "pool", 100)
        handle = bf.Process(produce, (ch, "handle", 100))
        handle.start()
        with bf.scope() as s:
            s.spawn(produce, ch, "spawn", 100, mode="process")
            got = list(ch)
        in_pool.result(30)
        handle.join(30)
    for name in ("pool", "handle", "spawn"):
        assert [i for who, i in got if who == name] == list(range(100))
    assert len(got) == 300


@pytest.mark.timeout(60)
def test_several_producer_and_consumer_processes_get_each_item_exactly_once():
    ch = bf.Channel(maxsize=8, mode="process", producers=3)
    with bf.scope() as s:
        for p in range(3):
            s.spawn(produce, ch, p, 400, mode="process")
        consumers = [s.spawn(consume_all, ch, mode="process") for _ in range(2)]
        here = list(ch)
    parts = [c.result() for c in consumers] + [here]
    everything = [item for part in parts for item in part]
    assert sorted(everything) == [(p, i) for p in range(3) for i in range(400)]
    for part in parts:
        for p in range(3):
            mine = [i for q, i in part if q == p]
            assert mine == sorted(mine)


SEED = '''\
import bingfa as bf

def write(ch):
    for value in ["A", "B", "C"]:
        print("Put %s to channel..." % value, flush=True)
        ch.put(value)
    ch.close()

def read(ch):
    for value in ch:               # ends by itself once the writer closes
        print("Get %s from channel." % value, flush=True)

ch = bf.Channel(mode="process")
with bf.scope() as s:
    s.spawn(write, ch, mode="process")
    s.spawn(read, ch, mode="process")
print("both done")
'''


def run_script(tmp_path, text: str) -> subprocess.CompletedProcess[str]:
    """Run ``text`` as a script of its own, in ``tmp_path``; what it printed and its status."""
    script = tmp_path / "script.py"
    script.write_text(text)
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=50, cwd=tmp_path)


@pytest.mark.timeout(60)
def test_the_seed_writer_and_reader_end_by_themselves(tmp_path):
    done = run_script(tmp_path, SEED)
    assert done.returncode == 0, done.stderr
    # Two processes print at once: a line of one may land inside a line of the other.
    assert re.findall(r"Get (\w) from channel\.", done.stdout) == ["A", "B", "C"]
    assert done.stdout.splitlines()[-1] == "both done"


def produce_forever(ch, name):
    with ch.producer():
        i = 0
        while True:
            ch.put((name, i))
            i += 1


@pytest.mark.timeout(90)
@pytest.mark.parametrize("round_", range(3))
def test_a_producer_killed_mid_put_neither_corrupts_nor_hangs(round_):
    ch = bf.Channel(maxsize=4, mode="process", producers=2)
    doomed = bf.Process(produce_forever, (ch, "doomed"))
    doomed.start()
    got = []
    while len(got) < 50 + 37 * round_:
        got.append(ch.get(timeout=30))
    os.kill(doomed.pid, signal.SIGKILL)
    doomed.join(30)
    with bf.scope() as s:
        s.spawn(produce, ch, "steady", 300, mode="process")
        got += list(ch)  # ends: the dead producer counts as done
    assert [i for who, i in got if who == "steady"] == list(range(300))
    doomed_items = [i for who, i in got if who == "doomed"]
    assert doomed_items == list(range(len(doomed_items)))  # a prefix, in order, once each


def die_holding_the_put_lock(ch):
    with ch.producer():
        ch.put("before")
        ch._put_lock.acquire()
        os._exit(1)


def die_holding_the_get_lock(ch):
    ch._get_lock.acquire()
    os._exit(1)


def die_taking_the_get_lock(ch):
    # Killed between taking the lock's semaphore and writing its token: the
    # lock is held, and nothing says by whom.
    ch._get_lock._sem.acquire()
    os._exit(1)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("dies", [die_holding_the_put_lock, die_holding_the_get_lock,
                                  die_taking_the_get_lock],
                         ids=["producer", "consumer", "consumer-without-token"])
def test_a_process_that_dies_holding_a_lock_of_the_channel_blocks_nobody(dies):
    ch = bf.Channel(mode="process", producers=2)
    handle = bf.Process(dies, (ch,))
    handle.start()
    handle.join(30)
    assert handle.exitcode == 1
    with ch.producer():
        ch.put("after")
    if dies is not die_holding_the_put_lock:
        ch.close()  # the dead consumer was not a producer: this is the second
    assert list(ch) == (["before", "after"] if dies is die_holding_the_put_lock else ["after"])


def take_and_ack(ch, acks):
    for item in ch:
        acks.put(item)
    # Took everything before the test's kill came (a fast consumer on a quiet
    # moment): wait for it, so that the kill always finds this process.
    threading.Event().wait()


@pytest.mark.timeout(90)
def test_a_consumer_killed_while_taking_loses_at_most_the_item_it_held():
    ch = bf.Channel(maxsize=4, mode="process", producers=1)
    acks = bf.Channel(maxsize=100_000, mode="process")
    doomed = bf.Process(take_and_ack, (ch, acks))  # the only consumer until it is killed
    doomed.start()
    with bf.scope() as s:
        s.spawn(produce, ch, "p", 20_000, mode="process")
        assert wait_until(lambda: acks.qsize() > 200, timeout=30)
        os.kill(doomed.pid, signal.SIGKILL)
        doomed.join(30)
        survivor = list(ch)
    acked = []
    while True:
        try:
            acked.append(acks.get_nowait())
        except bf.ChannelEmpty:
            break
    delivered = acked + survivor
    assert len(delivered) == len(set(delivered))  # never twice
    assert len(delivered) >= 20_000 - 1  # at most the one item the killed consumer held
    assert [i for _, i in survivor] == sorted(i for _, i in survivor)


async def _produce_async(ch, count):
    for i in range(count):
        await ch.aput(i)
    ch.close()


def produce_in_a_loop(ch, count):
    asyncio.run(_produce_async(ch, count))


@pytest.mark.timeout(60)
def test_asyncio_code_in_two_processes_talks_through_a_channel():
    ch = bf.Channel(maxsize=5, mode="process")

    async def consume():
        return [x async for x in ch]

    with bf.scope() as s:
        s.spawn(produce_in_a_loop, ch, 200, mode="process")
        got = asyncio.run(consume())
    assert got == list(range(200))


def send_array(ch, size):
    ch.put(np.arange(size, dtype=np.int64))
    ch.put({"small": 1})
    ch.close()


@pytest.mark.timeout(60)
def test_a_big_array_arrives_on_shared_memory_not_a_copy():
    ch = bf.Channel(mode="process")
    size = 16 * 1024 * 1024  # 128 MiB
    with bf.scope() as s:
        s.spawn(send_array, ch, size, mode="process")
        array = ch.get(timeout=30)
        rest = list(ch)
    assert rest == [{"small": 1}]
    assert array.shape == (size,)
    assert array[0] == 0
    assert array[-1] == size - 1
    assert not array.flags.owndata  # built on the mapped segment
    array[0] = 7  # and writable
    del array


@pytest.mark.timeout(60)
def test_big_items_nobody_took_are_freed_with_the_channel():
    ch = bf.Channel(mode="process")
    ch.put(np.zeros(1 << 20))
    ch.put(b"x" * (1 << 21))
    names = {n for n in os.listdir("/dev/shm") if f"bf-{os.getpid()}-o-" in n}
    holding = {n for n in names if os.path.getsize(f"/dev/shm/{n}") > 0}
    assert len(holding) == 2  # in two of the kept segments, named from the start
    del ch
    assert not {n for n in os.listdir("/dev/shm") if n in names}


@pytest.mark.timeout(60)
def test_an_item_that_cannot_be_pickled_is_refused_at_the_put():
    ch = bf.Channel(mode="process")
    import threading

    with pytest.raises(bf.SerializationError, match="the item put to the channel"):
        ch.put(threading.Lock())
    assert ch.qsize() == 0


@pytest.mark.timeout(60)
def test_a_script_on_stdin_passes_main_objects_through_a_channel(tmp_path):
    script = textwrap.dedent('''\
        import bingfa as bf

        class Point:
            def __init__(self, x):
                self.x = x

        def send(ch):
            ch.put(Point(3))
            ch.close()

        ch = bf.Channel(mode="process")
        with bf.scope() as s:
            s.spawn(send, ch, mode="process")
            print([p.x for p in ch])
    ''')
    done = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True,
                          timeout=50, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "[3]\n"


class Exploding:
    """Pickles fine; cannot be rebuilt."""

    def __reduce__(self):
        return (_explode, ())


def _explode():
    raise ValueError("cannot be rebuilt")


@pytest.mark.timeout(60)
def test_an_item_that_cannot_be_unpickled_fails_its_get_and_nothing_else():
    ch = bf.Channel(mode="process")
    ch.put("before")
    ch.put(Exploding())
    ch.put("after")
    ch.put_many(["batch", Exploding()])  # one pickle: the batch fails as one
    ch.put_many(["next", "batch"])
    assert ch.get() == "before"
    with pytest.raises(bf.SerializationError, match="cannot unpickle an item of the channel"):
        ch.get()
    assert ch.get() == "after"
    with pytest.raises(bf.SerializationError, match="cannot be rebuilt"):
        ch.get_many(10)
    assert ch.get_many(10) == ["next", "batch"]
    assert ch.qsize() == 0


KILLED_CREATOR = textwrap.dedent('''\
    import time
    import numpy as np
    import bingfa as bf

    def produce(ch):
        for i in range(3):
            ch.put(np.full(1 << 18, i))      # 2 MiB each, unread
        # this producer has exited when its creator is killed

    def wait(ready):
        ready.put("up")
        time.sleep(60)

    ch, ready = bf.Channel(mode="process"), bf.Channel(mode="process")
    with bf.scope() as s:
        s.spawn(produce, ch, mode="process")
    waiter = bf.Process(wait, (ready,))   # a child of this process, as a consumer would be
    waiter.start()
    ready.get()
    print("holding", flush=True)
    time.sleep(60)
''')


def kill_once_holding(tmp_path, text: str) -> tuple[list[str], list[int]]:
    """Run ``text`` as a script until it prints "holding", then SIGKILL it.

    Returns the shared memory names it made that held memory (all must be
    gone within 2 seconds of the kill, which this checks) and the pids of its
    family when it was killed.
    """
    import psutil

    script = tmp_path / "script.py"
    script.write_text(text)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout.readline() == "holding\n"
        family = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        mine = [n for n in os.listdir("/dev/shm") if n.startswith(f"bf-{proc.pid}-")]
        holding = [n for n in mine if os.path.getsize(f"/dev/shm/{n}") > 0]
        proc.kill()
        proc.wait(10)
        assert wait_until(lambda: not any(os.path.exists(f"/dev/shm/{n}") for n in mine),
                          timeout=2.0)
    finally:
        proc.kill()
        proc.wait(10)
        proc.stdout.close()
    return holding, family


@pytest.mark.timeout(60)
def test_a_creator_killed_with_big_items_unread_leaves_nothing_within_2_seconds(tmp_path):
    import psutil

    holding, family = kill_once_holding(tmp_path, KILLED_CREATOR)
    assert len([n for n in holding if "-o-" in n]) == 3  # the three unread items
    for pid in family[1:]:
        assert wait_until(lambda pid=pid: not psutil.pid_exists(pid)
                          or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, timeout=10)


ALONE_CREATOR = textwrap.dedent('''\
    import time
    import numpy as np
    import bingfa as bf

    ch = bf.Channel(mode="process")
    ch.put(np.ones(1 << 17))                 # 1 MiB, into a kept segment
    kept = ch.get()                          # taken, and held
    ch.put(np.full(1 << 17, 2.0))            # another, unread
    print("holding", flush=True)
    time.sleep(60)
''')


@pytest.mark.timeout(60)
def test_a_creator_killed_with_no_bingfa_process_left_leaves_nothing_within_2_seconds(tmp_path):
    # multiprocessing's resource tracker, the creator's only survivor, unlinks them
    holding, _ = kill_once_holding(tmp_path, ALONE_CREATOR)
    assert len([n for n in holding if "-o-" in n]) >= 2  # the held item and the unread one


ALONE_CREATOR_SPILLING = textwrap.dedent('''\
    import time
    import numpy as np
    import bingfa as bf
    from bingfa._channels._segments import SLOTS

    ch = bf.Channel(mode="process")
    held = []
    for i in range(SLOTS):                   # every kept segment taken, and held
        ch.put(np.full(1 << 17, float(i)))
        held.append(ch.get())
    ch.put(np.full(1 << 17, -1.0))           # so this one goes through a one-off segment
    print("holding", flush=True)
    time.sleep(60)
''')


@pytest.mark.timeout(60)
def test_a_lone_creator_killed_with_a_one_off_segment_unread_leaves_nothing_within_2_seconds(
        tmp_path):
    # the resource tracker unlinks the kept segments; the janitor the one-off one
    holding, _ = kill_once_holding(tmp_path, ALONE_CREATOR_SPILLING)
    one_off = [n for n in holding if "-o-s" in n]
    assert len(one_off) == 1


WITHOUT_A_SHELL = textwrap.dedent('''\
    import os
    import numpy as np
    import bingfa as bf

    def no_shell(*args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", "/bin/sh")

    os.posix_spawn = no_shell  # a machine without /bin/sh: the janitor cannot start
    ch = bf.Channel(mode="process")
    ch.put(np.arange(1 << 18))
    print(int(ch.get().sum()), flush=True)
''')


@pytest.mark.timeout(60)
def test_a_channel_works_where_its_janitor_cannot_start(tmp_path):
    done = run_script(tmp_path, WITHOUT_A_SHELL)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{sum(range(1 << 18))}\n"
