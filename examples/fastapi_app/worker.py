"""The arq worker of the FastAPI example: ``arq worker.WorkerSettings`` in this folder.

Redis is ``$REDIS_URL`` (default ``redis://localhost:6379``).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from arq.connections import RedisSettings

from immortus_async import tracked

REDIS_URL = os.environ.get("REDIS_URL", "redis://localhost:6379")


# The report goes in the finished state (state.result), so the page shows it with
# the job's end; a result over max_result_bytes (64 KiB) would stay in arq alone.
@tracked(report_result=True)
async def build_report(ctx: dict[str, Any], pages: int) -> str:
    """Pretend to render a report page by page, reporting each page."""
    lines = []
    for page in range(1, pages + 1):
        await asyncio.sleep(0.1)  # the work a real job would do
        lines.append(f"page {page}: all good")
        await ctx["immortus"].update(progress=page / pages, pages_done=page, pages=pages)
    return "\n".join(lines)


class WorkerSettings:
    """What ``arq worker.WorkerSettings`` runs."""

    functions = (build_report,)
    allow_abort_jobs = True  # the page's cancel button aborts a running report
    redis_settings = RedisSettings.from_dsn(REDIS_URL)
