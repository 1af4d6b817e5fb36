"""Every Python example in docs/pools.md runs, as a script, and succeeds."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

POOLS = Path(__file__).resolve().parents[2] / "docs" / "pools.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def examples() -> list[str]:
    return BLOCK.findall(POOLS.read_text(encoding="utf-8"))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("index", range(len(examples())))
def test_pools_example_runs(index: int, tmp_path: Path) -> None:
    script = tmp_path / f"example_{index}.py"
    script.write_text(examples()[index], encoding="utf-8")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=100, cwd=tmp_path)
    assert done.returncode == 0, f"example {index} failed:\n{done.stdout}\n{done.stderr}"
    # what the comments in the examples say they print
    for line in examples()[index].splitlines():
        said = re.search(r"print\(.*\)\s+# (\[.*\]|\d+)$", line)
        if said:
            assert said.group(1) in done.stdout.splitlines(), (said.group(1), done.stdout)
