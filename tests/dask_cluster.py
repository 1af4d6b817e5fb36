"""A real Dask cluster for the tests: ``dask scheduler`` and ``dask worker`` processes.

Started as subprocesses on 127.0.0.1 (each worker in a directory of its own),
so the test process holds no Dask thread for them, and stopped by killing
their whole process trees.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil


class CliCluster:
    """A scheduler and ``workers`` worker processes, each with a nanny."""

    def __init__(self, folder: Path, workers: int = 2, threads: int = 1,
                 env: dict[str, str] | None = None) -> None:
        self.folder = folder
        self.env = {**os.environ, **(env or {})}
        self.env.pop("DASK_SCHEDULER_ADDRESS", None)
        # The tests' modules must import on the workers, as on a real cluster
        # the user's code is installed there.
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
        self.procs: list[int] = []
        scheduler_file = folder / "scheduler.json"
        self.scheduler = self._start([
            "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
            "--scheduler-file", str(scheduler_file), "--no-dashboard"])
        self.address = self._address(scheduler_file)
        self.workers = []
        for i in range(workers):
            local = folder / f"worker-{i}"
            local.mkdir()
            self.workers.append(self._start([
                "distributed.cli.dask_worker", self.address, "--nworkers", "1",
                "--nthreads", str(threads), "--local-directory", str(local),
                "--host", "127.0.0.1", "--no-dashboard", "--name", f"worker-{i}"]))

    def _start(self, args: list[str]) -> int:
        # Detached (the shell that starts it exits at once): a worker its nanny
        # restarts mid-test is the module's cluster's, not a child of the test.
        out = subprocess.run(
            ["sh", "-c", 'setsid "$@" >/dev/null 2>&1 </dev/null & echo $!', "sh",
             sys.executable, "-m", *args], env=self.env, capture_output=True, text=True,
            check=True, timeout=30)
        pid = int(out.stdout.strip())
        self.procs.append(pid)
        return pid

    def _address(self, scheduler_file: Path, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError, KeyError):
                return str(json.loads(scheduler_file.read_text())["address"])
            if not self.scheduler_alive():
                break
            time.sleep(0.05)  # polling for the scheduler's file
        self.stop()
        raise RuntimeError("the dask scheduler did not start")

    def worker_pids(self) -> list[int]:
        """The worker processes proper (the nannies' children)."""
        pids = []
        for proc in self.workers:
            with contextlib.suppress(psutil.Error):
                pids.extend(c.pid for c in psutil.Process(proc).children()
                            if not _is_resource_tracker(c))
        return pids

    def scheduler_alive(self) -> bool:
        try:
            proc = psutil.Process(self.scheduler)
            return proc.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def stop(self) -> None:
        """SIGTERM every process of the cluster, then SIGKILL what is left after a while.

        Terminated rather than killed: a nanny's resource tracker (which
        ignores SIGTERM) outlives the nanny, sees it go and unlinks the
        semaphores its queues left in /dev/shm, then exits; killed with the
        rest, it would leave them there. So even a cluster that will not stop
        in time keeps its trackers: the others are killed first, and the
        trackers, their last client gone, clean up and exit on their own.
        """
        procs = []
        for pid in self.procs:
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                procs += [proc, *proc.children(recursive=True)]
        for pid in reversed(self.procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)  # each runs in a session of its own
        _, alive = psutil.wait_procs(procs, timeout=15)
        trackers = [proc for proc in alive if _is_resource_tracker(proc)]
        others = [proc for proc in alive if proc not in trackers]
        for proc in others:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(others, timeout=10)
        _, stuck = psutil.wait_procs(trackers, timeout=10)  # cleaning up, then gone
        for proc in stuck:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(stuck, timeout=10)
        self.procs.clear()


def _is_resource_tracker(proc: psutil.Process) -> bool:
    try:
        return "resource_tracker" in " ".join(proc.cmdline())
    except psutil.Error:
        return False


@contextlib.contextmanager
def cli_cluster(folder: Path, workers: int = 2, threads: int = 1,
                env: dict[str, str] | None = None) -> Iterator[CliCluster]:
    """A :class:`CliCluster`, with every worker connected, stopped at the end."""
    cluster = CliCluster(folder, workers, threads, env)
    try:
        from distributed import Client

        with Client(cluster.address, set_as_default=False, timeout=30) as client:
            client.wait_for_workers(workers, timeout=60)
        yield cluster
    finally:
        cluster.stop()
