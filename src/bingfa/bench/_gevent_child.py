"""``bingfa bench``'s gevent measurements, in an interpreter gevent has patched first.

Run as ``python -m bingfa.bench._gevent_child SPEC`` (a JSON object: workload,
arg, tasks, workers). It warms up, prints ``ready``, then times one run for
each line it reads, printing the seconds, until its input ends.
"""

from gevent import monkey  # type: ignore[import-untyped,import-not-found,unused-ignore]

monkey.patch_all()

import json  # noqa: E402  (after patching, as gevent requires)
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import gevent  # type: ignore[import-untyped,import-not-found,unused-ignore]  # noqa: E402

from bingfa._pool._pool import Pool  # noqa: E402
from bingfa.bench._workloads import WORKLOADS, noop  # noqa: E402


def serve(run: Callable[[], float]) -> None:
    print("ready", flush=True)
    for _ in sys.stdin:
        print(json.dumps(run()), flush=True)


def main() -> None:
    spec = json.loads(sys.argv[1])
    workload = {w.name: w for w in WORKLOADS}[spec["workload"]]
    tasks: int = spec["tasks"]
    arg = spec["arg"]
    if workload.kind == "latency":
        gevent.spawn(noop, 0).get()

        def trips() -> float:
            start = time.perf_counter()
            for i in range(tasks):
                gevent.spawn(noop, i).get()
            return (time.perf_counter() - start) / tasks

        serve(trips)
        return
    with Pool(spec["workers"], mode="gevent") as pool:
        pool.map(workload.fn, [arg] * spec["workers"], chunksize=1)
        pool.map(workload.fn, [arg] * max(spec["workers"], tasks // 2), chunksize=1)

        def run() -> float:
            start = time.perf_counter()
            pool.map(workload.fn, [arg] * tasks, chunksize=1)
            return time.perf_counter() - start

        serve(run)


main()
