"""``bingfa run``: GNU parallel's core, tested as a real command line.

Every test starts ``python -m bingfa._cli run ...`` as a process and checks
what it prints, the files it writes, its exit status and, where jobs are
killed, that no process of theirs is left alive.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import pid_alive, wait_until

PY = sys.executable
JOBLOG_HEADER = "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand"

# A small program that prints its arguments as one JSON list per call: what a
# job really received, word for word.
ARGV_JSON = "import json, sys; print(json.dumps(sys.argv[1:]))"

# Values that a shell would mangle if they were not quoted properly.
AWKWARD_VALUES = ["a b", "it's", '"q"', "$HOME", "`id`", "$(id)", "semi;colon", "pipe|x",
                  "back\\slash", "star*", "  lead and trail  ", "tab\there", "-n", "{}", "~"]


def bingfa_run(*args: str | os.PathLike[str], input: bytes | str | None = None,
               cwd: str | os.PathLike[str] | None = None, timeout: float = 30,
               text: bool = True) -> subprocess.CompletedProcess:
    """``bingfa run ARGS...`` as a real process; its stdin is ``input`` (else empty)."""
    if isinstance(input, str):
        input = input.encode()
    done = subprocess.run(
        [PY, "-m", "bingfa._cli", "run", *map(os.fspath, args)],
        input=input, stdin=subprocess.DEVNULL if input is None else None,
        capture_output=True, cwd=cwd, timeout=timeout)
    if text:
        done.stdout = done.stdout.decode(errors="surrogateescape")
        done.stderr = done.stderr.decode(errors="surrogateescape")
    return done


def start_bingfa_run(*args: str | os.PathLike[str], stdin=subprocess.DEVNULL,
                     cwd: str | os.PathLike[str] | None = None) -> subprocess.Popen:
    """``bingfa run ARGS...`` started in the background (for Ctrl-C and streaming)."""
    return subprocess.Popen([PY, "-m", "bingfa._cli", "run", *map(os.fspath, args)],
                            stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=cwd)


def finish(proc: subprocess.Popen) -> tuple[bytes, bytes]:
    """End of input for a background run, then its output; killed if it will not end."""
    try:
        return proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def write_script(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


def read_pid(path: Path) -> int:
    """The pid a job wrote to ``path``, once it is there."""
    assert wait_until(lambda: path.exists() and path.read_text().strip().isdigit(), 15), \
        f"{path} was never written"
    return int(path.read_text())


def kill_all(pids) -> None:
    """Clean-up after a failed kill test: no ``sleep 100`` outlives it."""
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()


def all_gone(pids) -> bool:
    return not any(pid_alive(pid) for pid in pids)


def joblog_rows(path: Path) -> list[list[str]]:
    lines = path.read_text().splitlines()
    assert lines[0] == JOBLOG_HEADER
    return [line.split("\t") for line in lines[1:]]


# --- argument sources ---------------------------------------------------------------------


def test_arguments_after_three_colons():
    r = bingfa_run("-k", "echo", ":::", "a", "b", "c")
    assert (r.returncode, r.stdout, r.stderr) == (0, "a\nb\nc\n", "")


def test_arguments_from_a_file_one_per_line(tmp_path):
    args = tmp_path / "args"
    args.write_text("one\ntwo words\n\nlast without newline")
    r = bingfa_run("-k", "--", PY, "-c", ARGV_JSON, "{}", "::::", args)
    assert r.returncode == 0, r.stderr
    assert [json.loads(line) for line in r.stdout.splitlines()] == [
        ["one"], ["two words"], [""], ["last without newline"]]


def test_several_files_after_four_colons_are_several_sources(tmp_path):
    (tmp_path / "nums").write_text("1\n2\n3\n")
    (tmp_path / "letters").write_text("x\ny\n")
    r = bingfa_run("-k", "echo", "::::", tmp_path / "nums", tmp_path / "letters")
    assert (r.returncode, r.stdout) == (0, "1 x\n1 y\n2 x\n2 y\n3 x\n3 y\n")


def test_dash_as_a_file_is_standard_input():
    r = bingfa_run("-k", "echo", ":::", "a", "b", "::::", "-", input="p\nq\n")
    assert (r.returncode, r.stdout) == (0, "a p\na q\nb p\nb q\n")


def test_without_a_source_the_arguments_are_the_lines_of_stdin():
    r = bingfa_run("-k", "echo", "got", input="l1\nl2 with spaces\nl3")
    assert (r.returncode, r.stdout, r.stderr) == (0, "got l1\ngot l2 with spaces\ngot l3\n", "")


def test_empty_stdin_runs_nothing(tmp_path):
    r = bingfa_run("touch", "ran", cwd=tmp_path, input=b"")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    assert list(tmp_path.iterdir()) == []


def test_jobs_do_not_read_the_argument_stream():
    # A job reading its stdin must not swallow the arguments of later jobs.
    r = bingfa_run("-k", "cat; echo {}", input="a\nb\nc\n")
    assert (r.returncode, r.stdout) == (0, "a\nb\nc\n")


def test_several_sources_are_a_cartesian_product_first_varying_slowest():
    r = bingfa_run("-k", "echo", ":::", "a", "b", ":::", "1", "2")
    assert (r.returncode, r.stdout) == (0, "a 1\na 2\nb 1\nb 2\n")
    r = bingfa_run("-k", "echo", ":::", "a", "b", ":::", "1", "2", ":::", "X", "Y")
    assert r.stdout.splitlines() == ["a 1 X", "a 1 Y", "a 2 X", "a 2 Y",
                                     "b 1 X", "b 1 Y", "b 2 X", "b 2 Y"]


def test_link_pairs_the_sources_and_the_shorter_wraps_around(tmp_path):
    r = bingfa_run("-k", "--link", "echo", ":::", "a", "b", "c", ":::", "1", "2")
    assert (r.returncode, r.stdout) == (0, "a 1\nb 2\nc 1\n")
    (tmp_path / "f").write_text("x\ny\nz\n")
    r = bingfa_run("-k", "--link", "echo", "{2}-{1}", ":::", "a", "b", "::::", tmp_path / "f")
    assert (r.returncode, r.stdout) == (0, "x-a\ny-b\nz-a\n")


# --- replacement strings ------------------------------------------------------------------

PATH_FORMS = [
    ("{}", "dir/file.tar.gz", "dir/file.tar.gz"),
    ("{.}", "dir/file.tar.gz", "dir/file.tar"),
    ("{/}", "dir/file.tar.gz", "file.tar.gz"),
    ("{//}", "dir/file.tar.gz", "dir"),
    ("{/.}", "dir/file.tar.gz", "file.tar"),
    ("{.}", "noext", "noext"),
    ("{.}", "dot.dir/noext", "dot.dir/noext"),
    ("{//}", "file.txt", "."),
    ("{//}", "/a/b/c", "/a/b"),
    ("{/}", "/a/b/c", "c"),
    ("{/.}", "a b/c d.txt", "c d"),
]


@pytest.fixture
def show_argv(tmp_path) -> Path:
    """A script printing its arguments as a JSON list: what a job really received."""
    return write_script(tmp_path / "show_argv.py", ARGV_JSON)


def command_forms(script: Path, *words: str) -> dict[str, list[str]]:
    """``PY script WORDS`` as each kind of command line ``bingfa run`` takes."""
    plain = " ".join(words)
    return {
        "plain words": [PY, str(script), *words],  # nothing for a shell to do: run directly
        "shell syntax": [f"{PY} {script} {plain} | cat"],  # through /bin/sh, values quoted
        "argv after --": ["--", PY, str(script), *words],
    }


FORMS = ["plain words", "shell syntax", "argv after --"]


@pytest.mark.parametrize("form", FORMS)
def test_path_replacement_strings(show_argv, form):
    tokens = [token for token, _, _ in PATH_FORMS]
    cmd = command_forms(show_argv, *tokens)[form]
    r = bingfa_run("-k", *cmd, ":::", *[value for _, value, _ in PATH_FORMS])
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row[n] for n, row in enumerate(rows)] == [expected for _, _, expected in PATH_FORMS]


def test_job_number_counts_from_one():
    r = bingfa_run("-k", "echo", "{#}:{}", ":::", "a", "b", "c")
    assert (r.returncode, r.stdout) == (0, "1:a\n2:b\n3:c\n")


def test_job_slot_stays_between_one_and_j():
    r = bingfa_run("-j", "2", "echo", "{%}", ":::", *map(str, range(20)))
    assert r.returncode == 0
    slots = r.stdout.split()
    assert len(slots) == 20
    assert set(slots) <= {"1", "2"}
    r = bingfa_run("-j", "1", "echo", "{%}", ":::", "a", "b", "c")
    assert r.stdout == "1\n1\n1\n"


def test_numbered_replacement_strings_pick_a_source():
    r = bingfa_run("-k", "echo", "{2}", "{1}", "{1.}", "{2/}", "{2//}", "{2/.}",
                   ":::", "x.y", ":::", "p/q.r")
    assert (r.returncode, r.stdout) == (0, "p/q.r x.y x q.r p q\n")


@pytest.mark.parametrize("form", FORMS)
def test_all_arguments_of_several_sources_in_one_brace_pair(show_argv, form):
    r = bingfa_run("-k", *command_forms(show_argv, "{}")[form], ":::", "a b", ":::", "c")
    assert (r.returncode, json.loads(r.stdout)) == (0, ["a b", "c"])


def test_without_a_replacement_string_the_arguments_are_appended():
    r = bingfa_run("-k", "echo", "hello", ":::", "a", "b")
    assert (r.returncode, r.stdout) == (0, "hello a\nhello b\n")
    r = bingfa_run("-k", "echo", "hello", ":::", "a", ":::", "1", "2")
    assert (r.returncode, r.stdout) == (0, "hello a 1\nhello a 2\n")


def test_braces_that_are_not_replacement_strings_are_literal():
    r = bingfa_run("echo {} | awk '{print $2}'", ":::", "first second")
    assert (r.returncode, r.stdout, r.stderr) == (0, "second\n", "")
    r = bingfa_run("echo", "{foo}", "{a.b}", "{}", ":::", "x")
    assert (r.returncode, r.stdout) == (0, "{foo} {a.b} x\n")


@pytest.mark.parametrize("form", FORMS)
def test_awkward_arguments_arrive_intact(show_argv, form):
    r = bingfa_run("-k", *command_forms(show_argv, "{}")[form], ":::", *AWKWARD_VALUES)
    assert r.returncode == 0, r.stderr
    assert [json.loads(line) for line in r.stdout.splitlines()] == [[v] for v in AWKWARD_VALUES]


@pytest.mark.parametrize("form", FORMS)
def test_awkward_arguments_in_numbered_replacement_strings(show_argv, form):
    cmd = command_forms(show_argv, "{2}", "{1}", "{1/}")[form]
    r = bingfa_run("-k", *cmd, ":::", *AWKWARD_VALUES, ":::", "$x 'y'")
    assert r.returncode == 0, r.stderr
    assert [json.loads(line) for line in r.stdout.splitlines()] == [
        ["$x 'y'", v, v] for v in AWKWARD_VALUES]


@pytest.mark.parametrize("form", FORMS)
def test_awkward_arguments_inside_a_word(show_argv, form):
    values = ["a b", "$HOME", "it's", '"q"', "x;y"]
    r = bingfa_run("-k", *command_forms(show_argv, "pre{}post")[form], ":::", *values)
    assert r.returncode == 0, r.stderr
    assert [json.loads(line) for line in r.stdout.splitlines()] == [
        [f"pre{v}post"] for v in values]


@pytest.mark.parametrize("form", FORMS)
def test_awkward_arguments_appended(show_argv, form):
    cmd = command_forms(show_argv)[form]
    if form == "shell syntax":  # appended after "| cat" they would go to cat
        cmd = [f"true && {PY} {show_argv}"]
    r = bingfa_run("-k", *cmd, ":::", *AWKWARD_VALUES)
    assert r.returncode == 0, r.stderr
    assert [json.loads(line) for line in r.stdout.splitlines()] == [[v] for v in AWKWARD_VALUES]


def test_non_utf8_arguments_arrive_byte_for_byte(tmp_path):
    (tmp_path / "args").write_bytes(b"caf\xe9\n")
    r = bingfa_run("--", "printf", "%s|", "{}", "::::", tmp_path / "args", text=False)
    assert (r.returncode, r.stdout) == (0, b"caf\xe9|")
    r = bingfa_run("printf '%s|' {} | cat", "::::", tmp_path / "args", text=False)
    assert (r.returncode, r.stdout) == (0, b"caf\xe9|")


# --- an argv after -- ---------------------------------------------------------------------


def test_double_dash_runs_an_argv_without_a_shell():
    r = bingfa_run("-k", "--", "printf", "%s|", "{}", ":::", "a b", "$HOME")
    assert (r.returncode, r.stdout, r.stderr) == (0, "a b|$HOME|", "")
    # shell syntax is just words here
    r = bingfa_run("--", "echo", "$HOME", "|", "cat", ";", "{}", ":::", "x")
    assert (r.returncode, r.stdout) == (0, "$HOME | cat ; x\n")
    r = bingfa_run("--", "echo", "pre{}post", "{#}", ":::", "a b")
    assert (r.returncode, r.stdout) == (0, "prea bpost 1\n")


# --- output -------------------------------------------------------------------------------


def test_each_jobs_output_is_printed_whole():
    # Each job writes three lines to each stream with pauses between them;
    # running together, their lines must still come out job by job.
    r = bingfa_run("-j", "3", "for i in 1 2 3; do echo {}$i; echo {}$i >&2; sleep 0.05; done",
                   ":::", "a", "b", "c")
    assert r.returncode == 0
    for stream in (r.stdout, r.stderr):
        lines = stream.splitlines()
        blocks = [lines[k:k + 3] for k in range(0, 9, 3)]
        assert len(lines) == 9
        assert sorted(blocks) == [["a1", "a2", "a3"], ["b1", "b2", "b3"], ["c1", "c2", "c3"]]


def test_output_comes_as_jobs_finish_or_in_input_order_with_keep_order():
    args = ("-j", "3", "sleep {}; echo {}", ":::", "0.5", "0.1", "0.3")
    r = bingfa_run(*args)
    assert (r.returncode, r.stdout) == (0, "0.1\n0.3\n0.5\n")
    for option in ("-k", "--keep-order"):
        r = bingfa_run(option, *args)
        assert (r.returncode, r.stdout) == (0, "0.5\n0.1\n0.3\n")


def test_tag_prefixes_every_line_with_the_argument_and_a_tab():
    r = bingfa_run("-k", "--tag", "printf '%s\\n' x{} y{}; echo e{} >&2", ":::", "a", "b c")
    assert r.returncode == 0
    assert r.stdout == "a\txa\na\tya\nb c\txb c\nb c\tyb c\n"
    assert r.stderr == "a\tea\nb c\teb c\n"


def test_tag_with_two_sources_shows_both_arguments_spaced_then_a_tab():
    # As GNU parallel 20221122 prints them, byte for byte.
    r = bingfa_run("-k", "--tag", "echo", "out", ":::", "a", ":::", "1", "2")
    assert (r.returncode, r.stdout) == (0, "a 1\tout a 1\na 2\tout a 2\n")
    r = bingfa_run("-k", "--tag", "echo out; echo err >&2", ":::", "a b", ":::", "1")
    assert (r.returncode, r.stdout, r.stderr) == (0, "a b 1\tout\n", "a b 1\terr a b 1\n")


def test_a_job_reading_nothing_gets_empty_stdin_and_silence_prints_nothing():
    r = bingfa_run("-k", "true", ":::", "a", "b")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


# --- how many at once ---------------------------------------------------------------------

# Job $2 of many: prints how many jobs are running as it starts and its slot
# ($4), then waits until $1 jobs have got that far. Fewer than $1 at once never
# get past the wait (bingfa's --timeout then fails the run); the last of the
# first $1 jobs counts before any of them can leave.
CONCURRENCY_JOB = """\
d=$3
touch "$d/running/$2"
n=$(ls "$d/running" | wc -l)
touch "$d/seen/$2"
echo "$n $4"
until [ "$(ls "$d/seen" | wc -l)" -ge "$1" ]; do sleep 0.01; done
rm "$d/running/$2"
"""


def check_concurrency(tmp_path: Path, jobs_option: list[str], expected: int) -> None:
    script = write_script(tmp_path / "job.sh", CONCURRENCY_JOB)
    for name in ("running", "seen"):
        (tmp_path / name).mkdir()
    total = expected * 2 + 1
    r = bingfa_run(*jobs_option, "--timeout", "15", "sh", script, str(expected), "{#}",
                   tmp_path, "{%}", ":::", *map(str, range(total)), timeout=40)
    assert r.returncode == 0, r.stderr
    rows = [line.split() for line in r.stdout.splitlines()]
    assert len(rows) == total
    running = [int(n) for n, _ in rows]
    slots = {int(slot) for _, slot in rows}
    assert max(running) == expected  # reached, never exceeded
    assert slots == set(range(1, expected + 1))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("jobs_option", [["-j", "3"], ["-j3"], ["--jobs", "3"], ["--jobs=3"]])
def test_jobs_option_runs_exactly_that_many_at_once(tmp_path, jobs_option):
    check_concurrency(tmp_path, jobs_option, 3)


@pytest.mark.timeout(60)
def test_jobs_as_a_share_of_the_cores(tmp_path):
    cores = len(os.sched_getaffinity(0))
    check_concurrency(tmp_path, ["-j", "50%"], max(1, cores // 2))


@pytest.mark.timeout(60)
def test_default_is_one_job_per_core(tmp_path):
    check_concurrency(tmp_path, [], len(os.sched_getaffinity(0)))


# --- timeouts and retries -----------------------------------------------------------------


@pytest.mark.timeout(40)
def test_timeout_kills_the_jobs_whole_process_group(tmp_path):
    pidfile = tmp_path / "grandchild"
    joblog = tmp_path / "log"
    started = time.monotonic()
    r = bingfa_run("-k", "--timeout", "0.5", "--joblog", joblog,
                   "if [ {} = fast ]; then echo fast; "
                   "else sh -c 'sleep 100 & echo $! > \"$0\"; sleep 100' {}; fi",
                   ":::", "fast", pidfile, timeout=35)
    try:
        elapsed = time.monotonic() - started
        assert (r.returncode, r.stdout) == (1, "fast\n")
        assert elapsed < 30  # nowhere near the 100 s the job would sleep
        rows = joblog_rows(joblog)
        assert [(row[0], row[6], row[7]) for row in rows if row[0] == "1"] == [("1", "0", "0")]
        slow = next(row for row in rows if row[0] == "2")
        assert slow[7] in ("15", "9")
        assert slow[6] != "0"
        grandchild = read_pid(pidfile)
        assert wait_until(lambda: not pid_alive(grandchild), 10), "grandchild still alive"
    finally:
        if pidfile.exists() and pidfile.read_text().strip().isdigit():
            kill_all([int(pidfile.read_text())])


# Counts its runs in the file $0 and succeeds on run $1.
SUCCEEDS_ON_TRY = ('n=$(cat "$0" 2>/dev/null || echo 0); n=$((n+1)); echo $n > "$0"; '
                   'echo try $n; [ $n -ge $1 ]')


def test_retries_run_a_failing_job_again_until_it_succeeds(tmp_path):
    counter = tmp_path / "count"
    r = bingfa_run("--retries", "3", f"sh -c '{SUCCEEDS_ON_TRY}' {{}} 3", ":::", counter)
    assert (r.returncode, r.stdout) == (0, "try 3\n")
    assert counter.read_text() == "3\n"


@pytest.mark.parametrize("tries", [None, 1, 2, 4])
def test_retries_n_is_n_tries_in_all(tmp_path, tries):
    # GNU parallel: "If a job fails, retry it ... Do this n times"; with one
    # host, --retries 3 runs a failing job 3 times in all (checked against GNU
    # parallel 20221122). Without --retries, once.
    counter = tmp_path / "count"
    option = [] if tries is None else ["--retries", str(tries)]
    r = bingfa_run(*option, "echo x >> {}; exit 7", ":::", counter)
    assert r.returncode == 1
    assert counter.read_text() == "x\n" * (tries or 1)


@pytest.mark.timeout(40)
def test_retries_zero_tries_until_the_job_succeeds(tmp_path):
    # GNU parallel: "n=0 means infinite".
    counter = tmp_path / "count"
    r = bingfa_run("--retries", "0", f"sh -c '{SUCCEEDS_ON_TRY}' {{}} 6", ":::", counter)
    assert (r.returncode, r.stdout) == (0, "try 6\n")
    assert counter.read_text() == "6\n"


# --- halt ---------------------------------------------------------------------------------

# Jobs below wait for each other; should bingfa get it wrong, this fails them
# rather than leaving them waiting for ever.
GUARD = ("--timeout", "20")


# GNU parallel's exit status with --halt, each row checked against GNU parallel
# 20221122 with -j1 (one job at a time, so the order is fixed):
# (--halt, the jobs' exit statuses, GNU parallel's exit status).
HALT_STATUS = [
    ("now,fail=1", "0 3 5 0 7 0", 3),       # fail=1: the failing job's own status
    ("soon,fail=1", "0 0 200", 200),
    ("now,fail=2", "0 3 5 0 7 0", 2),       # fail=N: how many had failed
    ("soon,fail=2", "0 3 5 0 7 0", 2),
    ("now,success=1", "0 3 5 0 7 0", 0),    # success: 0 once it fires
    ("soon,success=1", "0 3 5 0 7 0", 0),
    ("now,success=2", "3 5 0", 2),          # never fired: the failed jobs
    ("now,success=2", "3 5 0 2 0", 0),
    ("now,fail=50%", "0 3 5 0 7 0", 50),    # a share: failed / all jobs, in %
    ("soon,fail=50%", "0 3 0 0 4 0", 34),   # never fired: failed / started, rounded up
    ("now,fail=34%", "0 3 5 0 7 0", 50),
    ("now,fail=10%", "0 3 0 0 4 0", 17),
    ("now,fail=50%", "0 3 0 0 0 0", 17),
    ("now,success=50%", "3 5 0 2 0 1", 67),
    ("now,success=50%", "3 5 0 0 0 1", 0),
    ("now,done=3", "3 5 0 2 0 1", 2),
    ("now,done=50%", "3 5 0 2 0 1", 34),
    ("1", "0 3 5", 3),                      # GNU's short forms
    ("2", "0 3 5", 3),
    ("-1", "3 0 5", 0),
    ("-2", "3 0 5", 0),
    ("0", "3 0 5", 2),
    ("never", "3 0 5", 2),
    ("20%", "3 0 5 0 0", 3),                # 20% of 5 jobs is 1 job: its status
]


@pytest.mark.parametrize(("halt", "statuses", "expected"), HALT_STATUS,
                         ids=[f"{h} [{s}]" for h, s, _ in HALT_STATUS])
def test_halt_exit_status_is_gnu_parallels(halt, statuses, expected):
    r = bingfa_run("-j1", "--halt", halt, "exit {}", ":::", *statuses.split())
    assert r.returncode == expected, r.stderr


def test_halt_fail_1_status_of_a_job_killed_by_a_signal_or_a_timeout():
    # As a shell says it, 128 + the signal; a job bingfa ended itself is
    # GNU parallel's exit value -1, that is 255.
    assert bingfa_run("--halt", "now,fail=1", "kill -TERM $$", ":::", "a").returncode == 143
    r = bingfa_run("--halt", "now,fail=1", "--timeout", "0.5", "sleep 5; exit", ":::", "0")
    assert r.returncode == 255


def test_halt_with_a_share_reads_all_the_arguments_first():
    # 40% of 5 jobs is 2 failures, 40% the status: the total must be known,
    # also when the arguments come from stdin.
    r = bingfa_run("-j1", "--halt", "soon,fail=40%", "exit", input="0\n6\n0\n7\n0\n")
    assert (r.returncode, r.stdout) == (40, "")


@pytest.mark.timeout(40)
def test_halt_now_on_failure_kills_the_running_jobs(tmp_path):
    script = write_script(tmp_path / "job.sh", """\
