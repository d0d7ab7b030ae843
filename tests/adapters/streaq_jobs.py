"""streaQ tasks the tests run, on a worker built per test (or per worker process).

``python -m tests.adapters.streaq_jobs REDIS_URL`` runs a tracked worker in a
process of its own, for the tests that kill it. Tasks that must wait for the test
wait on a Redis list (``gate:<name>``) that the test pushes to, so the same tasks
work in the test's process and in a worker process.
"""

from __future__ import annotations

import sys
from typing import Any

from streaq import StreaqRetry, Worker

from immortus_async.adapters.streaq import job_context, track_worker

HEARTBEAT_INTERVAL = 0.1
STALLED_AFTER = 0.5
# streaQ hands a task whose worker went silent to another worker after this.
IDLE_TIMEOUT = 1.0


def gate(name: str) -> str:
    """The list a task blocks on until the test pushes to it."""
    return f"gate:{name}"


def make_worker(url: str, *, tracked: bool = True, **options: Any) -> Worker[Any]:
    """A streaQ worker on ``url`` with the test tasks, tracked unless ``tracked=False``."""
    options.setdefault("idle_timeout", IDLE_TIMEOUT)
    options.setdefault("handle_signals", False)
    worker: Worker[Any] = Worker(redis_url=url, **options)
    if tracked:
        track_worker(
            worker,
            redis=url,
            heartbeat_interval=HEARTBEAT_INTERVAL,
            stalled_after=STALLED_AFTER,
        )

    async def wait_for(name: str) -> None:
        await worker.redis.blpop([gate(name)], timeout=60)

    @worker.task(name="double")
    async def double(x: int) -> int:
        return 2 * x

    @worker.task(name="fail")
    async def fail(message: str) -> None:
        raise ValueError(message)

    @worker.task(name="retry_once")
    async def retry_once() -> str:
        if worker.registry["retry_once"].context.tries == 1:
            raise StreaqRetry("not yet", delay=0)
        return "second try"

    @worker.task(name="retry_always", max_tries=2)
    async def retry_always() -> None:
        raise StreaqRetry("never", delay=0)

    @worker.task(name="retry_later")
    async def retry_later() -> None:
        raise StreaqRetry("in an hour", delay=3600)

    @worker.task(name="gated")
    async def gated(name: str) -> str:
        await wait_for(name)
        return name

    @worker.task(name="steps")
    async def steps(n: int) -> int:
        for i in range(n):
            await job_context().update(progress=(i + 1) / n, step=i + 1)
        return n

    @worker.task(name="crash_once")
    async def crash_once(name: str) -> str:
        if worker.registry["crash_once"].context.tries == 1:
            await job_context().update(progress=0.1)
            await wait_for(name)
        return "second time lucky"

    @worker.task(name="no_result", ttl=0)
    async def no_result(name: str) -> None:
        await wait_for(name)

    @worker.task(name="slow", timeout=1)
    async def slow(name: str) -> None:
        await wait_for(name)

    return worker


if __name__ == "__main__":
    make_worker(sys.argv[1], handle_signals=True).run_sync()
