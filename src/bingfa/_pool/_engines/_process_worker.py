"""The main loop of a process worker (runs in the child).

Kept free of heavy imports (no asyncio, no multiprocessing): every worker
started from the zygote or spawned imports this module, and a worker
replaced after a crash should be ready in a millisecond, not a hundred.
"""

from __future__ import annotations

import _thread
import io
import mmap
import os
import pickle
import select
import signal
import sys
import time
import traceback
import types
from collections.abc import Callable
from typing import Any, NoReturn

from ..._core._context import WorkerContext, set_process_context
from ..._core._out_of_band import Part, let_go, loads_body
from ..._core._proctree import end_tree
from ..._core._remote_traceback import capture
from ..._core._serialization import dumps, dumps_parts, loads_function, serialization_error
from .._batch import run_batch
from .._describe import call_arguments, describe_call
from ._task_pipe import TaskPipe
from ._wire import (
    BATCH,
    DONE,
    FORGET,
    FRAME,
    INIT_FAILED,
    KIND_BATCH,
    KIND_DONE,
    KIND_LOAD_FAILED,
    KIND_STOP,
    LOAD_FAILED,
    LOADING,
    READY,
    SLOT_BYTES,
    SLOT_INDEX,
    SLOT_SEQ,
    SLOT_STARTED,
    SLOT_STOP,
    WRITEV_MAX,
    pack_names,
)

__all__ = ["WorkerBoot", "serve_inherited", "serve_received"]


class WorkerBoot:
    """What a worker needs from its parent before its first task.

    A forked worker gets it in memory (with the initializer as objects, so
    anything that can only be inherited works). Others get it pickled, as the
    first frame on their task pipe, with what they must share with the
    parent: ``sys.path``, the working directory, ``sys.argv``, the
    environment, and multiprocessing's authentication key.
    """

    def __init__(self, slot: int, parent_pid: int, init: bytes | None,
                 inherited_init: tuple[Callable[..., Any], tuple[Any, ...]] | None = None) -> None:
        self.slot = slot
        self.parent_pid = parent_pid
        self.init = init  # pickled (initializer, initargs), for workers not forked
        self.inherited_init = inherited_init
        self.sys_path = list(sys.path)
        try:
            self.cwd: str | None = os.getcwd()
        except OSError:  # the directory was removed
            self.cwd = None
        self.argv = list(sys.argv)
        self.env = dict(os.environ)
        self.authkey = _multiprocessing_authkey()

    def frame(self) -> bytes:
        """The boot frame for a worker that is not forked."""
        saved, self.inherited_init = self.inherited_init, None
        try:
            payload = pickle.dumps(self, pickle.HIGHEST_PROTOCOL)
        finally:
            self.inherited_init = saved
        return FRAME.pack(len(payload)) + payload

    def apply(self) -> None:
        """Make this fresh worker's interpreter look like the parent's."""
        sys.path[:] = self.sys_path
        sys.argv[:] = self.argv
        if self.cwd is not None:
            try:
                os.chdir(self.cwd)
            except OSError:
                pass
        if os.environ != self.env:
            os.environ.clear()
            os.environ.update(self.env)
        if self.authkey is not None:
            import multiprocessing.process

            multiprocessing.process.current_process().authkey = self.authkey
        # An empty __main__: the zygote's own (its -c command) must never
        # stand in for the user's, and pickles that name __main__ come by
        # value (see _core/_serialization.py).
        sys.modules["__main__"] = types.ModuleType("__main__")


def _multiprocessing_authkey() -> bytes | None:
    process = sys.modules.get("multiprocessing.process")
    if process is None:
        return None  # multiprocessing unused: nothing (no manager) needs the key
    return bytes(process.current_process().authkey)


def _leave(dead_parent: int | None = None) -> NoReturn:
    """The pool's process is gone or gave up on this worker: end what its task started, exit.

    Results this worker wrote to shared memory (see ``_core/_out_of_band``)
    will not be read: they go. So do the pool's, given ``dead_parent``, the
    pid of a pool process known to be dead (only then: a live pool's other
    workers may still be reading theirs).
    """
    end_tree(os.getpid(), include_root=False)
    from ..._core._shm import unlink_left_by

    unlink_left_by(os.getpid())
    if dead_parent is not None:
        unlink_left_by(dead_parent)
    os._exit(70)


