"""Structured scopes: nothing started in a ``bf.scope()`` block outlives it."""
