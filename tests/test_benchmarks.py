"""The benchmarks still run: ``benchmarks/run.py --smoke`` prints every table.

Only that they ran and produced their tables is checked, never a figure: timings
belong to ``benchmarks/README.md``, not to a test.
"""

from __future__ import annotations

import pytest

from .conftest import NOT_INSTALLED

# It runs arq (its workers, its pool, or a program that does): skipped where arq is not.
pytest.importorskip("arq", reason=NOT_INSTALLED)

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TITLES = [
    "### Wake latency:",
    "### Browser path:",
    "### Fan-out: websocket clients on one bridge process",
    "### Fan-out: bridge memory per websocket connection",
    "### Overhead:",
    "### Redis cost:",
    "### Selectivity:",
    "### Peers:",
]


@pytest.mark.timeout(300)
def test_every_benchmark_runs_and_prints_its_table() -> None:
    """run.py --smoke exits 0 and prints every benchmark's table."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--smoke"],
        capture_output=True,
        text=True,
        timeout=280,
        cwd=ROOT,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for title in TITLES:
        assert title in result.stdout, f"{title!r} missing from:\n{output}"
    assert "FAILED" not in result.stdout, output
