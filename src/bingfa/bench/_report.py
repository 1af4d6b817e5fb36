"""What ``bingfa bench`` found: medians, speed-ups, verdicts, the machine, JSON and a plot."""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from .._core._machine import gil_enabled, usable_cores
from ._workloads import Workload

__all__ = ["LABELS", "Report", "WorkloadResult", "gil_enabled", "machine"]

# Modes this close to the best time (a share of it) are named beside it, not below it.
TIE = 0.10
LABELS = {"serial": "serial", "thread": "threads", "process": "processes",
          "async": "coroutines", "gevent": "greenlets", "rpc": "bf.rpc call"}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> dict[str, Any]:
    """The facts a verdict depends on."""
    import multiprocessing

    from .._pool._engines._process import default_start_method

    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count() or 1,
        "usable_cores": usable_cores(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "gil": gil_enabled(),
        "start_methods": multiprocessing.get_all_start_methods(),
        "default_start_method": default_start_method(),
        "platform": f"{platform.system()} {platform.release()} {platform.machine()}",
        # Other programs' work as the run begins: figures taken on a busy
        # machine are not this machine's (mode="auto" leaves them out).
        "busy_cores_at_start": busy_cores(),
    }


def busy_cores(over: float = 0.2) -> float | None:
    """How many CPUs' worth of work the machine did over the next ``over`` seconds.

    Read from ``/proc/stat`` (Linux; None elsewhere), not the load average:
    that is a minute's decaying mean, still high a minute after a build or
    an install has finished.
    """
    def times() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
        return sum(fields), fields[3] + fields[4]  # all, idle + iowait

    try:
        total0, idle0 = times()
        time.sleep(over)
        total1, idle1 = times()
    except (OSError, ValueError, IndexError):
        return None
    elapsed = total1 - total0
    if elapsed <= 0:
        return None
    return round((os.cpu_count() or 1) * (1 - (idle1 - idle0) / elapsed), 2)


@dataclass
class WorkloadResult:
    """One workload's runs, by mode, and the modes that could not run (with why)."""

    workload: Workload
    tasks: int
    times: dict[str, list[float]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    planned: tuple[str, ...] = ()  # the modes to be timed (an interrupted run has fewer)

    def median(self, mode: str) -> float:
        """The median of ``mode``'s runs, in seconds."""
        return statistics.median(self.times[mode])

    def speedup(self, mode: str) -> float:
        """How many times faster than serial (for throughput work)."""
        return self.median("serial") / self.median(mode)

    def best(self) -> str | None:
        """The fastest mode measured (not the plain call, for round trips)."""
        timed = [mode for mode in self.times if mode != "serial" or self.workload.kind != "latency"]
        return min(timed, key=self.median) if timed else None

    def as_good(self) -> list[str]:
        """Modes within ``TIE`` of the best: a choice between them is a matter of taste."""
        best = self.best()
        if best is None:
            return []
        limit = self.median(best) * (1 + TIE)
        return [m for m in self.times if m != best and self.median(m) <= limit]

    def verdict(self) -> str:
        """One line: the mode to use, and what the others gave."""
        missing = [m for m in self.planned if m not in self.times]
        if missing:
            return self._verdict() + f" (not measured: {', '.join(LABELS[m] for m in missing)})"
        return self._verdict()

    def _verdict(self) -> str:
        title = self.workload.title
        if self.workload.kind == "latency":
            parts = [f"{_latency_label(m)} {_micro(self.median(m))} µs" for m in
                     sorted(self.times, key=self.median)]
            return f"{title}: " + ", ".join(parts)
        best = self.best()
        if best is None or "serial" not in self.times:
            return f"{title}: not measured"
        as_good = self.as_good()
        others = []
        for mode in self.times:
            if mode in (best, "serial", *as_good):
                continue
            note = ""
            if mode == "thread" and self.workload.name == "cpu" and gil_enabled() \
                    and self.speedup(mode) < 1.2:
                note = " because of the GIL"
            others.append(f"{LABELS[mode]} {self.speedup(mode):.2f}x{note}")
        if best == "serial":
            head = f"{title}: serial; nothing runs it faster here"
        else:
            head = f"{title}: {LABELS[best]}, {self.speedup(best):.1f}x"
        if as_good:
            head += " (as good: " + ", ".join(
                f"{LABELS[m]} {self.speedup(m):.2f}x" for m in as_good) + ")"
        return head + ("; " + ", ".join(others) if others else "")

    def as_json(self) -> dict[str, Any]:
        """What ``--json`` and the cache keep of this workload."""
        modes: dict[str, Any] = {}
        for mode, runs in self.times.items():
            entry: dict[str, Any] = {"runs": runs, "median": self.median(mode)}
            if self.workload.kind == "throughput" and "serial" in self.times:
                entry["speedup"] = self.speedup(mode)
            modes[mode] = entry
        return {"title": self.workload.title, "kind": self.workload.kind, "tasks": self.tasks,
                "modes": modes, "skipped": self.skipped, "best": self.best(),
                "as_good": self.as_good(),
                "verdict": self.verdict()}


@dataclass
class Report:
    """Everything one run measured, in the order it was measured."""

    quick: bool
    machine: dict[str, Any]
    results: list[WorkloadResult] = field(default_factory=list)
    complete: bool = False

    def machine_line(self) -> str:
        """The machine in one line, to head the report and the plot."""
        m = self.machine
        gil = "GIL" if m["gil"] else "free-threaded (no GIL)"
        return (f"{m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable); {m['python']}, "
                f"{gil}; start methods {', '.join(m['start_methods'])} "
                f"(default {m['default_start_method']}); {m['platform']}")

    def text(self) -> str:
        """The tables and verdicts, as printed."""
        lines = [f"bingfa bench{' --quick' if self.quick else ''} on {self.machine_line()}", ""]
        for result in self.results:
            if not result.times:
                continue
            lines.append(_table(result))
            lines.append("")
        lines.append("Verdicts:")
        lines += [f"  {r.verdict()}" for r in self.results if r.times]
        if not self.complete:
            lines.append("(interrupted: only what was measured so far)")
        return "\n".join(lines)

    def as_json(self) -> dict[str, Any]:
        """The whole report as JSON-ready data (``--json``, the cache)."""
        return {"quick": self.quick, "complete": self.complete, "machine": self.machine,
                "workloads": {r.workload.name: r.as_json() for r in self.results}}


def _table(result: WorkloadResult) -> str:
    workload = result.workload
    runs = len(next(iter(result.times.values())))
    if workload.kind == "latency":
        head = f"{workload.title}: µs per round trip, median of {runs} runs"
        rows = [f"  {_latency_label(m):<12} {_micro(result.median(m)):>10} µs"
                for m in result.times]
    else:
        head = f"{workload.title}: {result.tasks} tasks, median of {runs} runs"
        rows = []
        for mode in result.times:
            speed = f"{result.speedup(mode):>7.2f}x serial" if "serial" in result.times else ""
            rows.append(f"  {LABELS[mode]:<12} {result.median(mode) * 1e3:>10.1f} ms {speed}")
    rows += [f"  {LABELS[m]:<12} {why}" for m, why in result.skipped.items()]
    return "\n".join([head, *rows])


def _latency_label(mode: str) -> str:
    return "plain call" if mode == "serial" else LABELS[mode]


def _micro(seconds: float) -> str:
    micro = seconds * 1e6
    return f"{micro:.1f}" if micro >= 1 else f"{micro:.2f}"
