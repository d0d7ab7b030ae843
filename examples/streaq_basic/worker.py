"""A streaQ worker with one tracked task: ``streaq run worker:worker`` in this folder.

The task reports its progress through ``job_context()``; the middleware that
``track_worker`` registers records its start and its end. Redis is ``$REDIS_URL``
(default ``redis://localhost:6379``).
"""

from __future__ import annotations

import asyncio
import os

from streaq import Worker

from immortus_async.adapters.streaq import job_context, track_worker

REDIS_URL = os.environ.get("REDIS_URL", "redis://localhost:6379")

worker = track_worker(Worker(redis_url=REDIS_URL), redis=REDIS_URL)


@worker.task
async def count_rows(rows: int) -> int:
    """Pretend to process ``rows`` rows, reporting each one."""
    for row in range(1, rows + 1):
        await asyncio.sleep(0.01)  # the work a real task would do
        await job_context().update(progress=row / rows, rows_done=row)
    return rows
