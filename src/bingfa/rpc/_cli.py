"""``bingfa rpc serve`` and ``bingfa rpc call`` (their options are in bingfa/_cli.py).

    bingfa rpc serve MODULE:ATTR --address tcp://0.0.0.0:8000 [--secret-file F]
    bingfa rpc call tcp://HOST:8000 METHOD [JSON_ARG ...] [--secret-file F]

``serve`` imports ``MODULE`` (from the current directory too) and serves
``ATTR``: an object, a dict of functions, or a class (instantiated without
arguments). ``call`` sends each argument as JSON (``'"text"'``, ``42``,
``'[1, 2]'``), prints the result as JSON, and a stream's items one per line.

Every error is one line on stderr, ``bingfa rpc serve: error: ...``, naming
the address, file or module it is about; no traceback and no usage line (they
would bury it). Exit status 2: the command cannot start as given (a target
that does not import, a secret file that cannot be read, an argument that is
not JSON, an address that does not parse); 1: it started and failed (the
address is in use, nobody listens there, the remote method raised).
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


class _Failed(Exception):
    """What the command prints as its one line, and its exit status."""

    def __init__(self, message: str, status: int = EXIT_BAD_USAGE) -> None:
        super().__init__(message)
        self.status = status


def _secret(path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as handle:
            secret = handle.read().strip()
    except OSError as exc:
        raise _Failed(f"cannot read the secret file {path!r}: {exc.strerror or exc}") from None
    if not secret:
        raise _Failed(f"the secret file {path!r} is empty")
    return secret


def _target(spec: str) -> Any:
    module_name, colon, attr = spec.partition(":")
    if not colon or not module_name or not attr:
        raise _Failed(f"the target must look like MODULE:ATTR, not {spec!r}")
    if "" not in sys.path:
        sys.path.insert(0, "")  # a module in the current directory, as `python -m` finds
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # whatever its code raised (SyntaxError too): one line
        raise _Failed(f"cannot import {module_name!r}: {_one_line(exc)}") from None
    target = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise _Failed(f"{module_name!r} has no attribute {attr!r}") from None
    if isinstance(target, type):
        # A command line cannot write Class(): it is instantiated without arguments.
        try:
            target = target()
        except Exception as exc:
            raise _Failed(f"cannot make an instance of {spec}, which is called without "
                          f"arguments (point MODULE:ATTR at an instance instead): "
                          f"{_one_line(exc)}") from None
    return target


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


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
    try:
        if args.rpc_command == "serve":
            return _serve(args)
        return _call(args)
    except _Failed as failed:
        print(f"bingfa rpc {args.rpc_command}: error: {failed}", file=sys.stderr)
        return failed.status


def _serve(args: argparse.Namespace) -> int:
    from . import serve

    secret = _secret(args.secret_file)
    if secret is not None and len(secret) < 16:
        raise _Failed(f"the secret in {args.secret_file!r} is {len(secret)} bytes long: a "
                      f"server's secret needs at least 16")
    if args.serializer == "pickle" and secret is None:
        raise _Failed("--serializer pickle lets any client run code on this server: it needs "
                      "--secret-file FILE (a file holding a secret of 16 bytes or more)")
    target = _target(args.target)
    try:
        server = serve(target, args.address, secret=secret, serializer=args.serializer)
    except OSError as exc:  # it names the address: "cannot listen on tcp://...: in use"
        raise _Failed(exc.strerror or str(exc), EXIT_REMOTE_ERROR) from None
    except (ValueError, TypeError) as exc:
        raise _Failed(str(exc)) from None
    print(f"serving {args.target} at {server.address} "
          f"({', '.join(sorted(server._methods))})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    return 0


def _call(args: argparse.Namespace) -> int:
    from . import AuthenticationError, connect
    from ._client_core import SECRET_REQUIRED

    values = []
    for n, text in enumerate(args.args, 1):
        try:
            values.append(json.loads(text))
        except json.JSONDecodeError as exc:
            raise _Failed(f"argument {n} ({text!r}) is not JSON: {exc.msg}; "
                          "quote text as '\"text\"'") from None
    secret = _secret(args.secret_file)
    try:
        client = connect(args.address, secret=secret)
    except ValueError as exc:
        raise _Failed(str(exc)) from None
    except AuthenticationError as exc:
        why = str(exc)
        if secret is None and why.startswith(SECRET_REQUIRED):
            why = f"{SECRET_REQUIRED}: pass --secret-file FILE (a file holding it)"
        raise _Failed(f"cannot connect to {args.address}: {why}", EXIT_REMOTE_ERROR) from None
    except OSError as exc:
        raise _Failed(f"cannot connect to {args.address}: {exc.strerror or exc}",
                      EXIT_REMOTE_ERROR) from None
    with client:
        try:
            result = client.call(args.method, *values, timeout=args.timeout)
            if hasattr(result, "__next__"):
                for item in result:
                    print(_to_json(item), flush=True)
            else:
                print(_to_json(result))
        except Exception as exc:
            print(f"bingfa rpc call: {_one_line(exc)}", file=sys.stderr)
            return EXIT_REMOTE_ERROR
    return 0
