"""Process mode: tasks run in worker processes, one manager thread in the parent.

Design, in the order a task meets it:

- The thread that submits work also sends it: it takes a batch from the
  scheduler, pickles it and writes it straight into the least busy worker's
  pipe (non-blocking). There is no queue thread to hop through, which is most
  of a round trip's latency.
- Each worker holds at most ``PREFETCH`` batches, so it starts the next one as
  soon as it finishes the last, while the rest of the work stays in the
  scheduler where other workers can still take it.
- One *manager* thread waits (epoll) on every worker's result pipe, on a
  pidfd per worker (readable when it exits, however it dies) and on a wake-up
  pipe. It decodes results, hands the finished batch to its job, refills the
  worker, flushes writes that did not fit in a pipe, enforces task timeouts and
  replaces dead workers.
- Only the manager reads, and nobody ever blocks on a write, so a worker stuck
  writing a large result can never deadlock against a parent writing a large
  batch.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import mmap
import os
import pickle
import select
import signal
import sys
import threading
import time
import types
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from typing import Any

from ..._core._errors import (
    DeadlockError,
    InitializerError,
    PoolClosedError,
    TaskTimeoutError,
    WorkerCrashedError,
)
from ..._core._futures import Future
from ..._core._interrupts import deferred_sigint, start_without_sigint
from ..._core._out_of_band import (
    Part,
    loads_body,
    parts_size,
    segment_names,
    shared_bytes,
)
from ..._core._proctree import descendants, end_tree
from ..._core._remote_traceback import rebuild
from ..._core._segment_cache import SegmentCache
from ..._core._serialization import (
    FunctionCache,
    dumps_function,
    dumps_parts,
    find_unpicklable,
    serialization_error,
    unpickling_error,
)
from ..._core._shm import unlink_left_by
from .._batch import CALL_KW, CALL_STAR
from .._jobs import Batch, Job, ManyJob, OneJob
from .._scheduler import Scheduler
from ._base import Engine, EngineConfig, inherited_error, initializer_error
from ._launcher import START_METHODS, WorkerProcess, launch
from ._process_worker import WorkerBoot, serve_inherited
from ._wire import (
    BATCH,
    DONE,
    FORGET,
    FRAME,
    INIT_FAILED,
    KIND_BATCH,
    KIND_DONE,
    KIND_FORGET,
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
    unpack_names,
)

__all__ = ["ProcessEngine", "default_start_method"]

PREFETCH = 2  # map chunks a worker holds: one running, one waiting in its pipe
# A worker with nothing to do takes a share of the tasks another worker's
# running chunk has not started, when they hold at least this much work (by the
# map's measured time per task): handing them over costs a round trip or two.
SHARE_AT_LEAST_SECONDS = 2e-3
# Seconds until the manager looks again for work to share, while a worker idles
# beside a chunk that has not started yet.
SHARE_LOOK_AGAIN = 5e-3
KNOWN_FUNCTIONS = 64  # functions a worker keeps unpickled
PIPE_SIZE = 1 << 20  # ask Linux for 1 MiB pipes: fewer wake-ups for big batches
READ_SIZE = 1 << 18
LARGE_FRAME = 1 << 20  # frames above this are read into a buffer of their own
# Workers that exit with an error before they are ready, this many in a row,
# break the pool: starting them is what fails. Workers *killed* as they start
# (the OOM killer, a chaos tool) never break it; they are replaced, no faster
# than EARLY_DEATHS_PER_SECOND (at least) a second, then with a growing pause.
STARTUP_FAILURES = 3
EARLY_DEATHS_PER_SECOND = 4
MAX_RESTART_PAUSE = 1.0
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)

_Post = Callable[[], None]


def default_start_method() -> str:
    """``forkserver``: workers fork from bingfa's zygote (see ``_launcher``).

    ``fork`` is not the default: the parent of a pool always has a second
    thread (the manager), and forking a threaded process can deadlock the
    child on a lock some other thread held.
    """
    return START_METHODS[0]


class _Proc:
    """The parent's view of one worker process."""

    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.process: WorkerProcess | None = None
        self.pid = 0
        self.task_fd = -1
        self.result_fd = -1
        self.pidfd = -1  # the process's exit_fd while it is registered
        self.progress: memoryview | None = None
        self.inflight: deque[Batch] = deque()
        self.out: deque[memoryview] = deque()  # bytes not yet written to task_fd
        self.rbuf = bytearray()
        self.big: bytearray | None = None  # a large frame being read on its own
        self.big_fill = 0
        self.known: OrderedDict[int, None] = OrderedDict()
        self.tasks_sent = 0
        self.ready = False
        self.retiring = False  # got its last task (max_tasks_per_worker): finish, then exit
        self.gone = False  # replaced: dead, killed or retired
        self.kill_at: float | None = None
        self.killed = False  # sent SIGTERM (and SIGKILL at kill_at)

    def load(self) -> int:
        return len(self.inflight)


