"""The main loop of a process worker (runs in the child).

Kept free of heavy imports: with the ``forkserver`` and ``spawn`` start methods
every worker imports this module before it can run a task.
"""

from __future__ import annotations

import mmap
import os
import pickle
import select
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from multiprocessing import reduction
from typing import Any

from ..._core._context import WorkerContext, set_process_context
from ..._core._remote_traceback import capture
from ..._core._serialization import dumps, serialization_error
from .._batch import run_batch
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
    READY,
    SLOT_BYTES,
    SLOT_INDEX,
    SLOT_SEQ,
    SLOT_STARTED,
)

__all__ = ["WorkerBoot", "worker_main"]


class WorkerBoot:
    """What a worker process needs to start: its pipes, slot and initializer.

    File descriptors travel with the start method's own machinery
    (``multiprocessing.reduction.DupFd``), so the same object works for fork,
    forkserver and spawn.
    """

    def __init__(self, slot: int, task_fd: int, result_fd: int, progress_fd: int,
                 parent_pid: int, init: bytes | None, by_value: bool,
                 close_fds: list[int]) -> None:
        self.slot = slot
        self.task_fd = task_fd
        self.result_fd = result_fd
        self.progress_fd = progress_fd
        self.parent_pid = parent_pid
        self.init = init
        self.by_value = by_value
        # Only with fork: the parent's ends of every pool pipe, inherited by
        # accident, which must be closed so end-of-file means what it says.
        self.close_fds = close_fds

    def __reduce__(self) -> tuple[Any, ...]:
        dup = reduction.DupFd
        return (_rebuild_boot, (self.slot, dup(self.task_fd), dup(self.result_fd),
                                dup(self.progress_fd), self.parent_pid, self.init, self.by_value))


def _rebuild_boot(slot: int, task: Any, result: Any, progress: Any, parent_pid: int,
                  init: bytes | None, by_value: bool) -> WorkerBoot:
    return WorkerBoot(slot, task.detach(), result.detach(), progress.detach(), parent_pid,
                      init, by_value, [])


def _exit_when_parent_dies(parent_pid: int) -> None:
    """Leave at once if the pool's process dies, even by SIGKILL."""
    try:
        pidfd = os.pidfd_open(parent_pid)
    except ProcessLookupError:
        os._exit(70)
    except (AttributeError, OSError):
        # No pidfd (old kernel, not Linux): poll the parent instead.
        def poll() -> None:
            while True:
                time.sleep(0.25)
                try:
                    os.kill(parent_pid, 0)
                except ProcessLookupError:
                    os._exit(70)
                except PermissionError:
                    pass

        threading.Thread(target=poll, name="bingfa-parent-watch", daemon=True).start()
        return

    def wait() -> None:
        select.select([pidfd], [], [])
        os._exit(70)

    threading.Thread(target=wait, name="bingfa-parent-watch", daemon=True).start()


class _Writer:
    """Blocking frame writes to the parent."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def send(self, *parts: bytes) -> None:
        size = sum(len(p) for p in parts)
        views = [memoryview(FRAME.pack(size))] + [memoryview(p) for p in parts]
        while views:
            written = os.writev(self.fd, views)
            while written:
                head = views[0]
                if written >= len(head):
                    written -= len(head)
                    views.pop(0)
                else:
                    views[0] = head[written:]
                    written = 0


def _encode_results(values: list[Any], errors: list[tuple[int, Any]] | None,
                    by_value: bool) -> bytes:
    """Pickle a batch's outcomes; results that cannot be pickled become errors."""
    try:
        return dumps((values, errors), by_value)
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
            dumps(value, by_value)
        except Exception as exc:
            err = serialization_error(f"the result of task #{i} of its batch", value, exc)
            errors.append((i, capture(err, by_value)))
            values[i] = None
    errors.sort(key=lambda e: e[0])
    return dumps((values, errors), by_value)


def worker_main(boot: WorkerBoot) -> None:
    """Run batches from the parent until it says stop; then leave at once.

    The process ends with ``os._exit``: a normal interpreter exit would wait
    for any non-daemon thread a task left behind, and a worker told to stop
    must stop.
    """
    code = 0
    try:
        _serve(boot)
    except SystemExit as exc:  # a task called sys.exit(): the worker exits with it
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


def _serve(boot: WorkerBoot) -> None:
    """The worker's life: set up, then run batches until told to stop."""
    # Ctrl-C goes to the whole foreground process group; the parent decides
    # what happens to its workers, so they do not print KeyboardInterrupt.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for fd in boot.close_fds:
        try:
            os.close(fd)
        except OSError:
            pass
    _exit_when_parent_dies(boot.parent_pid)

    progress = memoryview(mmap.mmap(boot.progress_fd, SLOT_BYTES)).cast("q")
    os.close(boot.progress_fd)
    reader = open(boot.task_fd, "rb", buffering=1 << 16)  # noqa: SIM115 - lives as long as the worker
    writer = _Writer(boot.result_fd)
    by_value = boot.by_value

    ctx = WorkerContext(boot.slot)
    set_process_context(ctx)
    if boot.init is not None:
        try:
            initializer, initargs = pickle.loads(boot.init)
            ctx.state = initializer(*initargs)
        except Exception as exc:
            writer.send(bytes([INIT_FAILED]), dumps(capture(exc, by_value)))
            return
    writer.send(bytes([READY]))

    functions: dict[int, Callable[..., Any]] = {}
    monotonic_ns = time.monotonic_ns
    perf_counter = time.perf_counter

    def mark(i: int) -> None:
        progress[SLOT_STARTED] = monotonic_ns()
        progress[SLOT_INDEX] = i

    while True:
        head = reader.read(FRAME.size)
        if len(head) < FRAME.size:
            return  # the parent closed the pipe
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
        progress[SLOT_INDEX] = 0 if track else -1
        progress[SLOT_STARTED] = monotonic_ns()
        progress[SLOT_SEQ] = seq
        frame = memoryview(reader.read(size - BATCH.size))
        try:
            if fn_len:
                functions[fn_id] = pickle.loads(frame[:fn_len])
            fn = functions[fn_id]
        except Exception as exc:
            writer.send(LOAD_FAILED.pack(KIND_LOAD_FAILED, seq, 1), dumps(capture(exc, by_value)))
            continue
        try:
            items = pickle.loads(frame[fn_len:])
        except Exception as exc:
            writer.send(LOAD_FAILED.pack(KIND_LOAD_FAILED, seq, 0), dumps(capture(exc, by_value)))
            continue
        del frame
        t0 = perf_counter()
        values, raw_errors = run_batch(fn, items, call, mark if track else None)
        elapsed = perf_counter() - t0
        errors = [(i, capture(e, by_value)) for i, e in raw_errors] if raw_errors else None
        writer.send(DONE.pack(KIND_DONE, seq, elapsed), _encode_results(values, errors, by_value))
