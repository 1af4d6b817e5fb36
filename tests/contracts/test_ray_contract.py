"""The contract suite in ray mode, against one Ray cluster started once for the module.

Ray takes seconds to start, so the suite's cases do not each start one: the
test starts ``ray start --head`` once, then runs the suite again in a fresh
interpreter with ``BINGFA_TEST_MODES=ray`` (which ``conftest.MODES`` reads)
and ``RAY_ADDRESS`` pointing at that cluster. A small plugin connects that
interpreter to the cluster before the first case, so each pool uses the
connection instead of joining and leaving (what a pool does with Ray already
initialised in its process); joining by ``address=`` and a pool's own local
Ray are tested in ``tests/pool/test_ray_mode.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from ray_cluster import RayHead, ray_env  # before ray: it sets Ray's environment

pytest.importorskip("ray")  # the ray extra: installed wherever the tests run

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent

PLUGIN = """\
import os
import sys
from pathlib import Path

import pytest
import ray
from ray_cluster import RayHead, leak_check_passes_over_connections_to

_passing_over = []


def pytest_collection_finish(session):
    # One connection for the whole run, made before the leak check's first look,
    # once the tests' folders are on this process's path, for the workers to
    # import the tests' modules from (what a pool's own ray.init does).
    path = [os.path.abspath(p) for p in sys.path if p and os.path.isdir(p)]
    ray.init(address=os.environ["RAY_ADDRESS"], logging_level="WARNING",
             job_config=ray.job_config.JobConfig(_py_driver_sys_path=path))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    if not _passing_over:
        folder, pid = os.environ["BINGFA_RAY_HEAD"].split(os.pathsep)
        head = RayHead.existing(Path(folder), int(pid), os.environ["RAY_ADDRESS"])
        _passing_over.append(leak_check_passes_over_connections_to(head))
        _passing_over[0].__enter__()


def pytest_sessionfinish(session, exitstatus):
    ray.shutdown()
"""

# Cases of the suite that assert something a Ray cluster has no equivalent of,
# each with the reason. Everything else runs, unchanged, on ray.
SKIPS = {
    "test_max_tasks_per_worker_replaces_workers":
        "Ray's worker processes belong to the cluster (shared by every job); a pool cannot "
        "retire them, so mode='ray' refuses max_tasks_per_worker with a ValueError "
        "(tests/pool/test_ray_mode.py checks the refusal)",
    "test_a_pool_inherited_through_fork_fails_at_once_in_the_child":
        "Ray does not survive os.fork() after ray.init: the forked child hangs in Ray's own "
        "exit handler (ray.shutdown over gRPC), with or without a pool. bingfa's part passes "
        "(the child's result/submit/map/imap raise PoolClosedError naming os.fork())",
}


@pytest.mark.timeout(600)
@pytest.mark.skipif(os.environ.get("BINGFA_TEST_MODES") is not None,
                    reason="already inside a run of the suite on chosen modes")
def test_contract_suite_passes_in_ray_mode(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ray")
    head = RayHead(folder)
    try:
        plugin = folder / "bingfa_ray_session.py"
        plugin.write_text(PLUGIN)
        env = {**os.environ, **ray_env(), "BINGFA_TEST_MODES": "ray",
               "RAY_ADDRESS": head.address,
               "BINGFA_RAY_HEAD": f"{head.folder}{os.pathsep}{head.pid}"}
        env["PYTHONPATH"] = os.pathsep.join(
            [str(folder), str(TESTS), *(p for p in sys.path if p and os.path.isdir(p))])
        deselect = " and ".join(f"not {name}" for name in SKIPS)
        # -v: if the run dies, its last line names the test it died in.
        args = [sys.executable, "-X", "faulthandler", "-m", "pytest", str(HERE),
                f"--ignore={__file__}", "-p", "bingfa_ray_session",
                "-k", f"ray and {deselect}",  # the cases parametrised over modes
                "-p", "no:cacheprovider", "-v", "-rfEs", "--tb=short", "--timeout", "60",
                f"--rootdir={TESTS.parent}", "--basetemp", str(folder / "basetemp")]
        died = None
        deadline = time.monotonic() + 540
        for _ in range(3):
            left = deadline - time.monotonic()
            if died is not None and left < 120:
                break  # no time for another whole run: report the death
            done = subprocess.run(args, capture_output=True, text=True, timeout=left,
                                  env=env, cwd=TESTS.parent)
            summary = done.stdout.rstrip().rsplit("\n", 1)[-1]
            if done.returncode == 0 or " in " in summary:
                break  # passed, or a test failed: the run's own verdict stands
            # The run died without a verdict: seen in CI, where the pytest
            # process ended (exit status 1, no output) in the middle of a test.
            # Ray's driver leaves the process when it loses its cluster; run
            # the suite again (at most three runs in all), and say so.
            died = f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    finally:
        head.stop()
    report = f"{done.stdout[-20000:]}\n{done.stderr[-5000:]}"
    assert done.returncode == 0, f"the contract suite failed in ray mode:\n{report}"
    if died is not None:
        warnings.warn(f"a ray-mode contract run died, then one passed:\n{died}",
                      stacklevel=1)
    assert " passed" in done.stdout, report
    assert not head.processes()
