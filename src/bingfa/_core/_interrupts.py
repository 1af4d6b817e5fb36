"""Holding back Ctrl-C while a critical section runs in the main thread."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["Interrupted", "deferred_sigint", "sigint_blocked", "start_without_sigint"]


class Interrupted:
    """Truthy once a SIGINT arrived while it was deferred."""

    def __init__(self) -> None:
        self.hit = False

    def __bool__(self) -> bool:
        return self.hit


@contextlib.contextmanager
def deferred_sigint(poke: Callable[[], None]) -> Iterator[Interrupted]:
    """Hold back Ctrl-C for the duration of the block, then deliver it.

    Used while a waiting caller runs the process manager's loop: a
    KeyboardInterrupt in the middle of reading a frame would lose a result and
    hang someone else's future. In the main thread SIGINT is recorded instead,
    ``poke`` wakes whatever the block is blocked on, the block sees the
    yielded flag turn true and ends, and the original handler then runs (so
    KeyboardInterrupt is raised just after). Other threads never receive
    SIGINT, so there it does nothing.
    """
    state = Interrupted()
    if threading.current_thread() is not threading.main_thread():
        yield state
        return
    original = signal.getsignal(signal.SIGINT)

    def record(signum: int, frame: Any) -> None:
        state.hit = True
        poke()

    try:
        signal.signal(signal.SIGINT, record)
    except ValueError:  # not the main interpreter
        yield state
        return
    try:
        yield state
    finally:
        signal.signal(signal.SIGINT, original)
        if state.hit:
            if callable(original):
                original(signal.SIGINT, None)
            elif original == signal.SIG_DFL:
                os.kill(os.getpid(), signal.SIGINT)


def start_without_sigint(thread: threading.Thread) -> None:
    """Start ``thread`` with SIGINT blocked in it, so that Ctrl-C reaches the main thread.

    Linux gives a signal sent to a process to any thread that does not block
    it. Python runs its handlers in the main thread only, and a main thread
    asleep in a blocking call (``time.sleep``, ``select``) is woken only if
    the signal came to it: one that came to another thread waits there until
    the main thread next runs Python code, which may be never. A thread
    inherits its creator's signal mask, so it is blocked around the start.
    """
    with sigint_blocked():
        thread.start()


@contextlib.contextmanager
def sigint_blocked() -> Iterator[None]:
    """SIGINT blocked in this thread (and what it starts: threads, and programs it execs).

    A SIGINT that comes meanwhile waits, and is delivered when the block ends.

    Once gevent has monkey-patched threading, a "thread" is a greenlet of the
    calling OS thread: there is no mask of its own to give it, and starting
    one yields to the hub, where another block would interleave and restore a
    blocked mask; then nothing is blocked.
    """
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("threading"):
        yield
        return
    try:
        before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    except (AttributeError, OSError, ValueError):  # no pthreads here
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)
