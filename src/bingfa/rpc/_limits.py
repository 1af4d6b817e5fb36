"""Limits the server and its lane threads share."""

from __future__ import annotations

__all__ = ["MAX_INFLIGHT_BYTES"]

# Requests in flight on one connection may hold this many bytes; beyond it the
# connection is not read until some finish, so big answers a client does not
# read cannot pile up without bound.
MAX_INFLIGHT_BYTES = 16 * 2**20

