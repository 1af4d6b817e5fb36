"""The installed ``bingfa`` command: its script, --version, info and demo."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(sys.executable).parent / "bingfa"


def bingfa(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def test_the_script_is_installed_next_to_python():
    assert SCRIPT.exists(), "pip install -e . puts the bingfa script next to python"


def test_version_and_info():
    import bingfa as bf

    assert bingfa("--version").stdout.strip() == f"bingfa {bf.__version__}"
    info = bingfa("info")
    assert info.returncode == 0
    assert "start methods:" in info.stdout
    assert "modes: auto, thread, process" in info.stdout


@pytest.mark.timeout(90)
@pytest.mark.parametrize("mode", ["process", "thread"])
def test_demo_runs_a_checked_map(mode):
    # Process workers load the script again as their main module: only the
    # `if __name__ == "__main__"` guard keeps them from running the command too.
    done = bingfa("demo", "-n", "5000", "--mode", mode)
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith("(ok)\n")
    assert f"{mode} workers" in done.stdout


def test_bad_demo_arguments():
    done = bingfa("demo", "-n", "-1")
    assert done.returncode == 2
    assert "-n must be >= 0" in done.stderr


# --- python -m bingfa ---------------------------------------------------------------------


def python_m(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("args", [["--version"], ["info"], ["run"], ["bogus"]],
                         ids=["version", "info", "run-without-command", "unknown-command"])
def test_python_m_bingfa_is_the_bingfa_command(args):
    as_package = python_m("bingfa", *args)
    as_module = python_m("bingfa._cli", *args)
    assert (as_package.returncode, as_package.stdout, as_package.stderr) == \
        (as_module.returncode, as_module.stdout, as_module.stderr)
    if args == ["--version"]:
        import bingfa as bf

        assert as_package.stdout == f"bingfa {bf.__version__}\n"


def test_python_m_bingfa_run():
    # Jobs print as they finish, so the order of the lines may differ.
    as_package = python_m("bingfa", "run", "echo", ":::", "a", "b")
    as_module = python_m("bingfa._cli", "run", "echo", ":::", "a", "b")
    for done in (as_package, as_module):
        assert (done.returncode, sorted(done.stdout.splitlines()), done.stderr) == \
            (0, ["a", "b"], "")


@pytest.mark.timeout(90)
def test_python_m_bingfa_demo_with_processes():
    # Process workers load the main module (bingfa.__main__) again: its guard
    # keeps them from running the command a second time.
    done = python_m("bingfa", "demo", "-n", "2000", "--mode", "process")
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith("(ok)\n")