class ProcessEngine(Engine):
    """Runs batches in ``workers`` processes."""

    def __init__(self, scheduler: Scheduler, config: EngineConfig) -> None:
        super().__init__(scheduler, config)
        self._lock = scheduler.lock
        method = config.start_method or default_start_method()
        self._init: bytes | None = None
        self._inherited_init: tuple[Callable[..., Any], tuple[Any, ...]] | None = None
        if config.initializer is not None:
            if method == "fork":
                self._inherited_init = (config.initializer, config.initargs)
            else:
                try:
                    self._init = _pickle_initializer(config.initializer, config.initargs)
                except _InheritOnly as exc:
                    if config.start_method is not None:
                        raise exc.error(method) from exc.__cause__
                    # multiprocessing's Lock, Queue, Value, Array in initargs can
                    # only be inherited: fork, as multiprocessing.Pool does here.
                    method = "fork"
                    self._inherited_init = (config.initializer, config.initargs)
        self._method = self.start_method = method
        # Workers not forked from this process never see its __main__.
        self._main_by_value = method != "fork"
        # Segments the batches' big buffers are written into, lent to workers
        # and written again once given back (see _core/_segment_cache).
        self._segments = SegmentCache()
        # With fork, workers have this process's __main__ as it was when they
        # forked: its functions that existed then go by name (see start()).
        self._main_at_fork: dict[str, weakref.ref[Callable[..., Any]]] = {}
        self._functions = FunctionCache(
            main_inherited=self._inherited_from_main if method == "fork" else None)
        self._slots: list[_Proc | None] = [None] * config.workers
        self._dying: list[_Proc] = []  # terminated or retired, not reaped yet
        # Descendants of killed workers (what their tasks started), SIGTERMed
        # with their worker: (when to SIGKILL those still alive, pids).
        self._stragglers: list[tuple[float, list[int]]] = []
        # Worker deaths before ready, by signal (monotonic times), and slots
        # whose replacement waits for the rate limit: slot -> when to start.
        self._early_deaths: deque[float] = deque()
        self._pending_starts: dict[int, float] = {}
        # Tasks to stop though they run (stop_running), until they start or end.
        self._stops: list[tuple[OneJob, BaseException]] = []
        # A worker idles beside a map chunk that had not started: look again (see
        # _ask_to_share).
        self._share_later = False
        self._launch_failure: BaseException | None = None
        self._handlers: dict[int, tuple[int, _Proc | None]] = {}
        self._scratch = memoryview(bytearray(READ_SIZE))  # manager's read buffer
        self._poller, self._cooperative = _epoll()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._draining = False
        self._terminated = False
        self._startup_failures = 0
        self._init_failed = False
        self._seq = 0
        self._manager: threading.Thread | None = None
        self._done = False
        # Leader/follower: whoever holds _poll_lock runs _step. The manager
        # usually does; a caller blocked on a result may take over (wait_for).
        self._poll_lock = threading.Lock()
        self._lead_mutex = threading.Lock()
        self._lead_cond = threading.Condition(threading.Lock())
        self._lead_wanted = False
        self._leader: threading.Thread | None = None
        self._register(self._wake_r, _WAKE, None)
        scheduler.wake = self.wake

    # --- engine protocol -------------------------------------------------------
    def start(self) -> None:
        if self._method == "fork":
            main = sys.modules.get("__main__")
            self._main_at_fork = {
                name: weakref.ref(obj) for name, obj in vars(main).items()
                if type(obj) is types.FunctionType} if main is not None else {}
        # Otherwise functions of __main__ go by value: the plain ones with the
        # C pickler, the rest with cloudpickle, imported when one comes (see
        # _serialization.dumps_function).

        with self._lock:
            for slot in range(self.workers):
                self._start_proc(slot)
        self._manager = threading.Thread(
            target=self._manage, name=f"bingfa-process-manager-{id(self):x}", daemon=True)
        start_without_sigint(self._manager)

    def wake(self) -> None:
        """Hand queued work to workers with room, from the calling thread."""
        with self._lock:
            posts = self._dispatch()
            # The manager decides when a draining pool is done; and when a
            # worker idles beside a chunk not started yet, the manager (asleep
            # with no deadline, maybe) must look again soon (see _ask_to_share).
            manager_wanted = self._draining or self._share_later
        _run_posts(posts)
        if manager_wanted:
            self._poke()

    def shutdown(self, wait: bool) -> None:
        with self._lock:
            self._draining = True
        self._poke()
        if wait:
            self.join()

    def terminate(self) -> None:
        error = PoolClosedError("the pool was terminated before the task finished")
        with self._lock:
            self._terminated = self._draining = True
            if self.scheduler.broken is None:
                # Tasks that come back later (a crash being settled right
                # now) fail at once instead of waiting in a dead pool.
                self.scheduler.broken = error
            jobs = self.scheduler.cancel_all()
            workers = []
            for p in self._slots:
                if p is not None:
                    jobs.extend(b.job for b in p.inflight)
                    self._free_segments(p.inflight)
                    p.inflight.clear()
                    workers.append(p.pid)
        self.abort_jobs(jobs, error)
        self._poke()
        self.join()
        for pid in workers:  # results they were writing when they were killed
            if pid:
                unlink_left_by(pid)

    def _inherited_from_main(self, fn: Callable[..., Any]) -> bool:
        """Whether every worker (all forked since start()) has ``fn`` in its __main__."""
        ref = self._main_at_fork.get(getattr(fn, "__name__", ""))
        return ref is not None and ref() is fn

    def know_function(self, fn: Callable[..., Any], pickled: bytes) -> None:
        self._functions.seed(fn, pickled)

    def stop_running(self, job: OneJob, error: BaseException) -> None:
        """Kill (and replace) the worker running ``job``'s task; the manager does it."""
        with self._lock:
            self._stops.append((job, error))
        self._poke()

    def _carry_out_stops(self, now: float, posts: list[_Post]) -> None:
        """Stop the tasks asked to stop that run now (lock held).

        A request stays until its task runs (it may still wait in a worker's
        queue) or its job is done.
        """
        waiting: list[tuple[OneJob, BaseException]] = []
        for job, error in self._stops:
            if job.future.done():
                continue
            for p in self._slots:
                index = self._running_index_of(p, job)
                if index is not None:
                    assert p is not None
                    self._lose_worker(p, head_index=index, error=error, posts=posts)
                    self._kill(p, now)
                    self._replace(p)
                    break
            else:
                waiting.append((job, error))
        self._stops = waiting

    def _running_index_of(self, p: _Proc | None, job: OneJob) -> int | None:
        """The index in ``p``'s head batch of ``job``'s task, if it runs now (lock held)."""
        if p is None or p.gone or not p.inflight or p.progress is None:
            return None
        if self._task_started(p) is None:
            return None
        head = p.inflight[0]
        index = max(0, p.progress[SLOT_INDEX])
        if head.job is job:
            return index
        # Quick submits travel in groups (GroupJob): is the running member ours?
        members: list[Job] = getattr(head.job, "members", [])
        return index if index < len(members) and members[index] is job else None

    def join(self, timeout: float | None = None) -> bool:
        manager = self._manager
        if manager is None or threading.current_thread() in (manager, self._leader):
            # Called from a callback run by the thread polling the workers:
            # it cannot wait for itself; the pool stops once it returns.
            return not manager.is_alive() if manager is not None else True
        manager.join(timeout)
        return not manager.is_alive()

    def wait_for(self, future: Future[Any], timeout: float | None) -> None:
        """Wait for ``future`` by polling the workers in this thread.

        Without this, a result travels worker -> manager thread -> waiting
        thread, and the second hop (a wake-up and a GIL hand-over) costs about
        as much as the rest of the round trip. Here the waiting thread takes
        the manager's place, reads the result itself and returns at once. Only
        one caller leads at a time; others, and the manager thread itself,
        wait as usual. Returns when the future is done, the timeout passed, or
        the engine stopped.
        """
        if self.inherited:
            raise inherited_error()
        if future.done():
            return
        self.check_can_wait()
        if (self._done or self._manager is None
                or not self._lead_mutex.acquire(blocking=False)):
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        self._leader = threading.current_thread()
        try:
            with self._lead_cond:
                self._lead_wanted = True
            self._poke()
            with self._poll_lock, deferred_sigint(self._poke) as interrupted:
                while not future.done() and not self._done and not interrupted:
                    wait = None
                    if deadline is not None:
                        wait = deadline - time.monotonic()
                        if wait <= 0:
                            break
                    try:
                        stepped = self._step(wait)
                    except BaseException as exc:
                        if isinstance(exc, KeyboardInterrupt):
                            raise  # held back above; cannot come from inside a step
                        self._fail(exc)
                        raise
                    if not stepped:
                        self._done = True
        finally:
            self._leader = None
            with self._lead_cond:
                self._lead_wanted = False
                self._lead_cond.notify_all()
            self._lead_mutex.release()

    def check_can_wait(self) -> None:
        """Refuse to wait on the thread that delivers results: nothing else would.

        Callbacks run on the manager thread, or on a caller leading in its
        place (see wait_for); either waiting for a result of this pool would
        wait for itself.

        Raises:
            DeadlockError: when called on that thread.
        """
        me = threading.current_thread()
        if me is self._manager or me is self._leader:
            raise DeadlockError(
                "a callback of a process pool waited for a result of the same pool: callbacks "
                "run on the thread that delivers the pool's results, so that wait could never "
                "end; submit from the callback and wait elsewhere")

    # --- starting and stopping workers -------------------------------------------
    def _start_proc(self, slot: int) -> None:
        """Start a worker process in ``slot`` (lock held)."""
        p = _Proc(slot)
        task_r, p.task_fd = os.pipe()
        p.result_fd, result_w = os.pipe()
        for fd in (task_r, result_w):
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)
        progress_fd = _shared_memory_fd()
        os.ftruncate(progress_fd, SLOT_BYTES)
        p.progress = memoryview(mmap.mmap(progress_fd, SLOT_BYTES)).cast("q")
        p.progress[SLOT_SEQ] = -1
        boot = WorkerBoot(slot, os.getpid(), self._init, self._inherited_init)
        close_in_child: list[int] = []
        if self._method == "fork":
            close_in_child = [p.task_fd, p.result_fd, self._wake_r, self._wake_w,
                              self._poller.fileno()]
            for other in self._slots:
                if other is not None and not other.gone:
                    close_in_child += [fd for fd in (other.task_fd, other.result_fd, other.pidfd)
                                       if fd >= 0]
        fds = (task_r, result_w, progress_fd)
        try:
            process = launch(self._method, fds, lambda: serve_inherited(boot, *fds),
                             close_in_child)
        except BaseException:
            for fd in (p.task_fd, p.result_fd):
                os.close(fd)
            mm = p.progress.obj
            p.progress.release()
            if isinstance(mm, mmap.mmap):
                mm.close()
            raise
        finally:
            for fd in fds:
                os.close(fd)
        p.process = process
        p.pid = process.pid
        os.set_blocking(p.task_fd, False)
        os.set_blocking(p.result_fd, False)
        p.pidfd = process.exit_fd
        self._slots[slot] = p
        self._register(p.result_fd, _RESULT, p)
        self._register(p.pidfd, _EXIT, p)
        if self._method != "fork":
            self._write(p, [boot.frame()])

    def _retire(self, p: _Proc) -> None:
        """Let a worker go: it exits once idle (lock held). Its pipe closes when reaped."""
        if p.gone:
            return
        p.gone = True
        self._write(p, [_STOP_FRAME])
        self._dying.append(p)
        if self._slots[p.slot] is p:
            self._slots[p.slot] = None

    def _kill(self, p: _Proc, now: float) -> None:
        """Terminate a worker and what its task started; kill them after the grace (lock held).

        The task's programs (``subprocess.run``, ``bf.run`` in a session of
        its own) are the worker's descendants: they are found now, while the
        worker still holds them, and get the same SIGTERM, then SIGKILL.
        """
        self._retire(p)
        if not p.killed:
            p.killed = True
            p.kill_at = now + self.config.kill_grace
            tree = descendants(p.pid)
            for pid in [p.pid, *tree]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            if tree:
                self._stragglers.append((p.kill_at, tree))

    def _close_task_pipe(self, p: _Proc) -> None:
        if p.task_fd >= 0:
            self._unregister(p.task_fd)
            os.close(p.task_fd)
            p.task_fd = -1
            p.out.clear()

    def _reap(self, p: _Proc) -> tuple[int | None, int | None]:
        """Collect a dead worker; its (exit code, signal). Lock held."""
        if p.result_fd >= 0:
            self._unregister(p.result_fd)
            os.close(p.result_fd)
        if p.pidfd >= 0:
            self._unregister(p.pidfd)
        p.result_fd = p.pidfd = -1
        self._close_task_pipe(p)
        exitcode: int | None = None
        sig: int | None = None
        if p.process is not None:
            exitcode, sig = p.process.exit_status()
            p.process.close()  # its exit_fd (our pidfd) too
            p.process = None
        if p.progress is not None:
            mm = p.progress.obj
            p.progress.release()
            p.progress = None
            if isinstance(mm, mmap.mmap):
                mm.close()
        if p in self._dying:
            self._dying.remove(p)
        if self._slots[p.slot] is p:
            self._slots[p.slot] = None
        p.gone = True
        return exitcode, sig

    # --- sending -------------------------------------------------------------------
    def _dispatch(self) -> list[_Post]:
        """Fill every worker with room (lock held); what to do after unlocking."""
        posts: list[_Post] = []
        if self.broken is not None or self._terminated or self._init_failed:
            return posts
        cap = self.config.max_tasks_per_worker
        while True:
            target: _Proc | None = None
            for p in self._slots:
                if p is None or p.retiring or p.gone or p.load() >= PREFETCH:
                    continue
                if target is None or p.load() < target.load():
                    target = p
            if target is None:
                return posts
            limit = None if cap is None else cap - target.tasks_sent
            # A single task (submit) only goes to an idle worker: waiting in a
            # pipe it could no longer be cancelled, and it would report
            # running() while it is not.
            batch = self.scheduler.take(limit, self.workers, single_ok=not target.inflight)
            if batch is None:
                if not target.inflight:
                    self._ask_to_share()
                else:
                    self._share_later = False
                return posts
            self._send(target, batch, posts)
            if cap is not None and target.tasks_sent >= cap:
                target.retiring = True

    def _ask_to_share(self) -> None:
        """A worker has nothing to do and nothing waits: ask the worker whose running
        chunk has the most work not started yet to stop before its next task (lock
        held). It sends back what it ran; the rest comes back to the pool as
        shares for the idle workers (see _deliver), so a map whose last chunk
        holds its long tasks (an input sorted by size) does not end on one worker.

        Only map chunks, and only tracked ones: their worker marks each task as
        it starts, and looks at the request then. A chunk that has not started
        yet is looked at again soon (``_share_later``).
        """
        best: _Proc | None = None
        most = SHARE_AT_LEAST_SECONDS
        later = False
        for p in self._slots:
            if p is None or p.gone or not p.inflight or p.progress is None:
                continue
            head = p.inflight[0]
            tracked = head.track or self.config.task_timeout is not None
            if not isinstance(head.job, ManyJob) or not tracked:
                continue
            progress = p.progress
            if progress[SLOT_STOP] == head.seq:
                continue  # asked already
            index = progress[SLOT_INDEX]
            if progress[SLOT_SEQ] != head.seq or index < 0:
                later = True  # still reading it, or about to start its first task
                continue
            per_task = head.job.per_task
            work = (len(head.items) - index - 1) * (1.0 if per_task is None else per_task)
            if work >= most:
                best, most = p, work
        if best is not None:
            assert best.progress is not None
            best.progress[SLOT_STOP] = best.inflight[0].seq
        self._share_later = later and best is None

    def _send(self, p: _Proc, batch: Batch, posts: list[_Post]) -> None:
        """Pickle a batch and write it to a worker (lock held)."""
        job = batch.job
        try:
            fn_id, fn_bytes = self._functions.get(job.fn)
        except Exception as exc:
            posts.append(_fail_batch(batch, exc))
            return
        try:
            items = dumps_parts(batch.items, self._main_by_value, shared=True,
                                cache=self._segments)
        except Exception as exc:
            posts.append(self._unpicklable(batch, exc))
            return
        batch.segments = segment_names(items)
        items_size = parts_size(items)
        # What the batch carries, in the pipe and beside it: batches are sized by it.
        job.note_bytes(len(batch.items), items_size + shared_bytes(items[0]), results=False)
        known = p.known
        parts: list[Part] = []
        if fn_id in known:
            known.move_to_end(fn_id)
            fn_bytes = b""
        else:
            known[fn_id] = None
            if len(known) > KNOWN_FUNCTIONS:
                old, _ = known.popitem(last=False)
                forget = FORGET.pack(KIND_FORGET, old)
                parts += [FRAME.pack(len(forget)), forget]
        self._seq += 1
        batch.seq = self._seq
        track = batch.track or self.config.task_timeout is not None
        head = BATCH.pack(KIND_BATCH, batch.seq, fn_id, job.call, track, len(fn_bytes))
        parts += [FRAME.pack(len(head) + len(fn_bytes) + items_size), head, fn_bytes, *items]
        p.inflight.append(batch)
        p.tasks_sent += len(batch.items)
        self._write(p, parts)

    def _unpicklable(self, batch: Batch, exc: Exception) -> _Post:
        """What to do with a batch whose items cannot be pickled."""
        job = batch.job
        if len(batch.items) > 1:
            return lambda: job.requeue(batch, range(len(batch.items)), one_by_one=True)
        item = batch.items[0]
        if job.call == CALL_KW:
            args, kwargs = item
            named = [(f"argument {i + 1}", a) for i, a in enumerate(args)]
            named += [(f"keyword argument {k!r}", v) for k, v in kwargs.items()]
        elif job.call == CALL_STAR:
            named = [(f"argument {i + 1}", a) for i, a in enumerate(item)]
        else:
            named = [("argument", item)]
        culprit = find_unpicklable(named)
        name, value, cause = culprit if culprit else ("the arguments", item, exc)
        return _fail_batch(batch, serialization_error(f"{name} of {batch.describe_task(0)}",
                                                      value, cause))

    def _write(self, p: _Proc, parts: list[Part]) -> None:
        """Write now what the pipe takes; queue the rest for the manager (lock held)."""
        if p.task_fd < 0:
            return
        if not p.out:
            try:
                written = os.writev(p.task_fd, parts[:WRITEV_MAX])
            except BlockingIOError:
                written = 0
            except OSError:
                return  # the worker is gone; the manager notices its exit
            for part in parts:
                if written >= len(part):  # (len of a part's memoryview is its bytes: format B)
                    written -= len(part)
                    continue
                p.out.append(memoryview(part)[written:])
                written = 0
            if p.out:
                self._register(p.task_fd, _WRITE, p)
        else:
            p.out.extend(memoryview(part) for part in parts)

    def _flush(self, p: _Proc) -> None:
        """Write queued bytes as the pipe drains (manager, lock held)."""
        while p.out and p.task_fd >= 0:
            try:
                written = os.writev(p.task_fd, list(itertools.islice(p.out, WRITEV_MAX)))
            except BlockingIOError:
                return
            except OSError:
                p.out.clear()
                break
            while written:
                head = p.out[0]
                if written >= len(head):
                    written -= len(head)
                    p.out.popleft()
                else:
                    p.out[0] = head[written:]
                    written = 0
        if p.task_fd >= 0:
            self._unregister(p.task_fd)

    # --- the manager thread ----------------------------------------------------------
    def _manage(self) -> None:
        try:
            while True:
                with self._poll_lock:
                    if self._done or not self._step(None):
                        self._done = True
                        return
                if self._lead_wanted:
                    # A caller waiting on a result polls in our place (see
                    # wait_for); stand aside until it is done.
                    with self._lead_cond:
                        while self._lead_wanted:
                            self._lead_cond.wait()
        except BaseException as exc:
            self._fail(exc)
            raise
        finally:
            self._close_everything()

    def _fail(self, exc: BaseException) -> None:
        """The manager's loop failed (a bug, a system limit): fail everything, kill workers.

        Whatever the failed step had collected is lost, so no task may be left
        waiting for it: every queued and running task fails with the error.
        """
        error = PoolClosedError(f"bingfa's process manager failed: {exc!r}")
        self.break_pool(error, exc)
        with self._lock:
            self._done = True
            running: list[Job] = []
            for p in [*self._slots, *self._dying]:
                if p is not None:
                    running += [b.job for b in p.inflight]
                    self._free_segments(p.inflight)
                    p.inflight.clear()
                    if p.pid:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(p.pid, signal.SIGKILL)
        self.abort_jobs(running, error)
        self._poke()

    def _step(self, max_wait: float | None) -> bool:
        """One turn of the manager's loop; ``False`` when the engine is done.

        Run by the manager thread, or by a caller leading in its place, always
        with ``_poll_lock`` held.
        """
        timeout = self._poll_timeout()
        if max_wait is not None and (timeout < 0 or timeout > max_wait):
            timeout = max_wait
        if self._cooperative and timeout != 0:
            # gevent: wait in the hub (its select) for the epoll fd to turn
            # readable, then collect the events without blocking.
            select.select([self._poller.fileno()], [], [], None if timeout < 0 else timeout)
            timeout = 0
        events = self._poller.poll(timeout)
        posts: list[_Post] = []
        exits: list[_Proc] = []
        for fd, _mask in events:
            kind, p = self._handlers.get(fd, (None, None))
            if kind == _WAKE:
                self._drain_wake()
            elif kind == _RESULT and p is not None:
                self._read(p, posts)
            elif kind == _EXIT and p is not None:
                exits.append(p)
            elif kind == _WRITE and p is not None:
                with self._lock:
                    self._flush(p)
        for p in exits:
            if p.result_fd >= 0:
                self._read(p, posts)  # what it wrote before it died comes first
            self._exited(p, posts)
        if self.config.task_timeout is not None:
            # A worker past its deadline may have just finished: read what it
            # sent before judging it.
            with self._lock:
                overdue = [p for p in self._slots if self._overdue(p)]
            for p in overdue:
                if p is not None and p.result_fd >= 0:
                    self._read(p, posts)
        with self._lock:
            self._check_deadlines(posts)
            posts += self._dispatch()
            failure, self._launch_failure = self._launch_failure, None
        if failure is not None:
            posts.append(lambda: self.break_pool(failure))
        _run_posts(posts)
        # Only now: the posts may have put work back (a retry, tasks of a dead
        # worker), which a draining pool must still run.
        with self._lock:
            return not self._finish_if_drained()

    def _poll_timeout(self) -> float:
        if (self.config.task_timeout is None and not self._dying and not self._stragglers
                and not self._pending_starts and not self._stops and not self._share_later):
            return -1
        with self._lock:
            now = time.monotonic()
            # A task to stop that has not started yet: look again soon.
            soonest: float | None = now + _STOP_RECHECK if self._stops else None
            times = [p.kill_at for p in self._dying if p.kill_at is not None]
            times += [when for when, _ in self._stragglers]
            times += self._pending_starts.values()
            if self._share_later:  # an idle worker, a chunk that had not started: again
                times.append(now + SHARE_LOOK_AGAIN)
            if times:
                soonest = min(times) if soonest is None else min(soonest, *times)
            timeout = self.config.task_timeout
            if timeout is not None:
                for slot in self._slots:
                    if slot is None or slot.gone or not slot.inflight:
                        continue
                    started = self._task_started(slot)
                    # Not started yet (or between batches): look again soon.
                    deadline = now + min(timeout, 0.05) if started is None else started + timeout
                    soonest = deadline if soonest is None else min(soonest, deadline)
        if soonest is None:
            return -1
        return max(0.0, soonest - now) + 0.001

    def _task_started(self, p: _Proc | None) -> float | None:
        """When the task ``p`` is running started, or ``None`` if it runs none (lock held)."""
        if p is None or p.gone or not p.inflight or p.progress is None:
            return None
        if p.progress[SLOT_SEQ] != p.inflight[0].seq or p.progress[SLOT_INDEX] == LOADING:
            return None  # the head batch has not started yet (or is still being unpickled)
        return p.progress[SLOT_STARTED] / 1e9

    def _overdue(self, p: _Proc | None) -> bool:
        """Whether ``p``'s running task is past its deadline (lock held)."""
        timeout = self.config.task_timeout
        started = self._task_started(p)
        return timeout is not None and started is not None and started + timeout <= time.monotonic()

    def _check_deadlines(self, posts: list[_Post]) -> None:
        now = time.monotonic()
        if self._stops:
            self._carry_out_stops(now, posts)
        for p in list(self._dying):
            if p.kill_at is not None and now >= p.kill_at:
                end_tree(p.pid)
                p.kill_at = None
        if self._stragglers:
            due = [pids for when, pids in self._stragglers if now >= when]
            self._stragglers = [(w, pids) for w, pids in self._stragglers if now < w]
            for pids in due:
                _kill_all(pids)
        for number, when in list(self._pending_starts.items()):
            if now >= when:
                del self._pending_starts[number]
                if self._slots[number] is None and self._wants_workers():
                    self._start(number)
        timeout = self.config.task_timeout
        if timeout is None:
            return
        for slot in list(self._slots):
            if slot is None or slot.progress is None or not self._overdue(slot):
                continue
            p, progress, head = slot, slot.progress, slot.inflight[0]
            index = max(0, progress[SLOT_INDEX])
            task = head.describe_task(index)
            err = TaskTimeoutError(
                f"{task} did not finish within {timeout} s; its worker (slot {p.slot}, "
                f"pid {p.pid}) was terminated and replaced", timeout=timeout, task=task)
            self._lose_worker(p, head_index=index, error=err, posts=posts)
            self._kill(p, now)
            self._replace(p)

    def _lose_worker(self, p: _Proc, head_index: int | None, error: BaseException | None,
                     posts: list[_Post]) -> None:
        """Settle the batches a lost worker held (lock held).

        The task it was running (``head_index`` of the head batch) fails with
        ``error``; the ones before it lost their results and the ones after it
        never ran, so all of those run again, as does every batch still queued
        for the worker.
        """
        batches = list(p.inflight)
        p.inflight.clear()
        self._free_segments(batches)
        if p.pid:
            unlink_left_by(p.pid)  # results it was writing when it died
        if not batches:
            return
        head = batches.pop(0)
        n = len(head.items)
        if head_index is None:
            if error is not None and n > 1:
                # Untracked batch: which task crashed is unknown. Run each
                # again on its own; a task that crashes again is the culprit.
                posts.append(lambda: head.job.requeue(head, range(n), one_by_one=True))
            elif error is not None:
                posts.append(lambda: head.job.fail(head, 0, error))
            else:
                posts.append(lambda: head.job.requeue(head, range(n), one_by_one=False))
        else:
            others = [i for i in range(n) if i != head_index]
            if error is not None:
                posts.append(lambda: head.job.fail(head, head_index, error))
            posts.append(lambda: head.job.requeue(head, others, one_by_one=False))
        for batch in batches:
            posts.append(_requeue_all(batch))

    def _exited(self, p: _Proc, posts: list[_Post]) -> None:
        """A worker process exited (manager)."""
        with self._lock:
            was_ready, expected = p.ready, p.gone
            seq = index = -1
            if p.progress is not None:
                seq, index = p.progress[SLOT_SEQ], p.progress[SLOT_INDEX]
            exitcode, sig = self._reap(p)
            if not was_ready and not expected:
                if sig is not None:
                    self._early_deaths.append(time.monotonic())
                else:
                    self._startup_failures += 1
                    if self._startup_failures >= STARTUP_FAILURES:
                        err = InitializerError(_startup_failure(exitcode))
                        self._init_failed = True
                        posts.append(lambda: self.break_pool(err))
            if not p.inflight:
                if not expected:
                    self._replace(p)  # died while idle: nothing lost
                return
            head = p.inflight[0]
            head_index: int | None = None
            error: BaseException | None = None
            if seq == head.seq:  # it had started the head batch
                if index < 0 and len(head.items) == 1:
                    index = 0  # untracked, but a batch of one: it is that task
                if index >= 0:
                    head_index = index
                    error = _crash_error(p, exitcode, sig, head.describe_task(index))
                else:
                    error = _crash_error(p, exitcode, sig, "")
            self._lose_worker(p, head_index, error, posts)
            self._replace(p)

    def _retire_if_spent(self, p: _Proc) -> None:
        """Retire and replace a worker that has run its last task (lock held)."""
        if p.retiring and not p.inflight:
            self._retire(p)
            self._replace(p)

    def _replace(self, p: _Proc) -> None:
        """Start a worker in ``p``'s slot, unless the pool is stopping with nothing to do.

        After workers were killed as they started, the replacement may wait
        (see EARLY_DEATHS_PER_SECOND): a pool whose new workers are all
        killed must not fork as fast as it can.
        """
        if not self._wants_workers():
            return
        now = time.monotonic()
        deaths = self._early_deaths
        while deaths and deaths[0] < now - 1.0:
            deaths.popleft()
        allowed = max(EARLY_DEATHS_PER_SECOND, self.workers)
        if len(deaths) <= allowed:
            self._start(p.slot)
        else:
            pause = min(MAX_RESTART_PAUSE, 0.01 * 2 ** (len(deaths) - allowed))
            self._pending_starts[p.slot] = now + pause

    def _wants_workers(self) -> bool:
        return self._can_restart() and (not self._draining or not self.scheduler.idle())

    def _start(self, slot: int) -> None:
        """Start a worker in ``slot``; if workers cannot be started, break the pool (lock held)."""
        try:
            self._start_proc(slot)
        except InitializerError as exc:
            self._init_failed = True
            self._launch_failure = exc  # the manager breaks the pool, unlocked

    def _can_restart(self) -> bool:
        return not (self._terminated or self._init_failed or self.broken is not None)

    # --- reading -----------------------------------------------------------------------
    def _read(self, p: _Proc, posts: list[_Post]) -> None:
        """Read and handle whatever a worker has written (manager)."""
        payloads: list[bytes | memoryview] = []
        eof = self._fill(p, payloads)
        if payloads:
            with self._lock:
                for payload in payloads:
                    self._handle(p, payload, posts)
        if eof:
            with self._lock:
                if p.result_fd >= 0:
                    self._unregister(p.result_fd)
                    os.close(p.result_fd)
                    p.result_fd = -1

    def _fill(self, p: _Proc, payloads: list[bytes | memoryview]) -> bool:
        """Read what the pipe holds; append whole frames to ``payloads``. Whether it ended.

        Small frames are read through a reused scratch buffer, many per read.
        A large one (an array coming back) is read straight into a buffer of
        its own size once its header is in: no growing, no copying again.
        """
        fd = p.result_fd
        scratch = self._scratch
        while True:
            big = p.big
            target = memoryview(big)[p.big_fill:] if big is not None else scratch
            try:
                got = os.readv(fd, [target])
            except BlockingIOError:
                return False
            except OSError as exc:
                if exc.errno in (errno.EBADF, errno.ECONNRESET):
                    return True
                raise
            finally:
                if big is not None:
                    target.release()
            if not got:
                return True
            if big is not None:
                p.big_fill += got
                if p.big_fill == len(big):
                    payloads.append(memoryview(big))
                    p.big = None
                continue
            p.rbuf += scratch[:got]
            self._split(p, payloads)
            if got < READ_SIZE and p.big is None:
                return False  # the pipe is drained: spare a read that would say so

    def _split(self, p: _Proc, payloads: list[bytes | memoryview]) -> None:
        """Move whole frames out of ``p.rbuf``; start reading a large partial one on its own."""
        buf = p.rbuf
        view = memoryview(buf)
        frames: list[memoryview] = []
        pos = 0
        while len(buf) - pos >= FRAME.size:
            (size,) = FRAME.unpack_from(view, pos)
            end = pos + FRAME.size + size
            if end > len(buf):
                break
            frames.append(view[pos + FRAME.size:end])
            pos = end
        if frames and pos == len(buf):
            # Only whole frames: hand them out as views and start a fresh
            # buffer, so a result is never copied again.
            p.rbuf = bytearray()
            payloads.extend(frames)
            return
        payloads.extend(bytes(f) for f in frames)
        for f in frames:
            f.release()
        rest = len(buf) - pos
        if rest >= FRAME.size:
            (size,) = FRAME.unpack_from(view, pos)
            if size > LARGE_FRAME:
                big = bytearray(size)
                big[:rest - FRAME.size] = view[pos + FRAME.size:]
                p.big, p.big_fill = big, rest - FRAME.size
                pos = len(buf)
        view.release()
        del buf[:pos]

    def _handle(self, p: _Proc, payload: bytes | memoryview, posts: list[_Post]) -> None:
        """One frame from a worker (lock held)."""
        kind = payload[0]
        if kind == KIND_DONE:
            _, seq, elapsed, released = DONE.unpack_from(payload)
            free, offset = unpack_names(payload, DONE.size, released)
            for name in free:
                self._segments.given_back(name)
            batch = self._pop(p, seq)
            if batch is None:
                return
            if batch.segments:  # those the worker did not give back go
                batch.segments = [name for name in batch.segments if name not in free]
                self._free_segments([batch])
            body = memoryview(payload)[offset:]
            batch.job.note_bytes(len(batch.items), body.nbytes + shared_bytes(body),
                                 results=True)
            posts.append(_delivery(batch, body, elapsed, self.workers))
            self._retire_if_spent(p)
        elif kind == KIND_LOAD_FAILED:
            _, seq, fn_failed = LOAD_FAILED.unpack_from(payload)
            batch = self._pop(p, seq)
            if batch is None:
                return
            self._free_segments([batch])
            cause = rebuild(pickle.loads(memoryview(payload)[LOAD_FAILED.size:]))
            if fn_failed:
                p.known.clear()  # it kept none of the function: send it again next time
            posts.append(_load_failed(batch, bool(fn_failed), cause))
            self._retire_if_spent(p)
        elif kind == READY:
            p.ready = True
            self._startup_failures = 0
        elif kind == INIT_FAILED:
            cause = rebuild(pickle.loads(memoryview(payload)[1:]))
            err = initializer_error(f"{type(cause).__name__}: {cause}")
            self._init_failed = True
            p.gone = True  # it exits by itself; do not replace it
            posts.append(lambda: self.break_pool(err, cause))

    def _pop(self, p: _Proc, seq: int) -> Batch | None:
        if p.inflight and p.inflight[0].seq == seq:
            return p.inflight.popleft()
        return None  # a batch settled elsewhere (the worker timed out)

    # --- finishing ---------------------------------------------------------------------
    def _finish_if_drained(self) -> bool:
        """Retire workers once draining and idle; whether the manager may stop (lock held)."""
        if self._terminated:
            now = time.monotonic()
            for p in [*self._slots, *self._dying]:
                if p is not None and not p.killed:
                    self._kill(p, now)
        elif self._draining or self.broken is not None:
            if self.broken is None and not self.scheduler.idle():
                # Work came back while draining: make sure it has workers.
                for slot, p in enumerate(self._slots):
                    if p is None and slot not in self._pending_starts and self._can_restart():
                        self._start(slot)
                return False
            idle = all(p is None or not p.inflight for p in self._slots)
            if idle and (self.broken is not None or self.scheduler.idle()):
                for p in self._slots:
                    if p is not None and not p.gone:
                        self._retire(p)
        else:
            return False
        if any(p is not None for p in self._slots):
            return False
        self._pending_starts.clear()
        return not self._dying and not self._stragglers

    def _free_segments(self, batches: Iterable[Batch]) -> None:
        """Give up the shared memory of batches a worker is done with or lost (lock held).

        A segment the worker gave back was made free already; every other one
        (kept by a task, never read, given rather than lent) is unlinked.
        """
        for batch in batches:
            for name in batch.segments:
                self._segments.abandon(name)
            batch.segments = ()

    def _close_everything(self) -> None:
        with self._lock:
            leftovers = [p for p in [*self._slots, *self._dying] if p is not None]
            for p in leftovers:
                if p.pid:
                    end_tree(p.pid)
                self._reap(p)
            for _, pids in self._stragglers:
                _kill_all(pids)
            self._stragglers.clear()
            for fd in (self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._poller.close()
            self._segments.close()

    # --- small helpers -------------------------------------------------------------------
    def _register(self, fd: int, kind: int, p: _Proc | None) -> None:
        mask = select.EPOLLOUT if kind == _WRITE else select.EPOLLIN
        if fd in self._handlers:
            self._poller.modify(fd, mask)
        else:
            self._poller.register(fd, mask)
        self._handlers[fd] = (kind, p)

    def _unregister(self, fd: int) -> None:
        if self._handlers.pop(fd, None) is not None:
            with contextlib.suppress(OSError, ValueError):
                self._poller.unregister(fd)

    def _poke(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"!")

    def _drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self._wake_r, 4096):
                pass


