"""Starting one external command as a child in a process group of its own.

``os.posix_spawn`` (a ``vfork`` + ``exec`` in glibc) costs a fraction of
``subprocess.Popen`` and its Python bookkeeping, which is what lets
``bingfa run`` keep up with ``xargs``. ``Popen`` is still used when a working
directory is asked for, which ``posix_spawn`` cannot set before Python 3.13.

Every child gets ``setsid``: it leads a new session and process group, so a
signal to the group reaches its grandchildren too, and a Ctrl-C typed at the
terminal reaches bingfa alone, which then ends the groups itself.
"""

from __future__ import annotations

import errno
import os

from .._core import _signals as signals
from .._core._errors import CommandNotFoundError
from .._core._timeouts import limit_seconds

TYPE_CHECKING = False  # no typing, collections or shlex at run time: bingfa run starts fast
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

    Command = str | Sequence[str | os.PathLike[str]]

__all__ = [
    "DRAIN_AFTER_KILL", "KILL_GRACE", "Child", "check_timeout", "command_argv", "prepare",
    "resolve", "spawn", "split_command",
]


# How long a command's process group gets between SIGTERM and SIGKILL when it
# is ended early, and how long its pipes are still read once the group is dead
# (something that left the group may hold them open forever).
KILL_GRACE = 0.5
MAX_TIMEOUT = 30 * 86400.0  # epoll waits at most ~24.8 days at a time; beyond, say None
DRAIN_AFTER_KILL = 1.0

# Python ignores these two; ignored signals survive exec, so reset them.
_DEFAULT_SIGNALS = (signals.SIGPIPE, signals.SIGXFSZ)

# (name, PATH) -> absolute path of the executable
_found: dict[tuple[str, str], str] = {}


def resolve(name: str, env: Mapping[str, str] | None = None) -> str | None:
    """Where ``name`` is found on ``PATH`` (of ``env``, else ours), or ``None``.

    Results are cached: ``bingfa run`` looks up the same executable thousands
    of times. A name with a ``/`` is returned as it is.
    """
    if "/" in name:
        return name
    path = (env if env is not None else os.environ).get("PATH", os.defpath)
    key = (name, path)
    hit = _found.get(key)
    if hit is None:
        for folder in path.split(os.pathsep):
            candidate = os.path.join(folder or ".", name)
            if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
                hit = _found[key] = candidate
                break
    return hit

def command_argv(cmd: Command, shell: bool) -> list[str] | str:
    """The command in the form Popen takes (a list, or the string for the shell), checked.

    Raises:
        ValueError: an empty command, or unbalanced quotes in a string.
        TypeError: bytes, or a list with ``shell=True``.
    """
    if shell:
        if not isinstance(cmd, str):
            raise TypeError("with shell=True the command must be a string")
        if not cmd.strip():
            raise ValueError("the command is empty")
        split_command(cmd, comments=True)  # unbalanced quotes: ValueError, before any run
        return cmd
    if isinstance(cmd, str):
        argv = split_command(cmd)
    elif isinstance(cmd, bytes):
        raise TypeError("the command must be a string or a list of arguments, not bytes")
    else:
        argv = [os.fspath(part) for part in cmd]
    if not argv:
        raise ValueError("the command is empty")
    return [str(a) for a in argv]


def prepare(cmd: Command, *, shell: bool, timeout: float | None, input: bytes | str | None,
            encoding: str) -> tuple[list[str] | str, list[str], bytes | None]:
    """Check a command and its options: (the command as given, what to spawn, input bytes).

    Raises:
        ValueError: an empty command, unbalanced quotes, a negative timeout.
        TypeError: bytes as the command, or a list with ``shell=True``.
    """
    argv = command_argv(cmd, shell)
    check_timeout(timeout)
    data = input.encode(encoding) if isinstance(input, str) else input
    return argv, ["/bin/sh", "-c", argv] if isinstance(argv, str) else argv, data


def check_timeout(timeout: float | None) -> None:
    """Raises ValueError unless ``timeout`` is None or a number of seconds from 0 to MAX_TIMEOUT.

    The rule is bingfa's one rule for limits (see ``_core._timeouts``), with
    an upper bound: 0 means the time is already up, NaN and inf are refused.
    """
    limit_seconds(timeout, maximum=MAX_TIMEOUT)


