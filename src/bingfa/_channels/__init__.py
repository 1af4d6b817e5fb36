"""Channels: queues for threads or processes that end when closed and never hang."""