case $1 in
  fail) until [ -s "$2/grandchild" ]; do sleep 0.01; done; exit 1 ;;
  long) sleep 100 & echo $! > "$2/grandchild"; sleep 100 ;;
  *) touch "$2/ran-$1" ;;
esac
""")
    started = time.monotonic()
    r = bingfa_run(*GUARD, "-j", "2", "--halt", "now,fail=1", "sh", script, "{}", tmp_path,
                   ":::", "fail", "long", "later", timeout=35)
    grandchild = read_pid(tmp_path / "grandchild")
    try:
        assert time.monotonic() - started < 30  # the 100 s sleep did not run out
        assert r.returncode == 1
        assert not (tmp_path / "ran-later").exists()
        assert wait_until(lambda: not pid_alive(grandchild), 10), "grandchild still alive"
    finally:
        kill_all([grandchild])


@pytest.mark.timeout(40)
def test_halt_soon_on_failure_lets_running_jobs_finish_and_starts_no_more(tmp_path):
    joblog = tmp_path / "log"
    # "long" finishes only after bingfa has logged the failure, so it is surely
    # still running when the halt rule fires.
    script = write_script(tmp_path / "job.sh", f"""\
case $1 in
  fail) until [ -e "$2/long-started" ]; do sleep 0.01; done; exit 1 ;;
  long) touch "$2/long-started"
        until [ "$(wc -l < {joblog})" -ge 2 ]; do sleep 0.01; done; echo long finished ;;
  *) touch "$2/ran-$1" ;;
