"""Starting one external command as a child in a session of its own.

``os.posix_spawn`` (a ``vfork`` + ``exec`` in glibc) costs a fraction of
``subprocess.Popen`` and its Python bookkeeping, which is what lets
``bingfa run`` keep up with ``xargs``. ``Popen`` is still used when a working
directory is asked for, which ``posix_spawn`` cannot set before Python 3.13.

Every child gets ``setsid``: it leads a new session and process group, so a
signal to the group reaches its grandchildren too, and a Ctrl-C typed at the
terminal reaches bingfa alone, which then ends the groups itself. Each child
is also announced to this process's reaper (:mod:`._reaper`), which ends its
session should this process die before reaping it.
"""

from __future__ import annotations

import errno
import os

from .._core import _signals as signals
from .._core._errors import CommandNotFoundError
from .._core._timeouts import limit_seconds
from ._reaper import announce, call_into, kill_sessions, track, untrack, withdraw

TYPE_CHECKING = False  # no typing, collections or shlex at run time: bingfa run starts fast
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

    Command = str | Sequence[str | os.PathLike[str]]

__all__ = [
    "DRAIN_AFTER_KILL", "KILL_GRACE", "Child", "check_options", "check_timeout", "command_argv",
    "prepare", "resolve", "spawn", "split_command",
]


# How long a command's process group gets between SIGTERM and SIGKILL when it
# is ended early, and how long its pipes are still read once the group is dead
# (something that left the group may hold them open forever).
KILL_GRACE = 0.5
MAX_TIMEOUT = 30 * 86400.0  # epoll waits at most ~24.8 days at a time; beyond, say None
DRAIN_AFTER_KILL = 1.0

# Python ignores these two; ignored signals survive exec, so reset them. The
# signal mask survives exec too, and bingfa's threads block SIGINT (so that
# Ctrl-C reaches the main thread): commands start with an empty mask.
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
            encoding: str, errors: str = "replace", env: Mapping[str, str] | None = None,
            cwd: str | os.PathLike[str] | None = None,
            ) -> tuple[list[str] | str, list[str], bytes | None]:
    """Check a command and its options: (the command as given, what to spawn, input bytes).

    Raises:
        ValueError: an empty command, unbalanced quotes, a timeout out of range.
        TypeError: bytes as the command, a list with ``shell=True``, or an
            option of the wrong type (the message names it).
        LookupError: an unknown ``encoding`` or ``errors`` handler.
    """
    argv = command_argv(cmd, shell)
    check_timeout(timeout)
    if input is not None and not isinstance(input, (bytes, bytearray, memoryview, str)):
        raise TypeError(f"input must be bytes or str, not {type(input).__name__}")
    check_options(encoding=encoding, errors=errors, env=env, cwd=cwd)
    data = input.encode(encoding) if isinstance(input, str) else input
    return argv, ["/bin/sh", "-c", argv] if isinstance(argv, str) else argv, data


def check_timeout(timeout: float | None) -> None:
    """Raises TypeError unless ``timeout`` is None or a number, ValueError unless 0 to 30 days.

    The rule is bingfa's one rule for limits (see ``_core._timeouts``), with
    an upper bound: 0 means the time is already up, NaN and inf are refused.
    """
    if timeout is not None and (isinstance(timeout, bool)
                                or not isinstance(timeout, (int, float))):
        raise TypeError(f"timeout must be a number of seconds or None, "
                        f"not {type(timeout).__name__}")
    limit_seconds(timeout, maximum=MAX_TIMEOUT)


def check_options(*, encoding: str, errors: str, env: Mapping[str, str] | None,
                  cwd: str | os.PathLike[str] | None) -> None:
    """Check the options every command takes, naming the one that is wrong.

    Raises:
        TypeError: ``env`` not a mapping of str to str, ``cwd`` not a path,
            ``encoding`` or ``errors`` not a str.
        LookupError: an ``encoding`` or ``errors`` handler Python does not know.
    """
    import codecs  # loaded at interpreter start-up: free

    for name, value in (("encoding", encoding), ("errors", errors)):
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise LookupError(f"encoding {encoding!r} is not a text encoding Python knows") from None
    try:
        codecs.lookup_error(errors)
    except LookupError:
        raise LookupError(f"errors {errors!r} is not an error handler Python knows (such as "
                          "'replace', 'strict' or 'surrogateescape')") from None
    if cwd is not None and not isinstance(cwd, (str, bytes, os.PathLike)):
        raise TypeError(f"cwd must be a path (str, bytes or os.PathLike), "
                        f"not {type(cwd).__name__}")
    if env is not None:
        items = getattr(env, "items", None)
        if items is None or isinstance(env, (str, bytes)):
            raise TypeError(f"env must be a mapping of names to values, such as a dict, "
                            f"not {type(env).__name__}")
        # bytes work as well as str (posix_spawn takes both): only other types are refused.
        for key, value in items():
            if not isinstance(key, (str, bytes)):
                raise TypeError(f"env names must be str, not {type(key).__name__} ({key!r})")
            if not isinstance(value, (str, bytes)):
                raise TypeError(f"env[{key!r}] must be a str, not {type(value).__name__}")


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

    __slots__ = ("_popen", "pid", "pidfd", "returncode", "stderr", "stdin", "stdout")

    def __init__(self, pid: int, stdin: int | None, stdout: int | None, stderr: int | None,
                 popen: Any = None) -> None:
        self.pid = pid
        self.returncode: int | None = None
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
        """Wait for the (exited) leader; its exit status, negative for a signal.

        A second call returns the same status (an interrupted finish may retry).
        """
        if self.returncode is not None:
            return self.returncode
        untrack(self.pid)  # before waitpid, after which its pid may be anyone's
        _, status = os.waitpid(self.pid, 0)
        code = self.returncode = os.waitstatus_to_exitcode(status)
        if self._popen is not None:
            self._popen.returncode = code  # so Popen does not try to reap it again
        os.close(self.pidfd)
        return code


