"""Telling bingfa's own frames from the user's in a task's traceback.

A task's error is raised inside bingfa's worker loop, so its traceback starts
with frames of bingfa (the loop that called the task) before the user's code.
They say nothing about the error and bury it, so they are cut off the top.
"""

from __future__ import annotations

import os
from types import TracebackType

__all__ = ["without_own_frames"]

# bingfa's own files: frames in them say nothing about the user's error.
_OWN_FILES = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def without_own_frames(tb: TracebackType | None) -> TracebackType | None:
    """``tb`` without bingfa's frames at its top (where a worker called the task).

    A traceback made entirely of bingfa's frames (an error in bingfa itself)
    is kept whole.
    """
    head = tb
    while head is not None and head.tb_frame.f_code.co_filename.startswith(_OWN_FILES):
        head = head.tb_next
    return head if head is not None else tb
