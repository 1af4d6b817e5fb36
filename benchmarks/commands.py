"""External commands: bingfa beside the standard library and the shell tools, in one run.

Three sections; in each, the implementations run interleaved (every repeat runs
each of them once, in a rotating order), so the noise of a shared machine hits
them alike, and the tables show medians and bingfa's ratio to each peer.

  run   ``bf.run([true])`` vs ``subprocess.run([true], capture_output=True)``:
        the mean time per call over ``--calls`` calls.
        Target: bf.run <= 1.2x subprocess.run.
  cli   whole commands, each a fresh process with its start-up included, over a
        file of the lines 1..500:
          ``bingfa run -j 2 true :::: FILE``
          ``xargs -P2 -n1 true < FILE``
          ``parallel --will-cite -j2 true :::: FILE``
        Targets: bingfa run <= 1.1x xargs, and >= 4x faster than GNU parallel.
        The bingfa package is byte-compiled first (see ``precompile_bingfa``).
  many  in process, 500 runs of ``true``, 2 at a time: ``bf.run_many`` vs a
        ``ThreadPoolExecutor(2)`` mapping ``subprocess.run``. Reported only.

GNU parallel is optional: install it with ``apt-get install parallel``; without
it, its row and its target are skipped. Targets are informational: the exit
status is 0 whether they pass or not, but a command that fails stops the run.

Usage, from the repository root, with bingfa installed::

    python benchmarks/commands.py [--only run,cli,many] [--repeats 7] [--calls 500]
                                  [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import bingfa as bf

SECTIONS = ("run", "cli", "many")
JOBS = 2  # commands at a time in the cli and many sections: the cores of the reference machine
CLI_LINES = 500  # arguments in the file given to bingfa run, xargs and parallel
MANY_COMMANDS = 500

# Row names of the cli section (FILE is the temporary file of arguments).
CLI_BINGFA = f"bingfa run -j {JOBS} true :::: FILE"
CLI_XARGS = f"xargs -P{JOBS} -n1 true < FILE"
CLI_PARALLEL = f"parallel --will-cite -j{JOBS} true :::: FILE"

TARGET_RUN_VS_SUBPROCESS = 1.2
TARGET_CLI_VS_XARGS = 1.1
TARGET_CLI_X_FASTER_THAN_PARALLEL = 4.0

Section = dict[str, Any]  # one section's medians, ratios and targets, as written to --json


# --- measuring and reporting -------------------------------------------------


def median_seconds(runners: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Median wall time of each runner over ``repeats`` interleaved rounds."""
    for call in runners.values():
        call()  # warm-up: first imports, page cache and allocations are not what we measure
    names = list(runners)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_number in range(repeats):
        # Rotate who goes first, so no implementation always runs right after
        # the same neighbour (a CPU-heavy peer can slow down whoever follows it).
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            runners[name]()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(samples[name]) for name in names}


def print_table(medians: dict[str, float], ours: str, heading: str,
                show: Callable[[float], str]) -> dict[str, float]:
    """Print one row per implementation; return bingfa's time ratio to each peer."""
    ratios = {name: medians[ours] / median for name, median in medians.items() if name != ours}
    width = max(len(heading), *map(len, medians))
    print(f"\n  {heading:<{width}} {'median':>12} {'bingfa/peer':>12}")
    for name, median in medians.items():
        ratio = f"{ratios[name]:.2f}x" if name in ratios else "-"
        print(f"  {name:<{width}} {show(median):>12} {ratio:>12}")
    return ratios


def check_target(label: str, value: float, passed: bool) -> dict[str, Any]:
    """Print one target line with its verdict; return it for the JSON report."""
    print(f"  target: {label}: {value:.2f}x {'PASS' if passed else 'FAIL'}")
    return {"target": label, "value": round(value, 4), "pass": passed}


def as_microseconds(seconds: float) -> str:
    return f"{seconds * 1e6:.0f} us"


def as_seconds(seconds: float) -> str:
    return f"{seconds:.3f} s"


def print_heading(title: str) -> None:
    print(f"\n== {title} ==")


# --- section run: bf.run vs subprocess.run -----------------------------------


