"""Starting worker processes that never run the user's ``__main__``.

multiprocessing's ``spawn`` and ``forkserver`` prepare every child by running
the parent's main script again (as ``__mp_main__``), which is why they need
the ``if __name__ == "__main__":`` guard, and why they fail outright for a
script fed on standard input, ``python -c``, the interactive interpreter and
notebooks. bingfa's workers need none of it: functions travel by value, and
data that names ``__main__`` goes by value too (``_core/_serialization.py``).
So the three start methods here only ever run bingfa's worker:

- ``fork``: ``os.fork()`` of this process, as multiprocessing does on Linux;
  the worker inherits everything, so objects that can only be inherited
  (a ``multiprocessing.Lock`` in ``initargs``) work.
- ``forkserver`` (the default): a *zygote*, a fresh interpreter that has
  imported only bingfa's worker code, forks each worker on request
  (``_zygote.py``). A fork of a small, single-threaded process is safe and
  takes about a millisecond; one zygote serves every pool of this process
  and exits with it.
- ``spawn``: a fresh interpreter per worker.

Workers started from the zygote or spawned get, in their first frame (a
``WorkerBoot``), what they must share with this process: ``sys.path``, the
working directory, ``sys.argv``, the environment and multiprocessing's
authentication key (so manager proxies in ``initargs`` connect).
"""

from __future__ import annotations

import contextlib
import os
import select
import struct
import sys
import threading
from collections.abc import Callable
from typing import Any

from ..._core._errors import InitializerError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket

__all__ = ["START_METHODS", "WorkerProcess", "launch", "start_zygote"]

START_METHODS = ("forkserver", "fork", "spawn")

# How long a new zygote may take to import bingfa before it is given up on.
ZYGOTE_START_TIMEOUT = 60.0
# After a worker exits, how long the zygote may take to report its status.
STATUS_TIMEOUT = 5.0
_STATUS = struct.Struct("<i")
_PID = struct.Struct("<q")


class WorkerProcess:
    """A started worker process, however it was started.

    ``exit_fd`` becomes readable when the process has exited; then
    :meth:`exit_status` says how.
    """

    def __init__(self, pid: int, wait: Callable[[], tuple[int | None, int | None]],
                 status_fd: int = -1) -> None:
        self.pid = pid
        self.exit_fd = os.pidfd_open(pid)
        self._wait = wait
        self._status_fd = status_fd
        self._status: tuple[int | None, int | None] | None = None

    def exit_status(self) -> tuple[int | None, int | None]:
        """``(exit code, signal)`` of the exited process; ``(None, None)`` if unknown."""
        if self._status is None:
            self._status = self._wait()
        return self._status

    def close(self) -> None:
        """Release the descriptors (after :meth:`exit_status`)."""
        for fd in (self.exit_fd, self._status_fd):
            if fd >= 0:
                os.close(fd)
        self.exit_fd = self._status_fd = -1


def _from_returncode(code: int | None) -> tuple[int | None, int | None]:
    if code is None:
        return None, None
    return (None, -code) if code < 0 else (code, None)


def _waitpid(pid: int) -> tuple[int | None, int | None]:
    try:
        status = os.waitpid(pid, 0)[1]
    except ChildProcessError:
        return None, None
    return _from_returncode(os.waitstatus_to_exitcode(status))


def _reported_status(fd: int) -> tuple[int | None, int | None]:
    """The wait status the zygote wrote to ``fd`` (it reaps its children)."""
    ready, _, _ = select.select([fd], [], [], STATUS_TIMEOUT)
    data = os.read(fd, _STATUS.size) if ready else b""
    if len(data) != _STATUS.size:
        return None, None  # the zygote died before it could say
    return _from_returncode(os.waitstatus_to_exitcode(_STATUS.unpack(data)[0]))


