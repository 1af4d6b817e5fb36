"""A process child started with ``os.fork`` directly: the cheap way, when fork is asked for.

A forked child inherits the function and its arguments, so nothing is pickled
on the way in, and it needs none of a pool's machinery (task pipe, progress
slot, manager thread): it runs the function once, writes the pickled outcome
to a pipe and exits. One thread in the parent waits for the outcome and the
exit (a pidfd), and settles the future; a child that died without an outcome
is a :class:`~bingfa.WorkerCrashedError` naming the signal or exit code.
Stopping it ends its whole process tree, as a pool's worker is ended.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import signal
import threading
from collections.abc import Callable
from typing import Any

from .._core._errors import WorkerCrashedError
from .._core._interrupts import start_without_sigint
from .._core._proctree import descendants, end_tree
from .._core._remote_traceback import capture, rebuild
from .._core._serialization import serialization_error
from ._children import Child

__all__ = ["ForkChild", "process_child"]

_RESULT, _ERROR = 0, 1
READ_SIZE = 1 << 16


class ForkChild(Child):
    """A function in a child made by ``os.fork()``; see the module's docstring."""

    def __init__(self, name: str, fn: Callable[..., Any], args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> None:
        super().__init__(name)
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.kill_grace = 0.2
        self._pid: int | None = None
        self._pidfd = -1
        self._waiter: threading.Thread | None = None
        self._stopper: threading.Thread | None = None

    def pid(self) -> int | None:
        """The child's process id, once started."""
        return self._pid

    def set_kill_grace(self, seconds: float) -> None:
        """How long a stopped child's tree gets between SIGTERM and SIGKILL."""
        self.kill_grace = seconds

    def start(self) -> None:
        from .._pool._engines._launcher import _after_fork_in_child
        from .._pool._engines._process_worker import _exit_when_parent_dies

        self.future.set_running_or_notify_cancel()
        read_end, write_end = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 70
            try:
                os.close(read_end)
                _after_fork_in_child()
                # Should this process die, even by SIGKILL, the child and what it
                # started go too, as a pool's workers do.
                _exit_when_parent_dies(parent)
                code = _run_and_report(self.fn, self.args, self.kwargs, write_end)
                _as_a_process_ends()
            finally:
                os._exit(code)
        os.close(write_end)
        del self.fn, self.args, self.kwargs  # the child has them; the parent lets go
        self._pid = pid
        self._pidfd = os.pidfd_open(pid)
        # A daemon: the interpreter's exit must not wait for a child nobody
        # waits for (the exit hook in _handles ends it, then joins this).
        self._waiter = threading.Thread(target=self._wait, args=(read_end,),
                                        name=f"{self.name}-wait", daemon=True)
        start_without_sigint(self._waiter)

    def _wait(self, read_end: int) -> None:
        """Read the outcome until the pipe ends or the child has exited; reap; settle."""
        chunks: list[bytes] = []
        poller = select.poll()
        poller.register(read_end, select.POLLIN)
        poller.register(self._pidfd, select.POLLIN)
        try:
            while True:
                events = dict(poller.poll())
                if read_end in events:
                    data = os.read(read_end, READ_SIZE)
                    if not data:
                        break
                    chunks.append(data)
                    continue
                if self._pidfd in events:
                    # Exited, but something it started may hold the pipe open:
                    # take what is there without waiting for an end that may not come.
                    os.set_blocking(read_end, False)
                    with contextlib.suppress(BlockingIOError):
                        while data := os.read(read_end, READ_SIZE):
                            chunks.append(data)
                    break
        finally:
            os.close(read_end)
        _, status = os.waitpid(self._pid or 0, 0)
        os.close(self._pidfd)
        self._settle_from(b"".join(chunks), status)

    def _settle_from(self, data: bytes, status: int) -> None:
        if data:
            try:
                kind, payload = pickle.loads(data)
            except BaseException as exc:
                self._settle(error=exc)
                return
            if kind == _RESULT:
                self._settle(payload)
            else:
                self._settle(error=rebuild(payload))
            return
        code = os.waitstatus_to_exitcode(status)
        if code < 0:
            sig = -code
            try:
                signame = signal.Signals(sig).name
            except ValueError:
                signame = str(sig)
            message = f"{self.name} (pid {self._pid}) was killed by signal {sig} ({signame})"
            error = WorkerCrashedError(message, pid=self._pid, signal=sig)
        else:
            error = WorkerCrashedError(
                f"{self.name} (pid {self._pid}) exited with code {code} before its function "
                "returned", pid=self._pid, exitcode=code)
        self._settle(error=error)

    def _stop(self) -> None:
        pid = self._pid
        if pid is None:
            return
        self._stopper = threading.Thread(target=self._end_tree, args=(pid,),
                                         name=f"{self.name}-stop")
        start_without_sigint(self._stopper)

    def _end_tree(self, pid: int) -> None:
        """SIGTERM to the child and its descendants; SIGKILL to what is left after the grace."""
        tree = [pid, *descendants(pid)]
        signum = signal.SIGTERM if self.kill_grace > 0 else signal.SIGKILL
        for member in tree:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(member, signum)
        if self.kill_grace > 0 and self._waiter is not None:
            self._waiter.join(self.kill_grace)
        for member in tree[1:]:
            end_tree(member)
        if self._waiter is not None and self._waiter.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def join(self) -> None:
        if self._stopper is not None:
            self._stopper.join()
        if self._waiter is not None:
            self._waiter.join()


def _run_and_report(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                    fd: int) -> int:
    """In the child: run ``fn``, write its pickled outcome to ``fd``; the exit code."""
    try:
        outcome: tuple[int, Any] = (_RESULT, fn(*args, **kwargs))
        code = 0
    except SystemExit as exc:
        outcome = (_ERROR, capture(exc))
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException as exc:
        outcome = (_ERROR, capture(exc))
        code = 1
    try:
        data = pickle.dumps(outcome, pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        error = serialization_error("the result of the process's function", outcome[1], exc)
        data = pickle.dumps((_ERROR, capture(error)), pickle.HIGHEST_PROTOCOL)
        code = 1
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.close(fd)
    return code


def process_child(name: str, fn: Callable[..., Any], args: tuple[Any, ...],
                  kwargs: dict[str, Any], start_method: str | None) -> Child:
    """The child for a function in a process: forked directly with ``fork``, else a
    one-worker pool (``forkserver``, ``spawn``: the function travels by value)."""
    if start_method == "fork":
        return ForkChild(name, fn, args, kwargs)
    if start_method not in (None, "forkserver", "spawn"):
        raise ValueError("start_method must be 'forkserver', 'fork' or 'spawn', "
                         f"not {start_method!r}")
    from ._children import ProcessChild

    return ProcessChild(name, fn, args, kwargs, start_method)


def _as_a_process_ends() -> None:
    """What an exiting process does that ``os._exit`` skips: flush what it printed, and
    let multiprocessing's queues finish sending (as its own children do)."""
    import sys

    util = sys.modules.get("multiprocessing.util")
    if util is not None:
        with contextlib.suppress(Exception):
            util._exit_function()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            if stream is not None:
                stream.flush()
