"""Running external commands safely: ``bf.run``.

What it guards against, compared with a bare ``subprocess.Popen``:

- pipe deadlocks: both output streams are drained together, whatever the
  command writes and however much;
- orphans: every command runs in a session (and process group) of its own, and
  a timeout, Ctrl-C or an error ends the whole group (SIGTERM, then SIGKILL
  after a grace period), grandchildren included, and reaps it;
- lost output: what the command wrote before a timeout is kept on the result,
  and bytes that are not valid in the encoding are replaced, never dropped;
- unclear failures: a missing executable is a :class:`~bingfa.CommandNotFoundError`
  naming it, and ``check=True`` raises :class:`~bingfa.CommandError` with the
  tail of standard error.
"""

from __future__ import annotations

import os
import signal as signals
import subprocess
import time
from collections.abc import Mapping
from typing import Any

from ._children import DRAIN_AFTER_KILL, KILL_GRACE, command_argv
from ._cmdresult import CommandResult, make_result
from ._errors import CommandNotFoundError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._children import Command

__all__ = ["CommandResult", "run"]



def _end_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    """Terminate the command's whole process group, then kill it after ``grace``."""
    try:
        os.killpg(proc.pid, signals.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        pass
    try:
        # Grandchildren may outlive the leader: kill whatever is left in the group.
        os.killpg(proc.pid, signals.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _drain(proc: subprocess.Popen[bytes], partial: tuple[Any, Any]) -> tuple[bytes, bytes]:
    """What is left to read once the group is dead, without waiting forever.

    A grandchild that left the process group (``setsid``) may still hold the
    pipes; after DRAIN_AFTER_KILL seconds bingfa stops reading and keeps what
    it has.
    """
    out: bytes | None
    err: bytes | None
    try:
        out, err = proc.communicate(timeout=DRAIN_AFTER_KILL)
    except subprocess.TimeoutExpired as exc:
        out, err = _as_bytes(exc.stdout), _as_bytes(exc.stderr)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    except ValueError:  # pipes already closed
        out, err = partial
    return out or partial[0] or b"", err or partial[1] or b""


def _as_bytes(data: bytes | str | None) -> bytes | None:
    return data.encode() if isinstance(data, str) else data


def run(
    cmd: Command,
    *,
    input: bytes | str | None = None,
    timeout: float | None = None,
    check: bool = False,
    text: bool = False,
    encoding: str = "utf-8",
    errors: str = "replace",
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    shell: bool = False,
) -> CommandResult:
    """Run an external command to completion and return what it did.

    Args:
        cmd: a list of arguments, or a string (split like a shell would, or run
            by ``/bin/sh`` with ``shell=True``).
        input: bytes (or ``str``, encoded with ``encoding``) for its standard input;
            without it, standard input is empty.
        timeout: seconds; when they pass the command's whole process group is
            terminated, then killed, and the result has ``timed_out=True`` and
            the output written so far.
        check: raise :class:`~bingfa.CommandError` if it did not exit 0 in time.
        text: decode the output with ``encoding``; undecodable bytes are
            replaced (``errors="replace"``), never lost.
        env, cwd: its environment and working directory.
        shell: run ``cmd`` through ``/bin/sh``.

    Raises:
        CommandNotFoundError: the executable does not exist (also a
            ``FileNotFoundError``).
        CommandError: with ``check=True``, when the command failed.
        ValueError: an empty command, unbalanced quotes, a negative timeout.

    Example::

        r = bf.run(["ping", "-qc", "4", host], timeout=10, text=True)
        if r.timed_out:
            print(host, "did not answer;", r.stdout)
    """
    argv = command_argv(cmd, shell)
    if timeout is not None and (isinstance(timeout, bool) or timeout < 0):
        raise ValueError(f"timeout must be a non-negative number of seconds, got {timeout!r}")
    data = input.encode(encoding) if isinstance(input, str) else input
    start = time.perf_counter()
    try:
        proc = subprocess.Popen(
            argv, shell=shell, env=env, cwd=cwd,
            stdin=subprocess.PIPE if data is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True)  # its own process group, to end it whole
    except FileNotFoundError as exc:
        missing = argv[0] if isinstance(argv, list) else argv
        if cwd is not None and not os.path.isdir(cwd):
            raise
        raise CommandNotFoundError(f"command not found: {missing!r}", missing) from exc
    except PermissionError as exc:
        missing = argv[0] if isinstance(argv, list) else argv
        raise CommandNotFoundError(f"command cannot be run (permission denied): {missing!r}",
                                   missing) from exc
    timed_out = False
    try:
        out, err = proc.communicate(data, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        timed_out = True
        _end_group(proc, KILL_GRACE)
        out, err = _drain(proc, (exc.stdout, exc.stderr))
    except BaseException:  # Ctrl-C or anything else: leave nothing running
        _end_group(proc, KILL_GRACE)
        _drain(proc, (b"", b""))
        raise
    duration = time.perf_counter() - start
    returncode = proc.returncode
    if not timed_out:
        # The leader exited; anything it left running in its group goes too.
        try:
            os.killpg(proc.pid, signals.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    result = make_result(argv, returncode, out, err, duration=duration, timed_out=timed_out,
                         text=text, encoding=encoding, errors=errors)
    if check:
        result.check()
    return result