_WAKE, _RESULT, _EXIT, _WRITE = range(4)
# Seconds between looks at a task asked to stop that has not started yet.
_STOP_RECHECK = 0.02
_STOP_FRAME = FRAME.pack(1) + bytes([KIND_STOP])


def _epoll() -> tuple[select.epoll, bool]:
    """A new epoll object, and whether waits on it must go through gevent's hub.

    ``gevent.monkey.patch_all()`` takes ``select.epoll`` away, since a thread
    blocked in it (a greenlet, once patched) would block every greenlet. The
    original is still the best way to watch the workers: it is used without
    blocking, after gevent's ``select`` has waited for its fd (see ``_step``).
    """
    epoll = getattr(select, "epoll", None)
    if epoll is not None:
        return epoll(), False
    monkey = sys.modules["gevent.monkey"]
    original: type[select.epoll] = monkey.get_original("select", "epoll")
    return original(), True


def _run_posts(posts: list[_Post]) -> None:
    for post in posts:
        post()


def _requeue_all(batch: Batch) -> _Post:
    return lambda: batch.job.requeue(batch, range(len(batch.items)), one_by_one=False)


def _delivery(batch: Batch, body: memoryview, elapsed: float, workers: int) -> _Post:
    return lambda: _deliver(batch, body, elapsed, workers)


