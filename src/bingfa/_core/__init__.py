"""The foundation every capability builds on.

errors, futures, serialization, remote tracebacks, the worker context,
Ctrl-C handling, progress reporting and machine facts. Nothing here imports
from the rest of bingfa.
"""
