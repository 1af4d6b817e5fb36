"""A fixture every command test module imports: this process's reaper, started first.

The first command a process starts also starts its reaper (see
``bingfa/_commands/_reaper.py``): a helper that lives as long as the process
and ends its commands should it die. Started once, before the first test's
leak check takes its baseline, it is not mistaken for a process a test leaked.

Not a conftest.py: the tests import the top conftest as ``conftest``, which a
second conftest.py here would shadow for the whole run.
"""

from __future__ import annotations

import pytest

import bingfa as bf


@pytest.fixture(scope="session", autouse=True)
def reaper_started() -> None:
    """This process's reaper, running before the leak check of the module's first test."""
    assert bf.run(["true"]).returncode == 0
