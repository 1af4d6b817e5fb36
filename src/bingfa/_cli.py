"""The ``bingfa`` command line.

Imports stay inside the subcommands: ``bingfa --version`` must start as fast
as Python does.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing and argparse cost milliseconds that `bingfa run` must not pay
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from typing import Any

__all__ = ["main"]

# Optional extras: (extra name, module that proves it is installed)
EXTRAS = [
    ("dask", "distributed"),
    ("ray", "ray"),
    ("gevent", "gevent"),
    ("twisted", "twisted"),
    ("uvloop", "uvloop"),
    ("bench: mpire", "mpire"),
    ("bench: joblib", "joblib"),
    ("bench: loky", "loky"),
    ("bench: pebble", "pebble"),
    ("bench: rpyc", "rpyc"),
    ("bench: Pyro5", "Pyro5"),
]


def _version() -> str:
    from ._version import __version__

    return __version__


def _installed(module: str) -> str | None:
    """The version of an installed module, or None, without importing it."""
    import importlib.metadata
    import importlib.util

    if importlib.util.find_spec(module) is None:
        return None
    dist = {"distributed": "distributed", "Pyro5": "Pyro5"}.get(module, module)
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "installed"


def info() -> str:
    """What ``bingfa info`` prints: this machine as bingfa sees it."""
    import os
    import platform

    from ._core._machine import usable_cores
    from ._pool._engines import mode_names
    from ._pool._engines._launcher import START_METHODS
    from ._pool._engines._process import default_start_method

    usable = usable_cores()
    lines = [
        f"bingfa {_version()}",
        f"python {platform.python_version()} ({platform.python_implementation()}) "
        f"on {platform.system()} {platform.release()} {platform.machine()}",
        f"cores: {os.cpu_count()} (usable by this process: {usable})",
        f"start methods: {', '.join(START_METHODS)} "
        f"(default: {default_start_method()})",
        f"modes: {', '.join(('auto', *mode_names()))}",
        "optional extras:",
    ]
    for extra, module in EXTRAS:
        version = _installed(module)
        state = version if version else "not installed"
        lines.append(f"  {extra:<14} {state}")
    return "\n".join(lines)


def _square(x: int) -> int:
    return x * x


def demo(n: int, mode: str, workers: int | None) -> str:
    """What ``bingfa demo`` prints: a small map, checked and timed."""
    import time

    from ._pool._pool import Pool

    with Pool(workers, mode=mode) as pool:
        start = time.perf_counter()
        results = pool.map(_square, range(n))
        elapsed = time.perf_counter() - start
        workers, ran_in = pool.workers, pool.mode
    expected = sum(x * x for x in range(n))
    status = "ok" if sum(results) == expected else "WRONG"
    how = f"{ran_in} (chosen by mode='auto')" if mode == "auto" else mode
    return (f"map(x*x) over {n:,} items on {workers} {how} workers: "
            f"{elapsed * 1e3:.1f} ms, sum {sum(results):,} ({status})")


def _add_rpc_parser(sub: Any) -> None:
    """``bingfa rpc serve`` and ``bingfa rpc call`` (run by bingfa/rpc/_cli.py)."""
    rpc = sub.add_parser("rpc", help="serve an object over RPC, or call a server")
    commands = rpc.add_subparsers(dest="rpc_command", metavar="{serve,call}", required=True)
    serve = commands.add_parser("serve", help="serve MODULE:ATTR until Ctrl-C")
    serve.add_argument("target", metavar="MODULE:ATTR",
                       help="what to serve: an object, a dict of functions, or a class")
    serve.add_argument("--address", default="tcp://127.0.0.1:0",
                       help="tcp://HOST:PORT or unix:///PATH (default: a free local port)")
    serve.add_argument("--secret-file", help="a file holding the secret clients must know")
    serve.add_argument("--serializer", default="msgpack", choices=["msgpack", "pickle"])
    call = commands.add_parser("call", help="call METHOD on the server at ADDRESS")
    call.add_argument("address", metavar="ADDRESS")
    call.add_argument("method", metavar="METHOD")
    call.add_argument("args", metavar="JSON_ARG", nargs="*",
                      help="arguments, each as JSON: 42, '\"text\"', '[1, 2]'")
    call.add_argument("--secret-file", help="a file holding the server's secret")
    call.add_argument("--timeout", type=float, default=None, help="seconds (default: none)")


def _parser() -> argparse.ArgumentParser:
    import argparse

    parser = argparse.ArgumentParser(
        prog="bingfa", description="bingfa (并发): one fast API for Python concurrency.")
    parser.add_argument("--version", action="version", version=f"bingfa {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("run", help="run a command for each argument, several at a time "
                   "(GNU parallel's core; see bingfa run --help)", add_help=False)
    sub.add_parser("info", help="show Python, cores, start methods and installed extras")
    _add_rpc_parser(sub)
    bench = sub.add_parser("bench", help="time serial, threads, processes, coroutines and "
                           "greenlets on this machine, and say which to use for what")
    from .bench._cli import add_arguments

    add_arguments(bench)
    demo_p = sub.add_parser("demo", help="run a small parallel map and check its result")
    demo_p.add_argument("-n", type=int, default=100_000, help="items to map (default 100000)")
    demo_p.add_argument("--mode", default="process", choices=["auto", "thread", "process"])
    demo_p.add_argument("-j", "--workers", type=int, default=None, help="workers (default: cores)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``bingfa`` command; returns the exit status."""
    args_list = sys.argv[1:] if argv is None else list(argv)
    if args_list[:1] == ["run"]:
        # Its own parser: GNU parallel's syntax (:::, ::::) is not argparse's,
        # and argparse's import would be paid by every one of its start-ups.
        from ._commands._cli import main_run

        return main_run(args_list[1:])
    parser = _parser()
    args = parser.parse_args(args_list)
    if args.command == "info":
        print(info())
        return 0
    if args.command == "demo":
        if args.n < 0:
            parser.error("-n must be >= 0")
        if args.workers is not None and args.workers <= 0:
            parser.error("--workers must be a positive integer")
        print(demo(args.n, args.mode, args.workers))
        return 0
    if args.command == "bench":
        from .bench._cli import main as run_bench

        return run_bench(args, parser)
    if args.command == "rpc":
        from .rpc._cli import run as run_rpc

        return run_rpc(args, parser)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