def _deliver(batch: Batch, body: memoryview, elapsed: float, workers: int) -> None:
    """Decode a finished batch and hand it to its job (manager, unlocked).

    A batch its worker stopped early, when asked to share (see
    ProcessEngine._ask_to_share), has fewer values than tasks: the tasks it did
    not start go back to the job first, cut in shares for the workers.
    """
    job: Job = batch.job
    try:
        values, raw_errors = loads_body(body)
    except BaseException as exc:  # SystemExit from a __setstate__ fails the task, not the pool
        n = len(batch.items)
        if n > 1:
            # One result of the batch cannot be unpickled here, and which one
            # is unknown: run its tasks again one by one, so only it fails.
            job.requeue(batch, range(n), one_by_one=True)
            return
        err = unpickling_error(f"the result of {batch.describe_task(0)} ({body.nbytes} bytes)",
                               exc)
        _fail_batch(batch, err)()
        return
    if len(values) < len(batch.items):
        job.give_back(batch.split_off(len(values)), workers)
    errors = [(i, rebuild(payload)) for i, payload in raw_errors] if raw_errors else None
    job.deliver(batch, values, errors, elapsed)


def _fail_batch(batch: Batch, error: BaseException) -> _Post:
    """Fail every task of a batch with ``error``."""
    n = len(batch.items)
    return lambda: batch.job.deliver(batch, [None] * n, [(i, error) for i in range(n)], 0.0)


