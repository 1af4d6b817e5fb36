"""``bingfa rpc serve`` and ``bingfa rpc call`` (their options are in bingfa/_cli.py).

    bingfa rpc serve MODULE:ATTR --address tcp://0.0.0.0:8000 [--secret-file F]
    bingfa rpc call tcp://HOST:8000 METHOD [JSON_ARG ...] [--secret-file F]

``serve`` imports ``MODULE`` (from the current directory too) and serves
``ATTR``: an object, a dict of functions, or a class (instantiated without
arguments). ``call`` sends each argument as JSON (``'"text"'``, ``42``,
``'[1, 2]'``), prints the result as JSON, and a stream's items one per line.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Any

__all__ = ["run"]

EXIT_REMOTE_ERROR = 1
EXIT_BAD_USAGE = 2


def _secret(path: str | None, parser: argparse.ArgumentParser) -> bytes | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as handle:
            secret = handle.read().strip()
    except OSError as exc:
        parser.error(f"cannot read the secret file {path!r}: {exc.strerror or exc}")
    if not secret:
        parser.error(f"the secret file {path!r} is empty")
    return secret


def _target(spec: str, parser: argparse.ArgumentParser) -> Any:
    module_name, colon, attr = spec.partition(":")
    if not colon or not module_name or not attr:
        parser.error(f"the target must look like MODULE:ATTR, not {spec!r}")
    if "" not in sys.path:
        sys.path.insert(0, "")  # a module in the current directory, as `python -m` finds
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        parser.error(f"cannot import {module_name!r}: {exc}")
    target = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            parser.error(f"{module_name!r} has no attribute {attr!r}")
    return target() if isinstance(target, type) else target


def _to_json(value: Any) -> str:
    def fallback(obj: Any) -> Any:
        if isinstance(obj, (set, frozenset, tuple)):
            return list(obj)
        if isinstance(obj, bytes):
            return obj.decode("utf-8", "backslashreplace")
        return str(obj)

    return json.dumps(value, default=fallback, ensure_ascii=False)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Carry out ``bingfa rpc ...``; the exit status."""
    from . import connect, serve

    if args.rpc_command == "serve":
        target = _target(args.target, parser)
        try:
            server = serve(target, args.address, secret=_secret(args.secret_file, parser),
                           serializer=args.serializer)
        except (ValueError, TypeError, OSError) as exc:
            parser.error(str(exc))
        print(f"serving {args.target} at {server.address} "
              f"({', '.join(sorted(server._methods))})", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            print("stopped", file=sys.stderr)
        return 0
    values = []
    for n, text in enumerate(args.args, 1):
        try:
            values.append(json.loads(text))
        except json.JSONDecodeError as exc:
            parser.error(f"argument {n} ({text!r}) is not JSON: {exc.msg}; "
                         "quote text as '\"text\"'")
    try:
        client = connect(args.address, secret=_secret(args.secret_file, parser))
    except ValueError as exc:
        parser.error(str(exc))
    except OSError as exc:
        print(f"bingfa rpc call: cannot connect to {args.address}: {exc}", file=sys.stderr)
        return EXIT_REMOTE_ERROR
    with client:
        try:
            result = client.call(args.method, *values, timeout=args.timeout)
            if hasattr(result, "__next__"):
                for item in result:
                    print(_to_json(item), flush=True)
            else:
                print(_to_json(result))
        except Exception as exc:
            print(f"bingfa rpc call: {type(exc).__name__}: {exc}", file=sys.stderr)
            return EXIT_REMOTE_ERROR
    return 0
