"""What a channel raises.

Apart from :mod:`.._core._errors` because :class:`ChannelEmpty` and
:class:`ChannelFull` derive from :mod:`queue`'s exceptions, an import that
``bingfa run`` should not pay for.
"""

from __future__ import annotations

import queue

from .._core._errors import BingfaError

__all__ = ["ChannelClosedError", "ChannelEmpty", "ChannelFull"]


class ChannelClosedError(BingfaError, RuntimeError):
    """A :class:`bingfa.Channel` has been closed.

    Raised by a ``put`` after the close, and by a ``get`` once the channel is
    closed and every item put before the close has been taken (a ``for``
    loop over the channel just ends there).
    """


class ChannelEmpty(BingfaError, queue.Empty):
    """A channel had no item for ``get_nowait()``, or none came within ``timeout``.

    Also a :class:`queue.Empty`, so code written for :mod:`queue` catches it.
    """


class ChannelFull(BingfaError, queue.Full):
    """A channel had no room for ``put_nowait()``, or none within ``timeout``.

    Also a :class:`queue.Full`, so code written for :mod:`queue` catches it.
    """
