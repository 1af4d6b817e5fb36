"""The janitor: what a process leaves named for itself goes once it is dead, however it died."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import wait_until

pytestmark = pytest.mark.timeout(60)

KILLED_WITH_A_DIRECTORY = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from bingfa._core._janitor import temporary_directory

    folder = Path(temporary_directory("test"))
    (folder / "inside").mkdir()
    (folder / "inside" / "data").write_text("left behind")
    print(folder, flush=True)
    sys.stdin.read()  # until the test has seen it
    os.kill(os.getpid(), getattr(signal, sys.argv[1]))
""")


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_a_temporary_directory_goes_when_its_process_dies(tmp_path, how):
    script = tmp_path / "victim.py"
    script.write_text(KILLED_WITH_A_DIRECTORY)
    env_tmp = tmp_path / "tmp"
    env_tmp.mkdir()
    proc = subprocess.Popen([sys.executable, str(script), how], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True,
                            env={"TMPDIR": str(env_tmp), "PATH": "/usr/bin:/bin",
                                 "PYTHONPATH": ":".join(sys.path)})
    try:
        folder = Path(proc.stdout.readline().strip())
        # Named for its process, in the temporary folder the process was given.
        assert folder.parent == env_tmp
        assert folder.name.startswith(f"bingfa-{proc.pid}-test-")
        assert (folder / "inside" / "data").read_text() == "left behind"
        proc.stdin.close()
        assert proc.wait(timeout=30) == -getattr(signal, how)
        assert wait_until(lambda: not folder.exists(), timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
