"""Running a batch on a machine bingfa does not manage (a Dask or Ray worker).

The cluster ships this module's :func:`run_remote_batch` with the batch: it
applies the function to every item and sends back the values and, for each
failed task, its exception and traceback text as an
:data:`~bingfa._core._remote_traceback.ErrorPayload` (a traceback object
cannot travel; an exception may not pickle). The caller turns the payloads
back into exceptions with :func:`outcomes`, each with the remote traceback as
its ``__cause__``, exactly as process mode does.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..._core._remote_traceback import ErrorPayload, capture, rebuild
from .._batch import run_batch

__all__ = ["CLUSTER_BATCH_SECONDS", "ClusterWidth", "RemoteOutcome", "outcomes",
           "run_remote_batch"]

# Work per map chunk on a Dask cluster, once task times are known: each batch
# costs a scheduling round trip of a millisecond or more (10 to 25 ms on a
# loaded machine here), so batches hold ten times what a local pool's do; the
# tail still shrinks (guided scheduling), so the workers finish together. (Ray
# cuts its chunks its own way: see _ray.py.)
CLUSTER_BATCH_SECONDS = 0.5

# (values, [(index in the batch, payload)] or None, seconds the batch ran,
#  the sum of the squares of each task's seconds if they were timed one by one)
RemoteOutcome = tuple[list[Any], list[tuple[int, ErrorPayload]] | None, float, float | None]


def run_remote_batch(fn: Callable[..., Any], items: Sequence[Any], call: int,
                     timed: bool = False) -> RemoteOutcome:
    """Run ``fn`` over ``items`` on a cluster worker; what :func:`outcomes` reads.

    ``timed``: time each task too (for tasks long enough that reading the
    clock between them costs nothing), to tell how much they vary; a batch of
    one task is timed by its own running time.
    """
    squares = None
    started = time.perf_counter()
    if timed and len(items) > 1:
        starts: list[float] = []
        values, errors = run_batch(fn, items, call, mark=lambda _: starts.append(
            time.perf_counter()))
        ended = time.perf_counter()
        starts.append(ended)
        squares = math.fsum((b - a) ** 2 for a, b in itertools.pairwise(starts))
    else:
        values, errors = run_batch(fn, items, call)
        ended = time.perf_counter()
        if timed:
            squares = (ended - started) ** 2
    packed = None if errors is None else [(i, capture(exc)) for i, exc in errors]
    return values, packed, ended - started, squares


def outcomes(outcome: RemoteOutcome,
             ) -> tuple[list[Any], list[tuple[int, BaseException]] | None, float, float | None]:
    """A remote batch's values, its errors rebuilt (remote traceback as cause), its times."""
    values, packed, elapsed, squares = outcome
    errors = None if packed is None else [(i, rebuild(payload)) for i, payload in packed]
    return values, errors, elapsed, squares


class ClusterWidth:
    """How many tasks a cluster runs at once (its CPUs), read again every ``every`` seconds.

    Guided scheduling gives each chunk a share of what is left per task that
    can run at once: on a cluster that is its CPUs, which may be fewer than the
    pool's ``workers`` (the batches it keeps in flight) and change as nodes come
    and go. 0 until read, or if it cannot be: then ``workers`` stands for it.
    """

    __slots__ = ("_at", "_every", "_read", "cpus")

    def __init__(self, read: Callable[[], float], every: float = 10.0) -> None:
        self._read = read
        self._every = every
        self._at = -every
        self.cpus = 0

    def refresh(self) -> None:
        """Read the width again if the last reading is older than ``every`` seconds."""
        now = time.monotonic()
        if now - self._at < self._every:
            return
        self._at = now
        try:
            self.cpus = max(0, int(self._read()))
        except Exception:  # a cluster that cannot say keeps the last figure
            pass

    def of(self, workers: int) -> int:
        """The tasks that run at once with ``workers`` in flight."""
        return min(workers, self.cpus) if self.cpus else workers
