"""Shared fixtures: the leak check every test runs under, and the ``mode`` fixture.

The leak check compares what the test process owns before and after each test:
threads, child processes, open file descriptors and shared-memory segments in
``/dev/shm``. Something new that is still there after a short grace period
fails the test (in its teardown), with a description of what leaked.

Process-wide helpers live for the whole session by design: bingfa's zygote
(which forks process-pool workers) and reaper (which ends a dead caller's
commands), and multiprocessing's forkserver and resource tracker. They are
started once up front and never counted. They are recognised by their
command line *and* by being direct children of this process: a worker forked
by the zygote inherits the zygote's command line, and it must still be
counted.

/dev/shm is shared by the whole machine, and other programs create and leak
entries there while the tests run. Only entries this test run made count: the
ones a process of ours still has open or mapped, or whose name carries the pid
of one of our processes (bingfa names its segments after their owner).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import re
import select
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import psutil
import pytest

# BINGFA_TEST_MODES=gevent (comma-separated) runs the contract suite on other modes:
# tests/contracts/test_gevent_contract.py sets it in a monkey-patched interpreter.
MODES = os.environ.get("BINGFA_TEST_MODES", "thread,process,auto").split(",")

# How long things may take to settle after a test before they count as leaked.
GRACE_SECONDS = 3.0
_INFRASTRUCTURE = ("forkserver", "resource_tracker", "bingfa._pool._engines._zygote",
                   "bingfa/_commands/_reaper.py", "bingfa-janitor")


def _is_infrastructure(proc: psutil.Process) -> bool:
    """multiprocessing's forkserver or resource tracker, or bingfa's zygote, reaper or janitor."""
    try:
        if proc.ppid() != os.getpid():
            return False
        cmdline = " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return False
    return any(word in cmdline for word in _INFRASTRUCTURE)


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False


def child_processes() -> dict[int, psutil.Process]:
    """Live descendants of this process, multiprocessing's helpers excepted."""
    found = {}
    for proc in psutil.Process().children(recursive=True):
        if _alive(proc) and not _is_infrastructure(proc):
            found[proc.pid] = proc
    return found


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie counts as gone)."""
    try:
        return _alive(psutil.Process(pid))
    except psutil.NoSuchProcess:
        return False


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` passes; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return bool(predicate())
        time.sleep(interval)  # polling interval, not synchronisation


class InThread:
    """Run a call on a daemon thread, to catch a hang without hanging the run.

    pytest-timeout's thread method ends the whole session when a test hangs,
    so a call that may never return under a bug is run here and waited for
    with a generous deadline; the test then recovers (releases what blocks
    it) and fails with a clear message.
    """

    def __init__(self, fn, *args) -> None:
        self.done = threading.Event()
        self.value = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn, *args), daemon=True,
                                        name="test-in-thread")
        self._thread.start()

    def _run(self, fn, *args) -> None:
        try:
            self.value = fn(*args)
        except BaseException as exc:
            self.error = exc
        finally:
            self.done.set()

    def finished(self, timeout: float) -> bool:
        """Whether the call returned within ``timeout`` seconds (a hang detector)."""
        return self.done.wait(timeout)

    def result(self, timeout: float | None = None):
        """Wait for the call; re-raise its exception or return its value."""
        self._thread.join(timeout)
        if self.error is not None:
            raise self.error
        return self.value


class Gate:
    """A gate tasks wait at, in threads and in worker processes alike.

    It is a FIFO the test keeps open for reading *and* writing (so opening it
    never blocks): a task's ``wait_at_gate(path)`` blocks reading one byte;
    ``release(n)`` lets ``n`` waiting tasks through, and ``close()`` lets
    every one through (they read end-of-file).
    """

    def __init__(self, folder) -> None:
        self.path = str(folder / f"gate-{id(self):x}")
        os.mkfifo(self.path)
        self._fd: int | None = os.open(self.path, os.O_RDWR)

    def release(self, n: int = 1) -> None:
        assert self._fd is not None
        os.write(self._fd, b"x" * n)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Gate:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def wait_at_gate(path: str) -> bool:
    """Block until the gate at ``path`` lets this caller through; whether it was opened."""
    # Opening and reading without blocking: a gate already closed lets the
    # caller through at once (end of file) instead of stalling the open.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        while True:
            try:
                return os.read(fd, 1) == b"x"
            except BlockingIOError:
                # Nothing yet: wait in select, not in a blocking read. Under
                # gevent's monkey-patching select waits in the hub, where a
                # blocking read would stall every greenlet (and the test that
                # opens the gate). Another waiter may take the byte first.
                select.select([fd], [], [])
    finally:
        os.close(fd)


@pytest.fixture
def gate(tmp_path) -> Iterator[Gate]:
    """A :class:`Gate`, closed (every waiter let through) at the end of the test."""
    with Gate(tmp_path) as g:
        yield g


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def _describe_fds() -> list[str]:
    out = []
    for name in sorted(os.listdir("/proc/self/fd"), key=int):
        with contextlib.suppress(OSError):
            out.append(f"{name} -> {os.readlink(f'/proc/self/fd/{name}')}")
    return out


def _with_socket_details(described: list[str]) -> list[str]:
    """``described`` fds, a socket's kind, addresses and state added (for the report)."""
    if not any("socket:" in line for line in described):
        return described
    try:
        sockets = {c.fd: c for c in psutil.Process().net_connections("all")}
    except psutil.Error:
        return described
    out = []
    for line in described:
        conn = sockets.get(int(line.split(" ", 1)[0]))
        if conn is not None:
            line += f" ({conn.family.name} {conn.laddr} -> {conn.raddr or '-'} {conn.status})"
        out.append(line)
    return out


