"""The leak check itself: it judges only what this test run made.

/dev/shm is shared by the whole machine. Another program's entries, even ones
it leaves behind while a test runs, must not fail that test; ours must.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest
from conftest import _our_shm


@pytest.mark.timeout(30)
def test_only_our_shared_memory_counts():
    foreign = f"bingfa-leakcheck-{uuid.uuid4().hex}"
    ours_by_name = f"bingfa-{os.getpid()}-{uuid.uuid4().hex}"
    ours_open = f"bingfa-leakcheck-{uuid.uuid4().hex}"
    # Another program creates an entry, leaves it behind and is gone.
    code = f"open('/dev/shm/{foreign}', 'w').close()"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=20)
    paths = [f"/dev/shm/{name}" for name in (foreign, ours_by_name, ours_open)]
    open(paths[1], "w").close()
    held = open(paths[2], "w")  # noqa: SIM115 - held open on purpose
    try:
        assert os.path.exists(paths[0])
        assert _our_shm({foreign, ours_by_name, ours_open}) == {ours_by_name, ours_open}
    finally:
        held.close()
        for path in paths:
            if os.path.exists(path):
                os.unlink(path)


@pytest.mark.timeout(30)
def test_the_stall_check_hears_a_blocked_loop_on_any_thread():
    import asyncio
    import logging
    import threading
    import time

    from conftest import _stall_limit, _StallReports

    async def blocks():
        time.sleep(_stall_limit() + 0.2)  # what no coroutine may do

    async def yields():
        await asyncio.sleep(0.3)

    reports = _StallReports()
    logger = logging.getLogger("asyncio")
    logger.addHandler(reports)
    try:
        asyncio.run(yields(), debug=True)
        assert reports.stalls == []
        worker = threading.Thread(target=asyncio.run, args=(blocks(),), kwargs={"debug": True})
        worker.start()
        worker.join()
    finally:
        logger.removeHandler(reports)
    assert len(reports.stalls) == 1
    assert "blocks()" in reports.stalls[0]
