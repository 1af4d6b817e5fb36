"""Exactly once, in order per producer, under schedules hypothesis makes up (both modes)."""

from __future__ import annotations

import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bingfa as bf

SETTINGS = settings(max_examples=20, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

# How a producer puts its items: one by one, in batches, or with the nowait form.
PUT_STYLES = st.sampled_from(["put", "put_many", "put_nowait"])
GET_STYLES = st.sampled_from(["iterate", "get_many", "get_nowait"])


def _producer(ch, number, count, style, batch):
    with ch.producer():
        items = [(number, i) for i in range(count)]
        if style == "put":
            for item in items:
                ch.put(item)
        elif style == "put_many":
            for start in range(0, count, batch):
                ch.put_many(items[start:start + batch])
        else:
            for item in items:
                while True:
                    try:
                        ch.put_nowait(item)
                        break
                    except bf.ChannelFull:
                        threading.Event().wait(0.0005)  # room comes as consumers take


def _consumer(ch, out, style, batch):
    if style == "iterate":
        out.extend(ch)
        return
    while True:
        try:
            if style == "get_many":
                out.extend(ch.get_many(batch))
            else:
                out.append(ch.get_nowait())
        except bf.ChannelClosedError:
            return
        except bf.ChannelEmpty:
            threading.Event().wait(0.0005)  # items come as producers put


@pytest.mark.timeout(300)
@SETTINGS
@given(mode=st.sampled_from(["thread", "process"]),
       maxsize=st.integers(1, 8),
       producers=st.lists(st.tuples(st.integers(0, 60), PUT_STYLES, st.integers(1, 7)),
                          min_size=1, max_size=4),
       consumers=st.lists(st.tuples(GET_STYLES, st.integers(1, 7)), min_size=1, max_size=3))
def test_every_item_arrives_exactly_once_in_order_per_producer(mode, maxsize, producers,
                                                              consumers):
    ch = bf.Channel(maxsize=maxsize, mode=mode, producers=len(producers))
    outs: list[list[tuple[int, int]]] = [[] for _ in consumers]
    threads = [threading.Thread(target=_producer, args=(ch, n, count, style, batch))
               for n, (count, style, batch) in enumerate(producers)]
    threads += [threading.Thread(target=_consumer, args=(ch, out, style, batch))
                for out, (style, batch) in zip(outs, consumers, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
        assert not t.is_alive()
    everything = sorted(item for out in outs for item in out)
    assert everything == [(n, i) for n, (count, _, _) in enumerate(producers)
                          for i in range(count)]
    for out in outs:
        for n in range(len(producers)):
            mine = [i for p, i in out if p == n]
            assert mine == sorted(mine)
    assert ch.closed
    assert ch.qsize() == 0
