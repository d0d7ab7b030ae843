"""README.md's code blocks, as the tests that run them read them (both environments).

A Python block whose first line is ``# name.py: ...`` is a file of arq's quick
start; ``# name.py (queue): ...`` one of that queue's (``taskiq``, ``streaQ``).
The rest of that first line says how the file is run, the command in backquotes.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BLOCKS: list[tuple[str, str]] = re.findall(
    r"^```(\w+)\n(.*?)^```$", README, flags=re.MULTILINE | re.DOTALL
)
PYTHON = [code for language, code in BLOCKS if language == "python"]

_FILE = re.compile(r"# (\w+\.py)(?: \((\w+)\))?: (.*)")


def _files() -> dict[str, dict[str, str]]:
    found: dict[str, dict[str, str]] = {}
    for code in PYTHON:
        if header := _FILE.match(code):
            name, queue = header[1], (header[2] or "arq").lower()
            found.setdefault(queue, {})[name] = code
    return found


FILES = _files()
"""Queue (``arq``, ``taskiq``, ``streaq``) -> its quick start's files by name."""
SNIPPETS = [code for code in PYTHON if not _FILE.match(code)]
"""Every other Python block."""


def run_with(code: str) -> str:
    """The command a quick-start file's first line says runs it (in backquotes)."""
    header = _FILE.match(code)
    assert header is not None, code.splitlines()[0]
    command = re.search(r"`([^`]+)`", header[3])
    assert command is not None, f"no `command` in {header[0]!r}"
    return command[1]


def write_files(folder: Path, queue: str, redis_url: str) -> Path:
    """Write ``queue``'s quick-start files into ``folder``, as written but for the
    Redis URL (the test's own); ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, code in FILES[queue].items():
        (folder / name).write_text(code.replace("redis://localhost:6379", redis_url))
    return folder
