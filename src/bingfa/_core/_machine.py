"""What this machine offers the process: the cores it may run on."""

from __future__ import annotations

import os
import sys

__all__ = ["gil_enabled", "usable_cores"]


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def gil_enabled() -> bool:
    """Whether this interpreter runs with the GIL (False on a free-threaded build with it off)."""
    probe = getattr(sys, "_is_gil_enabled", None)
    return True if probe is None else bool(probe())
