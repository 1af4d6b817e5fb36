"""Arrays to and from process workers: out of band, intact, writable, any number of them."""

from __future__ import annotations

import numpy as np
import pytest

import bingfa as bf


def bump(a: np.ndarray) -> np.ndarray:
    a += 1  # the worker's copy: writable, and not the caller's
    return a


def arrays(n: int, size: int) -> list[np.ndarray]:
    return [np.full(size, i, dtype=np.float64) for i in range(n)]


@pytest.mark.timeout(60)
def test_arrays_arrive_intact_and_writable_both_ways():
    a = np.arange(1 << 20, dtype=np.float64)
    with bf.Pool(2, mode="process") as pool:
        out = pool.submit(bump, a).result()
        assert (out == a + 1).all()
        assert out.flags.writeable
        assert a[0] == 0  # the caller's array is untouched
        out += 1  # and the result is the caller's to change
        results = pool.map(bump, arrays(40, 50_000))
    assert [r[0] for r in results] == [i + 1 for i in range(40)]


@pytest.mark.timeout(60)
def test_a_result_with_more_buffers_than_one_write_takes():
    # 1,500 arrays of 160 KB in one result: more parts than writev accepts.
    with bf.Pool(1, mode="process") as pool:
        out = pool.submit(arrays, 1500, 20_000).result()
    assert len(out) == 1500
    assert all(x[0] == i and x.size == 20_000 for i, x in enumerate(out))
