"""A process's descendants, and ending all of them, from ``/proc`` alone.

Killing a worker is not enough to stop its task: the programs the task
started (``subprocess.run``, a shell pipeline, ``bf.run`` in a session of its
own) are its children and grandchildren, and they would live on, reparented
to init. So a worker is ended with its whole tree.

The tree is read from ``/proc/<pid>/stat`` (the parent pid of every process)
without psutil, so that a worker, which watches its parent and ends its own
tree when the parent dies, need not import it. A process that left the tree
before the kill (a daemon that double-forked) cannot be found this way.
"""

from __future__ import annotations

import os

from . import _signals as signals

__all__ = ["descendants", "end_tree", "start_time"]


def _parents() -> dict[int, list[int]]:
    """Every live process's children, by parent pid (an empty map off Linux)."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return children
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # gone meanwhile
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def start_time(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks after boot); None if it is gone or a zombie.

    With no ``/proc`` only "does it exist" can be answered: then -1 for a
    process that exists.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return None
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return -1
    # "pid (comm) state ppid ... starttime (22nd)": comm may hold spaces and ")".
    fields = stat[stat.rfind(b")") + 2:].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def descendants(pid: int) -> list[int]:
    """The pids of ``pid``'s children, their children, and so on (parents first)."""
    children = _parents()
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.append(child)
                todo.append(child)
    return found


def end_tree(pid: int, sig: int = signals.SIGKILL, include_root: bool = True) -> list[int]:
    """Send ``sig`` to ``pid``'s descendants (and ``pid``); the pids signalled.

    With SIGKILL the tree is first stopped (SIGSTOP), top down, until no new
    process appears in it, so nothing can fork its way out between the read
    of the tree and the kill.
    """
    root = [pid] if include_root else []
    if sig == signals.SIGKILL:
        stopped: list[int] = []
        for _ in range(8):  # a tree that keeps growing through 8 sweeps is killed as is
            tree = [p for p in root + descendants(pid) if p not in stopped]
            if not tree:
                break
            for p in tree:
                _signal(p, signals.SIGSTOP)
            stopped += tree
        targets = [*stopped, *(p for p in descendants(pid) if p not in stopped)]
    else:
        targets = root + descendants(pid)
    for p in targets:
        _signal(p, sig)
    return targets


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
