"""A taskiq app with one tracked task: ``taskiq worker tasks:broker`` in this folder.

``TrackingMiddleware`` records each task's start and end (``retrying`` when
taskiq's retry middleware runs it again); the task reports its progress through
the ``JobContext`` that ``TaskiqDepends(tracking)`` gives it. Redis is
``$REDIS_URL`` (default ``redis://localhost:6379``).
"""

from __future__ import annotations

import asyncio
import os

from taskiq import SimpleRetryMiddleware, TaskiqDepends
from taskiq_redis import ListQueueBroker, RedisAsyncResultBackend

from immortus_async import JobContext
from immortus_async.adapters.taskiq import TrackingMiddleware, tracking

REDIS_URL = os.environ.get("REDIS_URL", "redis://localhost:6379")

broker = ListQueueBroker(REDIS_URL).with_result_backend(RedisAsyncResultBackend(REDIS_URL))
broker.add_middlewares(SimpleRetryMiddleware(), TrackingMiddleware())


@broker.task(retry_on_error=True, max_retries=3)
async def count_rows(rows: int, job: JobContext = TaskiqDepends(tracking)) -> int:  # noqa: B008
    """Pretend to process ``rows`` rows, reporting each one."""
    for row in range(1, rows + 1):
        await asyncio.sleep(0.01)  # the work a real task would do
        await job.update(progress=row / rows, rows_done=row)
    return rows
