"""bf.Channel in both modes: order, limits, closing, producers, errors, async."""

from __future__ import annotations

import asyncio
import pickle
import queue
import threading

import pytest

import bingfa as bf

MODES = ["thread", "process"]


@pytest.fixture(params=MODES)
def mode(request):
    return request.param


@pytest.mark.timeout(30)
def test_items_come_out_in_order_and_iteration_ends_at_the_close(mode):
    ch = bf.Channel(maxsize=100, mode=mode)
    for i in range(50):
        ch.put(i)
    ch.put_many(range(50, 60))
    assert ch.qsize() == 60
    assert not ch.empty()
    ch.close()
    assert ch.closed
    assert list(ch) == list(range(60))
    with pytest.raises(bf.ChannelClosedError):
        ch.get()
    with pytest.raises(bf.ChannelClosedError):
        ch.get_nowait()
    with pytest.raises(bf.ChannelClosedError):
        ch.put(1)
    stats = ch.statistics()
    assert (stats.mode, stats.items, stats.puts, stats.gets, stats.closed) == (
        mode, 0, 60, 60, True)


@pytest.mark.timeout(30)
def test_the_nowait_forms_and_timeouts_raise_queues_exceptions(mode):
    ch = bf.Channel(maxsize=2, mode=mode)
    with pytest.raises(bf.ChannelEmpty) as empty:
        ch.get_nowait()
    assert isinstance(empty.value, queue.Empty)
    with pytest.raises(queue.Empty):
        ch.get(timeout=0.05)
    ch.put_nowait("a")
    ch.put("b", timeout=1)
    with pytest.raises(bf.ChannelFull) as full:
        ch.put_nowait("c")
    assert isinstance(full.value, queue.Full)
    with pytest.raises(queue.Full):
        ch.put("c", timeout=0.05)
    assert ch.get_many(10) == ["a", "b"]
    with pytest.raises(bf.ChannelEmpty):
        ch.get_many(10, timeout=0.01)


@pytest.mark.timeout(30)
def test_closing_ends_a_consumer_waiting_on_an_empty_channel(mode):
    ch = bf.Channel(mode=mode)
    got: list[str] = []
    consumer = threading.Thread(target=lambda: got.extend(ch))
    consumer.start()
    consumer.join(0.2)
    assert consumer.is_alive()  # waiting on the empty channel
    ch.put("last")
    ch.close()
    consumer.join(10)
    assert not consumer.is_alive()
    assert got == ["last"]


@pytest.mark.timeout(30)
def test_a_put_waiting_for_room_raises_when_the_channel_closes(mode):
    ch = bf.Channel(maxsize=1, mode=mode)
    ch.put(0)
    errors: list[BaseException] = []

    def blocked_put():
        try:
            ch.put(1)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=blocked_put)
    t.start()
    t.join(0.2)
    assert t.is_alive()  # waiting for room
    ch.close()
    t.join(10)
    assert not t.is_alive()
    assert len(errors) == 1
    assert isinstance(errors[0], bf.ChannelClosedError)
    assert list(ch) == [0]


@pytest.mark.timeout(30)
def test_with_producers_the_channel_closes_after_the_last(mode):
    ch = bf.Channel(mode=mode, producers=3)
    for n in range(3):
        with ch.producer():
            ch.put(n)
        assert ch.closed == (n == 2)
        assert ch.statistics().producers_left == 2 - n
    assert list(ch) == [0, 1, 2]


@pytest.mark.timeout(30)
def test_a_producer_block_left_by_an_exception_counts_as_done(mode):
    ch = bf.Channel(mode=mode, producers=1)
    def produce_and_fail():
        with ch.producer():
            ch.put("before")
            raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        produce_and_fail()
    assert ch.closed
    assert list(ch) == ["before"]


