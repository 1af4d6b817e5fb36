"""bf.run: real commands, real process groups."""

from __future__ import annotations

import pickle
import signal
import sys

import pytest
from conftest import pid_alive, wait_until

import bingfa as bf

PY = sys.executable


def test_runs_a_command_and_keeps_its_output():
    r = bf.run(["echo", "hello"], text=True)
    assert r.ok
    assert (r.returncode, r.stdout, r.stderr, r.timed_out, r.signal) == (0, "hello\n", "", False,
                                                                         None)
    assert r.args == ["echo", "hello"]
    assert r.duration > 0
    assert bf.run(["echo", "bytes"]).stdout == b"bytes\n"


def test_a_string_is_split_like_a_shell_would():
    assert bf.run("echo 'two words'", text=True).stdout == "two words\n"
    assert bf.run("echo $HOME | cat", shell=True, env={"HOME": "/x"}, text=True).stdout == "/x\n"


def test_input_bytes_and_text():
    assert bf.run(["cat"], input=b"abc").stdout == b"abc"
    assert bf.run(["cat"], input="héllo", text=True).stdout == "héllo"
    # without input, standard input is empty rather than the test runner's
    assert bf.run(["cat"], timeout=10).stdout == b""


@pytest.mark.timeout(60)
def test_fifty_megabytes_on_both_streams_do_not_deadlock():
    code = ("import sys; sys.stdout.buffer.write(b'o' * 50_000_000); "
            "sys.stderr.buffer.write(b'e' * 50_000_000)")
    r = bf.run([PY, "-c", code], timeout=50)
    assert r.ok
    assert len(r.stdout) == 50_000_000
    assert len(r.stderr) == 50_000_000


def test_invalid_utf8_is_replaced_not_lost():
    code = "import sys; sys.stdout.buffer.write(b'a\\xffb\\xfe')"
    assert bf.run([PY, "-c", code]).stdout == b"a\xffb\xfe"
    assert bf.run([PY, "-c", code], text=True).stdout == "a\ufffdb\ufffd"
    assert bf.run([PY, "-c", code], text=True, encoding="latin-1").stdout == "a\xffb\xfe"


@pytest.mark.timeout(30)
def test_timeout_kills_the_whole_group_and_keeps_partial_output(tmp_path):
    pids = tmp_path / "pids"
    script = f"sleep 100 & echo $! > {pids}; echo started; sleep 100"
    r = bf.run(["sh", "-c", script], timeout=0.5, text=True)
    assert r.timed_out
    assert not r.ok
    assert r.stdout == "started\n"
    assert r.signal == signal.SIGTERM
    background = int(pids.read_text())
    assert wait_until(lambda: not pid_alive(background), timeout=5), "a grandchild survived"


def test_a_background_process_left_behind_is_ended(tmp_path):
    r = bf.run(["sh", "-c", "sleep 100 >/dev/null 2>&1 & echo $!"], text=True, timeout=10)
    assert r.ok
    assert wait_until(lambda: not pid_alive(int(r.stdout)), timeout=5)


def test_killed_by_a_signal():
    r = bf.run(["sh", "-c", "kill -KILL $$"])
    assert (r.returncode, r.signal, r.timed_out) == (-signal.SIGKILL, signal.SIGKILL, False)


def test_missing_executable():
    with pytest.raises(bf.CommandNotFoundError) as info:
        bf.run(["definitely-not-a-command-bingfa"])
    assert isinstance(info.value, FileNotFoundError)
    assert info.value.command == "definitely-not-a-command-bingfa"
    assert "definitely-not-a-command-bingfa" in str(info.value)
    # through a shell the shell reports it, with status 127
    assert bf.run("definitely-not-a-command-bingfa", shell=True).returncode == 127


def test_check_raises_with_the_tail_of_stderr():
    script = "for i in $(seq 1 30); do echo line $i >&2; done; exit 3"
    with pytest.raises(bf.CommandError) as info:
        bf.run(["sh", "-c", script], check=True)
    err = info.value
    assert isinstance(err, bf.BingfaError)
    assert err.result.returncode == 3
    assert "exited with status 3" in str(err)
    assert "line 30" in str(err)
    assert "line 1\n" not in str(err)  # only the tail
    assert bf.run(["true"], check=True).ok
    with pytest.raises(bf.CommandError, match="timed out"):
        bf.run(["sleep", "10"], timeout=0.2, check=True)
    again = pickle.loads(pickle.dumps(err))
    assert again.result.returncode == 3


@pytest.mark.parametrize(
    ("cmd", "kwargs", "error"),
    [
        ([], {}, ValueError),
        ("", {}, ValueError),
        ("echo 'unbalanced", {}, ValueError),
        ("echo 'unbalanced", {"shell": True}, ValueError),
        (["echo"], {"timeout": -1}, ValueError),
        (["echo"], {"shell": True}, TypeError),
        (b"echo", {}, TypeError),
    ],
)
def test_bad_input(cmd, kwargs, error):
    with pytest.raises(error):
        bf.run(cmd, **kwargs)


@pytest.mark.timeout(30)
def test_a_background_job_holding_the_output_does_not_hold_the_command(tmp_path):
    pidfile = tmp_path / "pid"
    r = bf.run(["sh", "-c", f"sleep 100 & echo $! > {pidfile}; echo hi"], timeout=20, text=True)
    assert (r.stdout, r.returncode, r.timed_out) == ("hi\n", 0, False)
    assert wait_until(lambda: not pid_alive(int(pidfile.read_text())), timeout=5)


def test_a_script_without_shebang_runs_with_sh(tmp_path):
    script = tmp_path / "plain"
    script.write_text("echo plain script\n")
    script.chmod(0o755)
    assert bf.run([str(script)], text=True).stdout == "plain script\n"


@pytest.mark.parametrize("timeout", [float("nan"), float("inf"), 10**9])
def test_timeouts_that_are_not_a_sane_number(timeout):
    with pytest.raises(ValueError, match="timeout"):
        bf.run(["true"], timeout=timeout)


def test_the_longest_timeout_is_accepted():
    # 30 days is beyond what one epoll wait takes (24.8 days): it used to
    # raise OverflowError from deep inside.
    assert bf.run(["true"], timeout=30 * 86400).ok
    assert [r.ok for r in bf.run_many([["true"]], timeout=30 * 86400)] == [True]


def test_a_comment_with_an_apostrophe_is_fine_in_a_shell_string():
    assert bf.run("echo hi # don't", shell=True, text=True).stdout == "hi\n"
