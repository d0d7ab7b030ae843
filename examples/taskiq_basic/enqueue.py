"""Enqueue a task, follow its progress, print its final state: ``python enqueue.py``.

Run the worker (``taskiq worker tasks:broker``) in this folder too, before or after.
Redis is ``$REDIS_URL`` (default ``redis://localhost:6379``).
"""

from __future__ import annotations

import asyncio

from tasks import REDIS_URL, broker, count_rows

from immortus_async import Tracker, configure

# Jobs without a record of ours are answered from taskiq's own result backend.
configure(queue_adapter="taskiq")


async def main() -> None:
    await broker.startup()
    async with Tracker(REDIS_URL) as tracker:
        task = await tracker.enqueue(broker, count_rows, 20)
        print(f"enqueued {task.task_id}", flush=True)
        async for state in tracker.watch(task.task_id):
            if state.progress is not None and not state.completed:
                print(f"{state.status.value} {state.progress:.0%}", flush=True)
        print(state.to_json())
        result = await task.wait_result(timeout=10)
        print(f"result: {result.return_value}")
    await broker.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
