"""Running the workloads: one (workload, mode) step at a time, into a Report."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from ._measure import calibrate, runner, server_process
from ._report import Report, WorkloadResult, machine
from ._workloads import WORKLOADS, Workload

__all__ = ["SETTINGS", "new_report", "plan", "run", "steps"]

# (serial seconds each measurement aims at, repeats) for --quick and the default run
SETTINGS = {True: (0.25, 2), False: (0.6, 3)}


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def plan(only: list[str] | None) -> list[tuple[Workload, list[str], dict[str, str]]]:
    """The workloads to run, each with the modes to time and those skipped (and why)."""
    chosen = []
    for workload in WORKLOADS:
        if only and workload.name not in only:
            continue
        if workload.needs and not _installed(workload.needs):
            continue
        modes, skipped = [], {}
        for mode in workload.modes:
            if mode == "gevent" and not _installed("gevent"):
                skipped[mode] = "not installed (pip install 'bingfa[gevent]')"
            else:
                modes.append(mode)
        if workload.kind == "throughput" and not workload.waits:
            skipped["async"] = "one thread, as serial: coroutines only help with waiting"
        chosen.append((workload, modes, skipped))
    return chosen


def run(report: Report, only: list[str] | None = None,
        step: Callable[[str], Any] | None = None,
        done: Callable[[], Any] | None = None) -> None:
    """Measure into ``report`` (it holds what was measured, should this be interrupted).

    ``step(description)`` is called as each measurement starts, ``done()`` as
    it ends.
    """
    budget, repeats = SETTINGS[report.quick]
    chosen = plan(only)
    with _maybe_server(any(w.name == "socket" for w, _, _ in chosen)) as port:
        for workload, modes, skipped in chosen:
            arg = port if workload.name == "socket" else workload.size
            tasks = calibrate(workload, arg, budget)
            result = WorkloadResult(workload, tasks, skipped=dict(skipped), planned=tuple(modes))
            report.results.append(result)
            with ExitStack() as stack:
                runs = {}
                for mode in modes:
                    if step is not None:
                        step(f"{workload.name}: starting {mode}")
                    runs[mode] = stack.enter_context(runner(workload, mode, arg, tasks))
                # The modes take turns, once per repeat: a change in the
                # machine's load then falls on all of them alike.
                for _ in range(repeats):
                    for mode in modes:
                        if step is not None:
                            step(f"{workload.name}: {mode}")
                        seconds = runs[mode]()  # interrupted: no entry, not an empty one
                        result.times.setdefault(mode, []).append(seconds)
                        if done is not None:
                            done()
    report.complete = True


@contextmanager
def _maybe_server(wanted: bool) -> Iterator[int]:
    if not wanted:
        yield 0
        return
    with server_process("socket") as port:
        yield int(port)


def steps(only: list[str] | None, quick: bool) -> int:
    """How many measurements a run makes (for the progress bar)."""
    repeats = SETTINGS[quick][1]
    return sum(len(modes) * repeats for _, modes, _ in plan(only))


def new_report(quick: bool) -> Report:
    """An empty report for this machine."""
    return Report(quick=quick, machine=machine())
