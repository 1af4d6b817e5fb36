"""Plain functions of a script's ``__main__`` reach fresh workers without cloudpickle.

Each case runs a real script with a real pool. Whether cloudpickle was needed
shows in the parent: it imports cloudpickle only to pickle something by
value that the plain path refused.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

PY = sys.executable
METHODS = [None, "spawn", "fork"]  # None: the default (forkserver)

PLAIN = '''\
import math
import sys
import bingfa as bf

SCALE = 3

def is_even(n):
    return n == 0 or is_odd(n - 1)

def is_odd(n):
    return n != 0 and is_even(n - 1)

def fact(n):
    return 1 if n < 2 else n * fact(n - 1)

def task(x, offset=1, *, root=16):
    """Scaled, offset and rooted."""
    return x * SCALE + offset + int(math.sqrt(root)) + fact(4), is_even(x)

task.label = "tagged"
square = lambda x: x * x

def describe(f):
    return f.__name__, f.__qualname__, f.__doc__, f.__defaults__, f.__kwdefaults__, \\
        getattr(f, "label", None), f.__module__

def snapshot(_):
    global SCALE
    SCALE += 100          # the worker's snapshot changes, not the parent's
    return SCALE

method = sys.argv[1] if sys.argv[1] != "default" else None
with bf.Pool(2, mode="process", start_method=method) as pool:
    def late(x):          # defined after a fork pool's workers started
        return task(x, offset=0)

    print(pool.submit(task, 2).result())
    print(pool.submit(late, 3).result())
    print(pool.map(square, range(5)))
    print(pool.submit(describe, task).result() == describe(task))
    print(pool.submit(snapshot, 0).result(), SCALE)
    print("cloudpickle" in sys.modules)
'''


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", METHODS, ids=lambda m: m or "default")
def test_plain_functions_travel_by_value_without_cloudpickle(method, tmp_path):
    script = tmp_path / "plain.py"
    script.write_text(PLAIN)
    done = subprocess.run([PY, str(script), method or "default"], capture_output=True,
                          text=True, timeout=100, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "(35, True)",      # 2*3 + 1 + 4 + 24; 2 is even through mutual recursion
        "(37, False)",
        "[0, 1, 4, 9, 16]",
        "True",            # name, qualname, doc, defaults, attributes, module kept
        "103 3",
        "False",           # nothing needed cloudpickle, in the parent or anywhere
    ]


NOT_PLAIN = '''\
import sys
import bingfa as bf

class Point:
    def __init__(self, x):
        self.x = x

ORIGIN = Point(0)

def make_adder(k):
    def add(x):
        return x + k
    return add

def shifted(x, base=Point(10)):
    return x + base.x

def from_origin(x):
    return x - ORIGIN.x

def annotated(x: Point) -> int:
    return x.x

with bf.Pool(1, mode="process") as pool:
    print(pool.submit(make_adder(5), 1).result())       # a closure
    print(pool.submit(shifted, 1).result())             # a __main__ class in a default
    print(pool.submit(from_origin, 1).result())         # a __main__ instance among globals
    print(pool.submit(annotated, Point(7)).result())    # a __main__ class in an annotation
    print("cloudpickle" in sys.modules)
'''


@pytest.mark.timeout(60)
def test_what_is_not_plain_goes_through_cloudpickle_and_still_works(tmp_path):
    script = tmp_path / "not_plain.py"
    script.write_text(NOT_PLAIN)
    done = subprocess.run([PY, str(script)], capture_output=True, text=True, timeout=50,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["6", "11", "1", "7", "True"]


@pytest.mark.timeout(60)
def test_a_plain_function_fails_with_its_own_traceback(tmp_path):
    script = tmp_path / "fails.py"
    script.write_text(textwrap.dedent('''\
        import bingfa as bf

        def inner(x):
            raise KeyError(x)

        def outer(x):
            return inner(x)

        with bf.Pool(1, mode="process") as pool:
            try:
                pool.submit(outer, "k").result()
            except KeyError as exc:
                print(repr(exc))
                print(exc.__cause__)
    '''))
    done = subprocess.run([PY, str(script)], capture_output=True, text=True, timeout=50,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.startswith("KeyError('k')"), out
    # The worker's frames name the user's file, lines and functions.
    assert f'File "{script}", line 4, in inner' in out, out
    assert f'File "{script}", line 7, in outer' in out, out
    assert "raise KeyError(x)" in out, out
