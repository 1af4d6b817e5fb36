"""Every Python example in the documentation runs, exactly as written.

Each ```python block of README.md and docs/*.md is a complete script. It runs
twice, the two ways a reader may run it: saved to a file (``python file.py``)
and piped to the interpreter (``python - < file.py``). Both must exit 0.
Anything that cannot run by itself (a signature, a fragment) is fenced as
```text instead, so it is not mistaken for an example.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# An opening fence, possibly indented (a block inside a list item), with its
# language; the block ends at a bare fence with the same indentation.
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>\S*)[ \t]*$")
LANGUAGES = {"python", "text", "bash"}

# How many examples each document has at least: a parser that stopped finding
# blocks would otherwise pass by running nothing.
MINIMUM_EXAMPLES = {"README.md": 1, "pools.md": 1, "commands.md": 4, "rpc.md": 3,
                    "cookbook.md": 19, "channels.md": 4, "async.md": 15, "clusters.md": 7,
                    "bench.md": 1}

# Some examples ping hosts or wait on purpose for a timeout; a few of them
# sharing two busy cores may take tens of seconds.
RUN_SECONDS = 100


@dataclass(frozen=True)
class Block:
    """One fenced block: where it is, its language and its text (dedented)."""

    document: str
    line: int
    lang: str
    code: str


def fenced_blocks(path: Path) -> list[Block]:
    """Every fenced block of a Markdown file, in order."""
    blocks = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        indent, start = opening["indent"], i
        body = []
        i += 1
        while i < len(lines) and lines[i] != f"{indent}```":
            # A block in a list item is indented as a whole: the script is not.
            body.append(lines[i].removeprefix(indent))
            i += 1
        assert i < len(lines), f"{path.name}:{start + 1}: a fence that is never closed"
        blocks.append(Block(path.name, start + 1, opening["lang"], "\n".join(body) + "\n"))
        i += 1
    return blocks


def examples() -> list[pytest.ParameterSet]:
    """The python blocks, numbered from 1 within each document (``pools.md:3``)."""
    found = []
    for path in DOCUMENTS:
        python = [b for b in fenced_blocks(path) if b.lang == "python"]
        found += [pytest.param(block, id=f"{block.document}:{n}")
                  for n, block in enumerate(python, 1)]
    return found


def test_each_document_has_its_examples() -> None:
    counts: dict[str, int] = {}
    for param in examples():
        block = param.values[0]
        assert isinstance(block, Block)
        counts[block.document] = counts.get(block.document, 0) + 1
    for document, minimum in MINIMUM_EXAMPLES.items():
        assert counts.get(document, 0) >= minimum, \
            f"{document}: {counts.get(document, 0)} python examples found, expected {minimum}+"


def test_every_fence_names_a_known_language() -> None:
    # A block fenced ```py or left without a language would silently never run.
    for path in DOCUMENTS:
        for block in fenced_blocks(path):
            assert block.lang in LANGUAGES, \
                f"{block.document}:{block.line}: fence language {block.lang!r}, " \
                f"not one of {sorted(LANGUAGES)}"


def outcome(block: Block, done: subprocess.CompletedProcess[str]) -> str:
    return (f"{block.document}:{block.line} exited with {done.returncode}\n"
            f"--- stdout ---\n{done.stdout}\n--- stderr ---\n{done.stderr}")


@pytest.mark.timeout(RUN_SECONDS + 20)
@pytest.mark.parametrize("block", examples())
def test_example_runs_as_a_script_file(block: Block, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(block.code, encoding="utf-8")
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=RUN_SECONDS)
    assert done.returncode == 0, outcome(block, done)


@pytest.mark.timeout(RUN_SECONDS + 20)
@pytest.mark.parametrize("block", examples())
def test_example_runs_from_standard_input(block: Block, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(block.code, encoding="utf-8")
    with script.open("rb") as source:
        done = subprocess.run([sys.executable, "-"], cwd=tmp_path, capture_output=True,
                              text=True, stdin=source, timeout=RUN_SECONDS)
    assert done.returncode == 0, outcome(block, done)


def test_example_servers_listen_on_loopback_only() -> None:
    # The suite runs these on shared machines: a server an example starts must
    # not be reachable from the network.
    for param in examples():
        block = param.values[0]
        assert isinstance(block, Block)
        for address in re.findall(r"tcp://[^\"'\s]*", block.code):
            assert address.startswith("tcp://127.0.0.1:"), \
                f"{block.document}:{block.line}: example serves on {address}"
