"""Running one external command safely: ``bf.run`` and, for asyncio, ``bf.arun``.

What they guard against, compared with a bare ``subprocess.Popen``:

- pipe deadlocks: both output streams are drained together, whatever the
  command writes and however much;
- orphans: every command runs in a session (and process group) of its own, and
  a timeout, Ctrl-C, task cancellation or an error ends the whole session
  (SIGTERM, then SIGKILL after a grace period), grandchildren included, also
  those that moved to a process group of their own, and reaps it; what the
  leader leaves behind in its group when it exits is killed too; and should
  the caller die, even by SIGKILL, its reaper process ends the commands it
  left running (see :mod:`._reaper`);
- lost output: what the command wrote before a timeout is kept on the result,
  and bytes that are not valid in the encoding are replaced, never dropped;
- unclear failures: a missing executable is a :class:`~bingfa.CommandNotFoundError`
  naming it, and ``check=True`` raises :class:`~bingfa.CommandError` with the
  tail of standard error.

Both run on a :class:`~._loop.CommandLoop`, the engine ``bf.run_many`` and
``bingfa run`` use for thousands of commands.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping

from ._loop import CommandLoop, Running
from ._result import CommandResult, make_result
from ._spawn import prepare

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._spawn import Command

__all__ = ["arun", "run"]


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
        timeout: seconds; when they pass the command's whole session is
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
        ValueError: an empty command, unbalanced quotes, a timeout out of range.
        TypeError: an argument of the wrong type (``input=5``, an ``env`` that
            is not a mapping of str to str...); the message names it.
        LookupError: an unknown ``encoding`` or ``errors`` handler.
        FileNotFoundError: ``cwd`` does not exist.

    Example::

        r = bf.run(["ping", "-qc", "4", host], timeout=10, text=True)
        if r.timed_out:
            print(host, "did not answer;", r.stdout)
    """
    args, argv, data = prepare(cmd, shell=shell, timeout=timeout, input=input,
                               encoding=encoding, errors=errors, env=env, cwd=cwd)
    commands = CommandLoop()
    try:
        started = commands.start(argv, input=data, timeout=timeout, env=env, cwd=cwd)
        while len(commands):
            commands.wait()
    finally:
        commands.close()  # on Ctrl-C or any error: the session is ended and reaped
    return _result(args, started, check, text, encoding, errors)


async def arun(
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
    """:func:`bingfa.run` for asyncio: ``result = await bf.arun(cmd)``.

    The event loop is never blocked and no thread is used: the command's
    pipes and exit are watched by the loop itself. Cancelling the awaiting
    task ends the command's whole session (SIGTERM, then SIGKILL) before
    the cancellation goes on. Arguments and errors are those of :func:`bingfa.run`.

    Example::

        results = await asyncio.gather(*(bf.arun(["ping", "-qc", "1", h], timeout=5)
                                         for h in hosts))
    """
    args, argv, data = prepare(cmd, shell=shell, timeout=timeout, input=input,
                               encoding=encoding, errors=errors, env=env, cwd=cwd)
    commands = CommandLoop()
    try:
        started = commands.start(argv, input=data, timeout=timeout, env=env, cwd=cwd)
        try:
            await _until_idle(commands)
        except BaseException:
            commands.stop(started)
            try:
                await _until_idle(commands)  # the grace period, without blocking the loop
            except BaseException:
                pass  # cancelled again: close() below finishes the job, blocking
            raise
    finally:
        commands.close()
    return _result(args, started, check, text, encoding, errors)


def _result(args: list[str] | str, finished: Running, check: bool, text: bool, encoding: str,
            errors: str) -> CommandResult:
    result = make_result(args, finished.returncode, finished.stdout, finished.stderr,
                         duration=finished.duration, timed_out=finished.timed_out, text=text,
                         encoding=encoding, errors=errors)
    return result.check() if check else result


async def _until_idle(commands: CommandLoop) -> None:
    """Drive ``commands`` from the running event loop until nothing runs."""
    loop = asyncio.get_running_loop()
    idle: asyncio.Future[None] = loop.create_future()
    timer: asyncio.TimerHandle | None = None

    def step() -> None:
        nonlocal timer
        if timer is not None:
            timer.cancel()
            timer = None
        commands.poll(0)
        if not len(commands):
            if not idle.done():
                idle.set_result(None)
            return
        deadline = commands.next_deadline()
        if deadline is not None:
            timer = loop.call_later(max(0.0, deadline - time.monotonic()), step)

    fd = commands.fileno()
    loop.add_reader(fd, step)
    try:
        step()
        await idle
    finally:
        loop.remove_reader(fd)
        if timer is not None:
            timer.cancel()
