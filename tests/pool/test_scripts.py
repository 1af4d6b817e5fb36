"""Process pools in programs as people write them: no main guard, stdin, -c, a REPL, Jupyter.

Each case runs a real interpreter on a real script. Workers never run the
user's ``__main__`` (see ``_pool/_engines/_launcher.py``), so none of these
needs ``if __name__ == "__main__":``, with any start method. The remote
traceback of a task points at the user's file and line, with the source line
where there is one, and none of bingfa's frames above it.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest
from conftest import pid_alive, wait_until

PY = sys.executable
METHODS = [None, "fork", "spawn"]  # None: the default (forkserver)

# A script as a newcomer writes it: no main guard, classes and functions in
# __main__, a lambda, a bound method, data whose class lives in __main__.
SCRIPT = '''\
import sys
import bingfa as bf

class Model:
    def __init__(self, k):
        self.k = k

    def predict(self, x):
        return x * self.k

class Point:
    def __init__(self, x):
        self.x = x

def boom(x):
    raise ValueError(f"bad {x}")

method = sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] != "default" else None
with bf.Pool(2, mode="process", start_method=method) as pool:
    print("sum", sum(pool.map(Model(3).predict, range(100))))
    print("point", pool.submit(lambda p: Point(p.x + 1), Point(1)).result().x)
    print("same class", type(pool.submit(lambda p: p, Point(5)).result()) is Point)
    try:
        pool.submit(boom, 7).result()
    except ValueError as exc:
        print("caught", exc)
        print(exc.__cause__)
'''
BOOM_LINE = SCRIPT.splitlines().index('    raise ValueError(f"bad {x}")') + 1

_HEAD, _BODY = SCRIPT.split("method = sys.argv", 1)
GUARDED = (_HEAD + 'if __name__ == "__main__":\n'
           + textwrap.indent("method = sys.argv" + _BODY, "    "))


def _check_output(out: str, err: str, filename: str, source_shown: bool) -> None:
    assert "sum 14850" in out, err
    assert "point 2" in out, err
    assert "same class True" in out, err
    assert "caught bad 7" in out, err
    remote = out[out.index("caught bad 7"):]
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\w+)', remote)
    # The first frame of the worker's traceback is the user's function.
    assert frames[0] == (filename, str(BOOM_LINE), "boom"), remote
    assert "bingfa" not in remote.replace("bingfa.RemoteTraceback", ""), remote
    assert ('raise ValueError(f"bad {x}")' in remote) == source_shown, remote
    assert "bootstrapping" not in err, err
    assert "died" not in err, err


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", METHODS, ids=lambda m: m or "default")
def test_a_script_without_a_main_guard(method, tmp_path):
    script = tmp_path / "example.py"
    script.write_text(SCRIPT)
    done = subprocess.run([PY, str(script), method or "default"], capture_output=True,
                          text=True, timeout=100, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    _check_output(done.stdout, done.stderr, str(script), source_shown=True)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("guarded", [False, True], ids=["unguarded", "guarded"])
@pytest.mark.parametrize("method", METHODS, ids=lambda m: m or "default")
def test_a_script_on_standard_input(method, guarded, tmp_path):
    script = tmp_path / "example.py"
    script.write_text(GUARDED if guarded else SCRIPT)
    with script.open() as stdin:
        done = subprocess.run([PY, "-", method or "default"], stdin=stdin, capture_output=True,
                              text=True, timeout=100, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    # Python keeps no source for <stdin>, in the parent or anywhere: file and line only.
    _check_output(done.stdout, done.stderr, "<stdin>", source_shown=False)


@pytest.mark.timeout(120)
def test_python_dash_c(tmp_path):
    done = subprocess.run([PY, "-c", SCRIPT, "default"], capture_output=True, text=True,
                          timeout=100, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    _check_output(done.stdout, done.stderr, "<string>", source_shown=False)


@pytest.mark.timeout(120)
def test_the_interactive_interpreter(tmp_path):
    """Typed at the ``>>>`` prompt, on a real terminal (a pty)."""
    import pty

    lines = [
        "import bingfa as bf",
        "def square(x):",
        "    return x * x",
        "",
        "def boom(x):",
        "    raise ValueError('typed ' + str(x))",
        "",
        "pool = bf.Pool(2, mode='process')",
        "print('total', sum(pool.map(square, range(10))))",
        "try:",
        "    pool.submit(boom, 5).result()",
        "except ValueError as e:",
        "    print('caught', e); print(e.__cause__)",
        "",
        "pool.close(); pool.join(); print('closed')",
        "exit()",
    ]
    main_fd, sub_fd = pty.openpty()
    proc = subprocess.Popen([PY, "-q", "-i"], stdin=sub_fd, stdout=sub_fd, stderr=sub_fd,
                            cwd=tmp_path, start_new_session=True)
    os.close(sub_fd)
    out = b""
    try:
        for line in lines:
            os.write(main_fd, line.encode() + b"\n")
        deadline = time.monotonic() + 90
        while b"closed" not in out.replace(b"print('closed')", b"") and proc.poll() is None:
            wait = deadline - time.monotonic()
            assert wait > 0, out.decode(errors="replace")
            if select.select([main_fd], [], [], wait)[0]:
                try:
                    out += os.read(main_fd, 65536)
                except OSError:
                    break
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(main_fd)
    text = out.decode(errors="replace").replace("\r\n", "\n")
    assert "total 285" in text, text
    assert "caught typed 5" in text, text
    remote = text[text.index("caught typed 5"):]
    assert re.search(r'File "<stdin>", line 2, in boom', remote), remote


# Drives a real ipykernel, headless (no notebook server), from a process of
# its own: the kernel client's zmq context lives for its whole process.
_JUPYTER_DRIVER = '''\
import sys
from jupyter_client.manager import start_new_kernel

cells = [
    "import bingfa as bf\\n"
    "def square(x):\\n"
    "    return x * x\\n"
    "def boom(x):\\n"
    "    raise ValueError('from a cell')\\n",
    "with bf.Pool(2, mode='process') as pool:\\n"
    "    print('total', sum(pool.map(square, range(10))))\\n"
    "    print('lambda', pool.submit(lambda: 41 + 1).result())\\n"
    "    try:\\n"
    "        pool.submit(boom, 1).result()\\n"
    "    except ValueError as e:\\n"
    "        print('caught', e)\\n"
    "        print(e.__cause__)\\n",
]
km, kc = start_new_kernel(kernel_name="python3", cwd=sys.argv[1])
try:
    for cell in cells:
        def collect(msg):
            if msg["msg_type"] == "stream":
                print(msg["content"]["text"], end="")
            elif msg["msg_type"] == "error":
                print("\\n".join(msg["content"]["traceback"]))
        reply = kc.execute_interactive(cell, timeout=120, output_hook=collect)
        print("status", reply["content"]["status"])
finally:
    kc.stop_channels()
    km.shutdown_kernel(now=True)
'''


@pytest.mark.timeout(180)
def test_a_jupyter_kernel(tmp_path):
    """A notebook's cells, run by a real ipykernel."""
    driver = tmp_path / "driver.py"
    driver.write_text(_JUPYTER_DRIVER)
    done = subprocess.run([PY, str(driver), str(tmp_path)], capture_output=True, text=True,
                          timeout=170, cwd=tmp_path)
    output = done.stdout
    assert done.returncode == 0, done.stderr
    assert output.count("status ok") == 2, output
    assert "total 285" in output, output
    assert "lambda 42" in output, output
    assert "caught from a cell" in output, output
    # The cell's source line reached the worker's traceback (it has no file).
    assert "raise ValueError('from a cell')" in output, output


