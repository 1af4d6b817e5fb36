"""What an external command did: :class:`CommandResult`, and how its failure reads.

Kept apart from the code that runs commands so that ``bingfa run`` can use it
without importing :mod:`subprocess`.
"""

from __future__ import annotations

import shlex
import signal as signals
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .._core._errors import CommandError

__all__ = ["CommandResult", "failure_message", "make_result", "signal_name"]

STDERR_TAIL_LINES = 10


@dataclass(frozen=True)
class CommandResult:
    """What an external command did.

    Attributes:
        args: the command as run (a list, or the string given with ``shell=True``).
        returncode: the exit status; negative when a signal ended it (as in
            :mod:`subprocess`).
        stdout: everything it wrote to standard output (``str`` with
            ``text=True``, else ``bytes``), including what came before a timeout.
        stderr: the same for standard error.
        duration: seconds from start to exit.
        timed_out: whether bingfa ended it because of ``timeout``.
        signal: the number of the signal that ended it, or ``None``.
        attempts: how many times it was run (more than 1 after retries).
    """

    args: list[str] | str
    returncode: int
    stdout: Any
    stderr: Any
    duration: float
    timed_out: bool
    signal: int | None
    attempts: int = 1

    @property
    def ok(self) -> bool:
        """Whether it exited 0 within its timeout."""
        return self.returncode == 0 and not self.timed_out

    def check(self) -> CommandResult:
        """Return itself if :attr:`ok`; raise :class:`~bingfa.CommandError` otherwise."""
        if not self.ok:
            raise CommandError(failure_message(self), self)
        return self


def make_result(args: list[str] | str, returncode: int, stdout: bytes, stderr: bytes, *,
                duration: float, timed_out: bool, text: bool, encoding: str, errors: str,
                attempts: int = 1) -> CommandResult:
    """A :class:`CommandResult`, its output decoded when ``text`` is true."""
    return CommandResult(
        args=args, returncode=returncode,
        stdout=stdout.decode(encoding, errors) if text else stdout,
        stderr=stderr.decode(encoding, errors) if text else stderr,
        duration=duration, timed_out=timed_out,
        signal=-returncode if returncode < 0 else None, attempts=attempts)


def failure_message(result: CommandResult, stderr_tail: Sequence[str] | None = None) -> str:
    """One sentence on how ``result`` failed, then the last lines of its stderr.

    ``stderr_tail`` replaces the result's own stderr (``bf.stream`` keeps no
    output on its result, only the last lines it saw).
    """
    shown = result.args if isinstance(result.args, str) else shlex.join(result.args)
    if result.timed_out:
        how = f"timed out after {result.duration:.3g} s and was killed"
    elif result.signal is not None:
        how = f"was killed by signal {result.signal} ({signal_name(result.signal)})"
    else:
        how = f"exited with status {result.returncode}"
    if stderr_tail is None:
        err = result.stderr
        text = err.decode("utf-8", "replace") if isinstance(err, bytes) else str(err or "")
        stderr_tail = text.rstrip().splitlines()
    tail = list(stderr_tail)[-STDERR_TAIL_LINES:]
    if result.attempts > 1:
        how += f" (after {result.attempts} attempts)"
    message = f"command {shown!r} {how}"
    if tail:
        message += "; its stderr ended with:\n  " + "\n  ".join(tail)
    return message


def signal_name(number: int) -> str:
    """``SIGTERM`` for 15; ``unknown`` for a number that is no signal."""
    try:
        return signals.Signals(number).name
    except ValueError:
        return "unknown"
