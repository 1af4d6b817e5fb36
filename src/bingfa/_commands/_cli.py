"""``bingfa run``: the core of GNU parallel, started as fast as xargs.

Only what a run needs is imported (no Pool, no argparse, no signal module),
and a command line without shell syntax is executed directly instead of
through a shell: those two things are what lets 500 short jobs finish in the
time ``xargs`` takes. See ``docs/commands.md`` for the user's view.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # the signal module costs 6 ms of start-up
import itertools
import os
import sys
import time

from .._core._machine import usable_cores
from ._fanout import HALT_FORMS, PENDING, Fanout, Halt, Job, parse_halt
from ._spawn import resolve
from ._template import Template

# Start-up is a large part of a short run, so only what runs is imported:
# typing, re, dataclasses and argparse each cost milliseconds.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence
    from typing import IO

__all__ = ["main_run"]

USAGE = """\
usage: bingfa run [OPTIONS] COMMAND... [::: ARGS...]... [:::: FILE...]...
       bingfa run [OPTIONS] -- PROGRAM [ARG...] [::: ARGS...]...

Run COMMAND once for each argument, several at a time. Arguments come from
'::: a b c', from files after '::::' (one per line; '-' is standard input), or
from standard input. Several sources combine as a cartesian product; --link
pairs them instead. COMMAND is a shell command line; after '--' it is a
program and its arguments, run without a shell.