_KILLED_SCRIPT = '''\
import os, sys, threading
import bingfa as bf
from bingfa._pool._engines._launcher import zygote_pid

with bf.Pool(2, mode="process") as pool:
    workers = pool.map(lambda _: os.getpid(), range(50), chunksize=1)
    print(zygote_pid(), *sorted(set(workers)), flush=True)
    if sys.argv[1] == "wait":
        threading.Event().wait(60)
'''


@pytest.mark.timeout(60)
def test_nothing_is_left_when_the_script_ends(tmp_path):
    script = tmp_path / "example.py"
    script.write_text(_KILLED_SCRIPT)
    done = subprocess.run([PY, str(script), "exit"], capture_output=True, text=True,
                          timeout=30, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    pids = [int(p) for p in done.stdout.split()]
    assert len(pids) >= 2  # the zygote and at least one worker
    assert wait_until(lambda: not any(pid_alive(p) for p in pids), timeout=2)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_script_leaves_neither_zygote_nor_workers(tmp_path, sig):
    script = tmp_path / "example.py"
    script.write_text(_KILLED_SCRIPT)
    proc = subprocess.Popen([PY, str(script), "wait"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    pids: list[int] = []
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) >= 2, proc.stderr.read()
        assert all(pid_alive(p) for p in pids)
        proc.send_signal(sig)
        proc.wait(timeout=10)
        assert wait_until(lambda: not any(pid_alive(p) for p in pids), timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
        for pid in pids:
            if pid_alive(pid):
                psutil.Process(pid).kill()


@pytest.mark.timeout(60)
def test_workers_share_the_parents_path_directory_arguments_and_environment(tmp_path):
    """What a fresh worker must see as the parent does, though it was not forked from it."""
    (tmp_path / "helpers").mkdir()
    (tmp_path / "helpers" / "shared.py").write_text("VALUE = 'from helpers'\n")
    (tmp_path / "elsewhere").mkdir()
    script = tmp_path / "example.py"
    script.write_text(textwrap.dedent('''\
        import os, sys
        import bingfa as bf

        sys.path.insert(0, sys.argv[1])        # added after the zygote may have started
        os.chdir(sys.argv[2])
        os.environ["BINGFA_TEST_VAR"] = "set late"

        def look(_):
            import shared
            return (shared.VALUE, os.getcwd(), sys.argv[1:], os.environ.get("BINGFA_TEST_VAR"))

        for method in (None, "spawn"):
            with bf.Pool(1, mode="process", start_method=method) as pool:
                print(pool.submit(look, 0).result())
    '''))
    helpers, elsewhere = tmp_path / "helpers", tmp_path / "elsewhere"
    done = subprocess.run([PY, str(script), str(helpers), str(elsewhere)], capture_output=True,
                          text=True, timeout=50, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    expected = repr(("from helpers", str(elsewhere), [str(helpers), str(elsewhere)], "set late"))
    assert done.stdout.splitlines() == [expected, expected]


@pytest.mark.timeout(60)
def test_a_worker_imports_no_asyncio_and_not_the_users_main(tmp_path):
    script = tmp_path / "example.py"
    script.write_text(textwrap.dedent('''\
        import asyncio, sys
        import bingfa as bf

        print("main ran", flush=True)   # must appear once: workers never run this file

        def modules(_):
            return "asyncio" in sys.modules, sorted(vars(sys.modules["__main__"]))

        with bf.Pool(1, mode="process") as pool:
            print(pool.submit(modules, 0).result())
    '''))
    done = subprocess.run([PY, str(script)], capture_output=True, text=True, timeout=50,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines.count("main ran") == 1
    has_asyncio, main_names = eval(lines[-1])
    assert has_asyncio is False
    assert all(name.startswith("__") for name in main_names), main_names


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_what_cannot_work_says_why_in_one_line(tmp_path, method):
    """An embedded interpreter with no executable cannot start fresh workers: fork can."""
    script = tmp_path / "example.py"
    script.write_text(textwrap.dedent(f'''\
        import sys
        import bingfa as bf

        sys.executable = ""
        with bf.Pool(1, mode="process", start_method="fork") as pool:
            print("fork works", pool.submit(abs, -1).result())
        bf.Pool(1, mode="process", start_method={method!r})
    '''))
    done = subprocess.run([PY, str(script)], capture_output=True, text=True, timeout=50,
                          cwd=tmp_path)
    assert done.stdout == "fork works 1\n"
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last == (f"bingfa.InitializerError: cannot start worker processes with "
                    f"start_method={method!r}: sys.executable is empty (an embedded "
                    "interpreter); use start_method='fork'")


@pytest.mark.timeout(60)
def test_the_zygote_starts_early_only_for_pools_that_use_it(tmp_path):
    """A forkserver pool starts its zygote before it loads its engine; a fork pool starts none.

    A fork pool's workers have ``__main__`` as it was when they forked, so its
    functions defined by then go by name: neither the pool's process nor its
    workers load cloudpickle for them. A plain function defined later goes by
    value without it too; only a closure needs it.
    """
    script = tmp_path / "example.py"
    script.write_text(textwrap.dedent('''\
        import sys
        import bingfa as bf
        from bingfa._pool._engines._launcher import zygote_pid

        def loaded(_):
            return "cloudpickle" in sys.modules

        with bf.Pool(2, mode="process", start_method="fork") as pool:
            print("fork", zygote_pid(), pool.submit(loaded, 0).result(), loaded(0))
            late = lambda x: x + 1
            print("late", pool.submit(late, 1).result(), loaded(0))
            def adder(k):
                return lambda x: x + k
            print("closure", pool.submit(adder(2), 1).result(), loaded(0))
        with bf.Pool(2, mode="process") as pool:
            print("forkserver", zygote_pid() is not None, pool.submit(abs, -1).result())
    '''))
    done = subprocess.run([PY, str(script)], capture_output=True, text=True, timeout=50,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["fork None False False", "late 2 False",
                                        "closure 3 True", "forkserver True 1"]


@pytest.mark.timeout(60)
def test_a_zygote_that_cannot_boot_is_reported_after_an_early_start(tmp_path):
    script = tmp_path / "example.py"
    script.write_text(textwrap.dedent('''\
        import sys
        import bingfa as bf

        sys.executable = sys.executable + "-missing"   # the zygote cannot even start
        bf.Pool(1, mode="process")
    '''))
    done = subprocess.run([PY, str(script)], capture_output=True, text=True, timeout=50,
                          cwd=tmp_path)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("bingfa.InitializerError: cannot start worker processes: "), last
    assert "could not be run" in last, last


@pytest.mark.timeout(60)
def test_a_fork_pool_runs_the_main_function_as_it_is_now(tmp_path):
    """__main__'s functions go by name only while the workers' copy is the same object."""
    script = tmp_path / "example.py"
    script.write_text(textwrap.dedent('''\
        import bingfa as bf

        def f(x):
            return "as defined before the pool"

        with bf.Pool(1, mode="process", start_method="fork") as pool:
            print(pool.submit(f, 0).result())

            def f(x):
                return "redefined after the workers forked"

            print(pool.submit(f, 0).result())
    '''))
    done = subprocess.run([PY, str(script)], capture_output=True, text=True, timeout=50,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["as defined before the pool",
                                        "redefined after the workers forked"]
