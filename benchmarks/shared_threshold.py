"""Where shared memory starts to beat the pipe for a process pool's big buffers.

For each size, 64 numpy arrays of that size go through ``noop(a) -> a`` on a
2-worker fork pool with ``chunksize=1``, once with every out-of-band buffer
forced through the pipe and once with every one through a shared memory
segment; microseconds per array (there and back), medians of ``--repeats``
interleaved runs. bingfa's ``SHARED_MIN`` (``_core/_out_of_band.py``) is set
from where the ratio falls below 1.

    python benchmarks/shared_threshold.py [--repeats N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import bingfa as bf
from bingfa._core import _out_of_band

SIZES_KIB = (64, 128, 256, 512, 1024, 2048, 4096)


def noop(a: np.ndarray) -> np.ndarray:
    return a


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    chosen = _out_of_band.SHARED_MIN
    times: dict[tuple[int, str], list[float]] = {}
    try:
        for _ in range(args.repeats):
            for way in ("pipe", "shared"):
                # Fork workers inherit the module's setting.
                _out_of_band.SHARED_MIN = 1 << 62 if way == "pipe" else 1
                with bf.Pool(2, mode="process", start_method="fork") as pool:
                    for kib in SIZES_KIB:
                        arrays = [np.ones(kib * 128) for _ in range(64)]
                        pool.map(noop, arrays[:4], chunksize=1)  # warm
                        start = time.perf_counter()
                        out = pool.map(noop, arrays, chunksize=1)
                        times.setdefault((kib, way), []).append(
                            (time.perf_counter() - start) / len(arrays) * 1e6)
                        del out
    finally:
        _out_of_band.SHARED_MIN = chosen
    print(f"us per array there and back, median of {args.repeats}; "
          f"SHARED_MIN is {chosen >> 10} KiB")
    for kib in SIZES_KIB:
        pipe = statistics.median(times[(kib, "pipe")])
        shared = statistics.median(times[(kib, "shared")])
        print(f"  {kib:5d} KiB   pipe {pipe:8.0f}   shared memory {shared:8.0f}   "
              f"shared/pipe {shared / pipe:5.2f}")


if __name__ == "__main__":
    main()
