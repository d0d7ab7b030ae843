"""An arq worker whose job is tracked by the custom strategy: ``arq worker.WorkerSettings``.

Redis is ``$REDIS_URL`` (default ``redis://localhost:6379``); the tracking table is
in ``$TRACKING_DB`` (default ``tracking.sqlite3`` in this folder).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from arq.connections import RedisSettings
from strategy import SqliteTrackingStrategy

from immortus_async import tracked

REDIS_URL = os.environ.get("REDIS_URL", "redis://localhost:6379")
TRACKING = SqliteTrackingStrategy(os.environ.get("TRACKING_DB", "tracking.sqlite3"))


# Inline: this job is tracked in SQLite; every other job keeps the global or the
# inferred strategy (Immortus's `tracking_strategy :my_custom_tracking_strategy`).
@tracked(strategy=TRACKING)
async def generate_invoice(ctx: dict[str, Any], order_id: int) -> str:
    """Pretend to build the invoice of one order."""
    await asyncio.sleep(0.2)  # the work a real job would do
    return f"invoice for order {order_id}"


class WorkerSettings:
    """What ``arq worker.WorkerSettings`` runs."""

    functions = (generate_invoice,)
    redis_settings = RedisSettings.from_dsn(REDIS_URL)