def _exit_when_parent_dies(parent_pid: int) -> None:
    """Leave at once if the pool's process dies, even by SIGKILL."""
    try:
        pidfd = os.pidfd_open(parent_pid)
    except ProcessLookupError:
        _leave(parent_pid)
    except (AttributeError, OSError):
        # No pidfd (old kernel, not Linux): poll the parent instead.
        def poll() -> None:
            while True:
                time.sleep(0.25)
                try:
                    os.kill(parent_pid, 0)
                except ProcessLookupError:
                    _leave(parent_pid)
                except PermissionError:
                    pass

        _thread.start_new_thread(poll, ())
        return

    def wait() -> None:
        select.select([pidfd], [], [])
        _leave(parent_pid)

    # A bare thread: threading.Thread.start() waits until the new thread has
    # run, a round trip through the scheduler that costs a forked bf.Process
    # a quarter of its start (and the watcher needs nothing threading adds).
    _thread.start_new_thread(wait, ())


class _Writer:
    """Blocking frame writes to the parent."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def send(self, *parts: bytes | memoryview) -> None:
        size = sum(len(p) for p in parts)
        views = [memoryview(FRAME.pack(size))] + [memoryview(p) for p in parts]
        while views:
            written = os.writev(self.fd, views[:WRITEV_MAX])
            while written:
                head = views[0]
                if written >= len(head):
                    written -= len(head)
                    views.pop(0)
                else:
                    views[0] = head[written:]
                    written = 0


def _encode_results(fn: Callable[..., Any], items: list[Any], call: int, values: list[Any],
                    errors: list[tuple[int, Any]] | None) -> list[Part]:
    """Pickle a batch's outcomes; results that cannot be pickled become errors."""
    try:
        return dumps_parts((values, errors), shared=True)
    except Exception:
        pass
    # Find the culprits one by one and report them as that task's error.
    failed = {i for i, _ in errors} if errors else set()
    errors = list(errors) if errors else []
    values = list(values)
    for i, value in enumerate(values):
        if i in failed:
            continue
        try:
            dumps(value)
        except Exception as exc:
            task = describe_call(fn, *call_arguments(items[i], call))
            err = serialization_error(f"the result of {task}", value, exc)
            errors.append((i, capture(err)))
            values[i] = None
    errors.sort(key=lambda e: e[0])
    return dumps_parts((values, errors), shared=True)


def serve_inherited(boot: WorkerBoot, task_fd: int, result_fd: int, progress_fd: int) -> None:
    """A forked worker's life; never returns."""
    # A SIGTERM handler the parent installed must not outlive the fork:
    # the pool stops its workers with SIGTERM.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _run(boot, task_fd, result_fd, progress_fd)


def serve_received(task_fd: int, result_fd: int, progress_fd: int) -> None:
    """The life of a worker started by the zygote or spawned; never returns.

    Its boot frame comes first on the task pipe.
    """
    _run(None, task_fd, result_fd, progress_fd)


def _run(boot: WorkerBoot | None, task_fd: int, result_fd: int, progress_fd: int) -> None:
    """Run batches from the parent until it says stop; then leave at once.

    The process ends with ``os._exit``: a normal interpreter exit would wait
    for any non-daemon thread a task left behind, and a worker told to stop
    must stop.
    """
    code = 0
    try:
        _serve(boot, task_fd, result_fd, progress_fd)
        _finish_multiprocessing()
    except SystemExit as exc:  # from bingfa's own start-up only: tasks' are their errors
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                if stream is not None:
                    stream.flush()
            except Exception:
                pass
        os._exit(code)


def _finish_multiprocessing() -> None:
    """Flush what tasks put on multiprocessing queues, as a multiprocessing child does.

    A ``multiprocessing.Queue`` hands items to a feeder thread; a process that
    leaves with ``os._exit`` before the thread has written them loses them.
    multiprocessing's own exit handler waits for it (and for the children
    the worker's tasks started), so the worker runs it when it stops.
    """
    util = sys.modules.get("multiprocessing.util")
    if util is not None:
        util._exit_function()