def _load_failed(batch: Batch, fn_failed: bool, cause: BaseException) -> _Post:
    job = batch.job
    n = len(batch.items)
    if not fn_failed and n > 1:
        return lambda: job.requeue(batch, range(n), one_by_one=True)
    if fn_failed:
        error = unpickling_error("the task's function in the worker", cause, job.fn)
    else:
        error = unpickling_error(f"the arguments of {batch.describe_task(0)} in the worker",
                                 cause, batch.items[0])
    return _fail_batch(batch, error)


def _startup_failure(exitcode: int | None) -> str:
    """Why the pool cannot start workers, in one line, with where to look."""
    return (f"worker processes exit with code {exitcode} as they start, {STARTUP_FAILURES} "
            "times in a row: the pool cannot run tasks; the workers' own error is printed "
            "above")


def _kill_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _signal_name(sig: int) -> str:
    try:
        return f"signal {sig} ({signal.Signals(sig).name})"
    except ValueError:
        return f"signal {sig}"


def _crash_error(p: _Proc, exitcode: int | None, sig: int | None, task: str) -> WorkerCrashedError:
    if sig is not None:
        how = f"was killed by {_signal_name(sig)}"
    else:
        how = f"exited with code {exitcode}"
    running = f" while running {task}" if task else ""
    return WorkerCrashedError(
        f"worker {p.slot} (pid {p.pid}) {how}{running}; it has been replaced",
        worker_id=p.slot, pid=p.pid, exitcode=exitcode, signal=sig, task=task or None)


class _InheritOnly(Exception):
    """The initializer's arguments hold objects that can only be inherited by fork."""

    def error(self, method: str) -> BaseException:
        return serialization_error(
            f"the initializer's arguments for start_method={method!r}", self.args[0],
            RuntimeError(f"{self.args[1]}; leave start_method unset (bingfa then forks, as "
                         "multiprocessing does) or use start_method='fork'"))


def _pickle_initializer(fn: Callable[..., Any], args: tuple[Any, ...]) -> bytes:
    try:
        return dumps_function((fn, args))
    except Exception as exc:
        # multiprocessing's Lock, Queue, Value and Array refuse to be pickled
        # outside of starting a process ("... through inheritance").
        text = str(exc)
        if "inheritance" in text or "fork context" in text:
            raise _InheritOnly(args, text) from exc
        raise serialization_error("the initializer or its arguments", fn, exc) from exc


def _shared_memory_fd() -> int:
    """An anonymous shared-memory file: nothing to unlink, nothing to leak."""
    if hasattr(os, "memfd_create"):
        return os.memfd_create("bingfa-progress", os.MFD_CLOEXEC)
    import tempfile

    fd, path = tempfile.mkstemp(prefix="bingfa-progress-")
    os.unlink(path)
    return fd
