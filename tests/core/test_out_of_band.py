"""Big buffers travel beside the pickle (protocol 5), small ones inside it."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from bingfa._core._out_of_band import OUT_OF_BAND_MIN, loads_body, parts_size
from bingfa._core._serialization import dumps_parts


def _received(parts: list[bytes | memoryview], writable: bool = True) -> memoryview:
    """The parts as a receiver reads them: back to back in one buffer."""
    joined = b"".join(bytes(part) for part in parts)
    return memoryview(bytearray(joined) if writable else joined)


def test_small_buffers_stay_in_the_pickle():
    parts = dumps_parts([np.arange(10), bytearray(100)])
    assert len(parts) == 1
    assert parts[0][:1] == b"\x80"  # a plain pickle, nothing beside it
    out = loads_body(_received(parts))
    assert (out[0] == np.arange(10)).all()
    assert out[1] == bytearray(100)


def test_big_buffers_go_beside_the_pickle_without_a_copy():
    big = np.arange(OUT_OF_BAND_MIN, dtype=np.float64)
    parts = dumps_parts({"a": big, "b": [big[::-1].copy()], "n": 3})
    assert len(parts) == 4  # the table, the pickle, two buffers
    # The buffers are the arrays' own memory, not copies of it.
    assert np.shares_memory(np.frombuffer(parts[2], dtype=np.float64), big)
    assert parts_size(parts) == sum(len(bytes(p)) for p in parts)
    body = _received(parts)
    out = loads_body(body)
    assert (out["a"] == big).all()
    assert (out["b"][0] == big[::-1]).all()
    assert out["n"] == 3
    # Built on the received bytes, and writable, as a copy would be.
    assert out["a"].flags.writeable
    assert np.shares_memory(out["a"], np.frombuffer(body, dtype=np.uint8))


def test_a_read_only_body_gives_writable_copies():
    big = np.ones(OUT_OF_BAND_MIN)
    out = loads_body(_received(dumps_parts(big), writable=False))
    assert out.flags.writeable
    assert (out == 1).all()


def test_read_only_arrays_stay_read_only():
    big = np.ones(OUT_OF_BAND_MIN)
    big.flags.writeable = False
    assert not loads_body(_received(dumps_parts(big))).flags.writeable


def test_a_body_whose_table_does_not_add_up_is_refused():
    parts = dumps_parts(np.ones(OUT_OF_BAND_MIN))
    body = _received(parts)
    with pytest.raises(ValueError, match="table"):
        loads_body(memoryview(bytearray(body.tobytes() + b"extra")))


def test_what_needs_cloudpickle_still_sends_its_buffers_once():
    big = np.arange(OUT_OF_BAND_MIN, dtype=np.float64)
    parts = dumps_parts((lambda: 1, big))  # the C pickler fails on the lambda first
    assert len(parts) == 3
    fn, out = loads_body(_received(parts))
    assert fn() == 1
    assert (out == big).all()


def test_bytes_and_bytearrays_keep_their_types():
    data = [b"x" * OUT_OF_BAND_MIN, bytearray(b"y" * OUT_OF_BAND_MIN)]
    out = loads_body(_received(dumps_parts(data)))
    assert out == data
    assert [type(x) for x in out] == [bytes, bytearray]
    assert pickle.loads(pickle.dumps(out)) == data