def _serve(boot: WorkerBoot | None, task_fd: int, result_fd: int, progress_fd: int) -> None:
    """The worker's life: set up, then run batches until told to stop."""
    # Ctrl-C goes to the whole foreground process group; the parent decides
    # what happens to its workers, so they do not print KeyboardInterrupt.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Lives as long as the worker. A BufferedReader, for readinto; its raw
    # reads poll a moment for the next task before they sleep (see TaskPipe).
    reader = io.BufferedReader(TaskPipe(task_fd), buffer_size=1 << 16)
    if boot is None:
        head = reader.read(FRAME.size)
        if len(head) < FRAME.size:
            return  # the parent gave up on this worker before it started
        boot = pickle.loads(reader.read(FRAME.unpack(head)[0]))
        boot.apply()
    _exit_when_parent_dies(boot.parent_pid)

    progress = memoryview(mmap.mmap(progress_fd, SLOT_BYTES)).cast("q")
    os.close(progress_fd)
    writer = _Writer(result_fd)

    ctx = WorkerContext(boot.slot)
    set_process_context(ctx)
    if boot.init is not None or boot.inherited_init is not None:
        try:
            initializer, initargs = (boot.inherited_init if boot.inherited_init is not None
                                     else loads_function(boot.init))  # type: ignore[arg-type]
            ctx.state = initializer(*initargs)
        except BaseException as exc:
            writer.send(bytes([INIT_FAILED]), dumps(capture(exc)))
            return
        finally:
            initializer = initargs = None
    boot = None  # it holds the environment and the initializer's arguments: let them go
    writer.send(bytes([READY]))

    functions: dict[int, Callable[..., Any]] = {}
    monotonic_ns = time.monotonic_ns
    perf_counter = time.perf_counter

    def mark(i: int) -> bool:
        # Asked to stop this batch (another worker has nothing to do): the
        # tasks from i on go back to the pool. The first task always runs, so
        # a batch cannot go round without one of its tasks getting done.
        if i and progress[SLOT_STOP] == progress[SLOT_SEQ]:
            return True
        progress[SLOT_STARTED] = monotonic_ns()
        progress[SLOT_INDEX] = i
        return False

    while True:
        head = reader.read(FRAME.size)
        if len(head) < FRAME.size:
            # The pipe closed without a stop: the pool's process died (this
            # may come before the watcher sees it) or gave up on this worker.
            _leave()
        (size,) = FRAME.unpack(head)
        header = reader.read(min(size, BATCH.size))
        if header[0] == KIND_STOP:
            return
        if header[0] != KIND_BATCH:
            (_, fn_id) = FORGET.unpack_from(header)
            functions.pop(fn_id, None)
            continue
        _, seq, fn_id, call, track, fn_len = BATCH.unpack_from(header)
        # Mark the batch before reading its body or unpickling anything, so a
        # worker that dies doing either (out of memory, a segfault in
        # __setstate__) is blamed on this batch.
        progress[SLOT_INDEX] = LOADING
        progress[SLOT_STARTED] = monotonic_ns()
        progress[SLOT_SEQ] = seq
        # Read into a buffer of our own, writable: arrays that travelled out
        # of band are built on it, and the task may change them.
        frame = memoryview(bytearray(size - BATCH.size))
        if reader.readinto(frame) != frame.nbytes:
            _leave()  # the pipe closed in the middle of a frame: the pool's process died
        # BaseException: an object whose unpickling calls sys.exit() fails
        # its batch, it does not end the worker.
        try:
            if fn_len:
                functions[fn_id] = loads_function(frame[:fn_len])
            fn = functions[fn_id]
        except BaseException as exc:
            writer.send(LOAD_FAILED.pack(KIND_LOAD_FAILED, seq, 1), dumps(capture(exc)))
            continue
        lent: list[tuple[str, Any]] = []  # segments the parent lent this batch
        try:
            items = loads_body(frame[fn_len:], lent)
        except BaseException as exc:
            writer.send(LOAD_FAILED.pack(KIND_LOAD_FAILED, seq, 0), dumps(capture(exc)))
            continue
        del frame
        # Now the tasks start (a tracked batch marks each one as it starts).
        progress[SLOT_STARTED] = monotonic_ns()
        progress[SLOT_INDEX] = -1
        t0 = perf_counter()
        values, raw_errors = run_batch(fn, items, call, mark if track else None)
        elapsed = perf_counter() - t0
        errors = [(i, capture(e)) for i, e in raw_errors] if raw_errors else None
        del raw_errors
        result = _encode_results(fn, items, call, values, errors)
        del items, fn
        # The batch's arguments and results must not live on in an idle
        # worker (they may be large, or hold resources the caller expects
        # freed): only the bytes are left when the frame goes out.
        del values, errors
        # The lent segments nothing here uses any more may be written again;
        # one a task kept something of is the parent's to give up.
        free = let_go(lent)[0] if lent else []
        del lent
        writer.send(DONE.pack(KIND_DONE, seq, elapsed, len(free)),
                    pack_names(free) if free else b"", *result)
        del result
