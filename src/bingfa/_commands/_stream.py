"""Output lines as they arrive: ``bf.stream``.

The command runs on a :class:`~._loop.CommandLoop` driven by the iterating
thread itself: no reader threads, and both pipes are read together, so a
command that floods stderr while we wait on stdout cannot deadlock.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any, NamedTuple

from .._core._errors import CommandError
from ._loop import CommandLoop, Running
from ._result import STDERR_TAIL_LINES, CommandResult, failure_message, make_result
from ._spawn import prepare

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._spawn import Command

__all__ = ["CommandStream", "OutputLine", "stream"]

# A line longer than this arrives in pieces of this size, so a command that
# never writes a newline cannot fill memory.
MAX_LINE = 1 << 20

_NAMES = {1: "stdout", 2: "stderr"}


class OutputLine(NamedTuple):
    """One line of a command's output, from :func:`bingfa.stream`.

    Attributes:
        stream: ``"stdout"`` or ``"stderr"``.
        line: the line without its ``\\n`` (``str`` with ``text=True``, else ``bytes``).
    """

    stream: str
    line: Any


class CommandStream(Iterator[OutputLine]):
    """The lines of a running command; see :func:`bingfa.stream`.

    Attributes:
        result: the :class:`~bingfa.CommandResult` once the lines are
            exhausted (``None`` before). Its ``stdout`` and ``stderr`` are empty:
            every line was yielded already.
    """

    def __init__(self, commands: CommandLoop, run: Running, args: list[str] | str, check: bool,
                 text: bool, encoding: str, errors: str) -> None:
        self._commands = commands
        self._run = run
        self._args = args
        self._check = check
        self._text = text
        self._encoding = encoding
        self._errors = errors
        self._lines: deque[OutputLine] = deque()
        self._partial = {1: bytearray(), 2: bytearray()}
        self._stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self.result: CommandResult | None = None
        self._failure: CommandError | None = None
        run.sink = self._take

    def _take(self, stream: int, data: bytes) -> None:
        """The loop's sink: cut the data into lines."""
        pending = self._partial[stream]
        pending += data
        start = 0
        while True:
            end = pending.find(b"\n", start)
            if end < 0:
                break
            self._emit(stream, bytes(pending[start:end]))
            start = end + 1
        del pending[:start]
        while len(pending) >= MAX_LINE:
            self._emit(stream, bytes(pending[:MAX_LINE]))
            del pending[:MAX_LINE]

    def _emit(self, stream: int, raw: bytes) -> None:
        line: Any = raw.decode(self._encoding, self._errors) if self._text else raw
        if stream == 2:
            self._stderr_tail.append(raw.decode("utf-8", "replace"))
        self._lines.append(OutputLine(_NAMES[stream], line))

    def __iter__(self) -> CommandStream:
        return self

    def __next__(self) -> OutputLine:
        lines = self._lines
        while not lines:
            if self.result is not None:
                failure, self._failure = self._failure, None
                if failure is not None:
                    raise failure
                raise StopIteration
            if len(self._commands):
                try:
                    self._commands.poll()
                except BaseException:
                    self.close()
                    raise
                continue
            self._finish()
        return lines.popleft()

    def _finish(self) -> None:
        for stream, pending in self._partial.items():
            if pending:  # a last line without its newline
                self._emit(stream, bytes(pending))
                pending.clear()
        run = self._run
        self.result = make_result(
            self._args, run.returncode, b"", b"", duration=run.duration,
            timed_out=run.timed_out, text=self._text, encoding="ascii", errors="strict")
        self._commands.close()
        if self._check and not self.result.ok:
            # raised once the last lines, those just cut from the buffers too, are taken
            self._failure = CommandError(failure_message(self.result, self._stderr_tail),
                                         self.result)

    def close(self) -> None:
        """Stop early: end the command's session if it still runs."""
        self._commands.close()

    def __enter__(self) -> CommandStream:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


def stream(
    cmd: Command,
    *,
    input: bytes | str | None = None,
    timeout: float | None = None,
    check: bool = False,
    text: bool = True,
    encoding: str = "utf-8",
    errors: str = "replace",
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    shell: bool = False,
) -> CommandStream:
    """Run a command and iterate its output lines as they arrive, tagged by stream.

    Each item is an :class:`~bingfa.OutputLine` ``(stream, line)``, ``stream``
    being ``"stdout"`` or ``"stderr"``; when the lines end, the command has
    exited and the stream's ``.result`` holds its :class:`~bingfa.CommandResult`.
    Lines are text by default (``text=False`` for bytes); a line longer than
    1 MiB arrives in pieces. Leaving early (``break`` inside a ``with`` block,
    :meth:`~CommandStream.close`, Ctrl-C) ends the command's whole session.

    Arguments are those of :func:`bingfa.run`; with ``check=True`` a failure
    raises :class:`~bingfa.CommandError` after the last line.

    Example::

        with bf.stream(["ping", "-c", "4", host], timeout=10) as lines:
            for source, line in lines:
                print(source, line)
        print(lines.result.returncode)
    """
    args, argv, data = prepare(cmd, shell=shell, timeout=timeout, input=input,
                               encoding=encoding, errors=errors, env=env, cwd=cwd)
    commands = CommandLoop()
    try:
        started = commands.start(argv, input=data, timeout=timeout, env=env, cwd=cwd)
    except BaseException:
        commands.close()
        raise
    return CommandStream(commands, started, args, check, text, encoding, errors)
