"""Many commands at once: ``bf.run_many``.

It runs on a :class:`~._loop.CommandLoop`: no thread per command, every
command in a session of its own, ended whole when it times out, when the
caller stops iterating, or on Ctrl-C or task cancellation, and by the
process's reaper if the caller dies.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import TracebackType

from .._core._errors import CommandError
from .._core._machine import usable_cores
from .._core._progress import ProgressArg, reporter
from ._fanout import Fanout, Halt, Job, parse_halt
from ._result import CommandResult, failure_message, make_result
from ._spawn import check_options, check_timeout, command_argv

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._spawn import Command

__all__ = ["CommandRun", "run_many"]


def check_jobs(jobs: int | None) -> int:
    """``jobs`` checked, or the usable cores for None.

    Raises:
        ValueError: zero or negative. TypeError: not an int.
    """
    if jobs is None:
        return usable_cores()
    if isinstance(jobs, bool) or not isinstance(jobs, int):
        raise TypeError(f"jobs must be a positive int or None, not {jobs!r}")
    if jobs <= 0:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    return jobs


def _job(seq: int, cmd: Command, shell: bool) -> Job:
    argv = command_argv(cmd, shell)
    if isinstance(argv, str):
        return Job(seq, ["/bin/sh", "-c", argv], display=argv)
    return Job(seq, argv)


class CommandRun(Iterator[CommandResult]):
    """The results of :func:`run_many`, as they come; also a context manager.

    Leaving early (``break``, an exception, :meth:`close`, or the ``with``
    block) ends the commands still running, sessions and all.

    Its ``failed``, ``succeeded`` and ``halted`` tell how the run is going.
    """

    def __init__(self, fanout: Fanout, halt: Halt | None, total: int | None,
                 progress: ProgressArg, text: bool, encoding: str, errors: str) -> None:
        # A bad ``progress`` fails here, before any command starts (nothing to close).
        self._progress = reporter(progress, total, "commands")
        self._fanout = fanout
        self._jobs = iter(fanout)
        self._halt = halt
        self._text = text
        self._encoding = encoding
        self._errors = errors
        self._first_failure: CommandResult | None = None
        self._done = False

    @property
    def failed(self) -> int:
        """Commands that failed so far (after their retries)."""
        return self._fanout.failed

    @property
    def succeeded(self) -> int:
        """Commands that exited 0 so far."""
        return self._fanout.succeeded

    @property
    def halted(self) -> bool:
        """Whether the ``halt`` rule stopped the run early."""
        return self._fanout.halted

    def __iter__(self) -> CommandRun:
        return self

    def __next__(self) -> CommandResult:
        if self._done:
            raise StopIteration
        try:
            job = next(self._jobs)
        except StopIteration:
            self.close()
            halt = self._halt
            if self.halted and halt is not None and halt.on_failure:
                raise self._halt_error() from None
            raise
        except BaseException:
            self.close()
            raise
        result = make_result(
            job.display if job.display is not None else job.argv or [], job.returncode,
            job.stdout, job.stderr, duration=job.duration, timed_out=job.timed_out,
            text=self._text, encoding=self._encoding, errors=self._errors,
            attempts=job.attempts)
        if not result.ok and not job.halted and self._first_failure is None:
            self._first_failure = result
        self._progress.update(self._fanout.finished)
        return result

    def _halt_error(self) -> CommandError:
        first = self._first_failure
        assert first is not None
        count = self._fanout.failed
        return CommandError(f"halted after {count} failed command{'s' * (count != 1)}; "
                            f"the first: {failure_message(first)}", first)

    def close(self) -> None:
        """Stop: end the commands still running and start no more."""
        if not self._done:
            self._done = True
            try:
                self._jobs.close()  # type: ignore[attr-defined]
            finally:
                self._progress.close()

    def __enter__(self) -> CommandRun:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __del__(self) -> None:
        if hasattr(self, "_done"):  # not when __init__ failed
            self.close()


def run_many(
    commands: Iterable[Command],
    *,
    jobs: int | None = None,
    timeout: float | None = None,
    retries: int = 0,
    keep_order: bool = True,
    progress: ProgressArg = False,
    halt: str | None = None,
    text: bool = False,
    encoding: str = "utf-8",
    errors: str = "replace",
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    shell: bool = False,
) -> CommandRun:
    """Run many external commands, ``jobs`` at a time; iterate the results.

    Each command is what :func:`bingfa.run` takes (a list, or a string split
    like a shell would, or run by ``/bin/sh`` with ``shell=True``); each result
    a :class:`~bingfa.CommandResult`. Commands are pulled from ``commands``
    only as slots free up, so a generator of a million commands is fine.

    Args:
        jobs: how many run at once (default: the usable cores).
        timeout: seconds per attempt; the command's session is then
            terminated, then killed, and its result has ``timed_out=True``.
        retries: run a command that failed or timed out again, up to this many
            more times; its result is the last attempt's (see ``attempts``).
        keep_order: results in the order of ``commands`` (else as they finish).
        progress: ``True`` for a tqdm bar, or a callable ``(done, total)``.
        halt: stop early, as GNU parallel's ``--halt``: ``"now,fail=1"`` kills
            the running commands after the first failure, ``"soon,fail=N"``
            lets them finish but starts no more after N failures;
            ``"now,success=1"`` stops at the first success, ``"soon,done=N"``
            after N commands finished either way. ``fail=10%`` counts a share
            of all the commands (``commands`` must then be a list). After a
            ``fail`` halt, iteration ends with a :class:`~bingfa.CommandError`
            for the first failure, once the results of every command that ran
            have been yielded.
        text, encoding, errors, env, cwd, shell: as for :func:`bingfa.run`,
            for every command.

    A command whose executable does not exist fails alone, as in a shell:
    its result has ``returncode`` 127 and a line on ``stderr`` naming it.

    Raises:
        ValueError: no commands, ``jobs <= 0``, a bad ``halt`` (or one with a
            percentage for an iterator of commands), an empty command or
            unbalanced quotes (for a list of commands, before any runs).
        TypeError: an argument of the wrong type; the message names it.

    Example::

        hosts = ["10.0.0.1", "10.0.0.2"]
        for r in bf.run_many([["ping", "-qc", "4", h] for h in hosts], jobs=16,
                             timeout=10, text=True):
            print(r.args[-1], "ok" if r.ok else "down")
    """
    parallel = check_jobs(jobs)
    check_timeout(timeout)
    if isinstance(retries, bool) or not isinstance(retries, int):
        raise TypeError(f"retries must be an int, not {type(retries).__name__}")
    if retries < 0:
        raise ValueError(f"retries must be 0 or more, got {retries}")
    check_options(encoding=encoding, errors=errors, env=env, cwd=cwd)
    halt_rule = parse_halt(halt)
    if isinstance(commands, (str, bytes)):
        raise TypeError("run_many takes an iterable of commands; for one command use bf.run")
    if halt_rule is not None and halt_rule.percent is not None and not isinstance(
            commands, Sequence):
        raise ValueError(f"halt {halt!r} counts a share of all the commands: pass them "
                         "as a list (or another sequence), not an iterator")
    total: int | None = None
    source: Iterator[Job]
    if isinstance(commands, Sequence):
        made = [_job(seq, cmd, shell) for seq, cmd in enumerate(commands, 1)]
        if not made:
            raise ValueError("no commands to run")
        total = len(made)
        source = iter(made)
    else:
        source = (_job(seq, cmd, shell) for seq, cmd in enumerate(commands, 1))
        first = next(source, None)  # an empty iterable is an error, before anything runs
        if first is None:
            raise ValueError("no commands to run")
        source = itertools.chain([first], source)
    fanout = Fanout(source, parallel=parallel, timeout=timeout, retries=retries,
                    halt=halt_rule, total=total, keep_order=keep_order, env=env, cwd=cwd)
    return CommandRun(fanout, halt_rule, total, progress, text, encoding, errors)

