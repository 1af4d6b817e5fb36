"""Locks, semaphores, events, conditions, barriers and values for threads and processes at once."""
