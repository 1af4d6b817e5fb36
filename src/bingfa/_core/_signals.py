"""Signal numbers, without importing :mod:`signal`.

:mod:`signal` builds its ``Signals`` enum on import, which costs ``bingfa run``
about 6 ms of a start-up it races ``xargs`` with. Its C half has the numbers.
"""

import _signal  # type: ignore[import-not-found]

SIGKILL: int = _signal.SIGKILL
SIGTERM: int = _signal.SIGTERM
SIGPIPE: int = _signal.SIGPIPE
SIGXFSZ: int = _signal.SIGXFSZ
SIGSTOP: int = _signal.SIGSTOP
