"""Enqueue a task, follow its progress, print its final state: ``python enqueue.py``.

Run the worker (``streaq run worker:worker``) in this folder too, before or after.
Redis is ``$REDIS_URL`` (default ``redis://localhost:6379``).
"""

from __future__ import annotations

import asyncio

from worker import REDIS_URL, count_rows, worker

from immortus_async import Tracker, configure

# Waiters fall back on streaQ's own records for what the middleware did not see.
configure(queue_adapter="streaq")


async def main() -> None:
    async with worker, Tracker(REDIS_URL) as tracker:
        task = await tracker.enqueue(worker, count_rows, 20)
        print(f"enqueued {task.id}", flush=True)
        async for state in tracker.watch(task.id):
            if state.progress is not None and not state.completed:
                print(f"{state.status.value} {state.progress:.0%}", flush=True)
        print(state.to_json())
        result = await task.result(timeout=10)
        print(f"result: {result.result}")


if __name__ == "__main__":
    asyncio.run(main())
