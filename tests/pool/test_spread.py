"""How much a map's task times vary, and what an engine cutting one chunk per worker does with it.

An engine whose chunks cost milliseconds each (Ray) cuts what is left of a map
over its workers, once each; a map whose tasks vary is cut over twice the
workers instead, so that one chunk running long leaves the others something to
balance it with, and a map timed steady is cut evenly before it starts. The
real-Ray side of this is in test_ray_mode.py.
"""

from __future__ import annotations

import math
import time

import pytest

from bingfa._pool._batch import CALL_ONE
from bingfa._pool._engines._remote_batch import outcomes, run_remote_batch
from bingfa._pool._jobs import ManyJob
from bingfa._pool._scheduler import Scheduler
from bingfa._pool._spread import MIN_SAMPLES, TaskSpread, even_cut, likely_error

pytestmark = pytest.mark.timeout(60)


def spread_of(times: list[float]) -> TaskSpread:
    spread = TaskSpread()
    spread.add(len(times), sum(times), sum(t * t for t in times))
    return spread


def test_equal_times_do_not_vary():
    assert spread_of([0.01] * 20).variation() == pytest.approx(0.0, abs=1e-6)


def test_the_variation_is_the_standard_deviation_over_the_mean():
    times = [0.01] * 9 + [0.1]  # one long task in ten
    mean = sum(times) / len(times)
    deviation = math.sqrt(sum((t - mean) ** 2 for t in times) / len(times))
    assert spread_of(times).variation() == pytest.approx(deviation / mean)


def test_too_few_tasks_say_nothing_and_sums_add_up():
    spread = spread_of([0.01] * (MIN_SAMPLES - 1))
    assert spread.variation() is None
    spread.add(1, 0.03, 0.03 * 0.03)
    assert spread.count == MIN_SAMPLES
    assert spread.variation() is not None
    assert spread.variation() > 0.5
    spread.add(0, 0.0, 0.0)  # an empty batch changes nothing
    assert spread.count == MIN_SAMPLES


def test_a_chunks_likely_error_grows_with_the_root_of_its_tasks():
    assert likely_error(0.5, 100, 0.01) == pytest.approx(0.05)
    assert likely_error(0.5, 400, 0.01) == pytest.approx(0.1)
    assert likely_error(0.0, 400, 0.01) == 0.0


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_a_timed_remote_batch_sends_back_the_squares_of_its_tasks_times():
    durations = [0.002, 0.02, 0.002, 0.02]
    values, errors, elapsed, squares = outcomes(
        run_remote_batch(nap, durations, CALL_ONE, timed=True))
    assert values == durations
    assert errors is None
    # A sleep never ends early: each task took at least its duration.
    assert squares is not None
    assert squares >= sum(d * d for d in durations)
    assert elapsed >= sum(durations)
    assert squares <= elapsed * elapsed  # squares of parts of the whole
    assert outcomes(run_remote_batch(nap, durations, CALL_ONE))[3] is None  # not timed
    # One task: timed by the batch's own running time.
    _, _, alone, alone_squares = outcomes(run_remote_batch(nap, [0.002], CALL_ONE, timed=True))
    assert alone >= 0.002
    assert alone_squares == pytest.approx(alone * alone)


def a_map(scheduler: Scheduler, tasks: int, per_task: float,
          timed: list[float] | None = None) -> ManyJob:
    """A map of ``tasks`` whose time per task is known, and ``timed`` task times reported."""
    job = ManyJob(scheduler, nap, CALL_ONE, 0, "auto", True, tasks)
    with scheduler.lock:
        job.add([0.0] * tasks)
        job.finish_input()
        job.per_task = per_task
        if timed:
            job.note_task_times(len(timed), sum(timed), sum(t * t for t in timed))
    return job


def first_cut(scheduler: Scheduler, job: ManyJob, workers: int = 2) -> int:
    with scheduler.lock:
        batch = job.take(None, workers)
    assert batch is not None
    return len(batch.items)


ONE_IN_TEN_LONG = [0.01] * 90 + [0.1] * 10  # one task in ten takes ten times as long


def one_cut_per_worker() -> Scheduler:
    scheduler = Scheduler()
    scheduler.cuts_per_worker = 1
    scheduler.batch_seconds = 100.0  # no cap: the cut alone decides
    scheduler.min_batch_seconds = 0.05
    return scheduler


def test_a_map_of_steady_tasks_is_cut_once_per_worker():
    scheduler = one_cut_per_worker()
    job = a_map(scheduler, 400, 0.01, timed=[0.01] * 100)
    assert first_cut(scheduler, job) == 200  # what is left over the 2 workers