def bench_run(true: str, calls: int, repeats: int) -> Section:
    print_heading("bf.run vs subprocess.run")
    print(f"one trivial command ({true}), {calls} calls per run, "
          f"median of {repeats} interleaved runs")
    ours, peer = "bf.run([true])", "subprocess.run([true], capture_output=True)"

    def with_bingfa() -> None:
        for _ in range(calls):
            if bf.run([true]).returncode != 0:
                raise RuntimeError(f"{ours} did not exit 0")

    def with_subprocess() -> None:
        for _ in range(calls):
            if subprocess.run([true], capture_output=True).returncode != 0:
                raise RuntimeError(f"{peer} did not exit 0")

    totals = median_seconds({ours: with_bingfa, peer: with_subprocess}, repeats)
    per_call = {name: total / calls for name, total in totals.items()}
    ratios = print_table(per_call, ours, "implementation (per call)", as_microseconds)
    ratio = ratios[peer]
    print()
    target = check_target(f"bf.run <= {TARGET_RUN_VS_SUBPROCESS}x subprocess.run",
                          ratio, ratio <= TARGET_RUN_VS_SUBPROCESS)
    return {"unit": "seconds per call", "medians": per_call, "ratios": ratios,
            "targets": [target]}


# --- section cli: bingfa run vs xargs vs GNU parallel ------------------------


def bingfa_command() -> tuple[list[str], str]:
    """The argv that starts the bingfa CLI, and a line saying which one it is.

    The console script is what users type; ``python -m`` is only a fallback
    for an environment without one.
    """
    script = Path(sys.executable).parent / "bingfa"
    if script.exists():
        return [str(script)], f"console script {script}"
    return ([sys.executable, "-m", "bingfa._cli"],
            f"{sys.executable} -m bingfa._cli (no console script at {script})")


def precompile_bingfa() -> None:
    """Byte-compile the bingfa package, as ``pip install`` would have done.

    With PYTHONDONTWRITEBYTECODE set and an editable install, no .pyc files
    are ever written, so every start of ``bingfa`` would compile the package's
    sources again: a cost real users, whose pip compiled at install, never pay.
    """
    package_dir = Path(bf.__file__).parent
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(package_dir)], check=True)
    setting = os.environ.get("PYTHONDONTWRITEBYTECODE")
    print(f"bytecode: ran python -m compileall -q {package_dir} first, so bingfa starts "
          f"as after a pip install (PYTHONDONTWRITEBYTECODE={setting!r} and an editable "
          f"install would otherwise recompile the package's .py files at every start)")


def run_checked(argv: list[str], stdin: Any = subprocess.DEVNULL) -> None:
    """Run one whole command with its output discarded; raise unless it exits 0."""
    subprocess.run(argv, stdin=stdin, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=True)


def cli_runners(arguments: Path, bingfa_argv: list[str],
                parallel: str | None) -> dict[str, Callable[[], None]]:
    """The commands to time, by their row name; GNU parallel only if installed."""

    def with_bingfa() -> None:
        run_checked([*bingfa_argv, "run", "-j", str(JOBS), "true", "::::", str(arguments)])

    def with_xargs() -> None:
        # xargs reads its arguments from stdin: open the file for it directly,
        # so no shell start-up is added to its time.
        with arguments.open("rb") as stdin:
            run_checked(["xargs", f"-P{JOBS}", "-n1", "true"], stdin=stdin)

    def with_parallel() -> None:
        assert parallel is not None
        run_checked([parallel, "--will-cite", f"-j{JOBS}", "true", "::::", str(arguments)])

    runners = {CLI_BINGFA: with_bingfa, CLI_XARGS: with_xargs}
    if parallel is not None:
        runners[CLI_PARALLEL] = with_parallel
    return runners


def parallel_version(parallel: str) -> str:
    first_line = subprocess.run([parallel, "--version"], capture_output=True,
                                text=True, check=True).stdout.splitlines()[:1]
    return first_line[0] if first_line else "unknown version"


