"""Pools and the life of the process: interpreter exit, and os.fork().

At exit, a pool nobody closed still runs its queued work (as
``concurrent.futures`` executors do), unless the program is ending because of
Ctrl-C. In a child made by ``os.fork()``, every pool is its parent's: it is
marked so, and nothing in the child waits on it or stops it.
"""

from __future__ import annotations

import atexit
import os
import sys
import weakref

from .._core._errors import PoolClosedError
from ._engines._base import Engine

__all__ = ["finish_at_exit", "forget", "note_interrupted_at_exit", "remember",
           "shutdown_quietly", "stopping_at_exit"]

_live_engines: weakref.WeakSet[Engine] = weakref.WeakSet()
# Ctrl-C came while an exit handler drained a pool (see RayEngine._at_exit):
# the handlers that run after it stop pools rather than wait for them.
_interrupted_at_exit = False


def stopping_at_exit() -> bool:
    """Whether the program ends because of Ctrl-C: then open pools stop, they do not drain."""
    return _interrupted_at_exit or isinstance(getattr(sys, "last_value", None),
                                              KeyboardInterrupt)


def note_interrupted_at_exit() -> None:
    """Ctrl-C came while an exit handler drained a pool: the handlers after it stop pools."""
    global _interrupted_at_exit
    _interrupted_at_exit = True


def remember(engine: Engine) -> None:
    """Count ``engine`` among the live ones, until :func:`forget`."""
    _live_engines.add(engine)


def forget(engine: Engine) -> None:
    """``engine`` has stopped: nothing is left for the exit handler to do."""
    _live_engines.discard(engine)


def shutdown_quietly(engine: Engine) -> None:
    # The pool was dropped without close(): let queued work finish, then stop.
    if engine.inherited:
        return  # a forked child's copy: the parent's to stop
    try:
        engine.shutdown(wait=False)
    except Exception:
        pass


def _mark_inherited() -> None:
    """In a child made by os.fork(): every pool here is its parent's (no locks taken)."""
    for engine in list(_live_engines):
        engine.inherited = True


os.register_at_fork(after_in_child=_mark_inherited)


@atexit.register
def finish_at_exit() -> None:
    """What becomes of pools still open when the interpreter exits.

    Their queued work runs, as with ``concurrent.futures`` executors: a
    script that submits and never waits still gets its work done. But when
    the program is ending because of Ctrl-C (or Ctrl-C comes while waiting
    here), everything is stopped at once instead.

    Registered after multiprocessing's own exit handler, so it runs first.
    """
    engines = [engine for engine in _live_engines if not engine.inherited]
    if not stopping_at_exit():
        try:
            for engine in engines:
                _drain(engine)
            return
        except BaseException:
            pass  # Ctrl-C while waiting (or a broken pool): stop everything now
    for engine in engines:
        try:
            engine.terminate()
        except Exception:
            pass


def _drain(engine: Engine) -> None:
    """Run what is queued on ``engine``, then stop it."""
    # An imap nobody reads any more would keep the pool waiting for input.
    error = PoolClosedError("the interpreter exited while this imap was reading its input")
    with engine.scheduler.lock:
        for job in list(engine.scheduler.open_jobs):
            job.cut_input(error)
    engine.wake()
    engine.shutdown(wait=True)