def split_command(line: str, comments: bool = False) -> list[str]:
    """``line`` split as a shell would; ValueError naming it for unbalanced quotes.

    With ``comments``, a ``#`` word starts a comment (where quotes need not balance).
    """
    import shlex

    try:
        return shlex.split(line, comments=comments)
    except ValueError as exc:  # shlex says only "No closing quotation"
        raise ValueError(f"unbalanced quotes in command {line!r} ({exc})") from None


class Child:
    """A running command: its pid, a pidfd that turns readable when it exits, its pipes."""

    __slots__ = ("_popen", "pid", "pidfd", "stderr", "stdin", "stdout")

    def __init__(self, pid: int, stdin: int | None, stdout: int | None, stderr: int | None,
                 popen: Any = None) -> None:
        self.pid = pid
        self.pidfd = os.pidfd_open(pid)
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self._popen = popen

    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to the child's whole process group, if any of it is left.

        Safe until :meth:`reap`: an unreaped leader keeps its pid, so the group
        id cannot have been given to someone else.
        """
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def reap(self) -> int:
        """Wait for the (exited) leader; its exit status, negative for a signal."""
        _, status = os.waitpid(self.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        if self._popen is not None:
            self._popen.returncode = code  # so Popen does not try to reap it again
        os.close(self.pidfd)
        return code


def spawn(argv: list[str], *, env: Mapping[str, str] | None = None,
          cwd: str | os.PathLike[str] | None = None, stdin: int | None = None,
          capture: bool = True) -> Child:
    """Start ``argv`` in a new session.

    Its stdin is the fd ``stdin`` (``/dev/null``, say), or without one a pipe
    whose writing end is ``Child.stdin``. With ``capture`` its stdout and
    stderr are pipes too (the parent's ends, non-blocking, are on the
    :class:`Child`); otherwise they are ours.

    Raises:
        CommandNotFoundError: no such executable, or it cannot be run.
    """
    name = argv[0]
    exe = resolve(name, env)
    if exe is None:
        raise CommandNotFoundError(f"command not found: {name!r}", name)
    ours: list[int] = []    # the parent's ends
    theirs: list[int] = []  # the child's ends, closed once it runs
    try:
        to_child = out = err = None
        if stdin is None:
            child_in, to_child = os.pipe2(os.O_CLOEXEC)
            ours.append(to_child)
            theirs.append(child_in)
        else:
            child_in = stdin
        child_out = child_err = None
        if capture:
            out, child_out = os.pipe2(os.O_CLOEXEC)
            err, child_err = os.pipe2(os.O_CLOEXEC)
            ours += [out, err]
            theirs += [child_out, child_err]
        if cwd is None:
            actions: list[tuple[Any, ...]] = [(os.POSIX_SPAWN_DUP2, child_in, 0)]
            if child_out is not None:
                actions += [(os.POSIX_SPAWN_DUP2, child_out, 1),
                            (os.POSIX_SPAWN_DUP2, child_err, 2)]
            environment = os.environ if env is None else env
            try:
                pid = os.posix_spawn(exe, argv, environment, file_actions=actions,
                                     setsid=True, setsigdef=_DEFAULT_SIGNALS)
            except OSError as exc:
                if exc.errno != errno.ENOEXEC:
                    raise
                # A script without "#!": run it with /bin/sh, as sh and execvp do.
                pid = os.posix_spawn("/bin/sh", ["/bin/sh", exe, *argv[1:]], environment,
                                     file_actions=actions, setsid=True,
                                     setsigdef=_DEFAULT_SIGNALS)
            popen = None
        else:
            import subprocess  # only for a working directory

            popen = subprocess.Popen(argv, executable=exe, env=env, cwd=cwd, stdin=child_in,
                                     stdout=child_out, stderr=child_err,
                                     start_new_session=True)
            pid = popen.pid
    except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
        for fd in ours:
            os.close(fd)
        if cwd is not None and not os.path.isdir(cwd):
            raise
        if isinstance(exc, FileNotFoundError):
            reason = "not found"
        else:
            reason = f"cannot be run ({exc.strerror})"
        raise CommandNotFoundError(f"command {reason}: {name!r}", name) from exc
    except BaseException:
        for fd in ours:
            os.close(fd)
        raise
    finally:
        for fd in theirs:
            os.close(fd)
    for fd in ours:
        os.set_blocking(fd, False)
    return Child(pid, to_child, out, err, popen)
