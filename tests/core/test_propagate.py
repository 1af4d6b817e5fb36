"""bf.propagate(): a ContextVar's value travels with process-mode tasks and handles."""

from __future__ import annotations

import contextvars
import subprocess
import sys
import textwrap
import threading

import pytest

import bingfa as bf

request_id: contextvars.ContextVar[str] = bf.propagate(
    contextvars.ContextVar("request_id", default="-"))
not_carried: contextvars.ContextVar[str] = contextvars.ContextVar("not_carried", default="-")


def read(_: object = None) -> tuple[str, str]:
    return request_id.get(), not_carried.get()


def read_then_set(tag: str) -> str:
    seen = request_id.get()
    request_id.set(tag)  # in this task's own context: the next task does not see it
    return seen


def run_in(context_value: str, fn, *args):  # type: ignore[no-untyped-def]
    """Call ``fn`` in a fresh context where request_id is ``context_value``."""
    def call():  # type: ignore[no-untyped-def]
        request_id.set(context_value)
        not_carried.set("set here")
        return fn(*args)
    return contextvars.copy_context().run(call)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", [None, "fork"])
def test_process_tasks_see_the_registered_value_and_only_it(method):
    with bf.Pool(2, mode="process", start_method=method) as pool:
        assert run_in("r-1", lambda: pool.submit(read).result()) == ("r-1", "-")
        assert run_in("r-2", lambda: pool.map(read, range(20))) == [("r-2", "-")] * 20
        assert run_in("r-3", lambda: list(pool.imap_unordered(read, range(5)))) == [
            ("r-3", "-")] * 5
        assert pool.submit(read).result() == ("-", "-")  # nothing set here: the default
        seen = run_in("caller", lambda: pool.map(read_then_set, ["a", "b", "c", "d"],
                                                 chunksize=4))
        assert seen == ["caller"] * 4


@pytest.mark.timeout(60)
def test_handles_and_scope_spawns_carry_it_too():
    def work():  # type: ignore[no-untyped-def]
        p = bf.Process(read)
        p.start()
        with bf.scope() as s:
            spawned = s.spawn(read, mode="process")
        return p.result(), spawned.result()

    assert run_in("r-9", work) == (("r-9", "-"), ("r-9", "-"))


@pytest.mark.timeout(60)
def test_a_value_that_cannot_be_pickled_fails_the_task_clearly():
    with bf.Pool(1, mode="process") as pool:
        future = run_in(threading.Lock(), lambda: pool.submit(read))  # type: ignore[arg-type]
        with pytest.raises(bf.SerializationError):
            future.result()


def test_only_module_level_context_vars_can_be_propagated():
    with pytest.raises(TypeError, match="ContextVar"):
        bf.propagate("request_id")  # type: ignore[arg-type]
    local = contextvars.ContextVar("local")
    bf.propagate(local)
    with pytest.raises(ValueError, match="top level of a module"), \
            bf.Pool(1, mode="process") as pool:
        pool.submit(read)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["forkserver", "fork", "spawn"])
def test_a_scripts_own_variable_reaches_workers_that_never_ran_the_script(tmp_path, method):
    script = tmp_path / "example.py"
    script.write_text(textwrap.dedent(f'''\
        import contextvars
        import bingfa as bf

        tenant = bf.propagate(contextvars.ContextVar("tenant", default="none"))
        plain = contextvars.ContextVar("plain", default="plain default")

        def whose(_):
            return tenant.get(), plain.get()

        with bf.Pool(1, mode="process", start_method={method!r}) as pool:
            print(pool.submit(whose, 0).result())
            tenant.set("acme")
            plain.set("not carried")
            print(pool.map(whose, range(2)))
    '''))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=50, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "('none', 'plain default')",
        "[('acme', 'plain default'), ('acme', 'plain default')]",
    ]
