"""External commands: bingfa beside the standard library, in one run.

Workload: run one trivial command (``true``) and collect its result, many times.
bingfa's ``bf.run`` and ``subprocess.run(..., capture_output=True)`` run
interleaved, so machine noise hits both alike; the table shows medians of the
per-call mean and bingfa's ratio.

    python benchmarks/commands.py [--calls 500] [--repeats 7]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable

import bingfa as bf

TARGET_RUN_VS_SUBPROCESS = 1.2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    true = shutil.which("true") or "true"
    print(f"one trivial command ({true}), {args.calls} calls per run, "
          f"median of {args.repeats} interleaved runs")
    print(f"machine: {os.cpu_count()} CPUs, {platform.platform()}, "
          f"CPython {platform.python_version()}, bingfa {bf.__version__}")

    def with_bingfa() -> None:
        assert bf.run([true]).returncode == 0

    def with_subprocess() -> None:
        assert subprocess.run([true], capture_output=True).returncode == 0

    runners: list[tuple[str, Callable[[], None]]] = [
        ("bf.run([true])", with_bingfa),
        ("subprocess.run([true], capture_output=True)", with_subprocess),
    ]
    for _, call in runners:
        call()
    times: dict[str, list[float]] = {name: [] for name, _ in runners}
    for _ in range(args.repeats):
        for name, call in runners:
            start = time.perf_counter()
            for _ in range(args.calls):
                call()
            times[name].append((time.perf_counter() - start) / args.calls)
    ours = statistics.median(times["bf.run([true])"])
    print(f"\n  {'implementation':<46} {'per call':>10} {'bingfa ratio':>13}")
    for name, samples in times.items():
        median = statistics.median(samples)
        ratio = "-" if name.startswith("bf.") else f"{ours / median:.2f}x"
        print(f"  {name:<46} {median * 1e6:>7.0f} us {ratio:>13}")
    ratio = ours / statistics.median(times["subprocess.run([true], capture_output=True)"])
    verdict = "PASS" if ratio <= TARGET_RUN_VS_SUBPROCESS else "FAIL"
    print(f"\n  target: bf.run <= {TARGET_RUN_VS_SUBPROCESS}x subprocess.run: "
          f"{ratio:.2f}x {verdict}")


if __name__ == "__main__":
    main()
