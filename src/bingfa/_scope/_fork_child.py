"""A process child started with ``os.fork`` directly: the cheap way, when fork is asked for.

A forked child inherits the function and its arguments, so nothing is pickled
on the way in, and it needs none of a pool's machinery (task pipe, progress
slot, manager thread): it runs the function once, writes the pickled outcome
to a pipe and exits. The parent reads the outcome until the pipe ends or the
child has exited (a pidfd), reaps it and settles the future; a child that died
without an outcome is a :class:`~bingfa.WorkerCrashedError` naming the signal
or exit code. Stopping it ends its whole process tree, as a pool's worker is
ended.

Who reads: in a scope, a thread of the child's own, started with it, since the
scope must hear of a failure while its block still runs. A ``bf.Process``
handle starts that thread only when something needs the future settled on its
own (``handle.future``: callbacks, ``await``); otherwise the thread that asks
(``result()``, ``join()``, ``is_alive()``) reads and reaps itself, which
spares starting a thread per child (on a busy machine, a scheduling delay).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from .._core._errors import WorkerCrashedError
from .._core._futures import Future
from .._core._interrupts import start_without_sigint
from .._core._out_of_band import loads_body
from .._core._proctree import descendants, end_tree
from .._core._remote_traceback import capture, rebuild
from .._core._serialization import dumps_parts, serialization_error
from ._children import Child

__all__ = ["ForkChild", "process_child"]

_RESULT, _ERROR = 0, 1
READ_SIZE = 1 << 16


class ForkChild(Child):
    """A function in a child made by ``os.fork()``; see the module's docstring."""

    def __init__(self, name: str, fn: Callable[..., Any], args: tuple[Any, ...],
                 kwargs: dict[str, Any], watch: bool = True) -> None:
        super().__init__(name)
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.kill_grace = 0.2
        self._watch_at_start = watch
        self._pid: int | None = None
        self._pidfd = -1
        self._read_end = -1
        self._poller: select.poll | None = None
        self._chunks: list[bytes] = []
        self._reading = threading.Lock()  # one reader at a time
        self._watch_lock = threading.Lock()
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
        self._read_end = read_end
        self._poller = select.poll()
        self._poller.register(read_end, select.POLLIN)
        self._poller.register(self._pidfd, select.POLLIN)
        if self._watch_at_start:
            self.watch()
        else:
            self.future._waiter = self._read_for

    def watch(self) -> None:
        """Settle the future as soon as the child ends, from a thread of its own."""
        with self._watch_lock:
            if self._waiter is not None or self._read_end < 0:
                return
            # A daemon: the interpreter's exit must not wait for a child nobody
            # waits for (the exit hook in _handles ends it, then joins this).
            self._waiter = threading.Thread(target=self._read, args=(None,),
                                            name=f"{self.name}-wait", daemon=True)
            start_without_sigint(self._waiter)

    def poll(self) -> None:
        """Settle the future now if the child has ended, without waiting."""
        self._read(0.0)

    def _read_for(self, future: Future[Any], timeout: float | None) -> None:
        self._read(timeout)  # the future's _waiter: its caller reads in its own thread

    def _read(self, timeout: float | None) -> bool:
        """Read the outcome until the child ends (then reap and settle) or ``timeout``
        passes; whether it has ended."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._reading.acquire(timeout=-1 if timeout is None else timeout):
            return self._read_end < 0
        try:
            while self._read_end >= 0:
                assert self._poller is not None
                if deadline is None:
                    events = dict(self._poller.poll())
                else:
                    left_ms = max(0, int((deadline - time.monotonic()) * 1000 + 0.999))
                    events = dict(self._poller.poll(left_ms))
                    if not events:
                        return False
                if self._read_end in events:
                    data = os.read(self._read_end, READ_SIZE)
                    if data:
                        self._chunks.append(data)
                        continue
                elif self._pidfd in events:
                    # Exited, but something it started may hold the pipe open:
                    # take what is there without waiting for an end that may not come.
                    os.set_blocking(self._read_end, False)
                    with contextlib.suppress(BlockingIOError):
                        while data := os.read(self._read_end, READ_SIZE):
                            self._chunks.append(data)
                self._reap()
            return True
        finally:
            self._reading.release()

    def _reap(self) -> None:
        """The child has ended: close the pipe, reap it, settle (reading lock held)."""
        os.close(self._read_end)
        self._read_end = -1
        _, status = os.waitpid(self._pid or 0, 0)
        os.close(self._pidfd)
        data, self._chunks = b"".join(self._chunks), []
        self._settle_from(data, status)

    def _settle_from(self, data: bytes, status: int) -> None:
        if data:
            try:
                kind, payload = loads_body(memoryview(data))
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
        ended = self.kill_grace > 0 and self._read(self.kill_grace)
        for member in tree[1:]:
            end_tree(member)
        if not ended:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def join(self) -> None:
        if self._stopper is not None:
            self._stopper.join()
        if self._waiter is not None:
            self._waiter.join()
        else:
            self._read(None)


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
        # Big buffers (a numpy result) go through shared memory: the parent
        # maps them instead of reading them through the pipe.
        parts = dumps_parts(outcome, shared=True)
    except Exception as exc:
        error = serialization_error("the result of the process's function", outcome[1], exc)
        parts = [pickle.dumps((_ERROR, capture(error)), pickle.HIGHEST_PROTOCOL)]
        code = 1
    for part in parts:
        view = memoryview(part).cast("B")
        while view:
            view = view[os.write(fd, view):]
    os.close(fd)
    return code


def process_child(name: str, fn: Callable[..., Any], args: tuple[Any, ...],
                  kwargs: dict[str, Any], start_method: str | None,
                  watch: bool = True) -> Child:
    """The child for a function in a process: forked directly with ``fork``, else a
    one-worker pool (``forkserver``, ``spawn``: the function travels by value).

    ``watch=False`` lets a forked child be read by whoever waits for it (see
    the module's docstring).
    """
    if start_method == "fork":
        return ForkChild(name, fn, args, kwargs, watch)
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
