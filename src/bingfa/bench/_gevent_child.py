"""``bingfa bench``'s gevent measurements, in an interpreter gevent has patched first.

Run as ``python -m bingfa.bench._gevent_child SPEC`` (a JSON object: workload,
arg, tasks, repeats, workers); prints the seconds of each repeat as JSON.
"""

from gevent import monkey  # type: ignore[import-untyped,import-not-found,unused-ignore]

monkey.patch_all()

import json  # noqa: E402  (after patching, as gevent requires)
import sys  # noqa: E402
import time  # noqa: E402

import gevent  # type: ignore[import-untyped,import-not-found,unused-ignore]  # noqa: E402

from bingfa._pool._pool import Pool  # noqa: E402
from bingfa.bench._workloads import WORKLOADS, noop  # noqa: E402


def main() -> None:
    spec = json.loads(sys.argv[1])
    workload = {w.name: w for w in WORKLOADS}[spec["workload"]]
    tasks, repeats = spec["tasks"], spec["repeats"]
    times = []
    if workload.kind == "latency":
        gevent.spawn(noop, 0).get()
        for _ in range(repeats):
            start = time.perf_counter()
            for i in range(tasks):
                gevent.spawn(noop, i).get()
            times.append((time.perf_counter() - start) / tasks)
    else:
        with Pool(spec["workers"], mode="gevent") as pool:
            pool.map(workload.fn, [spec["arg"]] * spec["workers"], chunksize=1)
            for _ in range(repeats):
                start = time.perf_counter()
                pool.map(workload.fn, [spec["arg"]] * tasks, chunksize=1)
                times.append(time.perf_counter() - start)
    print(json.dumps(times))


main()