@pytest.mark.timeout(30)
def test_many_threads_put_and_get_every_item_exactly_once_in_order_per_producer(mode):
    producers, per_producer = 4, 500
    ch = bf.Channel(maxsize=16, mode=mode, producers=producers)
    received: list[list[tuple[int, int]]] = [[] for _ in range(3)]

    def produce(p):
        with ch.producer():
            for i in range(per_producer):
                ch.put((p, i))

    def consume(c):
        for item in ch:
            received[c].append(item)

    threads = [threading.Thread(target=produce, args=(p,)) for p in range(producers)]
    threads += [threading.Thread(target=consume, args=(c,)) for c in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    everything = [item for got in received for item in got]
    assert sorted(everything) == [(p, i) for p in range(producers) for i in range(per_producer)]
    for got in received:  # each consumer sees each producer's items in order
        for p in range(producers):
            mine = [i for q, i in got if q == p]
            assert mine == sorted(mine)


@pytest.mark.timeout(30)
def test_get_many_takes_what_is_there_up_to_the_limit(mode):
    ch = bf.Channel(mode=mode)
    ch.put_many(range(10))
    assert ch.get_many(4) == [0, 1, 2, 3]
    assert ch.get_many(100) == [4, 5, 6, 7, 8, 9]
    ch.close()
    with pytest.raises(bf.ChannelClosedError):
        ch.get_many(5)


@pytest.mark.timeout(30)
def test_async_use_inside_a_running_loop(mode):
    ch = bf.Channel(maxsize=3, mode=mode)

    async def main():
        async def produce():
            for i in range(20):
                await ch.aput(i)
            ch.close()

        task = asyncio.create_task(produce())
        got = [x async for x in ch]
        await task
        with pytest.raises(bf.ChannelEmpty):
            await bf.Channel(mode=mode).aget(timeout=0.01)
        return got

    assert asyncio.run(main()) == list(range(20))


@pytest.mark.timeout(30)
def test_a_coroutine_waits_for_an_item_from_another_thread(mode):
    ch = bf.Channel(mode=mode)

    async def main():
        threading.Timer(0.05, ch.put, args=("late",)).start()
        return await ch.aget(timeout=10)

    assert asyncio.run(main()) == "late"


@pytest.mark.timeout(30)
def test_a_cancelled_aget_does_not_swallow_the_next_item(mode):
    ch = bf.Channel(mode=mode)

    async def main():
        first = asyncio.create_task(ch.aget())
        second = asyncio.create_task(ch.aget())
        await asyncio.sleep(0.05)
        first.cancel()
        ch.put("x")
        return await asyncio.wait_for(second, 10)

    assert asyncio.run(main()) == "x"


def test_bad_arguments_say_what_is_wrong():
    with pytest.raises(ValueError, match="mode must be one of"):
        bf.Channel(mode="gpu")
    with pytest.raises(ValueError, match="maxsize must be at least 0"):
        bf.Channel(maxsize=-1)
    with pytest.raises(TypeError, match="maxsize must be an int"):
        bf.Channel(maxsize="10")
    with pytest.raises(ValueError, match="producers must be at least 1"):
        bf.Channel(producers=0)
    with pytest.raises(ValueError, match="needs a bound"):
        bf.Channel(maxsize=0, mode="process")
    ch = bf.Channel()
    with pytest.raises(ValueError, match="max_items must be at least 1"):
        ch.get_many(0)
    with pytest.raises(ValueError, match="timeout"):
        ch.get(timeout=-1)


def test_a_thread_channel_refuses_to_be_pickled_and_says_why():
    with pytest.raises(TypeError, match="mode='process'"):
        pickle.dumps(bf.Channel())


def test_both_modes_are_channels_and_say_what_they_are():
    for mode in MODES:
        ch = bf.Channel(maxsize=5, mode=mode)
        assert isinstance(ch, bf.Channel)
        assert ch.mode == mode
        assert repr(ch) == f"<bingfa.Channel mode='{mode}' open items=0 maxsize=5>"


@pytest.mark.timeout(30)
def test_an_unbounded_thread_channel_takes_any_number():
    ch = bf.Channel()
    ch.put_many(range(100_000))
    assert ch.qsize() == 100_000
    assert ch.statistics().maxsize == 0
