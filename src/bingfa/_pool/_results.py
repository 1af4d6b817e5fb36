"""What a pool gives back for work in flight: ``AsyncResult``, and settling it.

``apply_async``, ``map_async`` and ``starmap_async`` return an
:class:`AsyncResult`: a :class:`bingfa.Future` with multiprocessing's names
too, and multiprocessing's ``callback``/``error_callback``.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from concurrent.futures import CancelledError
from typing import Any, TypeVar

from .._core._errors import PoolClosedError
from .._core._futures import Future
from ._errors import result_timeout_error
from ._jobs import ManyJob, set_exception, set_result

__all__ = ["AsyncResult", "callbacks", "cancel_if_cancelled", "settle_map"]

T = TypeVar("T")


class AsyncResult(Future[T]):
    """What ``apply_async``, ``map_async`` and ``starmap_async`` return.

    A :class:`bingfa.Future` with the names of
    :class:`multiprocessing.pool.AsyncResult` too: ``get(timeout)``,
    ``wait(timeout)``, ``ready()`` and ``successful()`` behave as there. When
    the timeout passes, ``get`` raises :class:`~bingfa.ResultTimeoutError`,
    which both ``except multiprocessing.TimeoutError`` and ``except
    TimeoutError`` catch.
    """

    def get(self, timeout: float | None = None) -> T:
        """The result, waiting up to ``timeout`` seconds; re-raises the task's error.

        Raises:
            ResultTimeoutError: the result did not come in time (the task may
                still be running).
            ValueError: ``timeout`` is NaN or not a number.
        """
        self.wait(timeout)
        if not self.done():
            raise result_timeout_error(f"waiting for a result timed out after {timeout} s; "
                                       f"the task may still be running")
        return self.result()

    def wait(self, timeout: float | None = None) -> None:
        """Wait up to ``timeout`` seconds for the task to finish.

        Raises:
            ValueError: ``timeout`` is NaN or not a number.
        """
        try:
            # exception() waits as result() does (letting the engine deliver
            # the result in this thread) without raising the task's error.
            self.exception(timeout)
        except (TimeoutError, CancelledError):
            pass

    def ready(self) -> bool:
        """Whether the task has finished."""
        return self.done()

    def successful(self) -> bool:
        """Whether the task finished without an error.

        Raises:
            ValueError: if the task has not finished yet (as the stdlib does).
        """
        if not self.done():
            raise ValueError(f"{self!r} not ready")
        return not self.cancelled() and self.exception() is None


def settle_map(result: AsyncResult[list[Any]], job: ManyJob) -> None:
    """Settle a ``map_async`` result as its job ends (called once, without the lock)."""
    if job.first_error is not None:
        set_exception(result, job.first_error[1])
        job.cancel()  # the tasks not started yet: nobody wants them now
    elif job.completed >= job.submitted and job.slots is not None:
        set_result(result, job.slots)
    else:  # stopped by result.cancel(), which has settled it already
        set_exception(result, PoolClosedError("the map was stopped before it finished"))


def cancel_if_cancelled(job: ManyJob, result: concurrent.futures.Future[Any]) -> None:
    if result.cancelled():
        job.cancel()


def callbacks(callback: Callable[[Any], Any] | None,
               error_callback: Callable[[BaseException], Any] | None,
               ) -> Callable[[concurrent.futures.Future[Any]], None]:
    def done(fut: concurrent.futures.Future[Any]) -> None:
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is None:
            if callback is not None:
                callback(fut.result())
        elif error_callback is not None:
            error_callback(exc)

    return done
