"""How a ``SerializationError`` message is put together, and how objects are described."""

from __future__ import annotations

import pickle
import threading

import pytest

import bingfa as bf
from bingfa._core._serialization import describe, serialization_error, unpickling_error


class Greeting:
    def __repr__(self) -> str:
        return "hello, and a long speech after it"


class Point:
    def __init__(self, x: int) -> None:
        self.x = x

    def __repr__(self) -> str:
        return f"Point(x={self.x})"


@pytest.mark.parametrize(
    ("obj", "expected"),
    [(5, "5"), ("abc", "'abc'"), ([1, 2], "[1, 2]"), (None, "None"), (Point(1), "Point(x=1)"),
     (Greeting(), f"hello, and a long speech after it ({__name__}.Greeting)")],
    ids=["int", "str", "list", "none", "repr-names-its-type", "repr-does-not"],
)
def test_describe_names_the_type_only_where_the_repr_does_not(obj, expected):
    assert describe(obj) == expected


def test_describe_does_not_repeat_a_default_repr():
    text = describe(threading.Lock())
    assert text.startswith("<unlocked _thread.lock object at 0x"), text
    assert text.count("_thread.lock") == 1, text


def reason(obj: object) -> Exception:
    """The pickler's own exception for ``obj``."""
    try:
        pickle.dumps(obj)
    except Exception as exc:
        return exc
    raise AssertionError(f"{obj!r} pickled")


def test_an_object_the_description_shows_is_not_described_again():
    lock = threading.Lock()
    cause = reason(lock)
    err = serialization_error(f"argument 1 of f({lock!r})", lock, cause)
    assert isinstance(err, bf.SerializationError)
    assert str(err) == f"cannot pickle argument 1 of f({lock!r}): {cause}"
    assert err.__cause__ is cause


def test_an_object_the_description_does_not_show_is_described():
    lock = threading.Lock()
    cause = reason(lock)
    err = serialization_error("the result of f(1)", lock, cause)
    assert str(err) == f"cannot pickle the result of f(1) ({lock!r}): {cause}"


def test_a_shortened_object_gets_its_type_unless_the_reason_names_it():
    greeting = Greeting()
    cause = RuntimeError("refusing")
    what = "argument 1 of f(hello, and a...after it)"  # as a task's description shortens it
    err = serialization_error(what, greeting, cause)
    assert str(err) == f"cannot pickle {what} ({__name__}.Greeting): refusing"
    named = serialization_error(what, greeting, RuntimeError("a Greeting refuses"))
    assert str(named) == f"cannot pickle {what}: a Greeting refuses"


def test_data_that_did_not_load_says_unpickle():
    cause = ValueError()
    err = unpickling_error("the result of f(1) (542 bytes)", cause)
    assert str(err) == "cannot unpickle the result of f(1) (542 bytes): ValueError"
    assert err.__cause__ is cause
