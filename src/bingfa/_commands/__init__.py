"""External commands: ``run``, ``stream``, ``run_many``, their epoll loop, and ``bingfa run``."""
