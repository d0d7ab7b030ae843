"""An arq worker with one tracked job: ``arq worker.WorkerSettings`` in this folder.

The job reports its progress through ``ctx["immortus"]``; ``@tracked`` records its
start and its end. Redis is ``$REDIS_URL`` (default ``redis://localhost:6379``).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from arq.connections import RedisSettings

from immortus_async import tracked

REDIS_URL = os.environ.get("REDIS_URL", "redis://localhost:6379")


@tracked
async def count_rows(ctx: dict[str, Any], rows: int) -> int:
    """Pretend to process ``rows`` rows, reporting each one."""
    for row in range(1, rows + 1):
        await asyncio.sleep(0.01)  # the work a real job would do
        await ctx["immortus"].update(progress=row / rows, rows_done=row)
    return rows


class WorkerSettings:
    """What ``arq worker.WorkerSettings`` runs."""

    functions = (count_rows,)
    redis_settings = RedisSettings.from_dsn(REDIS_URL)
