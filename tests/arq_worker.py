"""A worker process that the tests kill: ``python -m tests.arq_worker REDIS_URL IN_PROGRESS_S``.

``IN_PROGRESS_S`` is how long arq's in-progress key of a job lives; arq runs a job
again once it has expired, so a short one lets the test's next worker re-run the
job of this (killed) one within seconds instead of arq's default 310 s.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from arq.connections import RedisSettings
from arq.worker import Worker

from immortus_async import tracked

HEARTBEAT_INTERVAL = 0.1
STALLED_AFTER = 0.5


@tracked(heartbeat_interval=HEARTBEAT_INTERVAL, stalled_after=STALLED_AFTER)
async def crash_once(ctx: dict[str, Any]) -> str:
    """Hangs on its first attempt (until its worker is killed); returns on the next."""
    if ctx["job_try"] == 1:
        await ctx["immortus"].update(progress=0.1)
        await asyncio.Event().wait()
    return "second time lucky"


async def main(url: str, in_progress_s: float) -> None:
    worker = Worker(
        functions=[crash_once],
        redis_settings=RedisSettings.from_dsn(url),
        poll_delay=0.05,
        handle_signals=False,
    )
    worker.in_progress_timeout_s = in_progress_s
    await worker.main()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], float(sys.argv[2])))
