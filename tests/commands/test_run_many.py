"""bf.run_many, bf.stream and bf.arun: many commands, lines as they come, asyncio."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest
from conftest import pid_alive, wait_until

import bingfa as bf

PY = sys.executable


def sh(script: str) -> list[str]:
    return ["sh", "-c", script]


# -- run_many: order, parallelism, output ---------------------------------------------


def test_results_in_input_order_by_default():
    cmds = [sh(f"sleep {d}; echo {d}") for d in ("0.3", "0.1", "0.2")]
    results = list(bf.run_many(cmds, jobs=3, text=True))
    assert [r.stdout for r in results] == ["0.3\n", "0.1\n", "0.2\n"]
    assert all(r.ok and r.attempts == 1 for r in results)
    assert [r.args for r in results] == cmds


def test_results_as_they_finish_without_keep_order():
    cmds = [sh(f"sleep {d}; echo {d}") for d in ("0.4", "0.0", "0.2")]
    results = list(bf.run_many(cmds, jobs=3, keep_order=False, text=True))
    assert [r.stdout for r in results] == ["0.0\n", "0.2\n", "0.4\n"]


def test_at_most_jobs_commands_run_at_once(tmp_path):
    # Each command counts the markers present while its own exists.
    d = tmp_path
    script = f"touch {d}/run.$$; ls {d} | grep -c '^run' > {d}/count.$$; sleep 0.05; rm {d}/run.$$"
    results = list(bf.run_many([sh(script)] * 12, jobs=2))
    assert all(r.ok for r in results)
    counts = [int(p.read_text()) for p in tmp_path.glob("count.*")]
    assert len(counts) == 12
    assert max(counts) <= 2


def test_output_text_shell_env_and_cwd(tmp_path):
    (tmp_path / "here.txt").write_text("x")
    results = list(bf.run_many(
        ["echo $GREETING", "ls", "printf '\\377'"], shell=True, text=True,
        env={"GREETING": "hi", "PATH": os.environ["PATH"]}, cwd=tmp_path))
    assert [r.stdout for r in results] == ["hi\n", "here.txt\n", "\ufffd"]
    assert results[0].args == "echo $GREETING"


def test_fifty_megabytes_from_two_commands_at_once():
    code = ("import sys; sys.stdout.buffer.write(b'o' * 25_000_000); "
            "sys.stderr.buffer.write(b'e' * 25_000_000)")
    results = list(bf.run_many([[PY, "-c", code]] * 2, jobs=2, timeout=60))
    assert [(len(r.stdout), len(r.stderr)) for r in results] == [(25_000_000, 25_000_000)] * 2


def test_a_generator_is_pulled_only_as_slots_free_up():
    pulled = []

    def endless():
        n = 0
        while True:
            n += 1
            pulled.append(n)
            yield ["echo", str(n)]

    seen = []
    for r in bf.run_many(endless(), jobs=2, text=True):
        seen.append(r.stdout.strip())
        if len(seen) == 5:
            break
    assert seen == ["1", "2", "3", "4", "5"]
    assert len(pulled) < 50  # not drained ahead of need


def test_progress_callable_sees_every_result():
    calls = []
    list(bf.run_many([["true"]] * 4, jobs=2, progress=lambda done, total: calls.append((done,
                                                                                      total))))
    assert calls[-1] == (4, 4)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)


# -- run_many: timeouts, retries, halting, stopping ---------------------------------------


@pytest.mark.timeout(30)
def test_timeout_kills_each_group(tmp_path):
    pidfile = tmp_path / "pid"
    slow = sh(f"sleep 100 & echo $! > {pidfile}; sleep 100")
    results = list(bf.run_many([slow, ["echo", "quick"]], timeout=0.5, text=True))
    assert results[0].timed_out
    assert results[0].signal == signal.SIGTERM
    assert results[1].stdout == "quick\n"
    assert wait_until(lambda: not pid_alive(int(pidfile.read_text())), timeout=5)


def test_retries_until_success(tmp_path):
    counter = tmp_path / "n"
    # fails on its first two attempts, succeeds on the third
    script = f"echo x >> {counter}; [ $(wc -l < {counter}) -ge 3 ]"
    [result] = bf.run_many([sh(script)], retries=5)
    assert result.ok
    assert result.attempts == 3


def test_retries_run_out():
    [result] = bf.run_many([sh("exit 4")], retries=2)
    assert (result.returncode, result.attempts) == (4, 3)
    with pytest.raises(bf.CommandError, match="after 3 attempts"):
        result.check()


@pytest.mark.timeout(30)
def test_halt_now_on_failure_kills_the_others_and_raises(tmp_path):
    pidfile = tmp_path / "pid"
    # The failure waits for the first command's background job: on a busy
    # machine it could otherwise halt the run before that job existed.
    cmds = [sh(f"sleep 100 & echo $! > {pidfile}; sleep 100"),
            sh(f"until [ -s {pidfile} ]; do sleep 0.01; done; exit 3"),
            ["sleep", "100"], ["echo", "never started"]]
    run = bf.run_many(cmds, jobs=3, halt="now,fail=1")
    seen = [next(run), next(run), next(run)]
    with pytest.raises(bf.CommandError, match="halted after 1 failed command") as info:
        next(run)
    assert info.value.result.returncode == 3
    assert [r.returncode for r in seen] == [-signal.SIGTERM, 3, -signal.SIGTERM]
    assert wait_until(lambda: not pid_alive(int(pidfile.read_text())), timeout=5)


def test_halt_soon_lets_running_commands_finish():
    cmds = [sh("sleep 0.5; echo done"), sh("exit 1"), ["echo", "never started"]]
    run = bf.run_many(cmds, jobs=2, halt="soon,fail=1", text=True)
    seen = [next(run), next(run)]
    with pytest.raises(bf.CommandError):
        next(run)
    assert [r.stdout for r in seen] == ["done\n", ""]
    assert (run.halted, run.failed, run.succeeded) == (True, 1, 1)


def test_halt_now_on_success_stops_without_error():
    cmds = [["sleep", "100"], ["true"], ["sleep", "100"]]
    run = bf.run_many(cmds, jobs=2, halt="now,success=1", keep_order=False)
    results = list(run)
    assert run.halted
    assert results[0].ok
    assert [r.signal for r in results[1:]] == [signal.SIGTERM]


@pytest.mark.timeout(30)
def test_leaving_early_ends_running_commands(tmp_path):
    pidfile = tmp_path / "pid"
    cmds = [["true"], sh(f"echo $$ > {pidfile}; exec sleep 100")]
    with bf.run_many(cmds, jobs=2) as run:
        assert next(run).ok
        assert wait_until(pidfile.exists)
    assert wait_until(lambda: not pid_alive(int(pidfile.read_text())), timeout=5)


@pytest.mark.timeout(30)
def test_ctrl_c_leaves_no_command_behind(tmp_path):
    pidfile = tmp_path / "pids"
    script = textwrap.dedent(f"""
        import bingfa as bf
        cmd = ["sh", "-c", "sleep 100 & echo $! >> {pidfile}; echo $$ >> {pidfile}; wait"]
        for r in bf.run_many([cmd] * 2, jobs=2):
            pass
    """)
    proc = subprocess.Popen([PY, "-c", script], stderr=subprocess.PIPE)
    try:
        assert wait_until(lambda: pidfile.exists() and len(pidfile.read_text().split()) == 4,
                          timeout=10)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
        proc.wait()
    assert b"KeyboardInterrupt" in err
    pids = [int(p) for p in pidfile.read_text().split()]
    assert wait_until(lambda: not any(pid_alive(p) for p in pids), timeout=5)


# -- run_many: bad input ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("commands", "kwargs", "error"),
    [
        ([], {}, ValueError),
        (iter([]), {}, ValueError),
        ([["true"]], {"jobs": 0}, ValueError),
        ([["true"]], {"jobs": -2}, ValueError),
        ([["true"]], {"jobs": 1.5}, TypeError),
        ([["true"]], {"timeout": -1}, ValueError),
        ([["true"]], {"retries": -1}, ValueError),
        ([["true"]], {"halt": "whenever"}, ValueError),
        ([["true"]], {"halt": "now,fail=0"}, ValueError),
        ([["true"]], {"halt": "now,fail=0%"}, ValueError),
        ([["true"]], {"halt": "now,fail=200%"}, ValueError),
        ("echo hi", {}, TypeError),
        ([["true"], []], {}, ValueError),
    ],
)
def test_bad_input(commands, kwargs, error):
    with pytest.raises(error):
        bf.run_many(commands, **kwargs)


def test_a_bad_command_in_a_list_stops_everything_before_it_runs(tmp_path):
    marker = tmp_path / "ran"
    with pytest.raises(ValueError, match="unbalanced quotes"):
        bf.run_many([["touch", str(marker)], "echo 'unbalanced"])
    assert not marker.exists()


@pytest.mark.timeout(30)
def test_a_missing_executable_fails_its_command_alone(tmp_path):
    # As in a shell (and bingfa run): status 127 and a line naming it; the
    # commands around it, one of them already running, are not disturbed.
    marker = tmp_path / "slow-done"
    commands = [sh(f"sleep 0.5; touch {marker}; echo slow"), ["no-such-command-bingfa", "x"],
                ["echo", "after"]]
    results = list(bf.run_many(commands, jobs=2, text=True))
    assert [r.stdout for r in results] == ["slow\n", "", "after\n"]
    missing = results[1]
    assert (missing.returncode, missing.ok, missing.timed_out, missing.signal) == (
        127, False, False, None)
    assert "no-such-command-bingfa" in missing.stderr
    assert "not found" in missing.stderr
    assert missing.args == ["no-such-command-bingfa", "x"]
    assert marker.exists()
    with pytest.raises(bf.CommandError, match="no-such-command-bingfa"):
        list(bf.run_many([["no-such-command-bingfa"], ["true"]], halt="now,fail=1"))


def test_halt_on_a_share_of_the_commands_and_on_done():
    commands = [sh(f"exit {code}") for code in (0, 3, 0, 4, 0, 0)]
    codes: list[int] = []
    results = bf.run_many(commands, jobs=1, halt="soon,fail=30%")
    with pytest.raises(bf.CommandError, match="halted after 2 failed commands"):
        codes.extend(r.returncode for r in results)
    assert codes == [0, 3, 0, 4]  # 30% of 6 commands is 1.8: the second failure halts
    run = bf.run_many(commands, jobs=1, halt="soon,done=2")
    assert [r.returncode for r in run] == [0, 3]
    assert run.halted
    with pytest.raises(ValueError, match="share of all the commands"):
        bf.run_many(iter(commands), halt="now,fail=10%")


# -- stream -------------------------------------------------------------------------------


def test_stream_tags_lines_and_ends_with_the_result():
    script = "echo one; echo err >&2; printf 'two\\nlast-without-newline'; exit 3"
    with bf.stream(sh(script)) as lines:
        got = list(lines)
    assert [x for x in got if x.stream == "stdout"] == [
        ("stdout", "one"), ("stdout", "two"), ("stdout", "last-without-newline")]
    assert [x for x in got if x.stream == "stderr"] == [("stderr", "err")]
    assert lines.result is not None
    assert (lines.result.returncode, lines.result.stdout) == (3, "")


def test_stream_gives_lines_before_the_command_ends(tmp_path):
    go = tmp_path / "go"
    script = f"echo ready; while [ ! -e {go} ]; do sleep 0.01; done; echo after"
    with bf.stream(sh(script), timeout=20) as lines:
        assert next(lines) == ("stdout", "ready")
        assert lines.result is None  # still running: it waits for us
        go.touch()
        assert next(lines) == ("stdout", "after")
        assert list(lines) == []
    assert lines.result.ok


def test_stream_bytes_input_and_long_lines():
    big = b"x" * (3 * 2**20 + 5)
    got = list(bf.stream(["cat"], input=big + b"\nend\n", text=False))
    assert [len(x.line) for x in got] == [2**20, 2**20, 2**20, 5, 3]
    assert got[-1] == ("stdout", b"end")


def test_stream_check_raises_after_the_lines():
    lines = bf.stream(sh("echo out; echo boom >&2; exit 2"), check=True)
    assert next(lines).line in ("out", "boom")
    with pytest.raises(bf.CommandError, match="boom"):
        list(lines)


@pytest.mark.timeout(30)
def test_stream_timeout_and_closing_early_end_the_group(tmp_path):
    pidfile = tmp_path / "pid"
    lines = bf.stream(sh(f"sleep 100 & echo $! > {pidfile}; echo started; sleep 100"),
                      timeout=0.5)
    assert list(lines) == [("stdout", "started")]
    assert lines.result.timed_out
    assert wait_until(lambda: not pid_alive(int(pidfile.read_text())), timeout=5)
    with bf.stream(["yes"]) as endless:
        for n, _ in enumerate(endless):
            if n == 1000:
                break
    assert endless.result is None


# -- arun ---------------------------------------------------------------------------------


def test_arun_runs_commands_concurrently_without_threads():
    async def main():
        threads = threading.active_count()
        tasks = [asyncio.create_task(bf.arun(sh(f"echo {n}"), text=True)) for n in range(20)]
        await asyncio.sleep(0)
        assert threading.active_count() == threads
        return await asyncio.gather(*tasks)

    results = asyncio.run(main())
    assert [r.stdout for r in results] == [f"{n}\n" for n in range(20)]


def test_arun_input_timeout_and_check():
    async def main():
        echoed = await bf.arun(["cat"], input="héllo", text=True)
        slow = await bf.arun(["sleep", "10"], timeout=0.3)
        with pytest.raises(bf.CommandError, match="status 5"):
            await bf.arun(sh("exit 5"), check=True)
        with pytest.raises(bf.CommandNotFoundError):
            await bf.arun(["no-such-command-bingfa"])
        return echoed, slow

    echoed, slow = asyncio.run(main())
    assert echoed.stdout == "héllo"
    assert (slow.timed_out, slow.signal) == (True, signal.SIGTERM)


@pytest.mark.timeout(30)
def test_cancelling_arun_ends_the_group(tmp_path):
    pidfile = tmp_path / "pid"

    async def main():
        task = asyncio.create_task(bf.arun(sh(f"sleep 100 & echo $! > {pidfile}; sleep 100")))
        while not pidfile.exists() or not pidfile.read_text().strip():
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert wait_until(lambda: not pid_alive(int(pidfile.read_text())), timeout=5)


def test_stream_check_raises_after_a_last_line_without_newline():
    lines = bf.stream(sh("echo first; printf last; exit 3"), check=True)
    got = [next(lines).line, next(lines).line]
    with pytest.raises(bf.CommandError):
        next(lines)
    assert got == ["first", "last"]
