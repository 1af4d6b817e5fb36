"""Shared fixtures: the leak check every test runs under, and the ``mode`` fixture.

The leak check compares what the test process owns before and after each test:
threads, child processes, open file descriptors and shared-memory segments in
``/dev/shm``. Something new that is still there after a short grace period
fails the test (in its teardown), with a description of what leaked.

multiprocessing's own helpers (the forkserver and the resource tracker) live
for the whole session by design, so they are started once up front and never
counted. They are recognised by their command line *and* by being direct
children of this process: a worker forked by the forkserver inherits the
forkserver's command line, and it must still be counted.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import psutil
import pytest

MODES = ["thread", "process"]

# How long things may take to settle after a test before they count as leaked.
GRACE_SECONDS = 3.0
_INFRASTRUCTURE = ("forkserver", "resource_tracker")


def _is_infrastructure(proc: psutil.Process) -> bool:
    """multiprocessing's forkserver or resource tracker, started by this process."""
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


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def _describe_fds() -> list[str]:
    out = []
    for name in sorted(os.listdir("/proc/self/fd"), key=int):
        with contextlib.suppress(OSError):
            out.append(f"{name} -> {os.readlink(f'/proc/self/fd/{name}')}")
    return out


def _shm() -> set[str]:
    try:
        return set(os.listdir("/dev/shm"))
    except FileNotFoundError:
        return set()


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
        new = sorted(set(_describe_fds()) - set(before.fd_list))
        problems.append(f"file descriptors: {before.fds} before, {fds} after; new: {new}")
    shm = _shm() - before.shm
    if shm:
        problems.append(f"shared memory segments: {sorted(shm)}")
    return problems


@pytest.fixture(scope="session", autouse=True)
def _multiprocessing_helpers() -> None:
    """Start the session-long forkserver and resource tracker before any test."""
    from multiprocessing import forkserver, resource_tracker

    resource_tracker.ensure_running()
    forkserver.ensure_running()


@pytest.fixture(autouse=True)
def no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves threads, processes, fds or shared memory behind."""
    if request.node.get_closest_marker("allow_leaks") is not None:
        yield
        return
    before = _Snapshot.take()
    yield
    problems: list[str] = []
    deadline = time.monotonic() + GRACE_SECONDS
    while True:
        problems = _leaks(before)
        if not problems or time.monotonic() >= deadline:
            break
        time.sleep(0.02)  # polling interval while things settle
    if problems:
        # Do not let one leaky test poison the next ones' baselines.
        for proc in child_processes().values():
            if proc.pid not in before.children:
                with contextlib.suppress(psutil.Error):
                    proc.kill()
        pytest.fail("test leaked resources:\n  " + "\n  ".join(problems), pytrace=False)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "allow_leaks: skip the leak check (for tests that check leaks themselves)")


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    """Every pool mode the contract suite runs on."""
    return str(request.param)