def test_a_map_of_uneven_tasks_is_cut_over_twice_the_workers():
    scheduler = one_cut_per_worker()
    job = a_map(scheduler, 400, 0.019, timed=ONE_IN_TEN_LONG)
    assert first_cut(scheduler, job) == 100  # over 4: slack for the long ones


def test_the_next_map_of_a_function_starts_from_how_its_tasks_varied():
    scheduler = one_cut_per_worker()
    a_map(scheduler, 400, 0.019, timed=ONE_IN_TEN_LONG)
    job = a_map(scheduler, 400, 0.019)  # nothing timed in it yet
    assert first_cut(scheduler, job) == 100


def test_variation_too_small_to_matter_keeps_one_cut_per_worker():
    # Tasks of 0.1 ms varying by half: a chunk of 200 strays by about 0.7 ms,
    # far below the least chunk (5 ms here) the tail shrinks to.
    scheduler = one_cut_per_worker()
    scheduler.min_batch_seconds = 0.005
    job = a_map(scheduler, 400, 0.0001, timed=[0.00005] * 50 + [0.00015] * 50)
    assert first_cut(scheduler, job) == 200



def test_a_chunk_held_to_the_most_work_per_batch_is_not_cut_smaller():
    # 400 tasks over 2 workers is 200 a chunk, but a batch holds at most 150
    # here: the first chunks leave most of the map to balance them with.
    scheduler = one_cut_per_worker()
    scheduler.batch_seconds = 150.5 * 0.019
    job = a_map(scheduler, 400, 0.019, timed=ONE_IN_TEN_LONG)
    assert first_cut(scheduler, job) == 150


def cuts(scheduler: Scheduler, job: ManyJob, workers: int = 2) -> list[int]:
    """Every chunk of ``job``, taken one after another (as with many batches in flight)."""
    sizes = []
    with scheduler.lock:
        while (batch := job.take(None, workers)) is not None:
            sizes.append(len(batch.items))
    return sizes


def test_an_even_cut_gives_every_cpu_the_same_chunks_of_about_the_most_work():
    # 2,000 tasks of 10.1 ms on 2 CPUs: 10.1 s each, about two chunks of 5 s.
    assert even_cut(2000, 0.0101, 2, 5.0) == [500] * 4
    # Rounded: 7.4 s a CPU is one chunk (half as much again as the most at
    # worst), 12.6 s three.
    assert even_cut(1480, 0.01, 2, 5.0) == [740, 740]
    assert even_cut(2520, 0.01, 2, 5.0) == [420] * 6
    # Sizes differ by one task at most, the larger first: dealt out in turn,
    # no CPU gets more than one task more than another.
    assert even_cut(2003, 0.01, 2, 5.0) == [501, 501, 501, 500]
    assert even_cut(3, 10.0, 8, 5.0) == [1, 1, 1]  # never an empty chunk


def test_a_map_timed_steady_before_is_cut_evenly_before_it_starts():
    scheduler = one_cut_per_worker()
    scheduler.batch_seconds = 1.0
    a_map(scheduler, 400, 0.01, timed=[0.01] * 100)
    job = a_map(scheduler, 1000, 0.01)  # the function's tasks were steady
    # 5 s a worker, about 1 s a chunk: five each, no shrinking tail.
    assert cuts(scheduler, job) == [100] * 10


def test_a_map_never_timed_keeps_the_shrinking_tail():
    scheduler = one_cut_per_worker()
    scheduler.batch_seconds = 1.0
    job = a_map(scheduler, 1000, 0.01)  # its time is known, not how much it varies
    sizes = cuts(scheduler, job)
    # Held to the most work per batch, then shrinking down to the least chunk
    # (5 tasks) and what is left.
    assert sizes == [100] * 9 + [50, 25, 13, 6, 5, 1]


def test_an_even_cut_is_given_up_when_the_maps_own_tasks_vary():
    scheduler = one_cut_per_worker()
    a_map(scheduler, 400, 0.019, timed=[0.019] * 100)
    job = a_map(scheduler, 400, 0.019)
    assert first_cut(scheduler, job) == 200  # steady last time: half each
    with scheduler.lock:
        job.note_task_times(len(ONE_IN_TEN_LONG), sum(ONE_IN_TEN_LONG),
                            sum(t * t for t in ONE_IN_TEN_LONG))
    assert first_cut(scheduler, job) == 50  # the other half, over twice the workers


def test_chunks_too_small_to_send_alone_are_not_cut_evenly():
    # 10,000 tasks of 1 us over 2 workers: chunks of 5 ms, below the least
    # chunk (50 ms) worth a batch of its own: one batch holds them all.
    scheduler = one_cut_per_worker()
    a_map(scheduler, 400, 0.000001, timed=[0.000001] * 100)
    job = a_map(scheduler, 10_000, 0.000001)
    assert cuts(scheduler, job) == [10_000]
