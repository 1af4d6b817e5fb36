"""Where ``bingfa bench`` keeps its last results: one JSON file per user.

``$XDG_CACHE_HOME/bingfa/bench.json`` (``~/.cache/bingfa/bench.json`` by
default), written whole or not at all (a temporary file renamed over it).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["cache_path", "load", "save"]


def cache_path() -> Path:
    """The file the results go to."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "bingfa" / "bench.json"


def save(results: dict[str, Any]) -> Path:
    """Write ``results`` to the cache file; its path."""
    path = cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".bench-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(results, f, indent=1)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
    return path


def load() -> dict[str, Any] | None:
    """The last results saved, or None if there are none (or they cannot be read)."""
    try:
        with open(cache_path()) as f:
            results = json.load(f)
    except (OSError, ValueError):
        return None
    return results if isinstance(results, dict) else None
