"""A wrong argument to bf.run, bf.arun, bf.stream or bf.run_many is named in its error.

Each is refused before anything runs, with the parameter's name, what it
takes, and what it got, rather than a TypeError from deep inside (``memoryview:
a bytes-like object is required``) that names none of them.
"""

from __future__ import annotations

import asyncio
import gc
import re

import pytest

import bingfa as bf

# (keyword arguments, the error, its whole message) for every command runner.
COMMON = [
    ({"timeout": "5"}, TypeError, "timeout must be a number of seconds or None, not str"),
    ({"timeout": True}, TypeError, "timeout must be a number of seconds or None, not bool"),
    ({"timeout": -1}, ValueError, "timeout must be from 0 to 2592000 seconds (30 days), got -1"),
    ({"env": [("A", "1")]}, TypeError,
     "env must be a mapping of names to values, such as a dict, not list"),
    ({"env": "A=1"}, TypeError,
     "env must be a mapping of names to values, such as a dict, not str"),
    ({"env": {"A": 1}}, TypeError, "env['A'] must be a str, not int"),
    ({"env": {1: "a"}}, TypeError, "env names must be str, not int (1)"),
    ({"cwd": 5}, TypeError, "cwd must be a path (str, bytes or os.PathLike), not int"),
    ({"encoding": 8}, TypeError, "encoding must be a str, not int"),
    ({"encoding": "no-such-codec"}, LookupError,
     "encoding 'no-such-codec' is not a text encoding Python knows"),
    ({"errors": None}, TypeError, "errors must be a str, not NoneType"),
    ({"errors": "no-such-handler"}, LookupError,
     "errors 'no-such-handler' is not an error handler Python knows (such as 'replace', "
     "'strict' or 'surrogateescape')"),
]
WITH_INPUT = [
    ({"input": 5}, TypeError, "input must be bytes or str, not int"),
    ({"input": [b"line"]}, TypeError, "input must be bytes or str, not list"),
]


def run(**kwargs):
    return bf.run(["cat"], **kwargs)


def arun(**kwargs):
    return asyncio.run(bf.arun(["cat"], **kwargs))


def stream(**kwargs):
    with bf.stream(["cat"], **kwargs) as lines:
        return list(lines)


def run_many(**kwargs):
    return list(bf.run_many([["cat"]], **kwargs))


def cases(runners, table):
    params = []
    for runner in runners:
        for kwargs, error, message in table:
            given = ",".join(f"{key}={value!r}" for key, value in kwargs.items())
            params.append(pytest.param(runner, kwargs, error, message,
                                       id=f"{runner.__name__}-{given}"))
    return params


@pytest.mark.parametrize(("runner", "kwargs", "error", "message"),
                         cases([run, arun, stream], COMMON + WITH_INPUT)
                         + cases([run_many], COMMON))
def test_a_wrong_argument_is_named(runner, kwargs, error, message):
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        runner(**kwargs)


def test_what_works_still_works(tmp_path):
    assert bf.run(["cat"], input=bytearray(b"ab")).stdout == b"ab"
    assert bf.run(["cat"], input=memoryview(b"cd")).stdout == b"cd"
    assert bf.run(["pwd"], cwd=tmp_path, text=True).stdout == f"{tmp_path}\n"
    assert bf.run(["pwd"], cwd=bytes(tmp_path), text=True).stdout == f"{tmp_path}\n"
    env = bf.run(["env"], env={b"A": b"1", "B": "2"}, text=True).stdout.split()
    assert {"A=1", "B=2"} <= set(env)
    assert bf.run(["cat"], input=b"\xff", text=True, encoding="latin-1").stdout == "\xff"
    assert bf.run(["cat"], timeout=1).ok
    assert bf.run(["cat"], timeout=2.5).ok


@pytest.mark.parametrize("runner", [run, stream, run_many])
def test_a_missing_working_directory_is_named(runner, tmp_path):
    missing = tmp_path / "gone"
    with pytest.raises(FileNotFoundError, match=f"^\\[Errno 2\\] cwd does not exist: "
                                                f"{re.escape(repr(str(missing)))}$"):
        runner(cwd=missing)
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(NotADirectoryError, match=r"^\[Errno 20\] cwd is not a directory: "):
        runner(cwd=a_file)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [({"retries": "1"}, TypeError, "retries must be an int, not str"),
     ({"retries": 1.5}, TypeError, "retries must be an int, not float"),
     ({"retries": -1}, ValueError, "retries must be 0 or more, got -1")],
)
def test_run_many_names_a_wrong_retries(kwargs, error, message):
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        bf.run_many([["true"]], **kwargs)


def test_a_wrong_progress_leaves_nothing_half_made():
    # The half-made run used to fail again when collected ("Exception ignored
    # in CommandRun.__del__"), which pytest turns into an error here.
    with pytest.raises(TypeError, match=r"^progress must be a bool or a callable"):
        bf.run_many([["true"]], progress=5)
    gc.collect()
