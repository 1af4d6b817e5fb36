"""`bingfa bench`: real runs of the command, its verdicts, files, cache and Ctrl-C."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import termios
import time

import psutil
import pytest

from bingfa.bench._report import Report, WorkloadResult, machine
from bingfa.bench._workloads import WORKLOADS

BY_NAME = {w.name: w for w in WORKLOADS}


def bench(*args: str, env: dict[str, str] | None = None, timeout: float = 120,
          **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bingfa", "bench", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})},
                          **kwargs)


@pytest.mark.timeout(180)
def test_a_quick_run_times_every_mode_and_says_which_to_use(tmp_path):
    out = tmp_path / "bench.json"
    done = bench("--quick", "--only", "sleep,switch", "--json", str(out),
                 env={"XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stderr
    assert "GIL" in done.stdout
    assert "cores" in done.stdout
    results = json.loads(out.read_text())
    assert results["complete"] is True
    assert set(results["workloads"]) == {"sleep", "switch"}
    sleep = results["workloads"]["sleep"]
    assert set(sleep["modes"]) == {"serial", "thread", "process", "async", "gevent"}
    for mode in sleep["modes"].values():
        assert len(mode["runs"]) == 2
        assert mode["median"] > 0
        assert mode["speedup"] > 0
    assert sleep["verdict"].startswith("I/O-bound, sleeping (10 ms): ")
    assert sleep["verdict"] in done.stdout
    switch = results["workloads"]["switch"]
    assert set(switch["modes"]) == {"serial", "thread", "process", "async", "gevent", "rpc"}
    assert "µs" in switch["verdict"]
    # kept for mode="auto", the same results
    kept = json.loads((tmp_path / "cache" / "bingfa" / "bench.json").read_text())
    assert kept["workloads"]["sleep"]["modes"] == sleep["modes"]


def cmdline(proc: psutil.Process) -> str:
    """A process's command line; empty once it has gone."""
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return ""


def _drain(fd: int) -> str:
    """What is left to read on a terminal whose other end has closed."""
    text = b""
    with contextlib.suppress(OSError):  # EIO: the other end is closed
        while select.select([fd], [], [], 5)[0] and (chunk := os.read(fd, 4096)):
            text += chunk
    return text.decode(errors="replace")


def result(name: str, **medians: float) -> WorkloadResult:
    r = WorkloadResult(BY_NAME[name], tasks=10)
    r.times = {mode: [seconds] for mode, seconds in medians.items()}
    return r


def test_verdicts_name_the_fastest_mode_the_ties_and_the_gil():
    cpu = result("cpu", serial=2.0, thread=2.1, process=1.0)
    assert cpu.verdict() == ("CPU-bound, pure Python: processes, 2.0x; "
                             "threads 0.95x because of the GIL")
    zlib = result("zlib", serial=2.0, thread=1.02, process=1.0)
    assert zlib.verdict() == ("CPU-bound in C, GIL released (zlib): processes, 2.0x "
                              "(as good: threads 1.96x)")
    assert zlib.as_json()["as_good"] == ["thread"]
    slow = result("hashlib", serial=1.0, thread=1.5, process=1.8)
    assert slow.verdict().startswith("CPU-bound in C, GIL released (hashlib): serial; nothing")
    switch = result("switch", serial=1e-7, thread=5e-5, process=1.5e-4)
    assert switch.verdict() == ("switch cost (one round trip): plain call 0.10 µs, "
                                "threads 50.0 µs, processes 150.0 µs")


def test_the_report_states_the_machine_and_marks_an_interrupted_run():
    report = Report(quick=True, machine=machine())
    report.results.append(result("cpu", serial=2.0, thread=2.0, process=1.0))
    text = report.text()
    assert f"{os.cpu_count()} cores" in text
    assert "CPython" in text or "PyPy" in text
    assert "(interrupted" in text
    report.complete = True
    assert "(interrupted" not in report.text()


