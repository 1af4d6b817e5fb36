"""The shared Pool contract, run on mode="dask" against one real cluster.

The contract suite makes its own pools (``bf.Pool(2, mode=mode)``), dozens of
them. Each joins the cluster this module starts once (a ``dask scheduler``
and two ``dask worker`` processes) rather than starting a cluster of its
own: the suite runs in a child pytest with ``BINGFA_TEST_MODES=dask`` and
``DASK_SCHEDULER_ADDRESS`` set, which is how Dask itself names a default
scheduler, and which ``bf.Pool(mode="dask")`` follows as
``distributed.Client()`` does (see ``_engines/_dask.py``).

Dask cannot stop a running task, so the suite's stuck tasks (timeouts,
terminate) keep a worker thread until they return: the workers get more
threads than the suite ever leaves stuck at once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from dask_cluster import cli_cluster

pytest.importorskip("distributed")

HERE = Path(__file__).parent
SUITES = ["test_pool_contract.py", "test_exit_and_references.py"]


@pytest.mark.timeout(600)
def test_the_contract_suite_passes_on_dask(tmp_path):
    with cli_cluster(tmp_path, workers=2, threads=16) as cluster:
        env = {**os.environ, "BINGFA_TEST_MODES": "dask",
               "DASK_SCHEDULER_ADDRESS": cluster.address}
        run = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
             "-x" if os.environ.get("BINGFA_DASK_CONTRACT_FAIL_FAST") else "-q",
             *[str(HERE / s) for s in SUITES]],
            env=env, capture_output=True, text=True, timeout=580, cwd=HERE.parent.parent)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
