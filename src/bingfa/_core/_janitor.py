"""A watcher that removes what is named for this process once it is dead, however it died.

multiprocessing's resource tracker unlinks the names it is told of, one by one.
That does not fit a process channel's one-off segments: whichever process puts
a big item makes one, named for the channel's creator (see ``_core/_shm``), and
whichever process gets the item unlinks it, so no single process could tell a
tracker of both ends. If the creator is killed with SIGKILL while such an item
is unread, and no bingfa worker or child of it is left to clean up as it exits,
the segment would stay in ``/dev/shm``.

The janitor needs no list of names. It is a shell, spawned once per process (in
a session of its own, so that Ctrl-C in a terminal does not reach it), that
reads a pipe whose write end only this process holds, and children forked from
it. When the last of them is gone, however it died, the read returns and the
shell removes every one-off segment named for the process: ``bf-<pid>-o-``
then a digit (a pool's), or ``s`` (a channel's). The kept segments of channels,
``-o-c...``, are the tracker's. Its cost is one ``posix_spawn`` (a third of a
millisecond here) and one pipe.

It removes the process's temporary directories the same way:
:func:`temporary_directory` names them ``bingfa-<pid>-...`` in the temporary
folder (a local Ray's, which Ray's own C++ handler of SIGTERM leaves behind as
surely as SIGKILL does). Programs the process started may write there for a
moment after it died (Ray's, until they see their driver gone), so the janitor
tries again, once a second, for up to ten seconds.
"""

from __future__ import annotations

import logging
import os
import shlex
import tempfile
import threading

from ._shm import SEGMENT

__all__ = ["MARK", "temporary_directory", "watch_this_process"]

logger = logging.getLogger("bingfa")

MARK = "bingfa-janitor"  # in the shell's command line, for whoever lists processes

_started_in: int | None = None  # the pid whose janitor runs (a forked child has its own)
_start_lock = threading.Lock()
_temporary_root = ""  # where the running janitor looks for this process's directories


def temporary_directory(kind: str) -> str:
    """A new directory, ``bingfa-<pid>-<kind>-...`` in the temporary folder.

    Its owner removes it when done; should this process die first, however
    it died, its janitor removes it (see the module's docstring).
    """
    watch_this_process()
    root = _temporary_root or tempfile.gettempdir()
    return tempfile.mkdtemp(prefix=f"bingfa-{os.getpid()}-{kind}-", dir=root)


def watch_this_process() -> None:
    """Start this process's janitor, once (see the module's docstring).

    Best effort: where it cannot start (no ``/bin/sh``, no descriptor left),
    nothing fails; the process goes without, as it would have before.
    """
    global _started_in, _temporary_root
    pid = os.getpid()
    if _started_in == pid:
        return
    with _start_lock:
        if _started_in == pid:
            return
        named = f"/dev/shm/bf-{pid}-{SEGMENT}"
        _temporary_root = tempfile.gettempdir()
        folders = f"{shlex.quote(_temporary_root)}/bingfa-{pid}-*"
        script = (f"trap '' HUP INT TERM; cd /; : {MARK}; read _; rm -f {named}-[0-9]* {named}-s*; "
                  f"for _ in 1 2 3 4 5 6 7 8 9 10; do rm -rf {folders}; set -- {folders}; "
                  '[ -e "$1" ] || break; sleep 1; done')
        _started_in = pid  # tried: once is enough, whatever comes of it
        try:
            read_end, write_end = os.pipe()  # not inheritable: exec'd children do not hold it
        except OSError as exc:
            logger.debug("no shared memory janitor: %s", exc)
            return
        try:
            os.posix_spawn("/bin/sh", ["sh", "-c", script], {"PATH": os.defpath},
                           file_actions=_file_actions(read_end), setsid=True)
        except OSError as exc:
            os.close(write_end)
            logger.debug("no shared memory janitor: %s", exc)
            return
        except BaseException:
            os.close(write_end)
            raise
        finally:
            os.close(read_end)
        # write_end stays open, never written, for the life of the process (and
        # of its forked children, which hold it too): its closing is the signal.


def _file_actions(read_end: int) -> list[tuple[object, ...]]:
    """The janitor's descriptors: the pipe as its input, /dev/null for output, nothing else.

    posix_spawn, unlike subprocess, leaves inheritable descriptors open in the
    child: a pipe this process's own parent reads to its end must not be held
    open by a shell that outlives this process.
    """
    actions: list[tuple[object, ...]] = [
        (os.POSIX_SPAWN_DUP2, read_end, 0),
        (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    try:
        open_fds = [int(fd) for fd in os.listdir("/proc/self/fd")]
    except OSError:
        open_fds = []
    for fd in open_fds:
        if fd > 2 and fd != read_end and _inheritable(fd):
            actions.append((os.POSIX_SPAWN_CLOSE, fd))
    return actions


def _inheritable(fd: int) -> bool:
    try:
        return os.get_inheritable(fd)
    except OSError:  # closed since it was listed (the listing's own descriptor, too)
        return False