replacement strings (the argument is appended when there are none):
  {}  argument     {.}  without extension    {/}  base name    {//} directory
  {/.} base name without extension   {#} job number   {%} job slot
  {1} {2} ... argument from source 1, 2 ... (also {1.} {1/} {1//} {1/.})

A command line that needs a shell runs in bash when bash is the user's shell
($SHELL, or the shell that started bingfa run) or when functions are exported
with 'export -f'; else in /bin/sh. $PARALLEL_SHELL overrides both.

options:
  -j, --jobs N       run N jobs at once; N% is a share of the cores (default: cores)
  --timeout SECONDS  kill a job (its whole session) after SECONDS
  --retries N        try a failing job N times in all (0: until it succeeds)
  --halt WHEN,WHY    WHEN is now (kill the running jobs) or soon (let them end);
                     WHY is fail=N, success=N or done=N, N a count or a share
                     of all the jobs (fail=10%); 1, 2, -1, -2 and N% as in GNU
  -k, --keep-order   print output in input order (default: as jobs finish)
  --tag              put the arguments and a tab before each output line
  --link             pair the sources instead of combining them
  --joblog FILE      log each job: Seq Host Starttime JobRuntime Send Receive
                     Exitval Signal Command
  --results DIR      save each job's stdout, stderr and seq under DIR
  --bar              show a progress bar on standard error
  --dry-run          print the commands, run nothing
  -h, --help         show this help

exit status: 0 if every job succeeded, else the number of failed jobs (at most
101); with --halt, as GNU parallel's: the failing job's status after fail=1,
the share of failed jobs in percent after fail=N%, 0 after success=N; 255 for
bad usage; 130 after Ctrl-C, 143 after SIGTERM and 129 after SIGHUP, which
kill the running jobs.
"""

_SOURCE_MARKS = (":::", "::::")
EXIT_BAD_USAGE = 255
EXIT_INTERRUPTED = 130
MAX_FAILED_STATUS = 101
BAR_INTERVAL = 0.1
# A job bingfa ended itself (a timeout): GNU parallel records exit value -1.
EXIT_KILLED_JOB = 255
SIGNAL_EXIT_BASE = 128  # a shell's status for a process ended by signal N is 128 + N


class Terminated(BaseException):
    """SIGTERM or SIGHUP reached ``bingfa run``: unwind like Ctrl-C, ending every job.

    A BaseException, as KeyboardInterrupt, so nothing on the way catches it.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _terminated(signum: int, frame: object) -> None:
    raise Terminated(signum)


class UsageError(Exception):
    """A mistake on the command line: one line on stderr, exit status 255."""


class Options:
    """The parsed command line of ``bingfa run``."""

    def __init__(self) -> None:
        self.jobs: int | None = None
        self.timeout: float | None = None
        self.tries = 1  # --retries N: N tries in all, 0 for as many as it takes
        self.halt: Halt | None = None
        self.keep_order = False
        self.tag = False
        self.link = False
        self.joblog: str | None = None
        self.results: str | None = None
        self.bar = False
        self.dry_run = False
        self.argv_mode = False
        self.command: list[str] = []
        self.sources: list[tuple[str, str | list[str]]] = []  # (":::", values) | ("::::", path)


# What each option with a number takes, as its error message says it.
_EXPECTED = {
    "-j": "a number of jobs, 1 or more, or a share of the cores such as 50%",
    "--timeout": "a number of seconds above 0, at most 2592000 (30 days)",
    "--retries": "a whole number of tries in all, 0 (until it succeeds) or more",
    "--halt": HALT_FORMS,
}
MAX_TIMEOUT = 30 * 86400  # as bf.run's: epoll cannot wait much longer at a time


def _bad_value(option: str, text: str) -> UsageError:
    """One line naming the option, what it takes and what it got."""
    return UsageError(f"{option} wants {_EXPECTED[option.replace('--jobs', '-j')]}; "
                      f"got {text!r}")


def _parse_jobs(option: str, text: str) -> int:
    try:
        if text.endswith("%"):
            share = float(text[:-1])
            if not share > 0 or share == float("inf"):  # NaN too
                raise ValueError
            return max(1, int(usable_cores() * share / 100))
        jobs = int(text)
    except ValueError:
        raise _bad_value(option, text) from None
    if jobs <= 0:
        raise _bad_value(option, text)
    return jobs


def _parse_timeout(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise _bad_value("--timeout", text) from None
    if not 0 < seconds <= MAX_TIMEOUT:  # NaN and inf too
        raise _bad_value("--timeout", text)
    return seconds


def _parse_retries(text: str) -> int:
    try:
        retries = int(text)
    except ValueError:
        raise _bad_value("--retries", text) from None
    if retries < 0:
        raise _bad_value("--retries", text)
    return retries


_WITH_VALUE = {"-j", "--jobs", "--timeout", "--retries", "--halt", "--joblog", "--results"}
_FLAGS = {"-k": "keep_order", "--keep-order": "keep_order", "--tag": "tag", "--link": "link",
          "--bar": "bar", "--dry-run": "dry_run"}


def parse(args: Sequence[str]) -> Options:
    """``bingfa run``'s arguments as :class:`Options`; UsageError for mistakes."""
    opts = Options()
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            opts.argv_mode = True
            i += 1
            break
        if arg in _SOURCE_MARKS or not arg.startswith("-") or arg == "-":
            break
        name, eq, value = arg.partition("=")
        if name.startswith("-j") and name not in _WITH_VALUE and not eq:
            name, value, eq = "-j", arg[2:], "="  # -j4
        if name in _FLAGS and not eq:
            setattr(opts, _FLAGS[name], True)
            i += 1
            continue
        if name in ("-h", "--help"):
            sys.stdout.write(USAGE)
            raise SystemExit(0)
        if name not in _WITH_VALUE:
            raise UsageError(f"unknown option {arg!r} (see bingfa run --help)")
        if not eq:
            i += 1
            if i >= len(args):
                raise UsageError(f"{name} needs a value")
            value = args[i]
        i += 1
        if name in ("-j", "--jobs"):
            opts.jobs = _parse_jobs(name, value)
        elif name == "--timeout":
            opts.timeout = _parse_timeout(value)
        elif name == "--retries":
            opts.tries = _parse_retries(value)
        elif name == "--halt":
            try:
                opts.halt = parse_halt(value)
            except ValueError:
                raise _bad_value(name, value) from None
        elif name == "--joblog":
            opts.joblog = value
        else:
            opts.results = value
    rest = list(args[i:])
    marks = [k for k, word in enumerate(rest) if word in _SOURCE_MARKS]
    end = marks[0] if marks else len(rest)
    opts.command = rest[:end]
    if not opts.command:
        raise UsageError("no command given (see bingfa run --help)")
    for n, start in enumerate(marks):
        stop = marks[n + 1] if n + 1 < len(marks) else len(rest)
        values = rest[start + 1:stop]
        if rest[start] == ":::":
            if not values:
                raise UsageError("::: must be followed by at least one argument")
            opts.sources.append((":::", values))
        else:
            if not values:
                raise UsageError(":::: must be followed by at least one file")
            opts.sources += [("::::", path) for path in values]
    return opts


def _lines(stream: IO[bytes]) -> Iterator[str]:
    for raw in stream:
        yield os.fsdecode(raw[:-1] if raw.endswith(b"\n") else raw)


class LineFeeder:
    """The lines of a pipe or terminal, read in a thread as they come.

    Waiting for the next argument (``tail -f log | bingfa run ...``) must not
    stop the run: finished jobs are still reported and timeouts still kill.
    :meth:`values` yields PENDING when no line is there yet, and ``wakeup``
    turns readable when one arrives.
    """

    def __init__(self, stream: IO[bytes]) -> None:
        import threading
        from collections import deque

        self._lines: deque[str] = deque()
        self._done = False
        self.wakeup, self._wake_writer = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        threading.Thread(target=self._read, args=(stream,), daemon=True,
                         name="bingfa-run-arguments").start()

    def _read(self, stream: IO[bytes]) -> None:
        # Straight from the file descriptor, not through the stream object: a
        # daemon thread blocked inside a buffered reader holds its lock, and
        # the interpreter, exiting after Ctrl-C, would wait for that lock and
        # then abort ("Fatal Python error: could not acquire lock").
        fd = stream.fileno()
        pending = b""
        try:
            while True:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    break
                *lines, pending = (pending + chunk).split(b"\n")
                if lines:
                    self._lines.extend(os.fsdecode(line) for line in lines)
                    self._wake()
            if pending:
                self._lines.append(os.fsdecode(pending))
        except OSError:
            pass  # the input broke: what was read so far runs
        finally:
            self._done = True
            self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_writer, b"\0")
        except BlockingIOError:
            pass  # the pipe is full of wake-ups already

    def values(self) -> Iterator[str]:
        """The lines, with PENDING while the next one has not arrived."""
        lines = self._lines
        while True:
            if lines:
                yield lines.popleft()
            elif self._done:
                if not lines:  # appended before done was set
                    return
            else:
                yield PENDING


def _open_sources(opts: Options, streaming: bool) -> tuple[list[Iterator[str] | list[str]],
                                                          int | None]:
    """Each input source as values, and the wake-up fd of one read as it comes.

    Files are opened now, so a missing one is a usage error. With
    ``streaming``, a single source that is a pipe or a terminal is read by a
    :class:`LineFeeder`; several sources are combined, which needs them whole
    anyway, and so do ``--bar`` and ``--dry-run``.
    """
    import stat

    sources: list[Iterator[str] | list[str]] = []
    wakeup = None
    specs = opts.sources or [("::::", "-")]
    for kind, spec in specs:
        if kind == ":::":
            assert isinstance(spec, list)
            sources.append(spec)
            continue
        assert isinstance(spec, str)
        if spec == "-":
            handle = sys.stdin.buffer
        else:
            try:
                handle = open(spec, "rb")  # noqa: SIM115 - read lazily, closed at exit
            except OSError as exc:
                raise UsageError(f"cannot read input file {spec!r}: "
                                 f"{exc.strerror or exc}") from None
        if streaming and len(specs) == 1 and not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            feeder = LineFeeder(handle)
            wakeup = feeder.wakeup
            sources.append(feeder.values())
        else:
            sources.append(_lines(handle))
    return sources, wakeup


def _combine(sources: list[Iterator[str] | list[str]], link: bool) -> Iterator[tuple[str, ...]]:
    """The argument tuples: a cartesian product (first source slowest), or zipped."""
    if len(sources) == 1:
        return (value if value is PENDING else (value,) for value in sources[0])
    lists = [list(s) for s in sources]
    if any(not values for values in lists):
        return iter(())
    if link:
        # As GNU parallel: shorter sources wrap around to the longest's length.
        longest = max(len(values) for values in lists)
        return (tuple(values[k % len(values)] for values in lists) for k in range(longest))
    return itertools.product(*lists)


NO_JOB_YET: Job = PENDING  # PENDING, typed for the jobs it stands among


def _jobs(template: Template, arguments: Iterator[tuple[str, ...]]) -> Iterator[Job]:
    seq = 0
    for values in arguments:
        if values is PENDING:
            yield NO_JOB_YET
            continue
        seq += 1
        if template.uses_slot:
            def build(slot: int, values: tuple[str, ...] = values, seq: int = seq) -> list[str]:
                return template.argv(values, seq, slot)
            yield Job(seq, None, build=build, info=values)
        else:
            yield Job(seq, template.argv(values, seq, 0), info=values)


MAX_NAME_BYTES = 255


def _escape(value: str) -> str:
    """An argument as a directory name under --results: no '/', never '.' or '..'.

    A name too long for the file system keeps its first 200 bytes and gets a
    hash of the whole, so different long arguments stay apart.
    """
    name = value.replace("\\", "\\\\").replace("/", "\\_")
    if name in ("", ".", ".."):
        return "\\" + name
    raw = os.fsencode(name)
    if len(raw) > MAX_NAME_BYTES:
        import hashlib

        digest = hashlib.sha256(raw).hexdigest()[:16]
        name = os.fsdecode(raw[:200]) + "\\#" + digest
    return name


class Reporter:
    """Where finished jobs go: the terminal, the joblog, the results folder, the bar."""

    def __init__(self, opts: Options, template: Template, total: int | None) -> None:
        self._opts = opts
        self._template = template
        self._out = sys.stdout.buffer
        self._err = sys.stderr.buffer
        self._log: IO[str] | None = None
        self._total = total
        self._done = 0
        self._bar_shown = 0.0
        if opts.joblog is not None:
            try:
                # surrogateescape: arguments that are not UTF-8 are written as the bytes they were
                self._log = open(opts.joblog, "w", encoding="utf-8",  # noqa: SIM115
                                 errors="surrogateescape")
            except OSError as exc:
                raise UsageError(f"cannot write joblog {opts.joblog!r}: "
                                 f"{exc.strerror or exc}") from None
            self._log.write("Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal"
                            "\tCommand\n")
            self._log.flush()
        if opts.results is not None:
            try:
                os.makedirs(opts.results, exist_ok=True)
            except OSError as exc:
                raise UsageError(f"cannot create results folder {opts.results!r}: "
                                 f"{exc.strerror or exc}") from None

    def command_line(self, job: Job) -> str:
        return self._template.line(job.info, job.seq, job.slot or 1)

    def finished(self, job: Job) -> None:
        self._print(job)
        if self._log is not None:
            signal_number = job.signal or 0
            exitval = job.returncode if job.returncode >= 0 else -1
            self._log.write(f"{job.seq}\t:\t{job.wall_start:.3f}\t{job.duration:8.3f}\t0\t"
                            f"{job.received}\t{exitval}\t{signal_number}\t"
                            f"{self.command_line(job)}\n")
            self._log.flush()
        if self._opts.results is not None:
            self._save(job)
        self._done += 1
        if self._opts.bar:
            self.bar()

    def _print(self, job: Job) -> None:
        if self._opts.tag:
            # As GNU parallel: the arguments of several sources, spaced, then a tab.
            tag = " ".join(job.info).encode(errors="surrogateescape") + b"\t"
            for data, stream in ((job.stdout, self._out), (job.stderr, self._err)):
                if data:
                    lines = data.splitlines(keepends=True)
                    stream.write(b"".join(tag + line for line in lines))
                    if not data.endswith(b"\n"):
                        stream.write(b"\n")
        else:
            if job.stdout:
                self._out.write(job.stdout)
            if job.stderr:
                self._err.write(job.stderr)
        if job.stdout:
            self._out.flush()
        if job.stderr:
            self._err.flush()

    def _save(self, job: Job) -> None:
        assert self._opts.results is not None
        folder = self._opts.results
        for n, value in enumerate(job.info, 1):
            folder = os.path.join(folder, str(n), _escape(value))
        os.makedirs(folder, exist_ok=True)
        for name, data in (("stdout", job.stdout), ("stderr", job.stderr),
                           ("seq", f"{job.seq}\n".encode())):
            with open(os.path.join(folder, name), "wb") as handle:
                handle.write(data)

    def bar(self, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self._bar_shown < BAR_INTERVAL:
            return
        self._bar_shown = now
        total = self._total or 0
        share = self._done / total if total else 1.0
        filled = int(share * 30)
        text = f"\r{share:4.0%} [{'#' * filled}{'.' * (30 - filled)}] {self._done}/{total}"
        self._err.write(text.encode() + (b"\n" if final else b""))
        self._err.flush()

    def close(self) -> None:
        if self._opts.bar:
            self.bar(final=True)
        if self._log is not None:
            self._log.close()


def job_shell(environ: Mapping[str, str]) -> tuple[str, frozenset[str]]:
    """The shell for command lines that need one, and the functions exported to it.

    As GNU parallel: ``$PARALLEL_SHELL`` if set; else bash when it is the
    shell that started us or the user's ``$SHELL``, or when the environment
    exports functions (``export -f`` puts ``BASH_FUNC_name%%`` there, which
    only bash reads); else ``/bin/sh``, the cheapest to start.
    """
    functions = frozenset(key[10:-2] for key in environ
                          if key.startswith("BASH_FUNC_") and key.endswith("%%"))
    chosen = environ.get("PARALLEL_SHELL")
    if chosen:
        return resolve(chosen, environ) or chosen, functions
    try:
        parent = os.readlink(f"/proc/{os.getppid()}/exe")
    except OSError:
        parent = ""
    for candidate in (parent, environ.get("SHELL", "")):
        if os.path.basename(candidate) == "bash" and os.access(candidate, os.X_OK):
            return candidate, functions
    if functions:
        bash = resolve("bash", environ)
        if bash is not None:
            return bash, functions
    return "/bin/sh", functions


def exit_status(fanout: Fanout, halt: Halt | None, total: int | None) -> int:
    """GNU parallel's exit status for the run that ``fanout`` made.

    The number of failed jobs, at most 101; with ``--halt``: 0 once a success
    rule fired; once a fail or done rule fired, the failed jobs as they were
    then, counted (at most 101) or as a percentage of all the jobs, rounded
    up, and when the rule's threshold was one job, that job's own status (128
    + N for signal N, 255 for a job bingfa ended). A percentage rule that never
    fired still gives the share, of the jobs started.
    """
    if halt is None:
        return min(fanout.failed, MAX_FAILED_STATUS)
    if fanout.halted:
        if halt.kind == "success":
            return 0
        job = fanout.halted_by
        if fanout.threshold == 1 and job is not None:
            if job.timed_out or job.killed:
                return EXIT_KILLED_JOB
            if job.returncode < 0:
                return SIGNAL_EXIT_BASE - job.returncode
            return job.returncode
        failed = fanout.failed_at_halt
        if halt.percent is not None and total:
            return -(-failed * 100 // total)  # rounded up
        return min(failed, MAX_FAILED_STATUS)
    if halt.percent is not None:
        return -(-fanout.failed * 100 // max(fanout.started, 1))
    return min(fanout.failed, MAX_FAILED_STATUS)


def run_jobs(opts: Options) -> int:
    """Run what ``opts`` asks for; the exit status."""
    shell, functions = job_shell(os.environ)
    try:
        template = Template(opts.command, argv=opts.argv_mode,
                            sources=max(1, len(opts.sources) or 1), shell=shell,
                            functions=functions)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    halt = opts.halt
    whole = opts.bar or (halt is not None and halt.percent is not None)  # needs the total
    sources, wakeup = _open_sources(opts, streaming=not (whole or opts.dry_run))
    arguments = _combine(sources, opts.link)
    parallel = opts.jobs or usable_cores()
    total: int | None = None
    if whole:
        listed = list(arguments)
        total = len(listed)
        arguments = iter(listed)
    if opts.dry_run:
        out = sys.stdout
        for seq, values in enumerate(arguments, 1):
            out.write(template.line(values, seq, (seq - 1) % parallel + 1) + "\n")
        return 0
    reporter = Reporter(opts, template, total)
    # GNU parallel's --retries N is N tries in all (0: no limit); Fanout counts retries.
    fanout = Fanout(_jobs(template, arguments), parallel=parallel, timeout=opts.timeout,
                    retries=None if opts.tries == 0 else opts.tries - 1, halt=halt,
                    total=total, keep_order=opts.keep_order, wakeup=wakeup)
    jobs = iter(fanout)
    try:
        for job in jobs:
            reporter.finished(job)
    finally:
        jobs.close()  # type: ignore[attr-defined]
        reporter.close()
    return exit_status(fanout, halt, total)


_ENDING_SIGNALS = (_signal.SIGTERM, _signal.SIGHUP)


def main_run(args: Sequence[str]) -> int:
    """``bingfa run``: returns the exit status (see :data:`USAGE`).

    SIGTERM and SIGHUP end it as Ctrl-C does: every job's session is ended,
    and the status is 128 + the signal's number. Jobs run in sessions of
    their own, so no such signal reaches them but through bingfa. A signal
    that was ignored when bingfa started (``nohup``) stays ignored.
    """
    # None: a handler set outside Python, which we leave alone.
    previous = {sig: handler for sig in _ENDING_SIGNALS
                if (handler := _signal.getsignal(sig)) not in (_signal.SIG_IGN, None)}
    for sig in previous:
        _signal.signal(sig, _terminated)
    try:
        return _main_run(args)
    finally:
        for sig, handler in previous.items():
            _signal.signal(sig, handler)


# How old bingfa run must be before it starts its reaper (see _reaper.defer).
REAPER_AFTER = 1.0


def _main_run(args: Sequence[str]) -> int:
    from ._reaper import defer

    defer(REAPER_AFTER)
    try:
        return run_jobs(parse(args))
    except UsageError as exc:
        sys.stderr.write(f"bingfa run: {exc}\n")
        return EXIT_BAD_USAGE
    except KeyboardInterrupt:
        # The fan-out has ended every job, sessions and all, on the way out.
        _say("bingfa run: interrupted; running jobs were killed\n")
        return EXIT_INTERRUPTED
    except Terminated as exc:
        name = "SIGTERM" if exc.signum == _signal.SIGTERM else "SIGHUP"
        _say(f"bingfa run: {name}; running jobs were killed\n")
        return SIGNAL_EXIT_BASE + exc.signum
    except BrokenPipeError:
        # Our reader went away (| head): the jobs were ended; stop quietly, as
        # other tools do, without a second error when Python flushes stdout.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _say(text: str) -> None:
    """A last word on stderr, which may be gone (a hung-up terminal)."""
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
