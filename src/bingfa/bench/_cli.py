"""The ``bingfa bench`` command: options, progress bar, Ctrl-C, output files."""

from __future__ import annotations

import argparse
import json
import sys

from ._cache import save
from ._plot import check_plotting, plot
from ._run import new_report, run, steps
from ._workloads import WORKLOADS

__all__ = ["add_arguments", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``bingfa bench``'s options, on ``parser``."""
    names = ", ".join(w.name for w in WORKLOADS)
    parser.add_argument("--quick", action="store_true",
                        help="fewer and smaller runs: about 20 s on 2 cores (default: about 60 s)")
    parser.add_argument("--json", metavar="FILE", help="also write the results to FILE as JSON")
    parser.add_argument("--plot", metavar="FILE",
                        help="also draw the speed-ups to FILE (.png or .svg; needs matplotlib)")
    parser.add_argument("--only", metavar="NAMES",
                        help=f"comma-separated workloads to run, of: {names}")
    parser.add_argument("--no-save", action="store_true",
                        help="do not keep the results for mode='auto' (kept by default)")


def main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run the bench as ``args`` say; the exit status (130 after Ctrl-C)."""
    only = None
    if args.only:
        only = [name.strip() for name in args.only.split(",") if name.strip()]
        unknown = set(only) - {w.name for w in WORKLOADS}
        if unknown:
            parser.error(f"--only: unknown workload(s) {', '.join(sorted(unknown))}")
    if args.plot and (problem := check_plotting(args.plot)):
        parser.error(problem)
    try:
        report = new_report(args.quick)  # samples the CPUs for 0.2 s first
    except KeyboardInterrupt:
        return 130  # nothing measured yet
    status = 0
    from tqdm import tqdm

    # On stderr, and only on a terminal: the report on stdout stays clean.
    bar = tqdm(total=steps(only, args.quick), desc="bingfa bench", unit="run", file=sys.stderr,
               leave=False, disable=None)
    try:
        run(report, only, step=bar.set_postfix_str, done=lambda: bar.update(1))
    except KeyboardInterrupt:
        status = 130
    finally:
        bar.close()
    print(report.text())
    results = report.as_json()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    if args.plot and report.results:
        plot(report, args.plot)
    if not args.no_save and report.results:
        path = save(results)
        print(f"results kept in {path} (for mode='auto')")
    return status

