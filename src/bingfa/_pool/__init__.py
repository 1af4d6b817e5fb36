"""Pools: the public ``Pool``, its jobs and scheduler, the batch runner and one engine per mode."""
