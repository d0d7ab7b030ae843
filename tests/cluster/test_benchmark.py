"""``benchmarks/cluster.py --smoke`` still runs and prints its table (never a figure)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .harness import missing

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(120)
def test_the_cluster_benchmark_runs_and_prints_its_table() -> None:
    why = missing()
    if why is not None:
        pytest.skip(why)
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "cluster.py"), "--smoke"],
        capture_output=True,
        text=True,
        timeout=110,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "### Redis Cluster: state changes delivered" in result.stdout, result.stderr
    assert "anti-example" in result.stdout
