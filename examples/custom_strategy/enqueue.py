"""Enqueue the job, wait for it through the custom strategy, print its final state.

``python enqueue.py``, with the worker (``arq worker.WorkerSettings``) running in
this folder too, before or after.
"""

from __future__ import annotations

import asyncio

from arq.connections import RedisSettings, create_pool
from worker import REDIS_URL, generate_invoice

from immortus_async import Tracker


async def main() -> None:
    pool = await create_pool(RedisSettings.from_dsn(REDIS_URL))
    async with Tracker(pool) as tracker:
        # The job's inline strategy records it: job_enqueued() writes its row.
        job = await tracker.enqueue(pool, "generate_invoice", 42)
        assert job is not None, "arq refused the job"
        print(f"enqueued {job.job_id}", flush=True)
        # function= finds the job's own strategy (Immortus's job_class). It cannot
        # push, so this reads completed() and meta() with backoff until it ends.
        state = await tracker.completed(job.job_id, function=generate_invoice, timeout=60)
        print(state.to_json())
    await pool.aclose()


if __name__ == "__main__":
    asyncio.run(main())
