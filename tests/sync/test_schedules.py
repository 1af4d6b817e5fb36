"""Barrier and Semaphore counts under schedules that hypothesis makes up."""

from __future__ import annotations

import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bingfa as bf

SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def spin(n: int) -> None:
    """Work of a made-up length, to shuffle who arrives first (not to synchronise)."""
    total = 0
    for i in range(n):
        total += i


def run_threads(targets) -> None:
    threads = [threading.Thread(target=t) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
        assert not t.is_alive()


@pytest.mark.timeout(120)
@SETTINGS
@given(value=st.integers(1, 4),
       plans=st.lists(st.lists(st.tuples(st.sampled_from(["with", "try", "timeout"]),
                                         st.integers(0, 3000)),
                               min_size=1, max_size=6),
                      min_size=2, max_size=6))
def test_a_semaphore_never_lets_more_than_its_value_in(value, plans):
    sem = bf.Semaphore(value)
    inside = [0]
    most = [0]
    count_lock = threading.Lock()
    entered = [0]

    def enter(work: int) -> None:
        with count_lock:
            inside[0] += 1
            entered[0] += 1
            most[0] = max(most[0], inside[0])
        spin(work)
        with count_lock:
            inside[0] -= 1

    def follow(plan):
        def run() -> None:
            for how, work in plan:
                if how == "with":
                    with sem:
                        enter(work)
                elif sem.acquire(blocking=how == "timeout", timeout=None if how == "try" else 5):
                    try:
                        enter(work)
                    finally:
                        sem.release()
        return run

    run_threads([follow(plan) for plan in plans])
    assert most[0] <= value
    assert sem.value == value
    blocking_entries = sum(1 for plan in plans for how, _ in plan if how != "try")
    assert entered[0] >= blocking_entries


@pytest.mark.timeout(120)
@SETTINGS
@given(parties=st.integers(1, 5), rounds=st.integers(1, 4), data=st.data())
def test_a_barrier_lets_each_round_through_together(parties, rounds, data):
    works = data.draw(st.lists(st.lists(st.integers(0, 3000), min_size=rounds, max_size=rounds),
                               min_size=parties, max_size=parties))
    actions = bf.Value("i", 0)

    def action() -> None:
        actions.value += 1

    barrier = bf.Barrier(parties, action=action)
    arrived = [0] * rounds
    indexes: list[list[int]] = [[] for _ in range(rounds)]
    problems: list[str] = []
    count_lock = threading.Lock()

    def party(work_per_round):
        def run() -> None:
            for r, work in enumerate(work_per_round):
                spin(work)
                with count_lock:
                    arrived[r] += 1
                index = barrier.wait(20)
                with count_lock:
                    if arrived[r] != parties:
                        problems.append(f"round {r}: left after {arrived[r]} of {parties}")
                    indexes[r].append(index)
        return run

    run_threads([party(w) for w in works])
    assert problems == []
    assert all(sorted(ix) == list(range(parties)) for ix in indexes)
    assert actions.value == rounds
    assert not barrier.broken
    assert barrier.n_waiting == 0