esac
""")
    r = bingfa_run(*GUARD, "-j", "2", "--halt", "soon,fail=1", "--joblog", joblog,
                   "sh", script, "{}", tmp_path, ":::", "fail", "long", "third", "fourth",
                   timeout=35)
    assert r.returncode == 1
    assert r.stdout == "long finished\n"
    assert not (tmp_path / "ran-third").exists()
    assert not (tmp_path / "ran-fourth").exists()
    assert sorted((row[0], row[6]) for row in joblog_rows(joblog)) == [("1", "1"), ("2", "0")]


@pytest.mark.timeout(40)
def test_halt_now_on_success_stops_at_the_first_success_with_status_zero(tmp_path):
    script = write_script(tmp_path / "job.sh", """\
case $1 in
  ok) until [ -s "$2/long-pid" ]; do sleep 0.01; done; echo ok ;;
  long) echo $$ > "$2/long-pid"; exec sleep 100 ;;
  *) touch "$2/ran-$1" ;;
esac
""")
    started = time.monotonic()
    r = bingfa_run(*GUARD, "-j", "2", "--halt", "now,success=1", "sh", script, "{}", tmp_path,
                   ":::", "long", "ok", "later", timeout=35)
    long_pid = read_pid(tmp_path / "long-pid")
    try:
        assert time.monotonic() - started < 30
        assert (r.returncode, r.stdout) == (0, "ok\n")
        assert not (tmp_path / "ran-later").exists()
        assert wait_until(lambda: not pid_alive(long_pid), 10)
    finally:
        kill_all([long_pid])


def test_halt_on_success_exits_zero_even_after_failures(tmp_path):
    r = bingfa_run("-j", "1", "--halt", "now,success=1", "touch ran-{#}; exit {}",
                   ":::", "3", "0", "5", cwd=tmp_path)
    assert r.returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ran-1", "ran-2"]


# --- joblog -------------------------------------------------------------------------------


def test_joblog_has_one_line_per_job(tmp_path):
    joblog = tmp_path / "log"
    before = time.time()
    r = bingfa_run("-k", "--joblog", joblog, "printf abc; printf de >&2; exit {}",
                   ":::", "0", "3")
    after = time.time()
    assert r.returncode == 1
    assert joblog.read_text().splitlines()[0] == JOBLOG_HEADER
    rows = joblog_rows(joblog)
    assert len(rows) == 2
    for seq, row in enumerate(sorted(rows, key=lambda row: int(row[0])), 1):
        assert len(row) == 9
        assert row[0] == str(seq)
        assert row[1] == ":"
        assert before - 1 <= float(row[2]) <= after + 1
        assert 0 <= float(row[3]) <= after - before + 1
        assert row[5] == "5"  # bytes received: 3 on stdout, 2 on stderr
        assert row[6] == ("0", "3")[seq - 1]
        assert row[7] == "0"
        assert row[8] == f"printf abc; printf de >&2; exit {seq * 3 - 3}"


def test_joblog_command_is_the_command_line_run(tmp_path):
    joblog = tmp_path / "log"
    r = bingfa_run("-k", "--joblog", joblog, "echo", "{}", ":::", "a b")
    assert r.returncode == 0
    r = bingfa_run("-k", "--joblog", tmp_path / "log2", "--", "echo", "{}", "x", ":::", "a b")
    assert r.returncode == 0
    assert [row[8] for row in joblog_rows(joblog)] == ["echo 'a b'"]
    assert [row[8] for row in joblog_rows(tmp_path / "log2")] == ["echo 'a b' x"]


def test_joblog_records_a_job_killed_by_a_signal(tmp_path):
    joblog = tmp_path / "log"
    r = bingfa_run("--joblog", joblog, "kill -9 $$", ":::", "x")
    assert r.returncode == 1
    (row,) = joblog_rows(joblog)
    assert row[7] == "9"
    assert row[6] != "0"


def test_joblog_of_a_missing_executable(tmp_path):
    before = time.time()
    for n, cmd in enumerate([["nonexistent_cmd_xyz"], ["--", "nonexistent_cmd_xyz", "{}"]]):
        joblog = tmp_path / f"log{n}"
        r = bingfa_run("--joblog", joblog, *cmd, ":::", "a")
        assert r.returncode == 1
        (row,) = joblog_rows(joblog)
        assert row[6] == "127", cmd
        assert row[8] == "nonexistent_cmd_xyz a"
        assert before - 1 <= float(row[2]) <= time.time() + 1, f"Starttime {row[2]} for {cmd}"


def test_joblog_with_a_non_utf8_argument(tmp_path):
    (tmp_path / "args").write_bytes(b"caf\xe9\n")
    joblog = tmp_path / "log"
    r = bingfa_run("--joblog", joblog, "echo", "::::", tmp_path / "args", text=False)
    assert (r.returncode, r.stdout, r.stderr) == (0, b"caf\xe9\n", b"")
    lines = joblog.read_bytes().splitlines()
    assert len(lines) == 2
    assert lines[1].split(b"\t")[8] == b"echo 'caf\xe9'"


# --- results folder -----------------------------------------------------------------------


def test_results_saves_each_jobs_output(tmp_path):
    results = tmp_path / "res"
    r = bingfa_run("-k", "--results", results, "echo out {}; echo err {} >&2",
                   ":::", "a", "x/y")
    assert r.returncode == 0
    assert r.stdout == "out a\nout x/y\n"  # still printed too
    a, xy = results / "1" / "a", results / "1" / "x\\_y"
    assert (a / "stdout").read_text() == "out a\n"
    assert (a / "stderr").read_text() == "err a\n"
    assert (a / "seq").read_text().strip() == "1"
    assert (xy / "stdout").read_text() == "out x/y\n"
    assert (xy / "stderr").read_text() == "err x/y\n"
    assert (xy / "seq").read_text().strip() == "2"
    assert sorted(p.name for p in (results / "1").iterdir()) == ["a", "x\\_y"]


def test_results_with_two_sources_nest_the_folders(tmp_path):
    results = tmp_path / "res"
    r = bingfa_run("-k", "--results", results, "echo", ":::", "a", "b", ":::", "1", "2")
    assert r.returncode == 0
    files = sorted(str(p.relative_to(results)) for p in results.rglob("*") if p.is_file())
    assert files == [f"1/{a}/2/{n}/{name}" for a in "ab" for n in "12"
                     for name in ("seq", "stderr", "stdout")]
    assert (results / "1" / "b" / "2" / "1" / "stdout").read_text() == "b 1\n"
    assert (results / "1" / "b" / "2" / "1" / "seq").read_text().strip() == "3"


def test_results_stay_inside_the_folder(tmp_path):
    results = tmp_path / "res"
    r = bingfa_run("--results", results, "echo", ":::", "..", ".", "../../escape", cwd=tmp_path)
    assert r.returncode == 0
    outside = [p for p in tmp_path.rglob("*") if results not in p.parents and p != results]
    assert outside == []
    assert len([p for p in results.rglob("stdout")]) == 3


# --- progress bar and dry run -------------------------------------------------------------


def test_bar_shows_progress_on_stderr_and_the_run_still_works():
    r = bingfa_run("-k", "--bar", "echo", ":::", "a", "b", "c")
    assert (r.returncode, r.stdout) == (0, "a\nb\nc\n")
    assert "3/3" in r.stderr


def test_dry_run_prints_the_commands_and_runs_nothing(tmp_path):
    r = bingfa_run("--dry-run", "touch {}", ":::", "f1", "f 2", cwd=tmp_path)
    assert (r.returncode, r.stdout, r.stderr) == (0, "touch f1\ntouch 'f 2'\n", "")
    r = bingfa_run("--dry-run", "--", "touch", "{}", ":::", "g 1", cwd=tmp_path)
    assert (r.returncode, r.stdout) == (0, "touch 'g 1'\n")
    r = bingfa_run("--dry-run", "touch", input="from stdin\n", cwd=tmp_path)
    assert (r.returncode, r.stdout) == (0, "touch 'from stdin'\n")
    assert list(tmp_path.iterdir()) == []


# --- exit status and usage errors ---------------------------------------------------------


def test_exit_status_is_the_number_of_failed_jobs():
    assert bingfa_run("exit {}", ":::", "0", "0").returncode == 0
    assert bingfa_run("exit {}", ":::", "0", "1", "2", "3").returncode == 3


def test_exit_status_is_at_most_101(tmp_path):
    (tmp_path / "args").write_text("".join(f"{n}\n" for n in range(105)))
    r = bingfa_run("-j", "8", "false", "::::", tmp_path / "args")
    assert r.returncode == 101


def test_help():
    r = bingfa_run("--help")
    assert r.returncode == 0
    assert r.stdout.startswith("usage: bingfa run")


BAD_USAGE = {
    "no command": [],
    "no command before a source": [":::", "a"],
    "-j 0": ["-j", "0", "echo", ":::", "a"],
    "-j x": ["-j", "x", "echo", ":::", "a"],
    "-j without a value": ["-j"],
    "unknown option": ["--bogus", "echo", ":::", "a"],
    "{..}": ["echo", "{..}", ":::", "a"],
    "{0}": ["echo", "{0}", ":::", "a"],
    "{3} of two sources": ["echo", "{3}", ":::", "a", ":::", "b"],
    "{2} of stdin": ["echo", "{2}"],
    "unbalanced quotes": ["echo 'abc", ":::", "a"],
    "bad halt": ["--halt", "bogus", "echo", ":::", "a"],
    "halt count 0": ["--halt", "now,fail=0", "echo", ":::", "a"],
    "bad timeout": ["--timeout", "soon", "echo", ":::", "a"],
    "zero timeout": ["--timeout", "0", "echo", ":::", "a"],
    "negative retries": ["--retries", "-1", "echo", ":::", "a"],
    "::: with nothing after it": ["echo", ":::"],
    "a second empty :::": ["echo", ":::", "a", ":::"],
    ":::: with nothing after it": ["echo", "::::"],
}


@pytest.mark.parametrize("args", BAD_USAGE.values(), ids=BAD_USAGE.keys())
def test_bad_usage_is_one_line_and_status_255(args):
    r = bingfa_run(*args, input="from stdin\n")
    assert r.returncode == 255
    assert r.stdout == ""
    assert r.stderr.startswith("bingfa run:")
    assert r.stderr.count("\n") == 1
    assert r.stderr.endswith("\n")


JOBS = "a number of jobs, 1 or more, or a share of the cores such as 50%"
TIMEOUT = "a number of seconds above 0, at most 2592000 (30 days)"
RETRIES = "a whole number of tries in all, 0 (until it succeeds) or more"
HALT = ("now or soon, then fail=N, success=N or done=N with N a whole number, 1 or more, or a "
        "share of all the jobs such as fail=10% (up to 100%)")
BAD_NUMBERS = [
    (["-j", "0"], f"-j wants {JOBS}; got '0'"),
    (["-j0"], f"-j wants {JOBS}; got '0'"),
    (["--jobs", "-1"], f"--jobs wants {JOBS}; got '-1'"),
    (["--jobs=x"], f"--jobs wants {JOBS}; got 'x'"),
    (["-j", "1.5"], f"-j wants {JOBS}; got '1.5'"),
    (["-j", "0%"], f"-j wants {JOBS}; got '0%'"),
    (["-j", "nan%"], f"-j wants {JOBS}; got 'nan%'"),
    (["--timeout", "0"], f"--timeout wants {TIMEOUT}; got '0'"),
    (["--timeout", "-1"], f"--timeout wants {TIMEOUT}; got '-1'"),
    (["--timeout", "soon"], f"--timeout wants {TIMEOUT}; got 'soon'"),
    (["--timeout", "nan"], f"--timeout wants {TIMEOUT}; got 'nan'"),
    (["--timeout", "1e9"], f"--timeout wants {TIMEOUT}; got '1e9'"),
    (["--retries", "-1"], f"--retries wants {RETRIES}; got '-1'"),
    (["--retries", "1.5"], f"--retries wants {RETRIES}; got '1.5'"),
    (["--retries", "x"], f"--retries wants {RETRIES}; got 'x'"),
    (["--halt", "bogus"], f"--halt wants {HALT}; got 'bogus'"),
    (["--halt", "now,fail=0"], f"--halt wants {HALT}; got 'now,fail=0'"),
    (["--halt", "now,fail=0%"], f"--halt wants {HALT}; got 'now,fail=0%'"),
    (["--halt", "now,fail=101%"], f"--halt wants {HALT}; got 'now,fail=101%'"),
    (["--halt", "later,fail=1"], f"--halt wants {HALT}; got 'later,fail=1'"),
    (["--halt", "3"], f"--halt wants {HALT}; got '3'"),
]


@pytest.mark.parametrize(("args", "message"), BAD_NUMBERS,
                         ids=[" ".join(args) for args, _ in BAD_NUMBERS])
def test_a_bad_number_names_its_option_and_what_it_takes(args, message):
    r = bingfa_run(*args, "echo", ":::", "a")
    assert (r.returncode, r.stdout, r.stderr) == (255, "", f"bingfa run: {message}\n")


def test_numbers_at_their_limits_are_fine():
    r = bingfa_run("-j", "150%", "--timeout", "2592000", "--retries", "100000", "echo", ":::", "a")
    assert (r.returncode, r.stdout, r.stderr) == (0, "a\n", "")


def test_a_missing_input_file_is_named_and_nothing_runs(tmp_path):
    missing = tmp_path / "no-such-file"
    r = bingfa_run("touch", "ran-{1}-{2}", ":::", "a", "::::", missing, cwd=tmp_path)
    assert (r.returncode, r.stdout) == (255, "")
    assert r.stderr.startswith("bingfa run:")
    assert str(missing) in r.stderr
    assert r.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_a_usage_error_runs_nothing(tmp_path):
    r = bingfa_run("touch", "ran-{}", "{..}", ":::", "a", cwd=tmp_path)
    assert r.returncode == 255
    assert list(tmp_path.iterdir()) == []


# --- missing executables ------------------------------------------------------------------


def test_a_missing_program_after_double_dash_fails_its_job():
    r = bingfa_run("-k", "--", "nonexistent_cmd_xyz", "{}", ":::", "a")
    assert (r.returncode, r.stdout) == (1, "")
    assert "nonexistent_cmd_xyz" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_missing_program_in_a_shell_command_fails_its_job():
    r = bingfa_run("-k", "nonexistent_cmd_xyz", ":::", "a")
    assert (r.returncode, r.stdout) == (1, "")
    assert "nonexistent_cmd_xyz" in r.stderr
    assert "not found" in r.stderr


def test_a_missing_program_fails_only_its_own_jobs():
    r = bingfa_run("-k", "{}", "ok", ":::", "echo", "nonexistent_cmd_xyz", "echo")
    assert (r.returncode, r.stdout) == (1, "ok\nok\n")


# --- Ctrl-C -------------------------------------------------------------------------------


@pytest.mark.timeout(40)
def test_ctrl_c_kills_every_job_and_exits_130():
    proc = start_bingfa_run("-j", "2", 'sh -c "sleep 100 & sleep 100"', ":::", "1", "2")
    descendants: list[int] = []
    try:
        me = psutil.Process(proc.pid)

        def sleeps() -> list[psutil.Process]:
            try:
                return [p for p in me.children(recursive=True) if p.name() == "sleep"]
            except psutil.Error:
                return []

        assert wait_until(lambda: len(sleeps()) == 4, 15), "the jobs never started"
        descendants = [p.pid for p in me.children(recursive=True)]
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert time.monotonic() - started < 20  # nowhere near the 100 s sleeps
        assert proc.returncode == 130
        assert out == b""
        assert err.startswith(b"bingfa run:")
        assert wait_until(lambda: all_gone(descendants), 10), [
            pid for pid in descendants if pid_alive(pid)]
    finally:
        kill_all(descendants)
        if proc.poll() is None:
            proc.kill()
        proc.communicate()



@pytest.mark.timeout(40)
def test_ctrl_c_while_arguments_come_from_a_pipe_exits_130_at_once():
    """The reader of standard input must not hold the interpreter's exit (it aborted)."""
    proc = subprocess.Popen([PY, "-m", "bingfa", "run", "echo"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdin is not None
        assert proc.stdout is not None
        proc.stdin.write(b"first\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == b"first\n"  # it runs, and waits for more input
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err
        assert b"Fatal Python error" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()

def reaper_of(pid: int) -> int | None:
    """The pid of the reaper process ``pid`` started, if it runs."""
    try:
        for child in psutil.Process(pid).children():
            if any(part.endswith("_reaper.py") for part in child.cmdline()):
                return child.pid
    except psutil.Error:
        pass
    return None


def descendants_of(pid: int) -> list[int]:
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def running_sleeps(pid: int) -> list[psutil.Process]:
    found = []
    for pid_ in descendants_of(pid):
        try:
            if psutil.Process(pid_).name() == "sleep":
                found.append(psutil.Process(pid_))
        except psutil.Error:
            pass
    return found


@pytest.mark.timeout(40)
@pytest.mark.parametrize(("sig", "status"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)],
                         ids=["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_end_every_job_and_exit_128_plus_the_signal(sig, status):
    # `timeout 2 bingfa run 'sleep 30; echo' ::: A B C` used to leave the
    # running jobs' shells behind: they run in sessions of their own, which no
    # signal to bingfa reaches.
    proc = start_bingfa_run("-j", "2", "sleep 30; echo", ":::", "A", "B", "C")
    descendants: list[int] = []
    try:
        assert wait_until(lambda: len(running_sleeps(proc.pid)) == 2, 15), "jobs never started"
        descendants = descendants_of(proc.pid)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == status
        assert out == b""
        assert err.startswith(b"bingfa run:")
        assert wait_until(lambda: all_gone(descendants), 5), [
            pid for pid in descendants if pid_alive(pid)]
    finally:
        kill_all(descendants)
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


@pytest.mark.timeout(40)
def test_sighup_ignored_by_the_caller_stays_ignored():
    # nohup bingfa run ...: a hang-up must not end the run.
    proc = subprocess.Popen(
        ["sh", "-c", 'trap "" HUP; exec "$0" -m bingfa._cli run "sleep 30; echo done" ::: A',
         PY], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert wait_until(lambda: len(running_sleeps(proc.pid)) == 1, 15), "the job never started"
        proc.send_signal(signal.SIGHUP)
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=1)  # still running: nothing to wait for but its end
        assert len(running_sleeps(proc.pid)) == 1
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
        assert proc.returncode == 143
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


@pytest.mark.timeout(40)
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_killed_bingfa_run_leaves_no_job_behind(sig):
    # SIGKILL runs nothing in bingfa: its reaper ends the jobs. bingfa run
    # starts it once it is a second old (a run of quick jobs never pays for
    # one); the test waits for it, not for the second.
    proc = start_bingfa_run("-j", "2", "sh -c 'sleep 30 & sleep 30'", ":::", "A", "B")
    descendants: list[int] = []
    try:
        assert wait_until(lambda: len(running_sleeps(proc.pid)) == 4, 15), "jobs never started"
        assert wait_until(lambda: reaper_of(proc.pid) is not None, 15), "no reaper"
        descendants = descendants_of(proc.pid)
        proc.send_signal(sig)
        proc.communicate(timeout=20)
        assert wait_until(lambda: all_gone(descendants), 2), [
            pid for pid in descendants if pid_alive(pid)]
    finally:
        kill_all(descendants)
        if proc.poll() is None:
            proc.kill()
        proc.communicate()



def test_a_short_run_of_quick_jobs_starts_no_reaper():
    """A reaper is an interpreter: a run that ends within a second never pays for one."""
    done = bingfa_run("ps -ww -o args= --ppid $PPID", ":::", "1")
    assert done.returncode == 0, done.stderr
    assert "_reaper.py" not in done.stdout  # the job's own shell is bingfa run's only child
    assert done.stdout.strip()

# A job whose grandchild leaves the job's process group (setpgid, as GNU timeout
# and job-control shells do) or session (setsid; its parent, the job, stays),
# ignores SIGTERM and writes its pid to the file $2.
ESCAPING_JOB = """import os, signal, sys, time
how, pidfile = sys.argv[1], sys.argv[2]
if os.fork() == 0:
    os.setpgid(0, 0) if how == "setpgid" else os.setsid()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    with open(pidfile + ".part", "w") as f:
        f.write(str(os.getpid()))
    os.rename(pidfile + ".part", pidfile)
    time.sleep(100)
    os._exit(0)
time.sleep(100)
"""


@pytest.mark.timeout(40)
@pytest.mark.parametrize("how", ["setpgid", "setsid"])
@pytest.mark.parametrize("end", ["--timeout", "--halt", "SIGTERM", "SIGINT"])
def test_every_early_end_reaches_a_grandchild_that_left_the_group(tmp_path, how, end):
    script = write_script(tmp_path / "escaping.py", ESCAPING_JOB)
    pidfile = tmp_path / "grandchild"
    escaping = [PY, str(script), how, str(pidfile)]
    if end == "--timeout":
        proc = start_bingfa_run("--timeout", "1", "--", *escaping, ":::", "x")
    elif end == "--halt":
        job = write_script(tmp_path / "job.sh", f"""\
case $1 in
  escape) exec {PY} {script} {how} {pidfile} ;;
  fail) until [ -s {pidfile} ]; do sleep 0.01; done; exit 1 ;;
esac
""")
        proc = start_bingfa_run("-j", "2", "--timeout", "20", "--halt", "now,fail=1",
                                "sh", job, ":::", "escape", "fail")
    else:
        proc = start_bingfa_run("--", *escaping, ":::", "x")
    grandchild = 0
    try:
        grandchild = read_pid(pidfile)
        if end.startswith("SIG"):
            proc.send_signal(getattr(signal, end))
        proc.communicate(timeout=30)
        assert proc.returncode != 0
        assert wait_until(lambda: not pid_alive(grandchild), 5), "the grandchild survived"
    finally:
        kill_all([grandchild] if grandchild else [])
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


# --- the shell of the jobs ----------------------------------------------------------------


def bingfa_run_with_a_function(*args: str, shell: str) -> subprocess.CompletedProcess:
    """``bingfa run ARGS`` with the bash function ``doit`` exported to it.

    bash defines and exports it, then becomes ``bingfa run`` (exec): its parent
    is the test, not bash, and ``$SHELL`` is ``shell``.
    """
    script = 'doit() { echo "doing $1"; }; export -f doit; exec "$0" -m bingfa._cli run "$@"'
    return subprocess.run(["bash", "-c", script, PY, *args], capture_output=True, text=True,
                          timeout=30, env={**os.environ, "SHELL": shell},
                          stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("shell", ["/bin/sh", "/bin/bash"])
def test_an_exported_bash_function_runs_as_a_job(shell):
    # export -f puts BASH_FUNC_doit%% in the environment, which only bash
    # reads: the jobs run in bash, whatever $SHELL says.
    for args, expected in [(["doit", ":::", "1", "2", "3"], "doing 1\ndoing 2\ndoing 3\n"),
                           (["doit {}; doit again", ":::", "x"], "doing x\ndoing again\n"),
                           (["{}", "z", ":::", "doit"], "doing z\n")]:
        r = bingfa_run_with_a_function("-k", *args, shell=shell)
        assert (r.returncode, r.stdout, r.stderr) == (0, expected, ""), args


def test_jobs_run_in_bash_when_it_is_the_users_shell():
    bash_only = "[[ {} == a* ]] && echo yes-{} || echo no-{}"
    r = bingfa_run("-k", bash_only, ":::", "ab", "b")  # $SHELL as the tests run
    if os.path.basename(os.environ.get("SHELL", "")) == "bash":
        assert (r.returncode, r.stdout) == (0, "yes-ab\nno-b\n")
    done = subprocess.run([PY, "-m", "bingfa._cli", "run", "-k", "echo ${BASH_VERSION:+bash}",
                           ":::", "x"], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "SHELL": "/bin/bash"}, stdin=subprocess.DEVNULL)
    assert done.stdout == "bash x\n"


def test_jobs_run_in_sh_when_the_user_shell_is_not_bash():
    done = subprocess.run([PY, "-m", "bingfa._cli", "run", "-k", "echo ${BASH_VERSION:-sh}",
                           ":::", "x"], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "SHELL": "/bin/sh"}, stdin=subprocess.DEVNULL)
    assert done.stdout == "sh x\n"


def test_parallel_shell_chooses_the_shell():
    done = subprocess.run([PY, "-m", "bingfa._cli", "run", "-k", "echo ${BASH_VERSION:+bash}",
                           ":::", "x"], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "SHELL": "/bin/sh", "PARALLEL_SHELL": "bash"},
                          stdin=subprocess.DEVNULL)
    assert done.stdout == "bash x\n"


# --- arguments streaming in on stdin ------------------------------------------------------


@pytest.mark.timeout(40)
def test_a_finished_jobs_output_is_printed_while_stdin_stays_open():
    # A slow producer (tail -f, say): a job that has finished is printed at
    # once, not when the next line of input happens to arrive.
    proc = start_bingfa_run("-j", "2", "echo", stdin=subprocess.PIPE)
    try:
        proc.stdin.write(b"first\n")
        proc.stdin.flush()
        readable, _, _ = select.select([proc.stdout], [], [], 8)
        assert readable, "the output of a finished job was held back"
        assert os.read(proc.stdout.fileno(), 100) == b"first\n"
    finally:
        finish(proc)
    assert proc.returncode == 0


@pytest.mark.timeout(40)
def test_timeout_is_enforced_while_stdin_stays_open(tmp_path):
    pidfile = tmp_path / "pid"
    proc = start_bingfa_run("-j", "2", "--timeout", "0.5", "echo $$ > {}; exec sleep 100",
                            stdin=subprocess.PIPE)
    job = None
    try:
        proc.stdin.write(f"{pidfile}\n".encode())
        proc.stdin.flush()
        job = read_pid(pidfile)
        assert wait_until(lambda: not pid_alive(job), 8), "the job outlived its timeout"
    finally:
        finish(proc)
        if job is not None:
            kill_all([job])
    assert proc.returncode == 1


# --- volume -------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_five_megabytes_on_both_streams_at_once(tmp_path):
    script = write_script(tmp_path / "big.py", """\
import sys
for _ in range(80):  # 80 x 64 KiB = 5 MiB, alternating between the streams
    sys.stdout.buffer.write(b"o" * 65536)
    sys.stderr.buffer.write(b"e" * 65536)
""")
    r = bingfa_run("--", PY, script, "{}", ":::", "x", text=False, timeout=50)
    assert r.returncode == 0
    assert r.stdout == b"o" * (80 * 65536)
    assert r.stderr == b"e" * (80 * 65536)


@pytest.mark.timeout(60)
def test_many_short_jobs(tmp_path):
    (tmp_path / "args").write_text("".join(f"{n}\n" for n in range(300)))
    r = bingfa_run("-j", "4", "true", "::::", tmp_path / "args", timeout=50)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    r = bingfa_run("-j", "4", "echo", "::::", tmp_path / "args", timeout=50)
    assert r.returncode == 0
    assert sorted(map(int, r.stdout.split())) == list(range(300))


@pytest.mark.timeout(60)
def test_halt_now_also_fires_on_a_missing_program(tmp_path):
    joblog = tmp_path / "log"
    started = time.monotonic()
    done = bingfa_run("--halt", "now,fail=1", "-j", "2", "--joblog", joblog, "--",
                      "{}", "100", ":::", "sleep", "no-such-command-bingfa")
    assert time.monotonic() - started < 20  # the sleep was killed, not waited for
    assert done.returncode == 127  # halt fail=1: the failing job's status, a shell's 127
    lines = joblog.read_text().splitlines()[1:]
    assert any(line.split("\t")[7] == "15" for line in lines)  # the sleep: SIGTERM

