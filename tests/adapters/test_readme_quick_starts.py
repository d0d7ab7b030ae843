"""README.md's taskiq and streaQ quick starts, run as written (but the Redis URL):
the worker with the queue's own command, then ``python app.py``, which prints the end."""

from __future__ import annotations

import asyncio
import shlex
import sys
from pathlib import Path

import pytest

from immortus_async import RedisServer
from immortus_async.adapters import installed

from ..conftest import NOT_INSTALLED
from ..readme import FILES, run_with, write_files
from ..utils import SCALE, Spawned
from .drivers import kill_tree

# One worker process is enough here (taskiq's default is one per core).
_MORE = {"taskiq": ["--workers", "1"]}


@pytest.mark.parametrize("queue", ["taskiq", "streaq"])
@pytest.mark.timeout(90)
async def test_the_quick_start_runs_as_written(
    queue: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    """tasks.py under the queue's own worker command; app.py enqueues, waits, prints."""
    if not installed(queue):
        pytest.skip(f"{queue}: {NOT_INSTALLED}")
    folder = write_files(tmp_path, queue, redis_server.url)
    # `taskiq worker tasks:broker`, `streaq run tasks:worker`: the queue's module.
    command = [sys.executable, "-m", *shlex.split(run_with(FILES[queue]["tasks.py"]))]
    worker = await Spawned.start(*command, *_MORE.get(queue, []), cwd=folder)
    try:
        async with await Spawned.start(sys.executable, "app.py", cwd=folder) as app:
            async with asyncio.timeout(60 * SCALE):
                await app.process.wait()
            # It has ended: stop() sends nothing, it reads the rest of its output.
            assert await app.stop() == 0, app.output + "\n" + worker.output
    finally:
        # taskiq's worker is a manager and its worker process: both go.
        await kill_tree(worker)
    assert app.lines[-1] == "finished {'rows': 100}", app.output