def _shm() -> set[str]:
    try:
        return set(os.listdir("/dev/shm"))
    except FileNotFoundError:
        return set()


def _files_in_use(pid: int) -> str:
    """What ``pid`` has mapped or open, one path a line ('' if it is gone)."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            used = [f.read()]
        fd_dir = f"/proc/{pid}/fd"
        fds = os.listdir(fd_dir)
    except OSError:
        return ""
    for fd in fds:
        # An fd may close between listing and reading it (listdir's own, for one).
        with contextlib.suppress(OSError):
            used.append(os.readlink(f"{fd_dir}/{fd}"))
    return "\n".join(used)


def _our_shm(names: set[str]) -> set[str]:
    """Those of ``names`` (in /dev/shm) that belong to this test run.

    An entry is ours when a process of our tree has it open or mapped, or
    when its name carries such a process's pid as a whole number. Anything
    else is another program's, even one it left behind.
    """
    tree = [psutil.Process(), *psutil.Process().children(recursive=True)]
    ours: set[str] = set()
    for proc in tree:
        left = names - ours
        if not left:
            break
        pid_re = re.compile(rf"(?<![0-9]){proc.pid}(?![0-9])")
        ours |= {n for n in left if pid_re.search(n)}
        ours |= {n for n in left if f"/dev/shm/{n}" in _files_in_use(proc.pid)}
    return ours


@dataclass
class _Snapshot:
    threads: set[threading.Thread]
    children: dict[int, psutil.Process]
    fds: int
    fd_list: list[str]
    shm: set[str]

    @classmethod
    def take(cls) -> _Snapshot:
        return cls(set(threading.enumerate()), child_processes(), _fd_count(),
                   _describe_fds(), _shm())


# tqdm starts one monitor thread per process with its first bar and (in the
# tqdm versions installed here) keeps it for the life of the process: a
# process-wide helper, like the forkserver, not something a pool owns.
_IGNORED_THREADS = ("tqdm_monitor",)
# distributed (mode="dask") runs blocking work through one process-wide thread
# pool, made when distributed is imported and never shut down; its thread
# starts on first use and lives as long as the process.
_IGNORED_THREADS += ("Dask-Offload_0",)


def _leaks(before: _Snapshot) -> list[str]:
    problems = []
    threads = [t for t in threading.enumerate()
               if t not in before.threads and t.is_alive() and t.name not in _IGNORED_THREADS]
    if threads:
        problems.append(f"threads: {[t.name for t in threads]}")
    children = {pid: p for pid, p in child_processes().items() if pid not in before.children}
    if children:
        desc = []
        for pid, proc in children.items():
            try:
                desc.append(f"{pid} {' '.join(proc.cmdline())[:120]!r}")
            except psutil.Error:
                desc.append(str(pid))
        problems.append(f"child processes: {desc}")
    fds = _fd_count()
    if fds > before.fds:
        new = _with_socket_details(sorted(set(_describe_fds()) - set(before.fd_list)))
        problems.append(f"file descriptors: {before.fds} before, {fds} after; new: {new}")
    shm = _shm() - before.shm
    if shm:
        shm = _our_shm(shm)
    if shm:
        problems.append(f"shared memory segments: {sorted(shm)}")
    return problems


@pytest.fixture(scope="session", autouse=True)
def _multiprocessing_helpers() -> None:
    """Start the session-long forkserver and resource tracker before any test."""
    import multiprocessing
    from multiprocessing import forkserver, resource_tracker

    # Workers forked from the forkserver start with these already imported,
    # which keeps the many small process pools of the suite quick to start.
    multiprocessing.set_forkserver_preload(["bingfa", "pytest", "psutil", "cloudpickle"])
    resource_tracker.ensure_running()
    forkserver.ensure_running()
    import bingfa
    from bingfa._core._janitor import watch_this_process

    watch_this_process()  # what the first process channel would start (a pipe and a shell)
    # bingfa's zygote: one pool starts it, and it serves every later one.
    with bingfa.Pool(1, mode="process") as pool:
        pool.submit(int).result()
    # This process's reaper (which ends its commands should it die): the
    # first command starts it, and it lives as long as the process.
    assert bingfa.run(["true"]).returncode == 0
    # uvloop (the RPC server's loop when installed) opens a pipe on its first
    # loop and keeps it for the life of the process: open it before any test.
    try:
        import uvloop
    except ImportError:
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(asyncio.sleep(0))


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Fail a test that leaves threads, processes, fds or shared memory behind."""
    before = _Snapshot.take()
    yield
    problems: list[str] = []
    deadline = time.monotonic() + GRACE_SECONDS
    collected = False
    while True:
        problems = _leaks(before)
        if not problems or time.monotonic() >= deadline:
            break
        if not collected:
            # Objects in a reference cycle (an exception and the frames of its
            # traceback, say) wait for the garbage collector before they close
            # what they hold: unreachable is not leaked.
            gc.collect()
            collected = True
            continue
        time.sleep(0.02)  # polling interval while things settle
    if problems:
        # Do not let one leaky test poison the next ones' baselines.
        for proc in child_processes().values():
            if proc.pid not in before.children:
                with contextlib.suppress(psutil.Error):
                    proc.kill()
        pytest.fail("test leaked resources:\n  " + "\n  ".join(problems), pytrace=False)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Time tests out with SIGALRM rather than a thread where nothing says otherwise.

    pyproject sets ``timeout_method = "thread"``, which dumps every stack and
    then ends the whole session: one hang would hide every later result. The
    signal method dumps the stacks too, but fails only the test that hung
    (every wait in these tests can be interrupted by a signal). The timeout
    itself is unchanged: the test's own marker, else the configured default.
    """
    for item in items:
        marker = item.get_closest_marker("timeout")
        if marker is None:
            item.add_marker(pytest.mark.timeout(method="signal"))
        elif "method" not in marker.kwargs and len(marker.args) < 2:
            timeout = marker.kwargs.get("timeout", marker.args[0] if marker.args else None)
            item.add_marker(pytest.mark.timeout(timeout, method="signal"), append=False)


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    """Every pool mode the contract suite runs on."""
    return str(request.param)


# --- a stalled event loop fails the test (as anyio's tests do with blockbuster) --------
# Every event loop made while the fixture is on runs in asyncio's debug mode
# (PYTHONASYNCIODEBUG is read when a loop is made), which logs each callback or
# task step that holds its loop longer than slow_callback_duration (100 ms). The
# fixture collects those reports, from any thread's loop, and fails the test:
# bingfa's async faces must never block the loop they run on.
#
# A loop thread that is merely waiting for a CPU looks the same as one that
# blocks. On an overloaded machine (a load average above its cores, say two
# busy loops beside the tests on two cores) a thread can wait that long for
# its turn, so there the limit grows with the load: 100 ms per core's worth of
# runnable work. A blocking call (a sleep, a lock held across an await) still
# shows: it lasts whatever the load.
STALL_SECONDS = 0.1
_TOOK = re.compile(r" took (?P<seconds>[0-9.]+) seconds")


def _stall_limit() -> float:
    """The longest step a loop may take now without counting as a stall."""
    cores = len(os.sched_getaffinity(0))
    return STALL_SECONDS * max(1.0, os.getloadavg()[0] / cores)


class _StallReports(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.stalls: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        took = _TOOK.search(message)
        if message.startswith("Executing ") and took is not None:
            limit = _stall_limit()
            if float(took["seconds"]) > limit:
                self.stalls.append(f"{message} (limit now {limit:.2f} s)")


@pytest.fixture
def no_stalled_loop(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail the test if any event loop it ran stalled (see ``_stall_limit``)."""
    monkeypatch.setenv("PYTHONASYNCIODEBUG", "1")
    reports = _StallReports()
    logger = logging.getLogger("asyncio")
    logger.addHandler(reports)
    try:
        yield
    finally:
        logger.removeHandler(reports)
    if reports.stalls:
        pytest.fail("an event loop stalled:\n" + "\n".join(reports.stalls), pytrace=False)