def launch(method: str, fds: tuple[int, int, int], forked: Callable[[], None],
           close_in_child: list[int]) -> WorkerProcess:
    """Start a worker with ``fds`` (its task, result and progress descriptors).

    With ``fork`` the child runs ``forked()`` (which never returns) after
    closing ``close_in_child``; otherwise the worker reads its boot frame from
    its task pipe, which the caller writes.

    Raises:
        InitializerError: worker processes cannot be started here (the
            message says why and what to do).
    """
    if method == "fork":
        return _fork(forked, close_in_child)
    if not sys.executable:
        raise InitializerError(
            f"cannot start worker processes with start_method={method!r}: sys.executable is "
            "empty (an embedded interpreter); use start_method='fork'")
    if method == "spawn":
        return _spawn(fds)
    return _zygote().launch(fds)


# --- fork ---------------------------------------------------------------------------
def _fork(forked: Callable[[], None], close_in_child: list[int]) -> WorkerProcess:
    pid = os.fork()
    if pid == 0:  # the child: never returns
        try:
            for fd in close_in_child:
                with contextlib.suppress(OSError):
                    os.close(fd)
            _after_fork_in_child()
            forked()
        finally:
            os._exit(70)
    return WorkerProcess(pid, lambda: _waitpid(pid))


def _after_fork_in_child() -> None:
    # Forked by a thread of bingfa's, which blocks SIGINT (see
    # _interrupts.start_without_sigint): the worker's own programs must not
    # inherit that.
    import signal

    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    # multiprocessing objects inherited by the worker (a Queue or Lock in
    # initargs) reset their per-process state in these hooks, as they would
    # in a multiprocessing child; the parent's finalizers and children are
    # not the worker's (multiprocessing's own children start the same way).
    util = sys.modules.get("multiprocessing.util")
    if util is not None:
        util._finalizer_registry.clear()
        process = sys.modules.get("multiprocessing.process")
        if process is not None:
            vars(process)["_children"] = set()
        util._run_after_forkers()


# --- spawn --------------------------------------------------------------------------
_SPAWN_CODE = ("import sys; sys.path[:0] = {path!r}; "
               "from bingfa._pool._engines._process_worker import serve_received; "
               "serve_received({task}, {result}, {progress})")


def _spawn(fds: tuple[int, int, int]) -> WorkerProcess:
    import subprocess

    code = _SPAWN_CODE.format(path=_bingfa_path(), task=fds[0], result=fds[1], progress=fds[2])
    child = subprocess.Popen(_interpreter(code), pass_fds=fds, stdin=subprocess.DEVNULL)
    return WorkerProcess(child.pid, lambda: _from_returncode(child.wait()))


def _interpreter(code: str) -> list[str]:
    """The command line of a fresh interpreter like this one, running ``code``."""
    import subprocess

    flags: list[str] = subprocess._args_from_interpreter_flags()  # type: ignore[attr-defined]
    return [sys.executable, *flags, "-c", code]


def _bingfa_path() -> list[str]:
    """Where this bingfa is imported from, for a child whose sys.path may differ."""
    package = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))))
    return [package]


# --- forkserver: the zygote -----------------------------------------------------------
_ZYGOTE_CODE = ("import sys; sys.path[:0] = {path!r}; "
                "from bingfa._pool._engines._zygote import main; main({fd})")


