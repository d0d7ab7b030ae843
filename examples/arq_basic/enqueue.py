"""Enqueue a job, follow its progress, print its final state: ``python enqueue.py``.

Run the worker (``arq worker.WorkerSettings``) in this folder too, before or after.
Redis is ``$REDIS_URL`` (default ``redis://localhost:6379``).
"""

from __future__ import annotations

import asyncio

from arq.connections import RedisSettings, create_pool
from worker import REDIS_URL

from immortus_async import Tracker


async def main() -> None:
    pool = await create_pool(RedisSettings.from_dsn(REDIS_URL))
    async with Tracker(pool) as tracker:
        job = await tracker.enqueue(pool, "count_rows", 20)
        assert job is not None, "arq refused the job"
        print(f"enqueued {job.job_id}", flush=True)
        async for state in tracker.watch(job.job_id):
            if state.progress is not None and not state.completed:
                print(f"{state.status.value} {state.progress:.0%}", flush=True)
        print(state.to_json())
        print(f"result: {await job.result(timeout=10)}")
    await pool.aclose()


if __name__ == "__main__":
    asyncio.run(main())
