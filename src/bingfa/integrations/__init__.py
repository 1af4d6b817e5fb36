"""Bridges between bingfa and other concurrency frameworks.

Each bridge is a module of its own that imports its framework when it is
imported, and only then: ``import bingfa`` never pays for, or requires, any of
them. A bridge whose framework is missing raises
:class:`~bingfa.BackendUnavailableError` naming the extra that installs it.

- :mod:`bingfa.integrations.twisted`: Deferreds to and from bingfa futures,
  and pool tasks as Deferreds (``pip install 'bingfa[twisted]'``).

gevent and asyncio need no bridge: they are pool modes (``mode="gevent"``,
``mode="async"``), and every bingfa future can be awaited.
"""
