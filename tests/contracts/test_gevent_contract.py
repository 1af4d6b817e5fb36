"""The contract suite in gevent mode, in an interpreter gevent has monkey-patched.

gevent mode only works once ``gevent.monkey.patch_all()`` has run, before
anything else is imported; the suite's own process is not patched (and must
not be: thread mode is real threads). So the suite runs again in a fresh
interpreter that patches first, with ``BINGFA_TEST_MODES=gevent`` telling
``conftest.MODES`` which mode to parametrise over.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("gevent")  # a dev dependency: installed wherever the tests run

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent

LAUNCHER = """\
from gevent import monkey
monkey.patch_all()

import sys

import pytest

sys.exit(pytest.main(sys.argv[1:]))
"""


@pytest.mark.timeout(600)
@pytest.mark.skipif(os.environ.get("BINGFA_TEST_MODES") is not None,
                    reason="already inside a run of the suite on chosen modes")
def test_contract_suite_passes_in_gevent_mode(tmp_path):
    launcher = tmp_path / "patched_pytest.py"
    launcher.write_text(LAUNCHER)
    env = dict(os.environ, BINGFA_TEST_MODES="gevent")
    args = [sys.executable, str(launcher), str(HERE), f"--ignore={__file__}",
            "-k", "gevent",  # the cases parametrised over modes; the others ran here already
            "-p", "no:cacheprovider", "-q", "-rfEs", "--tb=short", "--timeout", "60",
            f"--rootdir={TESTS.parent}", "--basetemp", str(tmp_path / "basetemp")]
    done = subprocess.run(args, capture_output=True, text=True, timeout=580, env=env,
                          cwd=TESTS.parent)
    report = f"{done.stdout[-20000:]}\n{done.stderr[-5000:]}"
    assert done.returncode == 0, f"the contract suite failed in gevent mode:\n{report}"
    assert " passed" in done.stdout, report