class _Zygote:
    """This process's connection to its zygote, started on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None  # once the zygote said it is ready
        self._booting: socket.socket | None = None  # started by begin(), not ready yet
        self._process: Any = None  # subprocess.Popen

    def launch(self, fds: tuple[int, int, int]) -> WorkerProcess:
        status_r, status_w = os.pipe()
        try:
            with self._lock:
                pid = self._request(fds, status_w)
        except BaseException:
            os.close(status_r)
            raise
        finally:
            os.close(status_w)
        return WorkerProcess(pid, lambda: _reported_status(status_r), status_fd=status_r)

    def _request(self, fds: tuple[int, int, int], status_w: int) -> int:
        import socket  # with the zygote, not with every process pool (2 ms)

        for _ in range(2):
            sock = self._sock if self._sock is not None else self._start()
            try:
                socket.send_fds(sock, [b"F"], [*fds, status_w])
                reply = sock.recv(_PID.size)
            except OSError:
                reply = b""
            if len(reply) == _PID.size:
                pid: int = _PID.unpack(reply)[0]
                if pid > 0:
                    return pid
                raise InitializerError(
                    f"cannot start a worker process: fork failed in bingfa's forkserver "
                    f"({os.strerror(-pid)})")
            self.stop()  # it died (killed, out of memory): start another and ask again
        raise InitializerError("cannot start worker processes: bingfa's forkserver died at once "
                               "twice; its error is printed above")

    def begin(self) -> None:
        """Start the zygote without waiting for it: it boots while this process goes on."""
        with self._lock:
            if self._sock is None and self._booting is None:
                with contextlib.suppress(InitializerError):  # said again when it is needed
                    self._booting = self._spawn()

    def _start(self) -> socket.socket:
        """The zygote's socket, once it is ready (started here unless :meth:`begin` did)."""
        ours, self._booting = self._booting or self._spawn(), None
        ready = select.select([ours], [], [], ZYGOTE_START_TIMEOUT)[0]
        answer = ours.recv(4096) if ready else b""
        if answer != b"R":
            ours.close()
            self._reap(kill=True)
            reason = answer[1:].decode(errors="replace") if answer[:1] == b"E" else (
                "it exited at once" if ready else
                f"it was not ready within {ZYGOTE_START_TIMEOUT:.0f} s")
            raise InitializerError(
                f"cannot start worker processes: a fresh {sys.executable} could not load "
                f"bingfa's worker ({reason}); check that bingfa imports in a new interpreter "
                "here, or use start_method='fork'")
        self._sock = ours
        return ours

    def _spawn(self) -> socket.socket:
        """Run a fresh interpreter as the zygote; this end of its socket."""
        import socket
        import subprocess

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        from ..._core._interrupts import sigint_blocked

        code = _ZYGOTE_CODE.format(path=_bingfa_path(), fd=theirs.fileno())
        try:
            # Started with SIGINT blocked, which it keeps until it ignores it:
            # a Ctrl-C while it boots (it reaches the whole foreground group)
            # is for the parent to handle, not a traceback in the zygote.
            with sigint_blocked():
                self._process = subprocess.Popen(
                    _interpreter(code), pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
        except OSError as exc:
            ours.close()
            raise InitializerError(f"cannot start worker processes: {sys.executable} "
                                   f"could not be run ({exc})") from exc
        finally:
            theirs.close()
        return ours

    def stop(self) -> None:
        """Close the connection: the zygote exits, and is reaped."""
        for sock in (self._sock, self._booting):
            if sock is not None:
                sock.close()
        self._sock = self._booting = None
        self._reap(kill=False)

    def _reap(self, kill: bool) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if kill:
            with contextlib.suppress(OSError):
                process.kill()
        try:
            process.wait(2.0)
        except Exception:  # TimeoutExpired: it exits with us, or init reaps it
            process.returncode = 0

    def forget(self) -> None:
        """In a forked child: drop the parent's zygote without touching it."""
        self._lock = threading.Lock()
        for sock in (self._sock, self._booting):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()
        self._sock = self._booting = None
        if self._process is not None:
            self._process.returncode = 0  # not ours to reap
        self._process = None


_the_zygote: _Zygote | None = None
_zygote_lock = threading.Lock()


def _zygote() -> _Zygote:
    global _the_zygote
    with _zygote_lock:
        if _the_zygote is None:
            _the_zygote = _Zygote()
            os.register_at_fork(after_in_child=_forget_zygote)
            import atexit

            atexit.register(_stop_zygote)
        return _the_zygote


def _forget_zygote() -> None:
    global _zygote_lock
    _zygote_lock = threading.Lock()
    if _the_zygote is not None:
        _the_zygote.forget()


def _stop_zygote() -> None:
    if _the_zygote is not None:
        with contextlib.suppress(Exception):
            _the_zygote.stop()


def start_zygote() -> None:
    """Start the zygote now, if it is not running, and return at once.

    A process pool calls this before it imports the rest of its engine, so
    that the zygote's start (a fresh interpreter: tens of milliseconds)
    overlaps with that work rather than following it.
    """
    if sys.executable:
        _zygote().begin()


def zygote_pid() -> int | None:
    """The pid of this process's zygote, if one runs (for tests and ``bingfa info``)."""
    process = _the_zygote._process if _the_zygote is not None else None
    return process.pid if process is not None else None
