"""Every Python example in docs/cookbook.md runs, as a script, and succeeds."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

COOKBOOK = Path(__file__).resolve().parents[2] / "docs" / "cookbook.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def examples() -> list[str]:
    return BLOCK.findall(COOKBOOK.read_text(encoding="utf-8"))


def test_the_cookbook_has_examples() -> None:
    assert len(examples()) >= 5


@pytest.mark.timeout(120)
@pytest.mark.parametrize("index", range(len(examples())))
def test_cookbook_example_runs(index: int, tmp_path: Path) -> None:
    script = tmp_path / f"example_{index}.py"
    script.write_text(examples()[index], encoding="utf-8")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=100, cwd=tmp_path)
    assert done.returncode == 0, f"example {index} failed:\n{done.stdout}\n{done.stderr}"
