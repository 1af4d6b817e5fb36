"""How much a map's task times vary, for engines that cut few, large chunks.

Guided scheduling with one cut per worker (a chunk is what is left over the
workers) makes the fewest chunks, which matters where each chunk costs
milliseconds (a Ray task); but then the first chunks hold most of the map,
and when task times vary, one of them may run long while nothing is left for
the other workers to balance it with. Cutting over twice the workers leaves
them that slack, at the price of more chunks.

Which one a map needs depends on how much its tasks vary, so a cluster worker
times each task of a batch (when tasks are long enough for the clock to cost
nothing) and sends back the sum of their squares beside the batch's time.
From those sums :class:`TaskSpread` keeps the tasks' coefficient of variation
(standard deviation over mean), and :func:`likely_error` turns it into how far
a chunk's running time may stray from its estimate.

The other way round, a map whose tasks were timed steady needs no shrinking
tail at all: each CPU's share of it would stray by less than the tail's least
chunk. Such a map is cut evenly before it starts (:func:`even_cut`), each CPU
getting the same few chunks, which is the fewest Ray tasks and leaves the CPUs
finishing within a task of each other. It is only chosen from measured times:
a function never timed, or whose tasks vary, keeps the guided tail.
"""

from __future__ import annotations

import math

__all__ = ["MIN_SAMPLES", "TaskSpread", "even_cut", "likely_error"]

# Fewer timed tasks than this say too little about how much they vary.
MIN_SAMPLES = 8


class TaskSpread:
    """Sums of a map's measured task times and of their squares."""

    __slots__ = ("count", "squares", "total")

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.squares = 0.0

    def add(self, count: int, total: float, squares: float) -> None:
        """``count`` tasks took ``total`` seconds, their squares summing to ``squares``."""
        if count > 0 and total > 0.0:
            self.count += count
            self.total += total
            self.squares += squares

    def variation(self) -> float | None:
        """The tasks' coefficient of variation, or ``None`` before MIN_SAMPLES of them."""
        if self.count < MIN_SAMPLES:
            return None
        mean = self.total / self.count
        variance = max(0.0, self.squares / self.count - mean * mean)
        return math.sqrt(variance) / mean


def likely_error(variation: float, tasks: int, per_task: float) -> float:
    """How far (one standard deviation, seconds) a chunk of ``tasks`` may stray from its estimate.

    Independent task times add their variances: a chunk of n tasks strays by
    about ``variation * per_task * sqrt(n)``.
    """
    return variation * per_task * math.sqrt(max(tasks, 0))


def even_cut(tasks: int, per_task: float, width: int, most: float) -> list[int]:
    """Chunk sizes cutting ``tasks`` of ``per_task`` seconds evenly over ``width`` CPUs.

    Each CPU gets the same number of chunks: its share of the work over
    ``most`` seconds, rounded (so a chunk holds up to half as much again), and
    at least one. Chunk sizes differ by one task at most, the larger first:
    handed out in turn, no CPU gets more than one task more than another.
    """
    per_cpu = tasks * per_task / max(width, 1)
    rounds = max(1, round(per_cpu / most))
    count = max(1, min(tasks, max(width, 1) * rounds))
    base, extra = divmod(tasks, count)
    return [base + 1] * extra + [base] * (count - extra)
