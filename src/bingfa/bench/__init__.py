"""``bingfa bench``: serial, threads, processes, coroutines and greenlets, timed side by side.

The seed's question "多进程 vs 多线程" (processes or threads?) has no answer that
holds everywhere: it depends on the machine, the interpreter (GIL or
free-threaded) and the work. This measures it here, for pure-Python CPU work,
CPU work in C that releases the GIL, sleeping and socket I/O, and the cost of
one round trip to each kind of worker, prints a table and a verdict per
workload, and keeps the results (see ``_cache``).
"""

from ._cache import cache_path, load

__all__ = ["cache_path", "load"]
