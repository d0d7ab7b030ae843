"""The examples run as a user would run them, against the test's Redis."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from immortus_async import JobState, JobStatus, RedisServer

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_arq_basic_enqueues_follows_and_prints_the_final_state(redis_server: RedisServer) -> None:
    """examples/arq_basic: the script enqueues, the worker runs it, the script prints the end."""
    folder = EXAMPLES / "arq_basic"
    env = {**os.environ, "REDIS_URL": redis_server.url}
    with subprocess.Popen(
        [sys.executable, "enqueue.py"],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as script:
        assert script.stdout is not None
        assert script.stdout.readline().startswith("enqueued ")
        worker = subprocess.run(
            [sys.executable, "-m", "arq", "--burst", "worker.WorkerSettings"],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert worker.returncode == 0, worker.stderr
        out, err = script.communicate(timeout=30)
    assert script.returncode == 0, err
    *progress, final_json, result = out.splitlines()
    assert progress and all(line.startswith("started ") for line in progress)
    final = JobState.from_json(final_json)
    assert (final.status, final.progress) == (JobStatus.FINISHED, 1.0)
    assert final.meta == {"rows_done": 20}
    assert result == "result: 20"