@pytest.mark.timeout(30)
def test_ctrl_c_while_the_cpus_are_sampled_exits_130(monkeypatch, capsys):
    """The run samples how busy the CPUs are before it starts (0.2 s)."""
    from bingfa.bench import _cli

    def interrupted(quick: bool) -> Report:
        raise KeyboardInterrupt

    monkeypatch.setattr(_cli, "new_report", interrupted)
    args = _cli.argparse.Namespace(only=None, plot=None, quick=True, json=None, no_save=False)
    assert _cli.main(args, _cli.argparse.ArgumentParser()) == 130
    assert capsys.readouterr().out == ""


@pytest.mark.timeout(120)
def test_ctrl_c_stops_at_once_with_what_was_measured(tmp_path):
    # On a terminal the progress bar names each step as it starts: the test
    # interrupts as the processes' first timed run starts, after serial's and
    # threads' (the modes take turns, and every pool warms up first).
    primary, secondary = pty.openpty()
    termios.tcsetwinsize(secondary, (24, 160))  # a new one has no width: no bar fits
    proc = subprocess.Popen([sys.executable, "-m", "bingfa", "bench", "--only", "cpu",
                             "--no-save"], stdout=subprocess.PIPE, stderr=secondary,
                            text=True, start_new_session=True)
    os.close(secondary)
    try:
        seen = ""
        deadline = time.monotonic() + 90
        while not re.search(r" 2/\d+ .*cpu: process", seen):
            assert time.monotonic() < deadline, f"the processes' run never started: {seen!r}"
            assert proc.poll() is None, seen
            if select.select([primary], [], [], 1)[0]:
                seen = (seen + os.read(primary, 4096).decode(errors="replace"))[-2000:]
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
        err = seen + _drain(primary)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        os.close(primary)
    assert proc.returncode == 130, err
    assert "serial" in out
    assert "threads" in out
    assert "(interrupted: only what was measured so far)" in out
    if "  processes " not in out:  # stopped in its first run: the verdict says so
        assert "(not measured: processes)" in out
    assert "Traceback" not in err


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("suffix", "magic"), [(".png", b"\x89PNG"), (".svg", b"<?xml")])
def test_plot_draws_the_speedups(tmp_path, suffix, magic):
    picture = tmp_path / f"bench{suffix}"
    done = bench("--quick", "--only", "zlib", "--plot", str(picture), "--no-save")
    assert done.returncode == 0, done.stderr
    assert picture.read_bytes().startswith(magic)


def test_plot_without_matplotlib_says_what_to_install(tmp_path):
    fake = tmp_path / "no_matplotlib"
    fake.mkdir()
    (fake / "matplotlib.py").write_text("raise ImportError('not here')\n")
    done = bench("--quick", "--plot", str(tmp_path / "b.png"),
                 env={"PYTHONPATH": f"{fake}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})
    assert done.returncode == 2
    assert "pip install 'bingfa[plot]'" in done.stderr
    assert not (tmp_path / "b.png").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--only", "cpu,bogus"], "unknown workload(s) bogus"),
    (["--plot", "bench.pdf"], "PNG or SVG"),
])
def test_bad_options_are_refused_before_anything_runs(tmp_path, args, message):
    done = bench(*args, cwd=tmp_path)
    assert done.returncode == 2
    assert message in done.stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("workload", "server_command"), [
    ("socket", "bingfa.bench._server socket"),
    ("switch", "bingfa.bench._server rpc"),  # the bf.rpc round trip's server
])
def test_the_benchs_server_goes_when_the_bench_is_killed(workload, server_command):
    proc = subprocess.Popen([sys.executable, "-m", "bingfa", "bench", "--only", workload,
                             "--no-save"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        me = psutil.Process(proc.pid)
        server = None
        while server is None:
            assert proc.poll() is None, "the bench ended before its server was seen"
            server = next((c for c in me.children()
                           if server_command in cmdline(c)), None)
            time.sleep(0.02)
    finally:
        proc.kill()
        proc.wait()
    _, alive = psutil.wait_procs([server], timeout=5)
    assert not alive
