"""Coroutines and the other ways Python waits: bridges between loops, threads and processes."""
