"""bf.Barrier: ``parties`` threads, of any processes, meet before going on.

The state lives in two shared words, guarded by a :class:`~bingfa.Condition`:
how many parties are inside ``wait``, and the phase. Parties arrive while it
is *filling*; the last one to arrive runs the action and turns it to
*draining*; the parties leave, and the last to leave turns it back to filling.
Arrivals during draining wait for the next round, so one round's parties
never mix with the next's. ``abort`` (or a timeout, or an action that raises)
makes it *broken*: everyone inside and everyone arriving gets
:class:`~bingfa.BrokenBarrierError` until ``reset``, which lets those inside
leave with that error (*resetting*) and then fills again.

A party killed inside ``wait`` never leaves: pass ``timeout=`` when a party
may die, and the others get BrokenBarrierError instead of waiting forever.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from .._core._errors import BingfaError
from .._core._timeouts import limit_seconds
from ._condition import Condition
from ._lock import Lock
from ._shared import Block, Shared, check_count

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["Barrier", "BrokenBarrierError"]



class BrokenBarrierError(BingfaError, threading.BrokenBarrierError):
    """A :class:`~bingfa.Barrier` was broken (aborted, timed out, reset, or its action failed).

    Also a :class:`threading.BrokenBarrierError`, so code written for
    threading's barrier catches it.
    """


_BROKEN_MESSAGE = ("the barrier is broken (aborted, a party timed out, or its action "
                   "failed); reset() it to use it again")
_COUNT, _PHASE = 0, 1
_FILLING, _DRAINING, _RESETTING, _BROKEN = 0, 1, -1, -2


class Barrier(Shared):
    """A barrier for ``parties`` threads across processes; like :class:`threading.Barrier`.

    ``wait(timeout=None)`` returns the party's arrival index (0 to parties - 1);
    ``action`` (picklable, or sent by value like any bingfa task) runs in the
    last party to arrive before any leaves. ``reset()``, ``abort()``,
    ``parties``, ``n_waiting``, ``broken``.
    """

    __slots__ = ("__weakref__", "_action", "_block", "_cond", "_key", "_parties", "_timeout",
                 "_words")

    _cond: Condition
    _block: Block
    _words: memoryview
    _parties: int
    _action: Callable[[], object] | None
    _timeout: float | None

    def __init__(self, parties: int, action: Callable[[], object] | None = None,
                 timeout: float | None = None) -> None:
        self._parties = check_count("parties", parties, least=1)
        if action is not None and not callable(action):
            raise TypeError(f"action must be callable, not {type(action).__name__}")
        self._action = action
        self._timeout = limit_seconds(timeout)
        self._cond = Condition(Lock())
        self._block = Block(2)
        self._words = self._block.words
        self._created(self._block.name, (), self._block.name)

    def _state(self) -> tuple[object, ...]:
        return (self._cond, self._block.name, self._parties, self._action, self._timeout)

    def _attach(self, cond: Condition, block: str, parties: int,
                action: Callable[[], object] | None, timeout: float | None) -> None:
        self._cond = cond
        self._block = Block(2, block)
        self._words = self._block.words
        self._parties = parties
        self._action = action
        self._timeout = timeout

    @property
    def parties(self) -> int:
        """How many parties must arrive before they all go on."""
        return self._parties

    @property
    def n_waiting(self) -> int:
        """How many parties wait in this round now."""
        words = self._words
        return words[_COUNT] if words[_PHASE] == _FILLING else 0

    @property
    def broken(self) -> bool:
        """Whether the barrier is broken (until :meth:`reset`)."""
        return bool(self._words[_PHASE] == _BROKEN)

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the other parties; this party's arrival index.

        Raises:
            BrokenBarrierError: the barrier is or becomes broken,
                is reset while this party waits, or ``timeout`` (else the
                barrier's own) passes first, which breaks it for everyone.
        """
        timeout = self._timeout if timeout is None else limit_seconds(timeout)
        words = self._words
        with self._cond:
            # Wait for the previous round's parties to leave.
            if not self._cond.wait_for(lambda: words[_PHASE] in (_FILLING, _BROKEN), timeout):
                self._break()
            if words[_PHASE] == _BROKEN:
                raise BrokenBarrierError(_BROKEN_MESSAGE)
            index = words[_COUNT]
            words[_COUNT] = index + 1
            try:
                if index + 1 == self._parties:
                    self._let_go()
                elif not self._cond.wait_for(lambda: words[_PHASE] != _FILLING, timeout):
                    self._break()
                    raise BrokenBarrierError(f"the other parties did not arrive within "
                                             f"{timeout} s; the barrier is now broken for all")
                elif words[_PHASE] != _DRAINING:
                    raise BrokenBarrierError("the barrier was reset or broken while this party "
                                             "waited")
                return index
            finally:
                words[_COUNT] -= 1
                if words[_COUNT] == 0 and words[_PHASE] in (_DRAINING, _RESETTING):
                    words[_PHASE] = _FILLING
                    self._cond.notify_all()

    def _let_go(self) -> None:
        if self._action is not None:
            try:
                self._action()
            except BaseException:
                self._break()
                raise
        self._words[_PHASE] = _DRAINING
        self._cond.notify_all()

    def _break(self) -> None:
        self._words[_PHASE] = _BROKEN
        self._cond.notify_all()

    def reset(self) -> None:
        """Back to the start: parties waiting now get BrokenBarrierError."""
        words = self._words
        with self._cond:
            if words[_COUNT] > 0:
                if words[_PHASE] in (_FILLING, _BROKEN):
                    words[_PHASE] = _RESETTING
            else:
                words[_PHASE] = _FILLING
            self._cond.notify_all()

    def abort(self) -> None:
        """Break the barrier: everyone waiting, and arriving, gets BrokenBarrierError."""
        with self._cond:
            self._break()

    def __repr__(self) -> str:
        state = "broken" if self.broken else f"waiters={self.n_waiting}/{self._parties}"
        return f"<bingfa.Barrier {state} {self._key}>"
