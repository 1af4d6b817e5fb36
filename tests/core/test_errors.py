"""The exception tree: who derives from what, and every error survives pickling."""

from __future__ import annotations

import multiprocessing
import pickle

import cloudpickle
import pytest

import bingfa as bf

ERRORS = [
    bf.WorkerCrashedError,
    bf.TaskTimeoutError,
    bf.ResultTimeoutError,
    bf.PoolClosedError,
    bf.InitializerError,
    bf.SerializationError,
    bf.BackendUnavailableError,
]


@pytest.mark.parametrize("cls", ERRORS, ids=lambda c: c.__name__)
def test_every_error_is_a_bingfa_error(cls):
    assert issubclass(cls, bf.BingfaError)
    assert issubclass(cls, Exception)


@pytest.mark.parametrize(
    ("cls", "builtin"),
    [
        (bf.TaskTimeoutError, TimeoutError),
        (bf.ResultTimeoutError, TimeoutError),
        (bf.ResultTimeoutError, multiprocessing.TimeoutError),
        (bf.PoolClosedError, RuntimeError),
        (bf.PoolClosedError, ValueError),
        (bf.InitializerError, RuntimeError),
        (bf.SerializationError, TypeError),
        (bf.BackendUnavailableError, LookupError),
    ],
    ids=lambda x: x.__name__,
)
def test_errors_also_derive_from_the_builtin_they_resemble(cls, builtin):
    assert issubclass(cls, builtin)
    with pytest.raises(builtin):
        raise cls("caught by the builtin")


def test_bingfa_error_is_an_exception():
    assert issubclass(bf.BingfaError, Exception)
    # a task timeout is caught by code written for the standard library
    with pytest.raises(TimeoutError) as info:
        raise bf.TaskTimeoutError("late", timeout=1.0, task="t")
    assert info.value.timeout == 1.0


def test_remote_traceback_is_an_exception_with_its_text():
    tb = bf.RemoteTraceback('Traceback (most recent call last):\n  File "w.py"\nValueError: x\n')
    assert isinstance(tb, Exception)
    assert "ValueError: x" in tb.text
    assert "ValueError: x" in str(tb)


def _roundtrip(exc, dumps):
    return pickle.loads(dumps(exc))


DUMPERS = [pickle.dumps, cloudpickle.dumps]


@pytest.mark.parametrize("dumps", DUMPERS, ids=["pickle", "cloudpickle"])
def test_worker_crashed_error_pickles(dumps):
    err = bf.WorkerCrashedError("worker 1 died", worker_id=1, pid=1234, exitcode=None,
                                signal=9, task="f task #3 (3)")
    back = _roundtrip(err, dumps)
    assert type(back) is bf.WorkerCrashedError
    assert str(back) == "worker 1 died"
    assert back.args == err.args
    assert (back.worker_id, back.pid, back.exitcode, back.signal, back.task) == (
        1, 1234, None, 9, "f task #3 (3)")
    back = _roundtrip(bf.WorkerCrashedError("exit", exitcode=3), dumps)
    assert back.exitcode == 3
    assert back.signal is None
    assert back.worker_id is None


@pytest.mark.parametrize("dumps", DUMPERS, ids=["pickle", "cloudpickle"])
def test_task_timeout_error_pickles(dumps):
    back = _roundtrip(bf.TaskTimeoutError("too slow", timeout=2.5, task="g task #0"), dumps)
    assert type(back) is bf.TaskTimeoutError
    assert str(back) == "too slow"
    assert back.timeout == 2.5
    assert back.task == "g task #0"
    assert isinstance(back, TimeoutError)


@pytest.mark.parametrize("dumps", DUMPERS, ids=["pickle", "cloudpickle"])
def test_backend_unavailable_error_pickles(dumps):
    back = _roundtrip(bf.BackendUnavailableError("no dask", extra="dask"), dumps)
    assert type(back) is bf.BackendUnavailableError
    assert str(back) == "no dask"
    assert back.extra == "dask"


@pytest.mark.parametrize("dumps", DUMPERS, ids=["pickle", "cloudpickle"])
@pytest.mark.parametrize(
    "cls", [bf.BingfaError, bf.PoolClosedError, bf.InitializerError, bf.SerializationError,
            bf.ResultTimeoutError],
    ids=lambda c: c.__name__)
def test_plain_errors_pickle(cls, dumps):
    back = _roundtrip(cls("what happened"), dumps)
    assert type(back) is cls
    assert str(back) == "what happened"
    assert back.args == ("what happened",)


@pytest.mark.parametrize("dumps", DUMPERS, ids=["pickle", "cloudpickle"])
def test_remote_traceback_pickles(dumps):
    back = _roundtrip(bf.RemoteTraceback("Traceback ...\nKeyError: 'k'\n"), dumps)
    assert type(back) is bf.RemoteTraceback
    assert back.text == "Traceback ...\nKeyError: 'k'\n"


def test_keyword_attributes_have_defaults():
    assert bf.WorkerCrashedError("x").task is None
    assert bf.TaskTimeoutError("x").timeout is None
    assert bf.BackendUnavailableError("x").extra is None


def test_errors_pickle_across_processes():
    """The errors really travel: raised in a worker, re-raised here with attributes."""
    with bf.Pool(1, mode="process") as pool:
        fut = pool.submit(_raise_crash_error)
        with pytest.raises(bf.WorkerCrashedError) as info:
            fut.result(timeout=30)
    assert info.value.exitcode == 7
    assert info.value.task == "made up"


def _raise_crash_error():
    raise bf.WorkerCrashedError("not really", exitcode=7, task="made up")