def spawn(into: list[Child], argv: list[str], *, env: Mapping[str, str] | None = None,
          cwd: str | os.PathLike[str] | None = None, stdin: int | None = None,
          capture: bool = True) -> None:
    """Start ``argv`` in a new session; its :class:`Child` is appended to ``into``.

    Its stdin is the fd ``stdin`` (``/dev/null``, say), or without one a pipe
    whose writing end is ``Child.stdin``. With ``capture`` its stdout and
    stderr are pipes too (the parent's ends, non-blocking, are on the
    :class:`Child`); otherwise they are ours.

    Nothing is ever lost to a signal (Ctrl-C; SIGTERM in ``bingfa run``),
    whose handler may raise after any line of Python: the pid, and then the
    :class:`Child`, are stored by C code as they are made (:func:`call_into`),
    so once the child exists either it is in ``into`` for the caller to end
    on the way out, or it is ended here.

    Raises:
        CommandNotFoundError: no such executable, or it cannot be run.
    """
    name = argv[0]
    exe = resolve(name, env)
    if exe is None:
        raise CommandNotFoundError(f"command not found: {name!r}", name)
    ours: list[int] = []    # the parent's ends
    theirs: list[int] = []  # the child's ends, closed once it runs
    started: list[Any] = []  # the pid (or the Popen) as soon as there is one
    announced = tracked = False  # what the reaper was told (see _reaper.announce)
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
        announce()
        announced = True
        if cwd is None:
            actions: list[tuple[Any, ...]] = [(os.POSIX_SPAWN_DUP2, child_in, 0)]
            if child_out is not None:
                actions += [(os.POSIX_SPAWN_DUP2, child_out, 1),
                            (os.POSIX_SPAWN_DUP2, child_err, 2)]
            environment = os.environ if env is None else env
            try:
                call_into(started, os.posix_spawn, exe, argv, environment,
                          file_actions=actions, setsid=True, setsigdef=_DEFAULT_SIGNALS,
                          setsigmask=())
            except OSError as exc:
                if exc.errno != errno.ENOEXEC:
                    raise
                # A script without "#!": run it with /bin/sh, as sh and execvp do.
                call_into(started, os.posix_spawn, "/bin/sh", ["/bin/sh", exe, *argv[1:]],
                          environment, file_actions=actions, setsid=True,
                          setsigdef=_DEFAULT_SIGNALS, setsigmask=())
        else:
            import subprocess  # only for a working directory

            call_into(started, subprocess.Popen, argv, executable=exe, env=env, cwd=cwd,
                      stdin=child_in, stdout=child_out, stderr=child_err,
                      start_new_session=True)
        # At once: until then, only the announcement stands for it.
        track(started[0] if cwd is None else started[0].pid)
        tracked = True
    except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
        for fd in ours:
            os.close(fd)
        withdraw()
        if cwd is not None and not os.path.isdir(cwd):
            # The command may be fine: say that the directory is what is missing.
            what = "does not exist" if not os.path.exists(cwd) else "is not a directory"
            raise type(exc)(exc.errno, f"cwd {what}", os.fsdecode(cwd)) from None
        if isinstance(exc, FileNotFoundError):
            reason = "not found"
        else:
            reason = f"cannot be run ({exc.strerror})"
        raise CommandNotFoundError(f"command {reason}: {name!r}", name) from exc
    except BaseException:
        for fd in ours:
            os.close(fd)
        if started:
            _abandon(started[0], tracked)
        elif announced:
            withdraw()
        raise
    finally:
        for fd in theirs:
            os.close(fd)
    popen = None if cwd is None else started[0]
    pid = started[0] if popen is None else popen.pid
    try:
        for fd in ours:
            os.set_blocking(fd, False)
        call_into(into, Child, pid, to_child, out, err, popen)
    except BaseException:
        if not into:
            # A signal while the child was being set up: the caller never
            # got it, so it is ended here.
            for fd in ours:
                os.close(fd)
            _abandon(started[0], True)
        raise


def _pid_of(started: Any) -> int:
    """The pid of what spawn started: a pid, or a Popen."""
    return started if isinstance(started, int) else int(started.pid)


def _abandon(started: Any, tracked: bool) -> None:
    """End and reap a child (a pid, or a Popen) that was started but never handed over."""
    popen = None if isinstance(started, int) else started
    pid = _pid_of(started)
    try:
        kill_sessions([pid])
        if tracked:
            untrack(pid)
        else:
            withdraw()
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    except OSError:
        return
    if popen is not None:
        popen.returncode = code  # so Popen does not try to reap it again
