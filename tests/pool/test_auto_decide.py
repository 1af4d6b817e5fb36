"""mode="auto"'s decision, from measurements given by hand (no measuring here).

These cover what cannot be made to happen on this machine (a free-threaded
interpreter, one core) and pin each rule of ``_decide`` to the reason it gives.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest

from bingfa._core._machine import gil_enabled, usable_cores
from bingfa._pool._auto._costs import _process_round_trip, machine_costs
from bingfa._pool._auto._decide import Costs, Measurement, decide
from bingfa.bench._cache import save

# Pure-Python work: 10 ms tasks, all on a CPU, two threads no better than one.
GIL_BOUND = Measurement(picklable=True, cpu_ratio=0.98, gil_gain=1.02, task_seconds=0.01,
                        payload_bytes=100, function_bytes=200, remaining=200, workers=2,
                        cores=2)


def given(**changes):
    return decide(dataclasses.replace(GIL_BOUND, **changes))


def test_gil_bound_work_with_enough_tasks_goes_to_processes():
    decision = decide(GIL_BOUND)
    assert decision.mode == "process"
    assert "holds the GIL" in decision.reason
    assert "200 remaining tasks" in decision.reason


def test_work_that_waits_runs_in_threads():
    decision = given(cpu_ratio=0.02, gil_gain=None)
    assert decision.mode == "thread"
    assert "waits: 2%" in decision.reason


def test_work_that_releases_the_gil_runs_in_threads():
    decision = given(gil_gain=1.9, gil_share=1.95)
    assert (decision.mode, decision.reason) == (
        "thread", "it releases the GIL: two threads ran 1.9x the CPU of one")
    # where the system does not tell time queued for a core (not Linux)
    assert given(gil_gain=1.9, gil_share=None).mode == "thread"


@pytest.mark.parametrize("views", [
    {"gil_gain": 1.3, "gil_share": 1.3},  # each got little more than half its time
    {"gil_gain": 1.0, "gil_share": 1.7},  # one CPU between them
    {"gil_gain": 1.35, "gil_share": None},
])
def test_views_short_of_the_mark_leave_it_to_the_cost_of_processes(views):
    # Taking GIL-free work for GIL-bound costs little (processes run it as
    # fast); the other mistake would run it one task at a time.
    decision = given(**views)
    assert decision.mode == "process"
    assert "holds the GIL" in decision.reason


def test_a_free_threaded_python_runs_cpu_work_in_threads():
    decision = given(free_threaded=True)
    assert decision.mode == "thread"
    assert "free-threaded" in decision.reason


def test_unpicklable_work_runs_in_threads_whatever_else_holds():
    decision = given(picklable=False)
    assert decision.mode == "thread"
    assert "cannot be pickled" in decision.reason


@pytest.mark.parametrize(("workers", "cores", "word"), [(1, 8, "worker"), (8, 1, "core")])
def test_one_worker_or_one_core_gains_nothing_from_processes(workers, cores, word):
    decision = given(workers=workers, cores=cores)
    assert decision.mode == "thread"
    assert f"one {word}" in decision.reason


def test_tasks_that_came_one_at_a_time_run_in_threads():
    decision = given(gil_gain=None, one_at_a_time=True)
    assert decision.mode == "thread"
    assert "one at a time" in decision.reason


def test_tasks_too_short_to_overlap_count_as_holding_the_gil():
    decision = given(gil_gain=None, task_seconds=50e-6, remaining=100_000, payload_bytes=20)
    assert decision.mode == "process"
    assert decision.reason.startswith("whether or not it holds the GIL")


def test_tiny_tasks_go_where_handing_them_over_costs_least():
    # A map's items travel in chunks: processes hand one over for less than a
    # thread pool's bookkeeping, once they have started.
    tiny = {"task_seconds": 1e-6, "remaining": 1_000_000, "payload_bytes": 20}
    assert given(**tiny).mode == "process"
    assert given(**{**tiny, "remaining": 50_000}).mode == "thread"  # their start is not repaid
    # Submitted one by one, a task costs more to hand over either way.
    submitted = {**tiny, "batched": False}
    assert given(**submitted).mode == "process"  # processes hand over for less here
    assert given(**{**submitted, "remaining": 1000}).mode == "thread"


def test_tiny_tasks_count_as_computing_whatever_their_cpu_share_showed():
    # A microsecond is below what the clocks can split into CPU and waiting.
    assert "waits" not in given(task_seconds=1e-6, cpu_ratio=0.0).reason


def test_big_payloads_stay_in_threads():
    decision = given(payload_bytes=16 << 20, task_seconds=0.002)
    assert decision.mode == "thread"
    assert "copying its arguments and results" in decision.reason


def test_a_function_carrying_big_state_stays_in_threads_for_short_maps():
    decision = given(function_bytes=500 << 20, remaining=20)
    assert decision.mode == "thread"
    assert "the state its function carries" in decision.reason


@pytest.mark.parametrize("remaining", [1, 3])
def test_a_few_tasks_do_not_pay_for_starting_processes(remaining):
    decision = given(remaining=remaining)
    assert decision.mode == "thread"
    assert "starting processes" in decision.reason


def test_no_tasks_left_stay_where_they_ran():
    assert "no tasks are left" in given(remaining=0).reason


def test_processes_already_running_need_fewer_tasks_to_pay():
    few = {"remaining": 12, "task_seconds": 0.01}
    assert given(**few).mode == "thread"
    assert given(**few, processes_running=True).mode == "process"


def test_a_busy_host_gives_processes_a_share_of_the_cores_not_the_cores():
    # One thread alone got two thirds of a core: two other busy programs share
    # the two cores. Two processes would get one core between them, not two.
    edge = {"remaining": 15, "task_seconds": 0.01}
    assert given(**edge).mode == "process"
    assert given(**edge, alone_share=0.67).mode == "thread"
    # Many tasks still repay the start: half a core more is half a core more.
    assert given(**{**edge, "remaining": 1000}, alone_share=0.67).mode == "process"


def test_an_unknown_number_of_tasks_counts_as_many():
    assert given(remaining=None).mode == "process"
    assert "remaining tasks" in given(remaining=None).reason


def test_costs_change_the_answer():
    slow_processes = Costs(process_start=5.0)
    assert decide(dataclasses.replace(GIL_BOUND, remaining=200), slow_processes).mode == "thread"
    assert decide(GIL_BOUND, Costs().scaled(100.0)).mode == "thread"


def test_the_bench_cache_gives_the_round_trip():
    results = {"workloads": {"switch": {"modes": {"process": {"median": 0.00025}}}}}
    assert _process_round_trip(results) == 0.00025
    assert _process_round_trip(None) is None
    assert _process_round_trip({"workloads": {}}) is None
    broken = {"workloads": {"switch": {"modes": {"process": {"median": 9e9}}}}}
    assert _process_round_trip(broken) is None


def _bench_results(round_trip: float, **machine: object) -> dict[str, object]:
    here = {"usable_cores": usable_cores(), "gil": gil_enabled(), "busy_cores_at_start": 0.1}
    return {"machine": {**here, **machine},
            "workloads": {"switch": {"modes": {"process": {"median": round_trip}}}}}


def test_auto_scales_its_costs_by_a_bench_run_made_here_at_rest(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert machine_costs() == Costs()  # no bench run: the defaults
    save(_bench_results(0.0008))  # processes answer 4x slower than the reference
    assert machine_costs() == Costs().scaled(4.0)
    save(_bench_results(0.0001, busy_cores_at_start=None))  # not measured there
    assert machine_costs() == Costs().scaled(0.5)
    legacy = _bench_results(0.0004)
    del legacy["machine"]["busy_cores_at_start"]  # type: ignore[attr-defined]
    save(legacy)  # saved before bench recorded it
    assert machine_costs() == Costs().scaled(2.0)


@pytest.mark.parametrize("machine", [
    {"busy_cores_at_start": usable_cores() - 0.2},  # other programs kept the cores busy
    {"usable_cores": usable_cores() + 1},  # another share of cores
    {"gil": not gil_enabled()},
])
def test_auto_leaves_out_a_bench_run_made_busy_or_elsewhere(tmp_path, monkeypatch, machine):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    save(_bench_results(0.0008, **machine))
    assert machine_costs() == Costs()


def test_bench_sees_how_busy_the_cpus_are():
    from bingfa.bench._report import busy_cores, machine

    assert "busy_cores_at_start" in machine()
    assert 0 <= busy_cores() <= os.cpu_count()
    # a process spinning through the sample counts as (about) a core
    spinning = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        assert busy_cores(over=0.5) >= 0.8
    finally:
        spinning.kill()
        spinning.wait(10)
