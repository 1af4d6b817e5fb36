"""A real Ray cluster for the tests: ``ray start --head`` in a directory of its own.

Started detached (in a session of its own), so the processes Ray starts and
restarts (its workers) are the module's cluster's, not children of a test;
stopped by ending exactly the processes of that directory, never with
``ray stop`` (which would stop every Ray on the machine).

Everything runs with usage statistics off and token authentication on, the
token a random one made for the run (``ray_env``), so no file is written in
the user's home directory. Importing this module puts those settings in the
environment, for the Ray the test process imports afterwards.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

RAY = str(Path(sys.executable).with_name("ray"))
_TOKEN = os.environ.get("RAY_AUTH_TOKEN") or secrets.token_hex(32)


def ray_env() -> dict[str, str]:
    """What every Ray process of the tests (and each test process) needs in its environment."""
    return {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": _TOKEN}


# Ray reads these once, when it is imported (its C++ configuration is made then):
# they must be in this process's environment before the first ``import ray``,
# which is why test modules import this one first. Only Ray reads them.
os.environ.update(ray_env())


class RayHead:
    """A ``ray start --head --block`` with ``num_cpus`` CPUs, in ``folder``."""

    def __init__(self, folder: Path, num_cpus: int = 2, timeout: float = 60) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **ray_env()}
        env.pop("RAY_ADDRESS", None)
        # The tests' modules must import on the workers, as on a real cluster
        # the user's code is installed there.
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
        log = folder / "head.log"
        command = [RAY, "start", "--head", "--port", "0", "--temp-dir", str(folder),
                   "--include-dashboard", "false", "--num-cpus", str(num_cpus),
                   "--node-ip-address", "127.0.0.1", "--disable-usage-stats", "--block"]
        out = subprocess.run(
            ["sh", "-c", 'setsid "$@" >"$LOG" 2>&1 </dev/null & echo $!', "sh", *command],
            env={**env, "LOG": str(log)}, capture_output=True, text=True, check=True,
            timeout=30)
        self.pid = int(out.stdout.strip())
        self.address = self._address(log, timeout)

    @classmethod
    def existing(cls, folder: Path, pid: int, address: str) -> RayHead:
        """The head another process started (to find its processes, or stop it)."""
        head = cls.__new__(cls)
        head.folder, head.pid, head.address = folder, pid, address
        return head

    def _address(self, log: Path, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = log.read_text() if log.exists() else ""
            found = re.search(r"ray start --address='([^']+)'", text)
            if found:
                return found.group(1)
            if not psutil.pid_exists(self.pid):
                break
            time.sleep(0.05)  # polling for the head to come up
        self.stop()
        raise RuntimeError(f"ray start --head did not come up:\n{log.read_text()[-3000:]}")

    def processes(self) -> list[psutil.Process]:
        """Every process of this cluster: the ``ray start`` tree and all that name its folder."""
        found: dict[int, psutil.Process] = {}
        with contextlib.suppress(psutil.Error):
            head = psutil.Process(self.pid)
            found[head.pid] = head
            for child in head.children(recursive=True):
                found[child.pid] = child
        folder = str(self.folder)
        me = psutil.Process()
        spare = {me.pid, *(p.pid for p in me.parents())}  # whoever merely names the folder
        for proc in psutil.process_iter(["cmdline"]):
            with contextlib.suppress(psutil.Error):
                if proc.pid not in spare and folder in " ".join(proc.info["cmdline"] or ()):
                    found[proc.pid] = proc
                    for child in proc.children(recursive=True):
                        found[child.pid] = child
        return list(found.values())

    def stop(self) -> None:
        """End every process of the cluster (SIGTERM, then SIGKILL after a grace period)."""
        procs = self.processes()
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.terminate()
        _, alive = psutil.wait_procs(procs, timeout=5)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(alive, timeout=5)


# --- what the leak check must not count ------------------------------------------------
# A process connected to Ray keeps a connection to each Ray worker process that ran
# its tasks (and they to it), opened on first use and kept while connected: a
# worker that a test's task_timeout killed is replaced, and the next task opens a
# connection to the new one. Those sockets belong to the module's connection to
# the module's cluster, not to the test; the leak check is told to pass over
# exactly them (TCP connections with a process of that cluster) while a module
# holds such a connection. Everything else is still counted.


def _cluster_ports(head: RayHead) -> tuple[set[int], range]:
    """The ports of the cluster's processes' sockets, and the range its workers listen in."""
    procs = head.processes()
    pids = {p.pid for p in procs}
    ports = set()
    for conn in psutil.net_connections("inet"):
        if conn.pid in pids and conn.laddr:  # what they listen on, and connect from
            ports.add(conn.laddr.port)
    workers = range(0)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            line = " ".join(proc.cmdline())
            low = re.search(r"--min_worker_port=(\d+)", line)
            high = re.search(r"--max_worker_port=(\d+)", line)
            if low and high:
                workers = range(int(low.group(1)), int(high.group(1)) + 1)
    return ports, workers


def ray_socket_fds(head: RayHead) -> set[int]:
    """This process's fds that are connections to ``head``'s cluster.

    That is, to or from a port of one of its processes (a worker connects back
    to this process's own Ray server to hand over big results), or to a
    worker port (a worker killed by a test's task_timeout is gone, with it).
    """
    ports, workers = _cluster_ports(head)
    return {conn.fd for conn in psutil.Process().net_connections("inet")
            if conn.raddr and conn.fd != -1
            and (conn.raddr.port in ports or conn.raddr.port in workers)}


def ray_driver_fds(head: RayHead) -> set[int]:
    """This process's fds that Ray's driver may keep after ``ray.shutdown()``.

    Its log file in ``head``'s session folder, the port its own server listened
    on and the connections that server accepted (from workers, which may have
    gone since): a later connection reuses them, and now and then Ray closes
    them only then. Not bingfa's: its Ray engine listens on nothing and opens
    no file there.
    """
    conns = psutil.Process().net_connections("inet")
    listening = {c.laddr.port for c in conns
                 if not c.raddr and c.status == psutil.CONN_LISTEN and c.fd != -1}
    own = {c.fd for c in conns if c.fd != -1 and c.laddr and c.laddr.port in listening}
    folder = str(head.folder)
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith(folder):
                own.add(int(fd))
        except OSError:  # closed meanwhile
            continue
    return own


def unlisted_socket_fds() -> set[int]:
    """This process's sockets that no table of connections lists.

    A TCP socket not yet bound or connected, or a netlink socket (which
    ``getifaddrs`` opens to list the interfaces), appears in neither
    ``/proc/net/tcp`` nor ``/proc/net/unix``. Ray's core, connected, opens such
    sockets from threads of its own as it reconnects and resolves addresses; one
    open at the leak check's last look, seen once beside two busy loops, was
    counted as the test's. A test's own sockets (connected or listening TCP,
    Unix ones, socket pairs) are all listed, and still counted.
    """
    listed = {c.fd for c in psutil.Process().net_connections("all")}
    unlisted = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:") and int(fd) not in listed:
            unlisted.add(int(fd))
    return unlisted


@contextlib.contextmanager
def leak_check_passes_over_connections_to(head: RayHead) -> Iterator[None]:
    """While it lasts, conftest's fd count leaves out connections to ``head``'s cluster,
    what Ray's driver keeps of them (``ray_driver_fds``), and the sockets Ray's
    core opens for a moment (``unlisted_socket_fds``)."""
    import conftest

    count, describe = conftest._fd_count, conftest._describe_fds

    def rays() -> set[int]:
        return ray_socket_fds(head) | ray_driver_fds(head) | unlisted_socket_fds()

    def fd_count() -> int:
        return count() - len(rays())

    def describe_fds() -> list[str]:
        ours = {str(fd) for fd in rays()}
        return [line for line in describe() if line.split(" ", 1)[0] not in ours]

    conftest._fd_count, conftest._describe_fds = fd_count, describe_fds
    try:
        yield
    finally:
        conftest._fd_count, conftest._describe_fds = count, describe
