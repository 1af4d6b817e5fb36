"""What a ``SerializationError`` says, in a real process pool.

Each message says once what could not be pickled or unpickled (which argument
or result, of which task) and why: the object is not described a second time
after a task description that shows it already.
"""

from __future__ import annotations

import re
import threading

import pytest

import bingfa as bf

pytestmark = pytest.mark.timeout(60)

LOCK_REASON = "cannot pickle '_thread.lock' object"


def identity(*args, **kwargs):
    return args, kwargs


def give_lock(_):
    return threading.Lock()


def _refuse(*_args):
    raise RuntimeError("refusing to be unpickled")


class UnpickleBomb:
    """Pickles fine; raises when unpickled."""

    def __reduce__(self):
        return (_refuse, ())


def give_unpickle_bomb(_):
    return UnpickleBomb()


def message_of(future: bf.Future) -> str:
    err = future.exception(timeout=30)
    assert isinstance(err, bf.SerializationError), repr(err)
    return str(err)


def test_an_argument_is_named_once_with_its_task():
    with bf.Pool(1, mode="process") as pool:
        positional = message_of(pool.submit(identity, 1, threading.Lock()))
        keyword = message_of(pool.submit(identity, k=threading.Lock()))
        with pytest.raises(bf.SerializationError) as mapped:
            pool.map(give_lock, [1, threading.Lock()])
    assert re.fullmatch(r"cannot pickle argument 2 of identity\(1, <unlocked _th[^>]*>\): "
                        + re.escape(LOCK_REASON), positional), positional
    assert re.fullmatch(r"cannot pickle keyword argument 'k' of identity\(k=<unlocked _th[^>]*>\): "
                        + re.escape(LOCK_REASON), keyword), keyword
    assert re.fullmatch(r"cannot pickle argument of give_lock task #1 "
                        r"\(<unlocked _thread\.lock object at 0x[0-9a-f]+>\): "
                        + re.escape(LOCK_REASON), str(mapped.value)), str(mapped.value)


def test_an_argument_that_cannot_be_unpickled_in_the_worker_is_named_once():
    with bf.Pool(1, mode="process") as pool:
        message = message_of(pool.submit(identity, UnpickleBomb()))
    assert message.startswith("cannot unpickle the arguments of identity(<"), message
    assert message.count("UnpickleBomb") == 1, message
    assert message.endswith(": refusing to be unpickled"), message


def test_a_result_is_described_once():
    with bf.Pool(1, mode="process") as pool:
        message = message_of(pool.submit(give_lock, 1))
    assert message.startswith("cannot pickle the result of "), message
    # The lock's own repr, once; Python's reason names its type once more.
    assert message.count("<unlocked _thread.lock object at 0x") == 1, message
    assert message.endswith(f">): {LOCK_REASON}"), message


def test_a_result_that_cannot_be_unpickled_says_unpickle_and_its_size():
    with bf.Pool(1, mode="process") as pool:
        message = message_of(pool.submit(give_unpickle_bomb, 1))
    assert re.fullmatch(r"cannot unpickle the result of give_unpickle_bomb\(1\) \(\d+ bytes\): "
                        r"refusing to be unpickled", message), message


def test_the_function_and_the_initializer_are_described_once():
    lock = threading.Lock()

    def uses_lock(x):
        with lock:
            return x

    with bf.Pool(1, mode="process") as pool:
        function = message_of(pool.submit(uses_lock, 1))
    with pytest.raises(bf.SerializationError) as initializer:
        bf.Pool(1, mode="process", initializer=uses_lock, initargs=(1,))
    for message, what in [(function, "the task's function"),
                          (str(initializer.value), "the initializer or its arguments")]:
        assert re.fullmatch(rf"cannot pickle {what} \(<function [^>]*uses_lock at 0x[0-9a-f]+>\): "
                            + re.escape(LOCK_REASON), message), message
