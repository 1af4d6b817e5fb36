"""The zygote: the process behind ``start_method="forkserver"`` that forks workers.

It is a fresh interpreter, started by ``_launcher`` with the parent's
``sys.path``, that imports bingfa's worker code and nothing of the user's, then
waits (cloudpickle comes once it is idle, see :func:`_preload`). Each request forks a
worker from it: no threads, no locks held, no ``__main__`` to run again.

Protocol, on the SOCK_SEQPACKET unix socket the parent passes as ``fd``:

- zygote -> parent, once: ``b"R"`` when ready, or ``b"E"`` and the error.
- parent -> zygote: ``b"F"`` with four descriptors attached: the worker's task
  pipe, result pipe, progress slot, and a *status pipe*.
- zygote -> parent: the worker's pid (8 bytes; minus errno if fork failed).
- zygote -> status pipe: the worker's 4-byte wait status once it is reaped.

It exits when the parent closes the socket, or dies (even by SIGKILL: it
watches the parent through a pidfd). Workers do not depend on it: each
watches the parent itself.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import struct

__all__ = ["main"]

_PID = struct.Struct("<q")
_STATUS = struct.Struct("<i")
# How long the zygote waits for fork requests before it preloads cloudpickle.
_PRELOAD_WHEN_IDLE_MS = 50


def main(fd: int) -> None:
    """Serve fork requests on ``fd`` until the parent goes away."""
    sock = socket.socket(fileno=fd)
    try:
        # Ctrl-C reaches the whole foreground process group; the parent
        # decides what becomes of its workers.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # Started from a thread that may block SIGINT: the mask survives exec.
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
        from ._process_worker import serve_received  # what every worker runs

        parent_pid = os.getppid()
        parent = os.pidfd_open(parent_pid)
    except BaseException as exc:
        _tell(sock, b"E" + f"{type(exc).__name__}: {exc}".encode())
        raise SystemExit(1) from None
    if not _tell(sock, b"R"):
        # The parent stopped waiting for this zygote (Ctrl-C as it booted):
        # nothing to serve, nothing to say.
        raise SystemExit(0)
    _serve(sock, parent, serve_received)
    if select.select([parent], [], [], 0)[0]:  # its pidfd is readable: it has exited
        # The parent died (SIGKILL, most likely), perhaps before any worker of
        # this zygote could clean up after it: the big buffers it left in
        # shared memory for workers, or in channels, go now (see _core/_shm).
        from ..._core._shm import unlink_left_by

        unlink_left_by(parent_pid)


def _tell(sock: socket.socket, message: bytes) -> bool:
    """Send ``message`` to the parent; False if it has closed its end."""
    try:
        sock.send(message)
    except OSError:
        return False
    return True


def _serve(sock: socket.socket, parent: int, serve: object) -> None:
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    poller.register(parent, select.POLLIN)
    children: dict[int, tuple[int, int]] = {}  # pidfd -> (pid, status pipe)
    preloaded = False
    while True:
        ready = poller.poll(None if preloaded else _PRELOAD_WHEN_IDLE_MS)
        if not ready and not preloaded:
            preloaded = True
            _preload()
        for fd, _ in ready:
            if fd == parent:
                return
            if fd in children:
                pid, status_w = children.pop(fd)
                poller.unregister(fd)
                _report(pid, status_w)
                os.close(fd)
                continue
            try:
                message, fds, _, _ = socket.recv_fds(sock, 16, 4)
            except OSError:
                return
            if not message:
                return  # the parent closed the socket
            if len(fds) != 4:
                for stray in fds:
                    os.close(stray)
                continue
            pid = _fork(fds, sock, parent, children, serve)
            if pid > 0:
                pidfd = os.pidfd_open(pid)
                children[pidfd] = (pid, fds[3])
                poller.register(pidfd, select.POLLIN)
            else:
                os.close(fds[3])
            try:
                sock.send(_PID.pack(pid))
            except OSError:
                return


def _preload() -> None:
    """Import cloudpickle, so that the workers forked from now on have it.

    Only closures, lambdas, classes of ``__main__`` and the like need it (plain
    functions of ``__main__`` travel without it), and it costs a fresh
    interpreter about 20 ms: the zygote imports it once it has nothing else
    to do, rather than before its first workers, where it would delay a pool's
    cold start. A worker forked before then imports it on first use.
    """
    try:
        import cloudpickle  # noqa: F401
    except ImportError:
        pass  # the worker that needs it will say so


def _fork(fds: list[int], sock: socket.socket, parent: int,
          children: dict[int, tuple[int, int]], serve: object) -> int:
    """Fork a worker on ``fds``; its pid, or minus the errno."""
    task_r, result_w, progress, status_w = fds
    try:
        pid = os.fork()
    except OSError as exc:
        pid = -(exc.errno or 1)
    if pid == 0:
        try:
            # Nothing of the zygote's stays open in the worker: a copy of
            # another worker's status pipe would hide that pipe's end.
            sock.close()
            os.close(parent)
            os.close(status_w)
            for pidfd, (_, other_status) in children.items():
                os.close(pidfd)
                os.close(other_status)
            serve(task_r, result_w, progress)  # type: ignore[operator]
        finally:
            os._exit(70)
    for fd in (task_r, result_w, progress):
        os.close(fd)
    return pid


def _report(pid: int, status_w: int) -> None:
    try:
        status = os.waitpid(pid, 0)[1]
    except ChildProcessError:
        status = 255 << 8
    try:
        os.write(status_w, _STATUS.pack(status))
    except OSError:
        pass  # the parent no longer listens
    os.close(status_w)
