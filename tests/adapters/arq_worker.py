"""The arq worker of the contract suite: ``python -m tests.adapters.arq_worker REDIS_URL``.

One function per kind of job of :mod:`tests.adapters.drivers`, each ``@tracked`` but
``plain`` (a function that never heard of us). arq's in-progress key of a job lives
``IN_PROGRESS_S``: the next worker runs again, within seconds, the job of one that
was killed (arq's default is 310 s).
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from arq import Retry
from arq.connections import RedisSettings
from arq.worker import Worker

from immortus_async import tracked

from .drivers import HEARTBEAT_INTERVAL, MAX_RESULT_BYTES, READY, RESULT_VALUE, STALLED_AFTER

IN_PROGRESS_S = 1.0

track = tracked(heartbeat_interval=HEARTBEAT_INTERVAL, stalled_after=STALLED_AFTER)
reporting = tracked(
    heartbeat_interval=HEARTBEAT_INTERVAL,
    stalled_after=STALLED_AFTER,
    report_result=True,
    max_result_bytes=MAX_RESULT_BYTES,
)


@track
async def finish(ctx: dict[str, Any]) -> str:
    """Returns."""
    return "done"


@track
async def fail(ctx: dict[str, Any]) -> None:
    """Raises."""
    raise ValueError("bad row")


@track
async def retry(ctx: dict[str, Any]) -> str:
    """Asks arq for another run on its first attempt; returns on the second."""
    if ctx["job_try"] == 1:
        raise Retry(defer=0.01)
    return "done"


@track
async def wait(ctx: dict[str, Any]) -> None:
    """Runs until it is cancelled."""
    await ctx["immortus"].update(progress=0.1)
    await asyncio.Event().wait()


@track
async def progress(ctx: dict[str, Any]) -> str:
    """Two progress updates with meta, then returns."""
    await ctx["immortus"].update(progress=0.5, rows=1)
    await ctx["immortus"].update(progress=1.0, rows=2)
    return "done"


@track
async def hang_once(ctx: dict[str, Any]) -> str:
    """Hangs on its first attempt (until its worker is killed); returns on the next."""
    if ctx["job_try"] == 1:
        await ctx["immortus"].update(progress=0.1)
        await asyncio.Event().wait()
    return "done"


@reporting
async def result(ctx: dict[str, Any]) -> dict[str, Any]:
    """Returns a result that goes in its state."""
    return RESULT_VALUE


@reporting
async def big_result(ctx: dict[str, Any]) -> str:
    """Returns a result too large for its state."""
    return "x" * (2 * MAX_RESULT_BYTES)


async def plain(ctx: dict[str, Any]) -> int:
    """Never heard of tracking."""
    return 42


async def main(url: str) -> None:
    worker = Worker(
        functions=[finish, fail, retry, wait, progress, hang_once, result, big_result, plain],
        redis_settings=RedisSettings.from_dsn(url),
        poll_delay=0.05,
        handle_signals=False,
        allow_abort_jobs=True,
    )
    worker.in_progress_timeout_s = IN_PROGRESS_S
    print(READY, flush=True)
    await worker.main()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