def bench_cli(repeats: int) -> Section:
    print_heading("bingfa run vs xargs vs GNU parallel")
    bingfa_argv, how = bingfa_command()
    print(f"bingfa: {how}")
    parallel = shutil.which("parallel")
    if parallel is None:
        print("GNU parallel: not found on PATH; its row and target are skipped "
              "(install it with: apt-get install parallel)")
    else:
        print(f"GNU parallel: {parallel} ({parallel_version(parallel)})")
    precompile_bingfa()
    print(f"whole commands, start-up included, over FILE = the lines 1..{CLI_LINES}; "
          f"median of {repeats} interleaved runs")

    with tempfile.TemporaryDirectory(prefix="bingfa-bench-") as tmp:
        arguments = Path(tmp) / "arguments.txt"
        arguments.write_text("".join(f"{n}\n" for n in range(1, CLI_LINES + 1)))
        runners = cli_runners(arguments, bingfa_argv, parallel)
        medians = median_seconds(runners, repeats)

    ratios = print_table(medians, CLI_BINGFA, "command", as_seconds)
    print()
    targets = [check_target(f"bingfa run <= {TARGET_CLI_VS_XARGS}x xargs", ratios[CLI_XARGS],
                            ratios[CLI_XARGS] <= TARGET_CLI_VS_XARGS)]
    if CLI_PARALLEL in ratios:
        times_faster = 1 / ratios[CLI_PARALLEL]
        targets.append(check_target(
            f"bingfa run >= {TARGET_CLI_X_FASTER_THAN_PARALLEL:g}x faster than GNU parallel",
            times_faster, times_faster >= TARGET_CLI_X_FASTER_THAN_PARALLEL))
    return {"unit": "seconds per command", "bingfa_command": bingfa_argv,
            "parallel": parallel, "medians": medians, "ratios": ratios, "targets": targets}


# --- section many: bf.run_many vs a thread pool of subprocess.run ------------


def require_success(returncodes: list[int], what: str) -> None:
    failed = sum(code != 0 for code in returncodes)
    if failed or len(returncodes) != MANY_COMMANDS:
        raise RuntimeError(f"{what}: {len(returncodes)} results, {failed} not exiting 0")


def bench_many(true: str, repeats: int) -> Section:
    print_heading("bf.run_many vs a thread pool of subprocess.run")
    print(f"{MANY_COMMANDS} runs of {true}, {JOBS} at a time, in process; "
          f"median of {repeats} interleaved runs")
    commands = [[true]] * MANY_COMMANDS
    ours = f"list(bf.run_many([[true]] * {MANY_COMMANDS}, jobs={JOBS}))"
    peer = f"ThreadPoolExecutor({JOBS}).map(subprocess.run([true], capture_output=True))"

    def with_run_many() -> None:
        results = list(bf.run_many(commands, jobs=JOBS))
        require_success([result.returncode for result in results], ours)

    def run_captured(command: list[str]) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(command, capture_output=True)

    def with_thread_pool() -> None:
        # A new pool every time: run_many sets up its own machinery per call too.
        with ThreadPoolExecutor(JOBS) as pool:
            results = list(pool.map(run_captured, commands))
        require_success([result.returncode for result in results], peer)

    medians = median_seconds({ours: with_run_many, peer: with_thread_pool}, repeats)
    ratios = print_table(medians, ours, f"implementation ({MANY_COMMANDS} commands)",
                         as_seconds)
    return {"unit": f"seconds per {MANY_COMMANDS} commands", "medians": medians,
            "ratios": ratios, "targets": []}


# --- command line ------------------------------------------------------------


def section_list(text: str) -> list[str]:
    """``--only`` value: comma-separated section names, checked."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(names) - set(SECTIONS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated subset of {','.join(SECTIONS)}, got {text!r}")
    return names


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", type=section_list, default=list(SECTIONS),
                        help=f"sections to run, comma-separated (default: {','.join(SECTIONS)})")
    parser.add_argument("--repeats", type=positive_int, default=7,
                        help="interleaved runs per implementation; medians are reported "
                             "(default 7)")
    parser.add_argument("--calls", type=positive_int, default=500,
                        help="calls per run in the run section (default 500)")
    parser.add_argument("--json", type=Path, metavar="PATH",
                        help="also write all medians, ratios and targets to PATH as JSON")
    return parser.parse_args()


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "bingfa": bf.__version__}


def main() -> None:
    args = parse_args()
    true = shutil.which("true") or "true"
    info = machine()
    print(f"machine: {info['cpus']} CPUs, {info['platform']}, "
          f"CPython {info['python']}, bingfa {info['bingfa']}")

    sections: dict[str, Section] = {}
    if "run" in args.only:
        sections["run"] = bench_run(true, args.calls, args.repeats)
    if "cli" in args.only:
        sections["cli"] = bench_cli(args.repeats)
    if "many" in args.only:
        sections["many"] = bench_many(true, args.repeats)

    if args.json is not None:
        report = {"machine": info, "repeats": args.repeats, "calls": args.calls,
                  "sections": sections}
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
